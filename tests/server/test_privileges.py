"""Privileges and files: --uid/--gid, --umask, --chown-socket, --pidfile, --daemonize, vacuum.

The tests run as root (the suite's machine does), so the drop to another user is real: the
Uid/Gid/Groups lines of /proc/PID/status are read for the master and every worker.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from lifecycle import alive, group_pids, python_for, shared_dir, status_ids, wait_for, wait_gone

from tests.conftest import REPO, DroverLauncher, Server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")

NOBODY = 65534
WWW_DATA = 33


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory owned by nobody, so that the dropped master can remove its files there."""
    with shared_dir(owner="nobody") as path:
        yield path


def worker_pids(server: Server) -> list[int]:
    return [int(p) for p in re.findall(r"booting worker \d+ \(pid (\d+)\)", server.log())]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("DROVER_", "LISTEN_"))}


def run_drover(*args: str, python: str | None = None, env: dict[str, str] | None = None,
               user: str | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run drover to completion (commands that must exit by themselves), maybe as ``user``."""
    preexec = None
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user)

        def preexec() -> None:
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)

    return subprocess.run([python or sys.executable, "-m", "drover", *args], text=True,
                          capture_output=True, timeout=timeout, cwd=str(REPO),
                          env={**clean_env(), **(env or {})}, preexec_fn=preexec,
                          start_new_session=True)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "[ERROR]" in line or "error:" in line]


# -- dropping privileges ---------------------------------------------------------------------


@pytest.mark.parametrize(("options", "uid", "gid"), [
    (("--uid", "nobody", "--gid", "www-data"), NOBODY, WWW_DATA),
    (("--user", str(WWW_DATA)), WWW_DATA, WWW_DATA),  # a number; the group from passwd
])
def test_master_and_workers_run_as_the_user_after_binding(
        drover: DroverLauncher, options: tuple[str, ...], uid: int, gid: int) -> None:
    python, env = python_for("nobody")
    with shared_dir() as run:
        os.chown(run, uid, gid)
        sock, pidfile = run / "app.sock", run / "drover.pid"
        server = drover("--http", "127.0.0.1:0", "--uwsgi", str(sock), "--workers", "2",
                        "--pidfile", str(pidfile), *options, python=python, env=env)
        assert requests.get(server.url + "/", timeout=10).status_code == 200
        server.wait_for_log(r"ready: 2 worker")
        for pid in (server.proc.pid, *worker_pids(server)):
            ids = status_ids(pid)
            assert ids["Uid"] == [uid] * 4, (pid, ids)
            assert ids["Gid"] == [gid] * 4, (pid, ids)
            assert 0 not in ids["Groups"] and gid in ids["Groups"], (pid, ids)
        # The socket (bound as root) was handed to the user, so it can also remove it.
        st = os.stat(sock)
        assert stat.S_ISSOCK(st.st_mode) and (st.st_uid, st.st_gid) == (uid, gid)
        assert pidfile.read_text() == f"{server.proc.pid}\n"
        assert server.stop(signal.SIGTERM) == 0
        assert not sock.exists() and not pidfile.exists()
        assert group_pids(server.proc.pid) == []


def test_umask_chmod_and_chown_socket(drover: DroverLauncher, tmp_path: Path) -> None:
    masked, chowned = tmp_path / "masked.sock", tmp_path / "chowned.sock"
    pidfile = tmp_path / "drover.pid"
    server = drover("--umask", "027", "--uwsgi", str(masked), "--pidfile", str(pidfile),
                    "--workers", "1")
    assert stat.S_IMODE(os.stat(masked).st_mode) == 0o750  # 777 & ~027
    assert stat.S_IMODE(os.stat(pidfile).st_mode) == 0o640  # 644 & ~027
    assert server.stop() == 0
    server = drover("--uwsgi", str(chowned), "--chmod-socket", "660", "--chown-socket",
                    "nobody:www-data", "--workers", "1")
    st = os.stat(chowned)
    assert stat.S_IMODE(st.st_mode) == 0o660 and (st.st_uid, st.st_gid) == (NOBODY, WWW_DATA)
    # The master did not drop privileges: only the socket changed hands.
    assert status_ids(server.proc.pid)["Uid"][0] == 0
    assert server.stop() == 0
    assert not chowned.exists() and not masked.exists() and not pidfile.exists()


# -- the pidfile -----------------------------------------------------------------------------


def test_stale_pidfile_is_replaced_and_a_live_one_refused(drover: DroverLauncher,
                                                          tmp_path: Path) -> None:
    pidfile = tmp_path / "drover.pid"
    gone = subprocess.Popen(["true"])
    gone.wait()
    pidfile.write_text(f"{gone.pid}\n")
    server = drover("--pidfile", str(pidfile), "--workers", "1")
    assert pidfile.read_text() == f"{server.proc.pid}\n"
    assert f"replacing the stale pidfile {pidfile} (pid {gone.pid} is gone)" in server.log()

    sock = tmp_path / "second.sock"
    second = run_drover("--uwsgi", str(sock), "--pidfile", str(pidfile))
    assert second.returncode == 1
    errors = error_lines(second.stderr)
    assert len(errors) == 1, second.stderr
    assert (f"--pidfile {pidfile}: a running process (pid {server.proc.pid}) holds it"
            in errors[0])
    assert not sock.exists()  # refused before binding
    assert pidfile.read_text() == f"{server.proc.pid}\n"  # the running master's, untouched
    assert server.stop() == 0
    assert not pidfile.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT])
def test_socket_and_pidfile_removed_on_every_stop(drover: DroverLauncher, tmp_path: Path,
                                                  signum: signal.Signals) -> None:
    sock, pidfile = tmp_path / "app.sock", tmp_path / "drover.pid"
    server = drover("--uwsgi", str(sock), "--pidfile", str(pidfile), "--workers", "2",
                    "--vacuum")
    assert sock.exists() and pidfile.exists()
    assert server.stop(signum) == 0
    assert not sock.exists() and not pidfile.exists()
    assert group_pids(server.proc.pid) == []


def test_socket_and_pidfile_removed_when_the_app_cannot_load(tmp_path: Path) -> None:
    sock, pidfile = tmp_path / "app.sock", tmp_path / "drover.pid"
    done = run_drover("--uwsgi", str(sock), "--pidfile", str(pidfile), "no_such_module:app")
    assert done.returncode == 1
    assert "no_such_module" in done.stderr
    assert not sock.exists() and not pidfile.exists()


# -- bad input: one line naming the option and the path, non-zero status, nothing left -------


@pytest.mark.parametrize(("options", "status", "expected"), [
    (("--uid", "no-such-user"), 2, "--uid: no user named 'no-such-user'"),
    (("--gid", "no-such-group"), 2, "--gid: no group named 'no-such-group'"),
    (("--chown-socket", ":no-such-group"), 2, "--chown-socket: no group named 'no-such-group'"),
    (("--uid", "4242"), 1, "--uid 4242: no passwd entry gives its group; add --gid"),
    (("--pidfile", "/nonexistent/run/drover.pid"), 1,
     "--pidfile /nonexistent/run/drover.pid: directory /nonexistent/run does not exist"),
    (("--uwsgi", "/nonexistent/run/app.sock"), 1,
     "cannot listen on /nonexistent/run/app.sock (--uwsgi from command line): directory "
     "/nonexistent/run does not exist"),
    (("--daemonize", "/nonexistent/log/drover.log"), 1,
     "--daemonize /nonexistent/log/drover.log: directory /nonexistent/log does not exist"),
])
def test_bad_setting_is_one_line_and_leaves_nothing(tmp_path: Path, options: tuple[str, ...],
                                                    status: int, expected: str) -> None:
    sock, pidfile = tmp_path / "first.sock", tmp_path / "drover.pid"
    args = ["--uwsgi", str(sock), *options]
    if "--pidfile" not in options:
        args += ["--pidfile", str(pidfile)]
    done = run_drover(*args)
    assert done.returncode == status, done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 1 and expected in errors[0], done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no socket, no pidfile


def test_pidfile_in_a_directory_the_user_cannot_write(tmp_path: Path) -> None:
    python, env = python_for("nobody")
    with shared_dir() as root_owned, shared_dir(owner="nobody") as own:
        sock = own / "app.sock"
        done = run_drover("--uwsgi", str(sock), "--pidfile", str(root_owned / "drover.pid"),
                          python=python, env=env, user="nobody")
        assert done.returncode == 1, done.stderr
        errors = error_lines(done.stderr)
        assert len(errors) == 1, done.stderr
        assert f"--pidfile {root_owned}/drover.pid: directory {root_owned} is not writable" \
            in errors[0]
        assert list(own.iterdir()) == [] and list(root_owned.iterdir()) == []


def test_switching_user_without_root_is_refused(tmp_path: Path) -> None:
    python, env = python_for("nobody")
    with shared_dir(owner="nobody") as own:
        done = run_drover("--uwsgi", str(own / "app.sock"), "--uid", "www-data",
                          python=python, env=env, user="nobody")
        assert done.returncode == 1
        errors = error_lines(done.stderr)
        assert len(errors) == 1 and "needs root" in errors[0], done.stderr
        assert list(own.iterdir()) == []


# -- daemonizing -----------------------------------------------------------------------------


def test_daemonize_returns_once_serving_and_detaches(tmp_path: Path) -> None:
    log, pidfile, sock = tmp_path / "drover.log", tmp_path / "drover.pid", tmp_path / "a.sock"
    done = run_drover("--daemonize", str(log), "--pidfile", str(pidfile), "--workers", "1",
                      "--http", "127.0.0.1:0", "--uwsgi", str(sock))
    daemon = int(pidfile.read_text()) if pidfile.exists() else 0
    try:
        assert done.returncode == 0, done.stderr + (log.read_text() if log.exists() else "")
        assert done.stdout == "" and done.stderr == ""  # everything goes to the log file
        assert alive(daemon)
        assert os.getsid(daemon) != os.getsid(0) and os.getsid(daemon) != daemon
        assert os.readlink(f"/proc/{daemon}/fd/0") == "/dev/null"
        assert os.readlink(f"/proc/{daemon}/fd/2") == str(log)
        text = log.read_text()
        assert "ready: 1 worker(s) serving" in text
        port = re.search(r"listening at http://127\.0\.0\.1:(\d+)", text)
        assert port is not None
        assert requests.get(f"http://127.0.0.1:{port.group(1)}/", timeout=10).status_code == 200
        os.kill(daemon, signal.SIGTERM)
        wait_gone(daemon)
        wait_for(lambda: not pidfile.exists() and not sock.exists(), 5,
                 "pidfile and socket removed")
        assert "master exiting (status 0)" in log.read_text()
    finally:
        if daemon and alive(daemon):
            os.killpg(os.getpgid(daemon), signal.SIGKILL)


def test_daemonize_reports_a_failed_start(tmp_path: Path) -> None:
    log, pidfile, sock = tmp_path / "drover.log", tmp_path / "drover.pid", tmp_path / "a.sock"
    done = run_drover("--daemonize", str(log), "--pidfile", str(pidfile), "--uwsgi", str(sock),
                      "no_such_module:app")
    assert done.returncode == 1
    assert f"the daemon failed to start; see {log}" in done.stderr
    assert "no_such_module" in log.read_text()
    wait_for(lambda: not pidfile.exists() and not sock.exists(), 10, "files removed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drover.log"]


def test_unix_socket_reaches_a_dropped_master(drover: DroverLauncher,
                                              nobody_dir: Path) -> None:
    """--uid alone: the socket is the user's, so a client running as that user connects."""
    python, env = python_for("nobody")
    sock = nobody_dir / "app.sock"
    server = drover("--http", str(sock), "--uid", "nobody", "--workers", "1", python=python,
                    env=env)
    probe = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
             "s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); print(s.recv(12).decode())")
    done = run_as("nobody", python, probe, str(sock))
    assert done.stdout.startswith("HTTP/1.1 200"), done.stderr
    assert server.stop() == 0
    assert not sock.exists()


def run_as(user: str, python: str, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    import pwd

    entry = pwd.getpwnam(user)

    def demote() -> None:
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    return subprocess.run([python, "-c", code, *args], text=True, capture_output=True,
                          timeout=15, preexec_fn=demote, cwd="/")


def test_chown_socket_that_is_not_permitted_names_the_option() -> None:
    python, env = python_for("nobody")
    with shared_dir(owner="nobody") as own:
        sock = own / "app.sock"
        done = run_drover("--uwsgi", str(sock), "--chown-socket", "www-data", python=python,
                          env=env, user="nobody")
        assert done.returncode == 1
        errors = error_lines(done.stderr)
        assert len(errors) == 1, done.stderr
        assert (f"cannot listen on {sock} (--uwsgi from command line): cannot set its owner "
                "(--chown-socket): Operation not permitted") in errors[0]
        assert list(own.iterdir()) == []
