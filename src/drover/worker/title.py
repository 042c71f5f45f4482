"""The worker's process title: what it is doing, for ``ps`` and ``top`` users.

``drover: worker 2 [idle]`` or ``drover: worker 2 [busy 1.2s GET /report]``. Setting the title
costs a system call and a copy, so it is never done per request: the worker's main thread calls
``show`` about once a second with what the loop threads record anyway (``in_app``, when the
request began, and its environ), and the title changes only when the text does.
"""

from __future__ import annotations

from typing import Any

try:
    from setproctitle import setproctitle as _set_title
except ImportError:  # pragma: no cover - a hard dependency, but titles are cosmetic
    def _set_title(title: str) -> None:
        pass

MAX_PATH = 60  # characters of the path shown


class ProcessTitle:
    """Runs on the worker's main thread."""

    def __init__(self, proc_name: str, worker_id: int) -> None:
        self.prefix = f"{proc_name}: worker {worker_id}"
        self.current = ""

    def describe(self, threads: list[Any], now: float) -> str:
        busy = [lt for lt in threads if lt.in_app]
        if not busy:
            return f"{self.prefix} [idle]"
        oldest = min(busy, key=lambda lt: lt.last_serve)
        environ = oldest.serving
        method = _printable(str(environ.get("REQUEST_METHOD", "")))
        path = _printable(str(environ.get("PATH_INFO", "")))
        if len(path) > MAX_PATH:
            path = path[:MAX_PATH] + "..."
        took = max(0.0, now - oldest.last_serve)
        count = f"{len(busy)}/{len(threads)} " if len(threads) > 1 else ""
        return f"{self.prefix} [busy {count}{took:.1f}s {method} {path}]"

    def show(self, threads: list[Any], now: float) -> None:
        title = self.describe(threads, now)
        if title != self.current:
            self.current = title
            _set_title(title)


def _printable(text: str) -> str:
    return "".join(ch if " " < ch < "\x7f" else "?" for ch in text)
