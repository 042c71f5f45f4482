"""HTTP/1.1 requests in, response framing out (RFC 9112), sans-I/O.

Theory of operation
-------------------
``HttpConnection`` holds one client connection's parser (llhttp, through httptools). The worker
calls ``receive_data(bytes)``; parsing runs at once and completed events are queued on
``events`` in the order they happened on the wire: a ``Request`` (body complete), a
``ContinueRequest`` (send ``100 Continue`` now), or a ``ProtocolError`` (answer with its status
and close). After a ProtocolError the connection is dead: nothing more is parsed, but requests
queued before it are still answered first, so pipelined clients get their responses in order.

llhttp enforces most of RFC 9112 itself: Content-Length with Transfer-Encoding, duplicate or
malformed Content-Length, bad chunk sizes and overflows, a Transfer-Encoding that does not end in
chunked, obs-fold, whitespace before a colon, control characters in fields, bare LF. On top of
it this module enforces what llhttp allows:

- HTTP versions other than 1.0 and 1.1: 505 (section 2.6).
- HTTP/1.1 without exactly one Host: 400 (section 3.2).
- Transfer-Encoding on HTTP/1.0: 400 (section 6.1: the framing is faulty).
- A Transfer-Encoding whose last coding is not chunked: 400 (section 6.3); chunked after other
  codings: 501 (we decode none but chunked).
- Limits: request line (414), header count, field size and header block (431), body (413).
- Expect other than 100-continue: 417 (RFC 9110 section 10.1.1).
- Trailer fields are never merged into the environ (RFC 9110 section 6.5.1).
- A method llhttp does not know but that is a token (RFC 9110 section 9.1) reaches the app:
  llhttp parses the request with POST in its place (a request's framing does not depend on its
  method) and the method is restored. What is not a token: 400.
- The asterisk form (``*``) is only for OPTIONS (section 3.2.4): 400 otherwise.
- Chunk extensions may have whitespace around ``;`` and ``=`` (section 7.1.1), which llhttp
  refuses: ``Dechunker`` removes it from the chunk-size lines on their way to llhttp.
- Upgrade and CONNECT: llhttp stops after the head. Upgrade requests are served as plain ones
  (their body read here) and the connection then closes; CONNECT is 501.
- Header names containing ``_`` are dropped: they would collide with ``-`` once mapped to CGI
  names, so a client could forge a header a proxy set (e.g. X-Forwarded-For as X_Forwarded_For).
- Repeated fields are joined with ", " (RFC 9110 section 5.3), Cookie with "; " (RFC 6265
  section 5.4).

Heads, bodies and llhttp
------------------------
llhttp is given one head at a time, never the bytes after its empty line. A Content-Length
body is counted, not parsed: its bytes go to the body as they come, or are received in place by
the worker (``body_target``/``body_received``: recv_into the memory that holds the body), and
llhttp is replaced by a fresh parser for the next request. A chunked body goes to llhttp
through ``Dechunker``. What follows a message starts again at ``receive_data``. Since a head is
fed alone, the bytes it is charged with (the bound on what httptools buffers for an unfinished
field line) are its own whatever the split.

The fast path
-------------
Most requests are a GET or HEAD head that arrives whole in one read, with no body. For those,
``receive_data`` parses the head with a few bytes operations done in C (split, translate) and
two caches of lines already checked (request lines, field lines), instead of llhttp's five
callbacks into Python and three queries per request: a hello-world request served 6% faster.
It takes only a strict subset of RFC 9112: one space between the three parts of the request
line, GET or HEAD, HTTP/1.0 or 1.1, an origin-form target of ASCII without controls, field
names that are tokens, values without controls but HTAB, no Content-Length, Transfer-Encoding,
Expect, Upgrade or Proxy-Connection, exactly one Host on HTTP/1.1, and a Connection field that
is only ``close`` or ``keep-alive``. Anything else, well-formed or not, goes to llhttp from
the first byte of that head, so llhttp stays the one judge of what is malformed and of how a
message is framed; a head the fast path takes has no body and ends at its empty line, so the
two cannot disagree about where the next request starts. tests/unit/test_http_fast_path.py
feeds the same bytes (the parser tests' tables, the corpus, heads mutated at random) to a
parser with the fast path and to one without it and requires the same events.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httptools

from drover.body import EMPTY_INPUT, BodyBuffer, BodyPool, SizedBody
from drover.protocols.chunked import Dechunker
from drover.protocols.request import ContinueRequest, ProtocolError, Request
from drover.protocols.target import decode_path, split_target


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Bounds on what one request may carry (from the Config)."""

    request_line: int = 8190
    fields: int = 100
    field_size: int = 8190
    header_block: int = 65536
    body: int = 0  # 0: unlimited
    spill: int = 1024 * 1024  # bodies above this go to a temporary file
    # Where bodies are kept: the worker's shared BodyPool (its memory limit); None: a pool of
    # the parser's own, without a limit (tests).
    bodies: BodyPool | None = None


Event = Request | ContinueRequest | ProtocolError

CONTINUE = ContinueRequest(b"HTTP/1.1 100 Continue\r\n\r\n")
_PROTOCOLS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}
_METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}

# Raw header name -> CGI variable name ("" means: drop the field). Names repeat across requests,
# so each distinct spelling is converted once; the cache is bounded against hostile variety.
_CGI_NAMES: dict[bytes, str] = {}
_CGI_CACHE_MAX = 4096


def cgi_name(name: bytes) -> str:
    key = _CGI_NAMES.get(name)
    if key is not None:
        return key
    text = name.decode("latin-1")
    if "_" in text:
        key = ""
    else:
        key = text.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
    if len(_CGI_NAMES) < _CGI_CACHE_MAX:
        _CGI_NAMES[name] = key
    return key


# request-target -> (REQUEST_URI, PATH_INFO, QUERY_STRING). Targets repeat (/, /api/...), so
# each distinct short one is split and decoded once. Bounded against hostile variety: at most
# 2048 targets of up to 200 bytes (about 2 MiB), and the cache simply starts over when full.
_TARGETS: dict[bytes, tuple[str, str, str]] = {}
_TARGETS_MAX = 2048
# The environ slot between requests: never written (on_message_begin gives each request its
# own copy of the seed before any field is stored).
_NO_ENVIRON: dict[str, str] = {}
_TARGET_CACHED_LENGTH = 200


def _parse_target(target: bytes) -> tuple[str, str, str]:
    if target[:1] == b"/" and b"#" not in target:  # origin-form, the usual case
        path, _, query = target.partition(b"?")
    else:
        path, query = split_target(target)
    parsed = (target.decode("latin-1"), decode_path(path), query.decode("latin-1"))
    if len(target) <= _TARGET_CACHED_LENGTH:
        if len(_TARGETS) >= _TARGETS_MAX:
            _TARGETS.clear()
        _TARGETS[target] = parsed
    return parsed


# -- the fast path (see the module's docstring) ------------------------------------------------

# What a head may not contain but the CR LF line ends: controls other than HTAB, and DEL.
_CONTROLS = bytes([*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F])
_TOKEN_BYTES = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FAST_METHODS = {b"GET": "GET", b"HEAD": "HEAD"}
# Fields that frame a body or change the connection: left to llhttp and on_headers_complete.
# These are the fields llhttp itself reads (Proxy-Connection as Connection), and Expect.
_SLOW_KEYS = frozenset(("CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING", "HTTP_EXPECT",
                        "HTTP_UPGRADE", "HTTP_PROXY_CONNECTION"))
# Credentials are parsed but never kept in the cache after their request.
_UNCACHED_KEYS = frozenset(("HTTP_COOKIE", "HTTP_AUTHORIZATION", "HTTP_PROXY_AUTHORIZATION"))

# Request lines and field lines repeat from request to request (the same pages, the same
# clients), so each distinct short one is checked and converted once; credentials are not kept.
# Bounded against hostile variety like _TARGETS: at most 1024 lines of up to 200 bytes each,
# and a full cache starts over. A request line maps to (its CGI variables, HTTP/1.1?, HEAD?),
# a field line to (CGI name, value), the name "" for a field that is dropped.
_FAST_LINES_MAX = 1024
_FAST_LINE_CACHED_LENGTH = 200
_FAST_REQUEST_LINES: dict[bytes, tuple[dict[str, str], bool, bool]] = {}
_FAST_FIELDS: dict[bytes, tuple[str, str]] = {}


def _fast_request_line(line: bytes) -> tuple[dict[str, str], bool, bool] | None:
    """A request line not in the cache: what it gives, or None when the fast path must give
    up (not GET or HEAD, not HTTP/1.0 or 1.1, not an origin-form target of visible ASCII)."""
    try:
        raw_method, target, version = line.split(b" ")
    except ValueError:
        return None
    method = _FAST_METHODS.get(raw_method)
    if (method is None or version not in (b"HTTP/1.1", b"HTTP/1.0") or target[:1] != b"/"
            or b"\t" in target or not target.isascii()):
        return None
    uri, path, query = _TARGETS.get(target) or _parse_target(target)
    http11 = version == b"HTTP/1.1"
    parsed = ({"REQUEST_METHOD": method, "SERVER_PROTOCOL": "HTTP/1.1" if http11 else "HTTP/1.0",
               "REQUEST_URI": uri, "PATH_INFO": path, "QUERY_STRING": query},
              http11, method == "HEAD")
    if len(line) <= _FAST_LINE_CACHED_LENGTH:
        if len(_FAST_REQUEST_LINES) >= _FAST_LINES_MAX:
            _FAST_REQUEST_LINES.clear()
        _FAST_REQUEST_LINES[line] = parsed
    return parsed


def _fast_field(line: bytes) -> tuple[str, str] | None:
    """A field line not in the cache: (CGI name, value), or None when the fast path must give
    up (no colon, a name that is not a token, or a field that frames a body)."""
    name, colon, value = line.partition(b":")
    if not colon or not name or name.translate(None, _TOKEN_BYTES):
        return None  # llhttp decides (it refuses these)
    key = cgi_name(name)
    if key in _SLOW_KEYS:
        return None
    field = (key, value.strip(b" \t").decode("latin-1"))
    if len(line) <= _FAST_LINE_CACHED_LENGTH and key not in _UNCACHED_KEYS:
        if len(_FAST_FIELDS) >= _FAST_LINES_MAX:
            _FAST_FIELDS.clear()
        _FAST_FIELDS[line] = field
    return field


# The methods llhttp parses (its HTTP ones, and PRI, which it refuses as an HTTP/2 preface);
# every other token is parsed as POST and restored (HttpConnection._method_for_llhttp).
_LLHTTP_METHODS = frozenset(
    b"DELETE GET HEAD POST PUT CONNECT OPTIONS TRACE COPY LOCK MKCOL MOVE PROPFIND PROPPATCH "
    b"SEARCH UNLOCK BIND REBIND UNBIND ACL REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY "
    b"SUBSCRIBE UNSUBSCRIBE PATCH PURGE MKCALENDAR LINK UNLINK SOURCE QUERY PRI".split())
_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

class HttpConnection:
    """The HTTP/1.1 parser state of one client connection. Runs on a worker's loop thread."""

    __slots__ = ("seed", "_declared", "_head_chunks", "_upgrade_body", "_upgrade_left",
                 "_upgrade_request", "_body", "_environ", "_limits", "_parser", "_url", "broken",
                 "events", "head_bytes", "in_head", "in_message", "_fields", "_fast_max",
                 "_fast_lines", "_ended", "_pool", "_raw_left", "_raw_keep_alive",
                 "_dechunker", "_head_tail", "_method", "_method_held")

    def __init__(self, limits: HttpLimits, fast_path: bool = True) -> None:
        """``fast_path``: False sends every byte through llhttp (the tests compare the two)."""
        self._limits = limits
        # The fast path takes reads no longer than any one limit, so none can be exceeded.
        # The header block is counted as on_header counts it, up to a byte more per field
        # than the wire has (a field without a space after its colon): hence "- fields".
        self._fast_max = (min(limits.request_line, limits.field_size,
                              limits.header_block - limits.fields) if fast_path else 0)
        self._fast_lines = limits.fields + 1  # the request line and the fields
        self._ended = False  # the fast path took a request that ends the connection
        self._parser = httptools.HttpRequestParser(self)
        self.events: deque[Event] = deque()
        self.broken = False
        self.in_message = False  # part of a request has arrived (drives the timeouts)
        self.in_head = False
        self.head_bytes = 0
        self._url = b""
        self._environ: dict[str, str] = _NO_ENVIRON
        # Each request's environ starts as a copy of this: the constant variables the worker
        # sets for the connection (addresses, wsgi.*). Opaque to the parser.
        self.seed: dict[str, Any] = {}
        self._body: BodyBuffer | SizedBody | None = None
        self._pool = limits.bodies if limits.bodies is not None else BodyPool(limits.spill)
        # A Content-Length body still to come, received without llhttp (see _begin_raw).
        self._raw_left = 0
        self._raw_keep_alive = False
        self._dechunker: Dechunker | None = None  # a chunked body is being received
        self._head_tail = b""  # the last bytes of the head so far (see _head_end)
        self._method: str | None = None  # a method llhttp does not know, parsed as POST
        self._method_held = b""  # the start of a request whose method is not whole yet
        self._declared = 0  # body length the head declared; -1: chunked
        self._head_chunks = 0
        self._upgrade_left = 0
        self._upgrade_request: Request | None = None
        self._upgrade_body: BodyBuffer | None = None
        self._fields = 0

    # -- input ------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Parse bytes from the client; queue events. Never raises for bad input.

        The whole heads of bodiless requests that ``data`` starts with are parsed here,
        without llhttp (see the module's docstring); the rest, from the first head that is
        anything else, goes to llhttp, which has seen none of them and is between two
        messages."""
        if (self.in_message or self.broken or data[-4:] != b"\r\n\r\n"
                or len(data) > self._fast_max):
            self._receive(data)
            return
        lines = data.split(b"\r\n")  # the last two are empty: data ends with CRLF CRLF
        last = len(lines) - 1
        if len(data) - len(data.translate(None, _CONTROLS)) != 2 * last:
            self._receive(data)  # a control character other than the CRLFs the split found
            return
        events = self.events
        start = 0
        while True:
            blank = lines.index(b"", start)  # the empty line that ends this head
            if blank - start > self._fast_lines:
                break  # more fields than the limit: llhttp's side answers 431
            request_line = _FAST_REQUEST_LINES.get(lines[start])
            if request_line is None:
                request_line = _fast_request_line(lines[start])
                if request_line is None:
                    break
            variables, http11, head = request_line
            environ = self.seed.copy()
            fields = _FAST_FIELDS
            for index in range(start + 1, blank):
                line = lines[index]
                field = fields.get(line)
                if field is None:
                    field = _fast_field(line)
                    if field is None:
                        break
                key, text = field
                if key:
                    if key in environ:
                        environ[key] += ("; " if key == "HTTP_COOKIE" else ", ") + text
                    else:
                        environ[key] = text
            else:
                host = environ.get("HTTP_HOST")
                if host is None:
                    if http11:
                        break  # llhttp's side answers 400
                elif "," in host:
                    break
                connection = environ.get("HTTP_CONNECTION")
                if connection is None:
                    keep_alive = http11
                else:
                    connection = connection.lower()
                    if connection == "close":
                        keep_alive = False
                    elif connection == "keep-alive":
                        keep_alive = True
                    else:
                        break  # several tokens, or upgrade: llhttp reads them
                environ.update(variables)
                events.append(Request(environ, EMPTY_INPUT, keep_alive, http11, head))
                start = blank + 1
                if not keep_alive:
                    # The connection ends with this request: as llhttp does, refuse anything
                    # after it but empty lines (the worker closes before answering it).
                    self.broken = self._ended = True
                    self._after_end(lines[start:])
                    return
                if start == last:
                    return
                continue
            break  # out of the field loop: not a head for the fast path
        self._receive(b"\r\n".join(lines[start:]) if start else data)

    def _receive(self, data: bytes) -> None:
        """Everything the fast path does not take: llhttp, and the states after an error.

        llhttp is given one head at a time (up to and including its empty line), never the
        body after it: a Content-Length body is then taken without a parser (``_begin_raw``),
        a chunked one goes through ``Dechunker`` first. One pass over ``data`` by offsets: a
        read of many pipelined requests is never copied once per request."""
        pos, size = 0, len(data)
        while pos < size:
            if self._raw_left:
                take = min(self._raw_left, size - pos)
                body = self._body
                assert body is not None
                body.write(data if take == size else memoryview(data)[pos:pos + take])
                pos += take
                self._raw_left -= take
                if not self._raw_left:
                    self._complete_raw()
                continue
            dechunker = self._dechunker
            if dechunker is not None:
                out, end = dechunker.feed(data, pos)
                if end >= 0:
                    self._dechunker = None
                if out and not self._feed_llhttp(out):
                    return
                if end < 0:
                    return
                pos = end
                continue
            if self.broken:
                rest = data[pos:] if pos else data
                if self._upgrade_left:
                    self._receive_upgrade_body(rest)
                elif self._ended:
                    self._after_end((rest,))
                return
            end = self._head_end(data, pos)
            stop = size if end < 0 else end
            head = data[pos:stop] if pos or stop != size else data
            pos = stop
            if not self.in_head:
                head = self._method_for_llhttp(head)
                if not head:
                    return  # the method is not whole yet (held), or refused
            if not self._feed_llhttp(head):
                continue  # broken now: what follows is an Upgrade's body, or ignored
            if self.in_head:
                # Inside a head after all its bytes so far: httptools buffers an unfinished
                # field line itself, so bound what it may hold (fields are counted exactly in
                # on_header). Only this head's bytes were fed, so the count never depends on
                # how the bytes were split.
                self._head_chunks += len(head)
                if self._head_chunks > self._limits.header_block + self._limits.request_line:
                    self._fail(ProtocolError(431, "Request header block too large")
                               if self._url else ProtocolError(414, "Request line too long"))
                    return
            elif self.in_message:  # the head is complete and a body follows
                if self._declared > 0:
                    self._begin_raw()
                else:
                    self._dechunker = Dechunker(self._limits.field_size)

    def _feed_llhttp(self, data: bytes) -> bool:
        """llhttp parses ``data``; False when that ended the connection's parsing."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade_requested(data, exc.args[0] if exc.args else len(data))
            return False
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, ProtocolError):
                self._fail(cause)
                return False
            raise
        except httptools.HttpParserInvalidMethodError:
            # Only what is not a token gets here (see _method_for_llhttp).
            self._fail(ProtocolError(400, "Invalid method"))
            return False
        except httptools.HttpParserInvalidURLError:
            self._fail(ProtocolError(400, "Invalid request target"))
            return False
        except httptools.HttpParserError as exc:
            reason = str(exc) or "Malformed request"
            status = 505 if "HTTP version" in reason else 400
            self._fail(ProtocolError(status, reason))
            return False
        return True

    def _head_end(self, data: bytes, pos: int) -> int:
        """Where the head being received ends in ``data`` (after its empty line), searching
        from ``pos``, or -1; its CR LF CR LF may have begun in the bytes fed before."""
        if pos == 0 and self.in_head and self._head_tail:
            joined = self._head_tail + data[:3]
            found = joined.find(b"\r\n\r\n")
            if found >= 0:
                return found + 4 - len(self._head_tail)
        found = data.find(b"\r\n\r\n", pos)
        if found >= 0:
            return found + 4
        self._head_tail = (self._head_tail + data[pos:])[-3:] if len(data) - pos < 3 \
            else data[-3:]
        return -1

    def _method_for_llhttp(self, data: bytes) -> bytes:
        """At the start of a request: llhttp refuses methods it does not know, but any token
        is a method (RFC 9110 section 9.1) and the app decides what to answer. Such a method is
        kept aside and llhttp parses the request with POST in its place (the framing of a
        request does not depend on its method), restored in on_headers_complete. The method
        is held until its space arrives, so the answer does not depend on the split."""
        if self._method_held:
            data = self._method_held + data
            self._method_held = b""
        else:
            space = data.find(b" ", 0, 16)
            if space > 0 and data[:space] in _LLHTTP_METHODS:
                return data  # the usual case
        start = len(data) - len(data.lstrip(b"\r\n"))
        space = data.find(b" ", start)
        token = data[start:] if space < 0 else data[start:space]
        if not token or token.translate(None, _TCHAR):
            return data  # nothing yet, or not a token: llhttp refuses it
        if space >= 0 and token in _LLHTTP_METHODS:
            return data
        if space < 0:
            if len(token) > self._limits.request_line:
                self._fail(ProtocolError(414, "Request line too long"))
                return b""
            self._method_held = data
            self.in_message = True  # for the timeouts, and an EOF now is an incomplete request
            return b""
        self._method = token.decode("ascii")
        return data[:start] + b"POST" + data[space:]

    # -- Content-Length bodies --------------------------------------------------------------

    def _begin_raw(self) -> None:
        """llhttp parsed a head with Content-Length (and was given nothing after it). A
        counted body needs no parser: its bytes are taken as they come (or received in place,
        see ``body_target``) and llhttp, which still expects them, is replaced by a fresh
        parser for the next request. Whether the connection stays open was decided by the
        head, so it is asked now."""
        body = self._body
        assert body is not None
        self._raw_left = self._declared - body.size
        self._raw_keep_alive = self._parser.should_keep_alive()
        self._parser = httptools.HttpRequestParser(self)

    def body_target(self) -> memoryview | None:
        """Where the rest of a large Content-Length body may be received in place (with
        ``recv_into``), or None: the worker then passes bytes to ``receive_data``."""
        body = self._body
        if self._raw_left and type(body) is SizedBody and body.placed:
            return body.into()
        return None

    def body_waiting(self) -> bool:
        """A Content-Length body waits for room in the worker's memory (see drover.body)."""
        body = self._body
        return bool(self._raw_left) and type(body) is SizedBody and not body.placed

    def place_body(self, force: bool) -> bool:
        """Try again to give a waiting body memory (with ``force``: a file); True if done."""
        body = self._body
        return type(body) is not SizedBody or body.place(force)

    def body_received(self, count: int) -> None:
        """``count`` bytes were received at the start of ``body_target()``."""
        body = self._body
        assert type(body) is SizedBody and 0 < count <= self._raw_left
        body.filled(count)
        self._raw_left -= count
        if not self._raw_left:
            self._complete_raw()

    def _complete_raw(self) -> None:
        """The last byte of a Content-Length body: what on_message_complete does for llhttp."""
        self._message_complete(self._raw_keep_alive)

    # -- Upgrade and CONNECT ----------------------------------------------------------------

    def _upgrade_requested(self, data: bytes, offset: int) -> None:
        """llhttp stops at a request with ``Connection: upgrade`` (or CONNECT, refused in
        on_headers_complete), leaving its body unparsed. Drover speaks no other protocol, so
        the request is served as a plain one (the app still sees the Upgrade field, e.g. curl's
        h2c offer) and the connection closes after the response."""
        self.broken = True
        for event in self.events:
            if isinstance(event, Request):
                event.keep_alive = False
        declared = self._declared
        if not declared or not self.events or not isinstance(self.events[-1], Request):
            return
        if declared < 0:
            self.events.pop()
            self._fail(ProtocolError(501, "Upgrade with a chunked body is not supported"))
            return
        request = self.events.pop()
        assert isinstance(request, Request)
        request.body.close()
        self._upgrade_request = request
        self._upgrade_left = declared
        self._upgrade_body = self._pool.chunked()
        self.in_message = True
        self._receive_upgrade_body(data[offset:])

    def _receive_upgrade_body(self, data: bytes) -> None:
        body = self._upgrade_body
        request = self._upgrade_request
        assert body is not None and request is not None
        piece = data[:self._upgrade_left]
        body.write(piece)
        self._upgrade_left -= len(piece)
        if not self._upgrade_left:
            request.environ["CONTENT_LENGTH"] = str(body.size)
            request.body = body.finish()
            self.events.append(request)
            self._upgrade_request = self._upgrade_body = None
            self.in_message = False

    def _after_end(self, pieces: Sequence[bytes]) -> None:
        """Bytes after a request that ended the connection (see receive_data)."""
        if any(piece.strip(b"\r\n") for piece in pieces):
            self._ended = False
            self._fail(ProtocolError(400, "Data after the last request"))

    def _fail(self, error: ProtocolError) -> None:
        self.broken = True
        self._dechunker = None
        self._method_held = b""
        self.in_message = self.in_head = False
        if self._body is not None:
            self._body.discard()
            self._body = None
        self.events.append(error)

    def release(self) -> None:
        """The connection is gone: drop the llhttp parser, which refers back to this object."""
        self.broken = True
        self._raw_left = 0
        if self._body is not None:
            self._body.discard()
            self._body = None
        self._parser = None  # type: ignore[assignment]

    def eof_received(self) -> None:
        """The client half-closed; a request it left unfinished can never complete."""
        if self._upgrade_left:
            self._upgrade_left = 0
            if self._upgrade_body is not None:
                self._upgrade_body.discard()
            self.broken = False
            self._fail(ProtocolError(400, "Incomplete request"))
        elif self.in_message and not self.broken:
            self._raw_left = 0
            self._fail(ProtocolError(400, "Incomplete request"))

    # -- httptools callbacks (called from inside feed_data) ----------------------------------

    def on_message_begin(self) -> None:
        self.in_message = self.in_head = True
        self.head_bytes = self._fields = self._head_chunks = self._declared = 0
        self._url = b""
        self._environ = self.seed.copy()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limits.request_line:
            raise ProtocolError(414, "Request-URI too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        limits = self._limits
        size = len(name) + len(value)
        self.head_bytes += size + 4
        if self._fields > limits.fields:
            raise ProtocolError(431, "Too many header fields")
        if size > limits.field_size:
            raise ProtocolError(431, "Header field too large")
        if self.head_bytes > limits.header_block:
            raise ProtocolError(431, "Request header block too large")
        if not self.in_head:
            return  # a trailer field: never merged into the headers (RFC 9110 section 6.5.1)
        key = _CGI_NAMES.get(name)
        if key is None:
            key = cgi_name(name)
        if not key:
            return
        text = value.decode("latin-1").rstrip(" \t")
        environ = self._environ
        if key in environ:
            # Repeated Host fields end up joined, and a comma is never valid in a Host
            # value, so on_headers_complete catches them too.
            environ[key] += ("; " if key == "HTTP_COOKIE" else ", ") + text
        else:
            environ[key] = text

    def on_headers_complete(self) -> None:
        self.in_head = False
        parser = self._parser
        protocol = _PROTOCOLS.get(parser.get_http_version())
        if protocol is None:
            raise ProtocolError(505, "HTTP version not supported")
        method = self._method
        if method is None:
            raw_method = parser.get_method()
            method = _METHODS.get(raw_method) or raw_method.decode("ascii")
            if method == "CONNECT":
                raise ProtocolError(501, "CONNECT is not supported")
        else:
            self._method = None
        environ = self._environ
        host = environ.get("HTTP_HOST")
        if host is None:
            if protocol == "HTTP/1.1":  # RFC 9112 section 3.2
                raise ProtocolError(400, "Missing Host header")
        elif "," in host:
            raise ProtocolError(400, "Multiple Host headers")
        target = self._url
        if target == b"*" and method != "OPTIONS":
            raise ProtocolError(400, "The asterisk form is only for OPTIONS")  # RFC 9112 3.2.4
        parsed = _TARGETS.get(target)
        if parsed is None:
            parsed = _parse_target(target)
        environ["REQUEST_METHOD"] = method
        environ["SERVER_PROTOCOL"] = protocol
        environ["REQUEST_URI"], environ["PATH_INFO"], environ["QUERY_STRING"] = parsed
        if ("CONTENT_LENGTH" in environ or "HTTP_TRANSFER_ENCODING" in environ
                or "HTTP_EXPECT" in environ):
            self._check_body(environ, protocol)

    def _check_body(self, environ: dict[str, str], protocol: str) -> None:
        """Framing and expectations of a request that may carry a body."""
        limits = self._limits
        body_expected = False
        coding = environ.get("HTTP_TRANSFER_ENCODING")
        if coding is not None:
            if protocol == "HTTP/1.0":
                raise ProtocolError(400, "Transfer-Encoding is not allowed in HTTP/1.0")
            codings = [c.strip().lower() for c in coding.split(",")]
            if codings[-1] != "chunked":  # RFC 9112 section 6.3: the length is unknowable
                raise ProtocolError(400, "Transfer-Encoding does not end in chunked")
            if len(codings) > 1:
                raise ProtocolError(501, "Transfer-Encoding not implemented")
            self._declared = -1
            # The body is de-chunked and buffered whole: the app sees its length.
            del environ["HTTP_TRANSFER_ENCODING"]
            body_expected = True
        else:
            length = environ.get("CONTENT_LENGTH")
            if length is not None:
                size = int(length)  # llhttp accepted only digits
                if limits.body and size > limits.body:
                    raise ProtocolError(413, "Request body too large")
                body_expected = size > 0
                self._declared = size
        expect = environ.get("HTTP_EXPECT")
        if expect is not None:
            if expect.lower() != "100-continue":
                raise ProtocolError(417, "Expectation not supported")
            # A 1.0 client cannot take an interim response (RFC 9110 section 10.1.1).
            if body_expected and protocol == "HTTP/1.1":
                self.events.append(CONTINUE)
        if body_expected:
            declared = self._declared
            self._body = self._pool.sized(declared) if declared > 0 else self._pool.chunked()

    def on_body(self, data: bytes) -> None:
        body = self._body
        if body is None:  # unreachable: llhttp only calls this when a body is framed
            return
        limit = self._limits.body
        if limit and body.size + len(data) > limit:
            raise ProtocolError(413, "Request body too large")
        body.write(data)

    def on_message_complete(self) -> None:
        self._message_complete(self._parser.should_keep_alive())

    def _message_complete(self, keep_alive: bool) -> None:
        self.in_message = False
        environ = self._environ
        self._environ = _NO_ENVIRON  # the request owns it now; an idle connection holds none
        body = self._body
        if body is None:
            stream = EMPTY_INPUT
        else:
            stream = body.finish()
            environ["CONTENT_LENGTH"] = str(body.size)
            self._body = None
        if not keep_alive:
            # The connection ends with this request: as llhttp does, refuse anything after it
            # but empty lines (the worker closes before answering it).
            self.broken = self._ended = True
        self.events.append(Request(
            environ, stream, keep_alive,
            environ["SERVER_PROTOCOL"] == "HTTP/1.1", environ["REQUEST_METHOD"] == "HEAD"))


# -- responses -------------------------------------------------------------------------------

_REASONS = {
    400: "Bad Request", 404: "Not Found", 413: "Content Too Large", 414: "URI Too Long",
    417: "Expectation Failed", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


def error_response(status: int, reason: str, server_date: str) -> bytes:
    """A short plain-text response that closes the connection; ``reason`` is ours, never
    the client's bytes."""
    body = f"{status} {_REASONS.get(status, 'Error')}: {reason}\n".encode("latin-1")
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n{server_date}"
            f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("latin-1") + body


def status_has_body(status: str) -> bool:
    """1xx, 204 and 304 responses never carry content (RFC 9110 section 6.4.1)."""
    return not (status[0] == "1" or status.startswith(("204", "304")))
