"""Worker recycling: when a worker should be replaced, and how the replacement goes.

Theory of operation
-------------------
A worker is recycled for one of three reasons: it served ``--max-requests`` (plus a random
``--max-requests-jitter``, drawn once per worker so that workers started together do not
recycle together), its resident memory passed ``--reload-on-rss``, or it has run for
``--max-worker-lifetime``. The worker counts its requests, so
it decides the first reason itself and *asks* the master (``Q`` and the reason on its pipe)
instead of retiring: retiring at once would leave its share of the load unserved until a
replacement has imported the app. The master checks the other two once a second, from
``/proc/PID/statm`` and the worker's start time, which costs the worker nothing.

Either way the master then treats the worker as leaving: it no longer counts towards
``--workers``, so a replacement is forked at once; the old worker goes on accepting and serving
until the replacement reports that it is ready, and only then is told to retire (SIGHUP: accept
no more, finish what is in flight, let idle keep-alive connections drain). From then on it has
``--worker-reload-mercy`` seconds before it is killed. So no request is refused and none in
flight is dropped. Each recycle is one log line in the master, saying why.

Imported by the master and by workers: stdlib only.
"""

from __future__ import annotations

import os

from drover.config import Config

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MIB = 1024 * 1024


def max_requests_for(config: Config) -> int:
    """This worker's request budget (runs in the worker after fork: ``random`` is reseeded
    in every child); -1 when --max-requests is off."""
    if not config.max_requests:
        return -1
    jitter = config.max_requests_jitter
    if not jitter:
        return config.max_requests
    import random

    return config.max_requests + random.randint(0, jitter)


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` from /proc (None when unreadable: the process is gone).
    Runs in the master, once a second per worker with --reload-on-rss."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


class RecyclePolicy:
    """The master's side of recycling (runs in the master's loop)."""

    def __init__(self, config: Config) -> None:
        self.rss_limit = config.reload_on_rss * MIB
        self.lifetime = config.max_worker_lifetime
        self.mercy = config.worker_reload_mercy
        self.active = bool(self.rss_limit or self.lifetime)

    def reason(self, pid: int, started: float, now: float) -> str:
        """Why the worker ``pid`` should be recycled now, or "" if it should not."""
        if self.lifetime and now - started >= self.lifetime:
            return f"it has run {now - started:.0f} s (--max-worker-lifetime {self.lifetime:g})"
        if self.rss_limit:
            rss = rss_bytes(pid)
            if rss is not None and rss > self.rss_limit:
                return (f"its memory is {rss / MIB:.0f} MiB (--reload-on-rss "
                        f"{self.rss_limit // MIB})")
        return ""
