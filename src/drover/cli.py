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
    try:
        logs.setup(config.log_level, config.log_file, config.log_maxsize)
        if config.access_log not in ("", "-"):  # fail now, naming the option, not in workers
            os.close(os.open(config.access_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    except OSError as exc:
        which = "--log-file" if exc.filename == config.log_file else "--access-log"
        print(f"drover: error: {which}: cannot open {exc.filename}: {exc.strerror}",
              file=sys.stderr)
        sys.exit(2)
    for level, message in loaded.notes:
        logs.log.log(level, "%s", message)
    from drover.appenv import AppEnvError, prepare_master

    try:
        prepare_master(config)
    except AppEnvError as exc:
        logs.log.error("%s", exc)
        logs.flush()
        sys.exit(2)
    from drover.master import run

    status = run(config, list(args))
    logs.flush()
    sys.exit(status)
