"""drover.reloader: both watch backends report the same changes on real files."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from drover.reloader import InotifyWatch, ModuleWatcher, PollingWatch, module_files

BACKENDS = [PollingWatch, InotifyWatch] if sys.platform.startswith("linux") else [PollingWatch]


def bump(path: Path, text: str = "changed\n") -> None:
    """Write ``path`` in place with a modification time one second later than before."""
    stamp = path.stat().st_mtime_ns + 1_000_000_000 if path.exists() else time.time_ns()
    path.write_text(text)
    os.utime(path, ns=(stamp, stamp))


def replace_by_rename(path: Path) -> None:
    """The way editors save: a new file renamed over the old one."""
    new = path.with_name(".new-" + path.name)
    new.write_text("replaced\n")
    stamp = path.stat().st_mtime_ns + 2_000_000_000
    os.utime(new, ns=(stamp, stamp))
    new.replace(path)


def touch_other_file(path: Path) -> None:
    bump(path.with_name("unrelated.txt"))


def create(path: Path) -> None:
    bump(path.with_name("absent.py"))


CASES: list[tuple[str, Callable[[Path], None], list[str]]] = [
    ("written in place", bump, ["watched.py"]),
    ("replaced by a rename", replace_by_rename, ["watched.py"]),
    ("deleted", lambda p: p.unlink(), ["watched.py"]),
    ("a watched file appears", create, ["absent.py"]),
    ("another file of the directory changes", touch_other_file, []),
    ("nothing happens", lambda p: None, []),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("what", "action", "expected"), CASES, ids=[c[0] for c in CASES])
def test_watch_reports_changed_files(tmp_path: Path, backend: type[PollingWatch], what: str,
                                     action: Callable[[Path], None], expected: list[str]) -> None:
    watched = tmp_path / "watched.py"
    watched.write_text("original\n")
    (tmp_path / "unrelated.txt").write_text("x\n")
    watch = backend([str(watched), str(tmp_path / "absent.py")])
    try:
        action(watched)
        changed = watch.wait(0.2)
        assert sorted(os.path.basename(p) for p in changed) == expected
        assert watch.wait(0.05) == []  # reported once
    finally:
        watch.close()


def test_module_watcher_reports_a_changed_module(tmp_path: Path) -> None:
    module = tmp_path / "drover_reload_probe.py"
    module.write_text("VALUE = 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import drover_reload_probe  # noqa: F401

        assert str(module) in module_files()
        seen: list[list[str]] = []
        event = threading.Event()

        def changed(paths: list[str]) -> None:
            seen.append(paths)
            event.set()

        watcher = ModuleWatcher(changed)
        watcher.start()
        try:
            time.sleep(0.3)  # the watcher's first look at sys.modules
            bump(module, "VALUE = 2\n")
            assert event.wait(10), "no change reported"
            assert str(module) in seen[0]
        finally:
            watcher.stop()
            watcher.thread.join(5)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("drover_reload_probe", None)
