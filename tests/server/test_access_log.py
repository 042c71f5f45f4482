"""The access log and Drover's own log files, against the real server: presets, hostile input,
filters, SIGUSR1 reopening after a logrotate-style rename, size rotation, a log that cannot be
written (lines are dropped and counted, requests are served)."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import DroverLauncher, Server
from tests.server import uwsgi_client

STATUS_APP = '''
import time
def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/status/"):
        status = path.rsplit("/", 1)[1]
    else:
        status = "200"
    if path == "/slow":
        time.sleep(float(environ["QUERY_STRING"] or "0.3"))
    if path == "/fail":
        raise RuntimeError("the app failed on purpose")
    body = b"hello " + path.encode("latin-1")
    start_response(status + " X", [("Content-Type", "text/plain"),
                                   ("Content-Length", str(len(body)))])
    return [body]
'''


def serve(drover: DroverLauncher, tmp_path: Path, *args: str, **kwargs: object) -> Server:
    (tmp_path / "statusapp.py").write_text(STATUS_APP)
    return drover("--workers", "1", "--chdir", str(tmp_path), *args, "statusapp", **kwargs)


def get(server: Server, path: str, **kwargs: object) -> requests.Response:
    return requests.get(server.url + path, timeout=10, **kwargs)  # type: ignore[arg-type]


def wait_for_file(path: Path, pattern: str, timeout: float = 10.0) -> str:
    """The file's text once ``pattern`` is found in it."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text("utf-8", "replace") if path.exists() else ""
        if re.search(pattern, text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} not in {path} after {timeout} s:\n{text}")
        time.sleep(0.05)


LTIME = r"\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}"
PRESET_LINES = {
    "common": rf'^127\.0\.0\.1 - - \[{LTIME}\] "GET /status/201\?q=1 HTTP/1\.1" 201 17$',
    "combined": (rf'^127\.0\.0\.1 - - \[{LTIME}\] "GET /status/201\?q=1 HTTP/1\.1" 201 17 '
                 r'"http://ref\.example/" "tester/1\.0"$'),
    "uwsgi": (r"^\[pid: \d+\|app: 0\|req: \d+/\d+\] 127\.0\.0\.1 \(-\) \{\d+ vars in \d+ "
              r"bytes\} \[\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\] GET /status/201\?q=1 => "
              r"generated 17 bytes in \d+ msecs \(HTTP/1\.1 201\) 2 headers in \d+ bytes "
              r"\(1 switches on core 0\)$"),
}


@pytest.mark.parametrize("preset", ["common", "combined", "uwsgi", "json", None])
def test_each_preset_writes_its_line_to_the_file(drover: DroverLauncher, tmp_path: Path,
                                                 preset: str | None) -> None:
    access = tmp_path / "access.log"
    fmt = ("--log-format", preset) if preset else ()  # None: the default, combined
    server = serve(drover, tmp_path, "--access-log", str(access), *fmt)
    get(server, "/status/201?q=1", headers={"Referer": "http://ref.example/",
                                             "User-Agent": "tester/1.0"})
    text = wait_for_file(access, "/status/201")
    line = next(x for x in text.splitlines() if "/status/201" in x)
    if preset == "json":
        record = json.loads(line)
        assert record["status"] == 201 and record["size"] == 17
        assert record["uri"] == "/status/201?q=1" and record["method"] == "GET"
        assert record["uagent"] == "tester/1.0" and record["referer"] == "http://ref.example/"
        assert record["addr"] == "127.0.0.1" and record["wid"] == 1
        assert isinstance(record["msecs"], int) and isinstance(record["pid"], int)
    else:
        assert re.match(PRESET_LINES[preset or "combined"], line), line
    assert "/status/201" not in server.log()  # the file, not Drover's log


def test_json_lines_cannot_be_forged_by_hostile_uwsgi_vars(drover: DroverLauncher,
                                                          tmp_path: Path) -> None:
    """Over uwsgi (from a proxy) a var may hold any byte: CR, LF, quotes, backslashes and
    non-ASCII stay inside their JSON string, one object per line."""
    access = tmp_path / "access.jsonl"
    sock = tmp_path / "app.sock"
    serve(drover, tmp_path, "--uwsgi", str(sock), "--access-log", str(access),
          "--log-format", "json", ready_path="/ready")
    hostile_ua = b'evil"\r\n{"status":200,"uri":"/forged"}\\\xc3\xa9\x00'
    hostile_uri = b'/status/200?a="b"\n\\x'
    items = uwsgi_client.request_vars("GET", hostile_uri.decode("latin-1"))
    items = [(k, v) for k, v in items if k != "HTTP_USER_AGENT"]
    items.append((b"HTTP_USER_AGENT", hostile_ua))
    answer = uwsgi_client.exchange(f"unix:{sock}", uwsgi_client.packet(items))
    assert answer.data.startswith(b"HTTP/1.1 200")
    text = wait_for_file(access, "evil")
    lines = [line for line in text.splitlines() if line]
    assert len(lines) == 2  # the readiness probe's and ours: no forged extra line
    record = json.loads(lines[-1])
    assert record["uagent"] == hostile_ua.decode("latin-1")
    assert record["uri"] == hostile_uri.decode("latin-1")
    assert text.isascii()


def test_text_lines_escape_hostile_values(drover: DroverLauncher, tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    server = serve(drover, tmp_path, "--access-log", str(access))
    with server.connect() as conn:
        conn.sendall(b'GET /status/200 HTTP/1.1\r\nHost: x\r\nUser-Agent: a" "b\\c\xe9\r\n'
                     b"Connection: close\r\n\r\n")
        assert Server.read_response(conn).status == 200
    text = wait_for_file(access, "/status/200")
    assert text.rstrip("\n").endswith('"-" "a\\x22 \\x22b\\x5Cc\\xE9"')


def test_log_exclude_skips_health_checks(drover: DroverLauncher, tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    server = serve(drover, tmp_path, "--access-log", str(access), "--log-exclude", "^/healthz$",
                   "--log-exclude", "^/ready", ready_path="/ready")
    get(server, "/healthz")
    get(server, "/healthz/not-exact")
    get(server, "/after")
    text = wait_for_file(access, "GET /after ")
    assert "/healthz/not-exact" in text
    assert "/healthz " not in text and "/ready" not in text


def test_disable_logging_keeps_4xx_5xx_and_slow_requests(drover: DroverLauncher,
                                                         tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    server = serve(drover, tmp_path, "--access-log", str(access), "--disable-logging",
                   "--log-4xx", "--log-5xx", "--log-slow", "150")
    get(server, "/status/200")
    get(server, "/status/404")
    get(server, "/status/503")
    get(server, "/fail")  # an exception: answered 500 by Drover, logged as such
    get(server, "/slow?0.3")
    get(server, "/slow?0.01")
    get(server, "/status/410")  # the last one: when it is there, all are
    text = wait_for_file(access, "/status/410")
    for logged in ("/status/404 ", "/status/503 ", '"GET /fail HTTP/1.1" 500 ', "/slow?0.3 "):
        assert logged in text
    assert "/status/200" not in text and "/slow?0.01" not in text


def test_log_5xx_alone_logs_only_errors_to_drovers_log(drover: DroverLauncher,
                                                       tmp_path: Path) -> None:
    server = serve(drover, tmp_path, "--log-5xx")
    get(server, "/status/404")
    get(server, "/status/500")
    server.wait_for_log(r'"GET /status/500 HTTP/1\.1" 500 ')
    assert "/status/404" not in server.log()


def test_sigusr1_reopens_the_access_log_after_logrotate_renamed_it(drover: DroverLauncher,
                                                                  tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    server = serve(drover, tmp_path, "--workers", "2", "--access-log", str(access))
    get(server, "/before")
    wait_for_file(access, "/before")
    rotated = tmp_path / "access.log.1"
    os.rename(access, rotated)  # what logrotate does, before it signals
    server.send_signal(signal.SIGUSR1)
    server.wait_for_log("reopening log files")
    deadline = time.monotonic() + 10
    n = 0
    # Each worker reopens as soon as it gets the signal the master forwards: soon every
    # request is logged in the new file.
    while time.monotonic() < deadline:
        n += 1
        get(server, f"/after-{n}")
        if access.exists() and f"/after-{n} " in access.read_text():
            break
        time.sleep(0.05)
    else:
        raise AssertionError("no line in the reopened file")
    for m in range(n + 1, n + 7):
        get(server, f"/after-{m}")
    text = wait_for_file(access, f"/after-{n + 6} ")
    for m in range(n, n + 7):
        assert f"/after-{m} " in text  # both workers write to the new file
    assert "/before" in rotated.read_text()
    assert server.running


def test_log_file_holds_drovers_log_and_is_reopened_on_sigusr1(drover: DroverLauncher,
                                                              tmp_path: Path) -> None:
    own = tmp_path / "drover.log"
    (tmp_path / "statusapp.py").write_text(STATUS_APP)
    server = drover("--workers", "1", "--chdir", str(tmp_path), "--log-file", str(own),
                    "--access-log", "-", "statusapp", wait=False)
    text = wait_for_file(own, r"worker 1 \(pid \d+, generation \d+\) ready")
    port = int(re.search(r"listening at http://127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
    requests.get(f"http://127.0.0.1:{port}/one", timeout=10)
    wait_for_file(own, '"GET /one HTTP/1.1" 200')  # "-": the access log joins Drover's log
    os.rename(own, tmp_path / "drover.log.1")
    server.send_signal(signal.SIGUSR1)
    wait_for_file(own, "SIGUSR1: reopening log files")
    assert "listening at" not in server.log()  # nothing on stderr


def test_log_maxsize_rotates_the_access_log(drover: DroverLauncher, tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    server = serve(drover, tmp_path, "--access-log", str(access), "--log-maxsize", "2k")
    for n in range(60):  # about 90 bytes each
        get(server, f"/request-{n:03d}")
    wait_for_file(access, "/request-059 ")
    rotated = sorted(tmp_path.glob("access.log.*"))
    assert rotated, list(tmp_path.iterdir())
    lines = "".join(p.read_text() for p in [*rotated, access])
    for n in range(60):
        assert f"/request-{n:03d} " in lines  # nothing lost across rotations
    assert all(p.stat().st_size < 2048 + 1024 for p in rotated)


def test_an_unwritable_log_costs_lines_not_requests(drover: DroverLauncher,
                                                    tmp_path: Path) -> None:
    """/dev/full fails every write (ENOSPC): requests are served, the lost lines are counted
    and reported in Drover's log and in the stats document."""
    stats = tmp_path / "stats.sock"
    server = serve(drover, tmp_path, "--access-log", "/dev/full", "--stats", str(stats))
    for n in range(20):
        assert get(server, f"/n{n}").status_code == 200
    server.wait_for_log(r"\d+ log line\(s\) dropped: /dev/full could not be written")
    deadline = time.monotonic() + 10
    while True:
        document = read_stats(stats)
        if document["workers"][0]["log_lines_dropped"] >= 20:
            break
        assert time.monotonic() < deadline, document
        time.sleep(0.2)


def read_stats(path: Path) -> dict[str, object]:
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    result: dict[str, object] = json.loads(data)
    return result


def test_access_log_that_cannot_be_opened_is_a_configuration_error(drover: DroverLauncher,
                                                                   tmp_path: Path) -> None:
    from tests.server.test_processes import run_drover

    result = run_drover("--access-log", str(tmp_path / "missing-dir" / "a.log"))
    assert result.returncode == 2
    assert "--access-log" in result.stderr and "missing-dir" in result.stderr
