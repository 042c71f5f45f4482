"""USR2 (and HUP with --preload): a new master inherits the sockets; not one connection refused.

Clients hammer HTTP (fresh and keep-alive connections) and uwsgi over a unix socket while the
master is replaced; every request must succeed. The new master is not the test's child (its
predecessor started it), so it is watched through /proc and its pidfile.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import uwsgi_client
from lifecycle import alive, group_pids, python_for, shared_dir, status_ids, wait_for, wait_gone

from tests.conftest import REPO, DroverLauncher, Server

APP = '''
import os
VERSION = {version!r}
def application(environ, start_response):
    body = f"{{VERSION}} {{os.getpid()}} {{os.getppid()}}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def write_app(directory: Path, version: str) -> None:
    (directory / "upapp.py").write_text(APP.format(version=version))


class Hammer:
    """Clients that send requests without pause until stopped; they record every failure."""

    def __init__(self, server: Server, sock: Path | None) -> None:
        self.server = server
        self.sock = sock
        self.failures: list[str] = []
        self.answers: list[str] = []  # "VERSION PID PPID" of each answer
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._http, args=(True,)),
                        threading.Thread(target=self._http, args=(False,))]
        if sock is not None:
            self.threads.append(threading.Thread(target=self._uwsgi))

    def _http(self, keep_alive: bool) -> None:
        session = requests.Session() if keep_alive else None
        while not self.stop.is_set():
            try:
                get = session.get if session else requests.get
                response = get(self.server.url + "/", timeout=10)
                if response.status_code != 200:
                    self.failures.append(f"HTTP status {response.status_code}")
                self.answers.append(response.text)
            except requests.RequestException as exc:
                self.failures.append(f"HTTP (keep-alive {keep_alive}): {exc!r}")

    def _uwsgi(self) -> None:
        while not self.stop.is_set():
            try:
                answer = uwsgi_client.get(f"unix:{self.sock}")
                if not answer.data.startswith(b"HTTP/1.1 200"):
                    self.failures.append(f"uwsgi answer {answer.data[:60]!r}")
                self.answers.append(answer.body.decode())
            except OSError as exc:
                self.failures.append(f"uwsgi: {exc!r}")

    def __enter__(self) -> Hammer:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)

    def wait_answers(self, predicate: object, what: str) -> None:
        assert callable(predicate)
        wait_for(lambda: any(predicate(a) for a in self.answers[-20:]), 15, what)


def new_master_pid(server: Server) -> int:
    match = server.wait_for_log(r"starting a new master \(pid (\d+)\)")
    return int(match.group(1))


def log_text(server: Server) -> str:
    return server.log_path.read_text("utf-8", "replace")


def wait_log(server: Server, pattern: str, timeout: float = 20.0) -> re.Match[str]:
    """Like Server.wait_for_log, but also after the first master (the test's child) exited."""
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while not (match := regex.search(log_text(server))):
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} not in the log:\n{log_text(server)}")
        time.sleep(0.05)
    return match


@pytest.fixture
def masters() -> Iterator[list[int]]:
    """New masters a test started: at teardown TERM then KILL any still running (they are not
    the test's children, so the launcher's cleanup cannot wait for them)."""
    started: list[int] = []
    try:
        yield started
    finally:
        for pid in started:
            if alive(pid):
                os.kill(pid, signal.SIGTERM)
                with contextlib.suppress(AssertionError):
                    wait_gone(pid, 10)
            if alive(pid):
                os.killpg(os.getpgid(pid), signal.SIGKILL)


def test_usr2_hands_the_sockets_to_a_new_master_without_refusing_a_connection(
        drover: DroverLauncher, tmp_path: Path, masters: list[int]) -> None:
    write_app(tmp_path, "v1")
    sock, pidfile = tmp_path / "app.sock", tmp_path / "drover.pid"
    server = drover("--workers", "2", "--chdir", str(tmp_path), "--http", "127.0.0.1:0",
                    "--uwsgi", str(sock), "--pidfile", str(pidfile), "upapp")
    old = server.proc.pid
    inode = sock.stat().st_ino
    with Hammer(server, sock) as hammer:
        time.sleep(0.3)
        write_app(tmp_path, "v2")
        workers = [int(p) for p in re.findall(r"booting worker \d+ \(pid (\d+),",
                                              server.log())]
        for pid in workers:
            os.kill(pid, signal.SIGUSR2)  # meant for the master: workers ignore it
        server.send_signal(signal.SIGUSR2)
        new = new_master_pid(server)
        masters.append(new)
        wait_log(server, rf"the new master \(pid {new}\) is ready; retiring this one")
        assert server.proc.wait(20) == 0  # the old master retired by itself
        hammer.wait_answers(lambda a: a.startswith("v2 ") and a.endswith(f" {new}"),
                            "answers from the new master's workers")
        time.sleep(0.3)
    assert hammer.failures == []
    assert any(a.startswith(f"v1 {w} ") for a in hammer.answers for w in workers)  # spanned it
    assert alive(new) and not alive(old)
    assert pidfile.read_text() == f"{new}\n"
    assert sock.stat().st_ino == inode  # the same socket, never unlinked
    assert all(alive(pid) is False for pid in workers)
    assert requests.get(server.url + "/", timeout=10).text.startswith("v2 ")
    os.kill(new, signal.SIGTERM)
    wait_gone(new)
    assert f"[{new}] [INFO] master exiting (status 0)" in log_text(server)
    assert not sock.exists() and not pidfile.exists()
    assert group_pids(old) == []


def test_usr2_with_code_that_does_not_load_keeps_the_old_master(drover: DroverLauncher,
                                                                tmp_path: Path) -> None:
    write_app(tmp_path, "v1")
    sock, pidfile = tmp_path / "app.sock", tmp_path / "drover.pid"
    server = drover("--workers", "1", "--chdir", str(tmp_path), "--uwsgi", str(sock),
                    "--http", "127.0.0.1:0", "--pidfile", str(pidfile), "upapp")
    (tmp_path / "upapp.py").write_text("raise ImportError('half-deployed')\n")
    server.send_signal(signal.SIGUSR2)
    new = new_master_pid(server)
    server.wait_for_log(rf"the new master \(pid {new}\) exited before it was ready")
    wait_gone(new)
    assert server.running
    assert requests.get(server.url + "/", timeout=10).text.startswith("v1 ")
    assert pidfile.read_text() == f"{server.proc.pid}\n" and sock.exists()
    assert server.stop() == 0
    assert not sock.exists() and not pidfile.exists()


def test_hup_with_preload_re_executes_the_master_to_load_new_code(
        drover: DroverLauncher, tmp_path: Path, masters: list[int]) -> None:
    write_app(tmp_path, "v1")
    server = drover("--workers", "2", "--preload", "--chdir", str(tmp_path), "upapp")
    with Hammer(server, None) as hammer:
        time.sleep(0.3)
        write_app(tmp_path, "v2")
        server.send_signal(signal.SIGHUP)
        match = server.wait_for_log(r"SIGHUP with --preload: starting a new master \(pid (\d+)\)")
        new = int(match.group(1))
        masters.append(new)
        assert server.proc.wait(20) == 0
        hammer.wait_answers(lambda a: a.startswith("v2 "), "answers with the new code")
        time.sleep(0.3)
    assert hammer.failures == []
    answer = requests.get(server.url + "/", timeout=10).text
    assert answer.startswith("v2 ") and answer.endswith(f" {new}")
    os.kill(new, signal.SIGTERM)
    wait_gone(new)
    assert group_pids(server.proc.pid) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_usr2_after_dropping_privileges(drover: DroverLauncher, masters: list[int]) -> None:
    """The new master starts as the user the old one dropped to, and takes over its files."""
    python, env = python_for("nobody")
    with shared_dir(owner="nobody") as run:
        sock, pidfile = run / "app.sock", run / "drover.pid"
        server = drover("--workers", "1", "--uid", "nobody", "--uwsgi", str(sock),
                        "--http", "127.0.0.1:0", "--pidfile", str(pidfile), python=python,
                        env=env)
        server.send_signal(signal.SIGUSR2)
        new = new_master_pid(server)
        masters.append(new)
        assert server.proc.wait(20) == 0
        assert status_ids(new)["Uid"] == [65534] * 4
        wait_for(lambda: pidfile.read_text() == f"{new}\n", 10, "pidfile rewritten")
        assert uwsgi_client.get(f"unix:{sock}").data.startswith(b"HTTP/1.1 200")
        os.kill(new, signal.SIGTERM)
        wait_gone(new)
        assert not sock.exists() and not pidfile.exists()
        assert group_pids(server.proc.pid) == []


def test_usr2_of_a_daemon(tmp_path: Path, masters: list[int]) -> None:
    """The new master of a daemon stays a daemon (it is not daemonized again), writes to the
    same log file, and takes over the pidfile."""
    log, pidfile, sock = tmp_path / "drover.log", tmp_path / "drover.pid", tmp_path / "a.sock"
    write_app(tmp_path, "v1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROVER_")}
    done = subprocess.run(
        [sys.executable, "-m", "drover", "--daemonize", str(log), "--pidfile", str(pidfile),
         "--workers", "1", "--uwsgi", str(sock), "--chdir", str(tmp_path), "upapp"],
        capture_output=True, text=True, timeout=30, cwd=str(REPO), env=env)
    assert done.returncode == 0, done.stderr
    old = int(pidfile.read_text())
    masters.append(old)
    session = os.getsid(old)
    write_app(tmp_path, "v2")
    os.kill(old, signal.SIGUSR2)
    wait_for(lambda: pidfile.read_text() != f"{old}\n", 20, "the pidfile names the new master")
    new = int(pidfile.read_text())
    masters.append(new)
    wait_gone(old)
    assert uwsgi_client.get(f"unix:{sock}").body.startswith(b"v2 ")
    assert os.getsid(new) == session != os.getsid(0)
    assert f"[{new}] [INFO] ready: 1 worker(s) serving" in log.read_text()
    os.kill(new, signal.SIGTERM)
    wait_gone(new)
    wait_for(lambda: not pidfile.exists() and not sock.exists(), 5, "files removed")
