"""One client connection on one loop thread: bytes to the parser, requests to the app, answers
to the transport, in wire order (see the package docstring for the theory of operation)."""

from __future__ import annotations

import contextvars
import socket
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from drover.body import EMPTY_INPUT
from drover.logs import log
from drover.loop import Transport
from drover.protocols.forwarded import (
    FORWARDED_KEYS,
    V1_PREFIX,
    V2_SIGNATURE,
    TrustedPeers,
    apply_forwarded,
    parse_proxy_header,
)
from drover.protocols.http import HttpConnection, error_response
from drover.protocols.request import ContinueRequest, ProtocolError, Request
from drover.protocols.uwsgi import UwsgiConnection
from drover.stats.scoreboard import FIRST_BOUND as _FIRST_BOUND
from drover.worker.sendfile import SendfileJob, serve_static
from drover.wsgi import (
    FileWrapper,
    Response,
    ResponseError,
    close_iterable,
    connection_environ,
)

if TYPE_CHECKING:
    from drover.worker.loop_thread import LoopThread

HIGH_WATER = 256 * 1024  # transport buffer size that pauses the app's body iteration
COPY_LIMIT = 64 * 1024  # bodies below this are joined to the head for a single send
FLUSH_AFTER = 0.001  # seconds an answer may wait for its loop pass to end (LoopThread.flush)
SLOW_REQUEST = 0.00025  # after a request that took longer, answers are not held (ditto)
MAX_QUEUED_EVENTS = 32  # pipelined requests parsed ahead before reading pauses
FEED_SLICE = 16 * 1024  # a larger read is parsed in slices of this size (Connection.feed)
MEMORY_WAIT = 0.5  # seconds a body may wait for room in memory before it goes to a file

NEVER = float("inf")
_END = object()  # next()'s default: the app's iterable is exhausted
_monotonic = time.monotonic
_Context = contextvars.Context

# What a connection is waiting for, which decides its deadline.
FRESH, IDLE, READING, WRITING, BODY = range(5)
PROXY_EXPECTED, PROXY_REFUSED = 1, 2  # Connection.proxy_state


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
    sendfile_job: SendfileJob | None = None
    waiting_turn = False  # queued on the loop's run queue (threads > 1)
    # Complete responses waiting for the end of this pass of the loop (see LoopThread.flush).
    out: list[bytes] | None = None
    out_size = 0
    held = b""  # input not parsed yet because many requests were already waiting (feed)
    continuing = False  # its streamed response goes on after the loop's flush
    ctx: contextvars.Context  # the context the current request's app code runs in
    # A request body being received (state BODY): when it began, bytes seen since, and at the
    # last rate check (see body_deadline).
    body_started = 0.0
    body_seen = 0
    body_mark = 0
    drop_reason = ""
    memory_wait = 0.0  # since when its body waits for memory (wait_for_memory)
    # Behind a proxy (see drover.protocols.forwarded): the peers to believe when the
    # connection's peer is one of them (None: its forwarding fields change nothing), and the
    # PROXY protocol header expected (PROXY_EXPECTED) or refused (PROXY_REFUSED) first.
    forwarded: TrustedPeers | None = None
    proxy_state = 0
    proxy_buffer = b""

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
        self.trust_peer()
        lt.connections.add(self)
        self.deadline = lt.clock() + lt.header_timeout
        if len(lt.connections) >= lt.max_connections:
            lt.pause_accepting()

    def trust_peer(self) -> None:
        """Once per connection: is the peer a proxy whose forwarding fields are believed?
        Unix socket peers are local, hence trusted."""
        peers = self.lt.worker.trusted_peers
        peer = self.peer
        trusted = not isinstance(peer, tuple) or peers.trusts(peer[0])
        if self.lt.proxy_protocol:
            self.proxy_state = PROXY_EXPECTED if trusted else PROXY_REFUSED
        if trusted:
            self.forwarded = peers

    def proxy_input(self, data: bytes) -> bytes:
        """The first bytes of a connection under --proxy-protocol: the header (from a trusted
        peer, required) or its absence (from any other peer); what follows it, for HTTP."""
        address = self.environ.get("REMOTE_ADDR", "?")
        if self.proxy_state == PROXY_REFUSED:
            self.proxy_state = 0
            if data.startswith(V1_PREFIX) or data.startswith(V2_SIGNATURE[:len(data[:12])]):
                log.warning("PROXY protocol header from %s, not in --forwarded-allow-ips: "
                            "closing", address)
                self.close()
                return b""
            return data
        data = self.proxy_buffer + data
        try:
            header = parse_proxy_header(data)
        except ProtocolError as error:
            log.warning("closing connection from %s: %s", address, error.reason)
            self.close()
            return b""
        if header is None:
            self.proxy_buffer = data
            return b""
        self.proxy_state = 0
        self.proxy_buffer = b""
        if not header.local:
            environ = self.environ
            environ["REMOTE_ADDR"] = header.source
            environ["REMOTE_PORT"] = str(header.source_port)
            self.peer = (header.source, header.source_port)
            # The forwarding fields are now those of the real client's requests.
            peers = self.lt.worker.trusted_peers
            self.forwarded = peers if peers.trusts(header.source) else None
        return data[header.length:]

    def data_received(self, data: bytes) -> None:
        if self.proxy_state:
            data = self.proxy_input(data)
            if not data:
                return
        parser = self.parser
        if self.held or len(data) > FEED_SLICE:
            self.feed(self.held + data)
        else:
            parser.receive_data(data)
        if self.state == BODY:
            self.body_seen += len(data)
        self.parsed()

    def received_into(self, count: int) -> None:
        """Bytes of a request body received in place (see ``read_body``)."""
        parser = self.parser
        parser.body_received(count)
        self.body_seen += count
        target = parser.body_target()
        self.transport.receive_into(target)
        if target is None:  # the body is complete
            self.parsed()
        elif not self.lt.body_min_rate:
            self.body_progress()

    def parsed(self) -> None:
        """After input was parsed: serve what is complete, set the deadline of what is not."""
        parser = self.parser
        if not self.busy:
            if parser.events:
                if self.lt.take_turns:
                    self.lt.queue_turn(self)
                else:
                    self.process()  # also sets the keep-alive deadline when it idles
            if parser.in_message and not self.closed and not self.busy:
                lt = self.lt
                if not parser.in_head:
                    if self.state != BODY:
                        self.begin_body()
                    elif not lt.body_min_rate:
                        self.body_progress()
                elif self.state != READING:  # the whole head must come within the timeout
                    self.state = READING
                    self.deadline = lt.clock() + lt.header_timeout
        if (len(parser.events) >= MAX_QUEUED_EVENTS or self.held) and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        elif (parser.in_message and not parser.in_head and not self.held
                and not self.closed):
            target = parser.body_target()
            if target is not None:
                # The rest of a large Content-Length body goes straight from the socket into
                # the memory (or the file's buffer) that holds it: no parser, no bytes objects.
                self.transport.receive_into(target)
            elif parser.body_waiting() and not self.memory_wait:
                self.wait_for_memory()

    def wait_for_memory(self) -> None:
        """The worker's bodies fill --body-memory-limit: stop reading this body until one is
        done (the pool wakes us), or for MEMORY_WAIT at most, then write it to a file. Slower
        bodies than those in memory are rare; a file costs twice the CPU time of memory."""
        lt = self.lt
        self.memory_wait = lt.clock()
        self.transport.pause_reading()
        lt.worker.bodies.wait(lambda: lt.loop.call_soon_threadsafe(self.retry_memory))
        lt.loop.call_later(MEMORY_WAIT, self.retry_memory)

    def retry_memory(self) -> None:
        """Woken by the pool, or MEMORY_WAIT passed (loop thread)."""
        if not self.memory_wait or self.closed:
            return
        lt = self.lt
        parser = self.parser
        if not parser.place_body(force=lt.clock() - self.memory_wait >= MEMORY_WAIT):
            lt.worker.bodies.wait(lambda: lt.loop.call_soon_threadsafe(self.retry_memory))
            return
        self.memory_wait = 0.0
        if not self.reading_paused:
            self.transport.resume_reading()
        target = parser.body_target()
        if target is not None:
            self.transport.receive_into(target)

    def begin_body(self) -> None:
        """A request's body has begun: from now on it must arrive at --body-min-rate (checked
        every --body-rate-window) and be whole within --body-timeout."""
        lt = self.lt
        now = lt.clock()
        self.state = BODY
        self.body_started = now
        self.body_seen = self.body_mark = 0
        if lt.body_min_rate:
            self.deadline = now + lt.body_rate_window
        else:
            self.deadline = now + lt.io_timeout
        if lt.body_timeout:
            self.deadline = min(self.deadline, now + lt.body_timeout)

    def body_progress(self) -> None:
        """Without --body-min-rate, progress on a body extends its deadline (--io-timeout),
        up to --body-timeout."""
        lt = self.lt
        self.deadline = lt.clock() + lt.io_timeout
        if lt.body_timeout:
            self.deadline = min(self.deadline, self.body_started + lt.body_timeout)

    def body_deadline(self) -> bool:
        """The deadline of a body being received passed: True if it is too slow (or too
        long) and must be dropped, else the next check is set."""
        lt = self.lt
        now = lt.clock()
        if lt.body_timeout and now >= self.body_started + lt.body_timeout:
            self.drop_reason = "its body did not arrive within --body-timeout"
            return True
        if not lt.body_min_rate:
            self.drop_reason = "no progress on its body within --io-timeout"
            return True
        if self.body_seen - self.body_mark < lt.body_min_rate * lt.body_rate_window:
            self.drop_reason = "its body arrived slower than --body-min-rate"
            return True
        self.body_mark = self.body_seen
        self.deadline = now + lt.body_rate_window
        if lt.body_timeout:
            self.deadline = min(self.deadline, self.body_started + lt.body_timeout)
        return False

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
            self.lt.counters.write_errors += 1
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
        self.lt.counters.read_errors += 1
        if error.status:
            self.send(error_response(error.status, error.reason, self.lt.server_date))
        self.close()

    def serve(self, request: Request) -> None:
        """Call the app for one request and start sending its response (loop thread)."""
        lt = self.lt
        if not lt.keepalive:
            request.keep_alive = False
        environ = request.environ  # the connection's seed with this request's variables
        static = lt.static  # --static-map: files answered before the app (drover.static)
        if (static is not None and environ["PATH_INFO"].startswith(static.prefixes)
                and serve_static(self, request, static)):
            lt.counters.static_requests += 1
            return
        environ["wsgi.input"] = request.body
        forwarded = self.forwarded
        # A trusted proxy's connection: the fields are looked up in C (any/map), not in a
        # Python loop, since every request from a trusted peer pays for it.
        if forwarded is not None and any(map(environ.__contains__, FORWARDED_KEYS)):
            apply_forwarded(environ, forwarded)
        response = Response(request, lt.server_date, self)
        now = _monotonic()
        if lt.timed:
            self.started = now
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
        lt.serving = environ  # what the process title shows while busy
        lt.in_app = response
        try:
            result = ctx.run(lt.app, environ, response.start_response)
            lt.in_app = None
            if response.timed_out and self.harakiri_late(request, response, result):
                return
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
                # done(), inlined for the usual case; with --stats, CoreCounters.done inlined
                # too (a call is a third of its cost; the stats must cost under 3%).
                counters = lt.stats_counters
                if counters is not None:
                    took = _monotonic() - now
                    counters.tx += response.sent
                    counters.running += took
                    status = response.status
                    if took < _FIRST_BOUND and "2" <= status < "3":  # type: ignore[operator]
                        counters.fast += 1
                    else:
                        counters.count(status, took)
                worker = lt.worker
                worker.served += 1
                if worker.served == worker.max_requests:
                    worker.recycle()
                if not response.keep_alive or lt.stopping:
                    self.close()
                return
            if type(result) is FileWrapper and SendfileJob.usable(result):
                self._begin_response(request, response, result)
                self.sendfile_job = SendfileJob.for_wrapper(self, result)
                self.sendfile_job.start()
                return
            self._begin_response(request, response, result)
            self.iterator = ctx.run(iter, result)
        except Exception as exc:
            lt.in_app = None
            if response.timed_out and self.harakiri_late(request, response, result):
                return
            self.app_failed(request, response, result, exc)
            return
        self.stream(first=True)

    def harakiri_late(self, request: Request | None, response: Response,
                      result: Iterable[bytes] | None) -> bool:
        """The app returned (or raised) after harakiri claimed its response (loop thread).

        False if the claim was withdrawn (the request ended as the watch looked): carry on.
        Otherwise the watch answered or cut the connection: what the app made is discarded,
        its close() is still called, and the connection is closed (drover.harakiri).
        """
        watch = self.lt.worker.harakiri
        assert watch is not None
        with watch.lock:  # the watch may still be writing the 504
            if not response.timed_out:
                return False
        if self.busy:
            self._end_response()
        self._release(request, result)
        self.out = None
        self.closed = True
        self.transport.abort()
        self.lt.worker.wake()  # the watch notices at once that the thread is free
        return True

    def _begin_response(self, request: Request, response: Response,
                        result: Iterable[bytes] | None) -> None:
        """A response that may outlive this callback (streamed or sent from a file)."""
        self.request, self.response, self.result = request, response, result
        response.began = self.lt.last_serve  # when serve() began: the harakiri clock
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
        lt = self.lt
        try:
            while True:
                lt.in_app = response
                data = step(next, iterator, _END)
                lt.in_app = None
                if response.timed_out and self.harakiri_late(self.request, response,
                                                             self.result):
                    return
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
            lt.in_app = None
            if response.timed_out and self.harakiri_late(self.request, response, self.result):
                return
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

    def sendfile_done(self) -> None:
        """The file of a sendfile response is out (called by its SendfileJob)."""
        self.sendfile_job = None
        self.transport.set_write_buffer_limits(HIGH_WATER)
        self.finish()
        if not self.closed:
            self.process()

    def _end_response(self) -> tuple[Request | None, Iterable[bytes] | None]:
        request, result = self.request, self.result
        self.request = self.response = self.result = self.iterator = None
        self.busy = False
        return request, result

    def done(self, request: Request, response: Response, result: Iterable[bytes] | None) -> None:
        """The response is written: release the request, then keep the connection or close."""
        lt = self.lt
        if lt.record is not None:
            lt.record(self.started, response.status, response.sent)
        if lt.access_log is not None:
            lt.access_log.log(request.environ, response, _monotonic() - self.started, lt)
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
        lt = self.lt
        lt.counters.exceptions += 1
        if response is not None and not response.head_sent:
            self.send(error_response(500, "The application failed", lt.server_date))
            response.status = "500 Internal Server Error"
        if response is not None and request is not None and lt.timed:
            if lt.record is not None:
                lt.record(self.started, response.status, response.sent)
            if lt.access_log is not None:
                lt.access_log.log(environ, response, _monotonic() - self.started, lt)
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

    def unread_input(self) -> bool:
        """Has the client sent bytes this loop has not read yet? (Loop thread, at shutdown.)"""
        sock = self.transport.get_extra_info("socket")
        try:
            return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return False  # reset or closed: nothing to serve

    def timed_out(self) -> None:
        """Called by the loop tick when the deadline passed."""
        if self.state == BODY and not self.busy:
            if not self.body_deadline():
                return
            log.info("dropping connection from %s: %s", self.environ.get("REMOTE_ADDR", "?"),
                     self.drop_reason)
            self.transport.receive_into(None)
            self.send(error_response(408, "Request body timeout", self.lt.server_date))
            self.close()
            return
        if self.state in (READING, WRITING, BODY):
            what = "request" if self.state == READING else "response"
            log.info("dropping connection from %s: no progress on its %s within the timeout",
                     self.environ.get("REMOTE_ADDR", "?"), what)
            if self.state == READING:
                self.lt.counters.read_errors += 1
            else:
                self.lt.counters.write_errors += 1
            if self.state == READING and self.parser.in_head and not self.busy:
                self.send(error_response(408, "Request timeout", self.lt.server_date))
        self.close()
        if self.busy or self.transport.get_write_buffer_size():
            self.transport.abort()  # a client that does not read would hold it forever


class UwsgiHandler(Connection):
    """A uwsgi connection: one request from nginx (or another uwsgi client), then close."""

    def trust_peer(self) -> None:
        """nginx passes the client's address in the uwsgi vars themselves."""

    def make_parser(self) -> UwsgiConnection:  # type: ignore[override]
        return UwsgiConnection(self.lt.worker.limits, self.lt.config.buffer_size)

    def connection_made(self, transport: Transport) -> None:
        super().connection_made(transport)
        peer = self.peer
        # The protocol has no authentication: over TCP only listed peers may speak it.
        if isinstance(peer, tuple) and not self.lt.worker.uwsgi_allowed(peer[0]):
            log.warning("refused uwsgi connection from %s (not in --uwsgi-allow-from)", peer[0])
            self.close()

