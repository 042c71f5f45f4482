"""The stats server (--stats, --stats-http) against the real server and the real tools that read
uWSGI's stats: uwsgitop on a terminal (tmux), the document as Prometheus' uwsgi_exporter decodes
it, and /metrics through prometheus_client's parser."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import DroverLauncher, Server
from tests.server.test_access_log import STATUS_APP

UWSGITOP = Path(sys.executable).parent / "uwsgitop"


def serve(drover: DroverLauncher, tmp_path: Path, *args: str, workers: int = 2,
          **kwargs: Any) -> tuple[Server, str]:
    """A server with --stats; returns it and the stats address as logged."""
    (tmp_path / "statusapp.py").write_text(STATUS_APP)
    stats_args = args if "--stats" in args else ("--stats", "127.0.0.1:0", *args)
    server = drover("--workers", str(workers), "--chdir", str(tmp_path), *stats_args,
                    "statusapp", **kwargs)
    match = server.wait_for_log(r"stats server at (\S+)")
    return server, match.group(1)


def worker_pids(server: Server) -> dict[int, int]:
    """worker id -> pid of the workers booted so far (the latest per id)."""
    return {int(wid): int(pid) for wid, pid in
            re.findall(r"booting worker (\d+) \(pid (\d+),", server.log())}


def connect_stats(address: str) -> socket.socket:
    if address.startswith("@"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect("\0" + address[1:])
    elif address.startswith("/"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address)
    else:
        host, port = address.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)))
    sock.settimeout(10)
    return sock


def read_raw(address: str) -> dict[str, Any]:
    """What uwsgitop and uwsgi_exporter do: connect, read to EOF, decode JSON."""
    with connect_stats(address) as sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    document: dict[str, Any] = json.loads(data)
    return document


def wait_for(address: str, check: Any, timeout: float = 10.0,
              reader: Any = read_raw) -> dict[str, Any]:
    """Read the document until ``check(document)`` holds (figures are published each second)."""
    deadline = time.monotonic() + timeout
    while True:
        document: dict[str, Any] = reader(address)
        if check(document):
            return document
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {document}")
        time.sleep(0.2)


def total_requests(document: dict[str, Any]) -> int:
    return sum(worker["requests"] for worker in document["workers"])


# -- uwsgitop -------------------------------------------------------------------------------------


def uwsgitop_screen(address: str, tmp_path: Path, want: Any, timeout: float = 15.0) -> str:
    """Run the real uwsgitop on a tmux terminal; return its screen once ``want(screen)``."""
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux)")
    tmux = ["tmux", "-L", f"drover-test-{os.getpid()}-{tmp_path.name}", "-f", "/dev/null"]
    subprocess.run([*tmux, "new-session", "-d", "-x", "200", "-y", "30", "-s", "top",
                    f"TERM=xterm {UWSGITOP} {address}; sleep 30"], check=True, timeout=10)
    try:
        deadline = time.monotonic() + timeout
        while True:
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", "top"], check=True,
                                    capture_output=True, text=True, timeout=10).stdout
            if want(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"uwsgitop's screen never showed what we wait for:\n"
                                     f"{screen}")
            time.sleep(0.3)
    finally:
        subprocess.run([*tmux, "kill-server"], check=False, timeout=10)


def worker_rows(screen: str) -> dict[int, list[str]]:
    """uwsgitop's worker lines: WID % PID REQ RPS EXC SIG STATUS AVG RSS VSZ TX ..."""
    rows = {}
    for line in screen.splitlines():
        fields = line.split()
        if len(fields) > 8 and fields[0].isdigit() and fields[2].isdigit():
            rows[int(fields[0])] = fields
    return rows


@pytest.mark.parametrize("http", [False, True], ids=["raw", "http"])
def test_uwsgitop_shows_each_worker_with_its_pid_and_requests(drover: DroverLauncher,
                                                              tmp_path: Path,
                                                              http: bool) -> None:
    server, address = serve(drover, tmp_path, *(("--stats-http",) if http else ()))
    with requests.Session() as session:  # keep-alive: the requests go to one worker
        for n in range(7):
            assert session.get(f"{server.url}/n{n}", timeout=10).status_code == 200
    reader = read_http if http else read_raw
    document = wait_for(address, lambda d: total_requests(d) == 8, reader=reader)  # +1: probe
    expected = {w["id"]: (w["pid"], w["requests"]) for w in document["workers"]}
    assert {wid: pid for wid, (pid, _) in expected.items()} == worker_pids(server)
    target = f"http://{address}" if http else address

    def shows_all(screen: str) -> bool:
        rows = worker_rows(screen)
        return all(wid in rows and rows[wid][2] == str(pid) and rows[wid][3] == str(count)
                   for wid, (pid, count) in expected.items())

    screen = uwsgitop_screen(target, tmp_path, shows_all)
    assert "req: 8" in screen
    for wid in expected:
        assert worker_rows(screen)[wid][7] in ("idle", "busy")


# -- the document, as uwsgi_exporter reads it ------------------------------------------------------

# The fields uwsgi_exporter's Go structs decode (pkg/collector/stats.go), with their Go types:
# encoding/json refuses a float or a string where an int is declared, and so would the exporter.
INT, STR, LIST, OBJ = "int", "string", "list", "object"
TOP = {"version": STR, "listen_queue": INT, "listen_queue_errors": INT, "signal_queue": INT,
       "load": INT, "pid": INT, "uid": INT, "gid": INT, "cwd": STR, "sockets": LIST,
       "workers": LIST}
SOCKET = {"name": STR, "proto": STR, "queue": INT, "max_queue": INT, "shared": INT,
          "can_offload": INT}
WORKER = {"id": INT, "pid": INT, "accepting": INT, "requests": INT, "delta_requests": INT,
          "exceptions": INT, "harakiri_count": INT, "signals": INT, "signal_queue": INT,
          "status": STR, "rss": INT, "vsz": INT, "running_time": INT, "last_spawn": INT,
          "respawn_count": INT, "tx": INT, "avg_rt": INT, "apps": LIST, "cores": LIST}
APP = {"id": INT, "modifier1": INT, "mountpoint": STR, "startup_time": INT, "requests": INT,
       "exceptions": INT, "chdir": STR}
CORE = {"id": INT, "requests": INT, "static_requests": INT, "routed_requests": INT,
        "offloaded_requests": INT, "write_errors": INT, "read_errors": INT, "in_request": INT,
        "vars": LIST}


def check_shape(value: dict[str, Any], shape: dict[str, str], where: str) -> None:
    kinds = {INT: int, STR: str, LIST: list, OBJ: dict}
    for key, kind in shape.items():
        assert key in value, f"{where}: no {key!r}"
        item = value[key]
        assert type(item) is kinds[kind] and not isinstance(item, bool), \
            f"{where}.{key} is {item!r}, not {kind}"
        if kind == INT:
            assert item >= 0 and item < 2**63, f"{where}.{key} = {item}"


def check_exporter_shape(document: dict[str, Any]) -> None:
    check_shape(document, TOP, "stats")
    for n, sock in enumerate(document["sockets"]):
        check_shape(sock, SOCKET, f"sockets[{n}]")
    for n, worker in enumerate(document["workers"]):
        check_shape(worker, WORKER, f"workers[{n}]")
        for m, app in enumerate(worker["apps"]):
            check_shape(app, APP, f"workers[{n}].apps[{m}]")
        for m, core in enumerate(worker["cores"]):
            check_shape(core, CORE, f"workers[{n}].cores[{m}]")


def read_http(address: str, path: str = "/") -> dict[str, Any]:
    """uwsgi_exporter's HTTP reader: status 200 and Content-Type exactly application/json."""
    response = requests.get(f"http://{address}{path}", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    document: dict[str, Any] = response.json()
    return document


def test_the_document_decodes_as_uwsgi_exporter_expects(drover: DroverLauncher,
                                                        tmp_path: Path) -> None:
    server, address = serve(drover, tmp_path, "--threads", "2", "--stats-http")
    for _ in range(5):
        requests.get(server.url + "/x", timeout=10)
    requests.get(server.url + "/fail", timeout=10)
    document = wait_for(address, lambda d: total_requests(d) == 7, reader=read_http)
    check_exporter_shape(document)
    assert document["pid"] == server.proc.pid
    assert document["cwd"] == os.readlink(f"/proc/{server.proc.pid}/cwd")  # the master's
    assert document["sockets"][0]["proto"] == "http"
    assert document["sockets"][0]["name"] == f"127.0.0.1:{server.port}"
    assert document["sockets"][0]["max_queue"] > 0
    workers = document["workers"]
    assert [w["id"] for w in workers] == [1, 2]
    assert sum(w["exceptions"] for w in workers) == 1
    busy = [w for w in workers if w["requests"]]
    for worker in workers:
        assert worker["accepting"] == 1 and worker["status"] == "idle"
        assert worker["rss"] > 4 * 1024 * 1024 and worker["vsz"] >= worker["rss"]
        assert abs(worker["last_spawn"] - time.time()) < 120
        assert len(worker["cores"]) == 2
        assert sum(core["requests"] for core in worker["cores"]) == worker["requests"]
        assert worker["apps"][0]["requests"] == worker["requests"]
    assert all(w["running_time"] > 0 and w["avg_rt"] > 0 for w in busy)
    # The same document on the raw protocol is not served over HTTP: a raw reader gets HTTP.
    with connect_stats(address) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 200 OK\r\n")


def test_tx_counts_response_body_bytes(drover: DroverLauncher, tmp_path: Path) -> None:
    server, address = serve(drover, tmp_path, workers=1)
    sizes = [len(requests.get(server.url + p, timeout=10).content) for p in ("/a", "/bbbb")]
    document = wait_for(address, lambda d: total_requests(d) == 3)
    probe = len(b"hello /")
    assert document["workers"][0]["tx"] == sum(sizes) + probe


# -- Prometheus ---------------------------------------------------------------------------------


def test_metrics_parse_with_prometheus_client(drover: DroverLauncher, tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    server, address = serve(drover, tmp_path, "--stats-http")
    for path in ("/status/200", "/status/201", "/status/404", "/status/503", "/fail",
                 "/slow?0.06"):
        requests.get(server.url + path, timeout=10)
    wait_for(address, lambda d: total_requests(d) == 7, reader=read_http)
    response = requests.get(f"http://{address}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}

    by_class: dict[str, float] = {}
    for sample in families["drover_requests"].samples:
        assert sample.labels["worker"] in ("1", "2")
        by_class[sample.labels["status"]] = by_class.get(sample.labels["status"], 0) + \
            sample.value
    assert by_class == {"1xx": 0, "2xx": 4, "3xx": 0, "4xx": 1, "5xx": 2, "other": 0}

    histogram = families["drover_request_duration_seconds"]
    assert histogram.type == "histogram"
    buckets = [(s.labels["le"], s.value) for s in histogram.samples if s.name.endswith("_bucket")]
    values = [v for _, v in buckets]
    assert values == sorted(values) and buckets[-1] == ("+Inf", 7)
    le_50ms = dict(buckets)["0.05"]
    assert le_50ms == 6  # the 60 ms request is the only one above 50 ms
    count = next(s.value for s in histogram.samples if s.name.endswith("_count"))
    total = next(s.value for s in histogram.samples if s.name.endswith("_sum"))
    assert count == 7 and total >= 0.06

    def per_worker(name: str) -> dict[str, float]:
        return {s.labels["worker"]: s.value for s in families[name].samples}

    assert all(v > 4 * 1024 * 1024 for v in per_worker("drover_worker_rss_bytes").values())
    assert per_worker("drover_worker_respawns").keys() == {"1", "2"}
    assert sum(per_worker("drover_worker_harakiri").values()) == 0
    assert sum(per_worker("drover_worker_exceptions").values()) == 1
    assert sum(per_worker("drover_sent_bytes").values()) > 0
    assert families["drover_requests_in_flight"].samples[0].value == 0
    queues = families["drover_listen_queue"].samples
    assert [s.labels["socket"] for s in queues] == [server.url]
    assert families["drover_listen_queue_max"].samples[0].value > 0


# -- true figures --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_listen_queue_is_the_kernels(drover: DroverLauncher, tmp_path: Path, kind: str) -> None:
    """With the only worker stopped, connections wait in the accept queue: the document shows
    exactly how many."""
    unix_path = tmp_path / "app.sock"
    listen = ("--http", "127.0.0.1:0") if kind == "tcp" else ("--http", str(unix_path))
    server, address = serve(drover, tmp_path, *listen, workers=1,
                            ready_path="/" if kind == "tcp" else None)
    server.wait_for_log(r"worker 1 \(pid \d+, generation \d+\) ready")
    pid = worker_pids(server)[1]
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10  # the signal takes effect asynchronously
    while Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "T":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    clients = []
    try:
        for _ in range(5):
            if kind == "tcp":
                clients.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            else:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(str(unix_path))
                clients.append(sock)
        document = wait_for(address, lambda d: d["listen_queue"] == 5)
        assert document["sockets"][0]["queue"] == 5
        assert document["sockets"][0]["max_queue"] >= 5
    finally:
        os.kill(pid, signal.SIGCONT)
        for sock in clients:
            sock.close()
    wait_for(address, lambda d: d["listen_queue"] == 0)


def test_busy_worker_shows_in_stats_and_process_title(drover: DroverLauncher,
                                                      tmp_path: Path) -> None:
    server, address = serve(drover, tmp_path, workers=1)
    pid = worker_pids(server)[1]
    thread = threading.Thread(target=lambda: requests.get(server.url + "/slow?3", timeout=20))
    thread.start()
    try:
        document = wait_for(address, lambda d: d["workers"][0]["status"] == "busy")
        assert document["workers"][0]["cores"][0]["in_request"] == 1
        assert document["load"] == 1
        deadline = time.monotonic() + 10
        while True:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if re.search(r"drover: worker 1 \[busy \d+\.\ds GET /slow\]", title):
                break
            assert time.monotonic() < deadline, title
            time.sleep(0.2)
    finally:
        thread.join()
    wait_for(address, lambda d: d["workers"][0]["status"] == "idle")
    deadline = time.monotonic() + 10
    while "drover: worker 1 [idle]" not in Path(f"/proc/{pid}/cmdline").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_counts_survive_a_worker_replacement(drover: DroverLauncher, tmp_path: Path) -> None:
    server, address = serve(drover, tmp_path, workers=1)
    for _ in range(4):
        requests.get(server.url + "/x", timeout=10)
    wait_for(address, lambda d: total_requests(d) == 5)
    old = worker_pids(server)[1]
    os.kill(old, signal.SIGTERM)  # the master replaces it
    server.wait_for_log(rf"booting worker 1 \(pid (?!{old},)\d+,")
    document = wait_for(address, lambda d: d["workers"][0]["pid"] != old
                        and d["workers"][0]["respawn_count"] == 1)
    assert document["workers"][0]["requests"] == 5  # not reset by the respawn
    assert document["workers"][0]["pid"] == worker_pids(server)[1]


# -- addresses and robustness ---------------------------------------------------------------------


def test_unix_and_abstract_stats_addresses(drover: DroverLauncher, tmp_path: Path) -> None:
    path = tmp_path / "stats.sock"
    _, address = serve(drover, tmp_path, "--stats", str(path), workers=1)
    assert address == str(path)
    check_exporter_shape(read_raw(str(path)))
    name = f"@drover-test-stats-{os.getpid()}-{tmp_path.name}"
    server, address = serve(drover, tmp_path, "--stats", name, workers=1)
    assert address == name
    check_exporter_shape(read_raw(name))
    assert server.stop() == 0
    drover.servers[0].stop()
    assert not path.exists()  # removed at exit


def test_a_stuck_stats_client_does_not_stall_the_master(drover: DroverLauncher,
                                                        tmp_path: Path) -> None:
    server, address = serve(drover, tmp_path, "--stats-http", workers=1)
    stuck = connect_stats(address)  # sends nothing
    half = connect_stats(address)
    half.sendall(b"GET / HTTP/1.1\r\n")  # never finishes its head
    try:
        for _ in range(3):
            started = time.monotonic()
            read_http(address)
            assert time.monotonic() - started < 2.0
        assert requests.get(server.url + "/", timeout=10).status_code == 200
        stuck.settimeout(15)
        assert stuck.recv(10) == b""  # closed by the master after its deadline
    finally:
        stuck.close()
        half.close()


def test_stats_address_in_use_is_an_error(drover: DroverLauncher, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "statusapp.py").write_text(STATUS_APP)
        server = drover("--chdir", str(tmp_path), "--stats", f"127.0.0.1:{port}", "statusapp",
                        wait=False)
        assert server.proc.wait(20) == 1
    assert "(--stats)" in server.log()
