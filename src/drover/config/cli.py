"""The command line, generated from the settings table. Runs in the master, once, at start.

Besides the settings, four options name where else to read settings: ``--ini FILE[:SECTION]``
(a uwsgi.ini), ``-c``/``--config FILE`` (by its name: a ``.toml`` file, ``pyproject.toml``'s
``[tool.drover]``, a uwsgi ``.ini`` or a ``gunicorn.conf.py``), and ``--print-config``.

Abbreviations are refused (``--work 3`` is an error, not ``--workers 3``). A flag Drover does not
have gets a hint: uWSGI's and Gunicorn's names for Drover's settings are translated
(``--processes`` -> ``--workers``), and a near miss gets "did you mean".
"""

from __future__ import annotations

import argparse
import os
from typing import Any, NoReturn

from drover import __version__
from drover.config.settings import env_name, setting_infos
from drover.config.sources import did_you_mean

# argparse dest of the file options: a list of (kind, path) in command-line order.
FILES_DEST = "_files"
PRINT_DEST = "_print_config"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Sized from the terminal without argparse's default ``shutil`` import: the master's
    modules are inherited by every worker, and shutil drags in bz2 and lzma (~1 MiB each)."""

    def __init__(self, prog: str) -> None:
        try:
            width = os.get_terminal_size().columns - 2
        except OSError:
            width = 78
        super().__init__(prog, width=max(40, min(width, 118)))


class _FileAction(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        files = list(getattr(namespace, FILES_DEST, None) or [])
        files.append((self.const, str(values), option_string or ""))
        setattr(namespace, FILES_DEST, files)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line per problem and a short usage: the generated usage is 15 lines long.
        lines = "".join(f"drover: error: {line}\n" for line in _explain(message).splitlines())
        self.exit(2, lines + "usage: drover [OPTIONS] [APP] (drover --help lists every option)\n")


def _explain(message: str) -> str:
    """argparse's message, with a hint for each flag it did not recognise."""
    prefix = "unrecognized arguments: "
    if not message.startswith(prefix):
        return message
    lines = []
    for word in message[len(prefix):].split():
        if word.startswith("-"):
            lines.append(f"{word}: no such option{foreign_flag_hint(word)}")
    return "\n".join(lines) or message


_GUNICORN_SHORT = {
    "-k": "Drover's workers are threaded event loops; use --threads for apps that block",
    "-D": "run Drover in the foreground under systemd or supervisord",
    "-n": "Drover's --proc-name",
    "-p": "a pidfile is pending (issue #11)",
    "-u": "start Drover as that user (--uid is pending, issue #11)",
    "-g": "start Drover as that group (--gid is pending, issue #11)",
}


def foreign_flag_hint(word: str) -> str:
    """' (uWSGI's name; Drover's is --workers)', ' (did you mean --workers?)' or ''."""
    from drover.config.gunicorn import NAMES
    from drover.config.uwsgi_names import ALIASES, NOT_NEEDED, find_missing, ini_keys

    flag = word.split("=", 1)[0]
    if flag in _GUNICORN_SHORT:
        return f" (Gunicorn's {flag}: {_GUNICORN_SHORT[flag]})"
    key = flag.lstrip("-")
    keys = ini_keys()
    alias = ALIASES.get(key)
    if alias is not None and alias.target in keys:
        return f" (uWSGI's name for Drover's --{alias.target})"
    if key in ("socket", "uwsgi-socket"):
        return " (uWSGI's name for Drover's --uwsgi)"
    if key in ("module", "wsgi-file", "wsgi", "file", "callable"):
        return " (Drover takes the app as its argument: drover module:callable)"
    gunicorn = NAMES.get(key.replace("-", "_"))
    if gunicorn is not None and gunicorn.target in keys and f"--{gunicorn.target}" != flag:
        return f" (Gunicorn's name for Drover's --{gunicorn.target})"
    if key == "keep-alive":
        return " (Gunicorn's name for Drover's --keepalive-timeout)"
    if key in NOT_NEEDED:
        return f" (uWSGI's {key} is not needed: {NOT_NEEDED[key]})"
    missing = find_missing(key)
    if missing is not None:
        return f" (uWSGI's {key} is {missing.status}: {missing.advice})"
    flags = [f for _, info in setting_infos() for f in info.flags if f.startswith("--")]
    flags += ["--ini", "--config", "--print-config", "--help", "--version"]
    return did_you_mean(flag, flags)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser, generated from the settings table (runs in the master, once)."""
    parser = _Parser(
        prog="drover",
        description="Drover: a fast, strict application server for Python WSGI apps.",
        epilog="Every option can also be set as a DROVER_<NAME> environment variable, e.g. "
        "DROVER_WORKERS=4; a repeatable option takes a comma-separated list there, e.g. "
        "DROVER_HTTP=127.0.0.1:8000,unix:/run/app.sock (a value that holds a comma must "
        "come from the command line or a file). Precedence: defaults < configuration file "
        "< environment < command line. Signals to the master: TERM/INT stop gracefully "
        "(INT again: at once), QUIT stops at once, HUP reloads workers, TTIN/TTOU add/remove "
        "a worker, USR1 reopens the log files, USR2 starts a new master that takes the "
        "sockets over (so does HUP with --preload).",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"drover {__version__}")
    files = parser.add_argument_group("Configuration files")
    files.add_argument("--ini", action=_FileAction, const="ini", metavar="FILE[:SECTION]",
                       help="Read a uwsgi.ini as uWSGI does (section [uwsgi] unless one is "
                       "named). Repeatable; see docs/migrating.md.")
    files.add_argument("-c", "--config", action=_FileAction, const="config", metavar="FILE",
                       help="Read FILE, by its name: *.toml (Drover's settings as keys), "
                       "pyproject.toml ([tool.drover]), *.ini (as --ini), or a "
                       "gunicorn.conf.py (*.py or a name with 'gunicorn' in it: its plain "
                       "'name = value' settings, never run). Repeatable.")
    files.add_argument("--print-config", action="store_true", dest=PRINT_DEST,
                       default=argparse.SUPPRESS,
                       help="Print every resolved setting, its value and where it came from "
                       "(as TOML), then exit.")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f, info in setting_infos():
        group = groups.get(info.topic)
        if group is None:
            group = groups[info.topic] = parser.add_argument_group(info.topic)
        default = f.default
        shown = ("" if info.switch or default in ((), "", None) or "Default:" in info.help
                 else f" (default: {default})")
        text = info.help.replace("%", "%%")  # argparse formats help with %
        if not info.flags:  # the positional app spec
            group.add_argument(f.name, nargs="?", default=argparse.SUPPRESS,
                               metavar=info.metavar, help=text)
        elif info.bare is not None:  # the value is optional (``--access-log`` alone)
            group.add_argument(*info.flags, dest=f.name, metavar=info.metavar, nargs="?",
                               const=info.bare, default=argparse.SUPPRESS, help=text)
        elif info.switch:
            group.add_argument(*info.flags, dest=f.name, action="store_const", const="true",
                               default=argparse.SUPPRESS, help=text)
        else:
            group.add_argument(*info.flags, dest=f.name, metavar=info.metavar,
                               action="append" if info.multi else "store",
                               default=argparse.SUPPRESS, help=text + shown)
    return parser


def env_names() -> dict[str, str]:
    """DROVER_* variable -> setting name."""
    return {env_name(f.name): f.name for f, _ in setting_infos()}
