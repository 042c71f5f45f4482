"""Responses from regular files (wsgi.file_wrapper) sent with os.sendfile, on the loop thread."""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING, BinaryIO

from drover.logs import log
from drover.wsgi import FileWrapper

if TYPE_CHECKING:
    from drover.worker.connection import Connection


class SendfileJob:
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
        if self.watch_fd >= 0:
            self.conn.lt.loop.remove_writer(self.watch_fd)
            os.close(self.watch_fd)
            self.watch_fd = -1

