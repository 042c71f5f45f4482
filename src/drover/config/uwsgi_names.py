"""What each uWSGI option means for Drover: the tables, and the translation of an ini's options.

Runs in the master, before anything is bound. ``config.ini`` gives the list of options exactly
as uWSGI would have it; ``translate`` turns that list into raw values for Drover's settings.

Each key is looked up in this order:

1. the app keys (``module``, ``callable``, ``wsgi-file``/``file``, ``mount`` with
   ``manage-script-name``), combined into Drover's APP and --mount once the whole file is read;
2. ``ALIASES``: uWSGI names that differ from Drover's flag (``processes`` -> --workers,
   ``socket`` -> --uwsgi, ``logto`` -> --log-file...). An alias whose Drover setting does not
   exist yet says so with its ``missing`` entry;
3. any Drover setting, by its long flag without the dashes (``max-requests``, ``threads``,
   ``buffer-size``, ``harakiri`` the day --harakiri exists): a setting added to the table is an
   ini key with no change here;
4. ``NOT_NEEDED``: options that change nothing for Drover (one debug line each);
5. ``MISSING``: options Drover does not have. If leaving one out changes what the site does
   (``refuse``), the start stops with one line naming the option, the file and line, and what
   to do instead; otherwise a warning. ``issue`` names the Drover issue that adds it ("pending");
6. anything else is unknown: a warning with a "did you mean", or an error under ``strict``,
   except names used as ``%(name)`` placeholders (uWSGI's way of defining variables).

Under ``strict = true`` every warning of steps 5 and 6 is an error too: nothing is dropped
without the start stopping.
"""

from __future__ import annotations

import contextlib
import fnmatch
import grp
import os
import pwd
import re
from collections.abc import Callable
from dataclasses import dataclass

from drover.config.ini import IniOption, uwsgi_true
from drover.config.settings import parse_bool, setting_infos
from drover.config.sources import Raw, Report, did_you_mean

APP_KEYS = frozenset({"module", "wsgi", "callable", "wsgi-file", "file", "mount",
                      "manage-script-name"})


@dataclass(frozen=True, slots=True)
class Missing:
    """An option Drover does not have (yet): what to do instead, and whether to refuse."""

    advice: str
    issue: int | None = None  # the Drover issue that adds it; None: not planned
    refuse: bool = True  # leaving it out would change what the site does

    @property
    def status(self) -> str:
        return f"pending (issue #{self.issue})" if self.issue else "not supported"


@dataclass(frozen=True, slots=True)
class Alias:
    """A uWSGI name for a Drover setting (by its long flag without dashes)."""

    target: str
    convert: Callable[[str], str] | None = None
    missing: Missing | None = None  # used while the target setting does not exist


def _flag_value(value: str) -> str:
    return "true" if uwsgi_true(value) else "false"


def _mode(value: str) -> str:
    return value.strip() or "666"  # uWSGI: a bare chmod-socket means 666


def _address(value: str) -> str:
    """uWSGI takes an address without a colon as a unix socket path, even without a slash."""
    text = value.strip()
    if text.startswith("@"):
        raise ValueError(f"{text!r}: abstract unix sockets are not supported; use a path")
    return text if ":" in text or "/" in text else f"unix:{text}"


def _nonzero(value: str) -> str:
    return "true" if value.strip() not in ("", "0") else "false"


def _logger_file(value: str) -> str:
    """``req-logger = file:PATH`` / ``logger = file:PATH``: Drover's loggers are files."""
    kind, _, path = value.strip().partition(":")
    if kind != "file" or not path:
        raise ValueError(f"{value!r}: only file:PATH loggers are supported (use the journal "
                         "or syslog through systemd for the others)")
    return path


ALIASES: dict[str, Alias] = {
    "processes": Alias("workers"),
    "socket": Alias("uwsgi", _address),
    "uwsgi-socket": Alias("uwsgi", _address),
    "http-socket": Alias("http", _address),
    "http": Alias("http", _address),
    "listen": Alias("backlog"),
    "python-path": Alias("pythonpath"),
    "pp": Alias("pythonpath"),
    "virtualenv": Alias("home"),
    "venv": Alias("home"),
    "pyhome": Alias("home"),
    "chmod-socket": Alias("chmod-socket", _mode),
    "http-timeout": Alias("io-timeout"),
    "socket-timeout": Alias("io-timeout"),
    "limit-post": Alias("limit-request-body"),
    "procname-prefix": Alias("proc-name", str.strip),
    "procname-prefix-spaced": Alias("proc-name", str.strip),
    "max-requests-delta": Alias("max-requests-jitter"),
    "reload-mercy": Alias("worker-reload-mercy"),
    "py-autoreload": Alias("reload", _nonzero),
    "pidfile2": Alias("pidfile"),
    "safe-pidfile": Alias("pidfile"),
    "daemonize2": Alias("daemonize"),
    "logto2": Alias("log-file"),
    "touch-chain-reload": Alias("touch-reload"),
    "req-logger": Alias("access-log", _logger_file),
    "logger": Alias("log-file", _logger_file),
}

NOT_NEEDED: dict[str, str] = {
    "master": "Drover always runs a master process",
    "enable-threads": "Python threads always work in Drover's workers",
    "single-interpreter": "Drover runs one interpreter per worker",
    "thunder-lock": "Drover's workers do not contend for accept() on the same wake-up",
    "die-on-term": "SIGTERM always stops Drover gracefully",
    "need-app": "Drover exits when the app cannot be loaded",
    "plugins": "Drover has no plugins: Python and HTTP are built in",
    "plugin": "Drover has no plugins: Python and HTTP are built in",
    "plugins-dir": "Drover has no plugins",
    "auto-procname": "Drover names its processes (see --proc-name)",
    "ignore-sigpipe": "Drover handles a client that went away itself",
    "ignore-write-errors": "Drover handles a client that went away itself",
    "disable-write-exception": "Drover handles a client that went away itself",
    "memory-report": "use ps or the stats server for worker memory",
    "vacuum": "Drover removes the unix sockets it created when it stops",
    "lazy-apps": "each worker loads the app after fork unless --preload",
    "lazy": "each worker loads the app after fork unless --preload",
    "post-buffering": "Drover reads the whole body before calling the app "
                      "(in memory up to --body-buffer-size, then in a temporary file)",
    "post-buffering-bufsize": "see post-buffering",
    "offload-threads": "Drover sends files with sendfile from its event loop",
    "log-master": "Drover's master and workers write their log lines themselves",
    "threaded-logger": "Drover's master and workers write their log lines themselves",
    "reaper": "Drover's master reaps its children",
    "show-config": "use drover --print-config",
    "cache-expire-freq": "Drover has no cache",
    "harakiri-verbose": "Drover's harakiri always logs the request and where it is stuck",
}

_ROUTE = ("uWSGI's internal routing is not available: do it in nginx or in the app "
          "('route = REGEX donotlog:' is read as --log-exclude)")

MISSING: dict[str, Missing] = {
    "log-x-forwarded-for": Missing("list the proxy in --forwarded-allow-ips: REMOTE_ADDR, and "
                                   "so %(addr) in the access log, is then the client's",
                                   refuse=False),
    "static-map2": Missing("map the directory with static-map (the URL prefix is kept in the "
                           "file's path: static-map = /p=DIR/p)"),
    "static-safe": Missing("Drover serves nothing outside a mapped directory; link the files "
                           "into it"),
    "static-expires-type": Missing("use static-expires with a regular expression on the "
                                   "file's extension", refuse=False),
    "static-expires-type-mtime": Missing("use static-expires", refuse=False),
    "static-expires-mtime": Missing("use static-expires", refuse=False),
    "static-skip-ext": Missing("keep such files out of the mapped directory"),
    # not supported, and not planned
    "cheaper*": Missing("Drover runs --workers workers all the time; SIGTTIN/SIGTTOU add or "
                        "remove one", refuse=False),
    "attach-daemon*": Missing("run the daemon as its own systemd service"),
    "smart-attach-daemon*": Missing("run the daemon as its own systemd service"),
    "hook-*": Missing("run the command from the start script or systemd (ExecStartPre=)"),
    "exec-*": Missing("run the command from the start script or systemd (ExecStartPre=)"),
    "call-*": Missing("call the function from the app's own start-up code"),
    "route*": Missing(_ROUTE),
    "response-route*": Missing(_ROUTE),
    "final-route*": Missing(_ROUTE),
    "error-route*": Missing(_ROUTE),
    "add-header": Missing("add the header in nginx (add_header) or in the app"),
    "del-header": Missing("remove the header in nginx or in the app"),
    "https": Missing("terminate TLS in nginx (or another proxy) in front of Drover"),
    "https-socket": Missing("terminate TLS in nginx (or another proxy) in front of Drover"),
    "http-to": Missing("Drover serves HTTP itself: point the proxy at Drover's --http"),
    "shared-socket": Missing("give the address to --http or --uwsgi"),
    "spooler*": Missing("use a task queue (Celery, RQ, Dramatiq)"),
    "mule*": Missing("run background work as its own process or task queue"),
    "cron*": Missing("use systemd timers or cron"),
    "unique-cron*": Missing("use systemd timers or cron"),
    "cache2": Missing("use a cache server (Redis, memcached) from the app"),
    "cache": Missing("use a cache server (Redis, memcached) from the app"),
    "emperor*": Missing("run one Drover service per app under systemd"),
    "gevent": Missing("Drover runs WSGI apps in threads: use --threads for an app that "
                      "waits on I/O"),
    "async": Missing("Drover runs WSGI apps in threads: use --threads for an app that waits "
                     "on I/O"),
    "asyncio": Missing("Drover serves WSGI apps; run an asyncio app under an ASGI server"),
    "ugreen": Missing("Drover runs WSGI apps in threads: use --threads"),
    "limit-as": Missing("set a memory limit with systemd (MemoryMax=) or ulimit",
                        refuse=False),
    "unenv": Missing("unset the variable before starting Drover"),
    "chdir2": Missing("use chdir (Drover changes directory before loading the app)"),
    "paste": Missing("load the app from a Python module with a factory: "
                     "'module:make_app()'"),
    "eval": Missing("put the code in a module and name it as the app"),
}

# A route whose only action keeps matching requests out of the access log.
_DONOTLOG = re.compile(r"^(\S+)\s+donotlog:\s*$")


def ini_keys() -> dict[str, str]:
    """Every Drover setting by its ini key (each long flag without the dashes) -> field name."""
    keys: dict[str, str] = {}
    for f, info in setting_infos():
        for flag in info.flags:
            if flag.startswith("--"):
                keys[flag[2:]] = f.name
    return keys


def privilege_noop(kind: str, value: str, uwsgi: bool) -> str:
    """Why a uid/gid setting changes nothing here, or '' when it would (the process runs as
    root and another user is named). uWSGI drops privileges only when started as root."""
    if uwsgi and os.getuid() != 0:
        return "Drover is not started as root, so there is no privilege to drop (uWSGI " \
               "ignores it too)"
    text = value.strip()
    if kind in ("uid", "user"):
        current = {str(os.getuid()), pwd.getpwuid(os.getuid()).pw_name}
    else:
        current = {str(os.getgid())}
        with contextlib.suppress(KeyError):
            current.add(grp.getgrgid(os.getgid()).gr_name)
    return "Drover already runs as that user or group" if text in current else ""


def find_missing(key: str) -> Missing | None:
    if key in MISSING:
        return MISSING[key]
    for pattern, missing in MISSING.items():
        if "*" in pattern and fnmatch.fnmatchcase(key, pattern):
            return missing
    return None


def describe(key: str) -> str:
    """What Drover does with ``key`` today, in the words of docs/migrating.md's table."""
    keys = ini_keys()
    if key in ("module", "wsgi", "wsgi-file", "file"):
        return "`APP` (positional)"
    if key == "callable":
        return "`APP` (`module:callable`)"
    if key == "mount":
        return "`--mount` (with manage-script-name)"
    if key == "manage-script-name":
        return "`--mount` (always manages SCRIPT_NAME)"
    alias = ALIASES.get(key)
    if alias is not None:
        if alias.target in keys:
            return f"`--{alias.target}`"
        assert alias.missing is not None
        return f"{alias.missing.status}: `--{alias.target}`; until then {alias.missing.advice}"
    if key in keys:
        return f"`--{key}`"
    if key in NOT_NEEDED:
        return f"not needed: {NOT_NEEDED[key]}"
    missing = find_missing(key)
    if missing is not None:
        return f"{missing.status}: {missing.advice}"
    if key == "strict":
        return "read by the ini reader: every unknown or missing option stops the start"
    if key.startswith(("if-", "for", "end")) or key in ("ini", "include", "inherit",
                                                        "set-placeholder", "set-ph", "else"):
        return "read by the ini reader, as uWSGI reads it"
    return "unknown"


def translate(options: list[IniOption], strict: bool, referenced: set[str],
              report: Report) -> list[Raw]:
    """The Drover values an ini's option list sets; problems go to ``report``."""
    keys = ini_keys()
    infos = {f.name: info for f, info in setting_infos()}
    raws: list[Raw] = []
    app: dict[str, IniOption] = {}
    mounts: list[IniOption] = []

    def set_value(name: str, option: IniOption, convert: Callable[[str], str] | None) -> None:
        try:
            value = option.value if convert is None else convert(option.value)
        except ValueError as exc:
            report.error(f"{option.origin}: {option.key} = {option.value}: {exc}")
            return
        if infos[name].parse is parse_bool:
            value = _flag_value(value)
        raws.append(Raw(name, value, option.origin, option.key))

    def not_here(option: IniOption, missing: Missing, target: str = "") -> None:
        named = f" (Drover's --{target})" if target and target != option.key else ""
        line = (f"{option.origin}: {option.key}{named} is {missing.status}: "
                f"{missing.advice}")
        if missing.refuse or strict:
            report.error(line + ("" if missing.refuse else " (strict mode)"))
        else:
            report.warning(line + "; starting without it")

    for option in options:
        key = option.key
        if option.immediate or option.placeholder:
            continue
        if key in APP_KEYS:
            if key == "mount":
                mounts.append(option)
            else:
                app[key] = option
            continue
        alias = ALIASES.get(key)
        if alias is not None:
            if alias.target in keys:
                set_value(keys[alias.target], option, alias.convert)
            else:
                assert alias.missing is not None, key
                not_here(option, alias.missing, alias.target)
            continue
        if key in ("uid", "gid"):
            why = privilege_noop(key, option.value, uwsgi=True)
            if why:
                report.debug(f"{option.origin}: {key} = {option.value} is not needed: {why}")
                continue
        if key in keys:
            set_value(keys[key], option, None)
            continue
        if key in NOT_NEEDED:
            report.debug(f"{option.origin}: {key} is not needed: {NOT_NEEDED[key]}")
            if key in ("plugins", "plugin"):
                _check_plugins(option, report)
            continue
        if key in ("check-static", "static-check") and "static-map" in keys:
            # A document root: any file under it is served, the rest goes to the app.
            raws.append(Raw(keys["static-map"], f"/={option.value.strip()}", option.origin,
                            key))
            raws.append(Raw(keys["static-fallthrough"], "true", option.origin, key))
            continue
        match = _DONOTLOG.match(option.value) if key == "route" else None
        if match and "log-exclude" in keys:
            raws.append(Raw(keys["log-exclude"], match.group(1), option.origin, key))
            continue
        missing = find_missing(key)
        if missing is not None:
            not_here(option, missing)
            continue
        if key in referenced and not strict:
            continue  # a variable of the file, used as %(key)
        hint = did_you_mean(key, [*keys, *ALIASES, *NOT_NEEDED, *APP_KEYS])
        if strict:
            extra = (" (strict mode; for a placeholder write set-placeholder = "
                     f"{key}=VALUE)") if key in referenced else " (strict mode)"
            report.error(f"{option.origin}: unknown option {key!r}{hint}{extra}")
        else:
            report.warning(f"{option.origin}: unknown option {key!r} ignored, as uWSGI "
                           f"ignores it{hint}")
    _static_falls_through(raws, keys)
    _requests_logged(raws, keys, options)
    raws += _app_values(app, mounts, report)
    _check_uwsgi_peers(raws, keys, report)
    return raws


def _requests_logged(raws: list[Raw], keys: dict[str, str], options: list[IniOption]) -> None:
    """uWSGI logs every request (in its own format, to its log) unless disable-logging; Drover
    logs none unless asked. A uwsgi.ini keeps uWSGI's habit: the access log goes to Drover's
    log (--log-file, as logto) in the uwsgi preset, unless the file says otherwise."""
    if "access-log" not in keys or "log-format" not in keys:
        return
    names = {raw.name for raw in raws}
    if "access_log" in names or not options:
        return
    origin = options[0].origin.rsplit(":", 1)[0]
    raws.append(Raw("access_log", "-", origin, "uWSGI's request logging (on unless "
                    "disable-logging)"))
    if "log_format" not in names:
        raws.append(Raw("log_format", "uwsgi", origin, "uWSGI's request log line"))


def _static_falls_through(raws: list[Raw], keys: dict[str, str]) -> None:
    """uWSGI's static-map hands a request whose file is missing to the app; Drover's answers
    404 unless --static-fallthrough. A uwsgi.ini keeps uWSGI's behaviour."""
    if "static-map" not in keys:
        return
    names = {raw.name for raw in raws}
    if "static_map" in names and "static_fallthrough" not in names:
        first = next(raw for raw in raws if raw.name == "static_map")
        raws.append(Raw("static_fallthrough", "true", first.origin,
                        "static-map (uWSGI passes a missing file to the app)"))


_BUILT_IN_PLUGINS = re.compile(r"^(python\d*|http|0)$")


def _check_plugins(option: IniOption, report: Report) -> None:
    """plugins = python3 is what Drover is; another plugin's options are reported on their
    own lines, but a plugin that changes how the app runs (gevent, asyncio...) is named."""
    others = [name for name in re.split(r"[\s,]+", option.value.strip())
              if name and not _BUILT_IN_PLUGINS.match(name)]
    if others:
        report.warning(f"{option.origin}: {option.key} = {option.value}: Drover has no "
                       f"{', '.join(others)} plugin; the options that need it are reported "
                       "on their own lines")


def _file_spec(path: str) -> str:
    # Drover's loader takes a spec as a file when it ends in .py or holds a slash.
    return path if path.endswith(".py") or "/" in path else f"./{path}"


def _app_values(app: dict[str, IniOption], mounts: list[IniOption],
                report: Report) -> list[Raw]:
    raws: list[Raw] = []
    module = app.get("module") or app.get("wsgi")
    script = app.get("wsgi-file") or app.get("file")
    call = app.get("callable")
    callable_name = call.value.strip() if call else ""
    if module and script:
        report.error(f"{module.origin}: {module.key} and {script.origin}: {script.key} both "
                     "name an app; keep one (or serve the other with mount)")
    elif module or script:
        chosen = module or script
        assert chosen is not None
        spec = chosen.value.strip() if module else _file_spec(chosen.value.strip())
        origin, key = chosen.origin, chosen.key
        if call and ":" not in (spec if module else ""):
            spec = f"{spec}:{callable_name}"
            key = f"{key} + {call.origin} callable"
        raws.append(Raw("app", spec, origin, key))
    elif call:
        report.warning(f"{call.origin}: callable names no module or wsgi-file; ignored")
    manage = app.get("manage-script-name")
    for option in mounts:
        if manage is None or not uwsgi_true(manage.value):
            report.error(
                f"{option.origin}: mount without manage-script-name = true is not supported: "
                "Drover's --mount picks the app by the path's prefix and moves it to "
                "SCRIPT_NAME; add manage-script-name = true")
            continue
        prefix, sep, target = option.value.partition("=")
        target = target.strip()
        if sep and (target.endswith((".py", ".wsgi"))):
            target = _file_spec(target) + (f":{callable_name}" if callable_name else "")
        raws.append(Raw("mount", f"{prefix}={target}" if sep else option.value,
                        option.origin, "mount"))
    return raws


_LOOPBACK = re.compile(r"^(127\.|\[::1\]|::1|localhost)")


def _check_uwsgi_peers(raws: list[Raw], keys: dict[str, str], report: Report) -> None:
    """uWSGI accepts uwsgi packets from anyone who reaches its socket; Drover, over TCP, only
    from loopback unless told otherwise: say so when a file binds uwsgi on another address."""
    if any(raw.name == "uwsgi_allow_from" for raw in raws):
        return
    for raw in raws:
        text = raw.text.strip()
        if raw.name == "uwsgi" and ":" in text and "/" not in text and not _LOOPBACK.match(text):
            report.warning(f"{raw.origin}: {raw.key} = {text}: Drover accepts the uwsgi "
                           "protocol over TCP from loopback peers only; add --uwsgi-allow-from "
                           "(e.g. uwsgi-allow-from = 10.0.0.0/8) for a web server on another "
                           "host")
