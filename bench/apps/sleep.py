"""Scenario 5: a blocking app that sleeps 20 ms per request (stands in for a database call)."""

import time
from collections.abc import Callable, Iterable
from typing import Any

SLEEP_SECONDS = 0.020
BODY = b"slept 20 ms"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    time.sleep(SLEEP_SECONDS)
    start_response("200 OK", HEADERS)
    return [BODY]
