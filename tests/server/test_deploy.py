"""deploy/ and the README's nginx example, each exercised with the real tools where they exist.

- README: its nginx example, with the drover options it shows, against Debian's nginx running
  as www-data (and, as a control, the same socket without those options is refused).
- deploy/nginx: ``nginx -t`` on the site as shipped; the site is also what the scale-out test
  (test_scale_out.py) runs.
- deploy/systemd: ``systemd-analyze verify`` with no warning, then the units played as systemd
  would: the socket made as mysite.socket says, ExecStart run with LISTEN_FDS and
  NOTIFY_SOCKET, ExecReload's HUP, and KillSignal within TimeoutStopSec.
- deploy/docker: no docker engine here, so the Dockerfile is checked for structure (non-root
  USER, exec-form ENTRYPOINT, SIGTERM, 0.0.0.0, COPY sources that exist) and its command is run
  on this host.
- deploy/logrotate: ``logrotate -d`` accepts it, and a forced rotation runs its postrotate
  ``kill -USR1`` against a daemonized Drover's pidfile.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from lifecycle import alive, group_pids, shared_dir, wait_for, wait_gone
from nginx import find_nginx, free_port, run_nginx, uwsgi_params
from test_systemd import NotifyListener, activated

from tests.conftest import REPO, DroverLauncher

DEPLOY = REPO / "deploy"
VENV_DROVER = Path(sys.executable).parent / "drover"


def readme_nginx_section() -> tuple[list[str], str, str]:
    """(the drover command's arguments, the socket path, the nginx location block)."""
    text = (REPO / "README.md").read_text()
    section = text.split("## nginx in front", 1)[1].split("\n## ", 1)[0]
    command = next(line for block in re.findall(r"```sh\n(.*?)```", section, re.S)
                   for line in block.splitlines() if line.startswith("drover "))
    location = re.findall(r"```nginx\n(.*?)```", section, re.S)[0]
    path = re.search(r"uwsgi_pass unix:(\S+);", location)
    assert path is not None
    return shlex.split(command)[1:], path.group(1), location


def nginx_worker_uids(nginx_pid: int) -> list[int]:
    uids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if re.search(rf"^PPid:\s+{nginx_pid}$", status, re.M):
                uid = re.search(r"^Uid:\s+(\d+)", status, re.M)
                assert uid is not None
                uids.append(int(uid.group(1)))
    return uids


@pytest.mark.skipif(os.geteuid() != 0, reason="nginx switches to www-data only as root")
@pytest.mark.parametrize("as_documented", [True, False])
def test_readme_nginx_example_works_with_nginx_as_www_data(drover: DroverLauncher,
                                                           as_documented: bool) -> None:
    args, documented_path, location = readme_nginx_section()
    assert args[-1] == "mysite.wsgi:application"
    with shared_dir() as run, shared_dir() as prefix:
        sock = run / "mysite.sock"
        options = [a.replace(documented_path, str(sock)) for a in args[:-1]]
        if not as_documented:  # the control: the bare socket, root's with umask 022's mode
            options = ["--uwsgi", str(sock)]
        server = drover(*options, "--workers", "1", ready_path=None)
        port = free_port()
        site = (f"server {{\n listen 127.0.0.1:{port};\n"
                + location.replace(documented_path, str(sock))
                .replace("include uwsgi_params;", f"include {uwsgi_params(prefix)};")
                + "}\n")
        nginx = run_nginx(prefix, site, {"site": port}, user="www-data")
        try:
            uids = nginx_worker_uids(nginx.proc.pid)
            assert uids and set(uids) == {33}  # nginx's worker really runs as www-data
            response = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
            if as_documented:
                assert response.status_code == 200 and "Drover" in response.text
            else:
                assert response.status_code == 502
                assert "Permission denied" in nginx.error_log()
        finally:
            nginx.stop()
        assert server.stop() == 0
        assert not sock.exists()


def test_nginx_site_passes_nginx_t(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    shutil.copy(uwsgi_params(tmp_path / "params"), tmp_path / "conf" / "uwsgi_params")
    (tmp_path / "conf" / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n access_log {tmp_path}/access.log;\n"
        f" include {DEPLOY / 'nginx' / 'mysite.conf'};\n}}\n")
    done = subprocess.run([find_nginx(), "-t", "-p", str(tmp_path), "-c", "conf/nginx.conf",
                           "-e", str(tmp_path / "error.log")], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


# -- systemd ---------------------------------------------------------------------------------


def unit(path: Path) -> dict[str, str]:
    """Key=value lines of a unit file (the last one wins, as for these keys in systemd)."""
    found = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found[key.strip()] = value.strip()
    return found


def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian: package systemd)")
    service = (DEPLOY / "systemd" / "mysite.service").read_text()
    assert "/srv/mysite/.venv/bin/drover " in service
    # verify checks that ExecStart's program exists: point it at this checkout's drover.
    (tmp_path / "mysite.service").write_text(
        service.replace("/srv/mysite/.venv/bin/drover", str(VENV_DROVER)))
    shutil.copy(DEPLOY / "systemd" / "mysite.socket", tmp_path / "mysite.socket")
    done = subprocess.run([analyze, "verify", "--man=no", "./mysite.socket", "./mysite.service"],
                          capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""  # unknown keys and bad values are only warnings


def test_systemd_units_run_as_systemd_would(tmp_path: Path) -> None:
    service = unit(DEPLOY / "systemd" / "mysite.service")
    sock_unit = unit(DEPLOY / "systemd" / "mysite.socket")
    assert service["Type"] == "notify" and service["NotifyAccess"] == "all"
    assert service["KillSignal"] == "SIGTERM" and service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/srv/mysite/.venv/bin/drover"
    graceful = float(argv[argv.index("--graceful-timeout") + 1])
    assert float(service["TimeoutStopSec"]) > graceful
    documented = sock_unit["ListenStream"]
    assert argv[argv.index("--uwsgi") + 1] == documented  # so the socket is matched too
    # The socket, as mysite.socket makes it.
    path = tmp_path / "mysite.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    os.chmod(path, int(sock_unit["SocketMode"], 8))
    shutil.chown(path, sock_unit["SocketUser"], sock_unit["SocketGroup"])
    listener.listen(int(sock_unit["Backlog"]))
    args = [str(path) if a == documented else a for a in argv[1:-1]]
    args += ["--pythonpath", str(REPO / "tests" / "apps"), "probe:hello_app"]
    notify = NotifyListener(tmp_path / "notify.sock")
    proc = activated(args, [listener], [sock_unit["FileDescriptorName"]],
                     {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC":
                      str(int(float(service["WatchdogSec"]) * 1_000_000))},
                     tmp_path / "drover.log")
    try:
        notify.wait_for("READY=1", timeout=30)
        subprocess.run(["/bin/kill", "-HUP", str(proc.pid)], check=True, timeout=10)
        reloading = notify.wait_for("RELOADING=1")
        notify.wait_for("READY=1", after=reloading, timeout=30)
        started = time.monotonic()
        proc.send_signal(getattr(signal, service["KillSignal"]))
        assert proc.wait(float(service["TimeoutStopSec"])) == 0
        assert time.monotonic() - started < graceful
        assert path.exists()  # the socket unit's (RemoveOnStop= is systemd's job)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        notify.close()
        listener.close()
    assert group_pids(proc.pid) == []


# -- docker ----------------------------------------------------------------------------------


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in (raw.strip() for raw in joined.splitlines())
            if line and not line.startswith("#")]


def test_dockerfile_structure() -> None:
    steps = dockerfile(DEPLOY / "docker" / "Dockerfile")
    kinds = [kind for kind, _ in steps]
    assert kinds[0] == "FROM"
    for kind, args in steps:
        if kind == "COPY":  # the build context is the repository root
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    users = [args for kind, args in steps if kind == "USER"]
    assert users and users[-1] not in ("root", "0"), "the container must not run as root"
    last_user = max(i for i, kind in enumerate(kinds) if kind == "USER")
    assert all(kind != "RUN" for kind in kinds[last_user:])  # nothing after needs root
    stop = [args for kind, args in steps if kind == "STOPSIGNAL"]
    assert stop in ([], ["SIGTERM"])  # SIGTERM: Drover's graceful stop
    entry = json.loads(next(args for kind, args in steps if kind == "ENTRYPOINT"))
    assert isinstance(entry, list)  # exec form: Drover is PID 1 and gets the signal itself
    assert entry[0] == "drover" and "0.0.0.0:8000" in entry
    assert "8000" in [args for kind, args in steps if kind == "EXPOSE"]
    assert "--daemonize" not in entry  # the container's process must stay in the foreground


def test_dockerfile_command_serves_and_stops_gracefully(drover: DroverLauncher) -> None:
    steps = dockerfile(DEPLOY / "docker" / "Dockerfile")
    entry = json.loads(next(args for kind, args in steps if kind == "ENTRYPOINT"))
    env: dict[str, str | None] = {}
    for kind, args in steps:
        if kind == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                env[key] = value
    assert "DROVER_GRACEFUL_TIMEOUT" in env
    # The container's address is its own; on this host: loopback, an ephemeral port.
    args = ["127.0.0.1:0" if a == "0.0.0.0:8000" else a for a in entry[1:]]
    server = drover(*args, env=env)
    assert requests.get(server.url + "/", timeout=10).status_code == 200
    assert server.stop(signal.SIGTERM) == 0


# -- logrotate -------------------------------------------------------------------------------


def test_logrotate_file_rotates_and_signals_the_master(tmp_path: Path) -> None:
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    if not os.access(logrotate, os.X_OK):
        pytest.fail("logrotate not found: scripts/setup.sh test installs Debian's logrotate")
    shipped = (DEPLOY / "logrotate" / "drover").read_text()
    log, pidfile = tmp_path / "drover.log", tmp_path / "drover.pid"
    config = (shipped.replace("/var/log/mysite/drover.log", str(log))
              .replace("/run/mysite/drover.pid", str(pidfile)))
    assert config.count(str(log)) == 1 and config.count(str(pidfile)) == 2
    (tmp_path / "logrotate.conf").write_text(config)
    state = tmp_path / "state"
    dry = subprocess.run([logrotate, "-d", "-s", str(state), str(tmp_path / "logrotate.conf")],
                         capture_output=True, text=True, timeout=30)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "error" not in (dry.stdout + dry.stderr).lower()

    done = subprocess.run(
        [sys.executable, "-m", "drover", "--daemonize", str(log), "--pidfile", str(pidfile),
         "--workers", "1", "--http", "127.0.0.1:0"], capture_output=True, text=True,
        timeout=30, cwd=str(REPO), env={k: v for k, v in os.environ.items()
                                        if not k.startswith("DROVER_")})
    assert done.returncode == 0, done.stderr
    master = int(pidfile.read_text())
    try:
        forced = subprocess.run([logrotate, "-f", "-s", str(state),
                                 str(tmp_path / "logrotate.conf")],
                                capture_output=True, text=True, timeout=30)
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert (tmp_path / "drover.log.1").exists()  # delaycompress: the newest stays plain
        # postrotate's kill -USR1 reached the master named by the pidfile; it serves on.
        wait_for(lambda: "SIGUSR1" in "".join(p.read_text() for p in tmp_path.glob("drover.log*")),
                 10, "the master logs SIGUSR1")
        assert alive(master)
    finally:
        if alive(master):
            os.kill(master, signal.SIGTERM)
            wait_gone(master)
    wait_for(lambda: not pidfile.exists(), 5, "pidfile removed")
