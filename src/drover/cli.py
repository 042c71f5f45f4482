"""Command line entry point: argv -> Config -> the master."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from drover import logs
from drover.config import ConfigError, load_config


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = sys.argv[1:] if argv is None else argv
    try:
        config = load_config(args, os.environ)
    except ConfigError as exc:
        print(f"drover: error: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        logs.setup(config.log_level, config.log_file, config.log_maxsize)
        if config.access_log not in ("", "-"):  # fail now, naming the option, not in workers
            os.close(os.open(config.access_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    except OSError as exc:
        which = "--log-file" if exc.filename == config.log_file else "--access-log"
        print(f"drover: error: {which}: cannot open {exc.filename}: {exc.strerror}",
              file=sys.stderr)
        sys.exit(2)
    from drover.master import run

    status = run(config)
    logs.flush()
    sys.exit(status)
