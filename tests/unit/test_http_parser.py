"""drover.protocols.http.HttpConnection, fed with byte strings only (no sockets, no loop).

Each table row is one request on the wire and the exact event(s) it must produce: a Request
(its CGI environ, body, keep_alive, chunked_ok and head flags), a ContinueRequest, or a
ProtocolError with the status the worker answers. Limits are tested with small HttpLimits so
the requests stay short.
"""

from __future__ import annotations

import ast
import io
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from http_events import (
    DEFAULT_LIMITS,
    Seen,
    bytewise,
    feed,
    parse,
    random_pieces,
    reduce,
    split_at,
)

import drover.protocols.http as http_module
from drover.protocols.chunked import chunk
from drover.protocols.http import (
    CONTINUE,
    HttpConnection,
    HttpLimits,
    error_response,
    status_has_body,
)

SMALL = HttpLimits(request_line=100, fields=5, field_size=100, header_block=300, body=50,
                   spill=16)


def http(*lines: str, body: bytes = b"") -> bytes:
    """A request head from its lines (CRLF after each, then the empty line), then ``body``."""
    return "".join(line + "\r\n" for line in lines).encode("latin-1") + b"\r\n" + body


def env(method: str = "GET", target: str = "/", protocol: str = "HTTP/1.1",
        host: str | None = "a", path: str | None = None, query: str | None = None,
        **fields: str) -> dict[str, str]:
    """The environ a request must produce: request-line variables, Host, then ``fields``."""
    raw_path, _, raw_query = target.partition("?")
    result = {"REQUEST_METHOD": method, "REQUEST_URI": target, "SERVER_PROTOCOL": protocol,
              "PATH_INFO": raw_path if path is None else path,
              "QUERY_STRING": raw_query if query is None else query}
    if host is not None:
        result["HTTP_HOST"] = host
    result.update(fields)
    return result


def request(environ: dict[str, str], body: bytes = b"", *, keep_alive: bool = True,
            chunked_ok: bool = True, head: bool = False) -> Seen:
    return Seen("request", tuple(sorted(environ.items())), body, keep_alive, chunked_ok, head)


def error(status: int) -> Seen:
    return Seen("error", status=status)


CONTINUE_SEEN = Seen("continue", interim=b"HTTP/1.1 100 Continue\r\n\r\n")


# -- valid requests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Valid:
    id: str
    data: bytes
    expected: list[Seen]



VALID = [
    Valid("get_http11_keeps_alive_and_may_chunk",
          http("GET / HTTP/1.1", "Host: a"), [request(env())]),
    Valid("get_http10_closes_and_may_not_chunk_and_needs_no_host",
          http("GET / HTTP/1.0"),
          [request(env(protocol="HTTP/1.0", host=None),
                  keep_alive=False, chunked_ok=False)]),
    Valid("http10_connection_keep_alive_opts_in",
          http("GET / HTTP/1.0", "Connection: keep-alive"),
          [request(env(protocol="HTTP/1.0", host=None, HTTP_CONNECTION="keep-alive"),
                   chunked_ok=False)]),
    Valid("http10_keep_alive_token_in_a_list_opts_in",
          http("GET / HTTP/1.0", "Connection: foo, Keep-Alive"),
          [request(env(protocol="HTTP/1.0", host=None, HTTP_CONNECTION="foo, Keep-Alive"),
                   chunked_ok=False)]),
    Valid("http11_connection_close_is_honoured_case_insensitively",
          http("GET / HTTP/1.1", "Host: a", "Connection: Close"),
          [request(env(HTTP_CONNECTION="Close"), keep_alive=False)]),
    Valid("head_sets_the_head_flag",
          http("HEAD /x HTTP/1.1", "Host: a"), [request(env("HEAD", "/x"), head=True)]),
    Valid("post_with_content_length_carries_its_body",
          http("POST /f HTTP/1.1", "Host: a", "Content-Type: text/plain", "Content-Length: 5",
               body=b"hello"),
          [request(env("POST", "/f", CONTENT_TYPE="text/plain", CONTENT_LENGTH="5"), b"hello")]),
    Valid("content_length_zero_gives_an_empty_body",
          http("POST / HTTP/1.1", "Host: a", "Content-Length: 0"),
          [request(env("POST", CONTENT_LENGTH="0"))]),
    Valid("content_length_with_leading_zeros_and_trailing_ows",
          http("POST / HTTP/1.1", "Host: a", "Content-Length: 003 ", body=b"abc"),
          [request(env("POST", CONTENT_LENGTH="3"), b"abc")]),
    Valid("post_without_framing_has_no_body_and_no_content_length",
          http("POST / HTTP/1.1", "Host: a"), [request(env("POST"))]),
    Valid("chunked_body_is_decoded_with_extensions_and_trailers_ignored",
          http("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked",
               body=b"3\r\nabc\r\n2;name=value\r\nde\r\n00A\r\n0123456789\r\n0\r\n"
                    b"X-Trailer: t\r\n\r\n"),
          [request(env("POST", CONTENT_LENGTH="15"), b"abcde0123456789")]),
    Valid("chunked_coding_name_is_case_insensitive",
          http("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: Chunked",
               body=b"1\r\nz\r\n0\r\n\r\n"),
          [request(env("POST", CONTENT_LENGTH="1"), b"z")]),
    Valid("empty_chunked_body_has_content_length_zero",
          http("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
          [request(env("POST", CONTENT_LENGTH="0"))]),
    Valid("content_type_and_length_have_no_http_prefix",
          http("PUT / HTTP/1.1", "Host: a", "Content-Type: a/b", "Content-Length: 1", body=b"x"),
          [request(env("PUT", CONTENT_TYPE="a/b", CONTENT_LENGTH="1"), b"x")]),
    Valid("header_names_with_underscore_are_dropped",
          http("GET / HTTP/1.1", "Host: a", "X_Forwarded_For: 6.6.6.6", "X-Real-Ip: 1.2.3.4",
               "X-Forwarded-For: 1.2.3.4"),
          [request(env(HTTP_X_REAL_IP="1.2.3.4", HTTP_X_FORWARDED_FOR="1.2.3.4"))]),
    Valid("repeated_fields_are_joined_with_comma_space",
          http("GET / HTTP/1.1", "Host: a", "Accept: text/html", "X-Multi: 1",
               "accept: text/plain", "X-MULTI: 2"),
          [request(env(HTTP_ACCEPT="text/html, text/plain", HTTP_X_MULTI="1, 2"))]),
    Valid("repeated_cookies_are_joined_with_semicolon_space",
          http("GET / HTTP/1.1", "Host: a", "Cookie: a=1", "Cookie: b=2; c=3"),
          [request(env(HTTP_COOKIE="a=1; b=2; c=3"))]),
    Valid("path_info_is_percent_decoded_to_latin1_text",
          http("GET /caf%C3%A9/%e9%2F%20x?q=%C3%A9+1 HTTP/1.1", "Host: a"),
          [request(env(target="/caf%C3%A9/%e9%2F%20x?q=%C3%A9+1", path="/caf\xc3\xa9/\xe9/ x"))]),
    Valid("invalid_percent_escapes_are_kept_verbatim",
          http("GET /%zz%4 HTTP/1.1", "Host: a"), [request(env(target="/%zz%4"))]),
    Valid("plus_in_path_is_not_a_space",
          http("GET /a+b HTTP/1.1", "Host: a"), [request(env(target="/a+b"))]),
    Valid("query_string_is_raw",
          http("GET /p?a=%20b&c=d+e&&f HTTP/1.1", "Host: a"),
          [request(env(target="/p?a=%20b&c=d+e&&f"))]),
    Valid("empty_query_after_question_mark",
          http("GET /p? HTTP/1.1", "Host: a"), [request(env(target="/p?", query=""))]),
    Valid("absolute_form_target_gives_path_and_query",
          http("GET http://example.com:8080/p/%41?x=1 HTTP/1.1", "Host: example.com:8080"),
          [request(env(target="http://example.com:8080/p/%41?x=1", path="/p/A", query="x=1",
                       host="example.com:8080"))]),
    Valid("absolute_form_without_path_has_root_path",
          http("GET http://example.com?x=1 HTTP/1.1", "Host: example.com"),
          [request(env(target="http://example.com?x=1", path="/", query="x=1",
                       host="example.com"))]),
    Valid("method_unknown_to_llhttp_reaches_the_app",
          http("FOO /x HTTP/1.1", "Host: a"), [request(env("FOO", "/x"))]),
    Valid("methods_are_case_sensitive_tokens",
          http("get / HTTP/1.1", "Host: a"), [request(env("get", "/"))]),
    Valid("unknown_method_with_a_body",
          http("PROPPATCHX / HTTP/1.1", "Host: a", "Content-Length: 3", body=b"abc")
          + http("BREW /pot HTTP/1.1", "Host: a", "Transfer-Encoding: chunked",
                 body=b"1\r\nz\r\n0\r\n\r\n"),
          [request(env("PROPPATCHX", CONTENT_LENGTH="3"), b"abc"),
           request(env("BREW", "/pot", CONTENT_LENGTH="1"), b"z")]),
    # RFC 9112 section 7.1.1: BWS around ";" and "=" in chunk extensions.
    Valid("chunk_extensions_with_whitespace",
          http("POST / HTTP/1.1", "Host: a", "Transfer-Encoding: chunked",
               body=b"5 ; name = value\r\nhello\r\n3\t;\tq=\"a ; b\"\r\nabc\r\n0 ;x\r\n\r\n"),
          [request(env("POST", CONTENT_LENGTH="8"), b"helloabc")]),
    Valid("asterisk_form_for_options",
          http("OPTIONS * HTTP/1.1", "Host: a"), [request(env("OPTIONS", "*"))]),
    Valid("fragment_is_not_part_of_path_info",
          http("GET /a#frag HTTP/1.1", "Host: a"),
          [request(env(target="/a#frag", path="/a"))]),
    Valid("leading_and_trailing_ows_is_stripped_inner_tab_kept",
          http("GET / HTTP/1.1", "Host:  a \t", "X-A:\t b\tc  "),
          [request(env(HTTP_X_A="b\tc"))]),
    Valid("empty_field_value_is_kept_empty",
          http("GET / HTTP/1.1", "Host: a", "X-Empty:"), [request(env(HTTP_X_EMPTY=""))]),
    Valid("empty_host_is_accepted_on_http11",
          http("GET / HTTP/1.1", "Host:"), [request(env(host=""))]),
    Valid("obs_text_in_a_value_is_decoded_as_latin1",
          http("GET / HTTP/1.1", "Host: a", "X-Name: caf\xe9 \x80\xff"),
          [request(env(HTTP_X_NAME="caf\xe9 \x80\xff"))]),
    Valid("empty_lines_before_the_request_line_are_ignored",
          b"\r\n\r\n" + http("GET / HTTP/1.1", "Host: a"), [request(env())]),
    Valid("extension_method_is_accepted",
          http("M-SEARCH / HTTP/1.1", "Host: a"), [request(env("M-SEARCH", "/"))]),
    Valid("asterisk_form_for_options",
          http("OPTIONS * HTTP/1.1", "Host: a"), [request(env("OPTIONS", "*"))]),
    # RFC 9110 section 9.1: any token is a method, and the app decides; llhttp still frames.
    Valid("expect_100_continue_queues_continue_before_the_request",
          http("POST / HTTP/1.1", "Host: a", "Expect: 100-continue", "Content-Length: 2",
               body=b"hi"),
          [CONTINUE_SEEN,
           request(env("POST", HTTP_EXPECT="100-continue", CONTENT_LENGTH="2"), b"hi")]),
    Valid("expect_100_continue_is_case_insensitive",
          http("POST / HTTP/1.1", "Host: a", "Expect: 100-Continue", "Content-Length: 1",
               body=b"x"),
          [CONTINUE_SEEN,
           request(env("POST", HTTP_EXPECT="100-Continue", CONTENT_LENGTH="1"), b"x")]),
    Valid("expect_100_continue_without_a_body_sends_no_interim",
          http("GET / HTTP/1.1", "Host: a", "Expect: 100-continue"),
          [request(env(HTTP_EXPECT="100-continue"))]),
    Valid("expect_100_continue_on_http10_sends_no_interim",
          http("POST / HTTP/1.0", "Expect: 100-continue", "Content-Length: 1", body=b"x"),
          [request(env("POST", protocol="HTTP/1.0", host=None, HTTP_EXPECT="100-continue",
                       CONTENT_LENGTH="1"), b"x", keep_alive=False, chunked_ok=False)]),
]


@pytest.mark.parametrize("case", VALID, ids=[case.id for case in VALID])
def test_valid_request_gives_exactly_the_expected_events(case: Valid) -> None:
    assert parse(case.data) == case.expected


@pytest.mark.parametrize("case", VALID, ids=[case.id for case in VALID])
def test_valid_request_gives_the_same_events_fed_byte_by_byte(case: Valid) -> None:
    assert feed(bytewise(case.data)) == case.expected


# -- invalid requests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Invalid:
    id: str
    data: bytes
    status: int


CL = "Content-Length"
TE = "Transfer-Encoding"
POST = ("POST / HTTP/1.1", "Host: a")

INVALID = [
    # Framing (RFC 9112 section 6): what smuggling is made of.
    Invalid("content_length_and_transfer_encoding",
            http(*POST, f"{CL}: 3", f"{TE}: chunked", body=b"0\r\n\r\n"), 400),
    Invalid("transfer_encoding_then_content_length",
            http(*POST, f"{TE}: chunked", f"{CL}: 3", body=b"0\r\n\r\n"), 400),
    Invalid("two_different_content_lengths", http(*POST, f"{CL}: 3", f"{CL}: 4", body=b"abcd"),
            400),
    Invalid("content_length_list", http(*POST, f"{CL}: 3, 4", body=b"abcd"), 400),
    Invalid("content_length_not_a_number", http(*POST, f"{CL}: 3x", body=b"abc"), 400),
    Invalid("content_length_negative", http(*POST, f"{CL}: -1", body=b"a"), 400),
    Invalid("content_length_with_plus_sign", http(*POST, f"{CL}: +3", body=b"abc"), 400),
    Invalid("content_length_hex", http(*POST, f"{CL}: 0x3", body=b"abc"), 400),
    Invalid("content_length_empty", http(*POST, f"{CL}:", body=b"abc"), 400),
    Invalid("content_length_overflow", http(*POST, f"{CL}: 99999999999999999999999"), 400),
    Invalid("chunk_size_not_hex",
            http(*POST, f"{TE}: chunked", body=b"zz\r\nabc\r\n0\r\n\r\n"), 400),
    Invalid("chunk_size_negative",
            http(*POST, f"{TE}: chunked", body=b"-3\r\nabc\r\n0\r\n\r\n"), 400),
    Invalid("chunk_size_with_space",
            http(*POST, f"{TE}: chunked", body=b"3 \r\nabc\r\n0\r\n\r\n"), 400),
    Invalid("chunk_size_overflow",
            http(*POST, f"{TE}: chunked", body=b"fffffffffffffffff\r\nabc\r\n0\r\n\r\n"), 400),
    Invalid("chunk_data_not_followed_by_crlf",
            http(*POST, f"{TE}: chunked", body=b"3\r\nabcX\r\n0\r\n\r\n"), 400),
    Invalid("chunk_size_line_ends_with_bare_lf",
            http(*POST, f"{TE}: chunked", body=b"3\nabc\r\n0\r\n\r\n"), 400),
    Invalid("chunk_extension_with_nul",
            http(*POST, f"{TE}: chunked", body=b"3;\x00\r\nabc\r\n0\r\n\r\n"), 400),
    Invalid("transfer_encoding_not_ending_in_chunked",
            http(*POST, f"{TE}: chunked, gzip", body=b"abc"), 400),
    # RFC 9112 section 6.3: chunked not final in a request -> 400 and close.
    Invalid("transfer_encoding_without_chunked", http(*POST, f"{TE}: gzip", body=b"abc"), 400),
    Invalid("transfer_encoding_identity", http(*POST, f"{TE}: identity"), 400),
    Invalid("transfer_encoding_chunked_twice",
            http(*POST, f"{TE}: chunked", f"{TE}: chunked", body=b"0\r\n\r\n"), 400),
    Invalid("transfer_encoding_empty", http(*POST, f"{TE}:"), 400),
    Invalid("transfer_coding_before_chunked_is_not_implemented",
            http(*POST, f"{TE}: gzip, chunked", body=b"0\r\n\r\n"), 501),
    Invalid("chunked_on_http10",
            http("POST / HTTP/1.0", f"{TE}: chunked", body=b"0\r\n\r\n"), 400),
    # Field syntax (RFC 9112 section 5).
    Invalid("obs_fold", http("GET / HTTP/1.1", "Host: a", "X-A: b", " c"), 400),
    Invalid("obs_fold_with_tab", http("GET / HTTP/1.1", "Host: a", "X-A: b", "\tc"), 400),
    Invalid("whitespace_before_colon", http("GET / HTTP/1.1", "Host: a", "X-A : b"), 400),
    Invalid("whitespace_before_first_field", http("GET / HTTP/1.1", " Host: a"), 400),
    Invalid("nul_in_a_value", http("GET / HTTP/1.1", "Host: a", "X-A: b\x00c"), 400),
    Invalid("control_char_in_a_value", http("GET / HTTP/1.1", "Host: a", "X-A: b\x01c"), 400),
    Invalid("escape_char_in_a_value", http("GET / HTTP/1.1", "Host: a", "X-A: \x1b[31m"), 400),
    Invalid("del_in_a_value", http("GET / HTTP/1.1", "Host: a", "X-A: b\x7fc"), 400),
    Invalid("bare_cr_in_a_value", http("GET / HTTP/1.1", "Host: a\rX-B: c"), 400),
    Invalid("bare_lf_after_a_value", b"GET / HTTP/1.1\r\nHost: a\nX-B: c\r\n\r\n", 400),
    Invalid("lf_only_line_endings", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    Invalid("empty_field_name", http("GET / HTTP/1.1", "Host: a", ": b"), 400),
    Invalid("field_without_colon", http("GET / HTTP/1.1", "Host: a", "X-A"), 400),
    Invalid("separator_in_field_name", http("GET / HTTP/1.1", "Host: a", "X(A): b"), 400),
    Invalid("invalid_trailer_field", http(*POST, f"{TE}: chunked", body=b"0\r\nBad T\r\n\r\n"),
            400),
    # Host (RFC 9112 section 3.2).
    Invalid("missing_host_on_http11", http("GET / HTTP/1.1"), 400),
    Invalid("missing_host_with_absolute_form", http("GET http://x/ HTTP/1.1"), 400),
    Invalid("two_different_hosts", http("GET / HTTP/1.1", "Host: a", "Host: b"), 400),
    Invalid("two_identical_hosts", http("GET / HTTP/1.1", "Host: a", "Host: a"), 400),
    Invalid("two_hosts_on_http10", http("GET / HTTP/1.0", "Host: a", "Host: b"), 400),
    # Versions (RFC 9112 section 2.6).
    Invalid("http20", http("GET / HTTP/2.0", "Host: a"), 505),
    Invalid("http09", http("GET / HTTP/0.9", "Host: a"), 505),
    Invalid("http12", http("GET / HTTP/1.2", "Host: a"), 505),
    Invalid("http30", http("GET / HTTP/3.0", "Host: a"), 505),
    Invalid("http09_simple_request", b"GET /\r\n\r\n", 505),
    Invalid("lowercase_http_name", http("GET / http/1.1", "Host: a"), 400),
    Invalid("space_after_version", http("GET / HTTP/1.1 ", "Host: a"), 400),
    Invalid("http2_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    # Request line.
    Invalid("space_in_target", http("GET /a b HTTP/1.1", "Host: a"), 400),
    Invalid("absolute_form_without_host", http("GET http:// HTTP/1.1", "Host: a"), 400),
    Invalid("absolute_form_broken_ipv6", http("GET http://[::1 HTTP/1.1", "Host: a"), 400),
    Invalid("control_char_in_target", http("GET /\x01 HTTP/1.1", "Host: a"), 400),
    Invalid("non_ascii_byte_in_target", http("GET /\xe9 HTTP/1.1", "Host: a"), 400),
    Invalid("method_that_is_not_a_token", http("FO@O / HTTP/1.1", "Host: a"), 400),
    Invalid("asterisk_form_for_get", http("GET * HTTP/1.1", "Host: a"), 400),
    Invalid("asterisk_form_for_an_unknown_method", http("FOO * HTTP/1.1", "Host: a"), 400),
    Invalid("chunk_extension_whitespace_inside_a_name",
            http(*POST, f"{TE}: chunked", body=b"5;na me=v\r\nhello\r\n0\r\n\r\n"), 400),
    Invalid("chunk_size_followed_by_whitespace_only_then_garbage",
            http(*POST, f"{TE}: chunked", body=b"5 x\r\nhello\r\n0\r\n\r\n"), 400),
    Invalid("binary_garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    Invalid("connect_is_not_implemented", http("CONNECT a:443 HTTP/1.1", "Host: a:443"), 501),
    # Expect (RFC 9110 section 10.1.1).
    Invalid("expect_other_than_100_continue",
            http(*POST, "Expect: something-else", f"{CL}: 1", body=b"x"), 417),
]


@pytest.mark.parametrize("case", INVALID, ids=[case.id for case in INVALID])
def test_invalid_request_is_refused_with_its_status(case: Invalid) -> None:
    assert parse(case.data) == [error(case.status)]


@pytest.mark.parametrize("case", INVALID, ids=[case.id for case in INVALID])
def test_invalid_request_is_refused_alike_byte_by_byte(case: Invalid) -> None:
    assert feed(bytewise(case.data)) == [error(case.status)]


@pytest.mark.parametrize("case", INVALID, ids=[case.id for case in INVALID])
def test_invalid_request_after_a_valid_one_is_answered_after_it(case: Invalid) -> None:
    first = http("GET /first HTTP/1.1", "Host: a")
    assert parse(first + case.data) == [request(env(target="/first")), error(case.status)]


def test_error_reason_never_echoes_client_bytes() -> None:
    conn = HttpConnection(DEFAULT_LIMITS)
    conn.receive_data(http("GET / HTTP/1.1", "Host: a", "X-A : <script>"))
    (event,) = conn.events
    assert "<script>" not in getattr(event, "reason", "")


# -- limits --------------------------------------------------------------------------------------


def small(data: bytes) -> list[Seen]:
    return parse(data, SMALL)


def target_of(length: int) -> str:
    """An origin-form target of exactly ``length`` bytes."""
    return "/" + "a" * (length - 1)


def test_target_at_the_request_line_limit_is_accepted() -> None:
    target = target_of(SMALL.request_line)
    assert small(http(f"GET {target} HTTP/1.1", "Host: a")) == [request(env(target=target))]


@pytest.mark.parametrize("pieces", ["whole", "bytewise"])
def test_request_line_over_the_limit_is_414(pieces: str) -> None:
    data = http(f"GET {target_of(SMALL.request_line + 1)} HTTP/1.1", "Host: a")
    assert feed([data] if pieces == "whole" else bytewise(data), SMALL) == [error(414)]


def test_endless_request_line_is_414_before_it_ends() -> None:
    conn = HttpConnection(SMALL)
    conn.receive_data(b"GET /")
    for _ in range(100):
        conn.receive_data(b"a" * 50)
    assert [event.status for event in conn.events] == [414]  # type: ignore[union-attr]


def fields(count: int) -> list[str]:
    return [f"X-F{i}: v" for i in range(count)]


def test_header_count_at_the_limit_is_accepted() -> None:
    (seen,) = small(http("GET / HTTP/1.1", "Host: a", *fields(SMALL.fields - 1)))
    assert seen.kind == "request"


def test_too_many_header_fields_is_431() -> None:
    assert small(http("GET / HTTP/1.1", "Host: a", *fields(SMALL.fields))) == [error(431)]


def test_dropped_underscore_fields_still_count_toward_the_field_limit() -> None:
    many = [f"X_U{i}: v" for i in range(SMALL.fields)]
    assert small(http("GET / HTTP/1.1", "Host: a", *many)) == [error(431)]


def field_of(size: int) -> str:
    """A field whose name and value together are ``size`` bytes."""
    return "X-Big: " + "b" * (size - len("X-Big"))


def test_field_at_the_size_limit_is_accepted() -> None:
    (seen,) = small(http("GET / HTTP/1.1", "Host: a", field_of(SMALL.field_size)))
    assert seen.kind == "request"


@pytest.mark.parametrize("pieces", ["whole", "bytewise"])
def test_field_over_the_size_limit_is_431(pieces: str) -> None:
    data = http("GET / HTTP/1.1", "Host: a", field_of(SMALL.field_size + 1))
    assert feed([data] if pieces == "whole" else bytewise(data), SMALL) == [error(431)]


# Room for many fields, so only the header block limit can be what refuses them.
BLOCK_LIMITS = HttpLimits(request_line=100, fields=50, field_size=100, header_block=300)


def big_header_block() -> bytes:
    """Within the count and per-field limits, but over twice the header block limit (even
    counting the request line's allowance into it)."""
    lines = [field_of(BLOCK_LIMITS.field_size - 1) for _ in range(10)]
    data = http("GET / HTTP/1.1", "Host: a", *lines)
    assert len(data) > 2 * (BLOCK_LIMITS.header_block + BLOCK_LIMITS.request_line)
    return data


@pytest.mark.parametrize("pieces", ["whole", "bytewise", "random"])
def test_header_block_over_the_limit_is_431(pieces: str) -> None:
    data = big_header_block()
    chunks = {"whole": [data], "bytewise": bytewise(data),
              "random": random_pieces(data, random.Random(7))}[pieces]
    assert feed(chunks, BLOCK_LIMITS) == [error(431)]


def test_header_block_under_the_limit_is_accepted() -> None:
    data = http("GET / HTTP/1.1", "Host: a", *[field_of(50) for _ in range(4)])
    assert len(data) < BLOCK_LIMITS.header_block
    assert [seen.kind for seen in feed(bytewise(data), BLOCK_LIMITS)] == ["request"]


def test_endless_header_block_is_431_before_it_ends() -> None:
    conn = HttpConnection(SMALL)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: ")
    for _ in range(100):
        conn.receive_data(b"v" * 50)
    assert [event.status for event in conn.events] == [431]  # type: ignore[union-attr]


def test_body_at_the_limit_is_accepted() -> None:
    body = b"x" * SMALL.body
    data = http(*POST, f"{CL}: {SMALL.body}", body=body)
    assert small(data) == [request(env("POST", CONTENT_LENGTH=str(SMALL.body)), body)]


def test_content_length_over_the_limit_is_413_before_the_body_arrives() -> None:
    assert small(http(*POST, f"{CL}: {SMALL.body + 1}")) == [error(413)]


def chunked_body(total: int, size: int = 20) -> bytes:
    out = b""
    while total > 0:
        n = min(size, total)
        out += chunk(b"y" * n)
        total -= n
    return out + b"0\r\n\r\n"


def test_chunked_body_at_the_limit_is_accepted() -> None:
    data = http(*POST, f"{TE}: chunked", body=chunked_body(SMALL.body))
    assert small(data) == [request(env("POST", CONTENT_LENGTH=str(SMALL.body)),
                                   b"y" * SMALL.body)]


@pytest.mark.parametrize("pieces", ["whole", "bytewise"])
def test_chunked_body_over_the_limit_is_413(pieces: str) -> None:
    data = http(*POST, f"{TE}: chunked", body=chunked_body(SMALL.body + 1))
    assert feed([data] if pieces == "whole" else bytewise(data), SMALL) == [error(413)]


def test_chunked_body_over_the_limit_is_413_before_its_end() -> None:
    conn = HttpConnection(SMALL)
    conn.receive_data(http(*POST, f"{TE}: chunked", body=b"40\r\n" + b"z" * 0x40))
    assert [event.status for event in conn.events] == [413]  # type: ignore[union-attr]


def test_zero_body_limit_means_unlimited() -> None:
    limits = HttpLimits(body=0, spill=16)
    body = b"q" * 100_000
    (seen,) = parse(http(*POST, f"{CL}: {len(body)}", body=body), limits)
    assert seen.body == body


def test_large_pipelined_body_does_not_count_toward_the_next_header_block() -> None:
    """One read holding a body bigger than the header limit and the start of the next head."""
    limits = HttpLimits(request_line=100, header_block=300, body=0)
    body = b"b" * 1000
    first = http(*POST, f"{CL}: {len(body)}", body=body)
    second = http("GET /next HTTP/1.1", "Host: a")
    conn = HttpConnection(limits)
    conn.receive_data(first + second[:20])
    conn.receive_data(second[20:])
    assert [e.kind for e in map(reduce, conn.events)] == ["request", "request"]


# -- bodies --------------------------------------------------------------------------------------


def body_stream(data: bytes, limits: HttpLimits) -> object:
    conn = HttpConnection(limits)
    conn.receive_data(data)
    (event,) = conn.events
    return event.body  # type: ignore[union-attr]


def test_small_body_is_kept_in_memory() -> None:
    stream = body_stream(http(*POST, f"{CL}: 16", body=b"s" * 16), SMALL)
    assert isinstance(stream, io.BytesIO)


def test_body_over_the_spill_size_is_a_real_file_with_the_whole_body() -> None:
    body = bytes(range(256)) * 40
    stream = body_stream(http(*POST, f"{CL}: {len(body)}", body=body),
                         HttpLimits(spill=1000))
    assert not isinstance(stream, io.BytesIO)
    assert stream.fileno() >= 0  # type: ignore[attr-defined]
    assert stream.read() == body  # type: ignore[attr-defined]


def test_no_body_gives_an_empty_stream() -> None:
    stream = body_stream(http("GET / HTTP/1.1", "Host: a"), SMALL)
    assert stream.read() == b""  # type: ignore[attr-defined]
    assert stream.readline() == b""  # type: ignore[attr-defined]


# -- pipelining, Expect, Upgrade, errors ---------------------------------------------------------


def test_pipelined_requests_in_one_buffer_give_events_in_order() -> None:
    data = (http("GET /1 HTTP/1.1", "Host: a")
            + http("POST /2 HTTP/1.1", "Host: a", f"{CL}: 2", body=b"hi")
            + http("POST /3 HTTP/1.1", "Host: a", f"{TE}: chunked", body=b"1\r\nc\r\n0\r\n\r\n")
            + http("HEAD /4 HTTP/1.1", "Host: a", "Connection: close"))
    assert parse(data) == [
        request(env(target="/1")),
        request(env("POST", "/2", CONTENT_LENGTH="2"), b"hi"),
        request(env("POST", "/3", CONTENT_LENGTH="1"), b"c"),
        request(env("HEAD", "/4", HTTP_CONNECTION="close"), keep_alive=False, head=True),
    ]


def test_continue_is_queued_as_soon_as_the_head_arrives() -> None:
    conn = HttpConnection(DEFAULT_LIMITS)
    conn.receive_data(http(*POST, "Expect: 100-continue", f"{CL}: 3"))
    assert list(conn.events) == [CONTINUE]
    assert CONTINUE.interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.events.clear()
    conn.receive_data(b"abc")
    (event,) = conn.events
    assert event.body.read() == b"abc"  # type: ignore[union-attr]


def test_continue_of_a_pipelined_request_comes_after_the_earlier_request() -> None:
    data = (http("GET /1 HTTP/1.1", "Host: a")
            + http(*POST, "Expect: 100-continue", f"{CL}: 1", body=b"z"))
    assert [seen.kind for seen in parse(data)] == ["request", "continue", "request"]


def test_nothing_is_parsed_after_an_error() -> None:
    conn = HttpConnection(DEFAULT_LIMITS)
    conn.receive_data(http("GET / HTTP/1.1", "Host: a", "X-A : b"))
    assert conn.broken
    conn.receive_data(http("GET /later HTTP/1.1", "Host: a"))
    conn.receive_data(b"\x00garbage\r\n\r\n")
    conn.eof_received()
    assert [reduce(e) for e in conn.events] == [error(400)]


def test_requests_before_an_error_are_kept_and_nothing_after_it() -> None:
    data = (http("GET /1 HTTP/1.1", "Host: a") + http("GET /2 HTTP/1.1")
            + http("GET /3 HTTP/1.1", "Host: a"))
    assert parse(data) == [request(env(target="/1")), error(400)]


def test_upgrade_request_is_served_once_then_the_connection_closes() -> None:
    data = (http("GET /ws HTTP/1.1", "Host: a", "Connection: Upgrade", "Upgrade: websocket")
            + b"\x81\x05hello" + http("GET /after HTTP/1.1", "Host: a"))
    conn = HttpConnection(DEFAULT_LIMITS)
    conn.receive_data(data)
    conn.receive_data(http("GET /later HTTP/1.1", "Host: a"))
    assert [reduce(e) for e in conn.events] == [
        request(env(target="/ws", HTTP_CONNECTION="Upgrade", HTTP_UPGRADE="websocket"),
                keep_alive=False)]
    assert conn.broken


def test_upgrade_request_with_a_body_keeps_its_body() -> None:
    """An Upgrade the server ignores (RFC 9110 section 7.8) must not cost the request its body."""
    data = http(*POST, "Connection: Upgrade", "Upgrade: foo", f"{CL}: 2", body=b"hi")
    (seen,) = parse(data)
    assert (seen.kind, seen.env().get("CONTENT_LENGTH"), seen.body) == ("request", "2", b"hi")
    assert not seen.keep_alive


def test_trailer_fields_are_not_merged_into_the_header_fields() -> None:
    """RFC 9110 section 6.5.1: a trailer is not a header; here it would even add a second Host
    after the Host check, and forge a proxy's field."""
    data = http(*POST, f"{TE}: chunked",
                body=b"2\r\nok\r\n0\r\nHost: evil\r\nX-Forwarded-For: 6.6.6.6\r\n"
                     b"Content-Type: forged\r\n\r\n")
    (seen,) = parse(data)
    assert seen.body == b"ok"
    environ = seen.env()
    assert environ["HTTP_HOST"] == "a"
    assert "HTTP_X_FORWARDED_FOR" not in environ and "CONTENT_TYPE" not in environ


def test_eof_in_the_middle_of_a_request_is_400() -> None:
    data = http(*POST, f"{CL}: 10", body=b"short")
    assert feed([data], eof=True) == [error(400)]


def test_eof_in_the_middle_of_a_head_is_400() -> None:
    assert feed([b"GET / HTTP/1.1\r\nHo"], eof=True) == [error(400)]


def test_eof_between_requests_is_not_an_error() -> None:
    assert feed([http("GET / HTTP/1.1", "Host: a")], eof=True) == [request(env())]


def test_message_flags_follow_the_request_progress() -> None:
    conn = HttpConnection(DEFAULT_LIMITS)
    assert (conn.in_message, conn.in_head) == (False, False)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\n")
    assert (conn.in_message, conn.in_head) == (True, True)
    conn.receive_data(b"Content-Length: 4\r\n\r\nab")
    assert (conn.in_message, conn.in_head) == (True, False)
    conn.receive_data(b"cd")
    assert (conn.in_message, conn.in_head) == (False, False)
    assert len(conn.events) == 1


# -- response helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 413, 414, 417, 431, 501, 505])
def test_error_response_is_short_plain_text_and_closes(status: int) -> None:
    date = "Server: drover\r\nDate: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
    raw = error_response(status, "why", date)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith(f"HTTP/1.1 {status} ")
    fields_ = dict(line.split(": ", 1) for line in lines[1:])
    assert fields_["Content-Type"].startswith("text/plain")
    assert fields_["Connection"] == "close"
    assert int(fields_["Content-Length"]) == len(body)
    assert fields_["Server"] == "drover" and "Date" in fields_
    assert body.startswith(str(status).encode()) and len(body) < 200


def test_chunk_frames_data_in_hex() -> None:
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"


@pytest.mark.parametrize(("status", "has_body"), [
    ("100 Continue", False), ("101 Switching Protocols", False), ("200 OK", True),
    ("204 No Content", False), ("304 Not Modified", False), ("404 Not Found", True),
    ("205 Reset Content", True),
])
def test_status_has_body(status: str, has_body: bool) -> None:
    assert status_has_body(status) is has_body


# -- sans-I/O ------------------------------------------------------------------------------------


def test_protocol_package_does_no_io() -> None:
    """DESIGN principle 1: the protocol package imports no socket, select, threading or time."""
    forbidden = {"socket", "select", "selectors", "threading", "time", "asyncio", "uvloop"}
    package = Path(http_module.__file__).parent
    found = {}
    for source in package.glob("*.py"):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad = [name for name in names if name.split(".")[0] in forbidden]
            if bad:
                found[source.name] = bad
    assert not found


# -- split_at sanity (the corpus test relies on it) ----------------------------------------------


def test_split_at_keeps_every_byte() -> None:
    data = bytes(range(50))
    assert b"".join(split_at(data, [1, 7, 49])) == data
