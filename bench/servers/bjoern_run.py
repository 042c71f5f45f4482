"""Run a WSGI app under bjoern, which has no command line of its own.

Usage: python bjoern_run.py HOST PORT module:callable
"""

import importlib
import sys

import bjoern  # type: ignore  # C extension without type information


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    host, port, target = argv[1], int(argv[2]), argv[3]
    module_name, _, attr = target.partition(":")
    app = getattr(importlib.import_module(module_name), attr or "app")
    print(f"bjoern listening at http://{host}:{port}", file=sys.stderr, flush=True)
    bjoern.run(app, host, port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
