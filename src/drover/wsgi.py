"""The WSGI layer (PEP 3333): environ, start_response, write(), file_wrapper, response framing.

Theory of operation
-------------------
A worker builds one constant environ per connection (``connection_environ``) and, per request,
copies it and lays the Request's CGI variables over it. ``Response`` is the per-request
``start_response`` target: it validates the status and headers the app gives (a CR or LF in a
header is an error, never bytes on the wire), remembers them, and turns them into bytes only
when the first body bytes (or the end) are known, so that a one-piece body gets a
Content-Length instead of chunked framing. It produces bytes and does no I/O: the worker writes
them. Everything here runs on a worker's loop thread.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, Any, Protocol

from drover.protocols.chunked import LAST_CHUNK, chunk
from drover.protocols.http import status_has_body
from drover.protocols.request import Request

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
WriteFn = Callable[[bytes], None]


class Sender(Protocol):
    """Where a response's write() output goes (the worker's connection)."""

    def send(self, data: bytes) -> None: ...


class FileWrapper:
    """wsgi.file_wrapper: the worker sends a regular file with os.sendfile; otherwise it is
    iterated in ``blksize`` blocks."""

    __slots__ = ("blksize", "filelike")

    def __init__(self, filelike: IO[bytes], blksize: int = 65536) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        while True:
            block = read(self.blksize)
            if not block:
                return
            yield block

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


def base_environ(multithread: bool, multiprocess: bool, script_name: str = "") -> dict[str, Any]:
    """The parts of environ shared by every request of a worker."""
    return {
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,  # bodies are complete before the app runs
        "wsgi.file_wrapper": FileWrapper,
        "SCRIPT_NAME": script_name,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "",
        "REMOTE_ADDR": "",
    }


def connection_environ(base: dict[str, Any], sockname: Any, peername: Any) -> dict[str, Any]:
    """Per connection: the server and peer addresses (unix sockets give strings, not tuples)."""
    environ = base.copy()
    if isinstance(sockname, tuple):
        environ["SERVER_NAME"] = sockname[0]
        environ["SERVER_PORT"] = str(sockname[1])
    if isinstance(peername, tuple):
        environ["REMOTE_ADDR"] = peername[0]
        environ["REMOTE_PORT"] = str(peername[1])
    else:
        environ["REMOTE_ADDR"] = "127.0.0.1" if peername == "" or peername is None else peername
    return environ


# -- header checks ---------------------------------------------------------------------------

# Header name -> what the server must do with it. Validated names are cached (bounded).
_ORDINARY, _LENGTH, _DROP, _CONNECTION, _DATE, _SERVER = range(6)
_SPECIAL = {"content-length": _LENGTH, "transfer-encoding": _DROP, "keep-alive": _DROP,
            "connection": _CONNECTION, "date": _DATE, "server": _SERVER,
            "upgrade": _DROP, "proxy-connection": _DROP}
_NAME_KINDS: dict[str, int] = {}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # RFC 9110 section 5.6.2
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs but HTAB (section 5.5)
_STATUS = re.compile(r"[1-5][0-9][0-9] [^\x00-\x1f\x7f]*\Z")
_STATUS_HAS_BODY: dict[str, bool] = {}  # validated status lines
# Validated (name, value) pairs -> "name: value\r\n" for ordinary fields, the length for
# Content-Length: apps send the same fields again and again.
_LINES: dict[tuple[str, str], str | int] = {}


class ResponseError(Exception):
    """The app broke PEP 3333 (bad status or header, no start_response...): answered as 500."""


def _name_kind(name: Any) -> int:
    kind = _NAME_KINDS.get(name)
    if kind is None:
        if type(name) is not str or not _TOKEN.match(name):
            raise ResponseError(f"invalid response header name {name!r}")
        kind = _SPECIAL.get(name.lower(), _ORDINARY)
        if len(_NAME_KINDS) < 4096:
            _NAME_KINDS[name] = kind
    return kind


def _check_value(name: str, value: Any) -> None:
    """The slow path for values with unprintable characters: only HTAB is allowed."""
    if type(value) is not str:
        raise ResponseError(f"response header {name!r} has a non-str value {value!r}")
    if _BAD_VALUE.search(value):
        raise ResponseError(f"response header {name!r} contains a control character "
                            "(CR, LF or NUL): refused")


def _check_status(status: Any) -> None:
    if type(status) is not str or not _STATUS.match(status):
        raise ResponseError(f"invalid status {status!r}: want 'NNN Reason'")
    if len(_STATUS_HAS_BODY) < 1024:
        _STATUS_HAS_BODY[status] = status_has_body(status)


class Response:
    """start_response, write() and the framing of one response."""

    # Defaults on the class: one Response per request sets only what differs.
    status: str | None = None
    headers: list[str] = []  # never mutated: start_response assigns a new list
    content_length: int | None = None
    head_sent = False
    chunked = False
    remaining: int | None = None
    sent = 0  # body bytes written (for the access log)
    # Harakiri (drover.harakiri): when a streamed response began (0.0: the app call is still
    # running, see LoopThread.last_serve), and whether the watch claimed this response.
    began = 0.0
    timed_out = False

    def __init__(self, request: Request, server_date: str, conn: Sender) -> None:
        self.request = request
        self.keep_alive = request.keep_alive
        self.chunked_ok = request.chunked_ok
        self.head = request.head
        self.server_date = server_date  # "Server: ...\r\nDate: ...\r\n", refreshed each second
        self._conn = conn

    @property
    def sender(self) -> Sender:
        """The connection this response goes to."""
        return self._conn

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: ExcInfo | None = None) -> WriteFn:
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise ResponseError("start_response called a second time without exc_info")
        if status not in _STATUS_HAS_BODY:
            _check_status(status)
        if type(headers) is not list:
            raise ResponseError(f"response headers must be a list, not {type(headers).__name__}")
        lines: list[str] = []
        cache = _LINES
        try:
            for item in headers:
                line = cache.get(item)  # a field seen before, already checked
                if line is not None:
                    if isinstance(line, str):  # an ordinary field: its line
                        lines.append(line)
                    elif self.content_length is None:  # a Content-Length: its value
                        self.content_length = line
                    else:
                        raise ResponseError("repeated Content-Length")
                    continue
                name, value = item
                kind = _NAME_KINDS.get(name)
                if kind is None:
                    kind = _name_kind(name)
                if not value.isprintable():
                    _check_value(name, value)
                if kind == _ORDINARY:
                    line = f"{name}: {value}\r\n"
                    lines.append(line)
                    if type(item) is tuple:
                        if len(cache) >= 2048:
                            cache.clear()  # bounded: varying values (cookies) must not grow it
                        cache[item] = line
                else:
                    self._special(kind, name, value, lines)
                    length = self.content_length
                    if kind == _LENGTH and type(item) is tuple and length is not None:
                        if len(cache) >= 2048:
                            cache.clear()
                        cache[item] = length
        except (TypeError, ValueError, AttributeError):
            raise ResponseError(f"response headers must be (str, str) tuples: {headers!r}") \
                from None
        self.status = status
        self.headers = lines
        return self.write

    def _special(self, kind: int, name: str, value: str, lines: list[str]) -> None:
        """Header fields the server acts on rather than passes through."""
        if kind == _LENGTH:
            if not value.strip().isdigit() or self.content_length is not None:
                raise ResponseError(f"invalid or repeated Content-Length {value!r}")
            self.content_length = int(value)
        elif kind == _CONNECTION:
            if "close" in value.lower():
                self.keep_alive = False
        elif kind in (_DATE, _SERVER):
            lines.append(f"{name}: {value}\r\n")
            prefix = "Date:" if kind == _DATE else "Server:"
            self.server_date = "".join(line for line in self.server_date.splitlines(True)
                                       if not line.startswith(prefix))
        # _DROP: hop-by-hop fields are the server's business (PEP 3333), not the app's

    def write(self, data: bytes) -> None:
        """The legacy write() callable (PEP 3333): sends at once, without backpressure."""
        if type(data) is not bytes:
            raise ResponseError(f"write() takes bytes, not {type(data).__name__}")
        if self.status is None:
            raise ResponseError("write() called before start_response")
        out = self.frame(data) if self.head_sent else self.head_bytes(None) + self.frame(data)
        if self.timed_out:  # read after head_bytes() marked the head sent: see drover.harakiri
            raise ResponseError("write() after harakiri ended this request")
        if out:
            self._conn.send(out)

    def head_bytes(self, known_length: int | None) -> bytes:
        """The status line and headers. ``known_length``: the whole body's size when the server
        knows it (a one-piece body); used when the app gave no Content-Length."""
        status = self.status
        if status is None:
            raise ResponseError("the app returned without calling start_response")
        self.head_sent = True
        length = self.content_length
        if self.keep_alive and self.chunked_ok and _STATUS_HAS_BODY.get(status):
            # The common case (a body of known length, from the app's Content-Length or a
            # one-piece body, on a kept-alive HTTP/1.1 connection): one f-string instead of
            # the general assembly below.
            if length is None:
                length = known_length
            if length is not None:
                self.remaining = length
                return (f"HTTP/1.1 {status}\r\n{self.server_date}{''.join(self.headers)}"
                        f"Content-Length: {length}\r\n\r\n").encode("latin-1")
        parts = ["HTTP/1.1 ", status, "\r\n", self.server_date, *self.headers]
        has_body = _STATUS_HAS_BODY.get(status)
        if has_body is None:
            has_body = status_has_body(status)
        if not has_body:
            if length is not None:
                parts.append(f"Content-Length: {length}\r\n")
            self.remaining = 0
        elif length is not None:
            parts.append(f"Content-Length: {length}\r\n")
            self.remaining = length
        elif known_length is not None:
            parts.append(f"Content-Length: {known_length}\r\n")
            self.remaining = known_length
        elif self.chunked_ok:
            parts.append("Transfer-Encoding: chunked\r\n")
            self.chunked = not self.head
        else:
            self.keep_alive = False  # HTTP/1.0 and uwsgi: the close delimits the body
        if not self.keep_alive:
            parts.append("Connection: close\r\n\r\n")
        elif not self.chunked_ok:
            parts.append("Connection: keep-alive\r\n\r\n")  # HTTP/1.0 keep-alive (opt-in)
        else:
            parts.append("\r\n")
        return "".join(parts).encode("latin-1")

    def frame(self, data: bytes) -> bytes:
        """Body bytes as they go on the wire; never more than a declared Content-Length."""
        if self.head:
            return b""
        if self.chunked:
            self.sent += len(data)
            return chunk(data) if data else b""
        remaining = self.remaining
        if remaining is not None:
            if len(data) > remaining:
                data = data[:remaining]
                self.keep_alive = False  # the app lied about its length
            self.remaining = remaining - len(data)
        self.sent += len(data)
        return data

    def end(self) -> bytes:
        """After the last body chunk: the chunked terminator, and whether the body fell short."""
        if self.chunked:
            return LAST_CHUNK
        if self.remaining and not self.head:
            self.keep_alive = False  # fewer bytes than Content-Length: only a close tells
        return b""


def close_iterable(result: Iterable[bytes] | None) -> None:
    """PEP 3333: call the iterable's close() if it has one, whatever happened."""
    close = getattr(result, "close", None)
    if close is not None:
        close()
