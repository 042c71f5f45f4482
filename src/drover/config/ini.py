"""uWSGI's ini format, read the way uWSGI reads it. Runs in the master, before anything is bound.

Theory of operation
-------------------
uWSGI does not parse an ini file into a dictionary: it appends every ``key = value`` of the
asked section to one ordered list of options (uWSGI's "exported options"), then rewrites the
values of that list in passes. This module reproduces that list, entry for entry, so that
``IniReader.options`` equals what ``uwsgi --ini FILE --show-config`` prints (a test compares
the two with the pyuwsgi wheel). What the options *mean* for Drover is decided elsewhere
(``config.uwsgi_names``).

1. Reading a file (``load``): ``FILE[:SECTION]`` (default section ``uwsgi``; ``:SECTION`` alone
   means the file being read). Each line is stripped; ``[name]`` starts a section; a line
   starting with ``;`` or ``#`` is a comment (there are no comments after a value); a key
   without ``=`` has the empty value, which for a boolean option means true. Before the lines
   are split, the file's text goes through the *magic variables*: ``%d`` (the file's directory,
   with a trailing slash), ``%p`` (its absolute path), ``%s`` (its name), ``%n`` (the name
   without extension), ``%e`` (the extension), ``%c`` (the directory's own name), ``%0``..``%9``
   (the directory's path components), ``%x`` (the section), ``%o`` (the path as given), ``%k``
   (CPU count), ``%h`` (host name), ``%v`` (working directory), ``%u``/``%U``, ``%g``/``%G``
   (user and group id and name), ``%t``/``%T`` (time), ``%V`` (version), ``%%`` (a percent
   sign), and the upper-case forms, which keep the values of the first file read. Any other
   ``%`` + character is replaced by nothing, as uWSGI does; ``%(`` is left for step 3.
2. Appending an option applies uWSGI's "immediate" options at once: ``ini``/``include`` read
   another file right there, ``strict`` and ``set-placeholder`` take effect, and the logic
   options (``if-env``, ``if-not-env``, ``if-exists``, ``if-opt``, ``if-file``, ``if-dir``,
   ``if-hostname``, ``for``, ``for-times``, ... up to ``endif``/``endfor``, with ``else``) decide
   whether (and how often) each following option is appended, ``%(_)`` in its value replaced by
   the condition's value or the loop's item. Logic blocks do not nest (uWSGI refuses that too).
3. Once every file is read, three passes rewrite the values, in uWSGI's order: ``$(NAME)``
   from the environment (left as written when unset; ``$(NAME:-default)`` and
   ``$(NAME-default)`` as uWSGI's development branch has them), ``@(FILE)`` with a file's
   content, then ``%(name)`` with the value of the first option called ``name``, or uWSGI's
   arithmetic when the placeholder holds spaces: ``%(%k * 2)``, ``%(processes cpu_cores + 2)``
   (words are option values, concatenated unless an operator ``+ - * /`` stands between them;
   ``++``/``--`` add or take one). A placeholder with no such option stays as written.
"""

from __future__ import annotations

import contextlib
import glob
import grp
import os
import pwd
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from drover import __version__
from drover.config.sources import ConfigError

DEFAULT_SECTION = "uwsgi"

# Keys that end a logic block (uWSGI resets its logic state on each of them).
END_KEYS = frozenset({"end", "endfor", "endif", "end-if", "end-for"})
# uWSGI's options that act while the file is being read; not settings.
LOAD_KEYS = frozenset({"ini", "include", "inherit"})
PLACEHOLDER_KEYS = frozenset({"set-placeholder", "set-ph"})
# Logic options handled by this reader.
LOGIC_KEYS = frozenset({
    "if-env", "if-not-env", "if-opt", "if-not-opt", "if-exists", "if-not-exists", "if-file",
    "if-not-file", "if-dir", "if-not-dir", "if-directory", "if-not-directory", "if-hostname",
    "if-not-hostname", "if-hostname-match", "if-not-hostname-match", "if-reload",
    "if-not-reload", "if-plugin", "if-not-plugin", "for", "for-glob", "for-times",
    "for-readline", "else"})
DIRECTIVE_KEYS = END_KEYS | LOAD_KEYS | PLACEHOLDER_KEYS | LOGIC_KEYS | {"strict"}

# Their %(name) are the access log's variables, not placeholders: no warning when unresolved.
LOG_KEYS = frozenset({"log-format", "logformat", "log-format-strftime", "log-req-encoder"})

MAX_EXPANSIONS = 1000  # placeholders that expand to themselves would loop for ever
MAX_VALUE = 1 << 16  # ... or grow without end


@dataclass(slots=True)
class IniOption:
    """One entry of uWSGI's option list: key, value (rewritten by the passes) and origin."""

    key: str
    value: str
    path: str  # the file as it was named (for messages)
    line: int
    immediate: bool = False  # applied while reading (ini, if-env...): no substitution passes
    placeholder: bool = False  # set with set-placeholder: a name for %(name), not an option

    @property
    def origin(self) -> str:
        return f"{self.path}:{self.line}"


_UNRESOLVED = {"$": "is not set in the environment", "@": "names no file that can be read",
               "%": "names no option set in the file"}


def uwsgi_true(value: str) -> bool:
    """uWSGI's reading of a boolean: false/off/no/0 (any case) are false, anything else true
    (the empty value of a bare ``master`` line included)."""
    return value.strip().lower() not in ("false", "off", "no", "0")


def _c_int(text: str) -> int:
    """C's strtoll(text, NULL, 10): leading blanks, a sign, the digits that follow; else 0."""
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else 0


def _c_div(a: int, b: int) -> int:
    if b == 0:
        return 0
    quotient = abs(a) // abs(b)
    return quotient if (a < 0) == (b < 0) else -quotient


@dataclass
class _Logic:
    kind: str  # the logic option's key, e.g. "if-env"
    arg: str


@dataclass
class IniReader:
    """Reads one or more ini files into ``options``; see the module docstring.

    ``environ``, ``cpu_count`` and ``hostname`` are parameters so tests can fix them.
    """

    environ: Mapping[str, str]
    cpu_count: int = field(default_factory=lambda: os.cpu_count() or 1)
    hostname: str = field(default_factory=socket.gethostname)
    options: list[IniOption] = field(default_factory=list)
    strict: bool = False
    referenced: set[str] = field(default_factory=set)  # names used as %(name)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    _magic: dict[str, str] = field(default_factory=dict)
    _first: dict[str, str] | None = None
    _last_file: str = ""
    _logic: _Logic | None = None
    _failed: bool = False  # uWSGI's "if failed" state, read by else
    _running: bool = False
    _depth: int = 0

    # -- step 1: files ---------------------------------------------------------------------

    def load(self, spec: str, where: str = "command line") -> None:
        """Read ``FILE[:SECTION]``; ``where`` names who asked (for a file that cannot be read)."""
        path, asked = spec, ""
        head, colon, tail = spec.rpartition(":")
        if colon and "/" not in tail:
            path, asked = head, tail
        section = asked or DEFAULT_SECTION
        if not path:
            if not self._last_file:
                raise ConfigError(f"ini {spec!r}: ':SECTION' names no file to read again "
                                  f"(from {where})")
            path = self._last_file
        if self._depth > 20:
            raise ConfigError(f"ini {spec!r}: files include each other in a loop (from {where})")
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as handle:
                text = handle.read()
        except OSError as exc:
            hint = ""
            beside = os.path.join(os.path.dirname(self._last_file), path)
            if self._last_file and not os.path.isabs(path) and os.path.exists(beside):
                hint = ("; a relative path is read from the working directory, as uWSGI "
                        f"does: write %d{path} for the one beside {self._last_file}")
            raise ConfigError(f"ini: cannot read {path!r}: {exc.strerror or exc} "
                              f"(from {where}){hint}") from None
        self._fill_magic(path, asked)
        self._last_file = path
        current = ""
        found = False
        sections: list[str] = []
        self._depth += 1
        try:
            # The whole file goes through the magic variables before any line is used, so an
            # include does not change what %d or %n mean in the lines after it.
            lines = [self._magic_sub(line) for line in text.split("\n")]
            for number, line in enumerate(lines, 1):
                line = line.strip(" \t\r")
                if not line or line[0] in ";#":
                    continue
                if line[0] == "[":
                    current = line[1:-1]
                    sections.append(current)
                    continue
                key, _, value = line.partition("=")
                if current == section:
                    found = True
                    self.add(IniOption(key.rstrip(" \t\r"), value.strip(" \t\r"), path, number))
        finally:
            self._depth -= 1
        if not found:
            known = ", ".join(f"[{name}]" for name in sections) or "no sections"
            raise ConfigError(f"ini: {path} has no [{section}] section ({known}; from {where})")

    def _fill_magic(self, path: str, section: str) -> None:
        magic: dict[str, str] = {
            "%": "%", "(": "%(", "k": str(self.cpu_count), "h": self.hostname,
            "v": os.getcwd(), "V": __version__, "t": str(int(time.time())),
            "T": str(int(time.time() * 1_000_000)), "[": "\033", "o": path, "x": section,
            "u": str(os.getuid()), "g": str(os.getgid())}
        try:
            magic["U"] = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            magic["U"] = magic["u"]
        try:
            magic["G"] = grp.getgrgid(os.getgid()).gr_name
        except KeyError:
            magic["G"] = magic["g"]
        full = (os.path.abspath(path) if os.path.islink(path) else os.path.realpath(path))
        directory, name = os.path.split(full)
        directory = directory.rstrip("/") + "/"
        stem, dot, extension = name.rpartition(".")
        magic.update(p=full, s=name, d=directory, n=stem if dot else name,
                     e=extension if dot else "", c=os.path.basename(directory.rstrip("/")))
        for index, part in enumerate([p for p in directory.split("/") if p][:10]):
            magic[str(index)] = part
        with contextlib.suppress(OSError):
            magic["i"] = str(os.lstat(full).st_ino)
        if self._first is None:  # the upper-case forms keep the first file's values
            self._first = {letter.upper(): magic.get(letter, "") for letter in "odspcenxij"}
        magic.update(self._first)
        self._magic = magic

    def _magic_sub(self, line: str) -> str:
        if "%" not in line:
            return line
        out: list[str] = []
        i = 0
        while i < len(line):
            char = line[i]
            if char == "%" and i + 1 < len(line):
                out.append(self._magic.get(line[i + 1], ""))
                i += 2
            else:
                out.append(char)
                i += 1
        return "".join(out)

    # -- step 2: appending options, immediate options, logic --------------------------------

    def add(self, option: IniOption) -> None:
        """uWSGI's add_exported_option: logic blocks first, then the list, then immediates."""
        if not self._running:
            if option.key in END_KEYS:
                self._logic = None
                self._failed = False
            if option.key == "else":
                self._logic = None
            if self._logic is not None:
                self._run_logic(option)
                return
        self.options.append(option)
        self._immediate(option)

    def _append_from_logic(self, option: IniOption, value: str) -> None:
        self._running = True
        try:
            self.add(IniOption(option.key, value, option.path, option.line))
        finally:
            self._running = False

    def _immediate(self, option: IniOption) -> None:
        key, value = option.key, option.value
        if key in LOAD_KEYS:
            option.immediate = True
            self.load(value, option.origin)
        elif key == "strict":
            option.immediate = True
            self.strict = uwsgi_true(value)
        elif key in PLACEHOLDER_KEYS:
            option.immediate = True
            name, sep, text = value.partition("=")
            if not sep:
                self.errors.append(f"{key}: {value!r} is not NAME=VALUE ({option.origin})")
                return
            self.options.append(IniOption(name, text, option.path, option.line, immediate=True,
                                          placeholder=True))
        elif key in LOGIC_KEYS:
            option.immediate = True
            if self._logic is not None:
                self.errors.append(f"{key}: a logic block cannot open inside another "
                                   f"({option.origin}); uWSGI refuses nested blocks too")
                return
            self._logic = _Logic(key, value)
        elif key in END_KEYS:
            option.immediate = True

    def _run_logic(self, option: IniOption) -> None:
        logic = self._logic
        assert logic is not None
        kind, arg = logic.kind, logic.arg
        if kind == "else":
            if self._failed:
                self._append_from_logic(option, option.value)
            return
        if kind.startswith("for"):
            for item in self._loop_items(kind, arg, option):
                self._append_from_logic(option, option.value.replace("%(_)", item))
            return
        self._failed = False
        holds, subject = self._condition(kind, arg)
        if holds:
            self._append_from_logic(option, option.value.replace("%(_)", subject))
        else:
            self._failed = True

    def _condition(self, kind: str, arg: str) -> tuple[bool, str]:
        """Whether the block's condition holds, and the value %(_) stands for."""
        negated = "-not-" in kind
        base = kind.replace("-not-", "-")
        if base in ("if-env", "if-opt"):
            name, sep, wanted = arg.partition("=")
            if base == "if-env":
                found: str | None = self.environ.get(name)
            else:
                found = self.first_value(name)
            if negated:
                if found is not None and (not sep or found == wanted):
                    return False, ""
                return True, found or ""
            if found is None or (sep and found != wanted):
                return False, ""
            return True, found
        if base == "if-exists":
            holds = os.path.exists(arg)
        elif base == "if-file":
            holds = os.path.isfile(arg)
        elif base in ("if-dir", "if-directory"):
            holds = os.path.isdir(arg)
        elif base == "if-hostname":
            holds = self.hostname == arg
        elif base == "if-hostname-match":
            holds = re.search(arg, self.hostname) is not None
        elif base == "if-reload":
            holds = False  # the configuration is read once, at start
        elif base == "if-plugin":
            holds = arg.strip().lower() in ("python", "python3", "http") or arg.startswith(
                "python3")
        else:  # pragma: no cover - LOGIC_KEYS lists only the kinds above
            raise AssertionError(kind)
        return holds != negated, arg

    def _loop_items(self, kind: str, arg: str, option: IniOption) -> list[str]:
        if kind == "for":
            return [item for item in arg.split(" ") if item]
        if kind == "for-times":
            return [str(i) for i in range(1, _c_int(arg) + 1)]
        if kind == "for-glob":
            return sorted(glob.glob(arg)) or [arg]
        try:
            with open(arg, encoding="utf-8") as handle:
                return [line.rstrip("\r\n") for line in handle]
        except OSError as exc:
            self.errors.append(f"for-readline: cannot read {arg!r}: {exc.strerror} "
                               f"({option.origin})")
            return []

    # -- step 3: substitution passes ------------------------------------------------------

    def first_value(self, key: str) -> str | None:
        """uWSGI's uwsgi_get_exported_opt: the value of the first option called ``key``."""
        for option in self.options:
            if option.key == key:
                return option.value
        return None

    def finish(self) -> list[IniOption]:
        """Run the $(), @() and %() passes over every option; return the list."""
        for symbol, hook in (("$", self._env), ("@", self._file), ("%", self._placeholder)):
            for option in self.options:
                if not option.immediate:
                    option.value = self._apply_pass(option, symbol, hook)
        return self.options

    def _apply_pass(self, option: IniOption, symbol: str,
                    hook: Callable[[str], str | None]) -> str:
        # A transcription of uWSGI's uwsgi_apply_config_pass, quirks included: after a
        # substitution the scan restarts at the second character of the new value.
        value = option.value
        j, has, depth, start, expansions = 0, 0, 0, -1, 0
        while j < len(value):
            char = value[j]
            if char == symbol:
                has = 1
            elif char == "(" and has == 1:
                has, depth, start = 2, 0, j + 1
            elif has > 1:
                if char == "(":
                    has += 1
                    depth += 1
                elif char == ")":
                    if depth > 0:
                        has += 1
                        depth -= 1
                    elif has <= 2:
                        has, start = 0, -1
                    else:
                        result = hook(value[start:start + has - 2])
                        if result is None and not (symbol == "%" and option.key in LOG_KEYS):
                            self.warnings.append(
                                f"{option.key} = {option.value}: "
                                f"{symbol}({value[start:start + has - 2]}) "
                                f"{_UNRESOLVED[symbol]}; it stays as written ({option.origin})")
                        elif result is not None:
                            expansions += 1
                            if expansions > MAX_EXPANSIONS or len(result) > MAX_VALUE:
                                self.errors.append(
                                    f"{option.key}: its placeholders expand without end "
                                    f"({option.origin})")
                                return value
                            value = value[:start - 2] + result + value[start + has - 1:]
                            option.value = value  # uWSGI rewrites the entry in place
                            j = 0
                        has, start = 0, -1
                else:
                    has += 1
            else:
                has = 0
            j += 1
        return value

    def _env(self, key: str) -> str | None:
        for sep in (":-", "-"):
            name, found, default = key.partition(sep)
            if found and name:
                value = self.environ.get(name)
                if value is None or (sep == ":-" and value == ""):
                    return default
                return value
        return self.environ.get(key)

    def _file(self, key: str) -> str | None:
        try:
            with open(key, encoding="utf-8", errors="surrogateescape") as handle:
                content = handle.read()
        except OSError:
            return None
        return content[:-1] if content.endswith(("\n", "\r")) else content

    def _placeholder(self, key: str) -> str | None:
        if " " not in key:
            self.referenced.add(key)
            return self.first_value(key)
        current: str | None = None
        state = "concat"
        for token in key.split(" "):
            if not token:
                continue
            if token in ("+", "-", "*", "/"):
                state = token
                continue
            if token in ("++", "--"):
                if current is not None:
                    current = str(_c_int(current) + (1 if token == "++" else -1))
                state = "concat"
                continue
            if token.isdigit():
                value = token
            else:
                self.referenced.add(token)
                value = self.first_value(token) or ""
            if state == "concat":
                current = (current or "") + value
            else:
                a, b = _c_int(current or ""), _c_int(value)
                result = {"+": a + b, "-": a - b, "*": a * b}.get(state)
                current = str(result if result is not None else _c_div(a, b))
            state = "concat"
        return current


def read_ini(specs: list[tuple[str, str]], environ: Mapping[str, str]) -> IniReader:
    """Read each (``FILE[:SECTION]``, who asked) in order into one reader; run the passes."""
    reader = IniReader(environ)
    for spec, where in specs:
        reader.load(spec, where)
    reader.finish()
    return reader
