"""The settings table: one declaration gives the CLI, the environment and the docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from drover.config import ConfigError, build_parser, load_config
from drover.config.docs import render
from drover.config.settings import env_name, setting_infos

REPO = Path(__file__).resolve().parents[2]


def test_docs_settings_md_is_generated_from_the_table() -> None:
    committed = (REPO / "docs" / "settings.md").read_text()
    assert committed == render(), "run: python -m drover.config.docs > docs/settings.md"


def test_every_setting_has_a_flag_in_help_and_an_environment_variable() -> None:
    usage = build_parser().format_help()
    for f, info in setting_infos():
        for flag in info.flags:
            assert flag in usage
        config = load_config([], {env_name(f.name): _sample(info.switch, f.name)})
        assert config is not None


def _sample(switch: bool, name: str) -> str:
    samples = {"http": "127.0.0.1:9000", "uwsgi": "/tmp/x.sock", "uwsgi_allow_from": "10.0.0.0/8",
               "chmod_socket": "660", "mount": "/a=app:app", "log_level": "debug",
               "limit_request_body": "10M", "body_buffer_size": "64k",
               "static_map": "/static=/tmp", "static_index": "index.html",
               "static_expires": r"\.css$ 60", "static_expires_uri": "^/s/ 60", "env": "A=1",
               "stats": "127.0.0.1:9191", "log_exclude": "^/healthz$", "access_log": "-",
               "log_format": "json", "log_maxsize": "10M",
               "forwarded_allow_ips": "10.0.0.0/8,*"}
    if switch:
        return "true"
    if name in samples:
        return samples[name]
    if name in ("app", "chdir", "pythonpath", "proc_name", "home"):
        return "x"
    return "3"


@pytest.mark.parametrize(("argv", "environ", "expected"), [
    ([], {}, 1), ([], {"DROVER_THREADS": "4"}, 4), (["--threads", "2"], {"DROVER_THREADS": "4"}, 2),
])
def test_precedence_defaults_environment_command_line(argv: list[str], environ: dict[str, str],
                                                      expected: int) -> None:
    assert load_config(argv, environ).threads == expected


def test_repeatable_setting_from_environment_is_comma_separated() -> None:
    config = load_config([], {"DROVER_HTTP": "127.0.0.1:1,127.0.0.1:2"})
    assert config.http == ("127.0.0.1:1", "127.0.0.1:2")


def test_sizes_accept_units() -> None:
    assert load_config(["--limit-request-body", "10M"], {}).limit_request_body == 10 * 1024**2


@pytest.mark.parametrize(("argv", "environ", "needle"), [
    (["--workers", "0"], {}, "--workers: 0 is below the minimum of 1 (from command line)"),
    ([], {"DROVER_KEEPALIVE_TIMEOUT": "x"}, "DROVER_KEEPALIVE_TIMEOUT"),
    ([], {"DROVER_NOPE": "1"}, "DROVER_NOPE: unknown setting"),
    (["--mount", "blog"], {}, "--mount"),
    (["--chmod-socket", "999"], {}, "--chmod-socket"),
])
def test_bad_values_name_the_option_and_origin(argv: list[str], environ: dict[str, str],
                                               needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_config(argv, environ)


def test_default_listen_address_when_none_given_is_loopback_like_gunicorn() -> None:
    config = load_config([], {})
    assert config.http == ("127.0.0.1:8000",)
    assert config.origin("http") == "the default, as no --http or --uwsgi was given"
    assert load_config(["--uwsgi", "/tmp/a.sock"], {}).http == ()


# -- the command line ------------------------------------------------------------------------------


def argparse_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as info:
        load_config(argv, {})
    assert info.value.code == 2
    return capsys.readouterr().err


def test_abbreviations_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    err = argparse_error(["--work", "3"], capsys)
    assert "drover: error: --work: no such option (did you mean --workers?)" in err


@pytest.mark.parametrize(("argv", "hint"), [
    (["--processes", "4"], "--processes: no such option (uWSGI's name for Drover's --workers)"),
    (["--socket", "/run/a.sock"], "--socket: no such option (uWSGI's name for Drover's --uwsgi)"),
    (["--module", "app"], "--module: no such option (Drover takes the app as its argument: "
                          "drover module:callable)"),
    (["--keep-alive", "5"], "--keep-alive: no such option (Gunicorn's name for Drover's "
                            "--keepalive-timeout)"),
    (["--master"], "--master: no such option (uWSGI's master is not needed: Drover always runs "
                   "a master process)"),
    (["--wokers", "2"], "--wokers: no such option (did you mean --workers?)"),
    (["-k", "gevent"], "-k: no such option (Gunicorn's -k: Drover's workers are threaded event "
                       "loops; use --threads for apps that block)"),
    (["--access-logfile", "-"], "--access-logfile: no such option (did you mean --access-log?)"),
    (["--max-request=5"], "--max-request=5: no such option (did you mean --max-requests?)"),
])
def test_foreign_and_mistyped_flags_get_a_hint(argv: list[str], hint: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert f"drover: error: {hint}" in argparse_error(argv, capsys)


def test_gunicorn_habits_on_the_command_line() -> None:
    config = load_config(["-w", "3", "-b", "127.0.0.1:9000", "--bind", "unix:/tmp/g.sock",
                          "-t", "45", "-e", "A=1", "--threads", "4"], {})
    assert config.workers == 3
    assert config.http == ("127.0.0.1:9000", "unix:/tmp/g.sock")
    assert config.timeout == 45.0
    assert config.threads == 4
    assert config.env == ("A=1",)


def test_help_shows_each_default_once_and_documents_the_comma_syntax() -> None:
    usage = " ".join(build_parser().format_help().split())
    assert "(default: " not in usage.split("--workers N")[1].split("--threads")[0]
    assert "Default: the number of CPU cores this process may use" in usage
    assert "DROVER_HTTP=127.0.0.1:8000,unix:/run/app.sock" in usage
    assert "-t SECONDS, --timeout SECONDS" in usage
    assert "--threads N" in usage and "-t N" not in usage


# -- precedence across the layers, with origins ----------------------------------------------------


def test_precedence_file_environment_command_line(tmp_path: Path) -> None:
    ini = tmp_path / "uwsgi.ini"
    ini.write_text("[uwsgi]\nprocesses = 2\nthreads = 3\nmax-requests = 10\n"
                   "http = 127.0.0.1:1\nhttp = 127.0.0.1:2\n")
    environ = {"DROVER_THREADS": "5", "DROVER_MAX_REQUESTS": "20"}
    config = load_config(["--ini", str(ini), "--max-requests", "30"], environ)
    assert (config.workers, config.threads, config.max_requests) == (2, 5, 30)
    assert config.http == ("127.0.0.1:1", "127.0.0.1:2")
    assert config.origin("workers") == f"{ini}:2 (processes)"
    assert config.origin("threads") == "environment variable DROVER_THREADS"
    assert config.origin("max_requests") == "command line"
    assert config.origin("http", 1) == f"{ini}:6 (http)"
    assert config.origin("backlog") == "default"
    replaced = load_config(["--ini", str(ini)], {"DROVER_HTTP": "127.0.0.1:3"})
    assert replaced.http == ("127.0.0.1:3",)  # a higher layer replaces the list


def test_files_apply_in_command_line_order(tmp_path: Path) -> None:
    (tmp_path / "a.ini").write_text("[uwsgi]\nprocesses = 2\nthreads = 2\n")
    (tmp_path / "b.toml").write_text("workers = 7\n")
    config = load_config(["--ini", str(tmp_path / "a.ini"), "-c", str(tmp_path / "b.toml")], {})
    assert (config.workers, config.threads) == (7, 2)
    config = load_config(["-c", str(tmp_path / "b.toml"), "--ini", str(tmp_path / "a.ini")], {})
    assert config.workers == 2


def test_print_config_is_toml_that_reads_back_to_the_same_config(tmp_path: Path) -> None:
    from drover.config.show import render

    ini = tmp_path / "uwsgi.ini"
    ini.write_text("[uwsgi]\nmodule = site.wsgi\nprocesses = 3\nsocket = /tmp/x.sock\n"
                   "chmod-socket = 660\nenv = A=1\nenv = B=x,y\npreload = true\n"
                   "harakiri-verbose = 1\nlimit-post = 1M\n")
    config = load_config(["--ini", str(ini), "--timeout", "12.5"], {})
    text = render(config)
    assert f'workers = 3  # {ini}:3 (processes)' in text
    assert f'chmod_socket = "660"  # {ini}:5 (chmod-socket)' in text
    assert f'env = ["A=1", "B=x,y"]  # {ini}:6 (env), {ini}:7 (env)' in text
    assert "timeout = 12.5  # command line" in text
    assert "# threads = 1  # default" in text
    again = tmp_path / "drover.toml"
    again.write_text(text)
    assert load_config(["--config", str(again)], {}) == config
