"""The one request shape every wire protocol produces, and the one error type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO


@dataclass(slots=True)
class Request:
    """A complete request, body included, ready for the WSGI layer.

    ``environ`` is a copy of the connection's seed (the constants the worker set: addresses,
    wsgi.*) with the CGI variables the wire carried: REQUEST_METHOD, REQUEST_URI, PATH_INFO
    (percent-decoded, bytes as latin-1), QUERY_STRING, SERVER_PROTOCOL, CONTENT_TYPE,
    CONTENT_LENGTH and HTTP_*; a uwsgi request adds what nginx sent (SERVER_NAME, REMOTE_ADDR,
    HTTPS, SCRIPT_NAME...), which wins over the seed. The worker adds ``wsgi.input``.

    Not frozen: one is built per request on the hot path, and a frozen dataclass costs an
    ``object.__setattr__`` per field. Nothing mutates a Request after the parser hands it over.
    """

    environ: dict[str, Any]
    body: BinaryIO
    keep_alive: bool  # the client allows another request on this connection
    chunked_ok: bool  # the response may be framed with chunked transfer-coding (HTTP/1.1)
    head: bool  # HEAD: send the headers of the GET, no body


@dataclass(slots=True)
class ContinueRequest:
    """The client sent ``Expect: 100-continue`` and waits before sending the body.

    Queued in request order, so the interim response is sent only when every earlier response
    on the connection has been written (RFC 9110 section 10.1.1).
    """

    interim: bytes


class ProtocolError(Exception):
    """Bad input. ``status`` is the HTTP status to answer with (0: close without answering)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
