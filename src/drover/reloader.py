"""Watching files for changes: ``--touch-reload`` (in the master) and ``--reload`` (workers).

Theory of operation
-------------------
A watch holds a set of files and the modification time it last saw for each; ``wait(timeout)``
returns the files whose modification time changed since (a file that appears or disappears
counts as changed). Two backends give the same answers:

- ``InotifyWatch`` (Linux, through ``ctypes``: no dependency) watches the *directories* of the
  files, because editors save by writing a new file and renaming it over the old one, which a
  watch on the old file's inode would miss. An event for a watched name is confirmed with
  ``stat``, so an event that changed nothing is no reload.
- ``PollingWatch`` stats every file once per ``wait``: the fallback where inotify is missing or
  out of watches.

``--touch-reload`` files are few and known from the start: the master polls them once per pass
of its loop. ``--reload`` (development) must watch the app's source files, which only a worker
knows (the master does not import the app), and which grow as the app imports lazily (Django
imports views on the first request): each worker runs ``ModuleWatcher``, a daemon thread that
adds the files of ``sys.modules`` to an inotify watch once a second and tells the master
(``C`` on its pipe) when one changes. The master then reloads as on SIGHUP; new code that does
not import fails in the first new worker only, and the old workers keep serving.

Imported by the master and by workers: stdlib only.
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable

from drover.logs import log

_IN_ATTRIB = 0x4
_IN_CLOSE_WRITE = 0x8
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_DIR_MASK = (_IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE
             | _IN_DELETE)
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


def _mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


class PollingWatch:
    """Stats each file on every ``wait`` (any thread, one at a time)."""

    def __init__(self, paths: Iterable[str] = ()) -> None:
        self.mtimes: dict[str, int | None] = {}
        self.add(paths)

    def add(self, paths: Iterable[str]) -> None:
        for path in paths:
            if path not in self.mtimes:
                self.mtimes[path] = _mtime(path)

    def check(self, paths: Iterable[str]) -> list[str]:
        """Of ``paths`` (watched ones), those whose modification time changed; remembers it."""
        changed = []
        mtimes = self.mtimes
        for path in paths:
            now = _mtime(path)
            if now != mtimes.get(path):
                mtimes[path] = now
                changed.append(path)
        return changed

    def wait(self, timeout: float) -> list[str]:
        changed = self.check(list(self.mtimes))
        if not changed:
            time.sleep(timeout)
        return changed

    def close(self) -> None:
        pass


class InotifyWatch(PollingWatch):
    """inotify on the files' directories; raises OSError where inotify cannot be used."""

    def __init__(self, paths: Iterable[str] = ()) -> None:
        import ctypes  # here, not at the top: the master imports this module, and workers
        # that do not --reload need not carry ctypes

        self._ctypes = ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        self._add_watch = libc.inotify_add_watch
        self._add_watch.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        self.fd: int = fd
        self.dirs: dict[int, str] = {}  # watch descriptor -> directory
        self.watched_dirs: set[str] = set()
        self.names: dict[str, set[str]] = {}  # directory -> names of watched files in it
        super().__init__(paths)

    def add(self, paths: Iterable[str]) -> None:
        for path in map(os.path.abspath, paths):
            if path in self.mtimes:
                continue
            directory, name = os.path.split(path)
            if directory not in self.watched_dirs:
                wd = self._add_watch(self.fd, os.fsencode(directory), _DIR_MASK)
                if wd < 0:
                    errno = self._ctypes.get_errno()
                    raise OSError(errno, f"inotify_add_watch({directory}): "
                                  f"{os.strerror(errno)}")
                self.dirs[wd] = directory
                self.watched_dirs.add(directory)
            self.names.setdefault(directory, set()).add(name)
            self.mtimes[path] = _mtime(path)

    def wait(self, timeout: float) -> list[str]:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        candidates: set[str] = set()
        with contextlib.suppress(BlockingIOError):
            while data := os.read(self.fd, 65536):
                pos = 0
                while pos + _EVENT.size <= len(data):
                    wd, _mask, _cookie, length = _EVENT.unpack_from(data, pos)
                    raw = data[pos + _EVENT.size:pos + _EVENT.size + length]
                    pos += _EVENT.size + length
                    directory = self.dirs.get(wd)
                    name = os.fsdecode(raw.rstrip(b"\0"))
                    if directory is not None and name in self.names.get(directory, ()):
                        candidates.add(os.path.join(directory, name))
        return self.check(candidates)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def make_watch(paths: Iterable[str] = ()) -> PollingWatch:
    """An inotify watch where the system has one, else a polling one."""
    paths = list(paths)
    if sys.platform.startswith("linux"):
        try:
            return InotifyWatch(paths)
        except (OSError, AttributeError) as exc:
            log.info("inotify unavailable (%s): polling files once a second", exc)
    return PollingWatch(paths)


def module_files() -> set[str]:
    """The source files of every module imported so far (any thread)."""
    files = set()
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and os.path.isfile(path):
            files.add(os.path.abspath(path))
    return files


class ModuleWatcher:
    """--reload, in a worker: a daemon thread that calls ``on_change(paths)`` when a source
    file of an imported module changes (``on_change`` runs on the watcher's thread)."""

    def __init__(self, on_change: Callable[[list[str]], None]) -> None:
        self.on_change = on_change
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="reload-watch", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """The thread ends within a second (a worker simply exits instead)."""
        self.stopped.set()

    def _run(self) -> None:
        try:
            watch = make_watch(module_files())
        except OSError as exc:  # out of inotify watches part-way: poll instead
            log.warning("--reload: %s; polling instead", exc)
            watch = PollingWatch(module_files())
        while not self.stopped.is_set():
            changed = watch.wait(1.0)
            if changed:
                self.on_change(sorted(changed))
            try:
                watch.add(module_files())
            except OSError as exc:
                log.warning("--reload: %s; polling instead", exc)
                watch.close()
                watch = PollingWatch(module_files())
        watch.close()
