"""--harakiri: a request past its time limit is logged with its traceback, answered 504, and
its worker killed and replaced if it does not return within --harakiri-grace."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import requests

from tests.conftest import DroverLauncher, Server, build_request, read_response, recv_until_close

SLOW_APP = '''
import os
import time

def stuck_in_the_app(seconds):
    time.sleep(seconds)

def streamed(seconds, first):
    if first:
        yield b"first block\\n"
    stuck_in_the_app(seconds)
    yield b"late block\\n"

def application(environ, start_response):
    path = environ["PATH_INFO"]
    seconds = float(environ["QUERY_STRING"] or "0")
    if path in ("/stream", "/stream-begun"):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return streamed(seconds, path == "/stream-begun")
    if path == "/slow":
        stuck_in_the_app(seconds)
    body = f"{os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''

WORKER = r"worker (\d+) \(pid (\d+), generation 0\)"


def serve_slow_app(drover: DroverLauncher, tmp_path: Path, *args: str) -> Server:
    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    return drover("--chdir", str(tmp_path), *args, "slowapp")


def get_raw(server: Server, target: str, timeout: float = 30.0) -> bytes:
    """One request; every byte the server sent until it closed the connection."""
    with server.connect(timeout) as sock:
        sock.sendall(build_request("GET", target, {"Host": "x"}))
        return recv_until_close(sock, timeout)


def test_harakiri_answers_504_names_the_app_function_and_kills_after_grace(
        drover: DroverLauncher, tmp_path: Path) -> None:
    server = serve_slow_app(drover, tmp_path, "--workers", "2", "--harakiri", "1",
                            "--harakiri-grace", "1")
    failures: list[str] = []
    served = 0
    stop = threading.Event()

    def fast_client() -> None:
        nonlocal served
        while not stop.is_set():
            try:
                response = requests.get(server.url + "/", timeout=10)
                if response.status_code != 200:
                    failures.append(f"status {response.status_code}")
                served += 1
            except requests.RequestException as exc:
                failures.append(repr(exc))
            time.sleep(0.02)

    answers: list[bytes] = []
    stuck = threading.Thread(target=lambda: answers.append(get_raw(server, "/slow?600")))
    stuck.start()
    fired = server.wait_for_log(r"harakiri: GET /slow\?600 on " + WORKER +
                                r", thread 0, has run [\d.]+ s \(--harakiri 1\); "
                                r"answered 504")
    # From here on the stuck worker accepts nothing: every request goes to the other one,
    # while the stuck one is killed and replaced. (A connection it had accepted in the same
    # batch as the stuck request would be lost with it, and logged as such.)
    client = threading.Thread(target=fast_client)
    client.start()
    try:
        stuck.join(30)
        worker_id, pid = fired.group(1), fired.group(2)
        server.wait_for_log(rf"killing worker {worker_id} \(pid {pid}, generation 0\): its "
                            r"request is still running --harakiri-grace 1 s after harakiri")
        server.wait_for_log(rf"worker {worker_id} \(pid (?!{pid})\d+, generation 0\) ready")
        time.sleep(0.3)
    finally:
        stop.set()
        client.join(15)
    answer = answers[0]
    assert answer.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert answer.count(b"HTTP/1.1") == 1
    assert b"Connection: close" in answer
    log = server.log()
    # The traceback of the stuck thread starts in the app and names where it waits.
    where = log[fired.end():]
    assert re.search(r'File ".*slowapp\.py", line \d+, in application', where)
    assert re.search(r'File ".*slowapp\.py", line \d+, in stuck_in_the_app\n\s+time\.sleep',
                     where)
    assert "drover/worker/" not in where.split("killing worker")[0]  # Drover's frames left out
    # The other worker served throughout, and nothing but the stuck request failed.
    assert failures == []
    assert served > 0
    assert re.search(r"still stuck [\d.]+ s after harakiri \(--harakiri-grace 1\): the master "
                     r"kills this worker\. Lost with it: no other request", log)


def test_a_request_that_returns_after_harakiri_has_its_late_response_discarded(
        drover: DroverLauncher, tmp_path: Path) -> None:
    """The 504 is the only answer on the wire; the worker frees itself and serves on."""
    server = serve_slow_app(drover, tmp_path, "--workers", "1", "--harakiri", "1",
                            "--harakiri-grace", "30")
    pid = requests.get(server.url + "/", timeout=10).text
    answer = get_raw(server, "/slow?2.5")
    assert answer.startswith(b"HTTP/1.1 504 ")
    assert answer.count(b"HTTP/1.1") == 1 and pid.encode() not in answer
    server.wait_for_log(r"harakiri: GET /slow\?2\.5 on " + WORKER + r", thread 0, returned "
                        r"[\d.]+ s after harakiri; its late response was discarded")
    assert requests.get(server.url + "/", timeout=10).text == pid  # the same worker serves on
    assert "killing worker" not in server.log()


def test_harakiri_answers_pipelined_requests_in_order(drover: DroverLauncher,
                                                      tmp_path: Path) -> None:
    """An answer deferred on the connection before the stuck request goes out before its
    504."""
    server = serve_slow_app(drover, tmp_path, "--workers", "1", "--harakiri", "1",
                            "--harakiri-grace", "30")
    with server.connect(30) as sock:
        sock.sendall(build_request("GET", "/", {"Host": "x"}) +
                     build_request("GET", "/slow?2", {"Host": "x"}))
        first = read_response(sock, timeout=30)
        second = read_response(sock, timeout=30, buffer=first.rest)
        rest = second.rest + recv_until_close(sock, 10)
    assert first.status == 200
    assert second.status == 504
    assert rest == b""


def test_a_stuck_first_block_of_a_streamed_response_gets_a_504(drover: DroverLauncher,
                                                                tmp_path: Path) -> None:
    server = serve_slow_app(drover, tmp_path, "--workers", "1", "--harakiri", "1",
                            "--harakiri-grace", "30")
    answer = get_raw(server, "/stream?2.5")
    assert answer.startswith(b"HTTP/1.1 504 ") and answer.count(b"HTTP/1.1") == 1
    assert b"late block" not in answer
    server.wait_for_log(r"its late response was discarded")


def test_a_streamed_response_stuck_after_it_began_is_cut(drover: DroverLauncher,
                                                         tmp_path: Path) -> None:
    """Its head is on the wire: no 504 can follow, so the connection is closed and the client
    sees a response cut short (chunked, without its last chunk), before the app returns."""
    server = serve_slow_app(drover, tmp_path, "--workers", "1", "--harakiri", "1",
                            "--harakiri-grace", "30")
    with server.connect(30) as sock:
        sock.sendall(build_request("GET", "/stream-begun?4", {"Host": "x"}))
        answer = read_response(sock, timeout=30)
    assert answer.status == 200
    assert answer.chunked and not answer.complete
    assert answer.body == b"first block\n"
    server.wait_for_log(r"harakiri: GET /stream-begun\?4 on " + WORKER + r", thread 0, has "
                        r"run [\d.]+ s \(--harakiri 1\); its response had begun: connection cut")
    server.wait_for_log(r"its late response was discarded")


def test_with_threads_the_other_requests_of_a_killed_worker_are_logged_as_lost(
        drover: DroverLauncher, tmp_path: Path) -> None:
    server = serve_slow_app(drover, tmp_path, "--workers", "1", "--threads", "2",
                            "--harakiri", "2", "--harakiri-grace", "1")
    stuck = threading.Thread(target=get_raw, args=(server, "/slow?600"), daemon=True)
    stuck.start()
    server.wait_for_log(r"harakiri: GET /slow\?600")
    # On the other thread, a request that has run less than --harakiri when the worker is
    # killed, --harakiri-grace later.
    other: list[bytes] = []
    victim = threading.Thread(target=lambda: other.append(get_raw(server, "/slow?600")),
                              daemon=True)
    victim.start()
    server.wait_for_log(r"Lost with it: GET /slow\?600 \(thread [01], running [\d.]+ s\)")
    server.wait_for_log(r"worker 1 \(pid \d+, generation 0\) ready.*\n(?:.*\n)*.*"
                        r"worker 1 \(pid \d+, generation 0\) ready")
    victim.join(15)
    assert other and other[0] == b""  # lost: the connection closed with no answer
    assert requests.get(server.url + "/", timeout=10).status_code == 200


def test_with_harakiri_a_long_request_is_harakiris_not_the_heartbeat_timeouts(
        drover: DroverLauncher, tmp_path: Path) -> None:
    """--timeout stays the backstop: a loop inside the app does not stop the heartbeat when
    --harakiri watches it, so the longer --harakiri decides."""
    server = serve_slow_app(drover, tmp_path, "--workers", "1", "--timeout", "1",
                            "--harakiri", "4", "--harakiri-grace", "30")
    answer = get_raw(server, "/slow?5")
    assert answer.startswith(b"HTTP/1.1 504 ")
    server.wait_for_log(r"its late response was discarded")
    assert "(--timeout)" not in server.log()


def test_a_graceful_stop_does_not_wait_for_a_request_harakiri_ended(drover: DroverLauncher,
                                                                    tmp_path: Path) -> None:
    """Its client has its 504: nothing is left to finish, whatever --graceful-timeout says."""
    server = serve_slow_app(drover, tmp_path, "--workers", "1", "--harakiri", "1",
                            "--harakiri-grace", "120", "--graceful-timeout", "120")
    answer = get_raw(server, "/slow?600")
    assert answer.startswith(b"HTTP/1.1 504 ")
    assert server.stop(signal.SIGTERM, timeout=20) == 0


def test_harakiris_504_reaches_the_client_through_nginx_uwsgi_pass(drover: DroverLauncher,
                                                                   tmp_path: Path) -> None:
    """Over the uwsgi protocol the 504 is Drover's own answer, which nginx passes on."""
    from nginx import start_nginx

    socket_path = tmp_path / "h.sock"
    (tmp_path / "slowapp.py").write_text(SLOW_APP)
    server = drover("--uwsgi", str(socket_path), "--workers", "1", "--harakiri", "1",
                    "--harakiri-grace", "30", "--chdir", str(tmp_path), "slowapp")
    nginx = start_nginx(tmp_path / "nginx", {"app": server.address("uwsgi")})
    try:
        response = requests.get(nginx.url("app") + "/slow?2.5", timeout=30)
        assert response.status_code == 504
        assert response.text == "504 Gateway Timeout: The request took too long\n"
        server.wait_for_log(r"its late response was discarded")
        assert requests.get(nginx.url("app") + "/", timeout=10).status_code == 200
    finally:
        nginx.stop()
