"""The worker's process title (drover.worker.title): what ps shows, from the loop threads."""

from __future__ import annotations

from typing import Any

import pytest

from drover.worker.title import ProcessTitle


class LT:
    def __init__(self, in_app: bool = False, since: float = 0.0,
                 environ: dict[str, Any] | None = None) -> None:
        self.in_app = in_app
        self.last_serve = since
        self.serving = environ or {}


GET_REPORT = {"REQUEST_METHOD": "GET", "PATH_INFO": "/report"}


@pytest.mark.parametrize(("threads", "title"), [
    ([LT()], "drover: worker 2 [idle]"),
    ([LT(True, 98.8, GET_REPORT)], "drover: worker 2 [busy 1.2s GET /report]"),
    ([LT(), LT(True, 99.5, {"REQUEST_METHOD": "POST", "PATH_INFO": "/up"}),
      LT(True, 97.0, GET_REPORT), LT()], "drover: worker 2 [busy 2/4 3.0s GET /report]"),
    ([LT(True, 100.0, {"REQUEST_METHOD": "GET", "PATH_INFO": "/a\nb\x1b[2J" + "x" * 80})],
     "drover: worker 2 [busy 0.0s GET /a?b?[2J" + "x" * 52 + "...]"),
])
def test_title_describes_the_longest_running_request(threads: list[LT], title: str) -> None:
    assert ProcessTitle("drover", 2).describe(threads, now=100.0) == title
