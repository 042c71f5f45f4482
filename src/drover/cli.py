"""Command line entry point: argv -> Config -> the master (or --print-config)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from drover import logs
from drover.config import ConfigError, load


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = sys.argv[1:] if argv is None else argv
    try:
        loaded = load(args, os.environ)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"drover: error: {problem}", file=sys.stderr)
        sys.exit(2)
    config = loaded.config
    if loaded.print_config:
        from drover.config.show import render

        for level, message in loaded.notes:
            if level >= logging.WARNING:
                print(f"drover: warning: {message}", file=sys.stderr)
        sys.stdout.write(render(config))
        sys.exit(0)
    logs.setup(config.log_level)
    for level, message in loaded.notes:
        logs.log.log(level, "%s", message)
    from drover.appenv import AppEnvError, prepare_master

    try:
        prepare_master(config)
    except AppEnvError as exc:
        logs.log.error("%s", exc)
        sys.exit(2)
    from drover.master import run

    sys.exit(run(config, list(args)))
