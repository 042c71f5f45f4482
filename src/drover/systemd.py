"""systemd integration: socket activation (``LISTEN_FDS``) and ``Type=notify`` (sd_notify).

Theory of operation
-------------------
Both run in the master only; neither needs libsystemd.

Socket activation: systemd binds the sockets of a ``.socket`` unit and starts Drover with them
open from fd 3 on, ``LISTEN_FDS`` (how many), ``LISTEN_PID`` (for which process: variables meant
for another process are ignored) and ``LISTEN_FDNAMES`` (the units' ``FileDescriptorName=``, ``:``
separated). ``listen_fds()`` reads them once and removes them from the environment, so neither
workers, apps nor a successor master see them. Each socket gets its protocol from its name
(``http`` or ``uwsgi``, optionally followed by ``-anything``) or else from the ``--http``/
``--uwsgi`` address it is bound to (``sockets.adopt``); such an address is then not bound again.

Notification: when ``NOTIFY_SOCKET`` is set, ``Notifier`` sends datagrams to it over a plain
``AF_UNIX`` socket: ``READY=1`` once the first generation of workers is up, ``STATUS=`` lines,
``RELOADING=1`` during a reload (HUP) and ``READY=1`` after it, ``STOPPING=1`` on a stop,
``MAINPID=`` from a master started by USR2 (the unit then needs ``NotifyAccess=all``), and
``WATCHDOG=1`` every half ``WATCHDOG_USEC`` when the unit sets ``WatchdogSec=``. The variable
stays in the environment, for a successor master after USR2.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

LISTEN_FDS_START = 3
LISTEN_VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


@dataclass(frozen=True, slots=True)
class ActivatedSocket:
    fd: int
    name: str  # FileDescriptorName=, or "" when systemd gave none ("unknown")

    @property
    def protocol(self) -> str | None:
        """'http' or 'uwsgi' from the name ('uwsgi', 'uwsgi-public', ...), else None."""
        base = self.name.partition("-")[0].lower()
        return base if base in ("http", "uwsgi") else None


def listen_fds_pending(environ: Mapping[str, str]) -> bool:
    """Are there sockets from systemd for this process? (Read only; see listen_fds.)"""
    return (environ.get("LISTEN_PID", "") == str(os.getpid())
            and environ.get("LISTEN_FDS", "0").isdigit() and int(environ["LISTEN_FDS"]) > 0)


def listen_fds(environ: MutableMapping[str, str]) -> list[ActivatedSocket]:
    """The sockets systemd passed to this process; the variables are removed (master, once)."""
    pending = listen_fds_pending(environ)
    count = int(environ.get("LISTEN_FDS", "0")) if pending else 0
    names = environ.get("LISTEN_FDNAMES", "").split(":") if pending else []
    for key in LISTEN_VARIABLES:
        environ.pop(key, None)
    found = []
    for index in range(count):
        fd = LISTEN_FDS_START + index
        name = names[index] if index < len(names) else ""
        os.set_inheritable(fd, True)  # workers are forked; a successor master is exec'd
        found.append(ActivatedSocket(fd, "" if name == "unknown" else name))
    return found


class Notifier:
    """sd_notify over ``NOTIFY_SOCKET``; every method is a no-op without it. Master only."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.sock: socket.socket | None = None
        self.address = environ.get("NOTIFY_SOCKET", "")
        self.watchdog_interval = 0.0
        self.next_watchdog = 0.0
        if self.address:
            if self.address.startswith("@"):  # an abstract socket
                self.address = "\0" + self.address[1:]
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.set_inheritable(False)
            # Never wait for systemd: a datagram to a full queue would stall the master's loop
            # (reaping, signals, the watchdog itself). A notification that finds no room is
            # dropped, as send() drops any error.
            self.sock.setblocking(False)
            usec = environ.get("WATCHDOG_USEC", "")
            watchdog_pid = environ.get("WATCHDOG_PID", "")
            if usec.isdigit() and int(usec) > 0 and watchdog_pid in ("", str(os.getpid())):
                self.watchdog_interval = int(usec) / 2e6

    def send(self, *lines: str) -> None:
        if self.sock is None:
            return
        with contextlib.suppress(OSError):  # systemd gone or the socket full: never fatal
            self.sock.sendto("\n".join(lines).encode(), self.address)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def ready_as_successor(self, status: str) -> None:
        """A master started by USR2 takes over as the unit's main process."""
        self.send(f"MAINPID={os.getpid()}", "READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def reloading(self, status: str) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def watchdog_timeout(self, now: float) -> float | None:
        """Seconds until the next WATCHDOG=1 is due (the master's loop waits no longer)."""
        if not self.watchdog_interval:
            return None
        return max(0.0, self.next_watchdog - now)

    def tick(self, now: float) -> None:
        """Called on every pass of the master's loop: WATCHDOG=1 when due."""
        if self.watchdog_interval and now >= self.next_watchdog:
            self.next_watchdog = now + self.watchdog_interval
            self.send("WATCHDOG=1")

    def stop_watchdog(self) -> None:
        """The watchdog is another process's now (the master a USR2 started took over)."""
        self.watchdog_interval = 0.0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
