"""Worker recycling (--max-requests with --max-requests-jitter, --reload-on-rss,
--max-worker-lifetime, --worker-reload-mercy): under load, no request fails, and the
replacement is ready before the old worker retires."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import requests

from tests.conftest import DroverLauncher, Server

RECYCLE_APP = '''
import os
import time

HOARD = []

def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sleep":
        time.sleep(float(environ["QUERY_STRING"]))
    elif path == "/grow":
        HOARD.append(bytearray(int(environ["QUERY_STRING"]) * 1024 * 1024))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''

RECYCLE_LINE = r"recycling worker (\d+) \(pid (\d+), generation 0\): (.*); it serves on"


def serve(drover: DroverLauncher, tmp_path: Path, *args: str) -> Server:
    (tmp_path / "recycleapp.py").write_text(RECYCLE_APP)
    return drover("--chdir", str(tmp_path), *args, "recycleapp")


@contextmanager
def load(server: Server, clients: int = 4) -> Iterator[tuple[list[str], set[int]]]:
    """Clients hammering ``server`` (keep-alive sessions and fresh connections) while the
    block runs; yields the failures and the worker pids that answered."""
    failures: list[str] = []
    pids: set[int] = set()
    stop = threading.Event()

    def hammer() -> None:
        session = requests.Session()
        while not stop.is_set():
            for get in (session.get, requests.get):
                try:
                    response = get(server.url + "/", timeout=10)
                    if response.status_code != 200:
                        failures.append(f"status {response.status_code}")
                    pids.add(int(response.text))
                except requests.RequestException as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=hammer) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield failures, pids
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)


def wait_for_recycles(server: Server, count: int, timeout: float = 30.0) -> list[re.Match[str]]:
    deadline = time.monotonic() + timeout
    while True:
        found = list(re.finditer(RECYCLE_LINE, server.log()))
        if len(found) >= count:
            return found
        if time.monotonic() > deadline or not server.running:
            raise AssertionError(f"{len(found)}/{count} recycles:\n{server.log()}")
        time.sleep(0.1)


def assert_replaced_before_retiring(server: Server, recycled: list[re.Match[str]]) -> None:
    """Each recycled worker retired only after its replacement (same number) was ready."""
    log = server.log()
    for match in recycled:
        worker_id, pid = match.group(1), match.group(2)
        old = rf"worker {worker_id} \(pid {pid}, generation 0\)"
        ready = re.search(rf"worker {worker_id} \(pid (?!{pid})\d+, generation 0\) ready; "
                          rf"retiring {old}", log)
        if ready is None:
            continue  # not yet: the test stopped first
        retiring = re.search(rf"{old} retiring", log)
        assert retiring is not None and retiring.start() > ready.start(), log
        assert match.start() < ready.start()


def test_max_requests_with_jitter_recycles_under_load_without_a_failed_request(
        drover: DroverLauncher, tmp_path: Path) -> None:
    server = serve(drover, tmp_path, "--workers", "2", "--max-requests", "40",
                   "--max-requests-jitter", "20")
    with load(server) as (failures, pids):
        recycled = wait_for_recycles(server, 4)
        time.sleep(0.5)
    assert failures == []
    assert len(pids) >= 4
    for match in recycled:
        served = re.fullmatch(r"it served (\d+) requests \(--max-requests (\d+)\)", match.group(3))
        assert served is not None, match.group(0)
        assert 40 <= int(served.group(2)) <= 60 and int(served.group(1)) >= int(served.group(2))
    # One line per recycle: a worker asks once.
    assert len({m.group(2) for m in recycled}) == len(recycled)
    assert_replaced_before_retiring(server, recycled)


def test_max_worker_lifetime_recycles_and_lets_requests_in_flight_finish(
        drover: DroverLauncher, tmp_path: Path) -> None:
    server = serve(drover, tmp_path, "--workers", "1", "--max-worker-lifetime", "2")
    first = int(requests.get(server.url + "/", timeout=10).text)
    # A request in flight on the old worker when it is recycled finishes there.
    long = requests.get(server.url + "/sleep?3", timeout=20)
    assert long.status_code == 200 and int(long.text) == first
    with load(server) as (failures, pids):
        recycled = wait_for_recycles(server, 3)
    assert failures == []
    assert len(pids) >= 2
    assert re.fullmatch(r"it has run \d+ s \(--max-worker-lifetime 2\)", recycled[0].group(3))
    assert_replaced_before_retiring(server, recycled)


def test_reload_on_rss_recycles_a_worker_that_grew(drover: DroverLauncher,
                                                   tmp_path: Path) -> None:
    server = serve(drover, tmp_path, "--workers", "1", "--reload-on-rss", "80")
    with load(server, clients=2) as (failures, _pids):
        grown = int(requests.get(server.url + "/grow?100", timeout=10).text)
        recycled = wait_for_recycles(server, 1)
        server.wait_for_log(rf"worker 1 \(pid {grown}, generation 0\) stopped")
        time.sleep(0.3)
    assert failures == []
    assert recycled[0].group(2) == str(grown)
    assert re.fullmatch(r"its memory is \d+ MiB \(--reload-on-rss 80\)", recycled[0].group(3))
    assert_replaced_before_retiring(server, recycled)
    assert int(requests.get(server.url + "/", timeout=10).text) != grown


def test_worker_reload_mercy_bounds_how_long_a_recycled_worker_may_take(
        drover: DroverLauncher, tmp_path: Path) -> None:
    # Requests: the launcher's first one, ours, a hung one, and the third to end, which
    # makes the worker ask for its replacement.
    server = serve(drover, tmp_path, "--workers", "1", "--threads", "2", "--max-requests", "3",
                   "--worker-reload-mercy", "1")
    pid = int(requests.get(server.url + "/", timeout=10).text)
    hung = threading.Thread(target=lambda: _swallow(server, "/sleep?600"), daemon=True)
    hung.start()
    server.wait_for_log(r"worker 1 .* ready")
    time.sleep(0.3)
    requests.get(server.url + "/", timeout=10)
    server.wait_for_log(rf"recycling worker 1 \(pid {pid}, generation 0\)")
    server.wait_for_log(rf"worker 1 \(pid {pid}, generation 0\) did not stop in time; "
                        "killing it", timeout=15)
    assert int(requests.get(server.url + "/", timeout=10).text) != pid


def _swallow(server: Server, path: str) -> None:
    with suppress(requests.RequestException):
        requests.get(server.url + path, timeout=30)
