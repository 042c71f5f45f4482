"""Drover's TOML files and gunicorn.conf.py: what each reads, and every refusal with its line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drover.config import ConfigError, load, load_config


def problems(argv: list[str], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(argv, environ or {})
    return list(info.value.problems)


# -- TOML ------------------------------------------------------------------------------------------


def test_toml_keys_are_setting_names_with_dashes_or_underscores(tmp_path: Path) -> None:
    path = tmp_path / "drover.toml"
    path.write_text('app = "site.wsgi:application"\nhttp = ["127.0.0.1:9001", "/tmp/d.sock"]\n'
                    'max-requests = 100\nmax_connections = 64\npreload = true\n'
                    'limit-request-body = "10M"\ntimeout = 2.5\nchmod-socket = "660"\n')
    config = load_config(["--config", str(path)], {})
    assert config.app == "site.wsgi:application"
    assert config.http == ("127.0.0.1:9001", "/tmp/d.sock")
    assert (config.max_requests, config.max_connections) == (100, 64)
    assert config.preload is True
    assert config.limit_request_body == 10 * 1024**2
    assert config.timeout == 2.5
    assert config.chmod_socket == 0o660
    assert config.origin("max_requests") == f"{path}:3 (max-requests)"


def test_toml_errors_name_key_line_and_expectation(tmp_path: Path) -> None:
    path = tmp_path / "drover.toml"
    path.write_text('wokers = 2\nthreads = [1, 2]\nworkers = "many"\nhttp = [{a = 1}]\n')
    assert problems(["--config", str(path)]) == [
        f"{path}:1: unknown setting 'wokers' (did you mean workers?)",
        f"{path}:2: threads takes one value, not a list",
        f"{path}:4: http = {{'a': 1}}: expected a string, number or boolean",
        f"{path}:3: workers = many: 'many' is not a whole number (Drover's --workers)"]


def test_invalid_toml_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "drover.toml"
    path.write_text("workers = \n")
    [message] = problems(["--config", str(path)])
    assert message.startswith(f"{path}: not valid TOML: ")


def test_pyproject_reads_tool_drover_only(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text('[project]\nname = "site"\n\n[tool.drover]\nworkers = 3\n'
                    'http = ["127.0.0.1:9002"]\n\n[tool.other]\nworkers = 9\n')
    config = load_config(["--config", str(path)], {})
    assert config.workers == 3
    assert config.origin("workers") == f"{path}:5 (workers)"
    path.write_text('[project]\nname = "site"\n')
    assert problems(["--config", str(path)]) == [f"{path}: no [tool.drover] table"]


def test_pyproject_in_the_working_directory_is_not_read_by_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.drover]\nworkers = 9\n")
    (tmp_path / "drover.toml").write_text("workers = 9\n")
    monkeypatch.chdir(tmp_path)
    assert load_config([], {}).workers != 9


def test_config_of_unknown_kind_and_python_module_are_refused(tmp_path: Path) -> None:
    assert problems(["-c", "settings.yaml"]) == [
        "-c settings.yaml: cannot tell the format from the name: expected *.toml, "
        "pyproject.toml, *.ini or a gunicorn *.py file"]
    assert problems(["-c", "python:mysite.gunicorn"]) == [
        "-c python:mysite.gunicorn: Drover does not import configuration modules; give the "
        "path of the gunicorn.conf.py file"]


def test_config_with_an_ini_file_reads_it_as_uwsgi(tmp_path: Path) -> None:
    path = tmp_path / "site.ini"
    path.write_text("[uwsgi]\nprocesses = 3\n[other]\nprocesses = 4\n")
    assert load_config(["--config", str(path)], {}).workers == 3
    assert load_config(["--config", f"{path}:other"], {}).workers == 4


# -- gunicorn.conf.py ------------------------------------------------------------------------------


GUNICORN_CONF = '''\
"""Gunicorn settings for the site."""
import multiprocessing
import os

bind = ["127.0.0.1:9003", "unix:/tmp/gunicorn-test.sock"]
workers = multiprocessing.cpu_count() * 2 + 1
threads = int(os.environ.get("SITE_THREADS", "4"))
timeout = 60
graceful_timeout = 20
keepalive = 2
max_requests = 1000
loglevel = "warning"
preload_app = True
chdir = "/srv"
raw_env = ["DJANGO_SETTINGS_MODULE=site.settings", "A=b=c"]
pythonpath = "/srv/lib,/srv/vendor"
accesslog = "-"
errorlog = "-"
worker_class = "gthread"
wsgi_app = "site.wsgi:application"
proc_name = os.getenv("SITE_NAME", "site")
'''


def test_gunicorn_conf_plain_settings_and_the_two_idioms(tmp_path: Path) -> None:
    path = tmp_path / "gunicorn.conf.py"
    path.write_text(GUNICORN_CONF)
    loaded = load(["-c", str(path)], {"SITE_THREADS": "6"})
    config = loaded.config
    assert config.http == ("127.0.0.1:9003", "unix:/tmp/gunicorn-test.sock")
    assert config.workers == (os.cpu_count() or 1) * 2 + 1
    assert config.threads == 6
    assert (config.timeout, config.graceful_timeout, config.keepalive_timeout) == (60, 20, 2)
    assert config.max_requests == 1000
    assert config.log_level == "warning"
    assert config.preload is True
    assert config.chdir == "/srv"
    assert config.env == ("DJANGO_SETTINGS_MODULE=site.settings", "A=b=c")
    assert config.pythonpath == ("/srv/lib", "/srv/vendor")
    assert config.access_log == "-"
    assert config.log_file == ""
    assert config.app == "site.wsgi:application"
    assert config.proc_name == "site"
    assert config.origin("workers") == f"{path}:6 (workers)"


def test_gunicorn_conf_hooks_computed_values_and_statements_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "gunicorn.conf.py"
    path.write_text('import os\nHOST = "0.0.0.0"\nbind = f"{HOST}:8000"\n'
                    "workers = len(os.sched_getaffinity(0))\n"
                    "def post_fork(server, worker):\n    server.log.info('forked')\n"
                    "if os.environ.get('DEBUG'):\n    reload = True\n"
                    "worker_class = 'gevent'\nworkres = 3\nkeyfile = '/etc/ssl/key.pem'\n"
                    "a, b = 1, 2\n")
    assert problems(["-c", str(path)]) == [
        f"{path}:3: bind = f\"{{HOST}}:8000\" is computed, which is not supported: Drover reads "
        "plain values, the CPU count and os.environ.get(); write the value, or pass it with "
        "--http or DROVER_HTTP",
        f"{path}:4: workers = len(os.sched_getaffinity(0)) is computed, which is not supported: "
        "Drover reads plain values, the CPU count and os.environ.get(); write the value, or "
        "pass it with --workers or DROVER_WORKERS",
        f"{path}:5: the server hook post_fork() is not supported: Drover runs no Python from its "
        "configuration; move this code into the app",
        f"{path}:7: an if statement is not supported: Drover reads only 'name = value' lines",
        f"{path}:9: worker_class = 'gevent' is not supported: Drover runs WSGI apps in threads "
        "(use --threads for blocking apps)",
        f"{path}:10: unknown Gunicorn setting 'workres' (did you mean workers?)",
        f"{path}:11: keyfile is not supported: terminate TLS in nginx (or another proxy) in "
        "front of Drover",
        f"{path}:12: 'a, b = 1, 2' is not supported: Drover reads only 'name = value' lines"]


def test_gunicorn_conf_bad_value_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "gunicorn.conf.py"
    path.write_text("workers = 0\nloglevel = 'loud'\n")
    assert problems(["-c", str(path)]) == [
        f"{path}:1: workers = 0: 0 is below the minimum of 1 (Drover's --workers)",
        f"{path}:2: loglevel = loud: 'loud' is not a log level (debug, info, warning, error, "
        "critical) (Drover's --log-level)"]


def test_gunicorn_conf_settings_of_the_other_changes(tmp_path: Path) -> None:
    path = tmp_path / "gunicorn.conf.py"
    path.write_text("max_requests_jitter = 50\npidfile = '/run/site.pid'\nuser = 'nobody'\n"
                    "umask = 0o027\nforwarded_allow_ips = '10.0.0.1,10.0.0.2'\n"
                    "proxy_protocol = True\nerrorlog = '/var/log/site.log'\n"
                    "accesslog = '/var/log/access.log'\n")
    config = load(["-c", str(path)], {}).config
    assert config.max_requests_jitter == 50 and config.pidfile == "/run/site.pid"
    assert config.uid == "nobody" and config.umask == 0o027
    assert config.forwarded_allow_ips == ("10.0.0.1", "10.0.0.2") and config.proxy_protocol
    assert config.log_file == "/var/log/site.log"
    assert config.access_log == "/var/log/access.log"


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("gunicorn.conf.py", "workers = (\n", "{path}:1: not valid Python: '(' was never closed"),
    ("gunicorn.conf.py", "pidfile = None\nchdir = None\n",
     "{path}:2: chdir = None: None is not a value here; leave the line out"),
    ("gunicorn.conf.py", "post_fork = print\n",
     "{path}:1: the server hook post_fork is not supported: Drover runs no Python from its "
     "configuration; move this code into the app"),
])
def test_gunicorn_conf_other_refusals(tmp_path: Path, name: str, content: str,
                                      expected: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    found = problems(["-c", str(path)])
    assert found[-1] == expected.format(path=path)


@pytest.mark.parametrize("flag", ["-c", "--config"])
def test_unreadable_configuration_files(flag: str, tmp_path: Path) -> None:
    assert problems([flag, str(tmp_path / "none.toml")]) == [
        f"--config: cannot read '{tmp_path}/none.toml': No such file or directory"]
    assert problems([flag, str(tmp_path / "gunicorn.conf.py")]) == [
        f"-c: cannot read '{tmp_path}/gunicorn.conf.py': No such file or directory"]


def test_chdir_and_home_that_cannot_be_used_are_named_with_their_origin(tmp_path: Path) -> None:
    from drover.appenv import AppEnvError, prepare_master

    config = load_config(["--chdir", str(tmp_path / "gone")], {})
    with pytest.raises(AppEnvError) as info:
        prepare_master(config)
    assert str(info.value) == (f"--chdir: cannot change to '{tmp_path}/gone': No such file or "
                               "directory (from command line)")
    config = load_config(["--home", str(tmp_path / "venv")], {"DROVER_HOME": "x"})
    with pytest.raises(AppEnvError) as info:
        prepare_master(config)
    assert str(info.value) == (f"--home: '{tmp_path}/venv' is not a directory (from command "
                               "line)")


def test_a_gunicorn_file_without_py_extension_is_read_as_gunicorn(tmp_path: Path) -> None:
    path = tmp_path / "gunicorn.conf"
    path.write_text("workers = 3\n")
    assert load_config(["-c", str(path)], {}).workers == 3
