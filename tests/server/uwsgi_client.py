"""A small uwsgi client for the black-box tests: build packets byte by byte and send them.

A uwsgi request is a 4-byte header (modifier1: u8, datasize: u16 little-endian, modifier2: u8),
``datasize`` bytes of vars (each key and value a u16-LE length, then the bytes), then the body.
The builders here take raw bytes where a test needs to lie (wrong lengths, odd modifiers), and
``exchange`` reports whether the server closed the connection, answered, or kept silent.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rawhttp import read_to_close

from tests.conftest import connect_to

VarItems = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]


def _raw(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("latin-1")


def u16(n: int) -> bytes:
    """``n`` as a 16-bit little-endian length."""
    return n.to_bytes(2, "little")


def pack_var(key: str | bytes, value: str | bytes) -> bytes:
    k, v = _raw(key), _raw(value)
    return u16(len(k)) + k + u16(len(v)) + v


def pack_vars(items: VarItems) -> bytes:
    """The vars block; ``items`` may repeat a key (as a list of pairs)."""
    pairs = items.items() if isinstance(items, Mapping) else items
    return b"".join(pack_var(key, value) for key, value in pairs)


def header(datasize: int, modifier1: int = 0, modifier2: int = 0) -> bytes:
    return bytes([modifier1]) + u16(datasize) + bytes([modifier2])


def packet(items: VarItems, body: bytes = b"", modifier1: int = 0, modifier2: int = 0) -> bytes:
    """A whole uwsgi request: header, vars, body (CONTENT_LENGTH is the caller's business)."""
    block = pack_vars(items)
    return header(len(block), modifier1, modifier2) + block + body


def request_vars(method: str = "GET", uri: str = "/", *, host: str = "127.0.0.1",
                 body: bytes = b"", content_type: str = "",
                 extra: Iterable[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """The vars nginx's stock uwsgi_params would send for ``method uri`` (a list of pairs)."""
    path, _, query = uri.partition("?")
    items = [("QUERY_STRING", query), ("REQUEST_METHOD", method),
             ("CONTENT_TYPE", content_type), ("CONTENT_LENGTH", str(len(body)) if body else ""),
             ("REQUEST_URI", uri), ("PATH_INFO", path), ("DOCUMENT_ROOT", "/srv/www"),
             ("SERVER_PROTOCOL", "HTTP/1.1"), ("REQUEST_SCHEME", "http"),
             ("REMOTE_ADDR", "127.0.0.1"), ("REMOTE_PORT", "40000"), ("SERVER_PORT", "80"),
             ("SERVER_NAME", host), ("HTTP_HOST", host)]
    items.extend(extra)
    return items


def connect(address: str, timeout: float = 10.0) -> socket.socket:
    """A socket connected to a logged Drover address: ``unix:/path`` or ``uwsgi://host:port``."""
    return connect_to(address, timeout)


@dataclass
class Exchange:
    """What came back on one connection.

    ``closed``: the server ended the connection (EOF or reset) within the timeout; False means
    it was still open when the client gave up waiting.
    """

    data: bytes
    closed: bool
    reset: bool = False

    @property
    def answered(self) -> bool:
        """The server sent an HTTP response (or at least the start of one)."""
        return self.data.startswith(b"HTTP/")

    @property
    def status(self) -> int:
        if not self.answered:
            raise AssertionError(f"no HTTP answer: {self.data[:300]!r}")
        return int(self.data.split(b" ", 2)[1])

    @property
    def head(self) -> bytes:
        return self.data.partition(b"\r\n\r\n")[0]

    @property
    def body(self) -> bytes:
        return self.data.partition(b"\r\n\r\n")[2]

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None

    def json(self) -> Any:
        return json.loads(self.body)


def read_until_close(sock: socket.socket, timeout: float) -> Exchange:
    """Read until the peer closes or ``timeout`` seconds pass."""
    data, closed, reset = read_to_close(sock, timeout)
    return Exchange(data, closed=closed, reset=reset)


def exchange(address: str, data: bytes, *, half_close: bool = False,
             timeout: float = 5.0) -> Exchange:
    """Send ``data`` on a new connection (then shut down our side if ``half_close``) and read
    until the server closes. A server that resets the connection while we send counts as
    closed."""
    with connect(address, timeout) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            return Exchange(b"", closed=True, reset=True)
        return read_until_close(sock, timeout)


def get(address: str, uri: str = "/", *, method: str = "GET", body: bytes = b"",
        app: str | None = None, extra: Iterable[tuple[str, str]] = (),
        timeout: float = 10.0) -> Exchange:
    """One well-formed request, nginx style; the whole answer (the server closes after it).

    ``app`` picks the probe app of ``probe_router`` (the X-Probe-App header)."""
    picked = [("HTTP_X_PROBE_APP", app)] if app else []
    items = request_vars(method, uri, body=body, extra=[*picked, *extra])
    return exchange(address, packet(items, body), timeout=timeout)


# -- the app the uwsgi tests serve ---------------------------------------------------------------

SERVER_TESTS_DIR = Path(__file__).resolve().parent
APPS_DIR = SERVER_TESTS_DIR.parent / "apps"
ROUTER_ARGS = ("--pythonpath", str(APPS_DIR), "--pythonpath", str(SERVER_TESTS_DIR),
               "uwsgi_client:probe_router")


def probe_router(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Serves one of tests/apps/probe.py's apps, picked by the ``X-Probe-App`` request header
    (default ``validated_environ``), so one Drover process covers every probe a module needs.

    Runs inside Drover (``ROUTER_ARGS`` serve it).
    """
    import probe

    name = environ.get("HTTP_X_PROBE_APP", "validated_environ")
    app = getattr(probe, f"{name}_app", None)
    if app is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [f"no probe app {name!r}\n".encode()]
    return app(environ, start_response)  # type: ignore[no-any-return]
