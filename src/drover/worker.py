"""A worker process: event loops that accept connections, parse requests and call the app.

Theory of operation
-------------------
The master forks a worker and calls ``run_worker`` in the child. The worker starts ``--threads``
loop threads; each runs its own event loop (``drover.loop``) and calls the app *directly on its loop
thread*: no thread hop per request. A blocking app blocks only its own thread's loop while the
others keep serving, so a worker serves up to ``--threads`` blocking requests at once.

Accepting: with one thread (the default, for apps that never block) the loop accepts on the
inherited listening sockets itself. With several, the worker's main thread
accepts and hands each connection to the least loaded loop (one hop per *connection*), so that
simultaneous clients spread over the threads instead of piling onto whichever loop woke first.

The worker's main thread does no request work: besides accepting (threads > 1) it waits for
signals (TERM/INT: graceful stop, HUP: retire with keep-alive drain, QUIT: immediate exit) and,
once a second, writes a heartbeat byte to the master's pipe if every loop thread has ticked
recently. A loop stuck past ``--timeout`` stops the heartbeat and the master replaces the
worker.

Per connection (``Connection``): bytes go to the protocol's sans-I/O parser, which queues
events. Events are handled strictly in order, one response at a time, so pipelined requests are
answered in order. A request's body is complete before the app runs (the parser buffers it,
spilling large ones to a temporary file), so a slow client never holds the app. Responses
respect backpressure: when the transport's buffer passes its high-water mark, iteration of the
app's body stops until the buffer drains (``resume_writing``), so a 1 GiB response costs a
few hundred KiB of memory. ``wsgi.file_wrapper`` over a regular file goes out with
``os.sendfile``.

A loop ticks once a second: it refreshes the cached ``Date`` header and drops connections past
their deadline (header, body/write progress, or keep-alive idle).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import errno
import os
import select
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

from drover.body import EMPTY_INPUT
from drover.config import Config
from drover.logs import access, log
from drover.loop import Loop, Server, Transport, adopt_socket
from drover.protocols.http import HttpConnection, HttpLimits, error_response
from drover.protocols.request import ContinueRequest, ProtocolError, Request
from drover.protocols.uwsgi import UwsgiConnection
from drover.sockets import Listener
from drover.wsgi import (
    FileWrapper,
    Response,
    ResponseError,
    base_environ,
    close_iterable,
    connection_environ,
)

EXIT_APP_LOAD = 3  # the worker could not load the app: the master must not respawn in a loop

WsgiApp = Callable[..., Iterable[bytes]]

HIGH_WATER = 256 * 1024  # transport buffer size that pauses the app's body iteration
COPY_LIMIT = 64 * 1024  # bodies below this are joined to the head for a single send
FLUSH_AFTER = 0.001  # seconds an answer may wait for its loop pass to end (LoopThread.flush)
SLOW_REQUEST = 0.00025  # after a request that took longer, answers are not held (ditto)
MAX_QUEUED_EVENTS = 32  # pipelined requests parsed ahead before reading pauses
FEED_SLICE = 16 * 1024  # a larger read is parsed in slices of this size (Connection.feed)

NEVER = float("inf")
_END = object()  # next()'s default: the app's iterable is exhausted
_monotonic = time.monotonic
_Context = contextvars.Context

# What a connection is waiting for, which decides its deadline.
FRESH, IDLE, READING, WRITING = range(4)


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(timestamp: float) -> str:
    """IMF-fixdate (RFC 9110 section 5.6.7), independent of the locale."""
    t = time.gmtime(timestamp)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


class Connection:
    """One client connection on one loop thread (HTTP; the uwsgi handler subclasses it)."""

    # Per-connection state. Defaults live on the class, so a new connection (one per request
    # behind nginx's uwsgi_pass) sets only what differs.
    transport: Transport
    closed = False
    busy = False  # a response is being streamed
    write_paused = False
    reading_paused = False
    state = FRESH
    deadline = 0.0
    # The response in progress (when busy).
    request: Request | None = None
    response: Response | None = None
    result: Iterable[bytes] | None = None
    iterator: Iterator[bytes] | None = None
    started = 0.0
    sendfile_job: _SendfileJob | None = None
    waiting_turn = False  # queued on the loop's run queue (threads > 1)
    # Complete responses waiting for the end of this pass of the loop (see LoopThread.flush).
    out: list[bytes] | None = None
    out_size = 0
    held = b""  # input not parsed yet because many requests were already waiting (feed)
    continuing = False  # its streamed response goes on after the loop's flush
    ctx: contextvars.Context  # the context the current request's app code runs in

    def __init__(self, loop_thread: LoopThread, environ: dict[str, Any]) -> None:
        self.lt = loop_thread
        self.base = environ
        self.environ: dict[str, Any] = environ
        self.parser: HttpConnection | UwsgiConnection = self.make_parser()

    def make_parser(self) -> HttpConnection:
        return HttpConnection(self.lt.worker.limits)

    # -- transport callbacks (loop thread) ---------------------------------------------------

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport  # its write buffer pauses us at 256 KiB (HIGH_WATER)
        self.peer = transport.get_extra_info("peername")
        self.environ = connection_environ(self.base, transport.get_extra_info("sockname"),
                                          self.peer)
        self.parser.seed = self.environ
        lt = self.lt
        lt.connections.add(self)
        self.deadline = lt.clock() + lt.header_timeout
        if len(lt.connections) >= lt.max_connections:
            lt.pause_accepting()

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if self.held or len(data) > FEED_SLICE:
            self.feed(self.held + data)
        else:
            parser.receive_data(data)
        if not self.busy:
            if parser.events:
                if self.lt.take_turns:
                    self.lt.queue_turn(self)
                else:
                    self.process()  # also sets the keep-alive deadline when it idles
            if parser.in_message and not self.closed and not self.busy:
                lt = self.lt
                if not parser.in_head:  # receiving a body: progress extends the deadline
                    self.state = READING
                    self.deadline = lt.clock() + lt.io_timeout
                elif self.state != READING:  # the whole head must come within the timeout
                    self.state = READING
                    self.deadline = lt.clock() + lt.header_timeout
        if (len(parser.events) >= MAX_QUEUED_EVENTS or self.held) and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def feed(self, data: bytes) -> None:
        """Parse a large read a slice at a time, while few requests wait; hold the rest raw.

        One read can carry thousands of pipelined requests. Parsed at once, each would cost
        an environ (about a kilobyte) before the first is answered; held, it costs its bytes.
        A request body goes to the parser whole, without slicing.
        """
        parser = self.parser
        events = parser.events
        pos, end = 0, len(data)
        while pos < end and len(events) < MAX_QUEUED_EVENTS:
            if parser.in_message and not parser.in_head:
                parser.receive_data(data[pos:] if pos else data)
                pos = end
                break
            parser.receive_data(data[pos:pos + FEED_SLICE])
            pos += FEED_SLICE
        self.held = data[pos:] if pos < end else b""

    def eof_received(self) -> bool:
        self.parser.eof_received()
        if self.parser.events and not self.busy:
            self.process()
        if not self.busy and not self.closed:
            self.close()
        return True  # keep the write side open to finish a response in progress

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.out = None
        self.lt.connection_closed(self)
        if self.sendfile_job is not None:
            self.sendfile_job.cancel()
        if self.busy:
            # The client went away mid-response: the app's close() is still owed (PEP 3333).
            self._release(*self._end_response())
        self.parser.release()  # no reference cycles left: freed as soon as dropped

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.closed:
            return
        if not self.busy:
            if self.parser.events:
                self.process()  # pipelined requests held back while the client did not read
            return
        self.deadline = self.lt.clock() + self.lt.io_timeout
        if self.sendfile_job is not None:
            self.sendfile_job.resume()
        elif self.iterator is not None:
            self.stream()
            if self.response is None and not self.closed:
                self.process()  # requests pipelined behind the streamed one

    # -- serving ----------------------------------------------------------------------------

    def process(self) -> None:
        """Handle queued events in wire order until one needs to wait for the client."""
        events = self.parser.events
        while True:
            while events and not self.busy and not self.closed and not self.write_paused:
                event = events.popleft()
                if type(event) is Request:
                    self.serve(event)
                elif type(event) is ContinueRequest:
                    self.send(event.interim)
                else:
                    assert isinstance(event, ProtocolError)
                    self.reject(event)
                    return
            if self.busy or self.closed:
                return
            if self.write_paused and (events or self.held):
                # A client that pipelines requests but does not read the answers: serve no
                # more until it does (resume_writing), so answers cannot pile up here.
                self.state = WRITING
                self.deadline = self.lt.clock() + self.lt.io_timeout
                return
            if not self.held:
                break
            self.feed(self.held)  # requests held raw while others waited
        if self.reading_paused and not self.held and len(events) < MAX_QUEUED_EVENTS // 2:
            self.reading_paused = False
            self.transport.resume_reading()
        if not self.parser.in_message:
            if self.parser.broken:
                self.close()
            else:  # idle between requests
                self.state = IDLE
                self.deadline = self.lt.clock() + self.lt.keepalive_timeout

    def reject(self, error: ProtocolError) -> None:
        """Bad input: a short answer (HTTP) and close; the worker is unharmed."""
        peer = self.environ.get("REMOTE_ADDR", "?")
        log.info("bad request from %s: %s %s", peer, error.status or "", error.reason)
        if error.status:
            self.send(error_response(error.status, error.reason, self.lt.server_date))
        self.close()

    def serve(self, request: Request) -> None:
        """Call the app for one request and start sending its response (loop thread)."""
        lt = self.lt
        if not lt.keepalive:
            request.keep_alive = False
        environ = request.environ  # the connection's seed with this request's variables
        environ["wsgi.input"] = request.body
        response = Response(request, lt.server_date, self)
        if lt.access_log:
            self.started = time.perf_counter()
        now = _monotonic()
        if lt.deferred and (now - lt.deferred_since > FLUSH_AFTER
                            or now - lt.last_serve > SLOW_REQUEST):
            # This pass of the loop is running long, or the request before this one was slow
            # (so this one may be too): answer those served so far before calling the app.
            lt.flush_writes()
        lt.last_serve = now
        result = None
        # Each request runs in a context of its own, entered for every call into the app (the
        # call, each step of its iterable, close()), so that context variables set in one
        # step are there in the next even when that runs from another loop callback.
        ctx = self.ctx = _Context()
        lt.in_app = True
        try:
            result = ctx.run(lt.app, environ, response.start_response)
            lt.in_app = False
            if (type(result) is list and len(result) == 1 and type(result[0]) is bytes
                    and not response.head_sent):
                data = result[0]  # the common case: the whole body in one piece
                size = len(data)
                head = response.head_bytes(size)
                if size >= COPY_LIMIT:  # no copy of a large body: the transport keeps it
                    self.send(head)
                    self.transport.write(response.frame(data) + response.end())
                elif response.remaining != size or response.head:
                    self.defer(head + response.frame(data) + response.end())
                else:  # head and body in one send at the end of the pass
                    response.sent = size
                    self.defer(head + data)
                if lt.access_log or request.body is not EMPTY_INPUT:
                    self.done(request, response, None)
                    return
                worker = lt.worker  # done(), inlined for the usual case
                worker.served += 1
                if worker.served == worker.max_requests:
                    worker.recycle()
                if not response.keep_alive or lt.stopping:
                    self.close()
                return
            if type(result) is FileWrapper and _SendfileJob.usable(result):
                self._begin_response(request, response, result)
                self.sendfile_job = _SendfileJob(self, result)
                self.sendfile_job.start()
                return
            self._begin_response(request, response, result)
            self.iterator = ctx.run(iter, result)
        except Exception as exc:
            lt.in_app = False
            self.app_failed(request, response, result, exc)
            return
        self.stream(first=True)

    def _begin_response(self, request: Request, response: Response,
                        result: Iterable[bytes]) -> None:
        """A response that may outlive this callback (streamed or sent from a file)."""
        self.request, self.response, self.result = request, response, result
        self.busy = True
        self.state = WRITING
        self.deadline = self.lt.clock() + self.lt.io_timeout

    def stream(self, first: bool = False) -> None:
        """Iterate the app's body until it ends or the transport asks us to wait.

        ``first`` (from ``serve``): a small first block is deferred to the end of the loop
        pass like a one-piece answer, and iteration goes on after the pass's writes
        (``LoopThread.flush``). The block is never held back waiting for the app's next one:
        PEP 3333 forbids that, and streaming apps rely on it.
        """
        response = self.response
        iterator = self.iterator
        assert response is not None and iterator is not None
        if self.out is not None and not first:
            self.flush_out()
        transport = self.transport
        write = transport.write
        step = self.ctx.run
        try:
            while True:
                data = step(next, iterator, _END)
                if data is _END:
                    break
                if type(data) is not bytes:
                    raise ResponseError(f"the app yielded {type(data).__name__}, not bytes")
                if not data:
                    continue  # PEP 3333: headers wait for the first non-empty chunk
                if response.head_sent:
                    write(response.frame(data))
                else:
                    head = response.head_bytes(None)  # decides the framing first
                    framed = response.frame(data)
                    if len(framed) < COPY_LIMIT:
                        if first:
                            self.defer(head + framed)
                            self.lt.continue_after_flush(self)
                            return
                        write(head + framed)
                    else:
                        self.send(head)
                        write(framed)
                if self.write_paused or transport.is_closing():
                    return  # resume_writing() continues, connection_lost() cleans up
            tail = response.end()
            if not response.head_sent:
                tail = response.head_bytes(0) + tail
            if self.out is not None:
                self.defer(tail)
            else:
                write(tail)
        except Exception as exc:
            request, result = self._end_response()
            self.app_failed(request, response, result, exc)
            return
        self.finish()

    def finish(self) -> None:
        """A streamed or sendfile response is complete."""
        response = self.response
        request, result = self._end_response()
        assert response is not None and request is not None
        self.done(request, response, result)

    def _end_response(self) -> tuple[Request | None, Iterable[bytes] | None]:
        request, result = self.request, self.result
        self.request = self.response = self.result = self.iterator = None
        self.busy = False
        return request, result

    def done(self, request: Request, response: Response, result: Iterable[bytes] | None) -> None:
        """The response is written: release the request, then keep the connection or close."""
        lt = self.lt
        if lt.access_log:
            self._log_access(request, response)
        if result is not None or request.body is not EMPTY_INPUT:
            self._release(request, result)
        worker = lt.worker
        worker.served += 1
        if worker.served == worker.max_requests:
            worker.recycle()
        if not response.keep_alive or lt.stopping:
            self.close()

    def app_failed(self, request: Request | None, response: Response | None,
                   result: Iterable[bytes] | None, exc: Exception) -> None:
        """The app raised or broke PEP 3333: 500 if nothing was sent, else cut the response."""
        environ = request.environ if request is not None else {}
        log.error("error handling %s %s", environ.get("REQUEST_METHOD"),
                  environ.get("REQUEST_URI"), exc_info=exc)
        if response is not None and not response.head_sent:
            self.send(error_response(500, "The application failed", self.lt.server_date))
        self._release(request, result)
        self.close()

    def _release(self, request: Request | None, result: Iterable[bytes] | None) -> None:
        """PEP 3333: the iterable's close() is always called; the body's file is freed."""
        if result is not None:
            try:
                self.ctx.run(close_iterable, result)
            except Exception:
                log.exception("error in the app's close()")
        if request is not None and request.body is not EMPTY_INPUT:
            request.body.close()

    def _log_access(self, request: Request, response: Response) -> None:
        environ = request.environ
        status = (response.status or "500").split(" ", 1)[0]
        took = (time.perf_counter() - self.started) * 1000
        access.info('%s "%s %s %s" %s %d %.1fms', environ.get("REMOTE_ADDR"),
                    environ.get("REQUEST_METHOD"), environ.get("REQUEST_URI"),
                    environ.get("SERVER_PROTOCOL"), status, response.sent, took)

    # -- writing ------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """Write now, after anything deferred: the wire keeps the order of the calls."""
        if self.out is not None:
            self.flush_out()
        self.transport.write(data)

    def defer(self, data: bytes) -> None:
        """A complete small response: write it when this pass of the loop ends."""
        out = self.out
        if out is None:
            self.out = [data]
            self.out_size = len(data)
            lt = self.lt
            if not lt.deferred:
                # When the request began (no clock read here): the wait is counted from there.
                lt.deferred_since = lt.last_serve
                lt.schedule_flush()
            lt.deferred.append(self)
        else:  # pipelined requests: their answers go out in one send
            out.append(data)
            self.out_size += len(data)
            if self.out_size >= HIGH_WATER:
                self.flush_out()

    def flush_out(self) -> None:
        out = self.out
        assert out is not None
        self.out = None
        transport = self.transport
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self.closed:
            transport.close()  # close() waited for this

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.out is None:
                self.transport.close()
            # else the loop's flush writes what is deferred, then closes

    def timed_out(self) -> None:
        """Called by the loop tick when the deadline passed."""
        if self.state in (READING, WRITING):
            what = "request" if self.state == READING else "response"
            log.info("dropping connection from %s: no progress on its %s within the timeout",
                     self.environ.get("REMOTE_ADDR", "?"), what)
            if self.state == READING and self.parser.in_head and not self.busy:
                self.send(error_response(408, "Request timeout", self.lt.server_date))
        self.close()
        if self.busy or self.transport.get_write_buffer_size():
            self.transport.abort()  # a client that does not read would hold it forever


class UwsgiHandler(Connection):
    """A uwsgi connection: one request from nginx (or another uwsgi client), then close."""

    def make_parser(self) -> UwsgiConnection:  # type: ignore[override]
        return UwsgiConnection(self.lt.worker.limits, self.lt.config.buffer_size)

    def connection_made(self, transport: Transport) -> None:
        super().connection_made(transport)
        peer = self.peer
        # The protocol has no authentication: over TCP only listed peers may speak it.
        if isinstance(peer, tuple) and not self.lt.worker.uwsgi_allowed(peer[0]):
            log.warning("refused uwsgi connection from %s (not in --uwsgi-allow-from)", peer[0])
            self.close()


class _SendfileJob:
    """Send a regular file with os.sendfile, waiting on socket writability between bursts."""

    def __init__(self, conn: Connection, wrapper: FileWrapper) -> None:
        self.conn = conn
        self.wrapper = wrapper
        self.file: BinaryIO = wrapper.filelike  # type: ignore[assignment]
        self.offset = 0
        self.left = 0
        self.watch_fd = -1

    @staticmethod
    def usable(wrapper: FileWrapper) -> bool:
        try:
            return stat.S_ISREG(os.fstat(wrapper.filelike.fileno()).st_mode)
        except (AttributeError, OSError, ValueError):
            return False

    def start(self) -> None:
        conn = self.conn
        response = conn.response
        assert response is not None
        fd = self.file.fileno()
        self.offset = self.file.tell()
        size = max(0, os.fstat(fd).st_size - self.offset)
        head = response.head_bytes(size)
        self.left = size if response.remaining is None else min(size, response.remaining)
        if response.head or response.chunked:
            self.left = 0
        response.sent = self.left
        # Zero high-water mark: pause_writing() now means "anything is buffered", and
        # resume_writing() "the buffer is empty", which is when sendfile may write directly.
        conn.transport.set_write_buffer_limits(0)
        conn.send(head)
        if not conn.write_paused:
            self.resume()

    def resume(self) -> None:
        conn = self.conn
        if conn.transport.is_closing():
            self.cancel()  # aborted meanwhile (a timeout): connection_lost cleans up
            return
        sock = conn.transport.get_extra_info("socket")
        out_fd = sock.fileno()
        in_fd = self.file.fileno()
        try:
            while self.left > 0:
                sent = os.sendfile(out_fd, in_fd, self.offset, min(self.left, 1 << 20))
                if sent == 0:  # the file shrank under us
                    conn.response.keep_alive = False  # type: ignore[union-attr]
                    break
                self.offset += sent
                self.left -= sent
        except BlockingIOError:
            self._watch()
            return
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                log.warning("sendfile failed: %s", exc)
            self.cancel()
            conn.sendfile_job = None
            conn.transport.abort()
            return
        self.cancel()
        conn.sendfile_job = None
        conn.transport.set_write_buffer_limits(HIGH_WATER)
        conn.finish()
        if not conn.closed:
            conn.process()

    def _watch(self) -> None:
        """Wait for writability on a duplicate of the socket fd (the transport owns the fd)."""
        loop = self.conn.lt.loop
        if self.watch_fd < 0:
            sock = self.conn.transport.get_extra_info("socket")
            self.watch_fd = os.dup(sock.fileno())
        loop.add_writer(self.watch_fd, self._writable)
        self.conn.deadline = self.conn.lt.clock() + self.conn.lt.io_timeout

    def _writable(self) -> None:
        self.conn.lt.loop.remove_writer(self.watch_fd)
        self.conn.deadline = self.conn.lt.clock() + self.conn.lt.io_timeout
        self.resume()

    def cancel(self) -> None:
        if self.watch_fd >= 0:
            self.conn.lt.loop.remove_writer(self.watch_fd)
            os.close(self.watch_fd)
            self.watch_fd = -1


class LoopThread:
    """One event loop, its servers and connections. All methods run on its own thread unless
    marked otherwise."""

    def __init__(self, worker: Worker, index: int) -> None:
        self.worker = worker
        self.config = worker.config
        self.app = worker.app
        self.index = index
        self.loop = Loop()
        self.connections: set[Connection] = set()
        self.servers: list[Server] = []
        self.accepting = True
        self.running = False  # run_forever has started
        self.stopping = False
        self.stop_drain = False
        self.stop_deadline = 0.0
        self.keepalive = worker.config.keepalive_timeout > 0
        self.max_connections = worker.config.max_connections
        self.access_log = worker.config.access_log
        self.now = self.loop.time()
        self.clock = self.loop.time  # deadlines are precise; the tick checks them each second
        self.header_timeout = worker.config.header_timeout
        self.io_timeout = worker.config.io_timeout
        self.keepalive_timeout = worker.config.keepalive_timeout
        # Accepting: with one thread, this loop accepts on the listening sockets itself. With
        # several, the worker's main thread accepts and hands each connection to the least
        # loaded loop (``adopt``): left to themselves, loops race for the GIL and one of them
        # accepts a whole burst, serialising blocking requests behind each other while other
        # threads idle.
        self.accepts_itself = worker.config.threads == 1
        if self.accepts_itself:
            self.servers = [Server(self.loop, listener.sock, worker.factory_for(self, listener))
                            for listener in worker.listeners]
        self.assigned = 0  # connections handed to this loop (written by the main thread)
        self.released = 0  # of those, closed (written by this loop)
        self.in_app = False  # inside a call to the app (read by the main thread)
        # Blocking apps (threads > 1): requests are served from a run queue in the order they
        # were read, one per pass of the loop, so the loop polls between two blocking calls and
        # a request that arrived meanwhile lines up behind those already waiting. Served at once
        # from each poll instead, the connection served last always just missed the next poll
        # and waited twice as long as the others (p99 1.75x the median at 16 threads).
        self.take_turns = worker.config.threads > 1
        self.run_queue: collections.deque[Connection] = collections.deque()
        self.turns_scheduled = False
        # Connections with answers deferred to the end of this pass of the loop (flush), and
        # streamed responses to go on with after it.
        self.deferred: list[Connection] = []
        self.deferred_since = 0.0
        self.last_serve = 0.0  # when serve() last began: how long the request before took
        self.continuing: list[Connection] = []
        self.flush_scheduled = False
        self.last_tick = time.monotonic()  # read by the worker's main thread
        self.server_date = ""
        self._refresh_date()
        self.thread = threading.Thread(target=self._run, name=f"loop-{index}", daemon=True)

    def _refresh_date(self) -> None:
        self.server_date = f"Server: drover\r\nDate: {http_date(time.time())}\r\n"

    def _run(self) -> None:
        try:
            self._listen()
            self.loop.call_later(1.0, self._tick)
            self.loop.call_soon(self._started)
            self.loop.run_forever()
        except Exception:
            log.exception("loop thread %d failed", self.index)
        finally:
            for conn in list(self.connections):
                conn.transport.abort()
            self.loop.run_ready()  # connection_lost for each: the app's close() is owed
            self.loop.close()
            self.worker.wake()  # the main thread notices the stop at once

    def _started(self) -> None:
        self.running = True
        if self.stopping:  # a stop was asked for while the loop was starting
            self.stopping = False
            self.begin_stop(self.stop_drain)

    def _listen(self) -> None:
        for server in self.servers:
            server.start()

    def queue_turn(self, conn: Connection) -> None:
        """Serve ``conn``'s requests after everything this pass of the loop has read."""
        if not conn.waiting_turn:
            conn.waiting_turn = True
            conn.deadline = NEVER  # the server is busy, not the client: no timeout while queued
            self.run_queue.append(conn)
            if not self.turns_scheduled:
                self.turns_scheduled = True
                self.loop.call_soon(self._take_turns)

    def flush(self) -> None:
        """Write the answers deferred during this pass of the loop.

        Responses that are complete when the app returns are not written at once but when the
        loop has handled everything its last poll reported. Under load a poll reports many
        connections; writing each answer as it is made wakes the client's side once per
        answer, a wake-up of the other core that the kernel charges to this thread. Written
        together, the first one wakes the client and the rest find it awake: for a Flask app
        this cut the system time per request by three quarters (20 to 5 us). ``serve``
        flushes before calling the app when the answers have waited ``FLUSH_AFTER`` or the
        request before took longer than ``SLOW_REQUEST``: an answer waits for at most one
        more app call, and only behind a request that broke a run of fast ones. With
        ``--threads`` the run queue serves one request per pass, so answers never wait for
        another app call.
        """
        self.flush_scheduled = False
        self.flush_writes()
        continuing = self.continuing
        if continuing:
            self.continuing = []
            for conn in continuing:
                conn.continuing = False
                if conn.busy and conn.iterator is not None and not conn.closed \
                        and not conn.write_paused:  # else resume_writing() goes on
                    conn.stream()
                    if conn.response is None and not conn.closed:
                        conn.process()  # requests pipelined behind this one

    def flush_writes(self) -> None:
        deferred = self.deferred
        self.deferred = []
        for conn in deferred:
            if conn.out is not None:  # else already written (send() or a full buffer)
                conn.flush_out()

    def schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def continue_after_flush(self, conn: Connection) -> None:
        if not conn.continuing:
            conn.continuing = True
            self.continuing.append(conn)
            self.schedule_flush()

    def _take_turns(self) -> None:
        """Serve the connection that waited longest, then let the loop poll before the next
        one, so that requests that arrived meanwhile queue up behind those already waiting."""
        queue = self.run_queue
        conn = queue.popleft()
        conn.waiting_turn = False
        if not conn.closed and not conn.busy:
            conn.process()
        if queue:
            self.loop.call_soon(self._take_turns)
        else:
            self.turns_scheduled = False

    def adopt(self, conn: socket.socket, listener: Listener) -> None:
        """Take a connection the main thread accepted (threads > 1)."""
        if self.stopping:
            conn.close()
            self.released += 1
            return
        adopt_socket(self.loop, conn, self.worker.factory_for(self, listener))

    def _unlisten(self) -> None:
        for server in self.servers:
            server.stop()

    def _tick(self) -> None:
        self.now = now = self.loop.time()
        self.last_tick = time.monotonic()
        self._refresh_date()
        expired = [c for c in self.connections if c.deadline < now]
        for conn in expired:
            conn.timed_out()
        if not self.stopping:
            self.loop.call_later(1.0, self._tick)
        elif not self.connections or now > self.stop_deadline:
            self.loop.stop()
        else:
            self.loop.call_later(0.1, self._tick)

    def pause_accepting(self) -> None:
        if self.accepting:
            self.accepting = False
            log.warning("thread %d has %d connections (--max-connections): not accepting",
                        self.index, len(self.connections))
            self._unlisten()

    def connection_closed(self, conn: Connection) -> None:
        self.connections.discard(conn)
        self.released += 1
        if self.stopping:
            if not self.connections:
                self.loop.stop()
        elif not self.accepting and len(self.connections) < self.config.max_connections * 0.9:
            self.accepting = True
            self._listen()

    def begin_stop(self, drain: bool) -> None:
        """Graceful stop: accept no more, finish the responses in flight.

        ``drain`` (reload, recycling): idle keep-alive connections are not cut, since a client
        may be sending its next request right now and a reset would lose it; every response
        from here on says ``Connection: close`` and idle connections close at their keep-alive
        deadline. Without ``drain`` (shutdown) idle connections close at once.
        """
        if self.stopping:
            return
        self.stopping = True
        self.keepalive = False
        if not self.running:
            self.stop_drain = drain  # _started() finishes the job
            return
        self.stop_deadline = self.loop.time() + self.config.graceful_timeout
        self._unlisten()
        if not drain:
            for conn in list(self.connections):
                if not conn.busy and not conn.parser.in_message and not conn.parser.events:
                    conn.close()
        if not self.connections:
            self.loop.stop()
        else:
            self.loop.call_later(0.1, self._tick)


class Worker:
    """The worker process: its loop threads and its main (control) thread."""

    def __init__(self, config: Config, listeners: list[Listener], app: WsgiApp,
                 worker_id: int, pipe: int) -> None:
        self.config = config
        self.listeners = listeners
        self.app = app
        self.worker_id = worker_id
        self.pipe = pipe
        self.limits = HttpLimits(
            request_line=config.limit_request_line, fields=config.limit_request_fields,
            field_size=config.limit_request_field_size,
            header_block=config.limit_request_headers, body=config.limit_request_body,
            spill=config.body_buffer_size)
        self.served = 0  # requests answered, over all loop threads (approximate: no lock)
        self.max_requests = config.max_requests or -1
        self.retiring = False
        self.environs = {
            id(listener): base_environ(config.threads > 1, config.workers > 1)
            for listener in listeners}
        self._uwsgi_peers: dict[str, bool] = {}
        self.uwsgi_networks: list[Any] = []
        if any(listener.protocol == "uwsgi" for listener in listeners):
            import ipaddress

            self.uwsgi_networks = [
                ipaddress.ip_network(net, strict=False)
                for net in (config.uwsgi_allow_from or ("127.0.0.0/8", "::1/128"))]
        self.threads = [LoopThread(self, i) for i in range(config.threads)]
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def wake(self) -> None:
        """Interrupt the main thread's wait (any thread)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def factory_for(self, lt: LoopThread, listener: Listener) -> Callable[[], Connection]:
        environ = self.environs[id(listener)]
        if listener.protocol == "uwsgi":
            return lambda: UwsgiHandler(lt, environ)
        return lambda: Connection(lt, environ)

    def uwsgi_allowed(self, host: str) -> bool:
        """Is this peer address in --uwsgi-allow-from? Answers are cached per address."""
        allowed = self._uwsgi_peers.get(host)
        if allowed is None:
            import ipaddress

            try:
                address = ipaddress.ip_address(host.partition("%")[0])
                allowed = any(address in network for network in self.uwsgi_networks)
            except ValueError:
                allowed = False
            if len(self._uwsgi_peers) < 4096:
                self._uwsgi_peers[host] = allowed
        return allowed

    def recycle(self) -> None:
        """--max-requests reached (on a loop thread): retire; the master replaces us."""
        if not self.retiring:
            self.retiring = True
            log.info("worker %d served %d requests (--max-requests): recycling",
                     self.worker_id, self.served)
            os.kill(os.getpid(), signal.SIGHUP)

    def _accept(self, listener: Listener) -> None:
        """Main thread, threads > 1: accept what is queued, each to the least loaded loop."""
        threads = self.threads
        for _ in range(64):
            try:
                conn, _ = listener.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # EMFILE and the like: try again on the next wake-up
                log.warning("accept failed: %s", exc)
                return
            # (the loop's adopt_socket makes it non-blocking and sets TCP_NODELAY)
            # Fewest connections first (a burst spreads evenly); among equals, one not inside
            # the app right now.
            target = min(threads, key=lambda t: (t.assigned - t.released, t.in_app))
            target.assigned += 1
            target.loop.call_soon_threadsafe(target.adopt, conn, listener)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)  # only queue: the main loop acts (no work in handlers)

    def run(self) -> None:
        """The main thread: start loops, then signals and heartbeats until stopped."""
        wake_r = self._wake_r
        signal.set_wakeup_fd(self._wake_w)
        for handled in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
            signal.signal(handled, self._on_signal)
        for ignored in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU,
                        signal.SIGWINCH):
            signal.signal(ignored, signal.SIG_IGN)
        for lt in self.threads:
            lt.thread.start()
        os.write(self.pipe, b"R")
        master = os.getppid()
        stopping = False
        accepting = {listener.sock.fileno(): listener for listener in self.listeners
                     if not self.threads[0].accepts_itself}
        next_beat = 0.0
        while True:
            try:
                ready, _, _ = select.select([wake_r, *accepting], [], [], 1.0)
            except InterruptedError:
                ready = []
            for fd in ready:
                if fd in accepting:
                    self._accept(accepting[fd])
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 64)
            while self._signals:
                signum = self._signals.pop(0)
                if signum == signal.SIGQUIT:
                    os._exit(0)
                if not stopping:
                    stopping = True
                    accepting.clear()
                    drain = signum == signal.SIGHUP  # retiring: reload, recycling, TTOU
                    log.info("worker %d %s", self.worker_id,
                             "retiring" if drain else "stopping gracefully")
                    for lt in self.threads:
                        lt.loop.call_soon_threadsafe(lt.begin_stop, drain)
            if stopping:
                if not any(lt.thread.is_alive() for lt in self.threads):
                    break
                continue
            if os.getppid() != master:
                log.warning("worker %d: master is gone, stopping", self.worker_id)
                self._signals.append(signal.SIGTERM)
                continue
            dead = [lt.index for lt in self.threads if not lt.thread.is_alive()]
            if dead:
                log.error("worker %d: loop thread(s) %s died; exiting", self.worker_id, dead)
                os._exit(1)
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + 1.0
                if all(now - lt.last_tick < 3.0 for lt in self.threads):
                    with contextlib.suppress(OSError):
                        os.write(self.pipe, b".")
        sys.stderr.flush()
        os._exit(0)


def load_worker_app(config: Config, listeners: list[Listener]) -> WsgiApp:
    """Import the app in the worker (no --preload), or the welcome page when none is given."""
    if not config.app and not config.mount:
        from drover.welcome import make_welcome_app

        return make_welcome_app([listener.display for listener in listeners])
    from drover.loader import load_configured_app, prepare_path

    prepare_path(config.chdir, config.pythonpath)
    return load_configured_app(config.app, config.mount)


def run_worker(config: Config, listeners: list[Listener], app: WsgiApp | None,
               worker_id: int, pipe: int) -> None:
    """Entry point in the child after fork; never returns."""
    try:
        import setproctitle

        setproctitle.setproctitle(f"{config.proc_name}: worker {worker_id} "
                                  f"[{config.app or 'welcome'}]")
    except ImportError:  # pragma: no cover - a hard dependency, but titles are cosmetic
        pass
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                   signal.SIGCHLD, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_DFL)
    if app is None:
        from drover.loader import AppLoadError

        try:
            app = load_worker_app(config, listeners)
        except AppLoadError as exc:
            log.error("cannot load the app: %s", exc)
            sys.stderr.flush()
            os._exit(EXIT_APP_LOAD)
        except BaseException as exc:
            log.error("cannot load the app %r: importing it raised %s", config.app,
                      type(exc).__name__, exc_info=exc)
            sys.stderr.flush()
            os._exit(EXIT_APP_LOAD)
    try:
        Worker(config, listeners, app, worker_id, pipe).run()
    except BaseException:
        log.exception("worker %d failed", worker_id)
        sys.stderr.flush()
        os._exit(1)


__all__ = ["EXIT_APP_LOAD", "run_worker"]
