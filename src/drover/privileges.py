"""Privileges and the files a master owns: users and groups, umask, pidfile, daemonizing.

Theory of operation
-------------------
Everything here runs in the master, once, in this order (``master.Master.run``):

1. ``apply_umask`` before anything is created, so sockets and files get the mode it implies.
2. ``Pidfile.claim`` before binding: a pidfile naming a live process is an error (another
   master runs); one naming a dead process is stale and will be replaced. An unwritable
   directory is found here too, before anything is bound.
3. The sockets are bound (``sockets.bind``, which chowns unix sockets to ``--chown-socket``).
4. ``daemonize`` (``--daemonize``): double fork and a new session; the process the operator
   started waits on a pipe until the daemon reports its workers up (``Daemon.ready``), and
   exits 0, or 1 if the daemon died first. Errors up to here are seen on the terminal.
5. ``Pidfile.write`` with the final master's pid.
6. ``drop_privileges`` (``--uid``/``--gid``): supplementary groups, then gid, then uid, so the
   app is never imported as root. Workers are forked from the master and inherit it. The
   pidfile is handed to the new user, so that the master (or its successor after USR2) can
   rewrite and remove it; removing a file also needs write access to its directory, so a
   warning says so when the directory stays root's.

On exit the master removes the pidfile if it still names the master (after USR2 it names the
successor, which rewrote it), and its unix sockets (``sockets.close_listeners``).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import resource
import signal
import sys
from dataclasses import dataclass

from drover.logs import log


class StartupError(Exception):
    """A setting cannot be applied; the message names the option and the path or value."""


# -- users and groups (also used by the settings table to check values early) -----------------


def resolve_user(text: str) -> tuple[int, str | None, int | None]:
    """'www-data' or '33' -> (uid, name or None, primary gid or None). ValueError if unknown."""
    text = text.strip()
    if not text:
        raise ValueError("no user given")
    if text.isdigit():
        uid = int(text)
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return uid, None, None  # a bare uid is fine (containers): then --gid is needed
        return uid, entry.pw_name, entry.pw_gid
    try:
        entry = pwd.getpwnam(text)
    except KeyError:
        raise ValueError(f"no user named {text!r} on this system") from None
    return entry.pw_uid, entry.pw_name, entry.pw_gid


def resolve_group(text: str) -> int:
    text = text.strip()
    if not text:
        raise ValueError("no group given")
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ValueError(f"no group named {text!r} on this system") from None


def resolve_owner(text: str) -> tuple[int, int]:
    """'USER', 'USER:GROUP' or ':GROUP' -> (uid, gid); -1 leaves that part unchanged."""
    user, _, group = text.strip().partition(":")
    if not user and not group:
        raise ValueError(f"{text!r} is not USER, USER:GROUP or :GROUP")
    uid = resolve_user(user)[0] if user else -1
    gid = resolve_group(group) if group else -1
    return uid, gid


@dataclass(frozen=True, slots=True)
class Identity:
    """The user and group to run as (``--uid``/``--gid`` resolved)."""

    uid: int
    gid: int
    name: str | None  # for initgroups; None for a bare uid without a passwd entry


def target_identity(uid_text: str, gid_text: str) -> Identity | None:
    """--uid/--gid resolved (in the master, before binding); None when neither is given."""
    if not uid_text and not gid_text:
        return None
    try:
        uid, name, primary = resolve_user(uid_text) if uid_text else (os.getuid(), None, None)
    except ValueError as exc:
        raise StartupError(f"--uid: {exc}") from None
    if gid_text:
        try:
            gid = resolve_group(gid_text)
        except ValueError as exc:
            raise StartupError(f"--gid: {exc}") from None
    elif primary is not None:
        gid = primary
    elif uid_text:
        raise StartupError(f"--uid {uid_text}: no passwd entry gives its group; add --gid")
    else:
        gid = os.getgid()
    return Identity(uid, gid, name)


def check_can_switch(identity: Identity) -> None:
    """Before binding: a non-root master can only 'switch' to who it already is."""
    if os.geteuid() == 0:
        return
    if identity.uid != os.geteuid() or identity.gid != os.getegid():
        raise StartupError(f"--uid/--gid: switching to uid {identity.uid} gid {identity.gid} "
                           f"needs root (Drover runs as uid {os.geteuid()})")


def drop_privileges(identity: Identity) -> None:
    """Runs in the master after binding and before the app is imported (workers inherit it)."""
    if os.geteuid() != 0:
        return  # already that user (checked by check_can_switch), e.g. after USR2
    if identity.name is not None:
        os.initgroups(identity.name, identity.gid)
    else:
        os.setgroups([identity.gid])
    os.setgid(identity.gid)
    os.setuid(identity.uid)
    log.info("running as uid %d, gid %d (groups %s)", os.getuid(), os.getgid(),
             ",".join(str(g) for g in os.getgroups()))


def apply_umask(mask: int | None) -> None:
    if mask is not None:
        os.umask(mask)


def can_remove(path: str, identity: Identity | None) -> bool:
    """Can ``identity`` remove ``path`` (write and search access to its directory)?"""
    if identity is None or identity.uid == 0:
        return True
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(directory)
    except OSError:
        return False
    if st.st_mode & 0o1000 and st.st_uid != identity.uid:
        return False  # sticky (like /tmp): only the file's owner may; we chown files, not dirs
    if st.st_uid == identity.uid:
        return bool(st.st_mode & 0o300 == 0o300)
    if st.st_gid == identity.gid:
        return bool(st.st_mode & 0o030 == 0o030)
    return bool(st.st_mode & 0o003 == 0o003)


def warn_unremovable(what: str, path: str, identity: Identity) -> None:
    """Before dropping privileges: say so if the master will not be able to remove ``path``."""
    if not can_remove(path, identity):
        log.warning("%s %s: uid %d cannot remove it on exit (its directory is not writable by "
                    "that user); use a directory it owns, e.g. /run/drover", what, path,
                    identity.uid)


# -- the pidfile ---------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, someone else's
    return True


class Pidfile:
    """``--pidfile``: claimed before binding, written after, removed on exit (master only)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.written_pid = 0

    def claim(self, predecessor: int = 0) -> None:
        """Refuse a pidfile of a live master; check that the directory is writable.

        ``predecessor``: the master that re-executed us (USR2), whose pid the file holds.
        """
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise StartupError(f"--pidfile {self.path}: directory {directory} does not exist")
        try:
            with open(self.path) as file:
                text = file.read(64).strip()
        except FileNotFoundError:
            text = ""
        except OSError as exc:
            raise StartupError(f"--pidfile {self.path}: cannot read it: "
                               f"{exc.strerror or exc}") from None
        if text.isdigit():
            pid = int(text)
            if pid not in (os.getpid(), predecessor) and _pid_alive(pid):
                raise StartupError(f"--pidfile {self.path}: a running process (pid {pid}) holds "
                                   f"it; is Drover already running?")
            if pid != predecessor:
                log.info("replacing the stale pidfile %s (pid %d is gone)", self.path, pid)
        # A file it may rewrite in place will do too (after USR2 the successor runs as --uid,
        # and its predecessor handed it the pidfile).
        if not os.access(directory, os.W_OK | os.X_OK) and not (
                text and os.access(self.path, os.W_OK)):
            raise StartupError(f"--pidfile {self.path}: directory {directory} is not writable")

    def write(self) -> None:
        """Write our pid (in place: after dropping privileges the directory may be root's)."""
        pid = os.getpid()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, f"{pid}\n".encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise StartupError(f"--pidfile {self.path}: cannot write it: "
                               f"{exc.strerror or exc}") from None
        self.written_pid = pid

    def hand_to(self, identity: Identity) -> None:
        """Before dropping privileges: let the new user rewrite and remove its pidfile."""
        with contextlib.suppress(OSError):
            os.chown(self.path, identity.uid, identity.gid)
        warn_unremovable("pidfile", self.path, identity)

    def remove(self) -> None:
        """On exit: remove the file if it still names this master (not a successor's)."""
        if not self.written_pid:
            return
        try:
            with open(self.path) as file:
                if file.read(64).strip() != str(os.getpid()):
                    return
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove the pidfile %s: %s", self.path, exc.strerror or exc)
        self.written_pid = 0


# -- daemonizing -----------------------------------------------------------------------------


class Daemon:
    """The daemon's end of the pipe to the process the operator started (``--daemonize``)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def ready(self) -> None:
        """Runs in the master once the workers are up: the starting command exits 0."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self.fd, b"R")
            os.close(self.fd)
            self.fd = -1


def open_log(path: str) -> int:
    """Open --daemonize's log file (append), before forking, so errors reach the terminal."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StartupError(f"--daemonize {path}: directory {directory} does not exist")
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    except OSError as exc:
        raise StartupError(f"--daemonize {path}: cannot open it: {exc.strerror or exc}") from None


def daemonize(log_path: str) -> Daemon:
    """Double fork into a new session with stdio on ``log_path``; returns in the daemon only.

    The starting process waits for the daemon's word (``Daemon.ready``) and exits with 0, or
    with 1 if the daemon ends first. Runs in the master after binding, before the pidfile.
    """
    log_fd = open_log(log_path)
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:  # the command the operator ran: wait for the daemon's word
        for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C ends the wait, not the daemon
            signal.signal(signum, signal.SIG_DFL)
        os.close(write_fd)
        os.close(log_fd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        # The first byte decides: workers forked before the word hold the pipe too, so EOF
        # would only come when the last of them exits.
        if os.read(read_fd, 1) == b"R":
            os._exit(0)
        sys.stderr.write(f"drover: the daemon failed to start; see {log_path}\n")
        sys.stderr.flush()
        os._exit(1)
    os.close(read_fd)
    os.setsid()
    if os.fork():
        os._exit(0)  # the session leader goes: the daemon can never regain a terminal
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    log.info("daemonized (pid %d), logging to %s", os.getpid(), log_path)
    return Daemon(write_fd)


def raise_fd_limit() -> None:
    """Many keep-alive connections need many descriptors: use the hard limit (master, at
    start; workers inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
