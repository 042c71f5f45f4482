"""Configuration files driving the real drover process: uwsgi.ini files as sites write them
(Django behind nginx on a unix socket, Flask under a URL prefix, placeholders, math, includes,
if-env), a gunicorn.conf.py, a drover.toml; refusals end the start with status 2 before
anything is bound or forked; --print-config; a bind error names where the address came from."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import APPS_DIR, DJANGO_DIR, _drover_env
from nginx import start_nginx

TIMEOUT = 10
TOKEN_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run_drover(*args: str, env: dict[str, str | None] | None = None,
               cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run drover to its end (a refusal or --print-config): nothing is left running."""
    return subprocess.run([sys.executable, "-m", "drover", *args], env=_drover_env(env),
                          cwd=cwd, capture_output=True, text=True, timeout=30, check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- Django behind nginx, from the site's uwsgi.ini ------------------------------------------------


@pytest.fixture(scope="module")
def django_site(drover_module: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    run = tmp_path_factory.mktemp("run")  # short: unix socket paths are limited to 107 bytes
    ini = write(tmp_path_factory.mktemp("etc") / "uwsgi.ini", f"""\
; Django behind nginx, as deployed with uWSGI
[uwsgi]
project = testsite
base = {DJANGO_DIR}

chdir = %(base)
module = %(project).wsgi:application
pythonpath = %(base)
env = DJANGO_SETTINGS_MODULE=%(project).settings

master = true
processes = 2
threads = 2
enable-threads = true
single-interpreter = true
need-app = true
die-on-term = true
thunder-lock = true

socket = {run}/%(project).sock
chmod-socket = 660
vacuum = true

buffer-size = 32768
max-requests = 5000
harakiri = 30
""")
    server = drover_module("--ini", str(ini), listeners=1)
    nginx = start_nginx(tmp_path_factory.mktemp("nginx"), {"django": server.addresses[0]})
    try:
        yield server, nginx, run
    finally:
        nginx.stop()


def test_django_site_from_uwsgi_ini_serves_through_nginx(django_site: Any) -> None:
    server, nginx, run = django_site
    assert server.addresses == [f"unix:{run}/testsite.sock"]
    session = requests.Session()
    home = session.get(nginx.url("django") + "/", timeout=TIMEOUT)
    assert home.status_code == 200
    assert "Guestbook" in home.text or "guestbook" in home.text.lower()
    token = TOKEN_RE.search(session.get(nginx.url("django") + "/sign/", timeout=TIMEOUT).text)
    assert token, "no CSRF token in the form"
    signed = session.post(nginx.url("django") + "/sign/", timeout=TIMEOUT,
                          data={"csrfmiddlewaretoken": token.group(1), "name": "ini",
                                "message": "from uwsgi.ini"})
    assert signed.status_code == 200


def test_django_site_log_reports_no_unknown_or_pending_option(django_site: Any) -> None:
    server, _, run = django_site
    log = server.log()
    assert "starting 2 worker(s) x 2 thread(s) for testsite.wsgi:application" in log
    assert oct(os.stat(f"{run}/testsite.sock").st_mode & 0o777) == oct(0o660)
    assert "is pending" not in log and "unknown option" not in log
    server.assert_clean_log()


# -- Flask under a URL prefix ----------------------------------------------------------------------


def test_flask_mounted_under_a_prefix_with_manage_script_name(drover: Any, tmp_path: Path) -> None:
    port = free_port()
    ini = write(tmp_path / "shop.ini", f"""\
[uwsgi]
http-socket = 127.0.0.1:{port}
pythonpath = {APPS_DIR}
mount = /shop=flask_app:app
manage-script-name = true
processes = 1
threads = 2
""")
    server = drover("--ini", str(ini), listeners=1, ready_path="/shop/")
    base = f"http://127.0.0.1:{port}"
    assert requests.get(base + "/shop/", timeout=TIMEOUT).text == \
        "Hello from Flask (drover-flask-test)\n"
    redirect = requests.get(base + "/shop/redirect", timeout=TIMEOUT, allow_redirects=False)
    assert redirect.status_code == 302
    assert redirect.headers["Location"] in ("/shop/", f"{base}/shop/")  # url_for saw SCRIPT_NAME
    assert requests.get(base + "/other", timeout=TIMEOUT).status_code == 404
    server.assert_clean_log()


# -- placeholders, math, includes, if-env ----------------------------------------------------------


def test_placeholders_math_includes_and_if_env(drover: Any, tmp_path: Path) -> None:
    port = free_port()
    write(tmp_path / "conf" / "common.ini", f"""\
[uwsgi]
pythonpath = {APPS_DIR}
module = config_app:application
http = 127.0.0.1:{port}
""")
    site = write(tmp_path / "site", "")
    site.unlink()
    site.mkdir()
    ini = write(tmp_path / "conf" / "site.ini", f"""\
[uwsgi]
ini = :extra
ini = %dcommon.ini
base = {tmp_path}
chdir = %(base)/site
cores = %k
processes = %(cores + 1)
env = SITE_FILE=%n
env = SITE_CONF_DIR=%d
env = SITE_HOME=$(HOME)

if-env = SITE_DEPLOY=production
processes = 1
env = SITE_MODE=production
endif =
if-not-env = SITE_DEPLOY
env = SITE_MODE=development
endif =

[extra]
env = SITE_EXTRA=%(base)
""")
    cores = os.cpu_count() or 1
    dev = drover("--ini", str(ini), listeners=1, env={"SITE_DEPLOY": None})
    seen = requests.get(f"http://127.0.0.1:{port}/", timeout=TIMEOUT).json()
    assert seen["cwd"] == str(tmp_path / "site")
    assert seen["env"] == {"SITE_FILE": "site", "SITE_CONF_DIR": f"{tmp_path}/conf/",
                           "SITE_HOME": os.environ.get("HOME", "$(HOME)"),
                           "SITE_MODE": "development", "SITE_EXTRA": str(tmp_path)}
    assert f"starting {cores + 1} worker(s)" in dev.log()
    assert dev.stop() == 0
    prod = drover("--ini", str(ini), listeners=1, env={"SITE_DEPLOY": "production"})
    seen = requests.get(f"http://127.0.0.1:{port}/", timeout=TIMEOUT).json()
    assert seen["env"]["SITE_MODE"] == "production"
    assert "starting 1 worker(s)" in prod.log()


def test_home_virtualenv_and_relative_socket_under_chdir(drover: Any, tmp_path: Path) -> None:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    write(tmp_path / "venv" / "lib" / version / "site-packages" / "venv_marker.py",
          "VALUE = 'from the site virtualenv'\n")
    (tmp_path / "srv").mkdir()
    port = free_port()
    ini = write(tmp_path / "uwsgi.ini", f"""\
[uwsgi]
chdir = {tmp_path}/srv
virtualenv = {tmp_path}/venv
pythonpath = {APPS_DIR}
module = config_app
socket = app.sock
http-socket = 127.0.0.1:{port}
""")
    server = drover("--ini", str(ini), listeners=2)
    assert "unix:app.sock" in server.addresses  # bound after chdir, as uWSGI binds it
    assert (tmp_path / "srv" / "app.sock").exists()
    seen = requests.get(f"http://127.0.0.1:{port}/", timeout=TIMEOUT).json()
    assert seen["venv_marker"] == "from the site virtualenv"
    assert seen["cwd"] == f"{tmp_path}/srv"


def test_home_of_another_python_version_is_refused(drover: Any, tmp_path: Path) -> None:
    (tmp_path / "venv" / "lib" / "python2.7" / "site-packages").mkdir(parents=True)
    ini = write(tmp_path / "uwsgi.ini", f"[uwsgi]\nhome = {tmp_path}/venv\n"
                                        "http-socket = 127.0.0.1:0\n")
    done = run_drover("--ini", str(ini))
    assert done.returncode == 2
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert (f"--home: '{tmp_path}/venv' has no lib/python{version}/site-packages (from "
            f"{ini}:2 (home)); a virtualenv must be made with the Python that runs Drover "
            f"({version}); it has lib/python2.7") in done.stderr
    assert "listening at" not in done.stderr


# -- refusals: status 2, nothing bound, nothing forked ---------------------------------------------


def assert_nothing_bound(done: subprocess.CompletedProcess[str], run: Path,
                         mtime_before: int) -> None:
    assert done.returncode == 2, done.stderr
    assert "listening at" not in done.stderr
    assert "booting worker" not in done.stderr
    assert list(run.iterdir()) == []
    assert run.stat().st_mtime_ns == mtime_before  # no socket was even created and removed


def test_strict_mode_typo_stops_the_start_naming_its_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    before = run.stat().st_mtime_ns
    ini = write(tmp_path / "uwsgi.ini", f"""\
[uwsgi]
strict = true
module = app
socket = {run}/app.sock
procesess = 4
""")
    done = run_drover("--ini", str(ini))
    assert_nothing_bound(done, run, before)
    assert done.stderr.strip().splitlines() == [
        f"drover: error: {ini}:5: unknown option 'procesess' (did you mean processes?) "
        "(strict mode)"]


def test_bad_values_stop_the_start_one_line_each(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    before = run.stat().st_mtime_ns
    ini = write(tmp_path / "uwsgi.ini", f"""\
[uwsgi]
socket = {run}/app.sock
http = 127.0.0.1:{free_port()}
processes = four
max-requests = -1
static-map = /static=/srv/static
""")
    done = run_drover("--ini", str(ini))
    assert_nothing_bound(done, run, before)
    lines = done.stderr.strip().splitlines()
    assert f"drover: error: {ini}:4: processes = four: 'four' is not a whole number " \
           "(Drover's --workers)" in lines
    assert f"drover: error: {ini}:5: max-requests = -1: -1 is below the minimum of 0 " \
           "(Drover's --max-requests)" in lines
    assert f"drover: error: {ini}:6: static-map = /static=/srv/static: '/srv/static' is not " \
           "a directory (Drover's --static-map)" in lines
    assert len(lines) == 3


def test_unsupported_option_stops_the_start_with_what_to_do(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    before = run.stat().st_mtime_ns
    ini = write(tmp_path / "uwsgi.ini", f"[uwsgi]\nsocket = {run}/a.sock\nmodule = app\n"
                                        "attach-daemon = celery -A proj worker\n")
    done = run_drover("--ini", str(ini))
    assert_nothing_bound(done, run, before)
    assert done.stderr.strip() == (f"drover: error: {ini}:4: attach-daemon is not supported: run "
                                   "the daemon as its own systemd service")


# -- --print-config, gunicorn.conf.py, TOML, Gunicorn flags ----------------------------------------


def test_print_config_exits_0_with_values_and_origins(tmp_path: Path) -> None:
    ini = write(tmp_path / "uwsgi.ini", "[uwsgi]\nprocesses = 3\nsocket = /tmp/never.sock\n"
                                        "module = site.wsgi\n")
    done = run_drover("--print-config", "--ini", str(ini), "--threads", "4",
                      env={"DROVER_MAX_REQUESTS": "50"})
    assert done.returncode == 0, done.stderr
    assert f"workers = 3  # {ini}:2 (processes)" in done.stdout
    assert f'uwsgi = ["/tmp/never.sock"]  # {ini}:3 (socket)' in done.stdout
    assert "threads = 4  # command line" in done.stdout
    assert "max_requests = 50  # environment variable DROVER_MAX_REQUESTS" in done.stdout
    assert "listening at" not in done.stderr
    assert not Path("/tmp/never.sock").exists()


def test_gunicorn_conf_py_and_habit_flags_serve_flask(drover: Any, tmp_path: Path) -> None:
    port = free_port()
    conf = write(tmp_path / "gunicorn.conf.py", f"""\
import multiprocessing

bind = "127.0.0.1:{port}"
workers = 1
threads = 2
timeout = 30
pythonpath = "{APPS_DIR}"
wsgi_app = "flask_app:app"
raw_env = ["SITE_FROM=gunicorn"]
""")
    server = drover("-c", str(conf), "-w", "2", listeners=1)
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=TIMEOUT).status_code == 200
    assert "starting 2 worker(s) x 2 thread(s) for flask_app:app" in server.log()


def test_gunicorn_bind_flag_serves(drover: Any) -> None:
    port = free_port()
    drover("-b", f"127.0.0.1:{port}", "-w", "1", "-t", "20", "--pythonpath", str(APPS_DIR),
           "flask_app:app", listeners=1)
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=TIMEOUT).status_code == 200


def test_drover_toml_serves(drover: Any, tmp_path: Path) -> None:
    port = free_port()
    toml = write(tmp_path / "drover.toml", f"""\
app = "config_app:application"
http = ["127.0.0.1:{port}"]
pythonpath = ["{APPS_DIR}"]
env = ["SITE_FROM=toml"]
workers = 1
""")
    drover("--config", str(toml), listeners=1)
    seen = requests.get(f"http://127.0.0.1:{port}/", timeout=TIMEOUT).json()
    assert seen["env"] == {"SITE_FROM": "toml"}


# -- where a listen address came from --------------------------------------------------------------


def test_bind_error_names_the_environment_variable(drover: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = drover(env={"DROVER_HTTP": f"127.0.0.1:{port}"}, listeners=0, wait=False)
        assert server.proc.wait(20) == 1
    assert (f"cannot listen on 127.0.0.1:{port} (--http from environment variable DROVER_HTTP)"
            ": Address already in use") in server.log()


def test_bind_error_names_the_ini_line(drover: Any, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ini = write(tmp_path / "uwsgi.ini", f"[uwsgi]\nsocket = 127.0.0.1:{port}\n")
        server = drover("--ini", str(ini), listeners=0, wait=False)
        assert server.proc.wait(20) == 1
    assert (f"cannot listen on 127.0.0.1:{port} (--uwsgi from {ini}:2 (socket)): Address "
            "already in use") in server.log()


def test_default_listener_is_loopback_port_8000(drover: Any) -> None:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 8000))
        except OSError:
            pytest.skip("port 8000 is taken on this machine")
    server = drover(listeners=1)
    assert server.addresses == ["http://127.0.0.1:8000"]
    assert server.stop(signal.SIGTERM) == 0


def test_wsgi_file_with_a_wsgi_extension_and_callable_serves(drover: Any, tmp_path: Path) -> None:
    write(tmp_path / "site" / "django.wsgi",
          "def app(environ, start_response):\n"
          "    start_response('200 OK', [('Content-Type', 'text/plain'),"
          " ('Content-Length', '7')])\n"
          "    return [b'old way']\n")
    port = free_port()
    ini = write(tmp_path / "site" / "uwsgi.ini", f"[uwsgi]\nchdir = %d\nwsgi-file = django.wsgi\n"
                                                 f"callable = app\nhttp = 127.0.0.1:{port}\n")
    drover("--ini", str(ini), listeners=1)
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=TIMEOUT).text == "old way"
