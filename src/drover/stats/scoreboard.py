"""The scoreboard: per-worker and per-thread counters in memory shared by master and workers.

Theory of operation
-------------------
With ``--stats`` the master creates, before it forks any worker, one anonymous shared mmap
viewed as an array of signed 64-bit integers. It holds:

- one *id record* per worker id (1, 2, ...): respawns, last spawn, harakiri kills, written by
  the master (and ``bump_harakiri``);
- *slots*, one per worker process alive: a header (pid, worker id, last publication) and one
  *core record* per loop thread (requests, exceptions, bytes sent, errors, time spent, whether
  a request is in the app and since when, and request counts by status class x latency bucket).

Each loop thread counts its requests in plain Python numbers (``CoreCounters.done``, inlined in
the worker's fast path: a clock read, two additions, and for the usual answer, a 2xx within
5 ms, two comparisons and one increment; with ``--stats`` off none of it runs), and the worker's
main thread, which wakes once a second anyway, copies them into the process's slot
(``SlotWriter.publish``) and once more before the worker exits. So every slot has exactly one
writer, no lock is needed, and the master reads figures at most a second old. A slot freed by
an exited worker has its totals added to the master's per-id totals, so counts per worker id
never go backwards when a worker is replaced.

Counts by status class x latency bucket are one flat list (the fast 2xx kept apart in
``fast`` and folded in when published): the request count, the status classes and the latency
histogram are all sums over it.
"""

from __future__ import annotations

import array
import bisect
import mmap
import time
from typing import Any

# Latency buckets (seconds), Prometheus' usual ones; the last bucket is +Inf.
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
NBUCKETS = len(BOUNDS) + 1
NCLASSES = 6  # status classes 1xx..5xx, and 0 for anything else
# The first character of a status ("NNN reason", N in 1-5: drover.wsgi checked it) -> the
# offset of its row in CoreCounters.counts.
ROWS = {str(n): n * NBUCKETS for n in range(1, 6)}
FIRST_BOUND = BOUNDS[0]

# The id record.
I_RESPAWNS, I_LAST_SPAWN, I_HARAKIRI, I_SPAWNED = range(4)
ID_FIELDS = 4
# The slot header.
S_PID, S_WORKER_ID, S_PUBLISHED, S_LOG_DROPPED = range(4)
SLOT_HEADER = 4
# A core record.
(C_REQUESTS, C_EXCEPTIONS, C_TX, C_STATIC, C_READ_ERRORS, C_WRITE_ERRORS, C_RUNNING_US,
 C_AVG_RT_US, C_IN_REQUEST, C_REQUEST_START_US) = range(10)
C_COUNTS = 10
CORE_FIELDS = C_COUNTS + NCLASSES * NBUCKETS
# Totals kept per worker id (what a core record counts, summed over a worker's threads).
TOTALS = (C_REQUESTS, C_EXCEPTIONS, C_TX, C_STATIC, C_READ_ERRORS, C_WRITE_ERRORS, C_RUNNING_US)


class CoreCounters:
    """One loop thread's counters (written by that thread only, read by the main thread)."""

    __slots__ = ("avg_rt", "counts", "exceptions", "fast", "read_errors", "running",
                 "static_requests", "tx", "write_errors")

    def __init__(self) -> None:
        self.tx = 0
        self.running = 0.0  # seconds spent on requests
        self.avg_rt = 0.0
        self.exceptions = 0
        self.static_requests = 0
        self.read_errors = 0
        self.write_errors = 0
        self.counts = [0] * (NCLASSES * NBUCKETS)
        self.fast = 0  # 2xx answered within FIRST_BOUND: counts[ROWS["2"]], kept apart (cheaper)

    @property
    def requests(self) -> int:
        return sum(self.counts) + self.fast

    def table(self) -> list[int]:
        """The status class x latency bucket counts, ``fast`` folded in (main thread)."""
        counts = list(self.counts)
        counts[ROWS["2"]] += self.fast
        return counts

    def count(self, status: str | None, took: float, _bucket: Any = bisect.bisect_left,
              _bounds: tuple[float, ...] = BOUNDS, _rows: dict[str, int] = ROWS) -> None:
        """Count one response that is not a fast 2xx (loop thread)."""
        row = _rows[(status or "5")[0]]
        self.counts[row + _bucket(_bounds, took)] += 1

    def done(self, started: float, status: str | None, sent: int,
             _clock: Any = time.monotonic, _first: float = FIRST_BOUND) -> None:
        """A response ended (loop thread; the hot path with --stats: keep it this short).
        ``started``: time.monotonic() when the request was taken up. The worker's fast path
        (drover.worker.connection, a one-piece answer) does the same inline: keep them in step.
        """
        took = _clock() - started
        self.tx += sent
        self.running += took
        # The usual answer, a 2xx within the first bucket, costs two comparisons and an
        # increment; the rest the table lookups.
        if took < _first and status is not None and "2" <= status < "3":
            self.fast += 1
        else:
            self.count(status, took)


class Scoreboard:
    """The shared array (created in the master before fork; inherited by workers)."""

    def __init__(self, capacity: int, cores: int) -> None:
        self.capacity = capacity
        self.cores = cores
        self.slot_size = SLOT_HEADER + cores * CORE_FIELDS
        self.slots_at = capacity * ID_FIELDS
        words = self.slots_at + capacity * self.slot_size
        self.map = mmap.mmap(-1, words * 8)  # anonymous and MAP_SHARED: shared across fork
        self.view = memoryview(self.map).cast("q")
        self.free = list(range(capacity))
        # Master only: totals of the processes that exited, per worker id.
        self.retired: dict[int, list[int]] = {}
        self.retired_counts: dict[int, list[int]] = {}

    # -- layout ---------------------------------------------------------------------------------

    def id_at(self, worker_id: int) -> int:
        return (worker_id - 1) * ID_FIELDS

    def slot_at(self, slot: int) -> int:
        return self.slots_at + slot * self.slot_size

    def core_at(self, slot: int, core: int) -> int:
        return self.slot_at(slot) + SLOT_HEADER + core * CORE_FIELDS

    # -- master ----------------------------------------------------------------------------------

    def claim(self, worker_id: int) -> int:
        """Before forking worker ``worker_id``: a zeroed slot for it (-1 if none is free), and
        its respawn count and spawn time."""
        if 1 <= worker_id <= self.capacity:
            at = self.id_at(worker_id)
            view = self.view
            if view[at + I_SPAWNED]:
                view[at + I_RESPAWNS] += 1
            view[at + I_SPAWNED] = 1
            view[at + I_LAST_SPAWN] = int(time.time())
        if not self.free:
            return -1
        slot = self.free.pop(0)
        start = self.slot_at(slot)
        self.view[start:start + self.slot_size] = memoryview(bytes(self.slot_size * 8)).cast("q")
        self.view[start + S_WORKER_ID] = worker_id
        return slot

    def started(self, slot: int, pid: int) -> None:
        if slot >= 0:
            self.view[self.slot_at(slot) + S_PID] = pid

    def release(self, slot: int) -> None:
        """The worker in ``slot`` exited (master): keep its totals under its worker id."""
        if slot < 0:
            return
        view = self.view
        worker_id = view[self.slot_at(slot) + S_WORKER_ID]
        totals = self.retired.setdefault(worker_id, [0] * CORE_FIELDS)
        counts = self.retired_counts.setdefault(worker_id, [0] * (NCLASSES * NBUCKETS))
        for core in range(self.cores):
            at = self.core_at(slot, core)
            for field in TOTALS:
                totals[field] += view[at + field]
            for i in range(NCLASSES * NBUCKETS):
                counts[i] += view[at + C_COUNTS + i]
        view[self.slot_at(slot) + S_PID] = 0
        self.free.append(slot)

    def close(self) -> None:
        self.view.release()
        self.map.close()

    # -- reading (master) ---------------------------------------------------------------------

    def id_record(self, worker_id: int) -> tuple[int, int, int]:
        """(respawn_count, last_spawn, harakiri_count) of a worker id."""
        if not 1 <= worker_id <= self.capacity:
            return 0, 0, 0
        at = self.id_at(worker_id)
        view = self.view
        return view[at + I_RESPAWNS], view[at + I_LAST_SPAWN], view[at + I_HARAKIRI]

    def core(self, slot: int, core: int) -> list[int]:
        at = self.core_at(slot, core)
        return list(self.view[at:at + CORE_FIELDS])

    def header(self, slot: int) -> list[int]:
        at = self.slot_at(slot)
        return list(self.view[at:at + SLOT_HEADER])

    # -- any process ------------------------------------------------------------------------------

    def bump_harakiri(self, worker_id: int) -> None:
        if 1 <= worker_id <= self.capacity:
            self.view[self.id_at(worker_id) + I_HARAKIRI] += 1


class SlotWriter:
    """A worker's slot, written by the worker's main thread only."""

    def __init__(self, board: Scoreboard, slot: int) -> None:
        self.board = board
        self.slot = slot

    def publish(self, threads: list[Any], log_dropped: int) -> None:
        """Copy each loop thread's counters (``lt.counters``, ``lt.in_app``, ``lt.last_serve``)
        into the slot (worker main thread, once a second and before exiting)."""
        board = self.board
        view = board.view
        for lt in threads[:board.cores]:
            c: CoreCounters = lt.counters
            at = board.core_at(self.slot, lt.index)
            counts = c.table()
            requests = sum(counts)
            previous = view[at + C_REQUESTS]
            running_us = int(c.running * 1_000_000)
            if requests > previous:  # the mean over the requests since the last publication
                view[at + C_AVG_RT_US] = (running_us - view[at + C_RUNNING_US]) // (
                    requests - previous)
            view[at + C_REQUESTS] = requests
            view[at + C_EXCEPTIONS] = c.exceptions
            view[at + C_TX] = c.tx
            view[at + C_STATIC] = c.static_requests
            view[at + C_READ_ERRORS] = c.read_errors
            view[at + C_WRITE_ERRORS] = c.write_errors
            view[at + C_RUNNING_US] = running_us
            in_app = bool(lt.in_app)
            view[at + C_IN_REQUEST] = int(in_app)
            view[at + C_REQUEST_START_US] = int(lt.last_serve * 1_000_000) if in_app else 0
            view[at + C_COUNTS:at + C_COUNTS + len(counts)] = memoryview(
                _pack(counts)).cast("q")
        head = board.slot_at(self.slot)
        view[head + S_PUBLISHED] = int(time.time())
        view[head + S_LOG_DROPPED] = log_dropped


def _pack(values: list[int]) -> bytes:
    return array.array("q", values).tobytes()


# -- this process's place on the scoreboard ----------------------------------------------------

_board: Scoreboard | None = None
_mine: SlotWriter | None = None


def create(capacity: int, cores: int) -> Scoreboard:
    """Master, before fork: the process-wide scoreboard."""
    global _board
    _board = Scoreboard(capacity, cores)
    return _board


def attach(slot: int) -> None:
    """In a freshly forked worker (called by the master's fork code): this is our slot."""
    global _mine
    if _board is not None and slot >= 0:
        _mine = SlotWriter(_board, slot)


def mine() -> SlotWriter | None:
    """The worker's slot writer, or None when --stats is off (or no slot was free)."""
    return _mine


def bump_harakiri(worker_id: int) -> None:
    """Count a harakiri kill of worker ``worker_id`` (master or worker; no-op without --stats).
    Worker ids start at 1; the count survives the worker's replacement."""
    if _board is not None:
        _board.bump_harakiri(worker_id)
