"""Request bodies: received whole before the app runs, in memory or in a temporary file.

Theory of operation
-------------------
A body is received whole before the app is called (slow clients are held by the I/O layer,
never by the app), so ``wsgi.input`` is always complete and seekable. Where it is kept depends
on what the head says and on what the worker already holds:

- A body whose length the head declares (Content-Length, or uwsgi's CONTENT_LENGTH) gets a
  ``SizedBody`` of exactly that size as soon as the head is parsed. Up to ``--body-buffer-size``
  it lives in an anonymous memory map, if the worker's ``BodyPool`` has room for it under
  ``--body-memory-limit``; otherwise in an anonymous temporary file. The socket's bytes are
  received straight into it (``into``/``filled``: recv_into, no intermediate bytes object and
  no parser), and the app reads it back through ``MappedInput`` with one copy per read. A map
  is unmapped as soon as the request is done, so its pages go back to the system at once; a
  map's pages are touched only as bytes arrive, so a slow client that declares a large body
  holds its reservation, not memory.
- A body of unknown length (chunked) goes through llhttp, which de-chunks it, into a
  ``BodyBuffer``: pieces in memory, joined once at the end, spilled to a temporary file past
  ``CHUNKED_IN_MEMORY`` (or ``--body-buffer-size`` if smaller).
- Small declared bodies (under ``SMALL_BODY``) use a ``BodyBuffer`` too: they usually arrive
  with their head, and a ``BytesIO`` over one bytes object is the cheapest stream there is.

Runs on a worker's loop threads; ``BodyPool`` is shared by them (its counter has a lock).
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

SMALL_BODY = 64 * 1024  # declared bodies below this: a BodyBuffer (see the module docstring)
CHUNKED_IN_MEMORY = 1024 * 1024  # chunked bodies above this spill to a file
FILE_SCRATCH = 256 * 1024  # receive buffer of a body being written to a file
_PRIVATE = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
_HUGE = 2 * 1024 * 1024
PENDING_MAX = 256 * 1024  # bytes kept aside for a body that waits for memory
MAP_ROUND = 256 * 1024  # map lengths are multiples of this, so that maps fit later bodies
_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", 14)


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


def _temporary_file() -> BinaryIO:
    import tempfile  # here, not at the top: a worker that never spills saves ~1 MiB

    # Unbuffered: the body is written and read in large blocks, a buffer would only copy.
    return tempfile.TemporaryFile(buffering=0)


class BodyBuffer:
    """Accumulates a body of unknown (or small) size; ``finish()`` gives the file the app reads.

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

    def write(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._pieces.append(data if type(data) is bytes else bytes(data))
        if self.size > self._spill_at:
            spilled = _temporary_file()
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


class BodyPool:
    """One worker's bodies in memory: maps of at most ``largest`` bytes each, and at most
    ``limit`` bytes of them at once (0: no limit). Shared by the worker's loop threads.

    The map of a finished body is kept for the next one (``give_back``): a fresh map costs a
    page fault and the zeroing of every page, more than receiving the bytes themselves.
    Kept maps count against the limit and are dropped first when a body needs the room, and
    all of them once the pool goes unused between two calls of ``trim`` (the loop's tick)."""

    def __init__(self, largest: int, limit: int = 0) -> None:
        self.largest = largest
        self.limit = limit
        self.reserved = 0  # bytes of the maps in use and kept
        self._free: list[mmap.mmap] = []
        self._used = False  # a map was handed out since the last trim
        self._waiters: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def chunked(self) -> BodyBuffer:
        """A body of unknown length (llhttp de-chunks it)."""
        return BodyBuffer(min(self.largest, CHUNKED_IN_MEMORY))

    def sized(self, size: int) -> BodyBuffer | SizedBody:
        """A body whose length is declared (> 0): in memory if it may be; a temporary file if
        it is larger than ``largest``. A body that may be in memory but finds no room yet is
        not placed (``SizedBody.place``): the worker waits a little for room (``wait``)."""
        if size < SMALL_BODY and size <= self.largest:
            return BodyBuffer(self.largest)
        if size > self.largest:
            return SizedBody(size, None)
        buffer = self.acquire(size)
        return SizedBody(size, self, buffer, placed=buffer is not None)

    def wait(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` (once, from whichever thread frees it) when memory is given back."""
        with self._lock:
            self._waiters.append(wake)

    def _wake(self) -> None:
        with self._lock:
            waiters, self._waiters = self._waiters, []
        for wake in waiters:
            wake()

    def acquire(self, size: int) -> mmap.mmap | None:
        """A map of at least ``size`` bytes (a kept one if one fits), or None: no room."""
        length = -(-size // MAP_ROUND) * MAP_ROUND
        with self._lock:
            self._used = True
            best: mmap.mmap | None = None
            for kept in self._free:
                if length <= len(kept) <= 2 * length and (best is None or len(kept) < len(best)):
                    best = kept
            if best is not None:
                self._free.remove(best)
                return best
            dropped = []
            while self.limit and self.reserved + length > self.limit and self._free:
                kept = self._free.pop()
                self.reserved -= len(kept)
                dropped.append(kept)
            room = not self.limit or self.reserved + length <= self.limit
            if room:
                self.reserved += length
        for kept in dropped:
            _unmap(kept)
        return _new_map(length) if room else None

    def give_back(self, buffer: mmap.mmap) -> None:
        """The body in ``buffer`` is done with: keep the map for the next body."""
        with self._lock:
            self._free.append(buffer)
            waiting = bool(self._waiters)
        if waiting:
            self._wake()

    def trim(self) -> None:
        """Unmap the kept maps if no body needed one since the last call (loop tick)."""
        with self._lock:
            if self._used or not self._free:
                self._used = False
                return
            dropped, self._free = self._free, []
            self.reserved -= sum(len(kept) for kept in dropped)
        for kept in dropped:
            _unmap(kept)


def _new_map(length: int) -> mmap.mmap:
    # Private and anonymous: plain process memory (a shared map would be a shmem file, each
    # page going through its page cache), in huge pages where the kernel allows: a 10 MiB
    # body then costs 5 page faults, not 2,560.
    buffer = mmap.mmap(-1, length, flags=_PRIVATE)
    if length >= _HUGE:
        with contextlib.suppress(OSError):
            buffer.madvise(_MADV_HUGEPAGE)
    return buffer


class SizedBody:
    """A body of a declared length, received in place: into a memory map from ``pool``, or
    (no pool) through a scratch buffer into a temporary file. With ``placed`` False it has
    neither yet: what arrives meanwhile is kept aside (up to PENDING_MAX) until ``place``."""

    __slots__ = ("_file", "_map", "_pending", "_pool", "_scratch", "_view", "declared",
                 "placed", "size")

    def __init__(self, declared: int, pool: BodyPool | None,
                 buffer: mmap.mmap | None = None, placed: bool = True) -> None:
        self.declared = declared
        self.size = 0
        self._pool = pool
        self._map: mmap.mmap | None = None
        self._file: BinaryIO | None = None
        self._pending: list[bytes] = []
        self.placed = False
        if placed:
            self._place(buffer)

    def _place(self, buffer: mmap.mmap | None) -> None:
        self.placed = True
        if buffer is not None:
            self._map = buffer
            self._view = memoryview(buffer)[:self.declared]
        else:
            self._pool = None
            self._file = _temporary_file()
            self._scratch = bytearray(min(FILE_SCRATCH, self.declared))
            self._view = memoryview(self._scratch)
        pending, self._pending = self._pending, []
        size, self.size = self.size, 0
        for data in pending:
            self.write(data)
        assert self.size == size

    def place(self, force: bool) -> bool:
        """Memory for a body that has none yet, if the pool has room now; else, with
        ``force``, a temporary file. True when placed."""
        if self.placed:
            return True
        buffer = self._pool.acquire(self.declared) if self._pool is not None else None
        if buffer is None and not force:
            return False
        self._place(buffer)
        return True

    def into(self) -> memoryview:
        """Where the next bytes of the body may be received (never past its end)."""
        if self._map is not None:
            return self._view[self.size:]
        left = self.declared - self.size
        return self._view if left >= len(self._view) else self._view[:left]

    def filled(self, count: int) -> None:
        """``count`` bytes were received at the start of ``into()``'s buffer."""
        if self._file is not None:
            view = self._view[:count]
            write = self._file.write
            written = 0
            while written < count:
                written += write(view[written:]) or 0
        self.size += count

    def write(self, data: bytes | memoryview) -> None:
        """Bytes that arrived another way (with the head, or through the parser)."""
        count = len(data)
        if self._map is not None:
            self._map[self.size:self.size + count] = data
        elif self._file is not None:
            self._file.write(data)
        else:
            self._pending.append(bytes(data))
            if self.size + count > PENDING_MAX:  # nobody waits for room: do without
                self.size += count
                self._place(None)
                return
        self.size += count

    def finish(self) -> BinaryIO:
        if not self.placed:
            self._place(None)
        self._view.release()
        if self._map is not None:
            return MappedInput(self._map, self.size, self._pool)  # type: ignore[return-value]
        assert self._file is not None
        self._scratch = bytearray()
        self._file.seek(0)
        return self._file

    def discard(self) -> None:
        """The body will never be complete (the client went away or broke the framing)."""
        self._pending = []
        if not self.placed:
            return
        self._view.release()
        if self._map is not None:
            if self._pool is not None:
                self._pool.give_back(self._map)
                self._pool = None
            else:
                _unmap(self._map)
            self._map = None
        elif self._file is not None:
            self._file.close()
            self._file = None


def _unmap(buffer: mmap.mmap) -> None:
    # A view of it still alive somewhere: the map is freed when that goes.
    with contextlib.suppress(BufferError):
        buffer.close()


class MappedInput:
    """wsgi.input over a body received into a memory map: a read-only, seekable binary file.

    Closing it (the worker does once the response is done) gives its map back to the pool;
    so does dropping it unclosed.
    """

    __slots__ = ("_map", "_pool", "_pos", "_size")

    def __init__(self, buffer: mmap.mmap, size: int, pool: BodyPool | None) -> None:
        self._map: mmap.mmap | None = buffer
        self._size = size
        self._pos = 0
        self._pool = pool

    def _buffer(self) -> mmap.mmap:
        buffer = self._map
        if buffer is None:
            raise ValueError("I/O operation on closed file.")
        return buffer

    def read(self, size: int | None = -1) -> bytes:
        buffer = self._buffer()
        pos = self._pos
        end = self._size if size is None or size < 0 else min(self._size, pos + size)
        if end <= pos:
            return b""
        self._pos = end
        return buffer[pos:end]

    read1 = read

    def readinto(self, target: Any) -> int:
        buffer = self._buffer()
        view = memoryview(target).cast("B")
        pos = self._pos
        count = max(0, min(len(view), self._size - pos))
        view[:count] = buffer[pos:pos + count]
        self._pos = pos + count
        return count

    def readline(self, size: int | None = -1) -> bytes:
        buffer = self._buffer()
        pos = self._pos
        end = self._size if size is None or size < 0 else min(self._size, pos + size)
        newline = buffer.find(b"\n", pos, end)
        if newline >= 0:
            end = newline + 1
        if end <= pos:
            return b""
        self._pos = end
        return buffer[pos:end]

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._buffer()
        base = (0, self._pos, self._size)[whence]
        position = base + offset
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._pos = position
        return position

    def tell(self) -> int:
        self._buffer()
        return self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._map is None

    def close(self) -> None:
        buffer = self._map
        if buffer is not None:
            self._map = None
            if self._pool is not None:
                self._pool.give_back(buffer)
                self._pool = None
            else:
                _unmap(buffer)

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> MappedInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
