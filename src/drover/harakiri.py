"""Harakiri: a per-request time limit that names the culprit (``--harakiri``).

Theory of operation
-------------------
Watching costs a request nothing it did not already pay: a loop thread records when it began
serving (``LoopThread.last_serve``, kept for its write batching) and, while it runs app code,
which response it is working on (``LoopThread.in_app``; a streamed response's start is
``Response.began``). The worker's main thread (``HarakiriWatch.check``) reads those once a
second, or sooner when a deadline is near. A request past ``--harakiri`` seconds:

1. is *claimed*: under ``lock``, the watch sets ``response.timed_out`` and then checks that the
   thread is still inside the app for that response (if not, the request just ended: the claim
   is undone). The loop thread, as it leaves app code, clears ``in_app`` and *then* reads
   ``timed_out``; it sees it set only if the watch may have acted, and takes the lock to learn
   whether the claim stands (``Connection.harakiri_late``). Under the GIL these two orders
   guarantee that exactly one side answers: never a second response on the wire.
2. is logged: method, path, worker, pid, how long it ran, and the stack of its thread from the
   app's first frame down (``sys._current_frames``): where in the app it is stuck.
3. gets a ``504`` written by the watch directly on the socket if nothing of its response was
   sent (answers still deferred on that connection go first, in order); otherwise the
   connection is shut down, so the client does not wait for the rest.
4. is reported to the master (``H`` on the worker's pipe). If the app returns later, its late
   response is discarded, the connection closed, and the worker reports that it is free
   (``F``). If it is still stuck ``--harakiri-grace`` seconds later, the worker logs what else
   is lost with it (other threads' requests) and asks to be killed (``K``); the master
   (``Escalation``) kills it with SIGKILL, at the latest a second after the grace ends, and
   forks a replacement. Other workers are untouched.

``--timeout`` stays the backstop for what harakiri cannot see: with ``--harakiri`` on, a loop
thread inside app code does not stop the worker's heartbeat, but a loop stuck anywhere else,
or a worker whose main thread cannot run (an extension holding the GIL), still does.

The master imports this module for ``Escalation`` only: nothing here imports the protocol, WSGI
or worker code at module level.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Protocol

from drover import logs
from drover.logs import log

if TYPE_CHECKING:
    from drover.worker.connection import Connection
    from drover.worker.loop_thread import LoopThread
    from drover.worker.process import Worker
    from drover.wsgi import Response

# Messages on a worker's pipe to the master (one byte each).
FIRED = b"H"  # a request of this worker passed --harakiri
FREED = b"F"  # every such request has returned
KILL_ME = b"K"  # one is still stuck --harakiri-grace later

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_THREADING_FILE = threading.__file__


class HarakiriWatch:
    """The worker's side: runs on the worker's main thread (``check``); ``lock`` is shared with
    the loop threads (``Connection.harakiri_late``)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.limit = worker.config.harakiri
        self.grace = worker.config.harakiri_grace
        self.lock = threading.Lock()
        # thread index -> (the claimed response, when claimed, asked to be killed yet)
        self.claimed: dict[int, tuple[Response, float, bool]] = {}

    def check(self, now: float) -> float:
        """Act on requests past their deadline; return the seconds until the next check."""
        wait = 1.0
        for lt in self.worker.threads:
            response = lt.in_app
            claim = self.claimed.get(lt.index)
            if claim is not None:
                claimed, since, asked = claim
                if response is not claimed:
                    self._freed(lt, claimed, now - since)
                elif not asked:
                    left = since + self.grace - now
                    if left <= 0:
                        self._ask_to_be_killed(lt, claimed, now - since, now)
                    else:
                        wait = min(wait, left)
                continue
            if response is None:
                continue
            running = now - (response.began or lt.last_serve)
            if running >= self.limit:
                self._fire(lt, response, running, now)
            else:
                wait = min(wait, self.limit - running)
        return max(wait, 0.01)

    def _fire(self, lt: LoopThread, response: Response, running: float, now: float) -> None:
        conn: Connection = response.sender  # type: ignore[assignment]
        with self.lock:
            response.timed_out = True
            if lt.in_app is not response:  # it just returned: nothing to do
                response.timed_out = False
                return
            frame = sys._current_frames().get(lt.thread.ident or -1)
            answered = self._answer(conn, response)
        self.claimed[lt.index] = (response, now, False)
        worker = self.worker
        worker.harakiri_count += 1
        environ = response.request.environ
        stack = "".join(app_stack(frame)) if frame is not None else "  (no stack)\n"
        log.error("harakiri: %s %s on %s, thread %d, has run %.1f s (--harakiri %g); %s; "
                  "killing the worker unless it returns within %g s (--harakiri-grace). "
                  "Where it is:\n%s", environ.get("REQUEST_METHOD"), environ.get("REQUEST_URI"),
                  worker.label, lt.index, running, self.limit, answered, self.grace,
                  stack.rstrip("\n"))
        worker.tell_master(FIRED)

    def _answer(self, conn: Connection, response: Response) -> str:
        """With the claim held: a 504 on the socket if nothing was sent, else cut it short."""
        sock = conn.transport.get_extra_info("socket")
        if sock is None or conn.closed or conn.transport.is_closing():
            return "its connection is closed"
        if response.head_sent or conn.transport.get_write_buffer_size():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            return "its response had begun: connection cut"
        from drover.protocols.http import error_response

        data = error_response(504, "The request took too long", conn.lt.server_date)
        if conn.out is not None:  # earlier answers deferred on this connection go first
            data = b"".join(conn.out) + data
            conn.out = None
        try:
            _send_all(sock, data, 1.0)
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            return f"the 504 could not be sent ({exc.strerror or exc})"
        return "answered 504"

    def _freed(self, lt: LoopThread, response: Response, after: float) -> None:
        del self.claimed[lt.index]
        environ = response.request.environ
        log.warning("harakiri: %s %s on %s, thread %d, returned %.1f s after harakiri; its "
                    "late response was discarded", environ.get("REQUEST_METHOD"),
                    environ.get("REQUEST_URI"), self.worker.label, lt.index, after)
        if not self.claimed:
            self.worker.tell_master(FREED)

    def _ask_to_be_killed(self, lt: LoopThread, response: Response, after: float,
                          now: float) -> None:
        self.claimed[lt.index] = (response, now - after, True)
        lost = []
        for other in self.worker.threads:
            current = other.in_app
            if other.index in self.claimed or current is None:
                continue
            environ = current.request.environ
            lost.append(f"{environ.get('REQUEST_METHOD')} {environ.get('REQUEST_URI')} "
                        f"(thread {other.index}, running "
                        f"{now - (current.began or other.last_serve):.1f} s)")
        # Connections are the loop threads' own: a copy of each set is taken at once (list()
        # of a set runs under the GIL) and read, never changed.
        busy = waiting = 0
        for other in self.worker.threads:
            for conn in list(other.connections):
                if conn.parser.events:
                    waiting += 1  # requests read, not served yet (behind a stuck one)
                elif conn.busy and other.index not in self.claimed:
                    busy += 1
        if busy:
            lost.append(f"{busy} response(s) being streamed")
        if waiting:
            lost.append(f"{waiting} connection(s) with requests waiting to be served")
        log.error("harakiri: %s, thread %d, is still stuck %.1f s after harakiri "
                  "(--harakiri-grace %g): the master kills this worker. Lost with it: %s",
                  self.worker.label, lt.index, after, self.grace,
                  "; ".join(lost) if lost else "no other request")
        logs.flush()  # written before the kill, which would take the queued lines with it
        self.worker.tell_master(KILL_ME)


def app_stack(frame: object) -> list[str]:
    """A thread's stack as traceback lines, from the first frame that is not Drover's or the
    threading module's: where the app is."""
    import traceback  # only when harakiri strikes

    entries = traceback.extract_stack(frame)  # type: ignore[arg-type]
    start = 0
    for i, entry in enumerate(entries):
        if not (entry.filename.startswith(_PACKAGE_DIR) or entry.filename == _THREADING_FILE):
            start = i
            break
    return traceback.format_list(entries[start:])


def _send_all(sock: socket.socket, data: bytes, timeout: float) -> None:
    """Write ``data`` on a non-blocking socket from a thread that does not own it."""
    deadline = time.monotonic() + timeout
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the client does not read") from None
            select.select([], [sock], [], left)


# -- the master's side ---------------------------------------------------------------------------


class WorkerRecord(Protocol):
    """What ``Escalation`` reads and writes of the master's record of a worker."""

    harakiri_at: float
    harakiri_count: int


class Escalation:
    """The master's side: runs in the master's loop."""

    def __init__(self, grace: float) -> None:
        self.grace = grace

    def report(self, worker: WorkerRecord, message: bytes, now: float) -> bool:
        """A harakiri message from ``worker``; True when it must be killed now."""
        if message == FIRED:
            worker.harakiri_count += 1
            if not worker.harakiri_at:
                worker.harakiri_at = now
        elif message == FREED:
            worker.harakiri_at = 0.0
        elif message == KILL_ME:
            return True
        return False

    def overdue(self, worker: WorkerRecord, now: float) -> bool:
        """The worker asked for nothing, but its grace ended over a second ago: kill it."""
        return bool(worker.harakiri_at) and now > worker.harakiri_at + self.grace + 1.0
