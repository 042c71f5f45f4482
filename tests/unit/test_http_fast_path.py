"""The parser's fast path against llhttp: the same bytes must give the same events.

``HttpConnection`` parses a whole bodiless GET or HEAD head itself and gives everything else to
llhttp (see the docstring of drover.protocols.http). Each input here is fed whole to a parser
with the fast path and to one without it; the events (environ, flags, error statuses) must be
equal. The inputs are the parser tests' tables, the corpus, and heads mutated at random with the
bytes parsers disagree about (controls, obs-text, separators, whitespace, framing fields). The
test also checks that both sides really ran: a fair share of the inputs must have been taken by
the fast path and a fair share given to llhttp.
"""

from __future__ import annotations

import random

import pytest
from http_events import DEFAULT_LIMITS, Seen, feed, parse, reduce
from test_corpus import CASES
from test_http_parser import INVALID, SMALL, VALID

import drover.protocols.http as http_module
from drover.protocols.http import HttpConnection, HttpLimits

BASES = [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n",
    b"HEAD /x?y=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n",
    b"GET /a%20b/%zz?q=%41 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\n"
    b"Accept: */*\r\n\r\n",
    b"GET /p HTTP/1.0\r\nHost: a\r\nConnection: close\r\nX-Real-IP: 10.0.0.1\r\n\r\n",
    b"GET /p HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
    b"GET /page HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64)\r\n"
    b"Accept: text/html,application/xhtml+xml;q=0.9\r\nAccept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\nCookie: a=1; b=2\r\n"
    b"Cookie: c=3\r\nX-Many: 1\r\nX-Many: 2\r\nX_Under: forged\r\n\r\n",
    b"GET /o HTTP/1.1\r\nHost: a\r\nX-Obs: caf\xe9 \x80\xff\r\nX-Empty:\r\nX-Pad: \t v \t\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiGET / HTTP/1.1\r\nHost: a\r\n\r\n",
]

# Bytes and pieces that parsers are known to read differently.
NOISE = [b"\x00", b"\t", b"\r", b"\n", b"\r\n", b" ", b"\x7f", b"\x80", b"\xff", b":", b"_",
         b"#", b"?", b"%", b",", b"\\", b'"', b"\x0b", b"\x0c", b"a", b"/", b"@"]
LINES = [b"Content-Length: 0", b"Content-Length: 2", b"Transfer-Encoding: chunked",
         b"Expect: 100-continue", b"Upgrade: h2c", b"Connection: upgrade",
         b"Connection: close", b"Connection: keep-alive", b"Connection: close, keep-alive",
         b"Host: b", b"Host: a, b", b"X: y", b" folded", b"Bad Name: v", b"Bad:Name: v",
         b"NoColon", b"", b"Transfer_Encoding: chunked", b"Content-length: 1",
         b"Proxy-Connection: close", b"Proxy-Connection: keep-alive", b"Cookie: s=1",
         b"Authorization: Basic YTpi"]
REQUEST_LINES = [b"get / HTTP/1.1", b"GET  / HTTP/1.1", b"GET / HTTP/1.2", b"GET / HTTP/2.0",
                 b"GET http://a/b HTTP/1.1", b"GET * HTTP/1.1", b"OPTIONS * HTTP/1.1",
                 b"DELETE /d HTTP/1.1", b"GET /#f HTTP/1.1", b"GET /a\tb HTTP/1.1",
                 b"GET / HTTP/1.1 ", b"GET /\x80 HTTP/1.1", b"CONNECT a:1 HTTP/1.1",
                 b"HEAD / HTTP/1.0"]


def mutate(data: bytes, rng: random.Random) -> bytes:
    for _ in range(rng.randint(1, 3)):
        choice = rng.randrange(7)
        pos = rng.randrange(len(data) + 1)
        if choice == 0:  # insert a noisy byte
            data = data[:pos] + rng.choice(NOISE) + data[pos:]
        elif choice == 1 and data:  # delete a byte
            data = data[:pos] + data[pos + 1:]
        elif choice == 2 and data:  # replace a byte
            data = data[:pos] + rng.choice(NOISE) + data[pos + 1:]
        else:
            head, sep, rest = data.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            if choice == 3:  # add a field line somewhere after the request line
                lines.insert(rng.randint(1, len(lines)), rng.choice(LINES))
            elif choice == 4:  # another request line
                lines[0] = rng.choice(REQUEST_LINES)
            elif choice == 5 and len(lines) > 1:  # repeat or drop a field line
                i = rng.randrange(1, len(lines))
                if rng.random() < 0.5:
                    lines.insert(i, lines[i])
                else:
                    del lines[i]
            else:  # change a line's case
                i = rng.randrange(len(lines))
                lines[i] = lines[i].swapcase()
            data = b"\r\n".join(lines) + sep + rest
    return data


class Counting(HttpConnection):
    """Counts the messages llhttp began and the requests it completed; the other requests
    were the fast path's."""

    __slots__ = ("llhttp_messages", "llhttp_requests")

    def __init__(self, limits: HttpLimits) -> None:
        super().__init__(limits)
        self.llhttp_messages = self.llhttp_requests = 0

    def on_message_begin(self) -> None:
        self.llhttp_messages += 1
        super().on_message_begin()

    def _message_complete(self, keep_alive: bool) -> None:
        # Requests llhttp began complete here (a Content-Length body is counted without it).
        self.llhttp_requests += 1
        super()._message_complete(keep_alive)


def both_ways(data: bytes, limits: HttpLimits = DEFAULT_LIMITS) -> tuple[list[Seen], int, int]:
    """(events, requests the fast path took, messages llhttp began), after checking that the
    parser without the fast path gives the same events, for ``data`` fed whole and fed in
    two reads cut after the first head."""
    conn = Counting(limits)
    conn.receive_data(data)
    fast = [reduce(event) for event in conn.events]
    slow = parse(data, limits, fast_path=False)
    assert fast == slow, data
    cut = data.find(b"\r\n\r\n") + 4
    if 4 <= cut < len(data):
        pieces = [data[:cut], data[cut:]]
        assert feed(pieces, limits) == feed(pieces, limits, fast_path=False), pieces
    requests = sum(seen.kind == "request" for seen in fast)
    return fast, requests - conn.llhttp_requests, conn.llhttp_messages


def test_the_fast_path_takes_the_common_heads() -> None:
    """Guards the rest of this file: if the fast path took nothing, comparing would prove
    nothing."""
    for base in BASES[:7]:
        _, fast, slow = both_ways(base)
        assert (fast, slow) == (1, 0), base
    assert both_ways(BASES[7])[1:] == (2, 0)  # pipelined heads in one read
    assert both_ways(BASES[9])[1:] == (0, 2)  # a body: llhttp from the first byte


@pytest.mark.parametrize("data", [case.data for case in VALID + INVALID],
                         ids=[case.id for case in VALID + INVALID])
def test_table_requests_give_the_same_events_both_ways(data: bytes) -> None:
    both_ways(data)
    both_ways(data, SMALL)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_corpus_requests_give_the_same_events_both_ways(case: object) -> None:
    both_ways(case.data, case.limits)  # type: ignore[attr-defined]


def test_mutated_heads_give_the_same_events_both_ways() -> None:
    rng = random.Random(20261125)
    taken = given = 0
    for _ in range(6000):
        data = mutate(rng.choice(BASES), rng)
        _, fast, slow = both_ways(data)
        taken += fast
        given += slow
        both_ways(data, SMALL)
        both_ways(data, HttpLimits(  # limits at random, around the sizes of these heads
            request_line=rng.randint(1, 300), fields=rng.randint(1, 20),
            field_size=rng.randint(1, 300), header_block=rng.randint(1, 600)))
    # Both sides must have been exercised for the comparison to mean anything.
    assert taken > 1000 and given > 1000, (taken, given)


def test_a_head_at_each_limit_gives_the_same_events_both_ways() -> None:
    limits = HttpLimits(request_line=60, fields=3, field_size=60, header_block=120)
    for extra in range(0, 70, 3):
        target = "/" + "t" * extra
        both_ways(f"GET {target} HTTP/1.1\r\nHost: a\r\n\r\n".encode(), limits)
        fields = "".join(f"X-{i}: v\r\n" for i in range(extra // 10))
        both_ways(f"GET / HTTP/1.1\r\nHost: a\r\n{fields}\r\n".encode(), limits)
        both_ways(f"GET / HTTP/1.1\r\nHost: a\r\nX: {'v' * extra}\r\n\r\n".encode(), limits)


def test_many_short_fields_at_the_header_block_limit_give_the_same_events_both_ways() -> None:
    """The header block is counted as llhttp reports it (name, value and 4 bytes per field),
    which can exceed the bytes on the wire by one per field."""
    for count in range(10, 30):
        data = b"GET / HTTP/1.0\r\n" + b"a:b\r\n" * count + b"\r\n"
        for block in range(len(data) - 3, len(data) + count + 3):
            both_ways(data, HttpLimits(header_block=block, fields=50))


def test_credentials_are_parsed_but_not_kept_after_their_request() -> None:
    secret = b"Cookie: session=c2VjcmV0\r\nAuthorization: Bearer dG9rZW4=\r\n"
    data = b"GET /me HTTP/1.1\r\nHost: a\r\n" + secret + b"\r\n"
    events, fast, _ = both_ways(data)
    assert fast == 1
    assert events[0].env()["HTTP_COOKIE"] == "session=c2VjcmV0"
    assert events[0].env()["HTTP_AUTHORIZATION"] == "Bearer dG9rZW4="
    assert not [line for line in http_module._FAST_FIELDS if b"c2VjcmV0" in line
                or b"dG9rZW4=" in line]
