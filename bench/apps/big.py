"""Scenario 3: a 1 MiB response body on GET; on POST, read the whole body and answer its length."""

from collections.abc import Callable, Iterable
from typing import Any

BIG = b"x" * (1 << 20)
BIG_HEADERS = [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BIG)))]
CHUNK = 64 * 1024


def _read_all(environ: dict[str, Any]) -> int:
    stream = environ["wsgi.input"]
    header = environ.get("CONTENT_LENGTH") or ""
    remaining = int(header) if header.isdigit() else -1
    total = 0
    while remaining != 0:
        chunk = stream.read(CHUNK if remaining < 0 else min(CHUNK, remaining))
        if not chunk:
            break
        total += len(chunk)
        if remaining > 0:
            remaining -= len(chunk)
    return total


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["REQUEST_METHOD"] == "POST":
        body = str(_read_all(environ)).encode()
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]
    start_response("200 OK", BIG_HEADERS)
    return [BIG]
