"""Helpers for the tests of process management: who runs as whom, what is left behind.

- ``python_for(user)``: an interpreter command and environment that ``user`` can run after
  Drover drops root to it. Here the test Python may live under /root (mode 700), which
  ``nobody`` cannot read: modules a worker imports after the drop would fail to load. Debian's
  /usr/bin/python3 of the same version can, with this checkout's sources and the virtual
  environment's packages (same ABI) on PYTHONPATH.
- ``shared_dir()``: a temporary directory others may traverse (pytest's is 700), for sockets
  nginx must reach and files a dropped master must remove.
- ``status_ids(pid)``: the Uid/Gid/Groups lines of /proc/PID/status.
- ``group_pids(pgid)``, ``wait_gone(pid)``: leftovers and processes that are not our children.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def _runs_as(user: str, python: str, env: dict[str, str]) -> bool:
    entry = pwd.getpwnam(user)

    def demote() -> None:
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    try:
        done = subprocess.run([python, "-c", "import ssl, threading, drover.worker"],
                              env=env, preexec_fn=demote, capture_output=True, timeout=30,
                              cwd="/")
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def python_for(user: str) -> tuple[str, dict[str, str]]:
    """(interpreter, extra environment) with which ``user`` can run Drover after the drop."""
    site = sysconfig.get_paths()["purelib"]
    path = os.pathsep.join((str(REPO / "src"), site))
    env = {**os.environ, "PYTHONPATH": path}
    if _runs_as(user, sys.executable, env):
        return sys.executable, {"PYTHONPATH": path}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if os.access(candidate, os.X_OK) and _runs_as(user, candidate, env):
            return candidate, {"PYTHONPATH": path}
    raise AssertionError(f"no {version} on this machine can be run by {user!r} (this test "
                         f"Python, {sys.executable}, is not readable by that user)")


@contextlib.contextmanager
def shared_dir(owner: str | None = None) -> Iterator[Path]:
    """A fresh directory under /tmp, mode 755, optionally owned by ``owner``; removed after."""
    path = Path(tempfile.mkdtemp(prefix="drover-test-", dir="/tmp"))
    try:
        path.chmod(0o755)
        if owner is not None:
            entry = pwd.getpwnam(owner)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def status_ids(pid: int) -> dict[str, list[int]]:
    """{'Uid': [real, effective, saved, fs], 'Gid': [...], 'Groups': [...]} of a process."""
    found: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            found[key] = [int(part) for part in value.split()]
    return found


def _state(pid: int) -> str:
    """The process state letter, or '' when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return ""
    return stat.rpartition(")")[2].split()[0]


def alive(pid: int) -> bool:
    return _state(pid) not in ("", "Z", "X")


def group_pids(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (a master, its workers, its successors)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def wait_gone(pid: int, timeout: float = 15.0) -> None:
    """Wait until ``pid`` (maybe not our child) has exited; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} still runs after {timeout} s")
        time.sleep(0.05)


def wait_for(predicate: object, timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``predicate()`` until true."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(0.05)
