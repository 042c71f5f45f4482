"""Re-executing the master (USR2, and HUP with --preload) without refusing a connection.

Theory of operation
-------------------
The running master (the *predecessor*) forks and execs ``python -m drover`` with its own
arguments, working directory and environment, plus two variables:

- ``DROVER_LISTEN_FDS``: its listening sockets, which stay open across exec
  (``sockets.handoff``); the successor adopts them instead of binding, so the kernel's listen
  queues are never closed and no connection is refused.
- ``DROVER_UPGRADE_PIPE``: ``FD PID``, the write end of a pipe and the predecessor's pid.

The successor starts as any master does (without daemonizing again, and accepting the pidfile
that names its predecessor), and when its first generation of workers is up it rewrites the
pidfile with its own pid and writes ``R`` on the pipe. The predecessor then retires its
workers as a reload does (idle keep-alive connections drain) and exits by itself; it removes
neither the sockets nor the pidfile, which now belong to the successor. If the successor exits
before it is ready (new code that does not import, a broken environment), the pipe reaches EOF
and the predecessor keeps serving as if nothing had happened.

The configuration reader skips these two variables; the successor removes them from its
environment at once, so neither its workers nor its own successor see stale values.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass

from drover.sockets import HANDOFF_ENV, Listener, handoff

UPGRADE_ENV = "DROVER_UPGRADE_PIPE"


@dataclass
class Successor:
    """The new master, seen from the predecessor (its child until the predecessor exits)."""

    pid: int
    pipe: int  # read end: b"R" when ready, EOF if it exits first

    def close(self) -> None:
        if self.pipe >= 0:
            os.close(self.pipe)
            self.pipe = -1

    def outcome(self) -> bool | None:
        """Its pipe is readable (predecessor's loop): True, it is ready; False, it exited
        before that; None, nothing to read after all. The pipe is closed once decided."""
        try:
            data = os.read(self.pipe, 16)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        self.close()
        return data.startswith(b"R")


@dataclass
class Predecessor:
    """The master that started this one, seen from the successor."""

    pid: int
    pipe: int

    def alive(self) -> bool:
        """Is the predecessor still running (and so still serving on the sockets)?"""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # alive, as another user (it dropped privileges differently)
        return True

    def ready(self) -> None:
        """Runs in the successor once its workers are up: the predecessor may retire."""
        if self.pipe >= 0:
            with contextlib.suppress(OSError):
                os.write(self.pipe, b"R")
            os.close(self.pipe)
            self.pipe = -1


def predecessor_from(environ: MutableMapping[str, str]) -> Predecessor | None:
    """In a master at startup: were we started by USR2? (The variable is removed.)"""
    text = environ.pop(UPGRADE_ENV, "")
    fd_text, _, pid_text = text.partition(" ")
    if not fd_text.isdigit() or not pid_text.isdigit():
        return None
    fd = int(fd_text)
    with contextlib.suppress(OSError):
        os.set_inheritable(fd, False)
    return Predecessor(int(pid_text), fd)


def start_successor(argv: list[str], cwd: str, listeners: list[Listener],
                    handled: Iterable[int]) -> Successor:
    """Fork and exec a new master that inherits ``listeners`` (runs in the predecessor).

    ``handled``: the signals the master catches; they are blocked across fork (as for a
    worker) and back to their defaults and unblocked before exec.
    """
    read_fd, write_fd = os.pipe()
    env = dict(os.environ)
    env[HANDOFF_ENV] = handoff(listeners)
    env[UPGRADE_ENV] = f"{write_fd} {os.getpid()}"
    args = [sys.executable, "-m", "drover", *argv]
    handled = list(handled)
    sys.stdout.flush()
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:  # the child, until exec
        try:
            signal.set_wakeup_fd(-1)
            for signum in handled:
                signal.signal(signum, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, [])
            os.close(read_fd)
            os.set_inheritable(write_fd, True)
            if "WATCHDOG_PID" in env:  # systemd's watchdog: the new master will be the one
                env["WATCHDOG_PID"] = str(os.getpid())
            os.chdir(cwd)
            os.execve(sys.executable, args, env)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                os.write(2, f"drover: cannot start a new master: {exc}\n".encode())
        finally:
            os._exit(127)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
    os.close(write_fd)
    os.set_blocking(read_fd, False)
    return Successor(pid, read_fd)
