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
               "forwarded_allow_ips": "10.0.0.0/8,*"}
    if switch:
        return "true"
    if name in samples:
        return samples[name]
    if name in ("app", "chdir", "pythonpath", "proc_name"):
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


def test_default_listen_address_when_none_given() -> None:
    assert load_config([], {}).http == (":8000",)
    assert load_config(["--uwsgi", "/tmp/a.sock"], {}).http == ()
