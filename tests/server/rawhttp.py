"""Raw-socket helpers for the black-box HTTP tests (on top of conftest's client and parser)."""

from __future__ import annotations

import contextlib
import re
import resource
import selectors
import socket
import time
from collections.abc import Iterator

from tests.conftest import RawResponse, Server, read_response


def http(*lines: str, body: bytes = b"") -> bytes:
    """A request head from its lines (CRLF after each, then the empty line), then ``body``."""
    return "".join(line + "\r\n" for line in lines).encode("latin-1") + b"\r\n" + body


def read_responses(sock: socket.socket, count: int, *, heads: tuple[bool, ...] = (),
                   timeout: float = 5.0) -> list[RawResponse]:
    """``count`` responses in a row from ``sock`` (pipelining); ``heads[i]``: i-th was HEAD."""
    out: list[RawResponse] = []
    rest = b""
    for i in range(count):
        head = heads[i] if i < len(heads) else False
        response = read_response(sock, head=head, timeout=timeout, buffer=rest)
        out.append(response)
        rest = response.rest
    return out


def read_to_close(sock: socket.socket, timeout: float) -> tuple[bytes, bool, bool]:
    """Read until the peer closes or ``timeout`` seconds pass: (bytes, closed, reset)."""
    deadline = time.monotonic() + timeout
    parts: list[bytes] = []
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            piece = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return b"".join(parts), True, True
        if not piece:
            return b"".join(parts), True, False
        parts.append(piece)
    return b"".join(parts), False, False


def wait_closed(sock: socket.socket, timeout: float) -> tuple[bool, bytes, float]:
    """Read until the peer closes: (closed, bytes read, seconds it took)."""
    start = time.monotonic()
    data, closed, _ = read_to_close(sock, timeout)
    return closed, data, time.monotonic() - start


def is_open(sock: socket.socket, wait: float = 0.3) -> bool:
    """True if the peer neither closed nor sent anything within ``wait`` seconds."""
    closed, data, _ = wait_closed(sock, wait)
    return not closed and not data


def recv_exactly_until(sock: socket.socket, marker: bytes, timeout: float) -> bytes:
    """Bytes up to and including ``marker`` (raises TimeoutError if it does not come)."""
    deadline = time.monotonic() + timeout
    data = b""
    while marker not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{marker!r} not received; got {data[:300]!r}")
        sock.settimeout(left)
        piece = sock.recv(1)
        if not piece:
            raise ConnectionError(f"closed before {marker!r}; got {data[:300]!r}")
        data += piece
    return data


def worker_pids(server: Server) -> list[int]:
    """Pids of the workers booted so far, from ``booting worker N (pid P, generation G)``
    log lines."""
    return [int(pid) for pid in re.findall(r"booting worker \d+ \(pid (\d+),", server.log())]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def raise_nofile(wanted: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to ``wanted`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@contextlib.contextmanager
def many_sockets() -> Iterator[list[socket.socket]]:
    """A list to put sockets in; all of them are closed on exit."""
    socks: list[socket.socket] = []
    try:
        yield socks
    finally:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()


def lifetimes(socks: list[tuple[socket.socket, float]], timeout: float) -> list[float | None]:
    """Watch sockets together; for each, seconds from its start time (time.monotonic()) to the
    moment the peer closed it, or None if it stayed open ``timeout`` seconds from now. Data the
    peer sends is read and ignored."""
    ends: dict[int, float] = {}
    with selectors.DefaultSelector() as selector:
        for index, (sock, _) in enumerate(socks):
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, index)
        deadline = time.monotonic() + timeout
        while len(ends) < len(socks) and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                try:
                    data = conn.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    data = b""
                if not data:
                    ends[key.data] = time.monotonic()
                    selector.unregister(conn)
    return [ends[i] - start if i in ends else None for i, (_, start) in enumerate(socks)]
