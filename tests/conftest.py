"""Shared fixtures: run the real Drover server as a subprocess and talk to it.

``drover`` (one server set per test) and ``drover_module`` (shared by a test module) return a
launcher: ``drover(*args, env=None, cwd=None) -> Server``. It runs
``python -m drover [--http 127.0.0.1:0] *args`` in its own session, with stdout and stderr
going to a log file, waits for every ``listening at ...`` line and for a first answered
request, and on teardown sends SIGTERM, waits 10 s, then SIGKILLs the process group.

``Server`` also carries a small raw HTTP/1.1 client (``request``, ``raw``, ``connect``) for
tests that need byte-level control that ``requests`` does not give.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS_DIR = REPO / "tests"
APPS_DIR = TESTS_DIR / "apps"
DJANGO_DIR = APPS_DIR / "django_project"

STARTUP_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
# "listening at http://127.0.0.1:PORT (http)", "listening at unix:/path (uwsgi)", ...
LISTENING_RE = re.compile(r"listening at (\S+)(?: \((\w+)\))?")
# What wsgiref.validate leaves in the log when the server breaks PEP 3333.
VALIDATOR_MARKERS = ("WSGIWarning", "AssertionError", "garbage collected without being closed")

# Tests import the probe apps (e.g. probe.pattern) to compute expected bodies.
if str(APPS_DIR) not in sys.path:
    sys.path.insert(0, str(APPS_DIR))


def app_args(spec: str) -> tuple[str, ...]:
    """Arguments that serve ``spec`` (e.g. ``probe:environ_app``) from tests/apps."""
    return ("--pythonpath", str(APPS_DIR), spec)


def django_args(spec: str = "testsite.wsgi:application") -> tuple[str, ...]:
    """Arguments that serve the Django test site."""
    return ("--chdir", str(DJANGO_DIR), "--pythonpath", str(DJANGO_DIR), spec)


# -- a small HTTP/1.1 response parser -----------------------------------------------------------


@dataclass
class RawResponse:
    """One parsed HTTP response. ``complete`` is False when the body framing was cut short."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    complete: bool
    chunked: bool = False
    trailers: list[tuple[str, str]] = field(default_factory=list)
    rest: bytes = b""  # bytes after this response (pipelining)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> list[str]:
        low = name.lower()
        return [value for key, value in self.headers if key.lower() == low]


def _parse_fields(block: bytes) -> list[tuple[str, str]]:
    fields = []
    for line in block.split(b"\r\n"):
        if not line:
            continue
        name, _, value = line.partition(b":")
        fields.append((name.decode("latin-1"), value.strip().decode("latin-1")))
    return fields


def parse_response(data: bytes, *, head: bool = False, eof: bool = False) -> RawResponse | None:
    """Parse the first final response in ``data`` (skipping 1xx ones).

    Returns None when more bytes are needed, unless ``eof``: then the response is returned with
    ``complete=False`` (or raises ValueError if not even the header block arrived).
    """
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if eof:
                raise ValueError(f"no complete response head in {data[:500]!r}")
            return None
        status_line, _, header_block = data[:end].partition(b"\r\n")
        version, _, rest = status_line.decode("latin-1").partition(" ")
        code, _, reason = rest.partition(" ")
        status = int(code)
        headers = _parse_fields(header_block)
        after = data[end + 4:]
        if 100 <= status < 200 and status != 101:
            data = after
            continue
        break
    response = RawResponse(version, status, reason, headers, b"", True)
    te = (response.header("Transfer-Encoding") or "").lower()
    cl = response.header("Content-Length")
    if head or status in (204, 304) or 100 <= status < 200:
        response.rest = after
        return response
    if "chunked" in te:
        response.chunked = True
        return _parse_chunked(response, after, eof)
    if cl is not None:
        length = int(cl)
        if len(after) < length:
            if not eof:
                return None
            response.complete = False
        response.body, response.rest = after[:length], after[length:]
        return response
    if not eof:
        return None
    response.body = after  # delimited by the end of the connection
    return response


def _parse_chunked(response: RawResponse, data: bytes, eof: bool) -> RawResponse | None:
    pos, parts = 0, []
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            break
        size = int(data[pos:line_end].split(b";")[0].strip(), 16)
        pos = line_end + 2
        if size == 0:
            if data[pos:pos + 2] == b"\r\n":
                response.body, response.rest = b"".join(parts), data[pos + 2:]
                return response
            trailer_end = data.find(b"\r\n\r\n", pos)
            if trailer_end < 0:
                break
            response.trailers = _parse_fields(data[pos:trailer_end])
            response.body, response.rest = b"".join(parts), data[trailer_end + 4:]
            return response
        if len(data) < pos + size + 2:
            break
        parts.append(data[pos:pos + size])
        if data[pos + size:pos + size + 2] != b"\r\n":
            raise ValueError(f"chunk not followed by CRLF at {pos + size}")
        pos += size + 2
    if not eof:
        return None
    response.body, response.complete = b"".join(parts), False
    return response


def build_request(method: str, target: str, headers: Mapping[str, str] | list[tuple[str, str]]
                  | None = None, body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    """Request bytes; Content-Length is added for a body unless a framing header is given."""
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
    names = {name.lower() for name, _ in items}
    if body and not names & {"content-length", "transfer-encoding"}:
        items.append(("Content-Length", str(len(body))))
    lines = [f"{method} {target} {version}", *(f"{name}: {value}" for name, value in items)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# -- the server under test ----------------------------------------------------------------------


class Server:
    """A running ``python -m drover`` and its log."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, args: list[str]) -> None:
        self.proc = proc
        self.log_path = log_path
        self.args = args
        self.addresses: list[str] = []  # as logged: http://127.0.0.1:PORT, unix:/path, ...
        self.protocols: dict[str, str] = {}  # address -> 'http' or 'uwsgi'
        self.host: str | None = None
        self.port: int | None = None
        self.unix_path: str | None = None

    # -- log

    def log(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def wait_for_log(self, pattern: str, timeout: float = 10.0, since: int = 0) -> re.Match[str]:
        """Wait until ``pattern`` matches the log (from character ``since``); return the match."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log(), since)
            if match:
                return match
            exited = self.proc.poll() is not None
            if exited or time.monotonic() > deadline:
                state = f"exited with {self.proc.returncode}" if exited else "still running"
                raise AssertionError(
                    f"{pattern!r} not in the log after {timeout} s (drover {state}):\n{self.log()}")
            time.sleep(0.05)

    def assert_clean_log(self, *, allow_tracebacks: bool = False) -> None:
        """No wsgiref.validate complaint (and, unless allowed, no traceback) in the log."""
        text = self.log()
        for marker in VALIDATOR_MARKERS:
            assert marker not in text, f"{marker!r} in the drover log:\n{text}"
        if not allow_tracebacks:
            assert "Traceback" not in text, f"traceback in the drover log:\n{text}"

    # -- addresses

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the first TCP HTTP address."""
        if self.port is None:
            raise AttributeError("drover has no TCP HTTP address")
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _set_addresses(self, found: list[tuple[str, str]]) -> None:
        for address, protocol in found:
            if not protocol:
                protocol = "uwsgi" if address.startswith("uwsgi://") else "http"
            self.addresses.append(address)
            self.protocols[address] = protocol
            if protocol != "http":
                continue
            match = re.fullmatch(r"http://\[?([^\]]*?)\]?:(\d+)/?", address)
            if match and self.port is None:
                self.host, self.port = match.group(1), int(match.group(2))
            elif address.startswith("unix:") and self.unix_path is None:
                self.unix_path = address[len("unix:"):]

    def address(self, protocol: str = "http") -> str:
        """The first logged address speaking ``protocol`` ('http' or 'uwsgi')."""
        for address in self.addresses:
            if self.protocols[address] == protocol:
                return address
        raise LookupError(f"drover has no {protocol} address: {self.addresses}")

    # -- process control

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the master process."""
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` to the master and return its exit status (TimeoutExpired if it stays)."""
        if self.running:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill_group(self) -> None:
        """SIGKILL the whole process group (master and workers)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(STOP_TIMEOUT)

    # -- raw HTTP client

    def connect(self, timeout: float = 10.0, address: str | None = None) -> socket.socket:
        """A connected socket to ``address`` (a logged address; default: the first HTTP one)."""
        return connect_to(address or self.address("http"), timeout)

    def raw(self, data: bytes, timeout: float = 10.0) -> bytes:
        """Send ``data`` on a new connection; return all bytes received until the server closes
        (or until ``timeout`` passes without the connection closing)."""
        with self.connect(timeout) as sock:
            sock.sendall(data)
            return recv_until_close(sock, timeout)

    def request(self, method: str, target: str,
                headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
                body: bytes = b"", *, version: str = "HTTP/1.1", host: bool = True,
                timeout: float = 10.0) -> RawResponse:
        """One request on a new connection (``Connection: close`` is added for HTTP/1.1)."""
        items = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
        names = {name.lower() for name, _ in items}
        if host and "host" not in names:
            items.insert(0, ("Host", f"127.0.0.1:{self.port}" if self.port else "localhost"))
        if version == "HTTP/1.1" and "connection" not in names:
            items.append(("Connection", "close"))
        with self.connect(timeout) as sock:
            sock.sendall(build_request(method, target, items, body, version))
            return read_response(sock, head=method == "HEAD", timeout=timeout)

    @staticmethod
    def read_response(sock: socket.socket, *, head: bool = False, timeout: float = 10.0,
                      buffer: bytes = b"") -> RawResponse:
        """Read one response from a socket of ``connect()`` (see ``read_response``)."""
        return read_response(sock, head=head, timeout=timeout, buffer=buffer)


def connect_to(address: str, timeout: float) -> socket.socket:
    """A socket connected to a logged address: ``unix:/path`` or ``scheme://host:port``."""
    if address.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address[len("unix:"):])
        return sock
    match = re.fullmatch(r"(?:\w+://)?\[?([^\]]*?)\]?:(\d+)/?", address)
    if not match:
        raise ValueError(f"cannot connect to {address!r}")
    return socket.create_connection((match.group(1), int(match.group(2))), timeout=timeout)


def recv_until_close(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Bytes received until EOF, a reset, or ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    parts = []
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not data:
            break
        parts.append(data)
    return b"".join(parts)


def read_response(sock: socket.socket, *, head: bool = False, timeout: float = 10.0,
                  buffer: bytes = b"") -> RawResponse:
    """Read one response from ``sock`` (its framing, or EOF, ends it)."""
    deadline = time.monotonic() + timeout
    data = buffer
    while True:
        parsed = parse_response(data, head=head) if data else None
        if parsed is not None:
            return parsed
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete response within {timeout} s; got {data[:500]!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            result = parse_response(data, head=head, eof=True)
            assert result is not None
            return result
        data += chunk


def _uwsgi_packet(variables: Mapping[str, str]) -> bytes:
    payload = b""
    for key, value in variables.items():
        k, v = key.encode("latin-1"), value.encode("latin-1")
        payload += len(k).to_bytes(2, "little") + k + len(v).to_bytes(2, "little") + v
    return b"\x00" + len(payload).to_bytes(2, "little") + b"\x00" + payload


# -- the launcher -------------------------------------------------------------------------------


def _drover_env(extra: Mapping[str, str | None] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    if importlib.util.find_spec("drover") is None:
        src = str(REPO / "src")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _count_listen_options(args: list[str]) -> int:
    return sum(1 for a in args if a in ("--http", "--uwsgi") or a.startswith(("--http=",
                                                                              "--uwsgi=")))


class DroverLauncher:
    """Starts Drover servers and cleans them all up (see the module docstring)."""

    def __init__(self, tmp_dir: Path) -> None:
        self.tmp_dir = tmp_dir
        self.servers: list[Server] = []

    def __call__(self, *args: str, env: Mapping[str, str | None] | None = None,
                 cwd: str | Path | None = None, wait: bool = True, ready_path: str | None = "/",
                 timeout: float = STARTUP_TIMEOUT, listeners: int | None = None,
                 python: str | None = None) -> Server:
        """Start ``python -m drover *args`` (``python``: another interpreter than this one's).

        ``--http 127.0.0.1:0`` is added when args name no --http/--uwsgi address, unless
        ``listeners`` says how many addresses to wait for (a configuration file or the
        environment names them). With ``wait`` (default) return once every address is logged
        and a first request (GET ``ready_path``; None: skip it) was answered; otherwise return
        at once (for tests of startup failures).
        """
        argv = list(args)
        if not _count_listen_options(argv) and listeners is None:
            argv = ["--http", "127.0.0.1:0", *argv]
        log_path = self.tmp_dir / f"drover-{len(self.servers) + 1}.log"
        with open(log_path, "ab") as log_file:  # O_APPEND: master and workers share it
            proc = subprocess.Popen(
                [python or sys.executable, "-m", "drover", *argv], stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT, env=_drover_env(env),
                cwd=str(cwd) if cwd is not None else str(REPO), start_new_session=True)
        server = Server(proc, log_path, argv)
        self.servers.append(server)
        if wait:
            expected = _count_listen_options(argv) if listeners is None else listeners
            self._wait_ready(server, expected, ready_path, timeout)
        return server

    def app(self, spec: str, *args: str, **kwargs: Any) -> Server:
        """Serve ``spec`` (e.g. ``probe:environ_app``) from tests/apps; ``args`` go before it."""
        return self(*args, *app_args(spec), **kwargs)

    def django(self, *args: str, spec: str = "testsite.wsgi:application",
               **kwargs: Any) -> Server:
        """Serve the Django test site; ``args`` go before the app."""
        return self(*args, *django_args(spec), **kwargs)

    def _wait_ready(self, server: Server, expected: int, ready_path: str | None,
                    timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            found = LISTENING_RE.findall(server.log())
            if len(found) >= expected:
                break
            if not server.running:
                pytest.fail(f"drover exited with {server.proc.returncode} before listening:\n"
                            f"{server.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"drover logged {len(found)}/{expected} 'listening at' lines "
                            f"within {timeout} s:\n{server.log()}")
            time.sleep(0.02)
        server._set_addresses(found)
        if ready_path is None:
            return
        # Probe the first HTTP address, else speak uwsgi to the first one.
        http = [a for a in server.addresses if server.protocols[a] == "http"]
        address = http[0] if http else server.addresses[0]
        if http:
            probe = build_request("GET", ready_path, {"Host": "127.0.0.1",
                                                      "Connection": "close"})
        else:
            probe = _uwsgi_packet({"REQUEST_METHOD": "GET", "PATH_INFO": ready_path,
                                   "REQUEST_URI": ready_path, "QUERY_STRING": "",
                                   "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "127.0.0.1",
                                   "SERVER_PORT": "80", "HTTP_HOST": "127.0.0.1"})
        last_error = ""
        while (left := deadline - time.monotonic()) > 0:
            if not server.running:
                pytest.fail(f"drover exited with {server.proc.returncode} before serving:\n"
                            f"{server.log()}")
            try:
                with connect_to(address, left) as sock:
                    sock.sendall(probe)
                    answer = b""
                    while b"\r\n" not in answer and (chunk := sock.recv(4096)):
                        answer += chunk
                    if answer.startswith(b"HTTP/1."):
                        return
                    last_error = f"no HTTP status line in the answer {answer[:100]!r}"
            except OSError as exc:
                last_error = repr(exc)
            time.sleep(0.05)
        pytest.fail(f"drover did not answer a first request within {timeout} s ({last_error}):"
                    f"\n{server.log()}")

    def cleanup(self) -> None:
        """SIGTERM every server still running, wait, then SIGKILL every process group."""
        for server in self.servers:
            if server.running:
                server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for server in self.servers:
            try:
                server.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                warnings.warn(f"drover (pid {server.proc.pid}) ignored SIGTERM for "
                              f"{STOP_TIMEOUT} s; killing it", stacklevel=1)
            server.kill_group()


@pytest.fixture
def drover(tmp_path: Path) -> Iterator[DroverLauncher]:
    """Start Drover servers for one test: ``drover(*args, env=None, cwd=None) -> Server``."""
    launcher = DroverLauncher(tmp_path)
    try:
        yield launcher
    finally:
        launcher.cleanup()


@pytest.fixture(scope="module")
def drover_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DroverLauncher]:
    """Like ``drover``, for servers shared by all tests of a module."""
    launcher = DroverLauncher(tmp_path_factory.mktemp("drover"))
    try:
        yield launcher
    finally:
        launcher.cleanup()


@pytest.fixture(scope="session")
def apps_dir() -> Path:
    """tests/apps: the probe, Flask and Django test apps."""
    return APPS_DIR
