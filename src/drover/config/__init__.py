"""Build the one ``Config`` from files, ``DROVER_*`` environment variables and the command line.

Runs in the master, before anything is bound. Each reader hands over raw strings with their
origin (``config.sources.Raw``); this module is the one place that parses them, with each
setting's ``parse``, and builds the frozen Config.

Precedence: defaults < configuration files (``--ini``, ``--config``, in the order given) <
environment < command line. Within one layer a repeatable setting collects every value (each
``socket`` line of a uwsgi.ini adds one) and a single setting keeps its last value; a higher
layer replaces a lower one's values. Every problem found is reported, one line each, before
the start stops with ``ConfigError`` (exit status 2): nothing is bound and nothing forked.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from drover.config.cli import FILES_DEST, PRINT_DEST, build_parser, env_names
from drover.config.settings import Config, SettingInfo, setting_infos
from drover.config.sources import ConfigError, Raw, Report, did_you_mean

__all__ = ["Config", "ConfigError", "Loaded", "build_parser", "load", "load_config"]

DEFAULT_HTTP = "127.0.0.1:8000"

# Set by a master for the master it starts on USR2 (drover.upgrade); not settings.
INTERNAL_ENV = frozenset({"DROVER_LISTEN_FDS", "DROVER_UPGRADE_PIPE"})


@dataclass(slots=True)
class Loaded:
    """A Config, the log lines the readers left for later, and whether to print and exit."""

    config: Config
    notes: list[tuple[int, str]] = field(default_factory=list)
    print_config: bool = False


def _flag(name: str, info: SettingInfo) -> str:
    return info.flags[-1] if info.flags else name.upper()


def _environment_layer(environ: Mapping[str, str], report: Report) -> list[Raw]:
    known = env_names()
    infos = {f.name: info for f, info in setting_infos()}
    raws: list[Raw] = []
    for key, text in environ.items():
        if (not key.startswith("DROVER_") or key.startswith("DROVER_TEST_")
                or key in INTERNAL_ENV):
            continue
        name = known.get(key)
        if name is None:
            report.error(f"{key}: unknown setting (from environment)"
                         f"{did_you_mean(key, known)}")
            continue
        origin = f"environment variable {key}"
        if infos[name].multi:
            raws += [Raw(name, part, origin) for part in text.split(",") if part.strip()]
        else:
            raws.append(Raw(name, text, origin))
    return raws


def _file_layer(files: list[tuple[str, str, str]], environ: Mapping[str, str],
                report: Report) -> list[Raw]:
    from drover.config import ini, uwsgi_names

    raws: list[Raw] = []
    specs: list[tuple[str, str]] = []  # ini files are read together, as uWSGI reads them

    def flush_ini() -> None:
        if not specs:
            return
        reader = ini.read_ini(list(specs), environ)
        specs.clear()
        for message in reader.errors:
            report.error(message)
        for message in reader.warnings:
            report.warning(message)
        raws.extend(uwsgi_names.translate(reader.options, reader.strict, reader.referenced,
                                          report))

    for kind, path, flag in files:
        base = os.path.basename(path.rsplit(":", 1)[0] if kind == "ini" else path)
        if kind == "ini" or base.endswith(".ini") or ".ini:" in path:
            specs.append((path, f"command line {flag}"))
            continue
        flush_ini()
        if base.endswith(".toml"):
            from drover.config.toml import read_toml

            raws += read_toml(path, report)
        elif path.startswith("python:"):
            report.error(f"{flag} {path}: Drover does not import configuration modules; "
                         "give the path of the gunicorn.conf.py file")
        elif base.endswith(".py") or "gunicorn" in base:
            from drover.config.gunicorn import read_gunicorn

            raws += read_gunicorn(path, environ, report)
        else:
            report.error(f"{flag} {path}: cannot tell the format from the name: expected "
                         "*.toml, pyproject.toml, *.ini or a gunicorn *.py file")
    flush_ini()
    return raws


def _command_line_layer(args: argparse.Namespace) -> list[Raw]:
    infos = {f.name: info for f, info in setting_infos()}
    raws: list[Raw] = []
    for name, value in vars(args).items():
        if name not in infos:
            continue
        values = value if infos[name].multi else [value]
        raws += [Raw(name, text, "command line") for text in values]
    return raws


def _parse(raw: Raw, info: SettingInfo, report: Report) -> Any:
    try:
        return info.parse(raw.text)
    except ValueError as exc:
        if raw.key:  # from a file: name the line and the option as the file wrote it
            report.error(f"{raw.origin}: {raw.key} = {raw.text}: {exc} "
                         f"(Drover's {_flag(raw.name, info)})")
        else:
            report.error(f"{_flag(raw.name, info)}: {exc} (from {raw.origin})")
        return None


def resolve(layers: Sequence[list[Raw]], report: Report, inherits: bool = False) -> Config:
    """Parse the winning raw values of each setting; build the Config with its origins.
    ``inherits``: sockets come from systemd or a previous master (no default listener)."""
    infos = {f.name: info for f, info in setting_infos()}
    winners: dict[str, list[Raw]] = {}
    for layer in layers:
        this: dict[str, list[Raw]] = {}
        for raw in layer:
            if infos[raw.name].multi:
                this.setdefault(raw.name, []).append(raw)
            else:
                this[raw.name] = [raw]
        winners.update(this)
    values: dict[str, Any] = {}
    origins: list[tuple[str, tuple[str, ...]]] = []
    for name, raws in winners.items():
        info = infos[name]
        parsed = [_parse(raw, info, report) for raw in raws]
        values[name] = tuple(parsed) if info.multi else parsed[-1]
        origins.append((name, tuple(raw.where for raw in raws)))
    if report.errors:
        raise ConfigError(*report.errors)
    if not values.get("http") and not values.get("uwsgi") and not inherits:
        values["http"] = (DEFAULT_HTTP,)
        origins.append(("http", ("the default, as no --http or --uwsgi was given",)))
    return Config(**values, origins=tuple(origins))


def load(argv: Sequence[str], environ: Mapping[str, str]) -> Loaded:
    """Parse argv (without the program name), the files it names and the environment.

    argparse exits with status 2 on a malformed command line; ``ConfigError`` (every problem,
    one line each) is raised for anything else that cannot be used.
    """
    args = build_parser().parse_args(list(argv))
    report = Report()
    files = getattr(args, FILES_DEST, None) or []
    try:
        file_layer = _file_layer(files, environ, report)
    except ConfigError as exc:  # a file that cannot be read at all ends the reading
        raise ConfigError(*report.errors, *exc.problems) from None
    layers = [file_layer, _environment_layer(environ, report), _command_line_layer(args)]
    from drover.systemd import listen_fds_pending

    inherits = listen_fds_pending(environ) or bool(environ.get("DROVER_LISTEN_FDS"))
    config = resolve(layers, report, inherits)
    return Loaded(config, report.notes, bool(getattr(args, PRINT_DEST, False)))


def load_config(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """The Config alone (see ``load``)."""
    return load(argv, environ).config
