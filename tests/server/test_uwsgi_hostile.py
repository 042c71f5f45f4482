"""Hostile and odd uwsgi packets straight to Drover's uwsgi sockets (unix and TCP).

After each bad packet: the connection is closed without an HTTP answer (except the statuses a
well-formed packet can earn: 400, 413), one log line says why, and a fresh valid request on a
new connection is served by the same worker (one worker, so the same pid; no "died" line).
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path
from typing import Any

import pytest
import uwsgi_client as uc
from uwsgi_client import ROUTER_ARGS

LOG_LINE = re.compile(r"^\S+ \S+ \[\d+\] \[[A-Z]+\] ", re.MULTILINE)


@pytest.fixture(scope="module")
def server(drover_module: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("sock") / "hostile.sock"
    return drover_module("--uwsgi", str(path), "--uwsgi", "127.0.0.1:0", "--workers", "1",
                         "--buffer-size", "4096", "--limit-request-body", "1M", *ROUTER_ARGS)


@pytest.fixture(scope="module")
def worker_pid(server: Any) -> int:
    answer = uc.get(server.addresses[0])
    assert answer.status == 200, answer.data[:500]
    return int(answer.json()["pid"])


@pytest.fixture(params=["unix", "tcp"])
def address(request: pytest.FixtureRequest, server: Any) -> str:
    prefix = "unix:" if request.param == "unix" else "uwsgi://"
    addresses: list[str] = server.addresses
    return next(a for a in addresses if a.startswith(prefix))


def assert_worker_serves_on(server: Any, address: str, pid: int) -> None:
    """A fresh valid request on a new connection is served by the same worker."""
    answer = uc.get(address, "/still-alive", app="environ")
    assert answer.status == 200, f"{answer!r}\n{server.log()}"
    assert answer.json()["pid"] == pid, f"the worker was replaced:\n{server.log()}"
    assert answer.json()["environ"]["PATH_INFO"] == "/still-alive"
    assert "died" not in server.log()


def new_log_lines(server: Any, since: int) -> list[str]:
    text = server.log()[since:]
    return [line for line in text.splitlines() if LOG_LINE.match(line)]


# -- malformed packets: closed without an answer, one log line ----------------------------------

GARBAGE = random.Random(20261125).randbytes(600)
ZERO_HEADED_GARBAGE = uc.header(300) + random.Random(7).randbytes(300)

MALFORMED: list[tuple[str, bytes, bool, str]] = [
    # name, bytes, half-close after sending, what the log line must mention
    ("truncated_header_then_close", b"\x00\x10", True, r"truncated"),
    ("vars_length_past_the_end_then_close", uc.header(200) + uc.pack_var("A", "1") * 5, True,
     r"truncated"),
    ("key_length_past_the_end", uc.header(8) + uc.u16(300) + b"KEY" + uc.u16(1) + b"v", False,
     r"past the end"),
    ("value_length_past_the_end", uc.header(9) + uc.u16(3) + b"KEY" + uc.u16(200) + b"vv",
     False, r"past the end"),
    ("vars_block_over_buffer_size", uc.header(8000) + uc.pack_var("K", "v" * 7995), False,
     r"buffer-size|exceeds|too (large|big)"),
    ("unsupported_modifier1", uc.packet(uc.request_vars(), modifier1=5), False, r"modifier1"),
    ("http_request_on_the_uwsgi_socket", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", False,
     r"modifier1"),
    ("random_garbage", GARBAGE, True, r"uwsgi"),
    ("zero_header_then_garbage_vars", ZERO_HEADED_GARBAGE, True, r"uwsgi"),
    ("body_shorter_than_content_length_then_close",
     uc.packet(uc.request_vars("POST", "/", body=b"x" * 100)) + b"x" * 10, True,
     r"truncated"),
]


@pytest.mark.parametrize(("data", "half_close", "reason"), [row[1:] for row in MALFORMED],
                         ids=[row[0] for row in MALFORMED])
def test_malformed_packet_is_closed_silently_and_the_worker_serves_on(
        server: Any, address: str, worker_pid: int, data: bytes, half_close: bool,
        reason: str) -> None:
    since = len(server.log())
    result = uc.exchange(address, data, half_close=half_close, timeout=5)
    assert result.closed, f"the server kept the connection open: {result!r}"
    assert not result.data, f"answered a malformed packet: {result.data[:300]!r}"
    server.wait_for_log(r"\[\d+\] \[\w+\] .*(" + reason + ")", since=since, timeout=5)
    assert_worker_serves_on(server, address, worker_pid)
    lines = new_log_lines(server, since)
    assert len(lines) == 1, lines
    assert "Traceback" not in server.log()[since:]


# -- well-formed packets with bad values: an HTTP error answer ----------------------------------

ANSWERED: list[tuple[str, list[tuple[str, str]], int]] = [
    ("content_length_over_the_body_limit",
     [("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", str(2 * 1024 * 1024))], 413),
    ("content_length_not_a_number", [("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "ten")],
     400),
    ("content_length_negative", [("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "-5")], 400),
    # str.isdigit() accepts the latin-1 superscripts; int() does not.
    ("content_length_superscript_digit",
     [("REQUEST_METHOD", "POST"), ("CONTENT_LENGTH", "\xb2")], 400),
]


@pytest.mark.parametrize(("items", "status"), [row[1:] for row in ANSWERED],
                         ids=[row[0] for row in ANSWERED])
def test_bad_value_gets_an_error_status_and_the_worker_serves_on(
        server: Any, address: str, worker_pid: int, items: list[tuple[str, str]],
        status: int) -> None:
    since = len(server.log())
    result = uc.exchange(address, uc.packet(items), timeout=5)
    assert result.closed
    assert result.answered, f"no HTTP answer; log:\n{server.log()[since:]}"
    assert result.status == status
    assert_worker_serves_on(server, address, worker_pid)
    assert len(new_log_lines(server, since)) == 1, server.log()[since:]
    assert "Traceback" not in server.log()[since:]


def test_unparseable_request_uri_is_refused_without_a_traceback(
        server: Any, address: str, worker_pid: int) -> None:
    """REQUEST_URI that is no URL and no PATH_INFO to go by: 400, or a silent close."""
    since = len(server.log())
    result = uc.exchange(address, uc.packet([("REQUEST_URI", "no-slash")]), timeout=5)
    assert result.closed
    assert not result.answered or result.status == 400, result.data[:300]
    assert_worker_serves_on(server, address, worker_pid)
    assert "Traceback" not in server.log()[since:], server.log()[since:]


# -- security: magic vars -----------------------------------------------------------------------


def test_magic_uwsgi_vars_load_no_code(server: Any, address: str, worker_pid: int,
                                       tmp_path: Path) -> None:
    marker = tmp_path / "imported.marker"
    (tmp_path / "evil.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('imported')\n"
        "def application(environ, start_response):\n"
        f"    pathlib.Path({str(marker)!r}).write_text('called')\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'evil']\n")
    magic = [("UWSGI_FILE", str(tmp_path / "evil.py")), ("UWSGI_MODULE", "evil"),
             ("UWSGI_CALLABLE", "application"), ("UWSGI_SCRIPT", "evil:application"),
             ("UWSGI_CHDIR", str(tmp_path)), ("UWSGI_PYHOME", str(tmp_path)),
             ("UWSGI_APPID", "evil"), ("UWSGI_SETENV", "PYTHONPATH=" + str(tmp_path))]
    for _ in range(3):  # nothing may differ on a later request either
        answer = uc.get(address, "/magic", app="environ", extra=magic)
        assert answer.status == 200
        report = answer.json()
        assert report["pid"] == worker_pid
        assert report["environ"]["PATH_INFO"] == "/magic"
        assert not [key for key in report["environ"] if key.startswith("UWSGI_")]
    time.sleep(0.2)
    assert not marker.exists(), marker.read_text()


# -- one request per connection -----------------------------------------------------------------


def test_second_packet_on_a_connection_gets_no_second_answer(server: Any, address: str) -> None:
    first = uc.packet(uc.request_vars("GET", "/first"))
    second = uc.packet(uc.request_vars("GET", "/second"))
    result = uc.exchange(address, first + second, timeout=5)
    assert result.closed
    assert result.data.count(b"HTTP/1.1 ") == 1
    assert result.json()["environ"]["PATH_INFO"] == "/first"


def test_half_close_after_a_whole_packet_still_gets_the_answer(server: Any,
                                                               address: str) -> None:
    result = uc.exchange(address, uc.packet(uc.request_vars("GET", "/half")), half_close=True)
    assert result.closed and result.status == 200
    assert result.json()["environ"]["PATH_INFO"] == "/half"


def test_body_is_read_by_content_length(server: Any, address: str) -> None:
    body = bytes(range(256)) * 40
    answer = uc.get(address, "/echo", method="POST", body=body, app="echo")
    assert answer.status == 200
    assert answer.body == body


def test_packet_with_no_vars_gets_pep3333_defaults(server: Any, address: str) -> None:
    """The default probe app is behind wsgiref.validate, which checks the required keys."""
    since = len(server.log())
    result = uc.exchange(address, uc.packet([]), timeout=5)
    assert result.status == 200, result.data[:500]
    environ = result.json()["environ"]
    assert (environ["REQUEST_METHOD"], environ["PATH_INFO"], environ["QUERY_STRING"],
            environ["SCRIPT_NAME"]) == ("GET", "/", "", "")
    assert environ["SERVER_PROTOCOL"].startswith("HTTP/")
    assert "SERVER_NAME" in environ and "SERVER_PORT" in environ
    assert environ["wsgi.url_scheme"] == "http"
    assert "WSGIWarning" not in server.log()[since:]


# -- --uwsgi-allow-from -------------------------------------------------------------------------


def test_default_allow_from_accepts_loopback_over_tcp(server: Any) -> None:
    tcp = next(a for a in server.addresses if a.startswith("uwsgi://"))
    answer = uc.get(tcp, "/loopback")
    assert answer.status == 200
    assert answer.json()["environ"]["REMOTE_ADDR"] == "127.0.0.1"


def test_peer_outside_uwsgi_allow_from_is_refused(
        drover: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("sock") / "allow.sock"
    server = drover("--uwsgi", str(path), "--uwsgi", "127.0.0.1:0", "--workers", "1",
                    "--uwsgi-allow-from", "10.0.0.0/8", *ROUTER_ARGS)
    tcp = next(a for a in server.addresses if a.startswith("uwsgi://"))
    since = len(server.log())
    result = uc.exchange(tcp, uc.packet(uc.request_vars("GET", "/refused")), timeout=5)
    assert result.closed and not result.data, result
    server.wait_for_log(r"refused .*127\.0\.0\.1", since=since, timeout=5)
    # Unix sockets are governed by their file mode, not by the list.
    answer = uc.get(f"unix:{path}", "/over-unix")
    assert answer.status == 200
