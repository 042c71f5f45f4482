#!/usr/bin/env python3
"""Drover benchmark harness: Drover against uWSGI, Gunicorn, Granian, Waitress and bjoern.

Run through ``bash bench/run.sh`` (which builds bench/.venv and then runs this file with
the venv's Python).  Every server runs one worker pinned to core 0, wrk runs pinned to
core 1, rounds are interleaved (A B C A B C ...), the median of the rounds is reported and
every figure is also given as a ratio to Drover measured in the same run.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import datetime as dt
import http.client
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import static_files  # bench/static_files.py: the static-file scenarios' files and peers

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
APPS_DIR = BENCH_DIR / "apps"
LUA_DIR = BENCH_DIR / "lua"
SERVERS_DIR = BENCH_DIR / "servers"
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"

SERVER_CORE = "0"  # every application server (and all of its processes)
CLIENT_CORE = "1"  # wrk, and nginx in the nginx scenarios

START_TIMEOUT = 30.0  # seconds for a server to answer its first request
CHECK_TIMEOUT = 10.0  # seconds for one verification request
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
WRK_TIMEOUT = "5s"  # wrk's per-request timeout (counted as an error)
WRK_SLACK = 30.0  # seconds a wrk run may take beyond its duration

SLEEP_THREADS = 16
SLEEP_SECONDS = 0.020
IDEAL_BLOCKING_RPS = SLEEP_THREADS / SLEEP_SECONDS
MIB = 1 << 20
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # the unit of utime and stime in /proc/PID/stat

Protocol = Literal["http", "uwsgi"]
Front = Literal["direct", "nginx_uwsgi", "nginx_http"]


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def shout(message: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\n!!! {message}\n{bar}\n", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Workload:
    """What is requested and how the answer is checked."""

    app: str  # module in bench/apps/ exposing ``app``
    connections: int
    method: str = "GET"
    body: bytes = b""
    script: str = "report.lua"
    path: str = "/"  # what is requested
    check: Callable[[bytes], str | None] = lambda _body: None  # error message or None


def expect_exact(expected: bytes) -> Callable[[bytes], str | None]:
    def check(body: bytes) -> str | None:
        return None if body == expected else f"expected {expected[:40]!r}, got {body[:80]!r}"

    return check


def expect_json_message(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:80]!r}"
    return (
        None
        if isinstance(data, dict) and data.get("message") == "Hello, World!"
        else f"bad JSON {data!r}"
    )


def expect_length(length: int) -> Callable[[bytes], str | None]:
    def check(body: bytes) -> str | None:
        return None if len(body) == length else f"expected {length} bytes, got {len(body)}"

    return check


HELLO = Workload(app="hello", connections=50, check=expect_exact(b"Hello, World!"))
HELLO_1000 = Workload(app="hello", connections=1000, check=expect_exact(b"Hello, World!"))
FLASK = Workload(app="flask_json", connections=50, check=expect_json_message)
BIG_GET = Workload(app="big", connections=8, check=expect_length(MIB))
BIG_POST = Workload(
    app="big",
    connections=8,
    method="POST",
    body=b"x" * (10 * MIB),
    script="post_10mib.lua",
    check=expect_exact(str(10 * MIB).encode()),
)
SLEEPY = Workload(app="sleep", connections=4 * SLEEP_THREADS, check=expect_exact(b"slept 20 ms"))
STATIC_10K = Workload(app="hello", connections=50, path="/static/10k.bin",
                      check=expect_length(static_files.FILES["10k.bin"]))
STATIC_1M = Workload(app="hello", connections=8, path="/static/1m.bin",
                     check=expect_length(static_files.FILES["1m.bin"]))


# --------------------------------------------------------------------------- servers


@dataclass(frozen=True)
class Launch:
    """Everything a server's command line depends on."""

    module: str
    port: int
    threads: int
    protocol: Protocol
    static_dir: str = ""  # the static scenarios: the folder served at /static/


@dataclass(frozen=True)
class ServerDef:
    key: str
    name: str
    protocols: frozenset[str]
    command: Callable[[Launch], list[str]]
    unavailable: Callable[[Protocol], str | None]  # reason the server can't run, or None
    version: Callable[[], str]
    extra_env: Callable[[], dict[str, str]] = dict


def dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def venv_tool(name: str) -> Callable[[Protocol], str | None]:
    def unavailable(_protocol: Protocol) -> str | None:
        return None if (VENV_BIN / name).exists() else f"{VENV_BIN / name} not installed"

    return unavailable


# Drover ------------------------------------------------------------------------------

_drover_help: str | None = None


def drover_env() -> dict[str, str]:
    """Use the installed package when there is one, else the source tree."""
    if importlib.util.find_spec("drover") is None and (REPO_DIR / "src" / "drover").is_dir():
        return {"PYTHONPATH": str(REPO_DIR / "src")}
    return {}


def drover_help() -> str:
    global _drover_help
    if _drover_help is None:
        env = {**os.environ, **drover_env()}
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "drover", "--help"],
                env=env,
                cwd=REPO_DIR,
                capture_output=True,
                text=True,
                timeout=30,
            )
            _drover_help = proc.stdout + proc.stderr if proc.returncode == 0 else ""
        except subprocess.TimeoutExpired:
            _drover_help = ""
    return _drover_help


def drover_unavailable(protocol: Protocol) -> str | None:
    present = (
        importlib.util.find_spec("drover") is not None or (REPO_DIR / "src" / "drover").is_dir()
    )
    if not present:
        return "no drover package in the venv nor in src/drover"
    text = drover_help()
    if not text:
        return None  # present but --help fails: let the start fail loudly with its log
    if protocol == "uwsgi" and "--uwsgi" not in text:
        return "this Drover has no --uwsgi option yet"
    return None


def drover_command(launch: Launch) -> list[str]:
    flag = "--http" if launch.protocol == "http" else "--uwsgi"
    cmd = [sys.executable, "-m", "drover", flag, f"{HOST}:{launch.port}", "--workers", "1"]
    cmd += ["--threads", str(launch.threads), "--chdir", str(APPS_DIR)]
    if "--pythonpath" in drover_help():
        cmd += ["--pythonpath", str(APPS_DIR)]
    if launch.static_dir:
        cmd += static_files.drover_args(launch.static_dir)
    return [*cmd, f"{launch.module}:app"]


def drover_stats_command(launch: Launch) -> list[str]:
    """Drover with the stats server on (an abstract unix socket: nothing to clean up), so
    that every request is counted on the scoreboard."""
    return [*drover_command(launch)[:-1], "--stats", f"@drover-bench-stats-{launch.port}",
            drover_command(launch)[-1]]


def drover_stats_unavailable(protocol: Protocol) -> str | None:
    if "--stats" not in drover_help():
        return "this Drover has no --stats option yet"
    return drover_unavailable(protocol)


def git(*args: str) -> str:
    """Output of a read-only git command in the repository, or "" when it fails."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(REPO_DIR), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def drover_version() -> str:
    """The package version plus the commit measured, flagged when src/ has local changes."""
    version = dist_version("drover")
    rev = git("rev-parse", "--short", "HEAD") or "no commit"
    dirty = " + uncommitted changes" if git("status", "--porcelain", "--", "src") else ""
    base = "source tree" if version == "not installed" else version
    return f"{base} (git {rev}{dirty})"


# uWSGI -------------------------------------------------------------------------------


def uwsgi_command(launch: Launch) -> list[str]:
    cmd = [str(VENV_BIN / "uwsgi")]
    if launch.protocol == "http":
        # http-socket closes the connection after each response without saying so, which
        # wrk would count as a read error per request: announce the close instead.
        cmd += ["--http-socket", f"{HOST}:{launch.port}", "--add-header", "Connection: close"]
    else:
        cmd += ["--socket", f"{HOST}:{launch.port}"]
    cmd += [
        "--chdir",
        str(APPS_DIR),
        "--wsgi-file",
        f"{launch.module}.py",
        "--callable",
        "app",
        "--master",
        "--processes",
        "1",
        "--disable-logging",
        "--need-app",
        "--die-on-term",
        "--single-interpreter",
        "--listen",
        "1024",
        "--buffer-size",
        "32768",
    ]
    if launch.threads > 1:
        cmd += ["--threads", str(launch.threads)]
    return cmd


# Gunicorn ----------------------------------------------------------------------------


def gunicorn_command(launch: Launch) -> list[str]:
    cmd = [
        str(VENV_BIN / "gunicorn"),
        "--workers",
        "1",
        "--worker-class",
        "gthread",
        "--threads",
        str(launch.threads),
        "--bind",
        f"{HOST}:{launch.port}",
        "--chdir",
        str(APPS_DIR),
        "--worker-connections",
        "2000",
        "--backlog",
        "2048",
        "--keep-alive",
        "30",
        "--log-level",
        "warning",
    ]
    if launch.protocol == "uwsgi":
        cmd += ["--protocol", "uwsgi"]
    return [*cmd, f"{launch.module}:app"]


def gunicorn_unavailable(protocol: Protocol) -> str | None:
    if not (VENV_BIN / "gunicorn").exists():
        return "gunicorn not installed"
    if protocol == "uwsgi":
        major = dist_version("gunicorn").split(".")[0]
        if not major.isdigit() or int(major) < 24:
            return f"gunicorn {dist_version('gunicorn')} predates --protocol uwsgi (needs 24+)"
    return None


# Granian -----------------------------------------------------------------------------


def granian_command(launch: Launch) -> list[str]:
    return [
        str(VENV_BIN / "granian"),
        "--interface",
        "wsgi",
        "--host",
        HOST,
        "--port",
        str(launch.port),
        "--workers",
        "1",
        "--blocking-threads",
        str(launch.threads),
        "--runtime-threads",
        "1",
        "--http",
        "1",
        "--no-ws",
        "--no-access-log",
        "--log-level",
        "warning",
        "--backlog",
        "2048",
        "--working-dir",
        str(APPS_DIR),
        *(static_files.granian_args(launch.static_dir) if launch.static_dir else []),
        f"{launch.module}:app",
    ]


# Static files: nginx itself, and WhiteNoise under Gunicorn ---------------------------------


def nginx_static_command(launch: Launch) -> list[str]:
    binary = nginx_binary() or "nginx"
    prefix = Path(launch.static_dir).parent / f"nginx-static-{launch.port}"
    return static_files.nginx_command(binary, prefix, HOST, launch.port, launch.static_dir)


def nginx_static_unavailable(_protocol: Protocol) -> str | None:
    return None if nginx_binary() else "nginx is not installed"


def whitenoise_command(launch: Launch) -> list[str]:
    cmd = gunicorn_command(dataclasses.replace(launch, module="static_whitenoise"))
    return [*cmd[:-1], *static_files.gunicorn_env_args(launch.static_dir), cmd[-1]]


def whitenoise_unavailable(protocol: Protocol) -> str | None:
    if importlib.util.find_spec("whitenoise") is None:
        return "whitenoise not installed"
    return gunicorn_unavailable(protocol)


# Waitress ----------------------------------------------------------------------------


def waitress_command(launch: Launch) -> list[str]:
    return [
        str(VENV_BIN / "waitress-serve"),
        f"--listen={HOST}:{launch.port}",
        f"--threads={launch.threads}",
        "--connection-limit=2000",
        "--backlog=2048",
        "--asyncore-use-poll",
        "--channel-timeout=60",
        f"{launch.module}:app",
    ]


# bjoern ------------------------------------------------------------------------------


def bjoern_command(launch: Launch) -> list[str]:
    return [
        sys.executable,
        str(SERVERS_DIR / "bjoern_run.py"),
        HOST,
        str(launch.port),
        f"{launch.module}:app",
    ]


def bjoern_unavailable(_protocol: Protocol) -> str | None:
    return (
        None
        if importlib.util.find_spec("bjoern")
        else "bjoern not installed (it needs libev-dev and a C compiler)"
    )


SERVERS: dict[str, ServerDef] = {
    s.key: s
    for s in (
        ServerDef(
            "drover",
            "Drover",
            frozenset({"http", "uwsgi"}),
            drover_command,
            drover_unavailable,
            drover_version,
            drover_env,
        ),
        ServerDef(
            "drover_stats",
            "Drover --stats",
            frozenset({"http"}),
            drover_stats_command,
            drover_stats_unavailable,
            drover_version,
            drover_env,
        ),
        ServerDef(
            "uwsgi",
            "uWSGI",
            frozenset({"http", "uwsgi"}),
            uwsgi_command,
            venv_tool("uwsgi"),
            lambda: dist_version("pyuwsgi"),
        ),
        ServerDef(
            "gunicorn",
            "Gunicorn gthread",
            frozenset({"http", "uwsgi"}),
            gunicorn_command,
            gunicorn_unavailable,
            lambda: dist_version("gunicorn"),
        ),
        ServerDef(
            "granian",
            "Granian",
            frozenset({"http"}),
            granian_command,
            venv_tool("granian"),
            lambda: dist_version("granian"),
        ),
        ServerDef(
            "waitress",
            "Waitress",
            frozenset({"http"}),
            waitress_command,
            venv_tool("waitress-serve"),
            lambda: dist_version("waitress"),
        ),
        ServerDef(
            "nginx",
            "nginx (static files)",
            frozenset({"http"}),
            nginx_static_command,
            nginx_static_unavailable,
            lambda: tool_version([nginx_binary() or "nginx", "-v"]).split("/")[-1],
        ),
        ServerDef(
            "whitenoise",
            "WhiteNoise + Gunicorn gthread",
            frozenset({"http"}),
            whitenoise_command,
            whitenoise_unavailable,
            lambda: f"{dist_version('whitenoise')} (Gunicorn {dist_version('gunicorn')})",
        ),
        ServerDef(
            "bjoern",
            "bjoern",
            frozenset({"http"}),
            bjoern_command,
            bjoern_unavailable,
            lambda: dist_version("bjoern"),
        ),
    )
}

ALL_DIRECT = ("drover", "granian", "bjoern", "gunicorn", "uwsgi", "waitress")
STATIC_SERVERS = ("drover", "nginx", "granian", "whitenoise")
STATIC_NOTE = (
    "Each server serves the same folder at /static/: Drover with --static-map, nginx with "
    "`alias` (sendfile on, tcp_nopush on, 1 worker process, on the server core like the "
    "others), Granian with its static mount, WhiteNoise in front of the hello app under "
    "Gunicorn gthread."
)


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    workload: Workload
    servers: tuple[str, ...]
    threads: int = 1
    front: Front = "direct"
    note: str = ""
    static: bool = False  # the servers serve static_files' folder (Launch.static_dir)

    @property
    def protocol(self) -> Protocol:
        return "uwsgi" if self.front == "nginx_uwsgi" else "http"


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "hello", "1. Hello world (13-byte body, 50 keep-alive connections)", HELLO, ALL_DIRECT
    ),
    Scenario(
        "hello_stats",
        "1b. Hello world with --stats on, side by side with stats off (50 connections)",
        HELLO,
        ("drover", "drover_stats"),
        note="The cost of counting every request on the stats scoreboard.",
    ),
    Scenario("flask", "2. Flask JSON endpoint (50 connections)", FLASK, ALL_DIRECT),
    Scenario("big_get", "3a. 1 MiB response body (8 connections)", BIG_GET, ALL_DIRECT),
    Scenario(
        "big_post",
        "3b. 10 MiB POST body, read whole, length answered (8 connections)",
        BIG_POST,
        ALL_DIRECT,
    ),
    Scenario(
        "nginx_uwsgi",
        "4a. nginx uwsgi_pass (hello, 50 client connections)",
        HELLO,
        ("drover", "uwsgi", "gunicorn"),
        front="nginx_uwsgi",
        note="nginx (1 worker) runs on the client core with wrk; uwsgi_pass opens one "
        "upstream connection per request.",
    ),
    Scenario(
        "nginx_http",
        "4b. nginx proxy_pass (hello, 50 client connections)",
        HELLO,
        ("drover", "granian", "gunicorn"),
        front="nginx_http",
        note="nginx (1 worker) runs on the client core with wrk; upstream keepalive 64.",
    ),
    Scenario(
        "blocking",
        f"5. Blocking app ({SLEEP_SECONDS * 1000:.0f} ms sleep, {SLEEP_THREADS} threads, "
        f"{SLEEPY.connections} connections)",
        SLEEPY,
        ("drover", "gunicorn", "uwsgi", "granian", "waitress"),
        threads=SLEEP_THREADS,
        note=f"Ideal: {SLEEP_THREADS} / {SLEEP_SECONDS} s = {IDEAL_BLOCKING_RPS:.0f} req/s.",
    ),
    Scenario("c1000", "6. 1,000 concurrent keep-alive connections (hello)", HELLO_1000, ALL_DIRECT),
    Scenario(
        "static_10k",
        "7a. Static file, 10 KiB (50 connections)",
        STATIC_10K,
        STATIC_SERVERS,
        static=True,
        note=STATIC_NOTE,
    ),
    Scenario(
        "static_1m",
        "7b. Static file, 1 MiB (8 connections)",
        STATIC_1M,
        STATIC_SERVERS,
        static=True,
        note=STATIC_NOTE,
    ),
)
SCENARIO_KEYS = tuple(s.key for s in SCENARIOS)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


_LIVE: dict[int, subprocess.Popen[bytes]] = {}


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it."""
    pgid = proc.pid  # started with start_new_session=True, so pid == pgid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        if wait_group_gone(proc, STOP_TIMEOUT):
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT)
    _LIVE.pop(proc.pid, None)


def wait_group_gone(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader so that it does not linger as a zombie
        if not group_alive(proc.pid):
            return True
        time.sleep(0.05)
    return False


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies still count for killpg; ignore group members that are only zombies.
    return any(proc_state(pid) not in ("Z", "") for pid in group_members(pgid))


def group_members(pgid: int) -> list[int]:
    members = []
    for pid, stat in iter_proc_stats():
        if stat[2] == str(pgid):
            members.append(pid)
    return members


def iter_proc_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, [state, ppid, pgrp, ...]) for every process, from /proc/PID/stat."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        yield int(entry), raw[raw.rindex(")") + 2 :].split()


def group_cpu_ticks(pgid: int) -> int:
    """utime + stime of every process in the group (fields 14 and 15 of /proc/PID/stat)."""
    return sum(int(stat[11]) + int(stat[12]) for _, stat in iter_proc_stats()
               if stat[2] == str(pgid))


def settle(pgid: int, quiet: float = 0.3, limit: float = 10.0) -> None:
    """Wait until a server has stopped using CPU after its round (closing a thousand connections
    can take a slow server seconds), so that it does not steal the core from the next one."""
    deadline = time.monotonic() + limit
    last = group_cpu_ticks(pgid)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = group_cpu_ticks(pgid)
        if now == last:
            return
        last = now


def proc_state(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return raw[raw.rindex(")") + 2 :].split()[0]


def cleanup_all() -> None:
    for proc in list(_LIVE.values()):
        with contextlib.suppress(Exception):  # best effort at exit
            kill_group(proc)


def pinned(core: str, cmd: Sequence[str], pin: bool) -> list[str]:
    return ["taskset", "-c", core, *cmd] if pin else list(cmd)


class Process:
    """A long-running child (a server or nginx) in its own session, logging to a file."""

    def __init__(
        self, name: str, cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path
    ) -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = log_path
        self._log = log_path.open("wb")
        try:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError:
            self._log.close()
            raise
        _LIVE[self.proc.pid] = self.proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        kill_group(self.proc)
        self._log.close()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        tail = text.strip().splitlines()[-lines:]
        return "\n".join("    | " + line for line in tail) or "    | (empty log)"


def read_tail(path: Path, chars: int) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# --------------------------------------------------------------------------- memory


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, stat in iter_proc_stats():
        children.setdefault(int(stat[1]), []).append(pid)
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@dataclass(frozen=True)
class Memory:
    worker_kib: int  # the worker: the biggest descendant, or the process itself when alone
    total_kib: int  # the whole process tree, master included


def measure_memory(root: int) -> Memory:
    tree = descendants(root)
    sizes = {pid: rss_kib(pid) for pid in [root, *tree]}
    worker = max((sizes[pid] for pid in tree), default=sizes[root])
    return Memory(worker_kib=worker, total_kib=sum(sizes.values()))


def server_pids(root: int) -> list[int]:
    """The processes that serve: the root's descendants (the workers; a master only manages),
    or the root itself when it works alone."""
    return descendants(root) or [root]


def cpu_ticks(pids: Iterable[int]) -> int:
    """utime + stime (fields 14 and 15 of /proc/PID/stat, every thread) of these processes."""
    total = 0
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total


class PeakRss:
    """Samples the summed RSS of some processes every 50 ms in a thread; ``peak`` in KiB."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(rss_kib(pid) for pid in self.pids))
            self._stop.wait(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- requests


def http_request(port: int, workload: Workload) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=CHECK_TIMEOUT)
    try:
        headers = {"Content-Type": "application/octet-stream"} if workload.body else {}
        conn.request(workload.method, workload.path, body=workload.body or None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def uwsgi_request(port: int, workload: Workload) -> tuple[int, bytes]:
    """One request in the uwsgi binary protocol, as nginx's uwsgi_pass sends it."""
    variables = {
        "REQUEST_METHOD": workload.method,
        "REQUEST_URI": workload.path,
        "PATH_INFO": workload.path,
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": HOST,
        "SERVER_PORT": str(port),
        "REMOTE_ADDR": HOST,
        "REMOTE_PORT": "1",
        "HTTP_HOST": f"{HOST}:{port}",
        "REQUEST_SCHEME": "http",
        "HTTP_CONNECTION": "close",  # as the nginx config sends it
    }
    if workload.body:
        variables["CONTENT_LENGTH"] = str(len(workload.body))
        variables["CONTENT_TYPE"] = "application/octet-stream"
    payload = b"".join(
        struct.pack("<H", len(k)) + k.encode() + struct.pack("<H", len(v)) + v.encode()
        for k, v in variables.items()
    )
    packet = struct.pack("<BHB", 0, len(payload), 0) + payload + workload.body
    with socket.create_connection((HOST, port), timeout=CHECK_TIMEOUT) as sock:
        sock.sendall(packet)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    first = head.split(b"\r\n", 1)[0].split()
    if len(first) < 2 or not first[1].isdigit():
        raise ValueError(f"unparsable uwsgi response {raw[:80]!r}")
    return int(first[1]), body


def check_once(port: int, workload: Workload, protocol: Protocol) -> str | None:
    """None when the server gives the expected answer, else what went wrong."""
    try:
        send = http_request if protocol == "http" else uwsgi_request
        status, body = send(port, workload)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    if status != 200:
        return f"status {status}: {body[:120]!r}"
    return workload.check(body)


def wait_answering(
    process: Process, port: int, workload: Workload, protocol: Protocol
) -> str | None:
    deadline = time.monotonic() + START_TIMEOUT
    error: str | None = "never tried"
    while time.monotonic() < deadline:
        if not process.alive():
            return f"exited with code {process.proc.returncode} before answering"
        error = check_once(port, workload, protocol)
        if error is None:
            return None
        time.sleep(0.1)
    return f"no correct answer within {START_TIMEOUT:.0f} s (last: {error})"


# --------------------------------------------------------------------------- wrk


@dataclass(frozen=True)
class WrkResult:
    rps: float
    requests: int
    p50_ms: float
    p99_ms: float
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    non_2xx: int  # wrk counts responses with status >= 400
    # The server's worker(s): utime + stime over the round (and its settling) per request, in
    # microseconds; peak RSS during the round and RSS before the scenario's first request.
    cpu_us: float = 0.0
    peak_rss_kib: int = 0
    idle_rss_kib: int = 0

    @property
    def errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts


def run_wrk(url: str, workload: Workload, duration: float, pin: bool) -> WrkResult:
    seconds = max(1, round(duration))
    cmd = pinned(
        CLIENT_CORE,
        [
            "wrk",
            "-t1",
            f"-c{workload.connections}",
            f"-d{seconds}s",
            f"--timeout={WRK_TIMEOUT}",
            "-s",
            str(LUA_DIR / workload.script),
            url,
        ],
        pin,
    )
    env = {**os.environ, "BENCH_LUA_DIR": str(LUA_DIR)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + WRK_SLACK)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = json.loads(line.removeprefix("BENCH_JSON "))
            break
    else:
        raise RuntimeError(
            f"wrk exited {proc.returncode} without a report: {(proc.stderr or proc.stdout)[-400:]}"
        )
    duration_s = data["duration_us"] / 1e6
    return WrkResult(
        rps=data["requests"] / duration_s if duration_s else 0.0,
        requests=int(data["requests"]),
        p50_ms=data["lat_p50_us"] / 1000,
        p99_ms=data["lat_p99_us"] / 1000,
        connect_errors=int(data["connect_errors"]),
        read_errors=int(data["read_errors"]),
        write_errors=int(data["write_errors"]),
        timeouts=int(data["timeouts"]),
        non_2xx=int(data["non_2xx"]),
    )


# --------------------------------------------------------------------------- nginx


UWSGI_PARAMS = """
            uwsgi_param QUERY_STRING $query_string;
            uwsgi_param REQUEST_METHOD $request_method;
            uwsgi_param CONTENT_TYPE $content_type;
            uwsgi_param CONTENT_LENGTH $content_length;
            uwsgi_param REQUEST_URI $request_uri;
            uwsgi_param PATH_INFO $document_uri;
            uwsgi_param DOCUMENT_ROOT $document_root;
            uwsgi_param SERVER_PROTOCOL $server_protocol;
            uwsgi_param REQUEST_SCHEME $scheme;
            uwsgi_param REMOTE_ADDR $remote_addr;
            uwsgi_param REMOTE_PORT $remote_port;
            uwsgi_param SERVER_PORT $server_port;
            uwsgi_param SERVER_NAME $server_name;
            # The uwsgi protocol has no response framing: the backend must close after each
            # response.  Gunicorn keeps the connection open unless told, so tell every backend.
            uwsgi_param HTTP_CONNECTION close;"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def nginx_config(prefix: Path, front: Front, routes: list[tuple[str, int, int]]) -> str:
    """routes: (name, nginx listen port, backend port)."""
    blocks = []
    for name, listen, backend in routes:
        if front == "nginx_http":
            blocks.append(f"""
    upstream up_{name} {{
        server {HOST}:{backend};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {HOST}:{listen} backlog=4096;
        location / {{
            proxy_pass http://up_{name};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}""")
        else:
            blocks.append(f"""
    server {{
        listen {HOST}:{listen} backlog=4096;
        location / {{{UWSGI_PARAMS}
            uwsgi_pass {HOST}:{backend};
        }}
    }}""")
    temp = prefix / "tmp"
    return f"""worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_max_body_size 32m;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    uwsgi_temp_path {temp}/uwsgi;
    fastcgi_temp_path {temp}/fastcgi;
    scgi_temp_path {temp}/scgi;
{"".join(blocks)}
}}
"""


# --------------------------------------------------------------------------- running


@dataclass
class Outcome:
    """One server in one scenario."""

    server: str
    status: Literal["ok", "unavailable", "failed"] = "ok"
    reason: str = ""
    rounds: list[WrkResult] = field(default_factory=list)
    memory: Memory | None = None
    idle_rss_kib: int = 0  # the worker(s) once started, before any load

    @property
    def name(self) -> str:
        return SERVERS[self.server].name

    def median(self, attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in self.rounds))

    def total(self, attr: str) -> int:
        return sum(getattr(r, attr) for r in self.rounds)


@dataclass
class ScenarioResult:
    scenario: Scenario
    outcomes: list[Outcome]
    note: str = ""

    def get(self, server: str) -> Outcome | None:
        for outcome in self.outcomes:
            if outcome.server == server and outcome.status == "ok" and outcome.rounds:
                return outcome
        return None


@dataclass(frozen=True)
class Settings:
    duration: float
    rounds: int
    warmup: float
    smoke: bool
    pin: bool
    servers: frozenset[str]
    workdir: Path


class Runner:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def run(self, scenario: Scenario) -> ScenarioResult:
        s = self.settings
        log(f"=== {scenario.key}: {scenario.title}")
        outcomes = [Outcome(key) for key in scenario.servers if key in s.servers]
        live: dict[str, tuple[Process, int]] = {}  # server -> (process, port wrk targets)
        nginx: Process | None = None
        note = ""
        try:
            for outcome in outcomes:
                self._start(scenario, outcome, live)
            if scenario.front != "direct" and live:
                nginx, note = self._start_nginx(scenario, outcomes, live)
            running = [o for o in outcomes if o.server in live]
            self._warm_up(scenario, running, live)
            for round_no in range(1, s.rounds + 1):
                for outcome in running:
                    if outcome.status != "ok":
                        continue
                    self._measure(scenario, outcome, live, round_no)
            for outcome in running:
                if outcome.status == "ok":
                    outcome.memory = measure_memory(live[outcome.server][0].pid)
        finally:
            if nginx is not None:
                nginx.stop()
            for process, _port in live.values():
                process.stop()
        return ScenarioResult(scenario, outcomes, note)

    def _start(
        self, scenario: Scenario, outcome: Outcome, live: dict[str, tuple[Process, int]]
    ) -> None:
        server = SERVERS[outcome.server]
        reason = server.unavailable(scenario.protocol)
        if reason:
            outcome.status, outcome.reason = "unavailable", reason
            log(f"  {server.name}: UNAVAILABLE - {reason}")
            return
        port = free_port()
        static_dir = ""
        if scenario.static:
            static_dir = str(static_files.make_files(self.settings.workdir / "static"))
        launch = Launch(
            scenario.workload.app, port, scenario.threads, scenario.protocol, static_dir
        )
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **server.extra_env()}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(APPS_DIR), env.get("PYTHONPATH", "")) if p
        )
        log_path = self.settings.workdir / f"{scenario.key}-{server.key}.log"
        cmd = pinned(SERVER_CORE, server.command(launch), self.settings.pin)
        try:
            process = Process(server.name, cmd, log_path, env, APPS_DIR)
        except OSError as exc:
            outcome.status, outcome.reason = "failed", f"could not run {cmd[0]}: {exc}"
            log(f"  {server.name}: FAILED: {outcome.reason}")
            return
        error = wait_answering(process, port, scenario.workload, scenario.protocol)
        if error:
            outcome.status, outcome.reason = "failed", f"did not start: {error}"
            log(
                f"  {server.name}: FAILED to start: {error}\n"
                f"    $ {' '.join(cmd)}\n{process.log_tail()}"
            )
            process.stop()
            return
        outcome.idle_rss_kib = sum(rss_kib(pid) for pid in server_pids(process.pid))
        log(f"  {server.name}: up on port {port} (pid {process.pid})")
        live[outcome.server] = (process, port)

    def _start_nginx(
        self, scenario: Scenario, outcomes: list[Outcome], live: dict[str, tuple[Process, int]]
    ) -> tuple[Process | None, str]:
        binary = nginx_binary()
        if binary is None:
            for outcome in outcomes:
                if outcome.server in live:
                    outcome.status, outcome.reason = "unavailable", "nginx is not installed"
            return None, "nginx is not installed"
        prefix = Path(tempfile.mkdtemp(prefix=f"nginx-{scenario.key}-", dir=self.settings.workdir))
        for sub in ("body", "proxy", "uwsgi", "fastcgi", "scgi"):
            (prefix / "tmp" / sub).mkdir(parents=True)
        prefix.chmod(0o755)
        routes = [(key, free_port(), port) for key, (_p, port) in live.items()]
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_config(prefix, scenario.front, routes))
        cmd = pinned(
            CLIENT_CORE,
            [
                binary,
                "-p",
                str(prefix),
                "-e",
                str(prefix / "error.log"),
                "-c",
                str(conf),
                "-g",
                "daemon off;",
            ],
            self.settings.pin,
        )
        nginx = Process("nginx", cmd, prefix / "stdout.log", dict(os.environ), prefix)
        # From now on wrk talks to nginx: swap each backend port for its nginx port.
        for key, listen, _backend in routes:
            process, _ = live[key]
            outcome = next(o for o in outcomes if o.server == key)
            error = wait_answering(nginx, listen, scenario.workload, "http")
            if error:
                errlog = read_tail(prefix / "error.log", 800)
                outcome.status, outcome.reason = "failed", f"no answer through nginx: {error}"
                log(f"  {outcome.name} via nginx: FAILED: {error}\n{nginx.log_tail()}\n{errlog}")
            live[key] = (process, listen)
        return nginx, ""

    def _warm_up(
        self, scenario: Scenario, running: list[Outcome], live: dict[str, tuple[Process, int]]
    ) -> None:
        if self.settings.smoke or self.settings.warmup <= 0:
            return  # the start-up check request was the warm-up
        for outcome in running:
            if outcome.status != "ok":
                continue
            process, port = live[outcome.server]
            try:
                run_wrk(
                    f"http://{HOST}:{port}{scenario.workload.path}",
                    scenario.workload,
                    self.settings.warmup,
                    self.settings.pin,
                )
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                log(f"  {outcome.name}: warm-up problem: {exc}")
            settle(process.pid)

    def _measure(
        self,
        scenario: Scenario,
        outcome: Outcome,
        live: dict[str, tuple[Process, int]],
        round_no: int,
    ) -> None:
        process, port = live[outcome.server]
        pids = server_pids(process.pid)
        ticks = cpu_ticks(pids)
        try:
            with PeakRss(pids) as rss:
                result = run_wrk(
                    f"http://{HOST}:{port}{scenario.workload.path}",
                    scenario.workload,
                    self.settings.duration,
                    self.settings.pin,
                )
        except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
            outcome.status, outcome.reason = "failed", f"wrk failed in round {round_no}: {exc}"
            log(f"  {outcome.name}: FAILED: {outcome.reason}\n{process.log_tail()}")
            return
        settle(process.pid)
        ticks = cpu_ticks(pids) - ticks
        if result.requests:
            result = dataclasses.replace(
                result,
                cpu_us=ticks / CLOCK_TICKS * 1e6 / result.requests,
                peak_rss_kib=rss.peak,
                idle_rss_kib=outcome.idle_rss_kib,
            )
        if not process.alive():
            outcome.status, outcome.reason = (
                "failed",
                f"died during round {round_no} (exit {process.proc.returncode})",
            )
            log(f"  {outcome.name}: FAILED: {outcome.reason}\n{process.log_tail()}")
            return
        if result.requests == 0:
            outcome.status, outcome.reason = "failed", f"answered no request in round {round_no}"
            log(f"  {outcome.name}: FAILED: {outcome.reason}\n{process.log_tail()}")
            return
        outcome.rounds.append(result)
        r = result
        log(
            f"  round {round_no} {outcome.name:18} {r.rps:10.0f} req/s  {r.cpu_us:8.1f} us CPU/req"
            f"  p50 {r.p50_ms:7.2f} ms  "
            f"p99 {r.p99_ms:7.2f} ms  errors {r.errors} (c{r.connect_errors} r{r.read_errors} "
            f"w{r.write_errors} t{r.timeouts})  non-2xx {r.non_2xx}"
        )


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class TargetResult:
    target: str
    measured: str
    verdict: Literal["PASS", "MISS", "N/A"]


def ratio_target(
    results: dict[str, ScenarioResult], scenario: str, peer: str, minimum: float, label: str
) -> TargetResult:
    res = results.get(scenario)
    drover = res.get("drover") if res else None
    other = res.get(peer) if res else None
    if res is None or drover is None or other is None:
        missing = (
            "scenario not run"
            if res is None
            else "Drover"
            if drover is None
            else SERVERS[peer].name
        )
        return TargetResult(label, f"not measured ({missing})", "N/A")
    ratio = drover.median("rps") / other.median("rps")
    return TargetResult(
        label,
        f"{ratio:.2f}x ({drover.median('rps'):,.0f} vs {other.median('rps'):,.0f} req/s)",
        "PASS" if ratio >= minimum else "MISS",
    )


def best_peer_target(
    results: dict[str, ScenarioResult], scenario: str, peers: Sequence[str], minimum: float,
    label: str
) -> TargetResult:
    """Drover's req/s against the better of ``peers`` in the same run."""
    res = results.get(scenario)
    drover = res.get("drover") if res else None
    others = [o for o in (res.get(p) for p in peers) if o is not None] if res else []
    if res is None or drover is None or not others:
        return TargetResult(label, "not measured", "N/A")
    best = max(others, key=lambda o: o.median("rps"))
    ratio = drover.median("rps") / best.median("rps")
    return TargetResult(
        label,
        f"{ratio:.2f}x {best.name} ({drover.median('rps'):,.0f} vs {best.median('rps'):,.0f} "
        "req/s)",
        "PASS" if ratio >= minimum else "MISS",
    )


def cpu_target(
    results: dict[str, ScenarioResult], scenario: str, peer: str, maximum: float, label: str
) -> TargetResult:
    """Drover's CPU time per request against a peer's (lower is better)."""
    res = results.get(scenario)
    drover = res.get("drover") if res else None
    other = res.get(peer) if res else None
    if res is None or drover is None or other is None or not other.median("cpu_us"):
        return TargetResult(label, "not measured", "N/A")
    ratio = drover.median("cpu_us") / other.median("cpu_us")
    return TargetResult(
        label,
        f"{ratio:.2f}x ({drover.median('cpu_us'):,.1f} vs {other.median('cpu_us'):,.1f} "
        "us/req)",
        "PASS" if ratio <= maximum else "MISS",
    )


def rss_growth_target(
    results: dict[str, ScenarioResult], scenario: str, limit_mib: float, label: str
) -> TargetResult:
    """Drover's worker RSS during the rounds, above its RSS before any load."""
    res = results.get(scenario)
    drover = res.get("drover") if res else None
    if drover is None:
        return TargetResult(label, "not measured", "N/A")
    growth = max(r.peak_rss_kib - r.idle_rss_kib for r in drover.rounds) / 1024
    return TargetResult(
        label, f"+{growth:.1f} MiB at peak", "PASS" if growth <= limit_mib else "MISS"
    )


def evaluate_targets(results: dict[str, ScenarioResult]) -> list[TargetResult]:
    targets = [
        ratio_target(results, "hello", "granian", 1.3, "Hello world: Drover >= 1.3x Granian"),
        ratio_target(results, "hello", "bjoern", 0.7, "Hello world: Drover >= 0.7x bjoern"),
        ratio_target(
            results, "hello", "gunicorn", 10.0, "Hello world: Drover >= 10x Gunicorn gthread"
        ),
        ratio_target(results, "flask", "granian", 1.1, "Flask: Drover >= 1.1x Granian"),
        ratio_target(
            results, "nginx_uwsgi", "uwsgi", 1.0, "nginx uwsgi_pass: Drover >= 1.0x uWSGI"
        ),
        cpu_target(
            results, "nginx_uwsgi", "uwsgi", 0.8,
            "nginx uwsgi_pass: Drover's CPU per request <= 0.8x uWSGI's",
        ),
        best_peer_target(
            results, "big_post", ("granian", "uwsgi"), 1.0,
            "10 MiB POST: Drover >= 1.0x the better of Granian and uWSGI",
        ),
        rss_growth_target(
            results, "big_post", 64, "10 MiB POST: Drover's worker RSS <= 64 MiB above idle"
        ),
    ]

    for key, size in (("static_1m", "1 MiB"), ("static_10k", "10 KiB")):
        share = 0.8 if key == "static_1m" else 0.5
        targets.append(
            ratio_target(results, key, "nginx", share, f"Static {size}: Drover >= {share}x nginx")
        )
        for peer in ("granian", "whitenoise"):
            targets.append(
                ratio_target(
                    results, key, peer, 1.0, f"Static {size}: Drover ahead of {SERVERS[peer].name}"
                )
            )

    label = "Hello world with --stats: >= 0.97x stats off (same run)"
    res = results.get("hello_stats")
    off = res.get("drover") if res else None
    on = res.get("drover_stats") if res else None
    if off is None or on is None:
        targets.append(TargetResult(label, "not measured", "N/A"))
    else:
        share = on.median("rps") / off.median("rps")
        targets.append(
            TargetResult(
                label,
                f"{share:.3f}x ({on.median('rps'):,.0f} vs {off.median('rps'):,.0f} req/s)",
                "PASS" if share >= 0.97 else "MISS",
            )
        )

    ideal = IDEAL_BLOCKING_RPS
    label = f"Blocking app: >= 90% of ideal {ideal:.0f} req/s"
    blocking = results["blocking"].get("drover") if "blocking" in results else None
    if blocking is None:
        targets.append(TargetResult(label, "not measured", "N/A"))
    else:
        share = blocking.median("rps") / ideal
        targets.append(
            TargetResult(
                label,
                f"{blocking.median('rps'):,.0f} req/s = {share:.0%} of ideal",
                "PASS" if share >= 0.9 else "MISS",
            )
        )

    label = "1,000 connections: no errors, req/s >= 80% of the 50-connection figure"
    many = results["c1000"].get("drover") if "c1000" in results else None
    few = results["hello"].get("drover") if "hello" in results else None
    if many is None or few is None:
        targets.append(
            TargetResult(label, "not measured (needs the hello and c1000 scenarios)", "N/A")
        )
    else:
        errors = many.total("errors") + many.total("non_2xx")
        share = many.median("rps") / few.median("rps")
        verdict: Literal["PASS", "MISS"] = "PASS" if errors == 0 and share >= 0.8 else "MISS"
        targets.append(
            TargetResult(
                label, f"{errors} errors, {share:.0%} of {few.median('rps'):,.0f} req/s", verdict
            )
        )

    label = "Worker RSS <= Gunicorn's (every scenario with both)"
    pairs = []
    for key, res in results.items():
        d, g = res.get("drover"), res.get("gunicorn")
        if d and g and d.memory and g.memory:
            pairs.append(
                (
                    d.memory.worker_kib / g.memory.worker_kib,
                    key,
                    d.memory.worker_kib,
                    g.memory.worker_kib,
                )
            )
    if not pairs:
        targets.append(TargetResult(label, "not measured", "N/A"))
    else:
        worst = max(pairs)
        targets.append(
            TargetResult(
                label,
                f"worst: {worst[2] / 1024:.1f} vs {worst[3] / 1024:.1f} MiB ({worst[1]})",
                "PASS" if worst[0] <= 1.0 else "MISS",
            )
        )
    return targets


# --------------------------------------------------------------------------- report


def os_name() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "unknown")
    except OSError:
        return "unknown"


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / MIB:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cores (nproc)": str(os.cpu_count()),
        "CPU": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "OS": os_name(),
        "Python": platform.python_version(),
    }


def tool_version(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (proc.stdout + proc.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


def versions() -> dict[str, str]:
    found = {s.name.split()[0]: s.version() for s in SERVERS.values()}
    found["Flask"] = dist_version("flask")
    found["wrk"] = tool_version(["wrk", "--version"]).split("[")[0].replace("wrk ", "").strip()
    nginx = nginx_binary()
    found["nginx"] = tool_version([nginx, "-v"]).split("/")[-1] if nginx else "not installed"
    return found


def fmt_ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else "-"


def fmt_errors(o: Outcome) -> str:
    """Total errors, with their kinds when there are any."""
    kinds = [
        (short, o.total(attr))
        for short, attr in (
            ("connect", "connect_errors"),
            ("read", "read_errors"),
            ("write", "write_errors"),
            ("timeout", "timeouts"),
        )
    ]
    detail = ", ".join(f"{n} {short}" for short, n in kinds if n)
    return f"{o.total('errors')} ({detail})" if detail else "0"


def scenario_table(res: ScenarioResult) -> list[str]:
    drover = res.get("drover")
    base_rps = drover.median("rps") if drover else None
    base_p50 = drover.median("p50_ms") if drover else None
    base_p99 = drover.median("p99_ms") if drover else None
    base_rss = drover.memory.worker_kib if drover and drover.memory else None
    base_cpu = drover.median("cpu_us") if drover else None
    lines = [
        "| server | req/s | x Drover | CPU us/req (x Drover) | p50 ms (x Drover) "
        "| p99 ms (x Drover) | errors | non-2xx | worker RSS MiB (x Drover) | all processes MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o in res.outcomes:
        name = f"**{o.name}**" if o.server == "drover" else o.name
        if o.status != "ok" or not o.rounds:
            what = "unavailable" if o.status == "unavailable" else "FAILED"
            lines.append(f"| {name} | {what}: {o.reason.replace('|', '/')} | | | | | | | | |")
            continue
        rps, p50, p99 = o.median("rps"), o.median("p50_ms"), o.median("p99_ms")
        mem = o.memory
        rss = f"{mem.worker_kib / 1024:.1f} ({fmt_ratio(mem.worker_kib, base_rss)})" if mem else "-"
        total = f"{mem.total_kib / 1024:.1f}" if mem else "-"
        cells = [
            name,
            f"{rps:,.0f}",
            fmt_ratio(rps, base_rps),
            f"{o.median('cpu_us'):,.1f} ({fmt_ratio(o.median('cpu_us'), base_cpu)})",
            f"{p50:.2f} ({fmt_ratio(p50, base_p50)})",
            f"{p99:.2f} ({fmt_ratio(p99, base_p99)})",
            fmt_errors(o),
            str(o.total("non_2xx")),
            rss,
            total,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


METHOD = (
    f"Method: one worker process per server, pinned to core {SERVER_CORE} with taskset; wrk "
    f"(1 thread) pinned to core {CLIENT_CORE}, and nginx (1 worker) too in the nginx scenarios. "
    "Rounds are interleaved (A B C A B C ...); the tables show the median of the rounds, errors "
    "summed over all rounds. `x Drover` is the figure divided by Drover's from the same run. "
    f"Errors are wrk's connect/read/write errors and timeouts ({WRK_TIMEOUT}); non-2xx is wrk's "
    "count of responses with status >= 400 (every server's answer is also checked for status 200 "
    "and the exact body before counting). Worker RSS is read from /proc after the last round: "
    "the worker process (the largest child of a master), or the process itself for "
    "single-process servers; the last column adds up the whole process tree. CPU us/req is the "
    "utime + stime of the worker process(es) (every process below the master, or the server "
    "itself when alone) over each counted round, divided by its requests (median of rounds)."
)


def cpu_ranking(results: dict[str, ScenarioResult]) -> list[str]:
    """Servers ranked by CPU time per request in each scenario (noise moves req/s on a shared
    2-core machine, where the client side often limits it; it hardly moves this)."""
    lines = [
        "| scenario | servers by CPU per request, lowest first (us/req) |",
        "|---|---|",
    ]
    for res in results.values():
        ok = [o for o in res.outcomes if o.status == "ok" and o.rounds and o.median("cpu_us")]
        ranked = sorted(ok, key=lambda o: o.median("cpu_us"))
        cells = ", ".join(
            (f"**{o.name}**" if o.server == "drover" else o.name) + f" {o.median('cpu_us'):,.1f}"
            for o in ranked
        )
        lines.append(f"| {res.scenario.key} | {cells or '-'} |")
    return lines


def write_markdown(
    path: Path,
    results: dict[str, ScenarioResult],
    targets: list[TargetResult],
    settings: Settings,
    started: dt.datetime,
    elapsed: float,
) -> None:
    mode = "smoke" if settings.smoke else "full"
    warmup = "no" if settings.smoke else f"{settings.warmup:g} s"
    out = [
        "# Drover benchmark results",
        "",
        f"Generated by `bash bench/run.sh` on {started:%Y-%m-%d %H:%M} UTC ({mode} mode, "
        f"{settings.rounds} round(s) of {settings.duration:g} s per server, "
        f"{warmup} warm-up, took {elapsed / 60:.1f} min).",
        "",
        METHOD,
        "",
        "## Targets",
        "",
        "| target | measured | result |",
        "|---|---|---|",
        *[f"| {t.target} | {t.measured} | **{t.verdict}** |" for t in targets],
        "",
        "## CPU per request",
        "",
        "utime + stime of each server's worker process(es) from /proc over the counted rounds "
        "(and the settling after each), divided by the requests answered.",
        "",
        *cpu_ranking(results),
        "",
    ]
    for res in results.values():
        out += [f"## {res.scenario.title}", ""]
        if res.scenario.note:
            out += [res.scenario.note, ""]
        if res.note:
            out += [res.note, ""]
        out += [*scenario_table(res), ""]
    out += ["## Machine", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in machine_info().items()]
    out += ["", "## Versions", "", "| component | version |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in versions().items()]
    out += ["", "![req/s per scenario](results.png)", ""]
    path.write_text("\n".join(out))


def write_chart(path: Path, results: dict[str, ScenarioResult]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        shout("matplotlib is missing: no chart written")
        return False
    shown = [r for r in results.values() if any(o.rounds and o.status == "ok" for o in r.outcomes)]
    if not shown:
        return False
    cols = 2
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.9 * rows), squeeze=False)
    for ax, res in zip(axes.flat, shown, strict=False):
        ok = [o for o in res.outcomes if o.status == "ok" and o.rounds]
        names = [o.name for o in ok]
        values = [o.median("rps") for o in ok]
        colours = ["#d9480f" if o.server == "drover" else "#4c6ef5" for o in ok]
        bars = ax.barh(names, values, color=colours)
        ax.invert_yaxis()
        drover = res.get("drover")
        for bar, value in zip(bars, values, strict=True):
            label = f"{value:,.0f}" + (f"  ({value / drover.median('rps'):.2f}x)" if drover else "")
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                " " + label,
                va="center",
                fontsize=8,
            )
        ax.set_title(res.scenario.title, fontsize=9)
        ax.set_xlabel("req/s (median)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.set_xlim(0, max(values) * 1.45 if values else 1)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:,.0f}"))
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    fig.suptitle(
        "Drover vs peers: one worker on one core, wrk on the other (ratios are to Drover)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_json(path: Path, results: dict[str, ScenarioResult], targets: list[TargetResult]) -> None:
    data = {
        "scenarios": {
            key: [
                {
                    "server": o.server,
                    "status": o.status,
                    "reason": o.reason,
                    "rounds": [dataclasses.asdict(r) for r in o.rounds],
                    "worker_rss_kib": o.memory.worker_kib if o.memory else None,
                    "total_rss_kib": o.memory.total_kib if o.memory else None,
                }
                for o in res.outcomes
            ]
            for key, res in results.items()
        },
        "targets": [t.__dict__ for t in targets],
    }
    path.write_text(json.dumps(data, indent=1))


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="1 s per server and scenario, 1 round, no warm-up; results to a temp dir",
    )
    parser.add_argument(
        "--duration", type=float, help="seconds per measurement (default 10, smoke 1)"
    )
    parser.add_argument(
        "--rounds", type=int, help="interleaved rounds per scenario (default 5, smoke 1)"
    )
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="warm-up seconds per server (default 3)"
    )
    parser.add_argument(
        "--only",
        "--scenarios",
        dest="only",
        action="append",
        default=[],
        metavar="SCENARIO",
        help="run only these scenarios (repeatable or comma-separated): "
        + ", ".join(SCENARIO_KEYS),
    )
    parser.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help=f"comma-separated subset of servers (default all: {','.join(SERVERS)})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="directory for RESULTS.md/results.png (default bench/, or a temp dir in smoke mode)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="treat an unavailable server as a failure"
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin with taskset (not for real figures)"
    )
    args = parser.parse_args(argv)
    only = [k.strip() for item in args.only for k in item.split(",") if k.strip()]
    unknown = sorted(set(only) - set(SCENARIO_KEYS))
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIO_KEYS)}"
        )
    args.only = only
    servers = {k.strip() for k in args.servers.split(",") if k.strip()}
    if servers - set(SERVERS):
        parser.error(f"unknown server(s) {', '.join(sorted(servers - set(SERVERS)))}")
    args.servers = servers
    return args


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        shout("wrk is not installed (apt-get install wrk): cannot benchmark anything")
        return 2
    raise_fd_limit()
    pin = not args.no_pin
    if pin and ((os.cpu_count() or 1) < 2 or shutil.which("taskset") is None):
        shout(
            "fewer than 2 cores or no taskset: running WITHOUT pinning, figures are not comparable"
        )
        pin = False

    workdir = Path(tempfile.mkdtemp(prefix="drover-bench-"))
    out_dir = args.out or (workdir if args.smoke else BENCH_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        duration=args.duration if args.duration is not None else (1.0 if args.smoke else 10.0),
        rounds=args.rounds if args.rounds is not None else (1 if args.smoke else 5),
        warmup=0.0 if args.smoke else args.warmup,
        smoke=args.smoke,
        pin=pin,
        servers=frozenset(args.servers),
        workdir=workdir,
    )
    atexit.register(cleanup_all)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))

    log(
        f"logs in {workdir}; {settings.rounds} round(s) x {settings.duration:g} s, "
        f"warm-up {settings.warmup:g} s"
    )
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    runner = Runner(settings)
    results: dict[str, ScenarioResult] = {}
    for scenario in SCENARIOS:
        if args.only and scenario.key not in args.only:
            continue
        results[scenario.key] = runner.run(scenario)
    elapsed = time.monotonic() - t0

    targets = evaluate_targets(results)
    md = out_dir / "RESULTS.md"
    write_markdown(md, results, targets, settings, started, elapsed)
    write_json(out_dir / "results.json", results, targets)
    chart = write_chart(out_dir / "results.png", results)

    print()
    print(md.read_text().split("## Machine")[0])
    log(
        f"wrote {md}"
        + (f" and {out_dir / 'results.png'}" if chart else "")
        + f" in {elapsed:.0f} s"
    )

    failed = [
        (r.scenario.key, o) for r in results.values() for o in r.outcomes if o.status == "failed"
    ]
    unavailable = [
        (r.scenario.key, o)
        for r in results.values()
        for o in r.outcomes
        if o.status == "unavailable"
    ]
    if unavailable:
        shout(
            "NOT MEASURED (unavailable): "
            + "; ".join(f"{k}/{o.name}: {o.reason}" for k, o in unavailable)
        )
    if failed:
        shout("FAILED: " + "; ".join(f"{k}/{o.name}: {o.reason}" for k, o in failed))
    if not failed:
        log("every available server started and answered")
    print_tally(results)
    return 1 if failed or (args.strict and unavailable) else 0


def print_tally(results: dict[str, ScenarioResult]) -> None:
    """A closing line in the usual test-runner form, so that CI logs read at a glance."""
    outcomes = [o for r in results.values() for o in r.outcomes]
    passed = sum(o.status == "ok" for o in outcomes)
    failed = sum(o.status == "failed" for o in outcomes)
    skipped = sum(o.status == "unavailable" for o in outcomes)
    print(f"bench: {passed} passed, {failed} failed, {skipped} skipped", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
