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
    """Accumulates one request body; ``finish()`` gives the file the app reads."""

    __slots__ = ("_file", "_spill_at", "size")

    def __init__(self, spill_at: int) -> None:
        self._file: BinaryIO = io.BytesIO()
        self._spill_at = spill_at
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self._spill_at and isinstance(self._file, io.BytesIO):
            import tempfile  # here, not at the top: a worker that never spills saves ~1 MiB

            spilled: BinaryIO = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the request
            spilled.write(self._file.getbuffer())
            self._file = spilled
        self._file.write(data)

    def finish(self) -> BinaryIO:
        self._file.seek(0)
        return self._file

    def discard(self) -> None:
        self._file.close()
