"""Request bodies through the real drover process: in memory, in a file, under the worker's
memory limit, and clients that send them too slowly (408), or pipeline many small requests."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time

import pytest
from rawhttp import http, read_responses, rss_bytes, wait_closed, worker_pids

from tests.conftest import DroverLauncher, Server, read_response

W1 = ("--workers", "1")
HOST = "Host: 127.0.0.1"
BODY = b"".join(b"%d: some line of an upload\n" % i for i in range(20000))  # ~560 KiB


@pytest.fixture(scope="module")
def memory_server(drover_module: DroverLauncher) -> Server:
    return drover_module.app("probe:echo_app", *W1)


@pytest.fixture(scope="module")
def file_server(drover_module: DroverLauncher) -> Server:
    return drover_module.app("probe:echo_app", *W1, "--body-buffer-size", "100k")


def post(server: Server, target: str, body: bytes, timeout: float = 30) -> bytes:
    with server.connect(timeout) as sock:
        sock.sendall(http(f"POST {target} HTTP/1.1", HOST, f"Content-Length: {len(body)}",
                          "Connection: close") + body)
        response = read_response(sock, timeout=timeout)
    assert response.status == 200, response
    assert response.header("X-Body-Sha256") == hashlib.sha256(body).hexdigest()
    return response.body


@pytest.mark.parametrize("mode", ["auto", "read", "read_all", "readline", "readline_sized",
                                  "iter", "readlines"])
@pytest.mark.parametrize("where", ["memory", "file"])
def test_a_large_body_reads_whole_every_way(where: str, mode: str, memory_server: Server,
                                            file_server: Server) -> None:
    server = memory_server if where == "memory" else file_server
    assert post(server, f"/?read={mode}", BODY) == BODY


def test_bodies_past_the_memory_limit_go_to_files_and_all_arrive(
        drover: DroverLauncher) -> None:
    """8 concurrent 4 MiB uploads under an 8 MiB limit: two in memory at most, all whole, and
    the worker's memory grows by about the limit, not by the 32 MiB of bodies."""
    server = drover.app("probe:echo_app", *W1, "--body-memory-limit", "8M")
    [pid] = worker_pids(server)
    body = os.urandom(1 << 20) * 4
    before = rss_bytes(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes(pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    results: list[bool] = []

    def upload() -> None:
        with server.connect(30) as sock:
            sock.sendall(http("POST /?digest=1 HTTP/1.1", HOST,
                              f"Content-Length: {len(body)}", "Connection: close"))
            for i in range(0, len(body), 256 * 1024):
                sock.sendall(body[i:i + 256 * 1024])
                time.sleep(0.01)  # all eight in flight at once
            response = read_response(sock, timeout=30)
            results.append(response.status == 200
                           and response.header("X-Body-Sha256")
                           == hashlib.sha256(body).hexdigest())

    threads = [threading.Thread(target=upload) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    done.set()
    sampler.join()
    assert results == [True] * 8
    assert peak[0] - before < 16 << 20  # 8 MiB of maps, and some slack


def test_pipelined_small_requests_under_a_small_header_limit_are_all_answered(
        drover: DroverLauncher) -> None:
    server = drover.app("probe:environ_app", *W1, "--limit-request-headers", "8192")
    request = http("GET /p HTTP/1.1", HOST, "User-Agent: pipelining-test/1.0 " + "x" * 30)
    assert 90 <= len(request) <= 110
    with server.connect(30) as sock:
        sock.sendall(request * 2000)
        responses = read_responses(sock, 2000, timeout=30)
    assert [r.status for r in responses] == [200] * 2000


def send_slowly(sock: socket.socket, data: bytes, interval: float, stop: threading.Event
                ) -> None:
    for i in range(len(data)):
        if stop.wait(interval):
            return
        try:
            sock.sendall(data[i:i + 1])
        except OSError:
            return


@pytest.mark.parametrize("settings", [
    ("--body-min-rate", "100", "--body-rate-window", "1"),
    ("--body-min-rate", "0", "--body-timeout", "1.5", "--io-timeout", "30"),
], ids=["min_rate", "body_timeout"])
def test_a_body_sent_byte_by_byte_gets_408_and_the_connection_closes(
        drover: DroverLauncher, settings: tuple[str, ...]) -> None:
    server = drover.app("probe:echo_app", *W1, *settings)
    stop = threading.Event()
    with server.connect(15) as sock:
        sock.sendall(http("POST / HTTP/1.1", HOST, "Content-Length: 100"))
        sender = threading.Thread(target=send_slowly, args=(sock, b"z" * 100, 0.2, stop))
        sender.start()
        started = time.monotonic()
        try:
            response = read_response(sock, timeout=10)
            closed, _, _ = wait_closed(sock, 5)
        finally:
            stop.set()
            sender.join()
    assert response.status == 408
    assert closed
    assert time.monotonic() - started < 8  # bounded by the settings, not the 100 s upload
    # A client at full speed is unaffected.
    assert post(server, "/", b"q" * 200000) == b"q" * 200000
