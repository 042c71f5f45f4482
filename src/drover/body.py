"""Request bodies: kept in memory up to a threshold, spilled to a temporary file above it.

A body is received whole before the app is called (slow clients are held by the I/O layer, never
by the app), so ``wsgi.input`` is always a complete, seekable file: an ``io.BytesIO`` or an
anonymous temporary file. Runs on a worker's loop thread.
"""

from __future__ import annotations

import io
from typing import BinaryIO


class EmptyInput(io.RawIOBase):
    """wsgi.input of a request with no body: stateless, so one instance serves every request."""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return b""

    def readline(self, size: int | None = -1) -> bytes:
        return b""

    def readlines(self, hint: int = -1) -> list[bytes]:
        return []

    def readinto(self, buffer: object) -> int:
        return 0

    def __iter__(self) -> EmptyInput:
        return self

    def __next__(self) -> bytes:
        raise StopIteration

    def close(self) -> None:  # shared: never really closed
        pass


EMPTY_INPUT: BinaryIO = EmptyInput()  # type: ignore[assignment]


class BodyBuffer:
    """Accumulates one request body; ``finish()`` gives the file the app reads.

    In memory the pieces are kept as they came and joined once at the end: a growing BytesIO
    would copy the body again at every reallocation. ``io.BytesIO(bytes)`` then shares the
    joined buffer instead of copying it.
    """

    __slots__ = ("_file", "_pieces", "_spill_at", "size")

    def __init__(self, spill_at: int) -> None:
        self._pieces: list[bytes] = []
        self._file: BinaryIO | None = None
        self._spill_at = spill_at
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._pieces.append(data)
        if self.size > self._spill_at:
            import tempfile  # here, not at the top: a worker that never spills saves ~1 MiB

            spilled: BinaryIO = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the request
            spilled.writelines(self._pieces)
            self._pieces = []
            self._file = spilled

    def finish(self) -> BinaryIO:
        if self._file is None:
            return io.BytesIO(b"".join(self._pieces))
        self._file.seek(0)
        return self._file

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        self._pieces = []
