"""drover.body and the in-place body receiving of the parsers, fed with byte strings only.

A declared body is received into a memory map (or through a scratch buffer into a file) with
``body_target``/``body_received``, the way the worker's recv_into does; whatever the route and
the split, the events must be those of feeding the same bytes whole.
"""

from __future__ import annotations

import io
import random

import pytest
from http_events import Seen, feed, reduce

from drover.body import SMALL_BODY, BodyPool, MappedInput, SizedBody
from drover.protocols.http import HttpConnection, HttpLimits
from drover.protocols.uwsgi import UwsgiConnection

BODY = b"".join(b"line %d of the body\n" % i for i in range(20000)) + b"no newline at the end"
HEAD = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(BODY)
NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"


def mapped(data: bytes) -> MappedInput:
    body = BodyPool(1 << 30).sized(max(len(data), SMALL_BODY))
    assert isinstance(body, SizedBody)
    body.write(data)
    body.size = body.declared = len(data)  # a short body in a map: as if it had been declared
    stream = body.finish()
    assert isinstance(stream, MappedInput)
    return stream


@pytest.mark.parametrize(("name", "call"), [
    ("read_all", lambda f: [f.read()]),
    ("read_none", lambda f: [f.read(None)]),
    ("read_sized", lambda f: [f.read(7), f.read(0), f.read(100000), f.read(5), f.read()]),
    ("readline", lambda f: [f.readline() for _ in range(20005)]),
    ("readline_sized", lambda f: [f.readline(5), f.readline(100), f.readline(0)]),
    ("readlines", lambda f: f.readlines()),
    ("readlines_hint", lambda f: [f.readlines(30), f.readlines(1)]),
    ("iteration", lambda f: list(f)),
    ("seek_tell", lambda f: [f.read(3), f.seek(1), f.read(4), f.tell(), f.seek(-4, 2),
                             f.read(), f.seek(2, 1), f.tell(), f.read()]),
])
def test_mapped_input_reads_like_bytesio(name: str, call: object) -> None:
    got = call(mapped(BODY))  # type: ignore[operator]
    want = call(io.BytesIO(BODY))  # type: ignore[operator]
    assert got == want


def test_mapped_input_readinto_and_close() -> None:
    stream = mapped(b"abcdef")
    buffer = bytearray(4)
    assert stream.readinto(buffer) == 4 and buffer == b"abcd"
    assert stream.readinto(buffer) == 2 and buffer[:2] == b"ef"
    stream.close()
    assert stream.closed
    with pytest.raises(ValueError):
        stream.read()


def test_pool_keeps_bodies_in_memory_up_to_its_limit_then_uses_files() -> None:
    pool = BodyPool(largest=1 << 20, limit=3 << 20)
    size = SMALL_BODY * 8
    bodies = [pool.sized(size) for _ in range(7)]
    streams = []
    for body in bodies:
        assert isinstance(body, SizedBody)
        body.write(b"x" * size)
        streams.append(body.finish())
    assert sum(isinstance(s, MappedInput) for s in streams) == 6  # 6 x 512 KiB = 3 MiB
    assert pool.reserved == 6 * size
    assert hasattr(streams[6], "fileno")  # the seventh went to a temporary file
    for stream in streams:
        assert stream.read() == b"x" * size
        stream.close()
    # Maps are kept for the next bodies (no new page faults), within the limit...
    assert pool.reserved == 6 * size
    again = pool.sized(size)
    assert isinstance(again, SizedBody) and pool.reserved == 6 * size  # a kept map, no new one
    again.discard()
    # ... a larger body takes the room of kept maps ...
    large = pool.sized(1 << 20)
    assert isinstance(large, SizedBody)
    large.write(b"y" * (1 << 20))
    stream = large.finish()
    assert isinstance(stream, MappedInput) and stream.read() == b"y" * (1 << 20)
    stream.close()
    assert pool.reserved <= 3 << 20
    # ... and all go once the pool is unused between two trims (the loop's tick).
    pool.trim()
    pool.trim()
    assert pool.reserved == 0


def test_a_reused_map_gives_only_its_own_body() -> None:
    pool = BodyPool(largest=1 << 20)
    first = pool.sized(300_000)
    assert isinstance(first, SizedBody)
    first.write(b"a" * 300_000)
    first.finish().close()
    second = pool.sized(200_000)
    assert isinstance(second, SizedBody)
    second.write(b"b" * 200_000)
    assert second.finish().read() == b"b" * 200_000


def test_a_body_larger_than_the_in_memory_size_goes_to_a_file() -> None:
    pool = BodyPool(largest=SMALL_BODY * 2)
    body = pool.sized(SMALL_BODY * 3)
    assert isinstance(body, SizedBody)
    body.write(b"y" * (SMALL_BODY * 3))
    stream = body.finish()
    assert not isinstance(stream, MappedInput) and stream.read() == b"y" * (SMALL_BODY * 3)
    assert pool.reserved == 0


def test_a_discarded_body_gives_its_map_back() -> None:
    pool = BodyPool(largest=1 << 20, limit=1 << 20)
    conn = HttpConnection(HttpLimits(bodies=pool))
    conn.receive_data(HEAD.replace(b"%d" % len(BODY), b"500000") + b"abc")
    conn.eof_received()
    assert [e.kind for e in map(reduce, conn.events)] == ["error"]
    pool.trim()
    pool.trim()
    assert pool.reserved == 0


def receive_in_place(conn: HttpConnection | UwsgiConnection, data: bytes, first: int,
                     rng: random.Random) -> None:
    """``first`` bytes through receive_data, then the body in place in random amounts, the
    rest through receive_data again: what the worker does."""
    conn.receive_data(data[:first])
    pos = first
    while (target := conn.body_target()) is not None:
        count = min(len(target), rng.randint(1, 200000), len(data) - pos)
        target[:count] = data[pos:pos + count]
        conn.body_received(count)
        pos += count
    if pos < len(data):
        conn.receive_data(data[pos:])


@pytest.mark.parametrize("limits", [HttpLimits(), HttpLimits(spill=SMALL_BODY * 2)],
                         ids=["memory", "file"])
def test_a_body_received_in_place_gives_the_events_of_the_whole_bytes(limits: HttpLimits
                                                                      ) -> None:
    data = HEAD + BODY + NEXT
    whole = feed([data], limits)
    assert [s.kind for s in whole] == ["request", "request"] and whole[0].body == BODY
    rng = random.Random(14)
    for first in [len(HEAD), len(HEAD) + 1, len(HEAD) + 5000, *rng.sample(range(1, 2000), 20)]:
        conn = HttpConnection(limits)
        receive_in_place(conn, data, first, rng)
        assert [reduce(e) for e in conn.events] == whole, first


@pytest.mark.parametrize(("after", "more"), [(b"", []), (b"\r\n", []), (NEXT, ["error"])])
def test_a_body_taken_without_llhttp_ends_the_connection_when_the_head_says_so(
        after: bytes, more: list[str]) -> None:
    head = HEAD.replace(b"Host: a\r\n", b"Host: a\r\nConnection: close\r\n")
    events = feed([head + BODY[:10], BODY[10:] + after])
    assert events[0].kind == "request" and not events[0].keep_alive
    assert [e.kind for e in events[1:]] == more


def test_uwsgi_body_received_in_place() -> None:
    import struct

    variables = b"".join(struct.pack("<H", len(k)) + k + struct.pack("<H", len(v)) + v
                         for k, v in [(b"REQUEST_METHOD", b"POST"), (b"PATH_INFO", b"/"),
                                      (b"CONTENT_LENGTH", b"%d" % len(BODY))])
    data = struct.pack("<BHB", 0, len(variables), 0) + variables + BODY
    for first in (len(data) - len(BODY), len(data) - len(BODY) + 3000, 10):
        conn = UwsgiConnection(HttpLimits(), 4096)
        receive_in_place(conn, data, first, random.Random(first))
        (event,) = conn.events
        assert reduce(event).body == BODY


# -- pipelined heads under a small header limit (issue: spurious 431) --------------------------


def test_pipelined_heads_give_the_same_events_at_every_split_under_a_small_header_limit(
        ) -> None:
    limits = HttpLimits(header_block=8192, request_line=1024, field_size=1024)
    heads = b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\nUser-Agent: %s\r\n\r\n" % (i, b"u" * 40)
                     for i in range(400))
    whole = feed([heads], limits)
    assert len(whole) == 400 and all(s.kind == "request" for s in whole)
    rng = random.Random(9)
    for size in (16384, 8192, 4096, 1000, 333):  # fixed slices, as the worker feeds them
        assert feed([heads[i:i + size] for i in range(0, len(heads), size)], limits) == whole
    for pos in rng.sample(range(1, len(heads)), 300):
        assert feed([heads[:pos], heads[pos:]], limits) == whole


def test_an_endless_head_is_still_refused_when_it_arrives_in_pieces() -> None:
    limits = HttpLimits(header_block=8192, request_line=1024, field_size=1024)
    data = b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: " + b"v" * 40000
    for size in (100, 1000, 5000):
        events = feed([data[i:i + size] for i in range(0, len(data), size)], limits)
        assert events == [Seen("error", status=431)]


def test_a_body_without_room_waits_then_takes_memory_given_back() -> None:
    pool = BodyPool(largest=1 << 20, limit=1 << 20)
    first = pool.sized(1 << 20)
    assert isinstance(first, SizedBody) and first.placed
    woken: list[bool] = []
    second = pool.sized(300_000)
    assert isinstance(second, SizedBody) and not second.placed  # no room: it waits
    second.write(b"early bytes ")  # what arrived with the head is kept aside
    assert not second.place(force=False)
    pool.wait(lambda: woken.append(True))
    first.write(b"f" * (1 << 20))
    first.finish().close()  # gives its map back: the waiter is woken
    assert woken == [True]
    assert second.place(force=False) and second.placed
    second.write(b"z" * (300_000 - 12))
    stream = second.finish()
    assert isinstance(stream, MappedInput)
    assert stream.read() == b"early bytes " + b"z" * (300_000 - 12)


def test_a_waiting_body_goes_to_a_file_when_forced_or_when_too_much_arrives() -> None:
    pool = BodyPool(largest=1 << 20, limit=1 << 20)
    hog = pool.sized(1 << 20)
    forced = pool.sized(300_000)
    assert isinstance(forced, SizedBody) and not forced.placed
    assert forced.place(force=True) and forced.placed
    forced.write(b"q" * 300_000)
    assert forced.finish().read() == b"q" * 300_000
    flooded = pool.sized(600_000)
    assert isinstance(flooded, SizedBody) and not flooded.placed
    flooded.write(b"w" * 300_000)  # nobody waited for room: past PENDING_MAX, a file
    assert flooded.placed
    flooded.write(b"w" * 300_000)
    assert flooded.finish().read() == b"w" * 600_000
    hog.discard()
