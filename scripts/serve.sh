#!/usr/bin/env bash
# Quick start: set up .venv once, then run Drover from the directory you call this from (so
# `bash path/to/drover/scripts/serve.sh myapp:app` finds myapp.py where you are). With no
# arguments it serves its welcome page on http://127.0.0.1:8000; any arguments are passed to
# drover (e.g. --http :8080 myapp:app).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bash "$repo/scripts/setup.sh"
exec "$repo/.venv/bin/drover" "$@"
