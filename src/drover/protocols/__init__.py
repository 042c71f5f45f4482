"""Wire protocols, sans-I/O: bytes in, Requests or ProtocolErrors out, response bytes back.

Nothing in this package touches a socket, an event loop, a thread or the clock; the worker feeds
it bytes and writes what it returns. Both protocols produce the same ``Request``.
"""

from drover.protocols.request import ContinueRequest, ProtocolError, Request

__all__ = ["ContinueRequest", "ProtocolError", "Request"]
