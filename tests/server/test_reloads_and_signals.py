"""Reloads and signals: Ctrl-C twice, --touch-reload, --reload (development), and the master's
log lines about them (generations, failed reloads, TTOU, mounts)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from pathlib import Path

import requests

from tests.conftest import DroverLauncher, Server

VERSIONED_APP = '''
import os
import time
import helper

def application(environ, start_response):
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(float(environ["QUERY_STRING"]))
    body = f"{helper.VERSION} {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def write_versioned_app(directory: Path, version: str) -> None:
    """The app module and the helper module it imports, which holds the version."""
    (directory / "versioned.py").write_text(VERSIONED_APP)
    write_helper(directory, f"VERSION = {version!r}\n")


def write_helper(directory: Path, text: str) -> None:
    """Replace helper.py the way editors save: a new file renamed over the old one, with a
    modification time that differs from the old one's even on a coarse clock."""
    path = directory / "helper.py"
    temporary = directory / ".helper.py.tmp"
    temporary.write_text(text)
    if path.exists():
        stamp = path.stat().st_mtime_ns + 1_000_000_000
        os.utime(temporary, ns=(stamp, stamp))
    temporary.replace(path)


def version(server: Server) -> str:
    return requests.get(server.url + "/", timeout=10).text.split()[0]


def wait_for_version(server: Server, expected: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (seen := version(server)) != expected:
        assert time.monotonic() < deadline, f"still {seen!r}, not {expected!r}:\n{server.log()}"
        time.sleep(0.1)


def test_a_second_ctrl_c_stops_at_once(drover: DroverLauncher, tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group: master and workers. The first one waits for
    the request in flight (--graceful-timeout 60); the second one does not."""
    write_versioned_app(tmp_path, "v1")
    server = drover("--workers", "2", "--graceful-timeout", "60", "--chdir", str(tmp_path),
                    "versioned")
    hung = threading.Thread(target=lambda: _get_quietly(server, "/sleep?600"), daemon=True)
    hung.start()
    time.sleep(0.5)
    os.killpg(server.proc.pid, signal.SIGINT)
    server.wait_for_log(r"graceful stop requested \(SIGINT; again to stop at once\)")
    time.sleep(0.5)
    assert server.running  # the request in flight holds the graceful stop
    os.killpg(server.proc.pid, signal.SIGINT)
    assert server.proc.wait(20) == 0
    assert "SIGINT again: stopping at once" in server.log()


def _get_quietly(server: Server, path: str) -> None:
    with contextlib.suppress(requests.RequestException):
        requests.get(server.url + path, timeout=30)


def test_touch_reload_reloads_when_the_file_changes(drover: DroverLauncher,
                                                    tmp_path: Path) -> None:
    write_versioned_app(tmp_path, "v1")
    trigger = tmp_path / "reload.trigger"  # absent at start: creating it counts as a change
    server = drover("--workers", "2", "--touch-reload", str(trigger), "--chdir", str(tmp_path),
                    "versioned")
    assert version(server) == "v1"
    write_helper(tmp_path, "VERSION = 'v2'\n")
    time.sleep(1.5)
    assert version(server) == "v1"  # --touch-reload watches its file, not the code
    trigger.write_text("")
    server.wait_for_log(r"reload\.trigger changed \(--touch-reload\)")
    server.wait_for_log("reload complete", timeout=20)
    wait_for_version(server, "v2")
    # The reload's lines tell old and new workers apart by pid and generation.
    assert re.search(r"booting worker 1 \(pid \d+, generation 1\)", server.log())
    for worker_id in (1, 2):
        server.wait_for_log(rf"worker {worker_id} \(pid \d+, generation 0\) retiring")
        server.wait_for_log(rf"worker {worker_id} \(pid \d+, generation 0\) stopped")


def test_reload_follows_source_changes_and_keeps_serving_through_a_syntax_error(
        drover: DroverLauncher, tmp_path: Path) -> None:
    write_versioned_app(tmp_path, "v1")
    server = drover("--workers", "2", "--reload", "--chdir", str(tmp_path), "versioned")
    server.wait_for_log(r"(?s)generation 0\) ready.*generation 0\) ready")
    assert version(server) == "v1"
    write_helper(tmp_path, "VERSION = 'v2'\n")
    server.wait_for_log(r"helper\.py changed \(--reload\)")
    wait_for_version(server, "v2")
    server.wait_for_log("reload complete")  # both new workers run v2 before v3 is written
    mark = len(server.log())
    write_helper(tmp_path, "VERSION = 'v3\n")  # a syntax error
    server.wait_for_log("reload failed", since=mark, timeout=20)
    time.sleep(2.0)
    assert version(server) == "v2"  # the old workers keep serving
    failed = server.log()[mark:]
    assert failed.count("unterminated string literal") == 1, failed  # the error, once
    assert failed.count("reload failed") == 1, failed
    assert "replacing it" not in failed
    write_helper(tmp_path, "VERSION = 'v4'\n")
    wait_for_version(server, "v4")


def test_a_failed_reload_says_nothing_of_replacing_the_failed_worker(drover: DroverLauncher,
                                                                     tmp_path: Path) -> None:
    write_versioned_app(tmp_path, "v1")
    server = drover("--workers", "2", "--chdir", str(tmp_path), "versioned")
    server.wait_for_log(r"(?s)generation 0\) ready.*generation 0\) ready")
    (tmp_path / "versioned.py").write_text("raise ImportError('half-deployed')\n")
    server.send_signal(signal.SIGHUP)
    server.wait_for_log("reload failed", timeout=20)
    time.sleep(1.0)
    log = server.log()
    after = log[log.index("reloading: starting"):]
    assert after.count("ImportError: half-deployed") == 1  # one new worker tried, not two
    assert "replacing it" not in after
    assert version(server) == "v1"


def test_ttou_at_one_worker_says_it_is_ignored(drover: DroverLauncher, tmp_path: Path) -> None:
    write_versioned_app(tmp_path, "v1")
    server = drover("--workers", "1", "--chdir", str(tmp_path), "versioned")
    server.send_signal(signal.SIGTTOU)
    server.wait_for_log(r"SIGTTOU ignored: already down to one worker")
    assert version(server) == "v1"


def test_the_start_line_names_the_mounted_apps(drover: DroverLauncher, tmp_path: Path) -> None:
    (tmp_path / "mounted.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [b'mounted']\n")
    server = drover("--workers", "1", "--chdir", str(tmp_path), "--mount", "/api=mounted:app",
                    ready_path="/api/")
    line = server.wait_for_log(r"master starting .*").group(0)
    assert line.endswith("for /api=mounted:app")
    assert "welcome" not in server.log()
    title = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
    assert title.startswith(b"drover: master [/api=mounted:app]")
