"""The settings table: every Drover setting is declared here, once.

Theory of operation
-------------------
``Config`` is a frozen dataclass; each field *is* a setting. Its metadata (built by ``setting()``)
carries what every reader needs: the topic it belongs to in ``--help``, the command-line flag(s),
the help text, how a string is turned into a value, and whether it may be given several times.
From this one table come the argparse parser (``config.cli``), the ``DROVER_*`` environment
variables (``config.environment``), the keys of configuration files (``config.ini``,
``config.toml``, ``config.gunicorn``: a setting's ini key is its long flag without the dashes),
and the documentation (``drover --help`` and docs/settings.md). Nothing else lists settings, so
adding one is adding one field here.

``Config.origins`` is the one field that is not a setting: where each value came from (a file
and line, an environment variable, the command line), for error messages and --print-config.

Values arrive as strings (command line, environment, files) and are parsed by the field's
``parse`` function, which raises ``ValueError`` with a short reason; the reader adds the option's
name and where it came from.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Topics, in the order ``--help`` shows them.
SOCKETS = "Sockets"
APP = "Application"
PROCESSES = "Processes"
HTTP = "HTTP limits and timeouts"
STATIC = "Static files"
LOGGING = "Logging"
DEPLOY = "Privileges, files and daemon"
STATS = "Statistics"


@dataclass(frozen=True, slots=True)
class SettingInfo:
    """What the readers need to know about one setting (a field of ``Config``)."""

    topic: str
    flags: tuple[str, ...]
    help: str
    parse: Callable[[str], Any]
    metavar: str = ""
    multi: bool = False  # may be given several times; the value is a tuple
    switch: bool = False  # a boolean flag: ``--preload`` alone means true
    bare: str | None = None  # the value when the flag is given without one (``--access-log``)


def setting(
    default: Any,
    topic: str,
    help: str,
    parse: Callable[[str], Any],
    *,
    flags: tuple[str, ...] = (),
    metavar: str = "",
    multi: bool = False,
    switch: bool = False,
    bare: str | None = None,
) -> Any:
    info = SettingInfo(topic, flags, help, parse, metavar, multi, switch, bare)
    return field(default=default, metadata={"drover": info})


# -- parsers: str -> value, raising ValueError("short reason") ---------------------------------


def parse_int(text: str, minimum: int = 0) -> int:
    try:
        value = int(text.strip().replace("_", ""))
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise ValueError(f"{value} is below the minimum of {minimum}")
    return value


def positive_int(text: str) -> int:
    return parse_int(text, 1)


def non_negative_int(text: str) -> int:
    return parse_int(text, 0)


_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3}


def parse_size(text: str) -> int:
    """A byte count: ``1048576``, ``64k``, ``10M``, ``1GiB`` (binary units)."""
    raw = text.strip().lower().replace("_", "")
    digits = raw.rstrip("kmgib")
    unit = raw[len(digits):]
    if not digits.isdigit() or unit not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size (examples: 4096, 64k, 10M, 1G)")
    return int(digits) * _SIZE_UNITS[unit]


def parse_seconds(text: str) -> float:
    try:
        value = float(text.strip().rstrip("s"))
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if value < 0 or value != value:
        raise ValueError(f"{text!r} must be zero or more seconds")
    return value


_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (use true/false, yes/no, 1/0, on/off)")


def parse_str(text: str) -> str:
    return text


def parse_octal_mode(text: str) -> int:
    try:
        mode = int(text.strip(), 8)
    except ValueError:
        raise ValueError(f"{text!r} is not an octal file mode such as 660") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{text!r} is not a file mode between 000 and 777")
    return mode


def parse_address(text: str) -> str:
    """Validate a listen address now so the error names the option; sockets.py binds it later."""
    from drover.sockets import parse_listen_address

    parse_listen_address(text)
    return text.strip()


def parse_network(text: str) -> str:
    import ipaddress

    try:
        ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or network (CIDR)") from None
    return text.strip()


def parse_forwarded_ip(text: str) -> str:
    """Addresses, networks (CIDR) or ``*`` (every peer), separated by commas."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError(f"{text!r} names no address or network")
    return ",".join("*" if part == "*" else parse_network(part) for part in parts)


def parse_mount(text: str) -> str:
    prefix, sep, app = text.partition("=")
    prefix = prefix.strip()
    if not sep or not app.strip():
        raise ValueError(f"{text!r} is not PREFIX=APP (e.g. /blog=blog.wsgi:application)")
    if not prefix.startswith("/") and prefix != "":
        raise ValueError(f"{text!r}: the prefix must start with '/'")
    return f"{prefix.rstrip('/')}={app.strip()}"


def parse_static_map(text: str) -> str:
    """``PREFIX=DIR`` -> ``PREFIX=/absolute/DIR``; DIR must be a directory now (relative to
    the directory Drover was started in)."""
    prefix, sep, directory = text.partition("=")
    prefix, directory = prefix.strip(), directory.strip()
    if not sep or not directory:
        raise ValueError(f"{text!r} is not PREFIX=DIR (e.g. /static=/srv/mysite/static)")
    if not prefix.startswith("/"):
        raise ValueError(f"{text!r}: the prefix must start with '/'")
    if not os.path.isdir(directory):
        raise ValueError(f"{directory!r} is not a directory")
    return f"{prefix.rstrip('/') or '/'}={os.path.abspath(directory)}"


def parse_file_name(text: str) -> str:
    name = text.strip()
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{text!r} is not a file name (e.g. index.html)")
    return name


def parse_expires_rule(text: str) -> tuple[str, int]:
    from drover.static import split_rule

    return split_rule(text)


def parse_env_assignment(text: str) -> str:
    name, sep, _value = text.partition("=")
    if not sep or not name.strip() or "\0" in text:
        raise ValueError(f"{text!r} is not NAME=VALUE")
    return f"{name.strip()}={_value}"


def parse_dir(text: str) -> str:
    """A directory, made absolute against the working directory at start-up."""
    if not text.strip():
        raise ValueError("an empty path names no directory")
    return os.path.abspath(os.path.expanduser(text.strip()))


def parse_log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in ("debug", "info", "warning", "error", "critical"):
        raise ValueError(f"{text!r} is not a log level (debug, info, warning, error, critical)")
    return level


def parse_user(text: str) -> str:
    """A user name or uid that exists (checked now, so the error names the option)."""
    from drover.privileges import resolve_user

    resolve_user(text)
    return text.strip()


def parse_group(text: str) -> str:
    from drover.privileges import resolve_group

    resolve_group(text)
    return text.strip()


def parse_owner(text: str) -> str:
    """``USER``, ``USER:GROUP`` or ``:GROUP``, each part a name or a number that exists."""
    from drover.privileges import resolve_owner

    resolve_owner(text)
    return text.strip()


def parse_path(text: str) -> str:
    if not text.strip():
        raise ValueError("the path is empty")
    return text.strip()


def parse_log_destination(text: str) -> str:
    """A file path, ``-`` (Drover's own log), or a boolean: true means ``-``, false off."""
    value = text.strip()
    low = value.lower()
    if low in _TRUE:
        return "-"
    if low in _FALSE:
        return ""
    # "--access-log myapp:app" would take the app for the file (the value is optional): a
    # value that looks like an app, or a Python file, is refused rather than appended to.
    if value.endswith(".py") or re.fullmatch(r"[\w.]+:[\w.]+(\(.*\))?", value):
        raise ValueError(f"{text!r} looks like the app, not a log file: write "
                         "'--access-log - APP', or put --access-log after APP")
    return value


def parse_log_format(text: str) -> str:
    """A preset name or a format with %(var) placeholders; compiled now so errors name it."""
    from drover.access import compile_format

    compile_format(text)
    return text


def parse_regex(text: str) -> str:
    import re

    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"{text!r} is not a regular expression: {exc}") from None
    return text


def parse_stats_address(text: str) -> str:
    """``HOST:PORT``, ``:PORT``, a unix socket path, or ``@name`` (abstract unix socket)."""
    value = text.strip()
    if value.startswith("@"):
        if len(value) < 2:
            raise ValueError(f"{text!r} names no abstract socket")
        return value
    return parse_address(value)


def default_workers() -> int:
    """One per CPU this process may use: its CPU affinity (taskset, docker --cpuset-cpus) and,
    in a container with a CPU quota (docker --cpus, Kubernetes limits), no more than that."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as file:  # cgroup v2, as a container sees it
            quota, period = file.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


Origins = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting of Drover, typed and frozen; built once by ``config.load_config``."""

    # Not a setting: (setting name, (origin of each value, ...)) for the settings that did not
    # keep their default. Ignored by ==, so two configs with the same values compare equal.
    origins: Origins = field(default=(), compare=False, repr=False)

    def origin(self, name: str, index: int = 0) -> str:
        """Where the value (or the index-th value of a repeatable setting) came from."""
        for key, where in self.origins:
            if key == name and where:
                return where[min(index, len(where) - 1)]
        return "default"

    # -- Sockets
    http: tuple[str, ...] = setting(
        (), SOCKETS,
        "Serve HTTP/1.1 on ADDR: ':8000', '127.0.0.1:8000', '[::1]:8000', or a unix socket path "
        "('/run/app.sock' or 'unix:/run/app.sock'). Repeat for several. -b/--bind is the same "
        "option. Without --http or --uwsgi (and no sockets from systemd), Drover serves HTTP on "
        "127.0.0.1:8000; '--http 0.0.0.0:8000' (or ':8000') listens on every interface.",
        parse_address, flags=("-b", "--bind", "--http"), metavar="ADDR", multi=True)
    uwsgi: tuple[str, ...] = setting(
        (), SOCKETS,
        "Serve the uwsgi binary protocol on ADDR (for nginx 'uwsgi_pass'). Same forms as --http. "
        "Repeat for several.",
        parse_address, flags=("--uwsgi",), metavar="ADDR", multi=True)
    uwsgi_allow_from: tuple[str, ...] = setting(
        (), SOCKETS,
        "Peer addresses or networks (CIDR) allowed to speak uwsgi over TCP. Default: loopback "
        "only. Unix sockets are governed by --chmod-socket. Repeat for several.",
        parse_network, flags=("--uwsgi-allow-from",), metavar="NET", multi=True)
    forwarded_allow_ips: tuple[str, ...] = setting(
        (), SOCKETS,
        "Peers (addresses, CIDR networks, or * for all) whose X-Forwarded-For, -Proto, -Host, "
        "-Port and Forwarded fields (and PROXY protocol headers) are believed: REMOTE_ADDR, "
        "wsgi.url_scheme, HTTP_HOST, SERVER_NAME and SERVER_PORT then follow them. Default: "
        "loopback. Unix socket peers are always trusted. Repeat or separate with commas.",
        parse_forwarded_ip, flags=("--forwarded-allow-ips",), metavar="NET", multi=True)
    proxy_protocol: bool = setting(
        False, SOCKETS,
        "Read a PROXY protocol header (v1 or v2, as HAProxy and TCP load balancers send) at the "
        "start of each HTTP connection from a --forwarded-allow-ips peer (required from them); "
        "one from any other peer closes the connection.",
        parse_bool, flags=("--proxy-protocol",), switch=True)
    chmod_socket: int | None = setting(
        None, SOCKETS, "File mode of unix sockets Drover creates, in octal (e.g. 660).",
        parse_octal_mode, flags=("--chmod-socket",), metavar="MODE")
    chown_socket: str = setting(
        "", SOCKETS,
        "Owner of unix sockets Drover creates: USER, USER:GROUP or :GROUP (names or numbers), "
        "e.g. ':www-data' with --chmod-socket 660 lets nginx in. Default: the --uid/--gid user, "
        "when given.",
        parse_owner, flags=("--chown-socket",), metavar="USER[:GROUP]")
    backlog: int = setting(
        1024, SOCKETS, "Listen queue length of each socket (capped by net.core.somaxconn).",
        positive_int, flags=("--backlog",), metavar="N")

    # -- Privileges, files and daemon
    uid: str = setting(
        "", DEPLOY,
        "Run as this user (name or number) once the sockets are bound: the master drops to it "
        "before loading the app, and the workers inherit it. Started as root only.",
        parse_user, flags=("--user", "--uid"), metavar="USER")
    gid: str = setting(
        "", DEPLOY,
        "Run as this group (name or number). Default with --uid: that user's primary group; "
        "supplementary groups are the user's (initgroups).",
        parse_group, flags=("--group", "--gid"), metavar="GROUP")
    umask: int | None = setting(
        None, DEPLOY, "The process umask, in octal (e.g. 027), set before anything is created.",
        parse_octal_mode, flags=("--umask",), metavar="MODE")
    pidfile: str = setting(
        "", DEPLOY,
        "Write the master's pid to FILE once the sockets are bound; removed on exit. A pidfile "
        "of a master that is gone is replaced; one of a running master is an error.",
        parse_path, flags=("--pid", "--pidfile"), metavar="FILE")
    daemonize: str = setting(
        "", DEPLOY,
        "Detach into the background (double fork, new session) with stdout and stderr "
        "appended to LOGFILE. The command returns once the workers are up (status 0), or "
        "with status 1 if startup failed.",
        parse_path, flags=("--daemonize",), metavar="LOGFILE")
    vacuum: bool = setting(
        True, DEPLOY,
        "Accepted for uwsgi.ini files; always on: Drover removes its unix sockets and pidfile "
        "whenever it exits by itself or on a signal.",
        parse_bool, flags=("--vacuum",), switch=True)

    # -- Application
    app: str = setting(
        "", APP,
        "The WSGI app: 'module:callable', 'module' (looks for 'application', then 'app'), "
        "'path/to/app.py[:callable]', or a factory 'module:create_app()' with literal arguments. "
        "Empty: Drover's welcome page.",
        parse_str, metavar="APP")
    mount: tuple[str, ...] = setting(
        (), APP,
        "Serve APP under the URL prefix PREFIX: SCRIPT_NAME becomes PREFIX and PATH_INFO the "
        "rest (like uWSGI's mount with manage-script-name). Repeat for several apps; the "
        "longest matching prefix wins, and the positional APP, if any, serves the rest.",
        parse_mount, flags=("--mount",), metavar="PREFIX=APP", multi=True)
    chdir: str = setting(
        "", APP,
        "Change to DIR at start-up, before binding sockets and loading the app (a relative "
        "socket path is then relative to DIR).",
        parse_dir, flags=("--chdir",), metavar="DIR")
    pythonpath: tuple[str, ...] = setting(
        (), APP, "Put DIR first on sys.path before loading the app. Repeat for several.",
        parse_str, flags=("--pythonpath",), metavar="DIR", multi=True)
    env: tuple[str, ...] = setting(
        (), APP,
        "Set the environment variable NAME to VALUE before the app loads (in the master, so "
        "every worker inherits it). Repeat for several.",
        parse_env_assignment, flags=("-e", "--env"), metavar="NAME=VALUE", multi=True)
    home: str = setting(
        "", APP,
        "The app's virtualenv: its site-packages go on sys.path, ahead of the packages of the "
        "Python that runs Drover (uWSGI's home, virtualenv or venv). It must be made with "
        "the same Python version.",
        parse_str, flags=("--home",), metavar="DIR")
    preload: bool = setting(
        False, APP,
        "Import the app in the master before forking workers (saves memory by sharing pages; "
        "SIGHUP then restarts workers without re-reading the code).",
        parse_bool, flags=("--preload",), switch=True)

    # -- Processes
    workers: int = setting(
        default_workers(), PROCESSES,
        "Worker processes. Default: the number of CPU cores this process may use (its CPU "
        "affinity, and a container's CPU quota).",
        positive_int, flags=("-w", "--workers"), metavar="N")
    threads: int = setting(
        1, PROCESSES,
        "Threads per worker. Each thread runs its own event loop and calls the app directly, so "
        "a blocking app (database calls, sleeps) serves up to N requests at once per worker. "
        "Keep 1 for apps that never block.",
        positive_int, flags=("--threads",), metavar="N")
    timeout: float = setting(
        30.0, PROCESSES,
        "A worker that sends no heartbeat this long is killed and replaced: one of its event "
        "loops is stuck outside a request --harakiri watches (with --harakiri off: in any "
        "request), or the whole process is wedged. 0 disables.",
        parse_seconds, flags=("-t", "--timeout"), metavar="SECONDS")
    graceful_timeout: float = setting(
        30.0, PROCESSES,
        "On SIGTERM, SIGINT or SIGHUP, how long workers may finish requests in flight before "
        "they are killed.",
        parse_seconds, flags=("--graceful-timeout",), metavar="SECONDS")
    max_requests: int = setting(
        0, PROCESSES, "Recycle a worker after it served N requests (0: never).",
        non_negative_int, flags=("--max-requests",), metavar="N")
    max_requests_jitter: int = setting(
        0, PROCESSES,
        "Add a random 0..N to each worker's --max-requests, so that workers do not recycle all "
        "at once (uWSGI: max-requests-delta).",
        non_negative_int, flags=("--max-requests-jitter",), metavar="N")
    reload_on_rss: int = setting(
        0, PROCESSES,
        "Recycle a worker whose resident memory exceeds MB mebibytes (checked once a second by "
        "the master; 0: never).",
        non_negative_int, flags=("--reload-on-rss",), metavar="MB")
    max_worker_lifetime: float = setting(
        0.0, PROCESSES, "Recycle a worker after it has run this long (0: never).",
        parse_seconds, flags=("--max-worker-lifetime",), metavar="SECONDS")
    worker_reload_mercy: float = setting(
        60.0, PROCESSES,
        "When a worker is recycled, how long it may take to finish its requests in flight "
        "once its replacement is ready; then it is killed.",
        parse_seconds, flags=("--worker-reload-mercy",), metavar="SECONDS")
    harakiri: float = setting(
        0.0, PROCESSES,
        "A request still running after this long is ended: its traceback is logged, the client "
        "gets a 504 if nothing was sent yet, and the worker is killed and replaced unless the "
        "request returns within --harakiri-grace. 0 disables.",
        parse_seconds, flags=("--harakiri",), metavar="SECONDS")
    harakiri_grace: float = setting(
        5.0, PROCESSES,
        "How long a request past --harakiri may take to return before its worker is killed.",
        parse_seconds, flags=("--harakiri-grace",), metavar="SECONDS")
    touch_reload: tuple[str, ...] = setting(
        (), PROCESSES,
        "Reload the workers (as SIGHUP does) when the modification time of FILE changes. "
        "Repeat for several.",
        parse_str, flags=("--touch-reload",), metavar="FILE", multi=True)
    reload: bool = setting(
        False, PROCESSES,
        "Development: reload the workers when a source file of the app changes (inotify where "
        "available, else polling once a second). A file that does not load keeps the old "
        "workers serving.",
        parse_bool, flags=("--reload",), switch=True)
    proc_name: str = setting(
        "drover", PROCESSES, "Prefix of the process titles.",
        parse_str, flags=("--proc-name",), metavar="NAME")

    # -- HTTP limits and timeouts
    limit_request_line: int = setting(
        8190, HTTP, "Longest request line (method, target, version) in bytes; longer: 414.",
        positive_int, flags=("--limit-request-line",), metavar="BYTES")
    limit_request_fields: int = setting(
        100, HTTP, "Most header fields in a request; more: 431.",
        positive_int, flags=("--limit-request-fields",), metavar="N")
    limit_request_field_size: int = setting(
        8190, HTTP, "Longest header field (name and value) in bytes; longer: 431.",
        positive_int, flags=("--limit-request-field-size",), metavar="BYTES")
    limit_request_headers: int = setting(
        65536, HTTP, "Largest header block of a request in bytes; larger: 431.",
        positive_int, flags=("--limit-request-headers",), metavar="BYTES")
    limit_request_body: int = setting(
        1024**3, HTTP, "Largest request body in bytes (units k, M, G allowed); larger: 413. "
        "0: no limit.",
        parse_size, flags=("--limit-request-body",), metavar="SIZE")
    body_buffer_size: int = setting(
        16 * 1024**2, HTTP,
        "Request bodies of a declared length up to this size are kept in memory (while "
        "--body-memory-limit allows); larger ones go to a temporary file. Chunked bodies stay "
        "in memory up to 1 MiB (or this size if smaller).",
        parse_size, flags=("--body-buffer-size",), metavar="SIZE")
    body_memory_limit: int = setting(
        48 * 1024**2, HTTP,
        "Most bytes of request bodies one worker keeps in memory at once; a body that would go "
        "past it goes to a temporary file. 0: no limit.",
        parse_size, flags=("--body-memory-limit",), metavar="SIZE")
    body_min_rate: int = setting(
        1024, HTTP,
        "A request body must arrive at this many bytes per second at least, measured over "
        "each --body-rate-window; slower: 408 and close. 0: only --io-timeout applies.",
        parse_size, flags=("--body-min-rate",), metavar="BYTES")
    body_rate_window: float = setting(
        10.0, HTTP, "The period over which --body-min-rate is measured (the first one is the "
        "grace period of a body).",
        parse_seconds, flags=("--body-rate-window",), metavar="SECONDS")
    body_timeout: float = setting(
        600.0, HTTP, "A request body must be whole within this time of its first byte; "
        "else 408 and close. 0: no limit.",
        parse_seconds, flags=("--body-timeout",), metavar="SECONDS")
    buffer_size: int = setting(
        4096, HTTP, "Largest block of uwsgi request vars, in bytes (like uWSGI's buffer-size).",
        positive_int, flags=("--buffer-size",), metavar="BYTES")
    keepalive_timeout: float = setting(
        5.0, HTTP, "Close a keep-alive connection idle this long. 0 disables keep-alive.",
        parse_seconds, flags=("--keepalive-timeout",), metavar="SECONDS")
    header_timeout: float = setting(
        10.0, HTTP,
        "A client must send a whole request line and headers within this time of its first "
        "byte (defeats slowloris).",
        parse_seconds, flags=("--header-timeout",), metavar="SECONDS")
    io_timeout: float = setting(
        30.0, HTTP,
        "Drop a connection that makes no progress this long while Drover reads its body or "
        "writes its response.",
        parse_seconds, flags=("--io-timeout",), metavar="SECONDS")
    max_connections: int = setting(
        4096, HTTP, "Most open connections per worker thread; beyond, Drover stops accepting.",
        positive_int, flags=("--max-connections",), metavar="N")

    # -- Static files
    static_map: tuple[str, ...] = setting(
        (), STATIC,
        "Serve the files under DIR at the URL prefix PREFIX, before the app is called (GET and "
        "HEAD; conditional requests, byte ranges, precompressed .br/.gz siblings). Repeat for "
        "several; the longest matching prefix wins, and a prefix given several times tries "
        "its directories in order. A relative DIR is taken from the directory Drover starts "
        "in. Served on HTTP and uwsgi sockets alike.",
        parse_static_map, flags=("--static-map",), metavar="PREFIX=DIR", multi=True)
    static_index: tuple[str, ...] = setting(
        (), STATIC,
        "File served for a directory under a static prefix (e.g. index.html). Repeat to try "
        "several in order. A directory without one is a 404, never a listing.",
        parse_file_name, flags=("--static-index",), metavar="NAME", multi=True)
    static_expires: tuple[tuple[str, int], ...] = setting(
        (), STATIC,
        "'REGEX SECONDS' as one value: a static file whose path on disk matches REGEX (searched, "
        "not anchored) is sent with Cache-Control max-age=SECONDS and Expires. Repeat for "
        "several; the first match wins.",
        parse_expires_rule, flags=("--static-expires",), metavar="'REGEX SECONDS'", multi=True)
    static_expires_uri: tuple[tuple[str, int], ...] = setting(
        (), STATIC,
        "Like --static-expires, matched against the request path instead (e.g. "
        "'^/static/.*[.]css$ 86400'); tried after the --static-expires rules.",
        parse_expires_rule, flags=("--static-expires-uri",), metavar="'REGEX SECONDS'",
        multi=True)
    static_fallthrough: bool = setting(
        False, STATIC,
        "A path under a static prefix with no file to serve goes to the app instead of a 404.",
        parse_bool, flags=("--static-fallthrough",), switch=True)
    static_allow_hidden: bool = setting(
        False, STATIC,
        "Serve files and directories whose name starts with a dot (refused by default).",
        parse_bool, flags=("--static-allow-hidden",), switch=True)

    # -- Logging
    log_level: str = setting(
        "info", LOGGING, "debug, info, warning, error or critical.",
        parse_log_level, flags=("--log-level",), metavar="LEVEL")
    log_file: str = setting(
        "", LOGGING,
        "Write Drover's own log (and the access log given as '-') to FILE instead of stderr "
        "(uWSGI: logto). SIGUSR1 to the master reopens it (after logrotate renamed it).",
        parse_str, flags=("--logto", "--log-file"), metavar="FILE")
    log_maxsize: int = setting(
        0, LOGGING,
        "Rotate --log-file and --access-log files when they pass SIZE: the file is renamed to "
        "FILE.<timestamp> and a new one started. 0: never.",
        parse_size, flags=("--log-maxsize",), metavar="SIZE")
    access_log: str = setting(
        "", LOGGING,
        "Log one line per request to FILE, or to Drover's log when FILE is '-' or omitted "
        "(off by default: it costs throughput). SIGUSR1 to the master reopens the file.",
        parse_log_destination, flags=("--access-log",), metavar="FILE", bare="-")
    log_format: str = setting(
        "combined", LOGGING,
        "Access log line: a preset (common, combined, uwsgi, json) or a format with uWSGI's "
        "variables, e.g. '%(addr) %(method) %(uri) %(status) %(msecs)ms' (docs/access-log.md).",
        parse_log_format, flags=("--logformat", "--log-format"), metavar="FORMAT")
    disable_logging: bool = setting(
        False, LOGGING,
        "Log no request lines, except those --log-4xx, --log-5xx and --log-slow ask for.",
        parse_bool, flags=("--disable-logging",), switch=True)
    log_4xx: bool = setting(
        False, LOGGING, "With --disable-logging: still log requests answered 4xx.",
        parse_bool, flags=("--log-4xx",), switch=True)
    log_5xx: bool = setting(
        False, LOGGING, "With --disable-logging: still log requests answered 5xx.",
        parse_bool, flags=("--log-5xx",), switch=True)
    log_slow: int = setting(
        0, LOGGING, "With --disable-logging: still log requests that took more than MS "
        "milliseconds. 0: off.",
        non_negative_int, flags=("--log-slow",), metavar="MS")
    log_exclude: tuple[str, ...] = setting(
        (), LOGGING,
        "Log no line for requests whose path (PATH_INFO) matches REGEX, e.g. '^/healthz$'. "
        "Repeat for several.",
        parse_regex, flags=("--log-exclude",), metavar="REGEX", multi=True)

    # -- Statistics
    stats: str = setting(
        "", STATS,
        "Serve statistics on ADDR (HOST:PORT, :PORT, a unix socket path, or @name for an "
        "abstract socket): the master writes uWSGI's stats JSON document on each connection "
        "(for uwsgitop, uwsgi_exporter, Telegraf) and closes it.",
        parse_stats_address, flags=("--stats",), metavar="ADDR")
    stats_http: bool = setting(
        False, STATS,
        "Answer on --stats over HTTP: GET / gives the JSON document, GET /metrics Prometheus' "
        "text format (docs/stats.md).",
        parse_bool, flags=("--stats-http",), switch=True)


    def app_title(self) -> str:
        """What the processes serve, for their titles: the app, else the mounts, else
        "welcome"."""
        if self.app:
            return self.app
        return ",".join(self.mount) if self.mount else "welcome"

    def app_description(self) -> str:
        """What the processes serve, for the master's start line."""
        mounts = ", ".join(self.mount)
        if self.app:
            return f"{self.app} (and {mounts})" if mounts else self.app
        return mounts or "the welcome page"


def setting_infos() -> list[tuple[dataclasses.Field[Any], SettingInfo]]:
    """The table: each field of Config with its SettingInfo, in declaration order."""
    return [(f, f.metadata["drover"]) for f in dataclasses.fields(Config) if "drover" in f.metadata]


def env_name(name: str) -> str:
    return "DROVER_" + name.upper()
