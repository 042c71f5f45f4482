"""The tables of docs/migrating.md, from the readers' own tables: ``python -m
drover.config.migrating`` prints them. A test compares the committed tables with this output,
so the guide always says what the readers do."""

from __future__ import annotations

import sys

from drover.config.gunicorn import HOOKS, NAMES
from drover.config.uwsgi_names import (
    ALIASES,
    APP_KEYS,
    MISSING,
    NOT_NEEDED,
    describe,
    ini_keys,
)

# The options of the survey of 66 real uwsgi.ini files (issue #10), most used first.
SURVEY = (
    "master", "processes", "workers", "module", "chdir", "vacuum", "enable-threads", "socket",
    "harakiri", "chmod-socket", "wsgi-file", "die-on-term", "buffer-size", "max-requests",
    "threads", "http", "uid", "gid", "http-socket", "callable", "pidfile", "single-interpreter",
    "static-map", "home", "virtualenv", "env", "plugins", "thunder-lock", "lazy-apps", "need-app",
    "post-buffering", "memory-report", "ignore-sigpipe", "ignore-write-errors",
    "disable-write-exception", "daemonize", "disable-logging", "log-format", "http-timeout",
    "auto-procname", "chown-socket", "logto", "reload-on-rss", "strict", "worker-reload-mercy",
    "log-5xx", "cheaper", "stats", "hook-master-start", "route", "attach-daemon")

GUNICORN_FLAGS = {
    "-w": "`-w`, `--workers`",
    "-b": "`-b`, `--bind` (HTTP listeners; `unix:PATH` too)",
    "-t": "`-t`, `--timeout` (`--threads` has no short form)",
    "-c": "`-c`, `--config` (reads the file's plain settings, never runs it)",
    "-e": "`-e`, `--env`",
    "-k": "not needed for sync and gthread: Drover's workers are threaded event loops",
    "-D": "not supported: run Drover in the foreground under systemd or supervisord",
}


def describe_gunicorn(key: str) -> str:
    """What Drover does with a Gunicorn setting (or flag), in the guide's words."""
    if key in GUNICORN_FLAGS:
        return GUNICORN_FLAGS[key]
    if key == "hooks":
        return ("not supported: Drover runs no Python from its configuration; each hook is "
                "refused with its line")
    entry = NAMES[key]
    keys = ini_keys()
    if key == "worker_class":
        return ("not needed for `sync` and `gthread` (Drover's workers are threaded event "
                "loops); other classes are not supported")
    if entry.not_needed:
        return f"not needed: {entry.not_needed}"
    if entry.target == "app":
        return "`APP` (positional)"
    if entry.target in keys:
        return f"`--{entry.target}`"
    assert entry.missing is not None
    flag = f"`--{entry.target}`; until then " if entry.target else ""
    return f"{entry.missing.status}: {flag}{entry.missing.advice}"


def uwsgi_keys() -> list[str]:
    rest = sorted({*ALIASES, *NOT_NEEDED, *MISSING, *APP_KEYS} - set(SURVEY))
    return [*SURVEY, *rest]


def render() -> str:
    lines = ["<!-- uwsgi table: start -->", "| uWSGI option | Drover |", "| --- | --- |"]
    lines += [f"| `{key}` | {describe(key)} |" for key in uwsgi_keys()]
    lines += ["<!-- uwsgi table: end -->", "", "<!-- gunicorn table: start -->",
              "| Gunicorn setting | Drover |", "| --- | --- |"]
    lines += [f"| `{key}` | {describe_gunicorn(key)} |"
              for key in [*GUNICORN_FLAGS, *NAMES, "hooks"]]
    lines.append("<!-- gunicorn table: end -->")
    assert HOOKS
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
