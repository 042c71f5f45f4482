"""An app that shows what the configuration set up around it: the working directory, the
SITE_* environment variables, the URL split (SCRIPT_NAME, PATH_INFO), and whether the module
``venv_marker`` (placed in a test virtualenv's site-packages) can be imported."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    try:
        import venv_marker  # type: ignore[import-not-found]

        marker = venv_marker.VALUE
    except ImportError:
        marker = None
    body = json.dumps({
        "cwd": os.getcwd(),
        "env": {k: v for k, v in os.environ.items() if k.startswith("SITE_")},
        "script_name": environ.get("SCRIPT_NAME", ""),
        "path_info": environ.get("PATH_INFO", ""),
        "venv_marker": marker,
    }).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
