"""Chunked transfer coding (RFC 9112 section 7.1), sans-I/O: the request side's chunk-size
lines on their way to llhttp (``Dechunker``), and the response side's framing (``chunk``,
``LAST_CHUNK``)."""

from __future__ import annotations

import re

# chunk = chunk-size [ chunk-ext ] CRLF (RFC 9112 section 7.1), with
# chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ) (section 7.1.1),
# chunk-ext-val = token / quoted-string (RFC 9110 section 5.6.4).
_TOKEN_RE = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED_RE = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_EXTENSION = re.compile(rb"[ \t]*;[ \t]*(" + _TOKEN_RE + rb")(?:[ \t]*=[ \t]*(" + _TOKEN_RE
                        + rb"|" + _QUOTED_RE + rb"))?")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})((?:" + _EXTENSION.pattern + rb")*)\r\n")


class Dechunker:
    """Finds the chunk-size lines of a chunked body on its way to llhttp, and removes the
    whitespace RFC 9112 allows around ``;`` and ``=`` in chunk extensions (``5 ; a = b``),
    which llhttp refuses. Nothing else changes: llhttp still parses every byte, so it stays
    the judge of the framing. A line outside the grammar above (or longer than
    ``max_line``) is passed on unchanged and tracking stops: llhttp refuses it, or parses
    the rest of the message itself.

    ``feed`` returns the bytes for llhttp and, once the message has ended (after the last
    chunk and the trailer section), where it ended."""

    __slots__ = ("_line", "_left", "_max_line", "_tail", "_trailers")

    def __init__(self, max_line: int) -> None:
        self._line = b""  # the start of a chunk-size line
        self._left = 0  # chunk data and its CRLF still to pass
        self._max_line = max_line
        self._trailers = False  # after the last chunk
        self._tail = b"\r\n"  # the end of what passed, to find the end of the trailers

    def feed(self, data: bytes, pos: int) -> tuple[bytes, int]:
        """``data`` from ``pos``: the bytes for llhttp, and where the message ended in
        ``data`` (-1: not yet)."""
        out: list[bytes] = []
        size = len(data)
        while pos < size:
            if self._trailers:
                probe = self._tail + data[pos:]
                found = probe.find(b"\r\n\r\n")
                if found < 0:
                    self._tail = probe[-3:]
                    out.append(data[pos:])
                    break
                end = pos + found + 4 - len(self._tail)
                out.append(data[pos:end])
                return b"".join(out), end
            if self._left:
                take = min(self._left, size - pos)
                out.append(data[pos:pos + take])
                self._left -= take
                pos += take
                continue
            newline = data.find(b"\n", pos)
            if newline < 0:
                self._line += data[pos:]
                if len(self._line) > self._max_line:
                    out.append(self._line)
                    return b"".join(out), size  # not ours to judge (see the class docstring)
                break
            line = self._line + data[pos:newline + 1]
            self._line = b""
            pos = newline + 1
            match = _CHUNK_LINE.fullmatch(line)
            if match is None:
                out.append(line)
                out.append(data[pos:])
                return b"".join(out), size
            digits, extensions = match.group(1), match.group(2)
            if extensions:
                line = digits + b"".join(
                    b";" + ext.group(1) + (b"=" + ext.group(2) if ext.group(2) else b"")
                    for ext in _EXTENSION.finditer(extensions)) + b"\r\n"
            out.append(line)
            chunk_size = int(digits, 16)
            if chunk_size:
                self._left = chunk_size + 2
            else:
                self._trailers = True
        return b"".join(out), -1


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 section 7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
