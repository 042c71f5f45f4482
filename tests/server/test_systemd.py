"""systemd: socket activation (LISTEN_FDS) and Type=notify (NOTIFY_SOCKET), as systemd does them.

Sockets are made here, passed to Drover at fd 3 on with ``LISTEN_FDS``/``LISTEN_FDNAMES``, and
``LISTEN_PID`` is set by a one-line shell wrapper to its own pid before it execs Drover (so it
is Drover's pid, as systemd sets it). The notifications are read from a datagram socket this
test binds and names in ``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import uwsgi_client
from lifecycle import alive, group_pids, wait_gone

from tests.conftest import REPO, DroverLauncher


class NotifyListener:
    """The systemd side of sd_notify: a datagram socket that collects what Drover sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        # As systemd does: the kernel tells which process sent each message.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[str] = []
        self.senders: list[int] = []

    def wait_for(self, line: str, timeout: float = 15.0, after: int = 0) -> int:
        """Wait for a message containing ``line``; return its index in ``messages``."""
        deadline = time.monotonic() + timeout
        while True:
            for index, message in enumerate(self.messages[after:], after):
                if line in message.split("\n"):
                    return index
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {line!r} notification in {timeout} s: {self.messages}")
            self.sock.settimeout(left)
            with contextlib.suppress(TimeoutError):
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
                sender = 0
                for level, kind, payload in ancillary:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                        sender = struct.unpack("3i", payload[:12])[0]
                self.messages.append(data.decode())
                self.senders.append(sender)

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        yield listener
    finally:
        listener.close()


# What systemd does between fork and exec: the sockets to fd 3, 4, ..., LISTEN_PID = own pid.
WRAPPER = """
import fcntl, os, sys
fds = [fcntl.fcntl(int(fd), fcntl.F_DUPFD_CLOEXEC, 100) for fd in sys.argv[1].split(",")]
for index, fd in enumerate(fds):
    os.dup2(fd, 3 + index)  # (inheritable)
os.environ["LISTEN_PID"] = str(os.getpid())
if "WATCHDOG_PID" in os.environ:
    os.environ["WATCHDOG_PID"] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "drover", *sys.argv[2:]])
"""


def activated(args: list[str], sockets: list[socket.socket], names: list[str],
              env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start Drover as systemd would: ``sockets`` at fd 3, 4, ... and LISTEN_PID its own pid."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DROVER_", "LISTEN_"))}
    full_env.update(env, LISTEN_FDS=str(len(sockets)), LISTEN_FDNAMES=":".join(names),
                    PYTHONUNBUFFERED="1")
    fds = [s.fileno() for s in sockets]
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", WRAPPER, ",".join(map(str, fds)), *args], pass_fds=fds,
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env,
            cwd=str(REPO), start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> int:
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_socket_activation_maps_names_and_addresses(tmp_path: Path,
                                                    notify: NotifyListener) -> None:
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(16)
    path = tmp_path / "uwsgi.sock"
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(path))
    unix.listen(16)
    inode = path.stat().st_ino
    log = tmp_path / "drover.log"
    # fd 3 is named "http" (FileDescriptorName=http); fd 4 has no name and is matched to the
    # --uwsgi address it is bound to.
    proc = activated(["--uwsgi", str(path), "--workers", "2"], [tcp, unix], ["http", "unknown"],
                     {"NOTIFY_SOCKET": str(notify.path)}, log)
    try:
        notify.wait_for("READY=1")
        port = tcp.getsockname()[1]
        text = log.read_text()
        assert re.findall(r"listening at (\S+) \((\w+)\)", text) == [
            (f"http://127.0.0.1:{port}", "http"), (f"unix:{path}", "uwsgi")]  # no :8000
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
        assert uwsgi_client.get(f"unix:{path}").data.startswith(b"HTTP/1.1 200")
        assert path.stat().st_ino == inode  # adopted, not bound again
        workers = [int(p) for p in re.findall(r"booting worker \d+ \(pid (\d+)\)", text)]
        for pid in (proc.pid, *workers):  # the variables are gone: no app or child sees them
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert not [v for v in environ if v.startswith(b"LISTEN_")], pid
        assert stop(proc) == 0
        notify.wait_for("STOPPING=1")
        assert path.exists()  # the socket unit's file: systemd removes it, not Drover
        assert group_pids(proc.pid) == []
    finally:
        stop(proc)
        tcp.close()
        unix.close()
        path.unlink(missing_ok=True)


def test_activated_socket_without_a_protocol_is_an_error(tmp_path: Path) -> None:
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(16)
    log = tmp_path / "drover.log"
    proc = activated(["--uwsgi", str(tmp_path / "other.sock")], [tcp], ["web"], {}, log)
    try:
        assert proc.wait(15) == 1
        errors = [line for line in log.read_text().splitlines() if "[ERROR]" in line]
        assert len(errors) == 1
        assert ("systemd passed socket fd 3 (127.0.0.1:" in errors[0]
                and "name 'web'" in errors[0] and "FileDescriptorName=http" in errors[0])
        assert list(tmp_path.iterdir()) == [log]
    finally:
        stop(proc)
        tcp.close()


def test_listen_fds_for_another_process_are_ignored(drover: DroverLauncher) -> None:
    server = drover("--workers", "1", env={"LISTEN_FDS": "1", "LISTEN_PID": "1"})
    assert len(server.addresses) == 1  # bound its own --http as usual; fd 3 left alone
    assert requests.get(server.url + "/", timeout=10).status_code == 200


def test_notify_ready_status_reload_watchdog_and_stop(drover: DroverLauncher,
                                                      notify: NotifyListener) -> None:
    server = drover("--workers", "2", env={"NOTIFY_SOCKET": str(notify.path),
                                           "WATCHDOG_USEC": "300000"})
    ready = notify.wait_for("READY=1")
    assert "STATUS=2 worker(s) serving" in notify.messages[ready]
    # WATCHDOG=1 every half WATCHDOG_USEC: three of them come within a bounded wait.
    seen = ready
    for _ in range(3):
        seen = notify.wait_for("WATCHDOG=1", after=seen + 1)
    server.send_signal(signal.SIGHUP)
    reloading = notify.wait_for("RELOADING=1", after=seen)
    assert any(line.startswith("MONOTONIC_USEC=")
               for line in notify.messages[reloading].split("\n"))
    reloaded = notify.wait_for("READY=1", after=reloading)
    assert "STATUS=2 worker(s) serving (reloaded)" in notify.messages[reloaded]
    assert server.stop(signal.SIGTERM) == 0
    notify.wait_for("STOPPING=1", after=reloaded)


def test_no_notify_socket_no_messages(drover: DroverLauncher, tmp_path: Path) -> None:
    """Without NOTIFY_SOCKET nothing is sent, and a vanished notify socket is not fatal."""
    path = tmp_path / "gone.sock"
    server = drover("--workers", "1", env={"NOTIFY_SOCKET": str(path),
                                           "WATCHDOG_USEC": "200000"})
    server.wait_for_log("ready: 1 worker")
    time.sleep(0.5)  # several watchdog sends into nothing
    assert server.running
    assert server.stop() == 0


def test_usr2_under_systemd_hands_over_main_pid_and_watchdog(tmp_path: Path,
                                                             notify: NotifyListener) -> None:
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(16)
    log = tmp_path / "drover.log"
    proc = activated(["--workers", "1"], [tcp], ["http"],
                     {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "300000",
                      "WATCHDOG_PID": "set by the wrapper"}, log)
    new = 0
    try:
        ready = notify.wait_for("READY=1")
        assert notify.senders[ready] == proc.pid
        proc.send_signal(signal.SIGUSR2)
        reloading = notify.wait_for("RELOADING=1", after=ready)
        taken = notify.wait_for("READY=1", after=reloading)
        lines = notify.messages[taken].split("\n")
        new = notify.senders[taken]
        assert new != proc.pid and f"MAINPID={new}" in lines
        assert proc.wait(20) == 0  # the old master retired
        # The new master keeps systemd's watchdog fed (WATCHDOG_PID was made its own).
        seen = len(notify.messages)
        for _ in range(2):
            seen = notify.wait_for("WATCHDOG=1", after=seen) + 1
            assert notify.senders[seen - 1] == new
        port = tcp.getsockname()[1]
        assert requests.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
        os.kill(new, signal.SIGTERM)
        notify.wait_for("STOPPING=1", after=taken)
        wait_gone(new)
        assert group_pids(proc.pid) == []
    finally:
        stop(proc)
        if new and alive(new):
            os.killpg(proc.pid, signal.SIGKILL)
        tcp.close()
