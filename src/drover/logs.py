"""Log setup: one line per event on stderr, the same format in master and workers."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("drover")
access = logging.getLogger("drover.access")

FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(message)s"


def setup(level: str) -> None:
    """Called in the master before fork; workers inherit the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The app's warnings (e.g. wsgiref.validate's WSGIWarning) go to the log too.
    logging.captureWarnings(True)
