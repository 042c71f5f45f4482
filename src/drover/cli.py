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
    logs.setup(config.log_level)
    from drover.master import run

    sys.exit(run(config))
