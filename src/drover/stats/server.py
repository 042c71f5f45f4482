"""The stats server: uWSGI's stats JSON document, raw or over HTTP, and Prometheus' text format.

Theory of operation
-------------------
Runs in the master, inside its select loop: the master asks ``readable()``/``writable()`` for
the descriptors to wait on and hands back those that are ready (``handle``). Nothing blocks:

- raw (``--stats``): on accept the document is built and written; the connection closes when it
  is out. This is what uwsgitop, uwsgi_exporter and Telegraf read.
- HTTP (``--stats-http``): the request head is read (8 KiB at most), then ``GET /metrics``
  answers Prometheus' text format (0.0.4) and any other path the JSON document.

A client gets ``CLIENT_TIMEOUT`` seconds in all and at most ``MAX_CLIENTS`` are served at once;
past either it is closed, so a slow or stuck client costs the master nothing but a descriptor.

The figures come from the scoreboard (drover.stats.scoreboard), from /proc (memory), and from
the kernel for the listen queues: ``TCP_INFO`` on a listening TCP socket reports the accept
queue's length in ``tcpi_unacked`` and its limit in ``tcpi_sacked``; for unix sockets the same
two numbers come from sock_diag (``UNIX_DIAG_RQLEN``). ``listen_queue_errors`` counts the
seconds at which a queue was found full, as uWSGI's master does.

The Prometheus exposition is written here (a few lines) rather than with prometheus_client:
that library would be loaded into the master for a format this simple, and its registry and
collectors fit poorly with figures read from shared memory on each scrape.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drover.sockets import Listener, parse_listen_address
from drover.stats import scoreboard
from drover.stats.scoreboard import (
    BOUNDS,
    C_AVG_RT_US,
    C_COUNTS,
    C_EXCEPTIONS,
    C_IN_REQUEST,
    C_READ_ERRORS,
    C_REQUEST_START_US,
    C_REQUESTS,
    C_RUNNING_US,
    C_STATIC,
    C_TX,
    C_WRITE_ERRORS,
    NBUCKETS,
    NCLASSES,
    S_LOG_DROPPED,
)

CLIENT_TIMEOUT = 5.0
MAX_CLIENTS = 64
MAX_HEAD = 8192
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class WorkerView:
    """What the master tells the stats server about one worker process."""

    worker_id: int
    pid: int
    slot: int
    accepting: bool


@dataclass
class _Client:
    sock: socket.socket
    deadline: float
    head: bytes = b""
    out: bytes = b""
    answering: bool = False


# -- listen queues, from the kernel ----------------------------------------------------------------

_TCP_INFO = struct.Struct("8B6I")  # the head of struct tcp_info, up to tcpi_sacked


def listen_queue(sock: socket.socket) -> tuple[int, int]:
    """(connections waiting to be accepted, the queue's limit) of a listening socket."""
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
            fields = _TCP_INFO.unpack(info[:_TCP_INFO.size])
            return fields[12], fields[13]  # tcpi_unacked, tcpi_sacked
        if sock.family == socket.AF_UNIX:
            return _unix_queue(os.fstat(sock.fileno()).st_ino)
    except OSError:
        pass
    return 0, 0


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_DONE, _NLMSG_ERROR = 3, 2
_UDIAG_SHOW_RQLEN = 0x10
_UNIX_DIAG_RQLEN = 4
_TCP_LISTEN = 10


def _unix_queue(inode: int) -> tuple[int, int]:
    """sock_diag: UNIX_DIAG_RQLEN of the listening unix socket with this inode."""
    request = struct.pack("=BBHIII2I", socket.AF_UNIX, 0, 0, 1 << _TCP_LISTEN, 0,
                          _UDIAG_SHOW_RQLEN, 0xFFFFFFFF, 0xFFFFFFFF)
    header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY,
                         _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(1.0)
        nl.sendto(header + request, (0, 0))
        while True:
            data = nl.recv(65536)
            pos = 0
            while pos + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, pos)
                if kind in (_NLMSG_DONE, _NLMSG_ERROR) or length < 16:
                    return 0, 0
                body = pos + 16
                ino = struct.unpack_from("=I", data, body + 4)[0]
                if ino == inode:
                    attr = body + 16  # after struct unix_diag_msg
                    while attr + 4 <= pos + length:
                        alen, atype = struct.unpack_from("=HH", data, attr)
                        if alen < 4:
                            break
                        if atype == _UNIX_DIAG_RQLEN:
                            rqueue, wqueue = struct.unpack_from("=II", data, attr + 4)
                            return rqueue, wqueue
                        attr += (alen + 3) & ~3
                    return 0, 0
                pos += (length + 3) & ~3


def memory(pid: int) -> tuple[int, int]:
    """(rss, vsz) in bytes, from /proc/PID/statm."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            fields = f.read().split()
        return int(fields[1]) * PAGE, int(fields[0]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0, 0


# -- the server ----------------------------------------------------------------------------------


class StatsServer:
    """Runs in the master (created before the first fork, with the scoreboard)."""

    def __init__(self, config: Any, listeners: list[Listener],
                 workers: Callable[[], list[WorkerView]], version: str) -> None:
        self.config = config
        self.listeners = listeners
        self.workers = workers
        self.version = version
        self.http = bool(config.stats_http)
        self.board = scoreboard.create(max(2 * config.workers + 4, 16), config.threads)
        self.sock, self.display, self.unix_path = _bind(config.stats)
        self.clients: dict[int, _Client] = {}
        self.queue_errors = 0
        self.delta: dict[int, int] = {}  # requests per worker id, a second ago
        self.previous: dict[int, int] = {}
        self.next_second = 0.0

    # -- hooks for the master's loop ----------------------------------------------------------

    def readable(self) -> list[int]:
        return [self.sock.fileno(), *(fd for fd, c in self.clients.items() if not c.answering)]

    def writable(self) -> list[int]:
        return [fd for fd, c in self.clients.items() if c.answering]

    def handle(self, readable: list[int], writable: list[int]) -> None:
        """After select: serve what is ready, then drop clients past their deadline."""
        listen_fd = self.sock.fileno()
        for fd in readable:
            if fd == listen_fd:
                self._accept()
            elif fd in self.clients:
                self._read(self.clients[fd])
        for fd in writable:
            if fd in self.clients:
                self._write(self.clients[fd])
        self.tick()

    def tick(self) -> None:
        now = time.monotonic()
        for client in [c for c in self.clients.values() if now > c.deadline]:
            self._close(client)
        if now >= self.next_second:
            self.next_second = now + 1.0
            for listener in self.listeners:
                queue, limit = listen_queue(listener.sock)
                if limit and queue >= limit:
                    self.queue_errors += 1
            totals = self._requests_by_id()
            self.delta = {wid: n - self.previous.get(wid, 0) for wid, n in totals.items()}
            self.previous = totals

    def forget_in_child(self) -> None:
        """In a freshly forked worker: close the master's sockets (answers end with a
        shutdown, which a worker's copy does not hinder, but a client closed for its deadline
        would otherwise see no end until the worker exits)."""
        for client in self.clients.values():
            client.sock.close()
        self.clients.clear()
        self.sock.close()

    def close(self) -> None:
        for client in list(self.clients.values()):
            self._close(client)
        self.sock.close()
        if self.unix_path:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)
        self.board.close()

    # -- the master's worker bookkeeping (forwarded to the scoreboard) -------------------------

    def claim(self, worker_id: int) -> int:
        return self.board.claim(worker_id)

    def started(self, slot: int, pid: int) -> None:
        self.board.started(slot, pid)

    def release(self, slot: int) -> None:
        self.board.release(slot)

    # -- clients ----------------------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(16):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError:
                return
            if len(self.clients) >= MAX_CLIENTS:
                conn.close()
                continue
            conn.setblocking(False)
            client = _Client(conn, time.monotonic() + CLIENT_TIMEOUT)
            self.clients[conn.fileno()] = client
            if not self.http:
                self._answer(client, self.document_bytes())

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(client)
            return
        client.head += data
        end = client.head.find(b"\r\n\r\n")
        if end < 0:
            if len(client.head) > MAX_HEAD:
                self._answer(client, _http(431, "text/plain", b"request head too large\n"))
            return
        line = client.head[:client.head.find(b"\r\n")].decode("latin-1").split()
        if len(line) != 3 or not line[2].startswith("HTTP/1."):
            self._answer(client, _http(400, "text/plain", b"bad request\n"))
            return
        method, target = line[0], line[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            self._answer(client, _http(405, "text/plain", b"GET or HEAD\n"))
            return
        if target == "/metrics":
            response = _http(200, "text/plain; version=0.0.4; charset=utf-8",
                             self.prometheus().encode("utf-8"), head=method == "HEAD")
        else:
            response = _http(200, "application/json", self.document_bytes(),
                             head=method == "HEAD")
        self._answer(client, response)

    def _answer(self, client: _Client, data: bytes) -> None:
        client.answering = True
        client.out = data
        self._write(client)

    def _write(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(client)
            return
        client.out = client.out[sent:]
        if not client.out:
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_WR)
            self._close(client)

    def _close(self, client: _Client) -> None:
        self.clients.pop(client.sock.fileno(), None)
        client.sock.close()

    # -- figures ----------------------------------------------------------------------------------

    def _live(self) -> list[WorkerView]:
        return sorted(self.workers(), key=lambda w: (w.worker_id, w.pid))

    def _cores(self, view: WorkerView) -> list[list[int]]:
        if view.slot < 0:
            return []
        return [self.board.core(view.slot, core) for core in range(self.board.cores)]

    def _requests_by_id(self) -> dict[int, int]:
        totals: dict[int, int] = {}
        for wid, retired in self.board.retired.items():
            totals[wid] = retired[C_REQUESTS]
        for view in self.workers():
            totals[view.worker_id] = totals.get(view.worker_id, 0) + sum(
                core[C_REQUESTS] for core in self._cores(view))
        return totals

    def _per_id(self) -> dict[int, dict[str, Any]]:
        """Per worker id: the current process (the newest), live and retired totals."""
        now_us = int(time.monotonic() * 1_000_000)
        result: dict[int, dict[str, Any]] = {}
        for view in self._live():
            cores = self._cores(view)
            entry = result.get(view.worker_id)
            if entry is None:
                retired = self.board.retired.get(view.worker_id)
                counts = self.board.retired_counts.get(view.worker_id)
                entry = result[view.worker_id] = {
                    "totals": list(retired) if retired else [0] * C_COUNTS,
                    "counts": list(counts) if counts else [0] * (NCLASSES * NBUCKETS),
                    "cores": [], "in_flight": 0, "busy_since": 0, "avg_rt": 0,
                    "log_dropped": 0}
            entry["view"] = view  # the newest process of this id (sorted by pid)
            entry["cores"] = cores
            for core in cores:
                for field in (C_REQUESTS, C_EXCEPTIONS, C_TX, C_STATIC, C_READ_ERRORS,
                              C_WRITE_ERRORS, C_RUNNING_US):
                    entry["totals"][field] += core[field]
                for i in range(NCLASSES * NBUCKETS):
                    entry["counts"][i] += core[C_COUNTS + i]
                if core[C_IN_REQUEST]:
                    entry["in_flight"] += 1
                    start = core[C_REQUEST_START_US]
                    if start and (not entry["busy_since"] or start < entry["busy_since"]):
                        entry["busy_since"] = start
            rates = [core[C_AVG_RT_US] for core in cores if core[C_AVG_RT_US]]
            if rates:
                entry["avg_rt"] = sum(rates) // len(rates)
            if view.slot >= 0:
                entry["log_dropped"] = self.board.header(view.slot)[S_LOG_DROPPED]
            entry["now_us"] = now_us
        return result

    def document(self) -> dict[str, Any]:
        """uWSGI's stats document: its keys, types and units."""
        sockets = []
        total_queue = 0
        for listener in self.listeners:
            queue, limit = listen_queue(listener.sock)
            total_queue += queue
            name = (listener.address.path if listener.address.is_unix
                    else listener.display.split("://", 1)[1])
            sockets.append({"name": name, "proto": listener.protocol, "queue": queue,
                            "max_queue": limit, "shared": 0, "can_offload": 0})
        workers = []
        load = 0
        for wid, entry in sorted(self._per_id().items()):
            view: WorkerView = entry["view"]
            totals = entry["totals"]
            rss, vsz = memory(view.pid)
            respawns, last_spawn, harakiri = self.board.id_record(wid)
            load += entry["in_flight"]
            cores = [{"id": n, "requests": core[C_REQUESTS],
                      "static_requests": core[C_STATIC], "routed_requests": 0,
                      "offloaded_requests": 0, "write_errors": core[C_WRITE_ERRORS],
                      "read_errors": core[C_READ_ERRORS], "in_request": core[C_IN_REQUEST],
                      "vars": [], "req_info": {}}
                     for n, core in enumerate(entry["cores"])]
            workers.append({
                "id": wid, "pid": view.pid, "accepting": int(view.accepting),
                "requests": totals[C_REQUESTS], "delta_requests": self.delta.get(wid, 0),
                "exceptions": totals[C_EXCEPTIONS], "harakiri_count": harakiri,
                "signals": 0, "signal_queue": 0,
                "status": "busy" if entry["in_flight"] else "idle",
                "rss": rss, "vsz": vsz, "running_time": totals[C_RUNNING_US],
                "last_spawn": last_spawn, "respawn_count": respawns, "tx": totals[C_TX],
                "avg_rt": entry["avg_rt"], "log_lines_dropped": entry["log_dropped"],
                "apps": [{"id": 0, "modifier1": 0, "mountpoint": "", "startup_time": 0,
                          "requests": totals[C_REQUESTS], "exceptions": totals[C_EXCEPTIONS],
                          "chdir": self.config.chdir}],
                "cores": cores})
        return {"version": self.version, "listen_queue": total_queue,
                "listen_queue_errors": self.queue_errors, "signal_queue": 0, "load": load,
                "pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(),
                "sockets": sockets, "workers": workers}

    def document_bytes(self) -> bytes:
        return json.dumps(self.document(), separators=(",", ":")).encode("utf-8")

    def prometheus(self) -> str:
        """Prometheus' text exposition format, version 0.0.4."""
        out: list[str] = []

        def family(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}\n# TYPE {name} {kind}\n")

        per_id = sorted(self._per_id().items())
        family("drover_requests_total", "counter",
               "Requests answered, by worker and status class.")
        for wid, entry in per_id:
            counts = entry["counts"]
            for cls in range(NCLASSES):
                n = sum(counts[cls * NBUCKETS:(cls + 1) * NBUCKETS])
                label = f"{cls}xx" if cls else "other"
                out.append(f'drover_requests_total{{worker="{wid}",status="{label}"}} {n}\n')
        family("drover_request_duration_seconds", "histogram",
               "Time from taking up a request to the end of its response.")
        buckets = [0] * NBUCKETS
        running = 0
        for _, entry in per_id:
            for i, n in enumerate(entry["counts"]):
                buckets[i % NBUCKETS] += n
            running += entry["totals"][C_RUNNING_US]
        cumulative = 0
        for bound, n in zip((*BOUNDS, float("inf")), buckets, strict=True):
            cumulative += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'drover_request_duration_seconds_bucket{{le="{le}"}} {cumulative}\n')
        out.append(f"drover_request_duration_seconds_sum {running / 1_000_000}\n")
        out.append(f"drover_request_duration_seconds_count {cumulative}\n")
        family("drover_requests_in_flight", "gauge", "Requests inside the app right now.")
        out.append(f"drover_requests_in_flight {sum(e['in_flight'] for _, e in per_id)}\n")
        simple = (
            ("drover_worker_rss_bytes", "gauge", "Resident memory of each worker.",
             lambda wid, e: memory(e["view"].pid)[0]),
            ("drover_worker_respawns_total", "counter", "Times each worker was replaced.",
             lambda wid, e: self.board.id_record(wid)[0]),
            ("drover_worker_harakiri_total", "counter",
             "Workers killed for a request past its deadline (harakiri).",
             lambda wid, e: self.board.id_record(wid)[2]),
            ("drover_worker_exceptions_total", "counter", "Requests the app failed.",
             lambda wid, e: e["totals"][C_EXCEPTIONS]),
            ("drover_sent_bytes_total", "counter", "Response body bytes sent.",
             lambda wid, e: e["totals"][C_TX]),
            ("drover_worker_busy", "gauge", "1 while a worker has a request in the app.",
             lambda wid, e: int(bool(e["in_flight"]))),
            ("drover_log_lines_dropped_total", "counter",
             "Log lines the current process of each worker could not write in time.",
             lambda wid, e: e["log_dropped"]),
        )
        for name, kind, text, value in simple:
            family(name, kind, text)
            for wid, entry in per_id:
                out.append(f'{name}{{worker="{wid}"}} {value(wid, entry)}\n')
        family("drover_listen_queue", "gauge",
               "Connections waiting in each socket's accept queue (the kernel's figure).")
        limits = []
        for listener in self.listeners:
            queue, limit = listen_queue(listener.sock)
            label = _label(listener.display)
            out.append(f'drover_listen_queue{{socket="{label}"}} {queue}\n')
            limits.append((label, limit))
        family("drover_listen_queue_max", "gauge", "Each socket's accept queue limit.")
        for label, limit in limits:
            out.append(f'drover_listen_queue_max{{socket="{label}"}} {limit}\n')
        family("drover_listen_queue_full_total", "counter",
               "Seconds at which an accept queue was found full.")
        out.append(f"drover_listen_queue_full_total {self.queue_errors}\n")
        return "".join(out)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _http(status: int, content_type: str, body: bytes, head: bool = False) -> bytes:
    reasons = {200: "OK", 400: "Bad Request", 405: "Method Not Allowed",
               431: "Request Header Fields Too Large"}
    return (f"HTTP/1.1 {status} {reasons[status]}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
            "Connection: close\r\n\r\n").encode("latin-1") + (b"" if head else body)


def _bind(address: str) -> tuple[socket.socket, str, str]:
    """A non-blocking listening socket for --stats: (socket, display name, unix path to
    unlink at exit or '')."""
    if address.startswith("@"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind("\0" + address[1:])
        display, path = address, ""
    else:
        parsed = parse_listen_address(address)
        if parsed.is_unix:
            with contextlib.suppress(FileNotFoundError):
                if _is_stale(parsed.path):
                    os.unlink(parsed.path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(parsed.path)
            display, path = parsed.path, parsed.path
        else:
            infos = socket.getaddrinfo(parsed.host or None, parsed.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            family, kind, proto, _, sockaddr = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            host, port = sock.getsockname()[:2]
            display, path = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"), ""
    sock.set_inheritable(False)
    sock.setblocking(False)
    sock.listen(64)
    return sock, display, path


def _is_stale(path: str) -> bool:
    """A socket file nobody answers on (left by a crash) may be replaced."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return True
        except OSError as exc:
            return exc.errno in (errno.ENOENT,)
    raise OSError(errno.EADDRINUSE, f"{path} is in use by a running server")
