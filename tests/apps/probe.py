"""Probe WSGI apps for Drover's black-box tests.

Each app is small and deterministic and takes its parameters from the query string, so a test
can drive it with a single request. Most apps also come as ``validated_<name>``: the same app
wrapped in ``wsgiref.validate.validator``, which raises ``AssertionError`` (or emits a
``WSGIWarning``) when the server breaks a rule of PEP 3333.

``application`` (the default name Drover looks for) is ``environ_app``.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl
from wsgiref.validate import validator

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

CHUNK = 64 * 1024
# The body big_app sends: this 64 KiB block repeated (a whole number of 256-byte cycles).
BLOCK = bytes(range(256)) * (CHUNK // 256)
CLOSE_LOG_ENV = "DROVER_TEST_CLOSE_LOG"

# -- helpers ------------------------------------------------------------------------------------


def pattern(n: int) -> bytes:
    """The first ``n`` bytes of the body ``big_app`` sends."""
    whole, rest = divmod(n, CHUNK)
    return BLOCK * whole + BLOCK[:rest]


def query(environ: Environ) -> dict[str, str]:
    """The query string as a dict (last value wins)."""
    return dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))


def int_arg(q: dict[str, str], name: str, default: int) -> int:
    value = q.get(name, "")
    return int(value) if value else default


def read_body(environ: Environ, mode: str = "auto") -> bytes:
    """Read the request body through ``wsgi.input`` the way ``mode`` says.

    auto: CONTENT_LENGTH bytes if given, else to EOF if ``wsgi.input_terminated``, else nothing.
    read: ``read(CHUNK)`` until EOF.  read_all: one ``read()``.  readline / readline_sized:
    ``readline()`` / ``readline(100)`` until EOF.  iter: iterate the stream.  readlines:
    ``readlines()``.  none: do not read.
    """
    stream = environ["wsgi.input"]
    if mode == "none":
        return b""
    if mode == "auto":
        length = environ.get("CONTENT_LENGTH") or ""
        if length:
            remaining = int(length)
            parts = []
            while remaining > 0:
                data = stream.read(min(CHUNK, remaining))
                if not data:
                    break
                parts.append(data)
                remaining -= len(data)
            return b"".join(parts)
        if environ.get("wsgi.input_terminated"):
            mode = "read"
        else:
            return b""
    if mode == "read":
        return b"".join(iter(lambda: stream.read(CHUNK), b""))
    if mode == "read_all":
        return stream.read()  # type: ignore[no-any-return]
    if mode == "readline":
        return b"".join(iter(stream.readline, b""))
    if mode == "readline_sized":
        return b"".join(iter(lambda: stream.readline(100), b""))
    if mode == "iter":
        return b"".join(stream)
    if mode == "readlines":
        return b"".join(stream.readlines())
    raise ValueError(f"unknown read mode {mode!r}")


def summarize(body: bytes) -> dict[str, Any]:
    """Length, sha256 and the first 200 bytes (as latin-1) of a body."""
    return {
        "length": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "head": body[:200].decode("latin-1"),
    }


def plain(value: Any) -> Any:
    """``value`` if JSON can carry it as is (tuples become lists), else ``None``."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, tuple) and all(isinstance(v, str | int | float | bool) for v in value):
        return list(value)
    return None


def json_response(start_response: StartResponse, data: Any, status: str = "200 OK") -> list[bytes]:
    payload = json.dumps(data, sort_keys=True).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(payload)))])
    return [payload]


def text_headers(length: int | None = None) -> list[tuple[str, str]]:
    headers = [("Content-Type", "text/plain; charset=utf-8")]
    if length is not None:
        headers.append(("Content-Length", str(length)))
    return headers


# -- apps ---------------------------------------------------------------------------------------


def hello_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Answers ``Hello, World!``."""
    body = b"Hello, World!"
    start_response("200 OK", text_headers(len(body)))
    return [body]


def environ_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """JSON of the environ and of the body read through ``wsgi.input``.

    Query: ``read=`` (see ``read_body``), ``errors=TEXT`` writes TEXT to ``wsgi.errors``.
    Answer keys: environ (the JSON-able values), types (type name of every value),
    environ_type, body (length, sha256, head), pid, thread.
    """
    q = query(environ)
    types = {key: type(value).__name__ for key, value in environ.items()}
    environ_type = type(environ).__name__
    body = read_body(environ, q.get("read", "auto"))
    if "errors" in q:
        environ["wsgi.errors"].write(q["errors"] + "\n")
        environ["wsgi.errors"].flush()
    values = {key: plain(value) for key, value in environ.items()}
    report = {
        "environ": {key: value for key, value in values.items() if value is not None},
        "types": types,
        "environ_type": environ_type,
        "body": summarize(body),
        "pid": os.getpid(),
        "thread": threading.get_ident(),
    }
    return json_response(start_response, report)


application = environ_app


def echo_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Echoes the request body with the request's Content-Type.

    Query: ``read=`` (see ``read_body``); ``stream=1`` echoes piece by piece as it reads,
    without Content-Length; ``digest=1`` answers only the body's X-Body-Sha256.
    """
    q = query(environ)
    content_type = environ.get("CONTENT_TYPE") or "application/octet-stream"
    if q.get("digest") == "1":  # only the body's SHA-256, read in chunks (no copy kept)
        digest = hashlib.sha256()
        stream = environ["wsgi.input"]
        for block in iter(lambda: stream.read(CHUNK), b""):
            digest.update(block)
        start_response("200 OK", [("Content-Length", "0"),
                                  ("X-Body-Sha256", digest.hexdigest())])
        return [b""]
    if q.get("stream") == "1":
        stream = environ["wsgi.input"]
        start_response("200 OK", [("Content-Type", content_type)])
        return iter(lambda: stream.read(CHUNK), b"")
    body = read_body(environ, q.get("read", "auto"))
    start_response("200 OK", [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("X-Body-Sha256", hashlib.sha256(body).hexdigest()),
    ])
    return [body]


def stream_app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """Yields ``n`` chunks of ``size`` bytes without Content-Length.

    Chunk ``i`` is the letter ``'a' + i % 26`` repeated; ``delay_ms`` sleeps before each chunk
    after the first.
    """
    q = query(environ)
    n, size, delay = int_arg(q, "n", 5), int_arg(q, "size", 10), int_arg(q, "delay_ms", 0)
    start_response("200 OK", text_headers())

    def chunks() -> Iterator[bytes]:
        for i in range(n):
            if i and delay:
                time.sleep(delay / 1000)
            yield bytes([97 + i % 26]) * size

    return chunks()


def big_app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """Sends ``bytes`` bytes of ``pattern()`` in 64 KiB chunks, with Content-Length.

    ``cl=0`` leaves Content-Length out.
    """
    q = query(environ)
    total = int_arg(q, "bytes", 1024 * 1024)
    headers = [("Content-Type", "application/octet-stream")]
    if q.get("cl", "1") != "0":
        headers.append(("Content-Length", str(total)))
    start_response("200 OK", headers)

    def chunks() -> Iterator[bytes]:
        whole, rest = divmod(total, CHUNK)
        for _ in range(whole):
            yield BLOCK
        if rest:
            yield BLOCK[:rest]

    return chunks()


def error_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Raises before calling start_response: the server must answer 500."""
    raise RuntimeError("error_app: deliberate failure")


def error_mid_body_app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    """Sends headers and one chunk, then raises.

    ``cl=N`` declares a Content-Length of N (longer than what is sent); without it the
    response is chunked. Either way the client must not see a complete response.
    """
    q = query(environ)
    headers = text_headers(int_arg(q, "cl", 0) or None)
    start_response("200 OK", headers)

    def chunks() -> Iterator[bytes]:
        yield b"first chunk\n"
        raise RuntimeError("error_mid_body_app: deliberate failure after the first chunk")

    return chunks()


class _ClosingBody:
    """A response body that records its close() (and how far it got) in a file."""

    def __init__(self, path: str, tag: str, n: int, size: int, delay: float) -> None:
        self.path, self.tag, self.n, self.size, self.delay = path, tag, n, size, delay
        self.sent = 0

    def _record(self, line: str) -> None:
        if self.path:
            with open(self.path, "a", encoding="utf-8") as log:
                log.write(line + "\n")

    def __iter__(self) -> Iterator[bytes]:
        for i in range(self.n):
            if i and self.delay:
                time.sleep(self.delay)
            self.sent += 1
            yield b"x" * self.size

    def close(self) -> None:
        self._record(f"closed {self.tag} sent={self.sent}/{self.n}")


def close_tracking_app(environ: Environ, start_response: StartResponse) -> _ClosingBody:
    """A body whose close() appends ``closed TAG sent=K/N`` to $DROVER_TEST_CLOSE_LOG.

    Query: tag, n (chunks, default 3), size (bytes per chunk, default 10), delay_ms (before
    each chunk after the first). The call itself appends ``called TAG``.
    """
    q = query(environ)
    body = _ClosingBody(os.environ.get(CLOSE_LOG_ENV, ""), q.get("tag", "-"),
                        int_arg(q, "n", 3), int_arg(q, "size", 10),
                        int_arg(q, "delay_ms", 0) / 1000)
    body._record(f"called {body.tag}")
    start_response("200 OK", text_headers())
    return body


def write_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Sends ``write-0`` .. ``write-{n-1}`` lines through write(), then returns ``tail``.

    ``tail=0`` returns an empty list instead.
    """
    q = query(environ)
    write = start_response("200 OK", text_headers())
    for i in range(int_arg(q, "n", 3)):
        write(f"write-{i}\n".encode())
    return [b"tail\n"] if q.get("tail", "1") == "1" else []


def file_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Returns ``wsgi.file_wrapper(open(path, 'rb'), blksize)`` for ``?path=``.

    ``cl=0`` leaves Content-Length out; ``offset=N`` seeks first and ``length=N`` announces
    that many bytes (a part of the file).
    """
    q = query(environ)
    f = open(q["path"], "rb")  # noqa: SIM115 - the file wrapper closes it
    offset = int_arg(q, "offset", 0)
    f.seek(offset)
    headers = [("Content-Type", "application/octet-stream")]
    if q.get("cl", "1") != "0":
        size = os.fstat(f.fileno()).st_size - offset
        headers.append(("Content-Length", str(int_arg(q, "length", size))))
    start_response("200 OK", headers)
    blksize = int_arg(q, "blksize", 8192)
    wrapper = environ.get("wsgi.file_wrapper")
    if wrapper is None:
        return _iter_file(f, blksize)
    return wrapper(f, blksize)  # type: ignore[no-any-return]


def _iter_file(f: Any, blksize: int) -> Iterator[bytes]:
    with f:
        yield from iter(lambda: f.read(blksize), b"")


def sleep_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Sleeps ``ms`` milliseconds, then answers JSON: pid, thread, start, end (epoch seconds)."""
    q = query(environ)
    start = time.time()
    time.sleep(int_arg(q, "ms", 100) / 1000)
    report = {"pid": os.getpid(), "thread": threading.get_ident(), "start": start,
              "end": time.time(), "tag": q.get("tag", "")}
    return json_response(start_response, report)


def bad_header_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Tries to inject a header with CR LF; the server must not let ``X-Evil`` through.

    ``where=value`` (default) injects into a header value, ``where=name`` into a header name,
    ``where=status`` into the status line.
    """
    where = query(environ).get("where", "value")
    status = "200 OK"
    headers = text_headers()
    if where == "value":
        headers.append(("X-Injected", "ok\r\nX-Evil: injected"))
    elif where == "name":
        headers.append(("X-Injected\r\nX-Evil", "injected"))
    else:
        status = "200 OK\r\nX-Evil: injected"
    start_response(status, headers)
    return [b"bad_header_app body\n"]


def headers_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Answers with the headers given in the query (repeat a name for several).

    ``status=`` sets the status line (default ``200 OK``), ``body=`` the body. Content-Type
    defaults to text/plain unless given or the status is 204 or 304.
    """
    pairs = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    status, body = "200 OK", b""
    headers: list[tuple[str, str]] = []
    for name, value in pairs:
        if name == "status":
            status = value
        elif name == "body":
            body = value.encode()
        else:
            headers.append((name, value))
    no_body = status[:3] in ("204", "304")
    if not no_body and not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("Content-Type", "text/plain; charset=utf-8"))
    start_response(status, headers)
    return [body] if body else []


def exc_info_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Exercises start_response's exc_info argument.

    mode=before (default): start_response(200), fail, start_response(500, ..., exc_info) before
    any output; the client must get the 500 and its body.
    mode=after: send one chunk, then fail and call start_response with exc_info, which must
    re-raise; the response must be cut short.
    mode=twice: call start_response a second time *without* exc_info, which the server must
    refuse (an error, hence a 500).
    """
    mode = query(environ).get("mode", "before")
    start_response("200 OK", text_headers())
    if mode == "twice":
        start_response("201 Created", text_headers())
        return [b"start_response was accepted twice\n"]
    if mode == "before":
        try:
            raise ValueError("exc_info_app: deliberate failure before output")
        except ValueError:
            start_response("500 Internal Server Error",
                           [*text_headers(), ("X-Exc-Info", "replaced")], sys.exc_info())
        return [b"error page from exc_info_app\n"]

    def chunks() -> Iterator[bytes]:
        yield b"partial\n"
        try:
            raise ValueError("exc_info_app: deliberate failure after output")
        except ValueError:
            start_response("500 Internal Server Error", text_headers(), sys.exc_info())
        yield b"start_response with exc_info did not re-raise after output\n"

    return chunks()


def sized_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    """Answers ``bytes`` bytes of ``pattern()`` as a one-piece list, with Content-Length."""
    body = pattern(int_arg(query(environ), "bytes", 1024))
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(body)))])
    return [body]


_CONTEXT = contextvars.ContextVar("probe_context", default="unset")
_CLOSE_SAW: list[str] = []


class _ContextBody:
    """Yields what the request's context variable holds at each step; close() records it."""

    def __init__(self, start: str, closed_before: str, n: int, size: int) -> None:
        self.head = f"start={start} close-before={closed_before}\n".encode()
        self.n, self.size = n, size

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        for _ in range(self.n):
            yield f"{_CONTEXT.get()}:".encode().ljust(self.size, b".") + b"\n"

    def close(self) -> None:
        _CLOSE_SAW.append(_CONTEXT.get())


def context_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """Sets a context variable to ``tag``; its body shows the variable in every step, and the
    first line shows its value when the app was called (``unset``: a fresh context) and what
    the previous response's close() saw."""
    q = query(environ)
    start = _CONTEXT.get()
    _CONTEXT.set(q.get("tag", "tag"))
    closed_before = _CLOSE_SAW[-1] if _CLOSE_SAW else "none"
    start_response("200 OK", text_headers())
    return _ContextBody(start, closed_before, int_arg(q, "n", 3), int_arg(q, "size", 16))


validated_hello_app = validator(hello_app)
validated_environ_app = validator(environ_app)
validated_echo_app = validator(echo_app)
validated_stream_app = validator(stream_app)
validated_big_app = validator(big_app)
validated_error_app = validator(error_app)
validated_error_mid_body_app = validator(error_mid_body_app)
validated_close_tracking_app = validator(close_tracking_app)
validated_write_app = validator(write_app)
validated_file_app = validator(file_app)
validated_sleep_app = validator(sleep_app)
validated_headers_app = validator(headers_app)
validated_exc_info_app = validator(exc_info_app)
