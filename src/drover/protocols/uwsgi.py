"""The uwsgi binary protocol (requests from nginx's uwsgi_pass), sans-I/O.

Theory of operation
-------------------
A request is one packet: a 4-byte header (modifier1: u8, datasize: u16 little-endian,
modifier2: u8), ``datasize`` bytes of vars (each key and value a u16-LE length then the bytes),
then the body: CONTENT_LENGTH bytes, or, for a chunked upload streamed without CONTENT_LENGTH,
everything up to the end of input (the peer half-closes). The answer is a plain HTTP response,
and the connection carries one request: the response is delimited by closing it.

``UwsgiConnection`` has the same surface as ``http.HttpConnection``: ``receive_data()`` queues
a ``Request`` or a ``ProtocolError`` on ``events``. Malformed packets (unsupported modifier1,
vars past the block, a block over ``--buffer-size``) are errors with status 0: the worker closes
the connection with a log line and answers nothing, as the peer is not speaking uwsgi.

Security: the uwsgi protocol lets a peer pass ``UWSGI_*`` vars that make uWSGI load code
(UWSGI_FILE, UWSGI_MODULE, UWSGI_SCRIPT, UWSGI_CHDIR, UWSGI_PYHOME...). Drover never honours
them: every var whose name starts with ``UWSGI_`` is dropped before the app sees the environ.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from drover.body import EMPTY_INPUT, BodyBuffer, BodyPool, SizedBody
from drover.protocols.http import Event, HttpLimits
from drover.protocols.request import ProtocolError, Request
from drover.protocols.target import decode_path, split_target

HEADER_SIZE = 4
UNTIL_EOF = -1  # body length of a streamed chunked upload: everything until the peer's EOF
MODIFIER_WSGI = 0  # modifier1 0: a WSGI/HTTP request with vars (what nginx sends)

# CGI variables PEP 3333 requires, with their defaults when the peer did not send them.
_REQUIRED = (("REQUEST_METHOD", "GET"), ("SCRIPT_NAME", ""), ("QUERY_STRING", ""),
             ("SERVER_PROTOCOL", "HTTP/1.0"))


# nginx forwards the Content-Type and Content-Length request fields both as the CGI variables
# and as HTTP_*; PEP 3333 (and wsgiref.validate) allow only the CGI names.
_DROPPED = ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH", "")


def parse_vars(block: bytes) -> dict[str, str]:
    """The vars block -> CGI environ; ProtocolError(0, ...) if lengths run past the block.

    The block is decoded once: latin-1 maps each byte to one code point, so byte offsets are
    string offsets and each key and value is a plain slice (this runs once per request).
    """
    text = block.decode("latin-1")
    end = len(block)
    environ: dict[str, str] = {}
    pos = count = 0
    try:
        while pos < end:
            key_end = pos + 2 + (block[pos] | block[pos + 1] << 8)
            value_end = key_end + 2 + (block[key_end] | block[key_end + 1] << 8)
            if value_end > end:
                raise ProtocolError(0, "uwsgi var value past the end of the vars block")
            environ[text[pos + 2:key_end]] = text[key_end + 2:value_end]
            pos = value_end
            count += 1
    except IndexError:
        raise ProtocolError(0, "uwsgi var past the end of the vars block") from None
    if count != len(environ):
        environ = _join_repeated(text, block)
    # Never honour code-loading "magic" vars (UWSGI_SCHEME only names the scheme).
    if b"UWSGI_" in block:
        for key in [k for k in environ if k.startswith("UWSGI_") and k != "UWSGI_SCHEME"]:
            del environ[key]
    for key in _DROPPED:
        environ.pop(key, None)
    return environ


def _join_repeated(text: str, block: bytes) -> dict[str, str]:
    """The rare block with a repeated key (already validated): joined as repeated header fields
    are."""
    environ: dict[str, str] = {}
    pos = 0
    while pos < len(block):
        key_end = pos + 2 + (block[pos] | block[pos + 1] << 8)
        value_end = key_end + 2 + (block[key_end] | block[key_end + 1] << 8)
        key, value = text[pos + 2:key_end], text[key_end + 2:value_end]
        pos = value_end
        if key in environ:
            environ[key] += ("; " if key == "HTTP_COOKIE" else ", ") + value
        else:
            environ[key] = value
    return environ


def complete_environ(environ: dict[str, str]) -> None:
    """Fill what nginx's uwsgi_params may leave out, and map the scheme."""
    for key, default in _REQUIRED:
        if key not in environ:
            environ[key] = default
    if "PATH_INFO" not in environ:
        uri = environ.get("REQUEST_URI", "/").encode("latin-1")
        path, _ = split_target(uri)  # ProtocolError(400) for an unusable REQUEST_URI
        environ["PATH_INFO"] = decode_path(path)
    if "REQUEST_URI" not in environ:
        query = environ["QUERY_STRING"]
        environ["REQUEST_URI"] = environ["PATH_INFO"] + ("?" + query if query else "")
    scheme = environ.get("REQUEST_SCHEME") or environ.pop("UWSGI_SCHEME", None)
    if scheme in ("http", "https"):
        environ["wsgi.url_scheme"] = scheme
    elif environ.get("HTTPS", "").lower() in ("on", "1", "true"):
        environ["wsgi.url_scheme"] = "https"
    script_name = environ["SCRIPT_NAME"].rstrip("/")
    path_info = environ["PATH_INFO"]
    if script_name and (path_info == script_name or path_info.startswith(script_name + "/")):
        environ["PATH_INFO"] = path_info[len(script_name):]  # only at a segment boundary


class UwsgiConnection:
    """One uwsgi connection's parser state: one request, then the connection closes."""

    __slots__ = ("_body", "_buffer", "_environ", "_left", "_limits", "_pool", "_vars_limit",
                 "broken", "events", "in_head", "in_message", "seed")

    def __init__(self, limits: HttpLimits, vars_limit: int) -> None:
        self._limits = limits
        self._vars_limit = vars_limit
        self._buffer = bytearray()
        self._environ: dict[str, str] | None = None
        self.seed: dict[str, Any] = {}  # the connection's constant environ (see http.py)
        self._body: BodyBuffer | SizedBody | None = None
        self._pool = limits.bodies if limits.bodies is not None else BodyPool(limits.spill)
        self._left = 0
        self.events: deque[Event] = deque()
        self.broken = False  # one request per connection: nothing after it is parsed
        self.in_message = False
        self.in_head = False

    def receive_data(self, data: bytes) -> None:
        if self.broken:
            return
        self.in_message = True
        if self._environ is None:
            self.in_head = True
            self._buffer += data
            try:
                if not self._parse_head():
                    return
            except ProtocolError as error:
                self._fail(error)
                return
            self.in_head = False
            data = bytes(self._buffer)
            self._buffer.clear()
            if not self._left:
                self._complete()
                return
        self._receive_body(data)

    def _parse_head(self) -> bool:
        buffer = self._buffer
        if len(buffer) < HEADER_SIZE:
            return False
        modifier1 = buffer[0]
        size = buffer[1] | buffer[2] << 8
        if modifier1 != MODIFIER_WSGI:
            raise ProtocolError(0, f"unsupported uwsgi modifier1 {modifier1}")
        if size > self._vars_limit:
            raise ProtocolError(0, f"uwsgi vars block of {size} bytes exceeds --buffer-size "
                                f"({self._vars_limit})")
        if len(buffer) < HEADER_SIZE + size:
            return False
        variables = parse_vars(bytes(buffer[HEADER_SIZE:HEADER_SIZE + size]))
        del buffer[:HEADER_SIZE + size]
        complete_environ(variables)  # may raise ProtocolError(400)
        environ = self.seed.copy()
        environ.update(variables)
        length_text = environ.get("CONTENT_LENGTH", "")
        coding = environ.pop("HTTP_TRANSFER_ENCODING", None)  # the body arrives de-chunked
        if length_text:
            if not (length_text.isascii() and length_text.isdigit()):
                raise ProtocolError(400, "Invalid CONTENT_LENGTH")
            length = int(length_text)
        elif coding is not None and "chunked" in coding.lower():
            length = UNTIL_EOF  # a streamed upload of unknown length: it ends with the input
        else:
            length = 0
        if self._limits.body and length > self._limits.body:
            raise ProtocolError(413, "Request body too large")
        self._environ = environ
        self._left = length
        if length:
            self._body = self._pool.chunked() if length == UNTIL_EOF else self._pool.sized(length)
        return True

    def _receive_body(self, data: bytes) -> None:
        body = self._body
        if body is None or not data:
            return
        if self._left == UNTIL_EOF:
            if self._limits.body and body.size + len(data) > self._limits.body:
                body.discard()
                self._body = None
                self._fail(ProtocolError(413, "Request body too large"))
                return
            body.write(data)
            return
        if len(data) > self._left:
            data = data[:self._left]  # nothing may follow the body on a uwsgi connection
        body.write(data)
        self._left -= len(data)
        if not self._left:
            self._complete()

    def body_target(self) -> memoryview | None:
        """Where the rest of a large declared body may be received in place (see http.py)."""
        body = self._body
        if type(body) is SizedBody and body.placed and self._left > 0 and not self.broken:
            return body.into()
        return None

    def body_waiting(self) -> bool:
        body = self._body
        return type(body) is SizedBody and not body.placed and self._left > 0

    def place_body(self, force: bool) -> bool:
        body = self._body
        return type(body) is not SizedBody or body.place(force)

    def body_received(self, count: int) -> None:
        body = self._body
        assert type(body) is SizedBody and 0 < count <= self._left
        body.filled(count)
        self._left -= count
        if not self._left:
            self._complete()

    def _complete(self) -> None:
        environ = self._environ
        assert environ is not None
        self.broken = True
        self.in_message = False
        body = self._body
        self._body = None
        if body is not None:
            environ["CONTENT_LENGTH"] = str(body.size)
        self.events.append(Request(environ, EMPTY_INPUT if body is None else body.finish(),
                                   False, False, environ["REQUEST_METHOD"] == "HEAD"))

    def _fail(self, error: ProtocolError) -> None:
        self.broken = True
        self.in_message = self.in_head = False
        self.events.append(error)

    def release(self) -> None:
        """The connection is gone (nothing here refers back to it)."""
        self.broken = True
        if self._body is not None:
            self._body.discard()
            self._body = None

    def eof_received(self) -> None:
        if self._left == UNTIL_EOF and self._body is not None and not self.broken:
            self._left = 0
            self._complete()
        elif self.in_message and not self.broken:
            self._fail(ProtocolError(0, "uwsgi packet truncated"))
