"""Request targets (RFC 9112 section 3.2), sans-I/O: split into path and query, and the path
percent-decoded for PATH_INFO. Shared by the HTTP and uwsgi protocols."""

from __future__ import annotations

import httptools

from drover.protocols.request import ProtocolError

_HEX = frozenset(b"0123456789abcdefABCDEF")


def unquote_to_bytes(raw: bytes) -> bytes:
    """Percent-decoding (RFC 3986 section 2.1); a '%' not followed by two hex digits stays."""
    pieces = raw.split(b"%")
    out = [pieces[0]]
    for piece in pieces[1:]:
        if len(piece) >= 2 and piece[0] in _HEX and piece[1] in _HEX:
            out.append(bytes((int(piece[:2], 16),)) + piece[2:])
        else:
            out.append(b"%" + piece)
    return b"".join(out)


def decode_path(raw: bytes) -> str:
    """PATH_INFO: percent-decoded bytes carried as latin-1 (PEP 3333)."""
    if b"%" in raw:
        raw = unquote_to_bytes(raw)
    return raw.decode("latin-1")


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """request-target -> (path, query), for origin-form, absolute-form and asterisk-form."""
    if b"#" in target:  # not allowed on the wire, but never part of path or query
        target = target.partition(b"#")[0]
    if target[:1] != b"/" and target != b"*":
        try:
            url = httptools.parse_url(target)  # absolute-form (RFC 9112 section 3.2.2)
        except httptools.HttpParserInvalidURLError:
            raise ProtocolError(400, "Invalid request target") from None
        return url.path or b"/", url.query or b""
    path, _, query = target.partition(b"?")
    return path, query
