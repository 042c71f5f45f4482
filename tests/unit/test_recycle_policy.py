"""drover.recycling and the master's side of drover.harakiri: the decisions, table-driven."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from drover.config import load_config
from drover.harakiri import FIRED, FREED, KILL_ME, Escalation
from drover.recycling import RecyclePolicy, max_requests_for, rss_bytes


@pytest.mark.parametrize(("args", "low", "high"), [
    ([], -1, -1),
    (["--max-requests", "100"], 100, 100),
    (["--max-requests", "100", "--max-requests-jitter", "10"], 100, 110),
    (["--max-requests-jitter", "10"], -1, -1),  # jitter alone recycles nothing
])
def test_max_requests_budget(args: list[str], low: int, high: int) -> None:
    config = load_config(args, {})
    budgets = {max_requests_for(config) for _ in range(200)}
    assert min(budgets) >= low and max(budgets) <= high
    if high - low >= 10:
        assert len(budgets) > 1  # drawn per worker, not one value for all


@pytest.mark.parametrize(("args", "age", "expected"), [
    ([], 10_000.0, ""),
    (["--max-worker-lifetime", "60"], 59.0, ""),
    (["--max-worker-lifetime", "60"], 61.0, "it has run 61 s (--max-worker-lifetime 60)"),
    (["--reload-on-rss", "100000"], 1.0, ""),  # 100 GB: this process is below it
    (["--reload-on-rss", "1"], 1.0, "its memory is"),  # 1 MiB: this process is above it
])
def test_recycle_reason(args: list[str], age: float, expected: str) -> None:
    policy = RecyclePolicy(load_config(args, {}))
    reason = policy.reason(os.getpid(), 1000.0, 1000.0 + age)
    assert reason.startswith(expected) if expected else reason == ""


def test_rss_of_a_process_that_is_gone_is_unknown() -> None:
    assert (rss_bytes(os.getpid()) or 0) > 1024 * 1024
    assert rss_bytes(2**22 + 12345) is None


@dataclass
class Record:
    harakiri_at: float = 0.0
    harakiri_count: int = 0


@pytest.mark.parametrize(("messages", "kill", "overdue_at", "count"), [
    ([(FIRED, 10.0)], False, 16.5, 1),  # grace 5: overdue a second after it ends
    ([(FIRED, 10.0), (FREED, 12.0)], False, None, 1),
    ([(FIRED, 10.0), (FIRED, 11.0)], False, 16.5, 2),  # the first stuck request counts
    ([(FIRED, 10.0), (KILL_ME, 15.0)], True, 16.5, 1),
])
def test_escalation(messages: list[tuple[bytes, float]], kill: bool, overdue_at: float | None,
                    count: int) -> None:
    escalation = Escalation(grace=5.0)
    worker = Record()
    results = [escalation.report(worker, message, now) for message, now in messages]
    assert results[-1] is kill and not any(results[:-1])
    assert worker.harakiri_count == count
    assert not escalation.overdue(worker, 15.9)
    if overdue_at is None:
        assert not escalation.overdue(worker, 1000.0)
    else:
        assert escalation.overdue(worker, overdue_at)
