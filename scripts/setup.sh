#!/usr/bin/env bash
# Create .venv with Drover installed (editable). Add "test" to install the test tools and the
# system packages the tests use (nginx for the uwsgi protocol tests).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "test" ]; then
    missing=()
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    command -v tmux >/dev/null 2>&1 || missing+=(tmux)  # the terminal uwsgitop runs on
    if [ ${#missing[@]} -gt 0 ]; then
        echo "setup: installing ${missing[*]} from Debian's packages" >&2
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq
        # Debian starts nginx on install where it can; the tests run their own instance.
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if [ "${1:-}" = "test" ]; then
    .venv/bin/python -m pip install -q -e '.[test]'
else
    .venv/bin/python -m pip install -q -e .
fi
