"""HTTP/1.1 as the real drover process speaks it, seen through raw sockets on 127.0.0.1.

Connection management (keep-alive, close, pipelining, Expect, HEAD), response framing, every
rejection rule with its status, limits, app failures, close() on disconnect, timeouts, many
idle connections, memory under a slow reader, big bodies, file_wrapper, write() and threads.
Servers are module-scoped where the test does not depend on fresh state.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import struct
import threading
import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from probe import CLOSE_LOG_ENV, pattern
from rawhttp import (
    http,
    is_open,
    lifetimes,
    many_sockets,
    raise_nofile,
    read_responses,
    recv_exactly_until,
    rss_bytes,
    wait_closed,
    worker_pids,
)

from tests.conftest import DroverLauncher, RawResponse, Server, parse_response, read_response

W1 = ("--workers", "1")
HOST = "Host: 127.0.0.1"


# -- servers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def environ_server(drover_module: DroverLauncher) -> Server:
    return drover_module.app("probe:environ_app", *W1)


@pytest.fixture(scope="module")
def strict_server(drover_module: DroverLauncher) -> Server:
    """Small limits, so each one is reached with short requests."""
    return drover_module.app(
        "probe:environ_app", *W1, "--limit-request-line", "200", "--limit-request-fields", "20",
        "--limit-request-field-size", "500", "--limit-request-headers", "2000",
        "--limit-request-body", "10000")


@pytest.fixture(scope="module")
def echo_server(drover_module: DroverLauncher) -> Server:
    return drover_module.app("probe:echo_app", *W1, "--body-buffer-size", "64k")


@pytest.fixture(scope="module")
def stream_server(drover_module: DroverLauncher) -> Server:
    return drover_module.app("probe:stream_app", *W1)


@pytest.fixture(scope="module")
def big_server(drover_module: DroverLauncher) -> Server:
    return drover_module.app("probe:big_app", *W1)


@pytest.fixture(scope="module")
def bad_header_server(drover_module: DroverLauncher) -> Server:
    return drover_module.app("probe:bad_header_app", *W1)


@pytest.fixture(scope="module")
def write_server(drover_module: DroverLauncher) -> Server:
    return drover_module.app("probe:write_app", *W1)


@pytest.fixture(scope="module")
def sized_server(drover_module: DroverLauncher) -> Server:
    return drover_module.app("probe:sized_app", *W1)


@pytest.fixture(scope="module")
def context_server(drover_module: DroverLauncher) -> Server:
    return drover_module.app("probe:context_app", *W1)


@pytest.fixture(scope="module")
def timeout_server(drover_module: DroverLauncher) -> Server:
    return drover_module.app("probe:environ_app", *W1, "--header-timeout", "1",
                             "--keepalive-timeout", "1")


def get(target: str = "/", *extra: str, version: str = "HTTP/1.1") -> bytes:
    host = (HOST,) if version == "HTTP/1.1" else ()
    return http(f"GET {target} {version}", *host, *extra)


def environ_of(response: RawResponse) -> dict[str, Any]:
    assert response.status == 200, response
    return json.loads(response.body)["environ"]  # type: ignore[no-any-return]


def served(server: Server) -> bool:
    """A new connection still gets a normal answer."""
    return server.request("GET", "/still-serving").status == 200


# -- keep-alive and connection management ----------------------------------------------------------


def test_a_method_unknown_to_llhttp_reaches_the_app_with_its_body(environ_server: Server
                                                                   ) -> None:
    """RFC 9110 section 9.1: the app decides what an extension method means."""
    with environ_server.connect() as sock:
        sock.sendall(http("BREW /pot HTTP/1.1", HOST, "Content-Length: 3", body=b"tea")
                     + http("get /lower HTTP/1.1", HOST, "Transfer-Encoding: chunked",
                            body=b"2 ; kind = green\r\nok\r\n0\r\n\r\n"))
        first, second = read_responses(sock, 2)
    assert first.status == second.status == 200
    seen = json.loads(first.body)
    assert seen["environ"]["REQUEST_METHOD"] == "BREW" and seen["body"]["length"] == 3
    seen = json.loads(second.body)
    assert seen["environ"]["REQUEST_METHOD"] == "get" and seen["body"]["length"] == 2


def test_http11_connection_is_kept_alive_by_default(environ_server: Server) -> None:
    with environ_server.connect(5) as sock:
        for path in ("/one", "/two", "/three"):
            sock.sendall(get(path))
            response = read_response(sock, timeout=5)
            assert environ_of(response)["PATH_INFO"] == path
            assert response.header("Connection") is None
        assert is_open(sock)


def test_http10_connection_closes_by_default(environ_server: Server) -> None:
    with environ_server.connect(5) as sock:
        sock.sendall(get(version="HTTP/1.0"))
        closed, data, _ = wait_closed(sock, 5)
    response = parse_response(data, eof=True)
    assert response is not None and response.status == 200 and response.complete
    assert closed
    assert response.header("Connection") == "close"


def test_http10_keep_alive_is_opt_in_and_answered(environ_server: Server) -> None:
    with environ_server.connect(5) as sock:
        for path in ("/a", "/b"):
            sock.sendall(http(f"GET {path} HTTP/1.0", "Connection: keep-alive"))
            response = read_response(sock, timeout=5)
            assert environ_of(response)["PATH_INFO"] == path
            assert response.header("Connection") == "keep-alive"
        assert is_open(sock)


def test_connection_close_is_honoured(environ_server: Server) -> None:
    with environ_server.connect(5) as sock:
        sock.sendall(get("/", "Connection: close") + get("/ignored"))
        closed, data, _ = wait_closed(sock, 5)
    assert closed
    response = parse_response(data, eof=True)
    assert response is not None and response.status == 200
    assert response.header("Connection") == "close"
    assert response.rest == b""  # the request after the close was not answered


def test_pipelined_requests_are_answered_in_order(environ_server: Server) -> None:
    with environ_server.connect(5) as sock:
        sock.sendall(get("/p1") + http("POST /p2 HTTP/1.1", HOST, "Content-Length: 3",
                                       body=b"xyz") + get("/p3"))
        responses = read_responses(sock, 3)
    paths = [environ_of(r)["PATH_INFO"] for r in responses]
    assert paths == ["/p1", "/p2", "/p3"]
    assert json.loads(responses[1].body)["body"]["length"] == 3


def test_pipelined_valid_then_invalid_answers_both_in_order(environ_server: Server) -> None:
    with environ_server.connect(5) as sock:
        sock.sendall(get("/fine") + http("GET / HTTP/1.1", "Host : bad"))
        closed, data, _ = wait_closed(sock, 5)
    first = parse_response(data, eof=True)
    assert first is not None and environ_of(first)["PATH_INFO"] == "/fine"
    second = parse_response(first.rest, eof=True)
    assert second is not None and second.status == 400
    assert closed


def test_chunked_request_body_is_echoed(echo_server: Server) -> None:
    body = b"".join(bytes([65 + i]) * (i * 37 + 1) for i in range(20))
    wire = b""
    for start in range(0, len(body), 333):
        piece = body[start:start + 333]
        wire += b"%x\r\n%b\r\n" % (len(piece), piece)
    wire += b"0\r\n\r\n"
    with echo_server.connect(5) as sock:
        sock.sendall(http("POST /echo HTTP/1.1", HOST, "Transfer-Encoding: chunked",
                          "Content-Type: application/x-test") + wire)
        response = read_response(sock, timeout=5)
    assert response.status == 200 and response.body == body
    assert response.header("Content-Type") == "application/x-test"
    assert response.header("X-Body-Sha256") == hashlib.sha256(body).hexdigest()


def test_expect_100_continue_is_answered_before_the_body_is_sent(echo_server: Server) -> None:
    with echo_server.connect(5) as sock:
        sock.sendall(http("POST /echo HTTP/1.1", HOST, "Expect: 100-continue",
                          "Content-Length: 5"))
        interim = recv_exactly_until(sock, b"\r\n\r\n", timeout=3)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        response = read_response(sock, timeout=5)
    assert response.status == 200 and response.body == b"hello"


def test_upgrade_request_is_served_once_then_the_connection_closes(
        environ_server: Server) -> None:
    with environ_server.connect(5) as sock:
        sock.sendall(get("/ws", "Connection: Upgrade", "Upgrade: websocket")
                     + b"\x81\x05hello" + get("/after"))
        closed, raw, _ = wait_closed(sock, 3)
    response = parse_response(raw, eof=True)
    assert response is not None and environ_of(response)["PATH_INFO"] == "/ws"
    assert response.header("Connection") == "close" and response.header("Upgrade") is None
    assert closed and response.rest == b""


def test_ignored_upgrade_keeps_the_request_body(echo_server: Server) -> None:
    with echo_server.connect(5) as sock:
        sock.sendall(http("POST /echo HTTP/1.1", HOST, "Connection: Upgrade", "Upgrade: foo",
                          "Content-Length: 5", body=b"hello"))
        response = read_response(sock, timeout=5)
    assert response.status == 200 and response.body == b"hello"


def test_head_has_the_get_headers_and_no_body(big_server: Server) -> None:
    def without_date(response: RawResponse) -> list[tuple[str, str]]:
        return [(k, v) for k, v in response.headers if k.lower() != "date"]

    with big_server.connect(5) as sock:
        sock.sendall(get("/?bytes=1000"))
        got = read_response(sock, timeout=5)
        sock.sendall(http("HEAD /?bytes=1000 HTTP/1.1", HOST))
        head = read_response(sock, head=True, timeout=5)
        assert head.rest == b""
        # The connection is still usable, and no stray body bytes come before the next answer.
        sock.sendall(get("/?bytes=10"))
        after = read_response(sock, timeout=5)
    assert (got.status, head.status) == (200, 200)
    assert without_date(head) == without_date(got)
    assert head.header("Content-Length") == "1000"
    assert after.status == 200 and after.body == pattern(10)


def test_head_of_a_streamed_response_has_no_body(stream_server: Server) -> None:
    with stream_server.connect(5) as sock:
        sock.sendall(http("HEAD /?n=3&size=5 HTTP/1.1", HOST))
        head = read_response(sock, head=True, timeout=5)
        assert head.rest == b""
        sock.sendall(get("/?n=2&size=4"))
        after = read_response(sock, timeout=5)
    assert head.status == 200
    assert after.status == 200 and after.body == b"aaaabbbb"


# -- response framing ------------------------------------------------------------------------------


def test_app_content_length_is_used(big_server: Server) -> None:
    response = big_server.request("GET", "/?bytes=200000")
    assert response.header("Content-Length") == "200000"
    assert response.header("Transfer-Encoding") is None
    assert response.complete and response.body == pattern(200000)


def test_stream_without_length_is_chunked_on_http11(stream_server: Server) -> None:
    with stream_server.connect(5) as sock:
        sock.sendall(get("/?n=4&size=3"))
        response = read_response(sock, timeout=5)
        assert is_open(sock)
    assert response.chunked and response.complete
    assert response.header("Content-Length") is None
    assert response.body == b"aaabbbcccddd"


def test_stream_without_length_is_close_delimited_on_http10(stream_server: Server) -> None:
    for extra in ((), ("Connection: keep-alive",)):
        with stream_server.connect(5) as sock:
            sock.sendall(http("GET /?n=3&size=4 HTTP/1.0", *extra))
            closed, data, _ = wait_closed(sock, 5)
        assert closed, extra
        response = parse_response(data, eof=True)
        assert response is not None
        assert response.header("Transfer-Encoding") is None
        assert response.header("Content-Length") is None
        assert response.header("Connection") == "close"
        assert response.body == b"aaaabbbbcccc"


def test_date_and_server_headers_are_present(environ_server: Server) -> None:
    response = environ_server.request("GET", "/")
    assert response.header("Server")
    date = response.header("Date")
    assert date is not None and date.endswith(" GMT")
    assert abs(parsedate_to_datetime(date).timestamp() - time.time()) < 5


# -- rejections ------------------------------------------------------------------------------------

POST = ("POST / HTTP/1.1", HOST)
REJECTIONS = [
    ("content_length_and_transfer_encoding",
     http(*POST, "Content-Length: 5", "Transfer-Encoding: chunked", body=b"0\r\n\r\n"), 400),
    ("two_different_content_lengths", http(*POST, "Content-Length: 1", "Content-Length: 2",
                                           body=b"ab"), 400),
    ("malformed_content_length", http(*POST, "Content-Length: 1x", body=b"a"), 400),
    ("bad_chunk_size", http(*POST, "Transfer-Encoding: chunked", body=b"q\r\n"), 400),
    ("chunk_size_overflow", http(*POST, "Transfer-Encoding: chunked",
                                 body=b"fffffffffffffffffff\r\n"), 400),
    ("chunk_without_crlf", http(*POST, "Transfer-Encoding: chunked",
                                body=b"2\r\nabcd\r\n0\r\n\r\n"), 400),
    ("transfer_encoding_not_ending_in_chunked",
     http(*POST, "Transfer-Encoding: chunked, gzip", body=b"x"), 400),
    ("transfer_encoding_without_chunked", http(*POST, "Transfer-Encoding: gzip", body=b"x"), 400),
    ("transfer_coding_other_than_chunked",
     http(*POST, "Transfer-Encoding: gzip, chunked", body=b"0\r\n\r\n"), 501),
    ("chunked_on_http10", http("POST / HTTP/1.0", "Transfer-Encoding: chunked",
                               body=b"0\r\n\r\n"), 400),
    ("obs_fold", http("GET / HTTP/1.1", HOST, "X-A: b", " c"), 400),
    ("whitespace_before_colon", http("GET / HTTP/1.1", HOST, "X-A : b"), 400),
    ("nul_in_header_value", http("GET / HTTP/1.1", HOST, "X-A: b\x00c"), 400),
    ("control_char_in_header_value", http("GET / HTTP/1.1", HOST, "X-A: b\x01c"), 400),
    ("missing_host", http("GET / HTTP/1.1"), 400),
    ("two_hosts", http("GET / HTTP/1.1", HOST, "Host: other"), 400),
    ("lf_only_line_endings", b"GET / HTTP/1.1\nHost: a\n\n", 400),
    ("http20", http("GET / HTTP/2.0", HOST), 505),
    ("http09", http("GET / HTTP/0.9", HOST), 505),
    ("http12", http("GET / HTTP/1.2", HOST), 505),
    ("method_not_a_token", http("BR(EW /pot HTTP/1.1", HOST), 400),
    ("asterisk_form_for_get", http("GET * HTTP/1.1", HOST), 400),
    ("chunk_extension_space_in_name",
     http(*POST, "Transfer-Encoding: chunked", body=b"1;a b\r\nx\r\n0\r\n\r\n"), 400),
    ("garbage", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + os.urandom(64), 400),
    ("expect_something_else", http(*POST, "Expect: something-else", "Content-Length: 1",
                                   body=b"x"), 417),
    ("connect", http("CONNECT example.com:443 HTTP/1.1", "Host: example.com:443"), 501),
]


def assert_rejected(server: Server, data: bytes, status: int) -> RawResponse:
    """``data`` on a new connection is answered ``status`` with a short text/plain body, and
    the server closes the connection; a new connection is then served normally."""
    with server.connect(5) as sock:
        sock.sendall(data)
        closed, raw, _ = wait_closed(sock, 3)  # under the 5 s keep-alive timeout
    assert closed, f"connection left open after {raw[:200]!r}"
    response = parse_response(raw, eof=True)
    assert response is not None and response.complete
    assert response.status == status, (response.status, response.body)
    assert (response.header("Content-Type") or "").startswith("text/plain")
    assert response.header("Connection") == "close"
    assert 0 < len(response.body) < 200
    assert response.rest == b"", "more than one response"
    assert served(server)
    return response


@pytest.mark.parametrize(("data", "status"), [(d, s) for _, d, s in REJECTIONS],
                         ids=[name for name, _, _ in REJECTIONS])
def test_bad_request_is_refused_with_its_status_and_closed(environ_server: Server, data: bytes,
                                                           status: int) -> None:
    assert_rejected(environ_server, data, status)


def test_smuggled_request_after_cl_te_conflict_is_never_served(environ_server: Server) -> None:
    smuggled = get("/smuggled")
    data = http(*POST, f"Content-Length: {4 + len(smuggled)}", "Transfer-Encoding: chunked",
                body=b"0\r\n\r\n" + smuggled)
    response = assert_rejected(environ_server, data, 400)
    assert b"smuggled" not in response.body


def test_request_line_over_the_limit_is_414(strict_server: Server) -> None:
    assert_rejected(strict_server, get("/" + "a" * 300), 414)


def test_too_many_header_fields_is_431(strict_server: Server) -> None:
    fields = [f"X-F{i}: v" for i in range(25)]
    assert_rejected(strict_server, http("GET / HTTP/1.1", HOST, *fields), 431)


def test_header_field_over_the_size_limit_is_431(strict_server: Server) -> None:
    assert_rejected(strict_server, get("/", "X-Big: " + "b" * 600), 431)


def test_header_block_over_the_limit_is_431(strict_server: Server) -> None:
    """Ten 480-byte fields: each under the field limit, over twice the 2000-byte block limit."""
    fields = [f"X-F{i}: " + "b" * 470 for i in range(10)]
    assert_rejected(strict_server, http("GET / HTTP/1.1", HOST, *fields), 431)


def test_content_length_over_the_limit_is_413_before_the_body_is_sent(
        strict_server: Server) -> None:
    with strict_server.connect(5) as sock:
        sock.sendall(http(*POST, "Content-Length: 50000"))  # the body is never sent
        closed, raw, _ = wait_closed(sock, 3)
    response = parse_response(raw, eof=True)
    assert response is not None and response.status == 413
    assert closed and response.header("Connection") == "close"


def test_chunked_body_over_the_limit_is_413(strict_server: Server) -> None:
    chunks = b"".join(b"800\r\n" + b"z" * 2048 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
    assert_rejected(strict_server, http(*POST, "Transfer-Encoding: chunked") + chunks, 413)


def test_body_at_the_limit_is_accepted(strict_server: Server) -> None:
    response = strict_server.request("POST", "/", body=b"k" * 10000)
    assert json.loads(response.body)["body"]["length"] == 10000


def test_pipelined_body_larger_than_the_header_limit_is_not_a_431(strict_server: Server) -> None:
    """A body bigger than the header limits, read together with the start of the next request,
    does not count toward that request's header block."""
    body = b"d" * 8000
    nxt = get("/next")
    with strict_server.connect(5) as sock:
        sock.sendall(http("POST /first HTTP/1.1", HOST, f"Content-Length: {len(body)}",
                          body=body) + nxt[:10])
        time.sleep(0.1)
        sock.sendall(nxt[10:])
        first, second = read_responses(sock, 2)
    assert environ_of(first)["PATH_INFO"] == "/first"
    assert second.status == 200, (second.status, second.body)
    assert environ_of(second)["PATH_INFO"] == "/next"


# -- environ from headers --------------------------------------------------------------------------


def test_header_with_underscore_is_not_visible_in_the_environ(environ_server: Server) -> None:
    with environ_server.connect(5) as sock:
        sock.sendall(get("/", "X_Forwarded_For: 6.6.6.6", "X_Custom: 1"))
        env = environ_of(read_response(sock, timeout=5))
        sock.sendall(get("/", "X_Forwarded_For: 6.6.6.6", "X-Forwarded-For: 10.1.1.1"))
        env2 = environ_of(read_response(sock, timeout=5))
    assert "HTTP_X_FORWARDED_FOR" not in env and "HTTP_X_CUSTOM" not in env
    assert env2["HTTP_X_FORWARDED_FOR"] == "10.1.1.1"


def test_trailer_fields_do_not_reach_the_environ(environ_server: Server) -> None:
    """RFC 9110 section 6.5.1: trailer fields are not header fields (nor a second Host)."""
    with environ_server.connect(5) as sock:
        sock.sendall(http(*POST, "Transfer-Encoding: chunked")
                     + b"2\r\nok\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nHost: evil\r\n\r\n")
        env = environ_of(read_response(sock, timeout=5))
    assert "HTTP_X_FORWARDED_FOR" not in env
    assert env["HTTP_HOST"] == "127.0.0.1"


def test_duplicate_headers_are_joined(environ_server: Server) -> None:
    with environ_server.connect(5) as sock:
        sock.sendall(get("/", "Accept: a/b", "X-Dup: 1", "Accept: c/d", "X-Dup: 2",
                         "Cookie: s=1", "Cookie: t=2"))
        env = environ_of(read_response(sock, timeout=5))
    assert env["HTTP_ACCEPT"] == "a/b, c/d"
    assert env["HTTP_X_DUP"] == "1, 2"
    assert env["HTTP_COOKIE"] == "s=1; t=2"


# -- app failures ----------------------------------------------------------------------------------


def test_app_exception_is_a_500_and_the_worker_keeps_serving(drover: DroverLauncher) -> None:
    server = drover.app("probe:error_app", *W1, ready_path=None)
    server.wait_for_log(r"worker 1 \(pid \d+, generation \d+\) ready")
    for _ in range(2):
        response = server.request("GET", "/boom")
        assert response.status == 500 and response.complete
        assert (response.header("Content-Type") or "").startswith("text/plain")
        assert b"deliberate failure" not in response.body  # no traceback to the client
    server.wait_for_log("error_app: deliberate failure")
    assert len(worker_pids(server)) == 1  # the worker was not replaced


@pytest.mark.parametrize("where", ["value", "name", "status"])
def test_crlf_in_a_response_header_is_a_500_never_on_the_wire(bad_header_server: Server,
                                                              where: str) -> None:
    server = bad_header_server
    since = len(server.log())
    with server.connect(5) as sock:
        sock.sendall(get(f"/?where={where}"))
        closed, raw, _ = wait_closed(sock, 5)
    assert closed
    assert b"X-Evil" not in raw and b"injected" not in raw
    response = parse_response(raw, eof=True)
    assert response is not None and response.status == 500
    server.wait_for_log(rf"error handling GET /\?where={where}", since=since, timeout=5)


CUT_CHUNKS = 300  # 1000-byte chunks 10 ms apart: 3 s of streaming if never stopped


@pytest.fixture(scope="module")
def disconnect_mid_stream(drover_module: DroverLauncher,
                          tmp_path_factory: pytest.TempPathFactory) -> str:
    """A client reads the head and the first chunk of a slow streamed response, then resets the
    connection; returns the close log of the app's iterable (empty if close() never came)."""
    close_log = tmp_path_factory.mktemp("close") / "close.log"
    server = drover_module.app("probe:close_tracking_app", *W1,
                               env={CLOSE_LOG_ENV: str(close_log)})
    with server.connect(5) as sock:
        sock.sendall(get(f"/?tag=cut&n={CUT_CHUNKS}&size=1000&delay_ms=10"))
        recv_exactly_until(sock, b"\r\n\r\n", timeout=5)
        sock.recv(500)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        text = close_log.read_text() if close_log.exists() else ""
        if "closed cut" in text:
            return text
        time.sleep(0.05)
    return close_log.read_text() if close_log.exists() else ""


def test_iterable_close_is_called_when_the_client_disconnects_mid_stream(
        disconnect_mid_stream: str) -> None:
    assert "called cut" in disconnect_mid_stream
    assert "closed cut" in disconnect_mid_stream, "close() not called within 6 s"


def test_iteration_stops_soon_after_the_client_disconnects(disconnect_mid_stream: str) -> None:
    """The app's body is not iterated to its end for a client that is gone (a write to the
    reset connection fails at once; an endless stream would otherwise never be closed)."""
    match = re.search(r"closed cut sent=(\d+)/", disconnect_mid_stream)
    assert match, disconnect_mid_stream
    assert int(match.group(1)) < CUT_CHUNKS // 3, disconnect_mid_stream


# -- timeouts --------------------------------------------------------------------------------------


# The timeout server's timeouts are 1 s. Each test opens STAGGERED connections SPACING apart,
# so they start at different moments of two or three of the server's once-a-second ticks: each
# must live at least ~the timeout (one counted from a stale clock drops some early) and not
# much more.
STAGGERED, SPACING = 8, 0.3
EARLIEST, LATEST = 0.9, 3.0


def staggered(server: Server, first_bytes: bytes, *, answer: bool = False
              ) -> list[float | None]:
    """Open STAGGERED connections SPACING apart, each sending ``first_bytes`` (and, if ``answer``,
    reading one response, its lifetime counted from then); return their lifetimes."""
    with many_sockets() as socks:
        started: list[tuple[socket.socket, float]] = []
        for i in range(STAGGERED):
            if i:
                time.sleep(SPACING)
            sock = server.connect(5)
            socks.append(sock)
            if first_bytes:
                sock.sendall(first_bytes)
            if answer:
                assert read_response(sock, timeout=5).status == 200
            started.append((sock, time.monotonic()))
        return lifetimes(started, LATEST + 1)


def assert_lifetimes(found: list[float | None]) -> None:
    shown = [None if t is None else round(t, 2) for t in found]
    assert all(t is not None and EARLIEST <= t <= LATEST for t in found), f"lifetimes {shown}"


def test_silent_new_connection_is_dropped_after_the_header_timeout(timeout_server: Server) -> None:
    assert_lifetimes(staggered(timeout_server, b""))


def test_half_sent_request_is_dropped_after_the_header_timeout(timeout_server: Server) -> None:
    assert_lifetimes(staggered(timeout_server, b"GET / HTTP/1.1\r\nHost: a\r\nX-Partial: "))


def test_half_sent_request_gets_no_normal_answer(timeout_server: Server) -> None:
    with timeout_server.connect(5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Partial: ")
        closed, data, _ = wait_closed(sock, LATEST + 1)
    assert closed
    assert data == b"" or data.startswith(b"HTTP/1.1 408 ")


def test_slowly_dribbled_head_is_dropped_after_the_header_timeout(timeout_server: Server) -> None:
    """Slowloris: a byte every 0.2 s keeps the connection busy, but not past the header timeout
    counted from the first byte."""
    start = time.monotonic()
    with timeout_server.connect(5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        closed = False
        while time.monotonic() - start < LATEST + 1 and not closed:
            try:
                sock.sendall(b"X")
            except OSError:
                closed = True
                break
            closed, _, _ = wait_closed(sock, 0.2)
    took = time.monotonic() - start
    assert closed and took <= LATEST, took


def test_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(
        timeout_server: Server) -> None:
    assert_lifetimes(staggered(timeout_server, get("/"), answer=True))


# -- load and memory -------------------------------------------------------------------------------


def test_a_thousand_half_open_connections_do_not_block_a_new_client(
        drover: DroverLauncher) -> None:
    raise_nofile(4096)
    server = drover.app("probe:environ_app", *W1)
    assert server.port is not None
    with many_sockets() as socks:
        for i in range(1000):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            socks.append(sock)
            sock.sendall(b"GET /half-open HTTP/1.1\r\n" if i % 2 else b"G")
        start = time.monotonic()
        response = server.request("GET", "/prompt", timeout=5)
        took = time.monotonic() - start
        assert response.status == 200 and took < 2.0, took
        # The half-open connections are still held (not dropped to make room).
        assert is_open(socks[-1], 0.1)


def test_slow_reader_of_a_1gib_response_does_not_grow_worker_memory(big_server: Server) -> None:
    pid = worker_pids(big_server)[-1]
    big_server.request("GET", "/?bytes=4000000")  # warm up the code paths first
    before = rss_bytes(pid)
    peak = before
    wanted = 64 * 1024 * 1024
    with big_server.connect(10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        sock.sendall(get(f"/?bytes={1 << 30}"))
        received = 0
        head = recv_exactly_until(sock, b"\r\n\r\n", timeout=5)
        assert head.startswith(b"HTTP/1.1 200") and str(1 << 30).encode() in head
        while received < wanted:
            data = sock.recv(256 * 1024)
            assert data, "connection closed early"
            received += len(data)
            if received % (4 * 1024 * 1024) < len(data):
                time.sleep(0.02)
                peak = max(peak, rss_bytes(pid))
        peak = max(peak, rss_bytes(pid))
    assert peak - before < 16 * 1024 * 1024, f"worker RSS grew by {(peak - before) >> 20} MiB"
    assert served(big_server)


def test_client_pipelining_without_reading_gets_no_more_answers_than_fit(
        sized_server: Server) -> None:
    """Thousands of pipelined requests for 32 KiB answers, never read: serving stops when the
    connection's buffer is full and the rest wait unparsed, so the worker does not hold
    gigabytes of answers (nor an environ per waiting request) for one client."""
    pid = worker_pids(sized_server)[-1]
    sized_server.request("GET", "/?bytes=100")  # warm up the code paths first
    before = rss_bytes(pid)
    request = get("/?bytes=32768")
    batch = request * 2000
    sent = 0
    with sized_server.connect(10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(1.0)
        with contextlib.suppress(TimeoutError):
            for _ in range(50):  # 100,000 requests at most: 3 GiB of answers
                sock.sendall(batch)
                sent += 2000
        time.sleep(0.5)
        grown = rss_bytes(pid) - before
        assert served(sized_server)  # other clients are served meanwhile
        # The client reads now: every answer comes, in order, on the same connection.
        sock.settimeout(10)
        for i, response in enumerate(read_responses(sock, 200, timeout=10)):
            assert response.status == 200 and len(response.body) == 32768, i
    assert grown < 32 * 1024 * 1024, f"worker RSS grew by {grown >> 20} MiB for one client"
    assert sent < 100_000, "the server never stopped reading"


def test_context_variables_follow_each_request_through_its_body_and_close(
        context_server: Server) -> None:
    """Each request runs in a fresh context, entered for the app call, every step of its body
    (the first step and the rest run from different loop callbacks, and a large body resumes
    after the client drained it) and close()."""
    with context_server.connect(10) as sock:
        sock.sendall(get("/?tag=one&n=3"))
        first = read_response(sock, timeout=5)
        sock.sendall(get("/?tag=two&n=2") + get(f"/?tag=three&n=40&size={64 * 1024}")
                     + get("/?tag=four&n=1"))
        time.sleep(0.3)  # the big one stalls on the full socket buffer, then resumes
        second, third, fourth = read_responses(sock, 3, timeout=10)
    head, *rest = first.body.decode().splitlines()
    assert head.startswith("start=unset close-before=")  # whatever ran before this test
    assert rest == ["one:" + "." * 12] * 3
    assert second.body.decode().splitlines() == [
        "start=unset close-before=one", "two:" + "." * 12, "two:" + "." * 12]
    lines = third.body.split(b"\n")
    assert lines[0] == b"start=unset close-before=two"
    assert len(lines) == 42 and lines[-1] == b""
    assert all(line == b"three:".ljust(64 * 1024, b".") for line in lines[1:-1])
    assert fourth.body.decode().splitlines() == [
        "start=unset close-before=three", "four:" + "." * 11]


def test_large_request_body_is_received_whole(echo_server: Server) -> None:
    body = os.urandom(1 << 20) * 20  # 20 MiB, spilled past --body-buffer-size
    with echo_server.connect(30) as sock:
        sock.sendall(http("POST /big HTTP/1.1", HOST, f"Content-Length: {len(body)}",
                          "Connection: close") + body)
        response = read_response(sock, timeout=30)
    assert response.status == 200 and response.complete
    assert response.header("X-Body-Sha256") == hashlib.sha256(body).hexdigest()
    assert len(response.body) == len(body) and response.body == body


# -- file_wrapper, write(), threads ----------------------------------------------------------------


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("files") / "data.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 12345))
    return path


@pytest.fixture(scope="module")
def file_server(drover_module: DroverLauncher) -> Server:
    return drover_module.app("probe:file_app", *W1, ready_path=None)


@pytest.mark.parametrize("app_length", ["1", "0"], ids=["app_sets_length", "server_sets_length"])
def test_file_wrapper_sends_the_file_exactly(file_server: Server, data_file: Path,
                                             app_length: str) -> None:
    content = data_file.read_bytes()
    with file_server.connect(10) as sock:
        for _ in range(2):  # twice on one connection: the sendfile path ends cleanly
            sock.sendall(get(f"/?path={data_file}&cl={app_length}"))
            response = read_response(sock, timeout=10)
            assert response.status == 200 and response.complete
            assert response.header("Content-Length") == str(len(content))
            assert response.header("Transfer-Encoding") is None
            assert response.body == content


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_write_callable_output_reaches_the_client(write_server: Server, version: str) -> None:
    server = write_server
    with server.connect(5) as sock:
        sock.sendall(get("/?n=3", version=version))
        if version == "HTTP/1.1":
            response = read_response(sock, timeout=5)
            assert response.chunked and response.complete
        else:
            closed, raw, _ = wait_closed(sock, 5)
            parsed = parse_response(raw, eof=True)
            assert closed and parsed is not None
            response = parsed
    assert response.status == 200
    assert response.body == b"write-0\nwrite-1\nwrite-2\ntail\n"


@pytest.fixture(scope="module")
def threaded_sleep_server(drover_module: DroverLauncher) -> Server:
    return drover_module.app("probe:sleep_app", *W1, "--threads", "4")


def four_sleeps_at_once(server: Server) -> tuple[float, list[float]]:
    """Four 200 ms sleep_app requests sent at once on four connections: the total time, and
    how long after the send each one started in the app."""
    barrier = threading.Barrier(4)
    results: list[RawResponse] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    sent_at: list[float] = []

    def one(tag: int) -> None:
        try:
            barrier.wait(5)
            with lock:
                sent_at.append(time.time())
            response = server.request("GET", f"/?ms=200&tag={tag}", timeout=5)
            with lock:
                results.append(response)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    took = time.monotonic() - start
    assert not errors and len(results) == 4, errors
    assert all(r.status == 200 for r in results)
    first_send = min(sent_at)
    return took, sorted(json.loads(r.body)["start"] - first_send for r in results)


def test_threads_serve_blocking_requests_concurrently(threaded_sleep_server: Server) -> None:
    """--workers 1 --threads 4: four blocking requests at once run side by side. Three rounds,
    since which loop thread accepts which connection varies."""
    for round_ in range(3):
        took, waits = four_sleeps_at_once(threaded_sleep_server)
        shown = [round(w, 2) for w in waits]
        assert took < 0.6, f"round {round_}: took {took:.2f} s; app start delays {shown}"
        # No request waited in the worker behind another one while a thread was free.
        assert waits[-1] < 0.15, f"round {round_}: app start delays {shown} (took {took:.2f} s)"
