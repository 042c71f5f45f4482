"""Build the one ``Config`` from the command line and ``DROVER_*`` environment variables.

Precedence: defaults < environment < command line. Each raw value is parsed by its setting's
``parse``; a bad value raises ``ConfigError`` naming the option and where it came from. Unknown
``DROVER_*`` variables are errors too, so a typo never passes silently.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from drover import __version__
from drover.config.settings import Config, SettingInfo, env_name, setting_infos

__all__ = ["Config", "ConfigError", "build_parser", "load_config"]


class ConfigError(Exception):
    """A setting could not be used; the message names the option and its origin."""


def _flag(name: str, info: SettingInfo) -> str:
    return info.flags[-1] if info.flags else name


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Sized from the terminal without argparse's default ``shutil`` import: the master's
    modules are inherited by every worker, and shutil drags in bz2 and lzma (~1 MiB each)."""

    def __init__(self, prog: str) -> None:
        try:
            width = os.get_terminal_size().columns - 2
        except OSError:
            width = 78
        super().__init__(prog, width=max(40, min(width, 118)))


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser, generated from the settings table (runs in the master, once)."""
    parser = argparse.ArgumentParser(
        prog="drover",
        description="Drover: a fast, strict application server for Python WSGI apps.",
        epilog="Every option can also be set as a DROVER_<NAME> environment variable, e.g. "
        "DROVER_WORKERS=4; the command line wins. Signals to the master: TERM/INT stop "
        "gracefully, QUIT stops at once, HUP reloads workers, TTIN/TTOU add/remove a worker, "
        "USR1 reopens the log files.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"drover {__version__}")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f, info in setting_infos():
        group = groups.get(info.topic)
        if group is None:
            group = groups[info.topic] = parser.add_argument_group(info.topic)
        default = f.default
        text = info.help.replace("%", "%%")  # argparse formats help with %
        shown = "" if info.switch or default in ((), "", None) else f" (default: {default})"
        if not info.flags:  # the positional app spec
            group.add_argument(f.name, nargs="?", default=argparse.SUPPRESS,
                               metavar=info.metavar, help=text)
        elif info.bare is not None:
            group.add_argument(*info.flags, dest=f.name, metavar=info.metavar, nargs="?",
                               const=info.bare, default=argparse.SUPPRESS, help=text)
        elif info.switch:
            group.add_argument(*info.flags, dest=f.name, action="store_const", const="true",
                               default=argparse.SUPPRESS, help=text)
        else:
            group.add_argument(*info.flags, dest=f.name, metavar=info.metavar,
                               action="append" if info.multi else "store",
                               default=argparse.SUPPRESS, help=text + shown)
    return parser


def _parse_one(name: str, info: SettingInfo, raw: str, origin: str) -> Any:
    try:
        return info.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{_flag(name, info)}: {exc} (from {origin})") from None


def load_config(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """Parse argv (without the program name) and the environment into a Config.

    Runs in the master before anything is bound. argparse itself exits with status 2 on a
    malformed command line; ``ConfigError`` is raised for values that do not parse.
    """
    table = {f.name: info for f, info in setting_infos()}
    values: dict[str, Any] = {}

    known_env = {env_name(name): name for name in table}
    for key, raw in environ.items():
        if not key.startswith("DROVER_") or key.startswith("DROVER_TEST_"):
            continue
        name = known_env.get(key)
        if name is None:
            raise ConfigError(f"{key}: unknown setting (from environment)")
        info = table[name]
        origin = f"environment variable {key}"
        if info.multi:
            values[name] = tuple(_parse_one(name, info, part, origin)
                                 for part in raw.split(",") if part.strip())
        else:
            values[name] = _parse_one(name, info, raw, origin)

    args = build_parser().parse_args(list(argv))
    for name, raw in vars(args).items():
        info = table[name]
        origin = "command line"
        if info.multi:
            values[name] = tuple(_parse_one(name, info, item, origin) for item in raw)
        else:
            values[name] = _parse_one(name, info, raw, origin)

    config = Config(**values)
    if not config.http and not config.uwsgi:
        config = dataclasses.replace(config, http=(":8000",))
    return config
