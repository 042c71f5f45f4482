"""Render the settings table as Markdown: ``python -m drover.config.docs > docs/settings.md``.

docs/settings.md is generated from the same table as the command line and the environment
variables; a test keeps the committed file in step with the table.
"""

from __future__ import annotations

import sys

from drover.config.settings import env_name, setting_infos


def render() -> str:
    lines = ["# Drover settings", "",
             "Generated from `src/drover/config/settings.py` by "
             "`python -m drover.config.docs`; do not edit by hand.", "",
             "Every setting can be given on the command line, as an environment variable, or "
             "in a configuration file: in a uwsgi.ini (`--ini FILE`) its key is the long "
             "option without the dashes (`max-requests = 1000`), in a TOML file "
             "(`--config drover.toml`, or `[tool.drover]` of `--config pyproject.toml`) its "
             "name with dashes or underscores (`max_requests = 1000`). uWSGI's and Gunicorn's "
             "own names are translated: see [migrating.md](migrating.md).", "",
             "Precedence: default < configuration file < environment variable < command "
             "line. A repeatable option takes a comma-separated list in its environment "
             "variable (`DROVER_HTTP=127.0.0.1:8000,unix:/run/app.sock`); a value that "
             "itself holds a comma must come from the command line or a file. "
             "`drover --print-config` shows every setting, its value and where it came "
             "from."]
    topic = ""
    for f, info in setting_infos():
        if info.topic != topic:
            topic = info.topic
            lines += ["", f"## {topic}", "",
                      "| option | environment | default | meaning |", "| --- | --- | --- | --- |"]
        flags = ", ".join(f"`{flag}`" for flag in info.flags) or f"`{info.metavar}` (positional)"
        if info.metavar and info.flags:
            flags += f" `[{info.metavar}]`" if info.bare is not None else f" `{info.metavar}`"
        if info.multi:
            flags += " (repeatable)"
        if f.name == "workers":
            shown = "number of CPU cores"
        elif f.default in ((), "", None):
            shown = "-"
        else:
            shown = f"`{f.default}`"
        text = info.help.replace("|", "\\|")
        lines.append(f"| {flags} | `{env_name(f.name)}` | {shown} | {text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
