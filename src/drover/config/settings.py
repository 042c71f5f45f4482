"""The settings table: every Drover setting is declared here, once.

Theory of operation
-------------------
``Config`` is a frozen dataclass; each field *is* a setting. Its metadata (built by ``setting()``)
carries what every reader needs: the topic it belongs to in ``--help``, the command-line flag(s),
the help text, how a string is turned into a value, and whether it may be given several times.
From this one table come the argparse parser (``config.cli``), the ``DROVER_*`` environment
variables (``config.sources``), and the documentation (``drover --help`` and docs/settings.md).
Nothing else lists settings, so adding one is adding one field here.

Values arrive as strings (command line, environment, files) and are parsed by the field's
``parse`` function, which raises ``ValueError`` with a short reason; the reader adds the option's
name and where it came from.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Topics, in the order ``--help`` shows them.
SOCKETS = "Sockets"
APP = "Application"
PROCESSES = "Processes"
HTTP = "HTTP limits and timeouts"
LOGGING = "Logging"


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
) -> Any:
    info = SettingInfo(topic, flags, help, parse, metavar, multi, switch)
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


def parse_log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in ("debug", "info", "warning", "error", "critical"):
        raise ValueError(f"{text!r} is not a log level (debug, info, warning, error, critical)")
    return level


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting of Drover, typed and frozen; built once by ``config.load_config``."""

    # -- Sockets
    http: tuple[str, ...] = setting(
        (), SOCKETS,
        "Serve HTTP/1.1 on ADDR: ':8000', '127.0.0.1:8000', '[::1]:8000', or a unix socket path "
        "('/run/app.sock' or 'unix:/run/app.sock'). Repeat for several. Without --http or "
        "--uwsgi, Drover serves HTTP on :8000.",
        parse_address, flags=("--http",), metavar="ADDR", multi=True)
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
    backlog: int = setting(
        1024, SOCKETS, "Listen queue length of each socket (capped by net.core.somaxconn).",
        positive_int, flags=("--backlog",), metavar="N")

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
        "", APP, "Change to DIR before loading the app.", parse_str, flags=("--chdir",),
        metavar="DIR")
    pythonpath: tuple[str, ...] = setting(
        (), APP, "Put DIR first on sys.path before loading the app. Repeat for several.",
        parse_str, flags=("--pythonpath",), metavar="DIR", multi=True)
    preload: bool = setting(
        False, APP,
        "Import the app in the master before forking workers (saves memory by sharing pages; "
        "SIGHUP then restarts workers without re-reading the code).",
        parse_bool, flags=("--preload",), switch=True)

    # -- Processes
    workers: int = setting(
        default_workers(), PROCESSES,
        "Worker processes. Default: the number of CPU cores.",
        positive_int, flags=("-w", "--workers"), metavar="N")
    threads: int = setting(
        1, PROCESSES,
        "Threads per worker. Each thread runs its own event loop and calls the app directly, so "
        "a blocking app (database calls, sleeps) serves up to N requests at once per worker. "
        "Keep 1 for apps that never block.",
        positive_int, flags=("-t", "--threads"), metavar="N")
    timeout: float = setting(
        30.0, PROCESSES,
        "A worker whose event loop is stuck this long (for example in one request) is killed "
        "and replaced. 0 disables.",
        parse_seconds, flags=("--timeout",), metavar="SECONDS")
    graceful_timeout: float = setting(
        30.0, PROCESSES,
        "On SIGTERM, SIGINT or SIGHUP, how long workers may finish requests in flight before "
        "they are killed.",
        parse_seconds, flags=("--graceful-timeout",), metavar="SECONDS")
    max_requests: int = setting(
        0, PROCESSES, "Recycle a worker after it served N requests (0: never).",
        non_negative_int, flags=("--max-requests",), metavar="N")
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

    # -- Logging
    log_level: str = setting(
        "info", LOGGING, "debug, info, warning, error or critical.",
        parse_log_level, flags=("--log-level",), metavar="LEVEL")
    access_log: bool = setting(
        False, LOGGING, "Log one line per request (off by default: it costs throughput).",
        parse_bool, flags=("--access-log",), switch=True)


def setting_infos() -> list[tuple[dataclasses.Field[Any], SettingInfo]]:
    """The table: each field of Config with its SettingInfo, in declaration order."""
    return [(f, f.metadata["drover"]) for f in dataclasses.fields(Config)]


def env_name(name: str) -> str:
    return "DROVER_" + name.upper()
