"""Drover's own log and the files logs go to.

Theory of operation
-------------------
Every log line, Drover's own (``log``) and the access log's, goes through a ``LogSink``: the
calling thread (often a loop thread) only appends the finished line to a bounded queue and
wakes the sink's writer thread, which writes batches to the file. A full disk or a slow pipe
therefore costs log lines, never requests: when the queue is full the line is dropped and
counted, and the writer reports the count in the log as soon as it can write again.

- ``-`` (or no ``--log-file``) is stderr; a path is opened in append mode, so that the master
  and every worker can write to the same file.
- ``reopen()`` (SIGUSR1, after logrotate renamed the file) makes the writer open the path
  again. ``--log-maxsize``: past that size the writer renames the file to
  ``FILE.<timestamp>`` and starts a new one. The processes sharing a file take an flock on it
  for the check, so that only the first one to see it oversized renames it; the others find
  the path holds a new file and just reopen it.
- Threads do not survive fork: each process starts its own writer on first use, and the queue
  a child inherits from its parent is emptied (those lines are the parent's to write).
- ``flush()`` writes what is queued from the calling thread: called before a process exits
  (``os._exit`` skips everything else), bounded in time.

Setup (``setup``) runs in the master before fork; workers inherit the handler and its sink.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import errno
import fcntl
import logging
import os
import sys
import threading
import time

log = logging.getLogger("drover")

FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(message)s"
QUEUE_LINES = 8192  # lines a sink holds before it drops (a few MiB at most)
BATCH_BYTES = 256 * 1024
REPORT_EVERY = 10.0  # seconds between two "lines dropped" reports

_sinks: list[LogSink] = []  # every sink of this process, for reopen() and flush()


class LogSink:
    """A log destination written by a thread of its own. ``write`` may be called from any
    thread and never blocks on the file."""

    def __init__(self, path: str, maxsize: int = 0) -> None:
        self.path = "" if path in ("", "-") else path
        self.maxsize = maxsize
        self.fd = 2
        self.queue: collections.deque[str] = collections.deque()
        self.dropped = 0  # lines lost since the last report
        self.dropped_total = 0  # over the life of this process
        self.reported = 0.0
        self.event = threading.Event()
        self.lock = threading.Lock()  # held while writing (writer thread or flush)
        self.thread: threading.Thread | None = None
        self.pid = os.getpid()
        self.want_reopen = False
        if self.path:
            self.fd = self._open()  # the first open fails loudly (a configuration error)
        _sinks.append(self)

    # -- any thread ----------------------------------------------------------------------------

    def write(self, line: str) -> None:
        """Queue one line (ending with a newline); drop it if the queue is full."""
        queue = self.queue
        if len(queue) >= QUEUE_LINES:
            self.dropped += 1
            self.dropped_total += 1
            return
        queue.append(line)
        if not self.event.is_set():
            if self.thread is None:
                self._start()
            self.event.set()

    def reopen(self) -> None:
        """Open the path again (SIGUSR1): the writer does it before its next write."""
        if self.path:
            self.want_reopen = True
            if self.thread is None:
                self._start()
            self.event.set()

    def flush(self, timeout: float = 2.0) -> None:
        """Write what is queued now, from the calling thread (before the process exits)."""
        if self.lock.acquire(timeout=timeout):
            try:
                self._write_queued(time.monotonic() + timeout)
            finally:
                self.lock.release()

    # -- the writer thread ---------------------------------------------------------------------

    def _start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            self.event.wait()
            self.event.clear()
            with self.lock:
                self._write_queued(None)

    def _write_queued(self, deadline: float | None) -> None:
        if self.want_reopen:
            self.want_reopen = False
            self._reopen()
        queue = self.queue
        if self.dropped and time.monotonic() - self.reported >= REPORT_EVERY:
            self.reported = time.monotonic()
            report = _format_dropped(self.dropped, self.path or "stderr")
            self.dropped = 0
            main = main_sink()
            if main is self:
                queue.appendleft(report)
            else:  # told in Drover's own log, which may still be writable
                main.write(report)
        while queue:
            if deadline is not None and time.monotonic() > deadline:
                return
            parts, size = [], 0
            while queue and size < BATCH_BYTES:
                line = queue.popleft()
                parts.append(line)
                size += len(line)
            data = "".join(parts).encode("utf-8", "backslashreplace")
            try:
                while data:
                    written = os.write(self.fd, data)
                    data = data[written:]
            except OSError as exc:
                # A full disk, a closed pipe: these lines are lost, the server goes on.
                lost = len(parts)
                self.dropped += lost
                self.dropped_total += lost
                if exc.errno == errno.EBADF and self.path:
                    self._reopen()
                return
            if self.maxsize:
                self._rotate_if_big()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def _reopen(self) -> None:
        try:
            fd = self._open()
        except OSError as exc:
            sys.stderr.write(f"drover: cannot reopen {self.path}: {exc.strerror}\n")
            return
        old, self.fd = self.fd, fd
        if old != 2:
            os.close(old)

    def _rotate_if_big(self) -> None:
        with contextlib.suppress(OSError):
            if os.fstat(self.fd).st_size < self.maxsize:
                return
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:
                if _same_file(self.path, self.fd):  # nobody rotated it yet: we do
                    stamp = time.strftime("%Y%m%d-%H%M%S")
                    target = f"{self.path}.{stamp}"
                    n = 1
                    while os.path.exists(target):
                        n += 1
                        target = f"{self.path}.{stamp}.{n}"
                    os.rename(self.path, target)
            finally:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            self._reopen()

    def after_fork_in_child(self) -> None:
        self.thread = None
        self.queue.clear()
        self.event = threading.Event()
        self.lock = threading.Lock()
        self.dropped = self.dropped_total = 0
        self.pid = os.getpid()


def _same_file(path: str, fd: int) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _format_dropped(count: int, where: str) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (f"{stamp} [{os.getpid()}] [WARNING] {count} log line(s) dropped: {where} could "
            "not be written (full disk, slow reader)\n")


def _after_fork() -> None:
    for sink in _sinks:
        sink.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork)


class SinkHandler(logging.Handler):
    """A logging handler that queues each formatted record on a LogSink."""

    def __init__(self, sink: LogSink) -> None:
        super().__init__()
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


_main: LogSink | None = None


def main_sink() -> LogSink:
    """The sink of Drover's own log (stderr until ``setup`` is called)."""
    global _main
    if _main is None:
        _main = LogSink("-")
    return _main


def setup(level: str, path: str = "", maxsize: int = 0) -> None:
    """Called in the master before fork; workers inherit the handler. Raises OSError when
    ``path`` cannot be opened."""
    global _main
    if _main is not None:
        _sinks.remove(_main)
    _main = LogSink(path, maxsize)
    handler = SinkHandler(_main)
    handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The app's warnings (e.g. wsgiref.validate's WSGIWarning) go to the log too.
    logging.captureWarnings(True)
    atexit.register(flush)  # the master's last lines (workers leave by os._exit: see flush)


def reopen() -> None:
    """SIGUSR1 (master and workers, main thread): reopen every log file of this process."""
    for sink in _sinks:
        sink.reopen()


def flush(timeout: float = 2.0) -> None:
    """Write what is queued, before the process exits (any thread; bounded by ``timeout``)."""
    for sink in list(_sinks):
        sink.flush(timeout)
    with contextlib.suppress(Exception):
        sys.stderr.flush()


def dropped_total() -> int:
    """Log lines this process dropped so far (all sinks)."""
    return sum(sink.dropped_total for sink in _sinks)
