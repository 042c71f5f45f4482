#!/usr/bin/env bash
# Drover benchmarks, one command:
#   bash bench/run.sh [--smoke] [--duration S] [--rounds N] [--only SCENARIO] [--servers a,b] [--out DIR]
# Installs wrk, nginx-light and libev-dev with apt-get when missing, builds bench/.venv with the
# peers (requirements.txt), matplotlib and Drover from this repository, then runs harness.py.
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$BENCH_DIR")"
VENV="$BENCH_DIR/.venv"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.bench-stamp"
PIP_TIMEOUT=900

log() { printf '[bench] %s\n' "$*" >&2; }
shout() { printf '\n[bench] !!!!!!!!!! %s\n\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else return 1
    fi
}

ensure_system_packages() {
    local missing=()
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    dpkg -s libev-dev >/dev/null 2>&1 || missing+=(libev-dev)
    command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
    command -v cc >/dev/null 2>&1 || missing+=(gcc)
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    if ! { as_root timeout 600 env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
           as_root timeout 900 env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
               --no-install-recommends "${missing[@]}"; }; then
        shout "apt-get could not install ${missing[*]}: the harness will report what is missing"
    fi
}

# A fingerprint of everything the venv is built from: rebuild when it changes.
fingerprint() {
    {
        "$PYTHON" -c 'import sys; print(sys.version)'
        cat "$BENCH_DIR/requirements.txt"
        [ -f "$REPO_DIR/pyproject.toml" ] && cat "$REPO_DIR/pyproject.toml"
    } | sha256sum | cut -d' ' -f1
}

ensure_venv() {
    local want
    want="$(fingerprint)"
    if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
        return 0
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating $VENV"
        if ! "$PYTHON" -m venv "$VENV"; then
            rm -rf "$VENV"
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv python3-dev || true
            "$PYTHON" -m venv "$VENV"
        fi
    fi
    local pip=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
    local failed=()
    while read -r req; do
        req="${req%%#*}"; req="${req// /}"
        [ -z "$req" ] && continue
        log "pip install $req"
        timeout "$PIP_TIMEOUT" "${pip[@]}" "$req" || failed+=("$req")
    done < "$BENCH_DIR/requirements.txt"

    # Drover itself, from this repository (editable, so the run measures the working tree).
    if [ -f "$REPO_DIR/pyproject.toml" ] && timeout "$PIP_TIMEOUT" "${pip[@]}" -e "$REPO_DIR"; then
        log "installed Drover from $REPO_DIR (editable)"
    else
        log "no installable Drover in $REPO_DIR: using PYTHONPATH=$REPO_DIR/src with its dependencies"
        timeout "$PIP_TIMEOUT" "${pip[@]}" httptools setproctitle || failed+=(drover-deps)
    fi

    if [ ${#failed[@]} -eq 0 ]; then
        echo "$want" > "$STAMP"
    else
        rm -f "$STAMP"  # retry the failed ones next time
        shout "FAILED TO INSTALL: ${failed[*]} (those servers will be reported as unavailable)"
    fi
}

ensure_system_packages
ensure_venv
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true  # 1,000 connections need the file descriptors
cd "$REPO_DIR"
exec "$VENV/bin/python" "$BENCH_DIR/harness.py" "$@"
