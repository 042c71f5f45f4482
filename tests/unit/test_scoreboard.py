"""The scoreboard (drover.stats.scoreboard) in one process: slots, per-id totals, harakiri."""

from __future__ import annotations

import os
import time

from drover.stats.scoreboard import (
    BOUNDS,
    C_COUNTS,
    C_REQUESTS,
    C_TX,
    NBUCKETS,
    CoreCounters,
    Scoreboard,
    SlotWriter,
)


class FakeLoopThread:
    def __init__(self, index: int) -> None:
        self.index = index
        self.counters = CoreCounters()
        self.in_app = False
        self.last_serve = 0.0


def test_counters_sort_requests_by_status_class_and_latency() -> None:
    counters = CoreCounters()
    now = time.monotonic()
    counters.done(now, "200 OK", 10)
    counters.done(now - 0.2, "404 Not Found", 5)  # took 0.2 s: the bucket for <= 0.25
    counters.done(now, None, 0)  # no status: counted as 5xx
    counters.done(now - 0.03, "204 No Content", 0)  # a 2xx, but not a fast one
    counters.done(now, "302 Found", 0)
    assert counters.requests == 5 and counters.tx == 15
    assert counters.fast == 1  # the fast 2xx is kept apart, and folded in by table()
    table = counters.table()
    assert table[2 * NBUCKETS] == 1
    assert table[2 * NBUCKETS + BOUNDS.index(0.05)] == 1
    assert table[3 * NBUCKETS] == 1
    assert table[4 * NBUCKETS + BOUNDS.index(0.25)] == 1
    assert table[5 * NBUCKETS] == 1
    assert sum(table) == 5
    assert counters.running >= 0.23


def test_publish_then_release_keeps_totals_per_worker_id() -> None:
    board = Scoreboard(capacity=4, cores=2)
    slot = board.claim(1)
    board.started(slot, os.getpid())
    threads = [FakeLoopThread(0), FakeLoopThread(1)]
    for lt, n in zip(threads, (3, 4), strict=True):
        for _ in range(n):
            lt.counters.done(time.monotonic(), "200 OK", 100)
    SlotWriter(board, slot).publish(threads, log_dropped=2)
    assert [board.core(slot, c)[C_REQUESTS] for c in (0, 1)] == [3, 4]
    assert board.core(slot, 1)[C_TX] == 400
    assert sum(board.core(slot, 0)[C_COUNTS:]) == 3
    board.release(slot)
    assert board.retired[1][C_REQUESTS] == 7
    again = board.claim(1)  # the replacement starts from zero; the id keeps its history
    assert again >= 0 and board.core(again, 0)[C_REQUESTS] == 0
    respawns, last_spawn, harakiri = board.id_record(1)
    assert respawns == 1 and abs(last_spawn - time.time()) < 60 and harakiri == 0
    board.close()


def test_bump_harakiri_counts_per_worker_id_across_processes() -> None:
    board = Scoreboard(capacity=4, cores=1)
    board.claim(2)
    pid = os.fork()
    if pid == 0:  # the shared mapping: a child's bump is seen by the parent
        board.bump_harakiri(2)
        os._exit(0)
    os.waitpid(pid, 0)
    board.bump_harakiri(2)
    board.bump_harakiri(99)  # out of range: ignored
    assert board.id_record(2)[2] == 2
    board.close()


def test_slots_run_out_gracefully() -> None:
    board = Scoreboard(capacity=2, cores=1)
    assert board.claim(1) == 0 and board.claim(2) == 1
    assert board.claim(3) == -1  # the worker runs without a slot
    board.release(0)
    assert board.claim(3) == 0
    board.close()
