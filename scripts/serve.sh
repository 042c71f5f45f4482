#!/usr/bin/env bash
# Quick start: set up .venv and run Drover. With no arguments it serves its welcome page on
# :8000; any arguments are passed to drover (e.g. --http :8080 myapp:app).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/drover "$@"
