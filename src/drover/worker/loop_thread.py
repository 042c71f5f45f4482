"""One loop thread of a worker: its event loop, servers, connections, deferred writes and the
once-a-second tick (see the package docstring for the theory of operation)."""

from __future__ import annotations

import collections
import socket
import threading
import time
from typing import TYPE_CHECKING

from drover.httpdate import http_date
from drover.logs import log
from drover.loop import Loop, Server, adopt_socket
from drover.sockets import Listener
from drover.stats.scoreboard import CoreCounters
from drover.worker.connection import FRESH, NEVER, Connection

if TYPE_CHECKING:
    from drover.worker.process import Worker
    from drover.wsgi import Response

FIRST_REQUEST_GRACE = 1.0  # on shutdown, how long a new connection may take to send its request

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
        self.static = worker.static  # None without --static-map
        # Observability (drover.access, drover.stats): the access log (None: off), and the
        # per-request recorder of the scoreboard's counters (None: --stats off, not called).
        self.access_log = worker.access_log
        self.counters = CoreCounters()
        self.record = self.counters.done if worker.stats is not None else None
        self.stats_counters = self.counters if worker.stats is not None else None
        self.timed = self.access_log is not None or self.record is not None
        self.serving: dict[str, object] = {}  # environ of the request last given to the app
        self.now = self.loop.time()
        self.clock = self.loop.time  # deadlines are precise; the tick checks them each second
        self.header_timeout = worker.config.header_timeout
        self.io_timeout = worker.config.io_timeout
        self.proxy_protocol = worker.config.proxy_protocol
        self.body_min_rate = worker.config.body_min_rate
        self.body_rate_window = worker.config.body_rate_window
        self.body_timeout = worker.config.body_timeout
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
        # The response whose app code this thread is running, None outside app code (read by
        # the main thread: accept balancing, harakiri).
        self.in_app: Response | None = None
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
        self.worker.bodies.trim()  # maps of past bodies, unless bodies keep coming
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
        now = self.loop.time()
        self.stop_deadline = now + self.config.graceful_timeout
        if not drain:
            for server in self.servers:
                server.accept_backlog()  # queued before the stop: served like the others
        self._unlisten()
        if not drain:
            for conn in list(self.connections):
                if conn.busy or conn.parser.in_message or conn.parser.events or conn.held:
                    continue
                if conn.unread_input():
                    continue  # a request this loop had no time to read (busy in the app)
                if conn.state == FRESH:
                    # Connected before the stop, its request not here yet: a moment for it.
                    conn.deadline = min(conn.deadline, now + FIRST_REQUEST_GRACE)
                    continue
                conn.close()  # idle between requests
        if not self.connections:
            self.loop.stop()
        else:
            self.loop.call_later(0.1, self._tick)

