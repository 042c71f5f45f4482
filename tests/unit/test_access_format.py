"""Access-log formats (drover.access): every variable, every preset, and the escaping that keeps
a client from forging a line. Sans-I/O: the compiled formatter is fed an environ and a response."""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import pytest

from drover.access import JSON_FIELDS, PRESETS, VARIABLES, compile_format, escape_text

START = 1_700_000_000.25  # when the request began (epoch seconds)
TOOK = 0.0123456  # seconds
END = START + TOOK


class FakeResponse:
    """The fields of drover.wsgi.Response the formatter reads."""

    def __init__(self, status: str | None = "404 Not Found", sent: int = 1234,
                 headers: list[str] | None = None, content_length: int | None = 1234) -> None:
        self.status = status
        self.content_length = content_length
        self.sent = sent
        self.headers = headers if headers is not None else ["Content-Type: text/html\r\n",
                                                            "X-A: b\r\n"]


class FakeCounters:
    requests = 7


class FakeWorker:
    served = 41


class FakeLoopThread:
    index = 2
    counters = FakeCounters()
    worker = FakeWorker()


ENVIRON = {
    "REMOTE_ADDR": "192.0.2.7", "REMOTE_USER": "alice", "HTTP_HOST": "example.org",
    "REQUEST_METHOD": "POST", "REQUEST_URI": "/report?x=1", "SERVER_PROTOCOL": "HTTP/1.1",
    "HTTP_USER_AGENT": "curl/8.0", "HTTP_REFERER": "https://example.org/", "CONTENT_LENGTH": "12",
    "PATH_INFO": "/report", "HTTP_X_REQUEST_ID": "abc-123", "wsgi.version": (1, 0),
}


def line(spec: str, environ: dict[str, Any] | None = None, response: Any = None,
         worker_id: int = 3) -> str:
    formatter = compile_format(spec, worker_id)
    return formatter(ENVIRON if environ is None else environ, response or FakeResponse(), TOOK,
                     END, FakeLoopThread())


def local_ltime(ts: float) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(ts))


# Each variable with the text it must give for ENVIRON, FakeResponse and the times above.
EXPECTED = {
    "addr": "192.0.2.7", "user": "alice", "host": "example.org", "method": "POST",
    "uri": "/report?x=1", "proto": "HTTP/1.1", "uagent": "curl/8.0",
    "referer": "https://example.org/", "cl": "12", "status": "404", "size": "1234",
    "rsize": "1234",
    "hsize": str(len("HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nX-A: b\r\n"
                     "Content-Length: 1234\r\n\r\n")),
    "headers": "3", "micros": "12345", "msecs": "12", "secs": "0.012346",
    "time": str(int(START)), "tmsecs": str(int(START * 1000)),
    "tmicros": str(int(START * 1_000_000)), "ctime": time.ctime(START),
    "ltime": local_ltime(START), "epoch": str(int(END)), "pid": str(os.getpid()), "wid": "3",
    "core": "2", "vars": str(len(ENVIRON)),
    "pktsize": str(sum(4 + len(k) + len(v) for k, v in ENVIRON.items() if isinstance(v, str))),
    "worker_requests": "42",
}


@pytest.mark.parametrize("name", sorted(set(VARIABLES) - {"iso"}))
def test_each_variable(name: str) -> None:
    assert line(f"[%({name})]") == f"[{EXPECTED[name]}]\n"


def test_every_variable_has_an_expectation() -> None:
    assert set(VARIABLES) - {"iso"} == set(EXPECTED)


def test_environ_variables_by_name() -> None:
    assert line("%(var.HTTP_X_REQUEST_ID) %(var.MISSING)") == "abc-123 -\n"


def test_missing_values_are_dashes() -> None:
    assert line("%(user) %(referer) %(uagent)", environ={}) == "- - -\n"


def test_a_response_without_status_logs_500() -> None:
    assert line("%(status)", response=FakeResponse(status=None)) == "500\n"


PRESET_LINES = {
    "common": (f'192.0.2.7 - alice [{local_ltime(START)}] "POST /report?x=1 HTTP/1.1" 404 1234'
               "\n"),
    "combined": (f'192.0.2.7 - alice [{local_ltime(START)}] "POST /report?x=1 HTTP/1.1" 404 '
                 '1234 "https://example.org/" "curl/8.0"\n'),
    "uwsgi": (f"[pid: {os.getpid()}|app: 0|req: 42/42] 192.0.2.7 (alice) {{{len(ENVIRON)} vars "
              f"in {EXPECTED['pktsize']} bytes}} [{time.ctime(START)}] POST /report?x=1 => "
              f"generated 1234 bytes in 12 msecs (HTTP/1.1 404) 3 headers in "
              f"{EXPECTED['hsize']} bytes (1 switches on core 2)\n"),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_each_text_preset(preset: str) -> None:
    assert line(preset) == PRESET_LINES[preset]


def test_json_preset_is_one_object_per_line_with_numbers_as_numbers() -> None:
    text = line("json")
    assert text.endswith("\n") and text.count("\n") == 1
    record = json.loads(text)
    assert list(record) == [key for key, _ in JSON_FIELDS]
    assert record["status"] == 404 and record["size"] == 1234 and record["msecs"] == 12
    assert record["micros"] == 12345 and record["pid"] == os.getpid() and record["wid"] == 3
    assert record["addr"] == "192.0.2.7" and record["uri"] == "/report?x=1"
    assert record["user"] == "alice" and record["uagent"] == "curl/8.0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.250[+-]\d\d:\d\d", record["time"])


# Values a client controls (over uwsgi from a proxy any byte can arrive; WSGI strings carry
# bytes as latin-1 code points).
HOSTILE = [
    'x" 200 0 "-" "forged',
    "a\r\n127.0.0.1 - - [forged] \"GET / HTTP/1.1\" 200 0",
    "back\\slash\\",
    "caf\xc3\xa9 \xff\x00\x1b[31m",
    "tab\there\x7f",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_json_escapes_hostile_values_and_round_trips(value: str) -> None:
    environ = dict(ENVIRON, HTTP_USER_AGENT=value, REQUEST_URI=value, HTTP_REFERER=value,
                   REMOTE_USER=value)
    text = line("json", environ=environ)
    assert text.count("\n") == 1 and "\r" not in text
    assert text.isascii()
    record = json.loads(text)
    assert record["uagent"] == value and record["uri"] == value
    assert record["referer"] == value and record["user"] == value


@pytest.mark.parametrize("preset", ["common", "combined", "uwsgi", "%(uri) %(var.HTTP_X)"])
@pytest.mark.parametrize("value", HOSTILE)
def test_text_formats_escape_hostile_values(preset: str, value: str) -> None:
    environ = dict(ENVIRON, HTTP_USER_AGENT=value, REQUEST_URI=value, HTTP_REFERER=value,
                   REMOTE_USER=value, HTTP_X=value)
    text = line(preset, environ=environ)
    assert text.count("\n") == 1 and text.endswith("\n")
    assert "\r" not in text and text.isascii() and text[:-1].isprintable()
    assert escape_text(value) in text
    # Only the format's own quotes are left: a client's quote cannot close a field.
    assert text.count('"') == compile_format_quotes(preset)


def compile_format_quotes(preset: str) -> int:
    return PRESETS.get(preset, preset).count('"')


@pytest.mark.parametrize(("raw", "escaped"), [
    ("plain /path?q=1", "plain /path?q=1"),
    ('say "hi"', "say \\x22hi\\x22"),
    ("a\\b", "a\\x5Cb"),
    ("\r\n", "\\x0D\\x0A"),
    ("\xe9", "\\xE9"),
    ("\x00\x7f", "\\x00\\x7F"),
    ("\u20ac", "\\xE2\\x82\\xAC"),
])
def test_escape_text_table(raw: str, escaped: str) -> None:
    assert escape_text(raw) == escaped


@pytest.mark.parametrize("spec", ["%(nope)", "%(addr) %(var.)", "%(status) %(Status)"])
def test_unknown_variables_are_errors(spec: str) -> None:
    with pytest.raises(ValueError, match="var"):
        compile_format(spec)


def test_literal_text_with_braces_and_quotes_is_kept() -> None:
    assert line("{'a': \"%(status)\"} 100%") == "{'a': \"404\"} 100%\n"
