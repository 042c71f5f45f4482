"""Feeding ``drover.protocols.http.HttpConnection`` with byte strings, and comparing what it gives.

Shared by the parser unit tests and the corpus replay. No sockets: bytes in, events out.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from drover.protocols.http import HttpConnection, HttpLimits
from drover.protocols.request import ContinueRequest, ProtocolError, Request

DEFAULT_LIMITS = HttpLimits()


@dataclass(frozen=True)
class Seen:
    """One event, reduced to plain values that compare by equality.

    kind: "request", "continue" or "error". For requests: the environ, the body bytes and the
    three flags; for errors: the status (the reason text is ours to word, so not compared).
    """

    kind: str
    environ: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    keep_alive: bool = False
    chunked_ok: bool = False
    head: bool = False
    status: int = 0
    interim: bytes = b""

    def env(self) -> dict[str, str]:
        return dict(self.environ)

    def __repr__(self) -> str:  # short enough to read in an assertion diff
        if self.kind == "error":
            return f"<error {self.status}>"
        if self.kind == "continue":
            return "<continue>"
        more = "..." if len(self.body) > 60 else ""
        return (f"<request {self.env()} body={self.body[:60]!r}{more} ({len(self.body)} B)"
                f" keep_alive={self.keep_alive}"
                f" chunked_ok={self.chunked_ok} head={self.head}>")


def reduce(event: Any) -> Seen:
    """An event of ``HttpConnection.events`` as a ``Seen`` (reads a Request's body)."""
    if isinstance(event, Request):
        body = event.body.read()
        return Seen("request", tuple(sorted(event.environ.items())), body, event.keep_alive,
                    event.chunked_ok, event.head)
    if isinstance(event, ContinueRequest):
        return Seen("continue", interim=event.interim)
    if isinstance(event, ProtocolError):
        return Seen("error", status=event.status)
    raise AssertionError(f"unexpected event {event!r}")


def feed(pieces: Iterable[bytes], limits: HttpLimits = DEFAULT_LIMITS,
         eof: bool = False, fast_path: bool = True) -> list[Seen]:
    """Feed ``pieces`` one ``receive_data`` call each (then EOF if asked); the events seen.
    ``fast_path``: False gives every byte to llhttp."""
    conn = HttpConnection(limits, fast_path)
    for piece in pieces:
        conn.receive_data(piece)
    if eof:
        conn.eof_received()
    return [reduce(event) for event in conn.events]


def parse(data: bytes, limits: HttpLimits = DEFAULT_LIMITS, fast_path: bool = True
          ) -> list[Seen]:
    """Feed ``data`` whole."""
    return feed([data], limits, fast_path=fast_path)


def split_at(data: bytes, positions: Sequence[int]) -> list[bytes]:
    """``data`` cut at the given (sorted) positions."""
    bounds = [0, *positions, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def random_pieces(data: bytes, rng: random.Random, max_piece: int = 64) -> list[bytes]:
    """``data`` in random pieces of 1..max_piece bytes."""
    pieces, pos = [], 0
    while pos < len(data):
        size = rng.randint(1, max_piece)
        pieces.append(data[pos:pos + size])
        pos += size
    return pieces


def two_way_splits(data: bytes, rng: random.Random, every_below: int = 300,
                   samples: int = 120) -> Iterator[int]:
    """Cut positions: every one for short data, else the first and last 40 bytes and a sample."""
    if len(data) < every_below:
        yield from range(1, len(data))
        return
    edges = [*range(1, 41), *range(len(data) - 40, len(data))]
    yield from sorted({*edges, *rng.sample(range(1, len(data)), samples)})
