"""The master and its workers: startup errors, respawn, signals, reload, recycling, timeouts."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, DroverLauncher, Server

PID_APP = '''
import os
VERSION = {version!r}
def application(environ, start_response):
    if environ["PATH_INFO"] == "/sleep":
        import time
        time.sleep(float(environ["QUERY_STRING"] or "1"))
    body = f"{{VERSION}} {{os.getpid()}}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def write_app(directory: Path, version: str, name: str = "pidapp.py") -> Path:
    path = directory / name
    path.write_text(PID_APP.format(version=version))
    return path


def run_drover(*args: str, timeout: float = 20.0, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run drover to completion (for commands that must exit by themselves)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DROVER_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "drover", *args], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=str(cwd or REPO),
                          start_new_session=True)


def worker_pids(server: Server) -> list[int]:
    return [int(pid) for pid in re.findall(r"booting worker \d+ \(pid (\d+),", server.log())]


def get(server: Server, path: str = "/", timeout: float = 10.0) -> requests.Response:
    return requests.get(server.url + path, timeout=timeout)


# -- configuration and app loading ---------------------------------------------------------------


def test_bad_value_on_command_line_names_the_option_and_exits_2() -> None:
    result = run_drover("--workers", "many")
    assert result.returncode == 2
    assert "--workers" in result.stderr and "command line" in result.stderr


def test_bad_environment_value_names_the_variable() -> None:
    result = run_drover(env={"DROVER_TIMEOUT": "soon"})
    assert result.returncode == 2
    assert "--timeout" in result.stderr and "DROVER_TIMEOUT" in result.stderr


def test_unknown_environment_setting_is_an_error() -> None:
    result = run_drover(env={"DROVER_WORKRS": "2"})
    assert result.returncode == 2
    assert "DROVER_WORKRS" in result.stderr and "unknown" in result.stderr


def test_command_line_wins_over_environment(drover: DroverLauncher) -> None:
    server = drover("--workers", "1", env={"DROVER_WORKERS": "3"})
    assert "starting 1 worker(s)" in server.log()


def test_bad_listen_address_is_a_config_error() -> None:
    result = run_drover("--http", "localhost:notaport")
    assert result.returncode == 2
    assert "--http" in result.stderr


def test_version_and_grouped_help() -> None:
    version = run_drover("--version")
    assert version.returncode == 0 and version.stdout.startswith("drover ")
    usage = run_drover("--help")
    assert usage.returncode == 0
    for topic in ("Sockets:", "Application:", "Processes:", "HTTP limits and timeouts:"):
        assert topic in usage.stdout


def test_missing_module_exits_nonzero_with_a_clear_line_and_no_respawn_loop() -> None:
    result = run_drover("--http", "127.0.0.1:0", "--workers", "2", "no_such_module_xyz:app")
    assert result.returncode != 0
    assert "module 'no_such_module_xyz' not found" in result.stderr
    assert len(re.findall(r"booting worker", result.stderr)) <= 2


def test_missing_callable_is_named(tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    result = run_drover("--http", "127.0.0.1:0", "--chdir", str(tmp_path), "pidapp:nothing")
    assert result.returncode != 0
    assert "no 'nothing' in module 'pidapp'" in result.stderr


def test_not_callable_is_named(tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    result = run_drover("--http", "127.0.0.1:0", "--chdir", str(tmp_path), "pidapp:VERSION")
    assert result.returncode != 0
    assert "'VERSION' in module 'pidapp' is not callable" in result.stderr


def test_import_error_prints_traceback_then_a_summary(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    result = run_drover("--http", "127.0.0.1:0", "--chdir", str(tmp_path), "broken:app")
    assert result.returncode != 0
    assert "boom at import" in result.stderr
    assert "importing module 'broken' raised RuntimeError" in result.stderr
    # The app's own frame, not Drover's or importlib's on the way to it.
    assert "Traceback of the app's code" in result.stderr
    assert 'broken.py", line 1' in result.stderr
    assert "importlib" not in result.stderr and "drover/loader.py" not in result.stderr


def test_failure_inside_a_factory_says_so(tmp_path: Path) -> None:
    (tmp_path / "factory.py").write_text(
        "def create_app():\n"
        "    return configure()\n"
        "def configure():\n"
        "    raise KeyError('DATABASE_URL')\n")
    result = run_drover("--http", "127.0.0.1:0", "--chdir", str(tmp_path),
                        "factory:create_app()")
    assert result.returncode != 0
    assert ("calling the factory 'create_app()' of module 'factory' raised KeyError"
            in result.stderr)
    assert "in configure" in result.stderr and "importing" not in result.stderr


@pytest.mark.parametrize("preload", [False, True])
def test_factory_named_without_parentheses_is_refused_at_load(tmp_path: Path,
                                                             preload: bool) -> None:
    (tmp_path / "factory.py").write_text(
        "def create_app():\n"
        "    def app(environ, start_response):\n"
        "        start_response('200 OK', [])\n"
        "        return [b'ok']\n"
        "    return app\n")
    args = ["--http", "127.0.0.1:0", "--chdir", str(tmp_path), "factory:create_app"]
    result = run_drover(*args, *(["--preload"] if preload else []))
    assert result.returncode != 0
    assert "cannot be a WSGI app" in result.stderr
    assert "'factory:create_app()'" in result.stderr


def test_wsgi_callables_of_every_shape_are_accepted(drover: DroverLauncher,
                                                    tmp_path: Path) -> None:
    """A class (its instances are the iterable), an object with __call__, a function with
    extra optional arguments: all callable as (environ, start_response)."""
    (tmp_path / "shapes.py").write_text(
        "class AsClass:\n"
        "    def __init__(self, environ, start_response):\n"
        "        start_response('200 OK', [])\n"
        "    def __iter__(self):\n"
        "        yield b'class'\n"
        "class WithCall:\n"
        "    def __call__(self, environ, start_response, *rest):\n"
        "        start_response('200 OK', [])\n"
        "        return [b'object']\n"
        "instance = WithCall()\n"
        "def function(environ, start_response, extra=None):\n"
        "    start_response('200 OK', [])\n"
        "    return [b'function']\n")
    for name, body in (("AsClass", "class"), ("instance", "object"), ("function", "function")):
        server = drover("--workers", "1", "--chdir", str(tmp_path), f"shapes:{name}")
        assert get(server).text == body
        server.stop()


def test_preload_failure_exits_before_forking(tmp_path: Path) -> None:
    result = run_drover("--http", "127.0.0.1:0", "--preload", "--chdir", str(tmp_path),
                        "absent:app")
    assert result.returncode == 1
    assert "booting worker" not in result.stderr


def test_app_given_as_a_file_path(drover: DroverLauncher, tmp_path: Path) -> None:
    path = write_app(tmp_path, "file-v1")
    server = drover("--workers", "1", str(path))
    assert get(server).text.startswith("file-v1 ")


def test_module_alone_finds_application(drover: DroverLauncher, tmp_path: Path) -> None:
    write_app(tmp_path, "mod-v1")
    server = drover("--workers", "1", "--pythonpath", str(tmp_path), "pidapp")
    assert get(server).text.startswith("mod-v1 ")


def test_factory_with_literal_arguments(drover: DroverLauncher, tmp_path: Path) -> None:
    (tmp_path / "factory.py").write_text(
        "def create_app(greeting, punct='.'):\n"
        "    def app(environ, start_response):\n"
        "        start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "        return [(greeting + punct).encode()]\n"
        "    return app\n")
    server = drover("--workers", "1", "--chdir", str(tmp_path),
                    "factory:create_app('hello', punct='!')")
    assert get(server).text == "hello!"


def test_welcome_page_without_an_app(drover: DroverLauncher) -> None:
    server = drover("--workers", "1")
    response = get(server)
    assert response.status_code == 200
    assert "Drover is running" in response.text
    assert f"127.0.0.1:{server.port}" in response.text
    assert response.headers["Content-Type"].startswith("text/html")


def test_http_on_a_unix_socket(drover: DroverLauncher, tmp_path: Path) -> None:
    path = tmp_path / "http.sock"
    server = drover("--http", f"unix:{path}", "--workers", "1", ready_path=None)
    server.wait_for_log("worker 1 .* ready")
    raw = server.connect(address=f"unix:{path}")
    with raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := raw.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    server.stop()
    assert not path.exists()


# -- process management ------------------------------------------------------------------------


def test_process_titles_name_master_and_workers(drover: DroverLauncher, tmp_path: Path) -> None:
    write_app(tmp_path, "t")
    server = drover("--workers", "1", "--chdir", str(tmp_path), "pidapp")
    master = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
    worker = Path(f"/proc/{worker_pids(server)[0]}/cmdline").read_bytes()
    assert master.startswith(b"drover: master [pidapp]")
    assert worker.startswith(b"drover: worker 1 [pidapp]")


def test_killed_worker_is_replaced(drover: DroverLauncher, tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    server = drover("--workers", "1", "--chdir", str(tmp_path), "pidapp")
    first = int(get(server).text.split()[1])
    os.kill(first, signal.SIGKILL)
    server.wait_for_log(rf"worker 1 \(pid {first}, generation 0\) died \(signal SIGKILL\); "
                        "replacing it")
    server.wait_for_log(rf"worker 1 \(pid (?!{first})\d+, generation \d+\) ready")
    assert int(get(server).text.split()[1]) != first


def test_sigterm_lets_requests_in_flight_finish(drover: DroverLauncher, tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    server = drover("--workers", "1", "--chdir", str(tmp_path), "pidapp")
    results: list[requests.Response] = []
    client = threading.Thread(target=lambda: results.append(get(server, "/sleep?1.0")))
    client.start()
    time.sleep(0.3)
    assert server.stop(signal.SIGTERM) == 0
    client.join(10)
    assert results and results[0].status_code == 200


@pytest.mark.parametrize("threads", [1, 4])
def test_sigterm_serves_every_request_that_arrived_before_it(drover: DroverLauncher,
                                                             tmp_path: Path,
                                                             threads: int) -> None:
    """A burst of slow requests, then TERM: requests accepted but not started (their loop was
    in the app) and those still in the listen queue are all answered, with Connection: close."""
    write_app(tmp_path, "v1")
    server = drover("--workers", "1", "--threads", str(threads), "--chdir", str(tmp_path),
                    "pidapp")
    count = 5 * threads
    # Every request is on the wire before the signal (raw sockets: connected and sent).
    clients = []
    for _ in range(count):
        client = socket.create_connection((server.host, server.port), timeout=30)
        client.sendall(b"GET /sleep?0.5 HTTP/1.1\r\nHost: x\r\n\r\n")
        clients.append(client)
    time.sleep(0.2)  # at most `threads` of them started
    server.proc.send_signal(signal.SIGTERM)
    answers = []
    for client in clients:
        with client:
            data = b""
            with contextlib.suppress(OSError):
                while chunk := client.recv(65536):
                    data += chunk
        answers.append(data)
    assert server.proc.wait(30) == 0
    assert all(answer.startswith(b"HTTP/1.1 200 OK\r\n") for answer in answers), answers
    # (and every connection was closed by the server: each read above ended)


def test_sigquit_stops_at_once(drover: DroverLauncher, tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    server = drover("--workers", "2", "--chdir", str(tmp_path), "pidapp")
    threading.Thread(target=lambda: _swallow(lambda: get(server, "/sleep?20")),
                     daemon=True).start()
    time.sleep(0.3)
    started = time.monotonic()
    assert server.stop(signal.SIGQUIT) == 0
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGWINCH])
def test_stray_operator_signals_do_not_stop_the_server(drover: DroverLauncher, tmp_path: Path,
                                                       signum: signal.Signals) -> None:
    """USR1 and WINCH, to the master and to every worker, harm nothing (USR2 re-executes the
    master: tests/server/test_upgrade.py, which also sends it to workers)."""
    sock = tmp_path / "app.sock"
    write_app(tmp_path, "v1")
    server = drover("--workers", "2", "--chdir", str(tmp_path), "--http", "127.0.0.1:0",
                    "--uwsgi", str(sock), "pidapp")
    before = sorted(worker_pids(server))
    for pid in (server.proc.pid, *before):
        os.kill(pid, signum)
    if signum != signal.SIGWINCH:
        server.wait_for_log(rf"{signum.name}")
    time.sleep(0.5)
    assert server.proc.poll() is None
    assert get(server).status_code == 200
    assert sorted(worker_pids(server)) == before  # no worker died and was replaced
    assert sock.exists()
    assert server.stop(signal.SIGTERM) == 0
    assert not sock.exists()


def _swallow(fn: Callable[[], object]) -> None:
    with contextlib.suppress(requests.RequestException):
        fn()


def test_sighup_reloads_fresh_code_without_failing_a_request(drover: DroverLauncher,
                                                            tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    server = drover("--workers", "2", "--chdir", str(tmp_path), "pidapp")
    assert get(server).text.startswith("v1 ")
    failures: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()

    def hammer() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                response = session.get(server.url + "/", timeout=10)
                if response.status_code != 200:
                    failures.append(f"status {response.status_code}")
                seen.add(response.text.split()[0])
            except requests.RequestException as exc:
                failures.append(repr(exc))
            try:
                seen.add(requests.get(server.url + "/", timeout=10).text.split()[0])
            except requests.RequestException as exc:
                failures.append("fresh connection: " + repr(exc))

    clients = [threading.Thread(target=hammer) for _ in range(4)]
    for client in clients:
        client.start()
    try:
        time.sleep(0.5)
        write_app(tmp_path, "v2")
        server.send_signal(signal.SIGHUP)
        server.wait_for_log("reload complete", timeout=20)
        deadline = time.monotonic() + 10
        while "v2" not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        stop.set()
        for client in clients:
            client.join(15)
    assert failures == []
    assert "v2" in seen
    assert all(get(server).text.startswith("v2 ") for _ in range(10))


def test_sighup_with_broken_code_keeps_the_old_workers(drover: DroverLauncher,
                                                      tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    server = drover("--workers", "1", "--chdir", str(tmp_path), "pidapp")
    before = get(server).text
    (tmp_path / "pidapp.py").write_text("raise ImportError('half-deployed')\n")
    server.send_signal(signal.SIGHUP)
    server.wait_for_log("reload failed", timeout=20)
    assert server.running
    assert get(server).text == before


def test_preload_imports_the_app_in_the_master(drover: DroverLauncher, tmp_path: Path) -> None:
    (tmp_path / "preloaded.py").write_text(
        "import os\nLOADED_IN = os.getpid()\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [str(LOADED_IN).encode()]\n")
    server = drover("--workers", "1", "--preload", "--chdir", str(tmp_path), "preloaded:app")
    assert int(get(server).text) == server.proc.pid


def test_max_requests_recycles_the_worker(drover: DroverLauncher, tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    server = drover("--workers", "1", "--max-requests", "5", "--chdir", str(tmp_path),
                    "pidapp", ready_path=None)
    server.wait_for_log("worker 1 .* ready")
    pids = set()
    for _ in range(12):
        response = requests.get(server.url, timeout=10, headers={"Connection": "close"})
        assert response.status_code == 200
        pids.add(int(response.text.split()[1]))
        time.sleep(0.05)
    assert len(pids) >= 2
    server.wait_for_log(r"recycling worker 1 \(pid \d+, generation 0\): it served 5 requests "
                        r"\(--max-requests 5\)")


def test_stuck_worker_is_killed_after_timeout(drover: DroverLauncher, tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    server = drover("--workers", "1", "--timeout", "2", "--chdir", str(tmp_path), "pidapp")
    stuck = int(get(server).text.split()[1])
    threading.Thread(target=lambda: _swallow(lambda: get(server, "/sleep?30", timeout=30)),
                     daemon=True).start()
    server.wait_for_log(rf"worker 1 \(pid {stuck}, generation \d+\) stuck", timeout=15)
    server.wait_for_log(rf"worker 1 \(pid (?!{stuck})\d+, generation 0\) ready", timeout=15)
    assert int(get(server).text.split()[1]) != stuck


def test_ttin_and_ttou_change_the_worker_count(drover: DroverLauncher, tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    server = drover("--workers", "1", "--chdir", str(tmp_path), "pidapp")
    server.send_signal(signal.SIGTTIN)
    server.wait_for_log(r"worker 2 \(pid \d+, generation \d+\) ready")
    server.send_signal(signal.SIGTTOU)
    server.wait_for_log(r"worker 2 \(pid \d+, generation \d+\) stopped")
    assert get(server).status_code == 200


MOUNT_APP = '''
def make(name):
    def app(environ, start_response):
        body = f"{name}|{environ['SCRIPT_NAME']}|{environ['PATH_INFO']}".encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]
    return app
'''


def test_mount_sets_script_name_and_longest_prefix_wins(drover: DroverLauncher,
                                                         tmp_path: Path) -> None:
    (tmp_path / "mounts.py").write_text(MOUNT_APP)
    server = drover("--workers", "1", "--chdir", str(tmp_path),
                    "--mount", "/blog=mounts:make('blog')",
                    "--mount", "/blog/admin=mounts:make('admin')", "mounts:make('root')")
    assert get(server, "/blog/post/1").text == "blog|/blog|/post/1"
    assert get(server, "/blog").text == "blog|/blog|"
    assert get(server, "/blog/admin/users").text == "admin|/blog/admin|/users"
    assert get(server, "/blogger").text == "root||/blogger"


def test_mount_without_a_root_app_answers_404_elsewhere(drover: DroverLauncher,
                                                        tmp_path: Path) -> None:
    (tmp_path / "mounts.py").write_text(MOUNT_APP)
    server = drover("--workers", "1", "--chdir", str(tmp_path),
                    "--mount", "/api=mounts:make('api')", ready_path="/api/")
    assert get(server, "/api/x").text == "api|/api|/x"
    assert get(server, "/other").status_code == 404


def test_access_log_writes_one_line_per_request(drover: DroverLauncher, tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    server = drover("--workers", "1", "--access-log", "--chdir", str(tmp_path), "pidapp")
    requests.get(server.url + "/logged?x=1", timeout=10)
    body = requests.get(server.url + "/logged?x=2", timeout=10).content
    server.wait_for_log(r'127\.0\.0\.1 - - \[[^]]+\] "GET /logged\?x=1 HTTP/1\.1" 200 \d+ ')
    # The byte count is the body's, for the one-piece fast path too.
    server.wait_for_log(rf'"GET /logged\?x=2 HTTP/1\.1" 200 {len(body)} "-" "python-requests')


def test_no_access_log_by_default(drover: DroverLauncher, tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    server = drover("--workers", "1", "--chdir", str(tmp_path), "pidapp")
    requests.get(server.url + "/quiet", timeout=10)
    assert '"GET /quiet' not in server.log()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_several_http_addresses_including_ipv6(drover: DroverLauncher, tmp_path: Path) -> None:
    if not _ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback")
    write_app(tmp_path, "v6")
    server = drover("--http", "[::1]:0", "--http", "127.0.0.1:0", "--workers", "1",
                    "--chdir", str(tmp_path), "pidapp")
    assert [a.split("://")[1].rsplit(":", 1)[0] for a in server.addresses] == ["[::1]",
                                                                                "127.0.0.1"]
    for address in server.addresses:
        assert requests.get(address + "/", timeout=10).text.startswith("v6 ")


FOOTPRINT_APP = """
import sys
HEAVY = ("asyncio", "uvloop", "email", "tempfile")
def application(environ, start_response):
    body = " ".join(name for name in HEAVY if name in sys.modules).encode() or b"none"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def test_worker_loads_no_heavy_modules_of_its_own(drover: DroverLauncher, tmp_path: Path) -> None:
    """Worker memory: a worker serving an app that imports nothing has not loaded asyncio,
    uvloop, email, nor tempfile (until a body spills). (ssl is loaded by the master, before
    the fork, so that OpenSSL's pages are shared.)"""
    (tmp_path / "footprint.py").write_text(FOOTPRINT_APP)
    server = drover("--workers", "1", "--chdir", str(tmp_path), "footprint")
    assert get(server).text == "none"
