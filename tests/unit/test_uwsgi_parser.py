"""drover.protocols.uwsgi fed with byte strings only (no sockets, no loop).

Tables of uwsgi packets and what each must produce: a Request (its exact CGI environ, body and
flags) or a ProtocolError with the status the worker answers (0: close without answering).
Every valid packet is also fed split at every byte and one byte at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from drover.protocols.http import HttpLimits
from drover.protocols.request import ProtocolError, Request
from drover.protocols.uwsgi import UwsgiConnection, complete_environ, parse_vars

LIMITS = HttpLimits(body=100, spill=16)  # small, so the limits are reached with short packets
VARS_LIMIT = 1024

Pair = tuple[str | bytes, str | bytes]


# -- building packets ---------------------------------------------------------------------------


def u16(n: int) -> bytes:
    return n.to_bytes(2, "little")


def raw(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("latin-1")


def block(*pairs: Pair) -> bytes:
    """A vars block: each key and value as a u16-LE length and the bytes."""
    return b"".join(u16(len(raw(k))) + raw(k) + u16(len(raw(v))) + raw(v) for k, v in pairs)


def head(size: int, modifier1: int = 0, modifier2: int = 0) -> bytes:
    return bytes([modifier1]) + u16(size) + bytes([modifier2])


def lying(data: bytes) -> bytes:
    """A header whose datasize matches ``data``, a vars block that lies inside."""
    return head(len(data)) + data


def packet(*pairs: Pair, body: bytes = b"", modifier1: int = 0) -> bytes:
    data = block(*pairs)
    return head(len(data), modifier1) + data + body


NGINX_VARS: tuple[tuple[str, str], ...] = (
    ("QUERY_STRING", "a=1&b=%20"), ("REQUEST_METHOD", "GET"), ("CONTENT_TYPE", ""),
    ("CONTENT_LENGTH", ""), ("REQUEST_URI", "/caf%C3%A9/x?a=1&b=%20"),
    ("PATH_INFO", "/caf\xc3\xa9/x"), ("DOCUMENT_ROOT", "/srv/www"),
    ("SERVER_PROTOCOL", "HTTP/1.1"), ("REQUEST_SCHEME", "http"), ("REMOTE_ADDR", "10.1.2.3"),
    ("REMOTE_PORT", "51234"), ("SERVER_PORT", "80"), ("SERVER_NAME", "example.com"),
    ("HTTP_HOST", "example.com"), ("HTTP_USER_AGENT", "curl/8.0"))


def nginx(*changes: tuple[str, str], drop: Iterable[str] = ()) -> list[tuple[str, str]]:
    """NGINX_VARS with some keys replaced, added (``changes``) or removed (``drop``)."""
    items = dict(NGINX_VARS)
    for key in drop:
        del items[key]
    items.update(changes)
    return list(items.items())


def nginx_env(*changes: tuple[str, str], drop: Iterable[str] = ()) -> dict[str, str]:
    """The environ the parser must build from ``nginx(*changes, drop=drop)``."""
    env = dict(nginx(*changes, drop=drop))
    env.setdefault("SCRIPT_NAME", "")
    env["wsgi.url_scheme"] = "http"
    return env


# -- feeding ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Got:
    """One event as plain values: a request (environ, body, head) or an error (status)."""

    kind: str
    environ: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    head: bool = False
    status: int = -1

    def __repr__(self) -> str:
        if self.kind == "error":
            return f"<error {self.status}>"
        return f"<request {self.environ} body={self.body!r} head={self.head}>"


def reduce(event: Any) -> Got:
    if isinstance(event, Request):
        # A uwsgi connection carries one request; the close delimits the response.
        assert event.keep_alive is False and event.chunked_ok is False
        return Got("request", dict(event.environ), event.body.read(), event.head)
    if isinstance(event, ProtocolError):
        return Got("error", status=event.status)
    raise AssertionError(f"unexpected event {event!r}")


def feed(pieces: Iterable[bytes], limits: HttpLimits = LIMITS, vars_limit: int = VARS_LIMIT,
         eof: bool = False) -> list[Got]:
    conn = UwsgiConnection(limits, vars_limit)
    for piece in pieces:
        conn.receive_data(piece)
    if eof:
        conn.eof_received()
    return [reduce(event) for event in conn.events]


def split_at(data: bytes, positions: Sequence[int]) -> list[bytes]:
    bounds = [0, *positions, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


def request(environ: dict[str, str], body: bytes = b"", is_head: bool = False) -> Got:
    return Got("request", environ, body, is_head)


def error(status: int) -> Got:
    return Got("error", status=status)


# -- valid packets ------------------------------------------------------------------------------

DEFAULTS = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "QUERY_STRING": "",
            "SERVER_PROTOCOL": "HTTP/1.0", "PATH_INFO": "/", "REQUEST_URI": "/"}

VALID: list[tuple[str, bytes, Got]] = [
    ("nginx_stock_get", packet(*nginx()), request(nginx_env())),
    ("post_body_read_by_content_length",
     packet(*nginx(("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "11"),
                   ("CONTENT_TYPE", "text/plain")), body=b"hello world"),
     request(nginx_env(("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "11"),
                       ("CONTENT_TYPE", "text/plain")), b"hello world")),
    ("bytes_after_the_body_are_not_part_of_it",
     packet(*nginx(("CONTENT_LENGTH", "3")), body=b"abcTRAILING"),
     request(nginx_env(("CONTENT_LENGTH", "3")), b"abc")),
    ("content_length_zero_means_no_body", packet(*nginx(("CONTENT_LENGTH", "0"))),
     request(nginx_env(("CONTENT_LENGTH", "0")))),
    ("body_over_the_spill_size_is_kept_whole",
     packet(*nginx(("CONTENT_LENGTH", "100")), body=bytes(range(100))),
     request(nginx_env(("CONTENT_LENGTH", "100")), bytes(range(100)))),
    ("head_request_is_flagged", packet(*nginx(("REQUEST_METHOD", "HEAD"))),
     request(nginx_env(("REQUEST_METHOD", "HEAD")), is_head=True)),
    ("empty_vars_block_gets_pep3333_defaults", packet(), request(dict(DEFAULTS))),
    ("path_info_derived_from_request_uri_percent_decoded",
     packet(("REQUEST_URI", "/a%20b/caf%C3%A9?x=1")),
     request({**DEFAULTS, "REQUEST_URI": "/a%20b/caf%C3%A9?x=1",
              "PATH_INFO": "/a b/caf\xc3\xa9"})),
    ("request_uri_derived_from_path_info_and_query",
     packet(("PATH_INFO", "/p"), ("QUERY_STRING", "q=1")),
     request({**DEFAULTS, "PATH_INFO": "/p", "QUERY_STRING": "q=1", "REQUEST_URI": "/p?q=1"})),
    ("magic_uwsgi_vars_are_dropped",
     packet(*nginx(), ("UWSGI_FILE", "/tmp/evil.py"), ("UWSGI_MODULE", "evil"),
            ("UWSGI_CALLABLE", "app"), ("UWSGI_SCRIPT", "evil:app"), ("UWSGI_CHDIR", "/tmp"),
            ("UWSGI_PYHOME", "/tmp/venv"), ("UWSGI_APPID", "x"), ("UWSGI_SETENV", "A=1")),
     request(nginx_env())),
    ("repeated_vars_are_joined_like_repeated_headers",
     packet(*nginx(), ("HTTP_X_A", "1"), ("HTTP_X_A", "2"), ("HTTP_X_A", "3")),
     request(nginx_env(("HTTP_X_A", "1, 2, 3")))),
    ("repeated_cookies_are_joined_with_semicolons",
     packet(*nginx(), ("HTTP_COOKIE", "a=1"), ("HTTP_COOKIE", "b=2")),
     request(nginx_env(("HTTP_COOKIE", "a=1; b=2")))),
    ("empty_key_is_dropped", packet(*nginx(), ("", "x")), request(nginx_env())),
    ("bytes_are_carried_as_latin1", packet(*nginx(), (b"HTTP_X_B", b"\xe9\xff")),
     request(nginx_env(("HTTP_X_B", "\xe9\xff")))),
    ("https_on_gives_https_scheme",
     packet(*nginx(("HTTPS", "on"), drop=["REQUEST_SCHEME"])),
     request({**nginx_env(("HTTPS", "on"), drop=["REQUEST_SCHEME"]),
              "wsgi.url_scheme": "https"})),
    ("request_scheme_https_gives_https_scheme",
     packet(*nginx(("REQUEST_SCHEME", "https"), ("HTTPS", "on"))),
     request({**nginx_env(("REQUEST_SCHEME", "https"), ("HTTPS", "on")),
              "wsgi.url_scheme": "https"})),
    ("script_name_is_stripped_from_path_info",
     packet(*nginx(("SCRIPT_NAME", "/app"), ("PATH_INFO", "/app/x"))),
     request(nginx_env(("SCRIPT_NAME", "/app"), ("PATH_INFO", "/x")))),
]


@pytest.mark.parametrize(("data", "expected"), [row[1:] for row in VALID],
                         ids=[row[0] for row in VALID])
def test_valid_packet_gives_one_request(data: bytes, expected: Got) -> None:
    assert feed([data]) == [expected]
    assert feed([data], eof=True) == [expected]  # EOF after a whole request adds nothing


@pytest.mark.parametrize(("data", "expected"), [row[1:] for row in VALID],
                         ids=[row[0] for row in VALID])
def test_valid_packet_split_anywhere_gives_the_same_request(data: bytes, expected: Got) -> None:
    for cut in range(1, len(data)):
        assert feed(split_at(data, [cut])) == [expected], f"split at {cut}"
    assert feed(bytewise(data)) == [expected]


# -- scheme and SCRIPT_NAME ---------------------------------------------------------------------

SCHEMES: list[tuple[list[tuple[str, str]], str | None]] = [
    ([("HTTPS", "on")], "https"),
    ([("HTTPS", "ON")], "https"),
    ([("HTTPS", "1")], "https"),
    ([("HTTPS", "off")], None),
    ([("HTTPS", "")], None),
    ([("REQUEST_SCHEME", "https")], "https"),
    ([("REQUEST_SCHEME", "http")], "http"),
    ([("REQUEST_SCHEME", "http"), ("HTTPS", "on")], "http"),  # the explicit scheme wins
    ([("REQUEST_SCHEME", "gopher")], None),
    ([], None),
]


@pytest.mark.parametrize(("pairs", "scheme"), SCHEMES, ids=[str(row[0]) for row in SCHEMES])
def test_https_and_request_scheme_set_wsgi_url_scheme(pairs: list[tuple[str, str]],
                                                      scheme: str | None) -> None:
    [got] = feed([packet(*pairs)])
    assert got.environ.get("wsgi.url_scheme") == scheme


def test_uwsgi_scheme_var_sets_the_scheme_and_never_reaches_the_app() -> None:
    [got] = feed([packet(("UWSGI_SCHEME", "https"))])
    assert "UWSGI_SCHEME" not in got.environ
    assert got.environ["wsgi.url_scheme"] == "https"


SCRIPT_NAMES: list[tuple[str, str, str]] = [
    ("/app", "/app/x/y", "/x/y"),
    ("/app", "/app", ""),
    ("/app", "/other", "/other"),
    ("", "/x", "/x"),
    # A prefix match must end at a segment boundary: "/application" is not under "/app".
    ("/app", "/application", "/application"),
]


@pytest.mark.parametrize(("script_name", "path_info", "expected"), SCRIPT_NAMES)
def test_script_name_is_stripped_from_path_info(script_name: str, path_info: str,
                                                expected: str) -> None:
    [got] = feed([packet(("SCRIPT_NAME", script_name), ("PATH_INFO", path_info))])
    assert (got.environ["SCRIPT_NAME"], got.environ["PATH_INFO"]) == (script_name, expected)


# -- malformed packets --------------------------------------------------------------------------

MALFORMED: list[tuple[str, bytes, int]] = [
    ("modifier1_5_is_unsupported", packet(*nginx(), modifier1=5), 0),
    ("modifier1_1_is_unsupported", packet(*nginx(), modifier1=1), 0),
    ("modifier1_255_is_unsupported", packet(modifier1=255), 0),
    ("http_request_on_the_uwsgi_socket", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0),
    ("vars_block_over_the_limit", head(VARS_LIMIT + 1) + b"x" * (VARS_LIMIT + 1), 0),
    ("key_length_past_the_end", lying(u16(300) + b"KEY" + u16(1) + b"v"), 0),
    ("lone_byte_where_a_key_length_belongs", lying(b"\x05"), 0),
    ("key_with_no_room_for_the_value_length", lying(u16(3) + b"KEY"), 0),
    ("value_length_past_the_end", lying(u16(3) + b"KEY" + u16(200) + b"vv"), 0),
    ("second_pair_past_the_end", lying(block(("A", "1")) + u16(50) + b"B" * 8), 0),
    ("content_length_not_a_number", packet(("CONTENT_LENGTH", "abc")), 400),
    ("content_length_negative", packet(("CONTENT_LENGTH", "-1")), 400),
    ("content_length_with_sign", packet(("CONTENT_LENGTH", "+5")), 400),
    ("content_length_fractional", packet(("CONTENT_LENGTH", "1.5")), 400),
    ("content_length_with_space", packet(("CONTENT_LENGTH", " 5")), 400),
    # str.isdigit() is True for the latin-1 superscripts, which int() refuses.
    ("content_length_superscript_two", packet(("CONTENT_LENGTH", "\xb2")), 400),
    ("body_over_the_limit_is_413_before_it_arrives", packet(("CONTENT_LENGTH", "101")), 413),
]


@pytest.mark.parametrize(("data", "status"), [row[1:] for row in MALFORMED],
                         ids=[row[0] for row in MALFORMED])
def test_malformed_packet_gives_one_error_with_its_status(data: bytes, status: int) -> None:
    assert feed([data]) == [error(status)]


@pytest.mark.parametrize(("data", "status"), [row[1:] for row in MALFORMED],
                         ids=[row[0] for row in MALFORMED])
def test_malformed_packet_fed_bytewise_gives_the_same_error(data: bytes, status: int) -> None:
    assert feed(bytewise(data)) == [error(status)]


@pytest.mark.parametrize("uri", ["abc", "", "http://"])
def test_unparseable_request_uri_without_path_info_is_an_error_event(uri: str) -> None:
    """Whatever status the parser picks, bad input must come out as a ProtocolError event,
    never as an exception out of receive_data()."""
    events = feed([packet(("REQUEST_URI", uri))])
    assert [event.kind for event in events] == ["error"]


def test_oversize_vars_block_is_refused_as_soon_as_the_header_arrives() -> None:
    assert feed([head(8000)], vars_limit=4096) == [error(0)]


def test_vars_block_exactly_at_the_limit_is_accepted() -> None:
    pairs = [("HTTP_X_PAD", "")]
    pad = VARS_LIMIT - len(block(*pairs))
    data = packet(("HTTP_X_PAD", "p" * pad))
    assert len(data) == 4 + VARS_LIMIT
    [got] = feed([data])
    assert got.kind == "request" and got.environ["HTTP_X_PAD"] == "p" * pad


def test_modifier1_is_refused_before_the_vars_arrive() -> None:
    assert feed([head(100, modifier1=5)]) == [error(0)]


def test_content_length_at_the_limit_is_accepted() -> None:
    data = packet(("CONTENT_LENGTH", "100"), body=b"b" * 100)
    [got] = feed([data])
    assert got.kind == "request" and got.body == b"b" * 100


def test_no_body_limit_when_the_limit_is_zero() -> None:
    data = packet(("CONTENT_LENGTH", "5000"), body=b"z" * 5000)
    [got] = feed([data], limits=HttpLimits(body=0, spill=1024))
    assert got.body == b"z" * 5000


# -- truncation (EOF before the packet is whole) ------------------------------------------------

TRUNCATED: list[tuple[str, bytes]] = [
    ("one_header_byte", b"\x00"),
    ("three_header_bytes", b"\x00\x10\x00"),
    ("header_without_its_vars", head(40)),
    ("vars_cut_short", packet(*nginx())[:-7]),
    ("body_shorter_than_content_length",
     packet(("CONTENT_LENGTH", "50"), body=b"only ten b")),
]


@pytest.mark.parametrize("data", [row[1] for row in TRUNCATED], ids=[row[0] for row in TRUNCATED])
def test_eof_before_the_packet_is_whole_is_a_silent_error(data: bytes) -> None:
    assert feed([data]) == []  # still waiting
    assert feed([data], eof=True) == [error(0)]
    assert feed(bytewise(data), eof=True) == [error(0)]


def test_eof_on_a_fresh_connection_is_no_event() -> None:
    assert feed([], eof=True) == []


# -- one request per connection, and the flags the worker reads ---------------------------------


def test_a_second_packet_on_the_connection_is_ignored() -> None:
    first = packet(("PATH_INFO", "/first"))
    second = packet(("PATH_INFO", "/second"))
    for pieces in ([first + second], [first, second], bytewise(first + second)):
        events = feed(pieces)
        assert [got.environ.get("PATH_INFO") for got in events] == ["/first"]


def test_nothing_is_parsed_after_an_error() -> None:
    events = feed([packet(modifier1=5), packet(("PATH_INFO", "/after"))], eof=True)
    assert events == [error(0)]


def test_in_head_and_in_message_follow_the_packet() -> None:
    conn = UwsgiConnection(LIMITS, VARS_LIMIT)
    assert (conn.in_head, conn.in_message, conn.broken) == (False, False, False)
    data = packet(("CONTENT_LENGTH", "4"), body=b"body")
    conn.receive_data(data[:6])
    assert (conn.in_head, conn.in_message) == (True, True)
    conn.receive_data(data[6:-2])
    assert (conn.in_head, conn.in_message) == (False, True)  # head done, body under way
    assert not conn.events
    conn.receive_data(data[-2:])
    assert (conn.in_head, conn.in_message, conn.broken) == (False, False, True)
    assert len(conn.events) == 1


def test_an_error_ends_the_message() -> None:
    conn = UwsgiConnection(LIMITS, VARS_LIMIT)
    conn.receive_data(head(3, modifier1=9))
    assert (conn.in_head, conn.in_message, conn.broken) == (False, False, True)


# -- parse_vars and complete_environ on their own -----------------------------------------------

PARSE_VARS: list[tuple[str, bytes, dict[str, str]]] = [
    ("empty", b"", {}),
    ("one_pair", block(("A", "1")), {"A": "1"}),
    ("empty_value", block(("A", "")), {"A": ""}),
    ("order_kept_and_repeats_joined", block(("B", "2"), ("A", "1"), ("B", "3")),
     {"B": "2, 3", "A": "1"}),
    ("magic_dropped", block(("UWSGI_FILE", "x"), ("A", "1")), {"A": "1"}),
    ("long_value", block(("A", "v" * 1000)), {"A": "v" * 1000}),
]


@pytest.mark.parametrize(("data", "expected"), [row[1:] for row in PARSE_VARS],
                         ids=[row[0] for row in PARSE_VARS])
def test_parse_vars_reads_every_pair(data: bytes, expected: dict[str, str]) -> None:
    assert parse_vars(data) == expected


@pytest.mark.parametrize("data", [b"\x01", u16(5) + b"AB", u16(1) + b"A" + b"\x01",
                                  u16(1) + b"A" + u16(4) + b"xyz",
                                  block(("A", "1")) + u16(0)],
                         ids=["half_length", "key_short", "half_value_length", "value_short",
                              "dangling_empty_key"])
def test_parse_vars_refuses_lengths_past_the_end(data: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_vars(data)
    assert caught.value.status == 0


COMPLETE: list[tuple[str, dict[str, str], dict[str, str]]] = [
    ("defaults", {}, dict(DEFAULTS)),
    ("given_values_kept",
     {"REQUEST_METHOD": "PUT", "SCRIPT_NAME": "/s", "QUERY_STRING": "q",
      "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/s/p", "REQUEST_URI": "/s/p?q"},
     {"REQUEST_METHOD": "PUT", "SCRIPT_NAME": "/s", "QUERY_STRING": "q",
      "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/p", "REQUEST_URI": "/s/p?q"}),
    ("absolute_form_request_uri", {"REQUEST_URI": "http://h/a%2Fb?x=1"},
     {**DEFAULTS, "REQUEST_URI": "http://h/a%2Fb?x=1", "PATH_INFO": "/a/b"}),
    ("uwsgi_scheme_maps_when_given_directly", {"UWSGI_SCHEME": "https"},
     {**DEFAULTS, "wsgi.url_scheme": "https"}),
]


@pytest.mark.parametrize(("given", "expected"), [row[1:] for row in COMPLETE],
                         ids=[row[0] for row in COMPLETE])
def test_complete_environ_fills_defaults_and_maps(given: dict[str, str],
                                                  expected: dict[str, str]) -> None:
    environ = dict(given)
    complete_environ(environ)
    assert environ == expected


# -- chunked uploads ----------------------------------------------------------------------------


def test_buffered_chunked_upload_uses_content_length_and_drops_transfer_encoding() -> None:
    """nginx buffers a chunked upload and sends CONTENT_LENGTH, but still forwards the client's
    Transfer-Encoding field; the body the app reads is no longer chunked."""
    data = packet(*nginx(("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "11"),
                         ("HTTP_TRANSFER_ENCODING", "chunked")), body=b"hello world")
    [got] = feed([data])
    assert got.body == b"hello world"
    assert got.environ["CONTENT_LENGTH"] == "11"
    assert "HTTP_TRANSFER_ENCODING" not in got.environ


@pytest.mark.parametrize("pieces", [1, 3, 7])
def test_streamed_chunked_upload_without_length_ends_with_the_input(pieces: int) -> None:
    body = bytes(range(256)) * 40
    head = packet(*nginx(("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", ""),
                         ("HTTP_TRANSFER_ENCODING", "chunked")))
    size = -(-len(body) // pieces)
    parts = [head] + [body[i:i + size] for i in range(0, len(body), size)]
    roomy = HttpLimits(body=1 << 20, spill=4096)  # also spills to a temporary file
    assert feed(parts, limits=roomy) == []  # nothing before the end of input
    [got] = feed(parts, limits=roomy, eof=True)
    assert got.body == body
    assert got.environ["CONTENT_LENGTH"] == str(len(body))
    assert "HTTP_TRANSFER_ENCODING" not in got.environ


def test_streamed_upload_over_the_body_limit_is_413() -> None:
    head = packet(*nginx(("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", ""),
                         ("HTTP_TRANSFER_ENCODING", "chunked")))
    limits = HttpLimits(body=100)
    assert feed([head, b"x" * 60, b"x" * 60], limits=limits, eof=True) == [Got("error", status=413)]
