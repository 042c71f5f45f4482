#!/usr/bin/env bash
# Create .venv with Drover installed (editable). Add "test" to install the test tools and the
# system packages the tests use (nginx for the uwsgi protocol tests, logrotate for deploy/).
# Installing is skipped when
# .venv already holds what pyproject.toml asks for (a stamp records its hash), so a second run
# costs a fraction of a second.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "test" ]; then
    missing=()
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    # deploy/'s tests check the logrotate file with logrotate itself.
    command -v logrotate >/dev/null 2>&1 || [ -x /usr/sbin/logrotate ] || missing+=(logrotate)
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
extras=""
[ "${1:-}" = "test" ] && extras="[test]"
stamp=".venv/.drover-setup"
want="$(sha256sum pyproject.toml | cut -d' ' -f1) ${extras:-[]}"
if [ -x .venv/bin/python ] && [ -f "$stamp" ]; then
    # Set up for the tests covers the plain set-up too.
    have="$(cat "$stamp")"
    if [ "$have" = "$want" ] || { [ -z "$extras" ] && [ "${have% *}" = "${want% *}" ]; }; then
        exit 0
    fi
fi
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv" >&2
    "$PY" -m venv .venv
fi
echo "setup: installing Drover${extras:+ and the test tools} into .venv" >&2
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e ".$extras" 2>&1 | grep -v '^\s*$' >&2 || true
.venv/bin/python -c "import drover" || { echo "setup: the install failed" >&2; exit 1; }
echo "$want" > "$stamp"
