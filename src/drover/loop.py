"""The event loop of a worker's loop thread: epoll, non-blocking sockets, callbacks and timers.

Theory of operation
-------------------
Drover needs little from an event loop: accept connections, read what arrives, write with a
bounded buffer and tell the protocol when to pause, run callbacks after the current batch of
events, fire a timer each second, and take callbacks from the worker's main thread. ``Loop``
does exactly that over ``select.epoll`` and nothing else: no futures, no coroutines, no TLS.

Why not asyncio with uvloop: measured on the benchmarks this loop serves as many requests per
second as uvloop did (the time per request is Drover's own Python code and the kernel's, not
the loop's), and a worker no longer imports asyncio and uvloop: importing uvloop took an
interpreter from 9.8 to 20.9 MiB; a hello-world worker is now 17 MiB, against 23.7 before.

One pass of ``run_forever``: wait in ``epoll.poll`` (no wait when callbacks are ready), hand each
reported socket to its handler, run the callbacks scheduled so far (those scheduled by these
callbacks wait for the next pass, after its poll), then the timers that are due. So a protocol
can defer work (writing answers, serving a queued request) until the loop has read everything
the poll reported. ``call_soon_threadsafe`` wakes the loop through a pipe.

``Transport`` follows the shape of asyncio's transports, so that protocol code reads the same:
``connection_made``, ``data_received``, ``eof_received``, ``connection_lost``, and
``pause_writing``/``resume_writing`` around a write buffer with high and low water marks.
``write`` sends at once when nothing is buffered; what the kernel does not take waits for
EPOLLOUT. A socket is registered only for the events its transport wants; with none (reading
paused, nothing to write) it is removed from the epoll set, since epoll reports a hang-up even
when no event is asked for and a level-triggered hang-up would spin the loop.
"""

from __future__ import annotations

import _socket
import collections
import contextlib
import errno
import heapq
import logging
import os
import select
import socket
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("drover")

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLEXCLUSIVE = getattr(select, "EPOLLEXCLUSIVE", 0)  # Linux 4.5
RECV_SIZE = 64 * 1024
MAX_EVENTS = 1024  # sockets handled per poll
ACCEPTS_PER_EVENT = 8  # connections accepted per readiness event of a listening socket
SENDMSG_PIECES = 64  # buffered pieces handed to one sendmsg call
# Peers that vanish: ordinary, not worth more than a debug line.
_DISCONNECTED = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT,
                           errno.ENOTCONN, errno.ESHUTDOWN})
_ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_UNKNOWN: Any = object()  # an address not asked of the kernel yet


class StreamProtocol(Protocol):
    """What a ``Transport`` calls (the same names as asyncio's protocols)."""

    def connection_made(self, transport: Transport) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def received_into(self, count: int) -> None: ...
    def eof_received(self) -> bool: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...


class Loop:
    """One thread's event loop. Every method runs on that thread, except
    ``call_soon_threadsafe``."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._handlers: dict[int, Callable[[int], None]] = {}
        self._ready: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque())
        self._timers: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._timer_seq = 0
        self._stopping = False
        self.closed = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.register(self._wake_r, EPOLLIN, self._drain_wakeups)
        self.time = time.monotonic
        # Every socket on this loop reads into this buffer; what arrived is copied out at its
        # exact size. Reading into a fresh 64 KiB block per read (socket.recv) left the heap
        # pinned by small objects allocated in the freed tails: 8 KiB of resident memory per
        # idle connection.
        self.read_buffer = bytearray(RECV_SIZE)
        self.read_view = memoryview(self.read_buffer)

    # -- callbacks and timers ---------------------------------------------------------------

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        self._ready.append((callback, args))

    def call_soon_threadsafe(self, callback: Callable[..., Any], *args: Any) -> None:
        """From another thread: run ``callback`` on the loop's thread, waking it if it waits."""
        self._ready.append((callback, args))  # deque.append is atomic
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, InterruptedError):
            pass  # the pipe is full: the loop is awake anyway
        except OSError:
            pass  # closed: the loop has ended

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (time.monotonic() + delay, self._timer_seq, callback, args))

    def _drain_wakeups(self, _events: int) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # -- file descriptors -------------------------------------------------------------------

    def register(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        self._handlers[fd] = handler
        self._epoll.register(fd, events)

    def modify(self, fd: int, events: int) -> None:
        self._epoll.modify(fd, events)

    def unregister(self, fd: int) -> None:
        if self._handlers.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):  # already closed
                self._epoll.unregister(fd)

    def add_writer(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` once ``fd`` is writable (or failed); level-triggered until removed."""
        self.register(fd, EPOLLOUT, lambda _events: callback())

    def remove_writer(self, fd: int) -> None:
        self.unregister(fd)

    # -- running ----------------------------------------------------------------------------

    def run_forever(self) -> None:
        poll = self._epoll.poll
        handlers = self._handlers
        ready = self._ready
        timers = self._timers
        monotonic = time.monotonic
        while not self._stopping:
            if ready:
                timeout = 0.0
            elif timers:
                timeout = max(0.0, timers[0][0] - monotonic())
            else:
                timeout = -1.0
            try:
                events = poll(timeout, MAX_EVENTS)
            except InterruptedError:
                events = []
            for fd, mask in events:
                handler = handlers.get(fd)
                if handler is not None:  # else closed by an earlier handler of this batch
                    try:
                        handler(mask)
                    except Exception:
                        log.exception("error handling an event on fd %d", fd)
            self.run_ready()
            if timers and timers[0][0] <= monotonic():
                self._run_timers()
        self._stopping = False

    def run_ready(self) -> None:
        """Run the callbacks scheduled before this call (those they schedule wait a pass)."""
        ready = self._ready
        for _ in range(len(ready)):
            callback, args = ready.popleft()
            try:
                callback(*args)
            except Exception:
                log.exception("error in callback %r", callback)

    def _run_timers(self) -> None:
        timers = self._timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, callback, args = heapq.heappop(timers)
            try:
                callback(*args)
            except Exception:
                log.exception("error in timer %r", callback)

    def stop(self) -> None:
        """``run_forever`` returns at the end of the current pass."""
        self._stopping = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._epoll.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._handlers.clear()
            self._ready.clear()
            self._timers.clear()


class Server:
    """Accepts connections on a listening socket for as long as it is started."""

    def __init__(self, loop: Loop, sock: socket.socket,
                 factory: Callable[[], StreamProtocol]) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.factory = factory
        # The accepted sockets' family, type and protocol as plain ints: socket.accept() turns
        # them into enums for every connection, which costs more than the accept itself.
        self.family, self.type, self.proto = int(sock.family), int(sock.type), sock.proto
        self.tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
        self.active = False
        # An accepted socket's own address is the listener's, unless that is a wildcard.
        name = sock.getsockname()
        wildcard = self.tcp and name[0] in ("0.0.0.0", "::")
        self.sockname: Any = _UNKNOWN if wildcard else name

    def start(self) -> None:
        if not self.active:
            self.active = True
            # Workers share the listening socket: EPOLLEXCLUSIVE wakes one waiting worker per
            # connection instead of all of them (and a busy worker is not waiting).
            self.loop.register(self.fd, EPOLLIN | EPOLLEXCLUSIVE, self._on_ready)

    def stop(self) -> None:
        """Stop accepting; the socket stays open (the worker shares it with its master)."""
        if self.active:
            self.active = False
            self.loop.unregister(self.fd)

    def accept_backlog(self) -> None:
        """Take every connection waiting in the listen queue now (a graceful stop serves them:
        they reached the server before it was told to stop)."""
        while self._accept_some(ACCEPTS_PER_EVENT) == ACCEPTS_PER_EVENT:
            pass

    def _on_ready(self, _events: int) -> None:
        self._accept_some(ACCEPTS_PER_EVENT)

    def _accept_some(self, limit: int) -> int:
        """Accept up to ``limit`` connections; returns how many were taken."""
        accept = self.sock._accept  # type: ignore[attr-defined]  # (fd, address), no wrapper
        for taken in range(limit):
            try:
                fd, peer = accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return taken  # nothing left, or another worker was quicker
            except OSError as exc:
                if exc.errno in _ACCEPT_RESOURCE_ERRORS:
                    # Out of file descriptors or memory: stop trying for a moment instead of
                    # spinning on a connection that cannot be taken.
                    log.warning("accept failed: %s; pausing accepting for 0.5 s", exc)
                    self.stop()
                    self.loop.call_later(0.5, self.start)
                    return taken
                raise
            conn = _socket.socket(self.family, self.type, self.proto, fd)
            _serve(self.loop, conn, self.factory, self.tcp, peer, self.sockname)
        return limit


def adopt_socket(loop: Loop, conn: socket.socket, factory: Callable[[], StreamProtocol]) -> None:
    """Serve a connection accepted elsewhere (the worker's main thread) on ``loop``."""
    _serve(loop, conn, factory, conn.family in (socket.AF_INET, socket.AF_INET6))


def _serve(loop: Loop, conn: socket.socket | _socket.socket,
           factory: Callable[[], StreamProtocol], tcp: bool, peername: Any = _UNKNOWN,
           sockname: Any = _UNKNOWN) -> None:
    """A freshly accepted connection: non-blocking, no Nagle delay, a transport and protocol."""
    conn.setblocking(False)
    if tcp:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    Transport(loop, conn, factory(), peername, sockname)


class Transport:
    """A connected stream socket on a ``Loop``, driving one protocol object."""

    # Defaults on the class: a connection (one per request behind nginx's uwsgi_pass) sets
    # only what differs.
    _buffer: list[bytes | memoryview] | None = None  # what the kernel did not take yet
    _buffered = 0  # its size
    _high = 256 * 1024  # write buffer limits (set_write_buffer_limits)
    _low = 64 * 1024
    _write_paused = False  # the protocol was told to pause writing
    _reading = True
    _closing = False
    _lost = False
    _mask = EPOLLIN  # the events epoll watches for
    _into: memoryview | None = None  # receive_into's target; None: the loop's read buffer

    def __init__(self, loop: Loop, sock: socket.socket | _socket.socket,
                 protocol: StreamProtocol, peername: Any = _UNKNOWN,
                 sockname: Any = _UNKNOWN) -> None:
        self._loop = loop
        self._sock = sock
        self._recv_into = sock.recv_into
        self._send = sock.send
        self._fd = fd = sock.fileno()
        self._protocol = protocol
        self._data_received = protocol.data_received
        self._peername = peername
        self._sockname = sockname
        loop._handlers[fd] = self._on_events  # Loop.register, inlined
        loop._epoll.register(fd, EPOLLIN)
        try:
            protocol.connection_made(self)
        except Exception:
            log.exception("error setting up a connection")
            self.abort()

    # -- what protocols call ----------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``socket``, ``peername`` or ``sockname``, as asyncio's transports give them."""
        if name == "socket":
            return self._sock
        try:
            if name == "peername":
                if self._peername is _UNKNOWN:
                    self._peername = self._sock.getpeername()
                return self._peername
            if name == "sockname":
                if self._sockname is _UNKNOWN:
                    self._sockname = self._sock.getsockname()
                return self._sockname
        except OSError:
            pass
        return default

    def write(self, data: bytes) -> None:
        if self._closing or not data:
            return
        if not self._buffered:
            try:
                sent = self._send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._fatal(exc)
                return
            if sent == len(data):
                return
            self._buffer = [memoryview(data)[sent:] if sent else data]
            self._buffered = len(data) - sent
            self._want(self._mask | EPOLLOUT)
        else:
            self._buffer.append(data)  # type: ignore[union-attr]  # not None when _buffered
            self._buffered += len(data)
        if self._buffered > self._high and not self._write_paused:
            self._write_paused = True
            self._protocol.pause_writing()

    def set_write_buffer_limits(self, high: int, low: int | None = None) -> None:
        self._high = high
        self._low = high // 4 if low is None else low
        if self._buffered > self._high and not self._write_paused:
            self._write_paused = True
            self._protocol.pause_writing()

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def receive_into(self, target: memoryview | None) -> None:
        """Receive the next bytes straight into ``target`` and report their count with the
        protocol's ``received_into(count)`` (a request body received in place); None: back to
        the loop's buffer and ``data_received``."""
        self._into = target

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._want(self._mask & ~EPOLLIN)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._want(self._mask | EPOLLIN)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading; close once what is buffered has been sent."""
        if self._closing:
            return
        self._closing = True
        self._reading = False
        if self._buffered:
            self._want(EPOLLOUT)
        else:
            self._finish(None)

    def abort(self) -> None:
        """Close at once, dropping what is buffered."""
        self._force_close(None)

    # -- events -----------------------------------------------------------------------------

    def _on_events(self, events: int) -> None:
        if events != EPOLLIN:  # the usual case is just something to read
            if events & EPOLLOUT or (self._buffered and not events & EPOLLIN):
                self._write_ready()  # also when only an error or hang-up is reported
            if not self._reading:
                return  # (epoll has this socket only while it wants reading or writing)
        loop = self._loop
        into = self._into
        try:
            size = self._recv_into(loop.read_buffer if into is None else into)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fatal(exc)
            return
        if not size:
            self._eof()
        elif into is None:
            self._data_received(loop.read_view[:size].tobytes())
        else:
            self._protocol.received_into(size)

    def _eof(self) -> None:
        self._reading = False
        self._want(self._mask & ~EPOLLIN)
        keep_open = self._protocol.eof_received()
        if not keep_open:
            self.close()

    def _write_ready(self) -> None:
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = []
        sock = self._sock
        while buffer:
            try:
                if len(buffer) == 1:
                    sent = sock.send(buffer[0])
                else:
                    sent = sock.sendmsg(buffer[:SENDMSG_PIECES])
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._fatal(exc)
                return
            self._buffered -= sent
            done = 0  # whole pieces sent
            while sent and sent >= len(buffer[done]):
                sent -= len(buffer[done])
                done += 1
            del buffer[:done]
            if sent:
                buffer[0] = memoryview(buffer[0])[sent:]
            if self._buffered:
                break  # the kernel took less than offered: its buffer is full
        if not buffer:
            if self._closing:
                self._finish(None)
                return
            self._want(self._mask & ~EPOLLOUT)
        if self._write_paused and self._buffered <= self._low:
            self._write_paused = False
            self._protocol.resume_writing()

    def _want(self, mask: int) -> None:
        """Ask epoll for exactly ``mask``; with nothing wanted, leave the epoll set."""
        if mask == self._mask:
            return
        loop = self._loop
        fd = self._fd
        if not mask:
            loop.unregister(fd)
        elif not self._mask:
            loop.register(fd, mask, self._on_events)
        else:
            loop.modify(fd, mask)
        self._mask = mask

    def _fatal(self, exc: OSError) -> None:
        if exc.errno not in _DISCONNECTED:
            log.warning("connection error: %s", exc)
        self._force_close(exc)

    def _force_close(self, exc: Exception | None) -> None:
        self._buffer = None
        self._buffered = 0
        self._closing = True
        self._reading = False
        self._finish(exc)

    def _finish(self, exc: Exception | None) -> None:
        """Close the socket now (the peer sees the end of the response at once, with the
        data it follows), and tell the protocol on the next pass, as asyncio does."""
        if self._lost:
            return
        self._lost = True
        self._into = None
        self._want(0)
        self._sock.close()
        self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: Exception | None) -> None:
        protocol = self._protocol
        # Break the transport <-> protocol cycle, so that reference counting frees both at
        # once: left to the cyclic collector, a burst of closed connections lingers until a
        # full collection and the worker's heap keeps their size.
        self._protocol = self._data_received = None  # type: ignore[assignment]
        protocol.connection_lost(exc)
