"""File responses sent with os.sendfile on the loop thread: wsgi.file_wrapper over a regular
file, and static files (``drover.static``) with their answers written before the app.

Both go through ``SendfileJob``: a head, then ``count`` bytes of a file descriptor from
``offset``, written straight from the page cache while the socket takes them and resumed when
it is writable again, so a 1 GiB file to a slow client holds no buffer in the worker. A file
that ends early (it shrank under us) ends the connection: the client sees a body shorter than
its Content-Length followed by the close, never bytes framed as another response.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from typing import TYPE_CHECKING

from drover.body import EMPTY_INPUT
from drover.logs import log
from drover.protocols.http import error_response
from drover.wsgi import FileWrapper, Response

if TYPE_CHECKING:
    from drover.protocols.request import Request
    from drover.static import Answer, StaticFiles
    from drover.worker.connection import Connection

BURST = 1 << 20  # bytes per os.sendfile call
CORK_ABOVE = 256 * 1024  # files at least this large are sent corked (see start)


class SendfileJob:
    """Send ``count`` bytes of ``fd`` from ``offset``, waiting on socket writability between
    bursts. ``owned``: the job closes ``fd`` when it ends (static files); a file_wrapper's file
    is closed by the app's close() instead."""

    head = b""  # written before the file (for_wrapper)
    corked = False  # TCP_CORK is set on the socket while the file goes out

    def __init__(self, conn: Connection, fd: int, offset: int, count: int,
                 owned: bool = False) -> None:
        self.conn = conn
        self.fd = fd
        self.offset = offset
        self.left = count
        self.owned = owned
        self.watch_fd = -1

    @staticmethod
    def usable(wrapper: FileWrapper) -> bool:
        try:
            return stat.S_ISREG(os.fstat(wrapper.filelike.fileno()).st_mode)
        except (AttributeError, OSError, ValueError):
            return False

    @classmethod
    def for_wrapper(cls, conn: Connection, wrapper: FileWrapper) -> SendfileJob:
        """The job for a file_wrapper the app returned (``conn.response`` is its response):
        from the file's position to its end, or as much of it as the app's Content-Length."""
        response = conn.response
        assert response is not None
        fd = wrapper.filelike.fileno()
        offset = wrapper.filelike.tell()
        size = max(0, os.fstat(fd).st_size - offset)
        job = cls(conn, fd, offset, 0)
        job.head = response.head_bytes(size)
        count = size if response.remaining is None else min(size, response.remaining)
        if response.head or response.chunked:
            count = 0
        job.left = response.sent = count
        return job

    def start(self, head: bytes | None = None) -> None:
        conn = self.conn
        # Zero high-water mark: pause_writing() now means "anything is buffered", and
        # resume_writing() "the buffer is empty", which is when sendfile may write directly.
        conn.transport.set_write_buffer_limits(0)
        if self.left >= CORK_ABOVE:
            sock = conn.transport.get_extra_info("socket")
            if sock.family != socket.AF_UNIX:
                # Full segments only until the end (the head rides with the file's first
                # bytes): the client wakes once per segment, not once per sendfile call.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
                self.corked = True
        conn.send(self.head if head is None else head)
        if not conn.write_paused:
            self.resume()

    def resume(self) -> None:
        conn = self.conn
        if conn.transport.is_closing():
            self.cancel()  # aborted meanwhile (a timeout): connection_lost cleans up
            return
        out_fd = conn.transport.get_extra_info("socket").fileno()
        in_fd = self.fd
        try:
            while self.left > 0:
                sent = os.sendfile(out_fd, in_fd, self.offset, min(self.left, BURST))
                if sent == 0:  # the file shrank under us: only a close can end the body
                    conn.response.keep_alive = False  # type: ignore[union-attr]
                    log.warning("file shorter than announced while sending it: closing")
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
        if self.corked:
            self.corked = False
            with contextlib.suppress(OSError):  # uncorking sends the last partial segment
                conn.transport.get_extra_info("socket").setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_CORK, 0)
        conn.sendfile_done()

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
        """Release what the job holds (idempotent): the watch fd, and an owned file."""
        if self.watch_fd >= 0:
            self.conn.lt.loop.remove_writer(self.watch_fd)
            os.close(self.watch_fd)
            self.watch_fd = -1
        if self.owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_STATUS_LINES = {200: "200 OK", 206: "206 Partial Content"}


def serve_static(conn: Connection, request: Request, static: StaticFiles) -> bool:
    """Answer a request under a static prefix (loop thread, before the app): False when it is
    the app's (``--static-fallthrough``). Answers in memory go out with the others of this
    pass of the loop; a file's head goes now and the file with sendfile."""
    lt = conn.lt
    try:
        answer = static.respond(request, lt.server_date)
    except Exception:  # a bug here must cost one answer, never the loop thread
        log.exception("error serving static file %r", request.environ.get("PATH_INFO"))
        conn.send(error_response(500, "Static file error", lt.server_date))
        conn.close()
        if request.body is not EMPTY_INPUT:
            request.body.close()
        return True
    if answer is None:
        return False
    _write_static(conn, request, answer)
    return True


def _write_static(conn: Connection, request: Request, answer: Answer) -> None:
    lt = conn.lt
    if answer.fd < 0:
        conn.defer(answer.data)
        if lt.access_log or request.body is not EMPTY_INPUT:
            response = Response(request, lt.server_date, conn)
            response.status, response.sent = f"{answer.status} -", answer.body
            conn.done(request, response, None)
            return
        worker = lt.worker  # done(), inlined for the usual case
        worker.served += 1
        if worker.served == worker.max_requests:
            worker.recycle()
        if not request.keep_alive or lt.stopping:
            conn.close()
        return
    response = Response(request, lt.server_date, conn)  # for finish(), done() and the log
    response.status = _STATUS_LINES.get(answer.status, f"{answer.status} -")
    response.head_sent = True
    response.sent = answer.count
    conn._begin_response(request, response, None)
    job = conn.sendfile_job = SendfileJob(conn, answer.fd, answer.offset, answer.count, True)
    job.start(answer.data)
