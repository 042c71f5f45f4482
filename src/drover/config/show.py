"""``drover --print-config``: every resolved setting, its value and where it came from.

Runs in the master instead of starting it. The output is TOML that ``drover --config`` reads
back (the same settings, the same values), each line commented with its origin, so it also
turns a uwsgi.ini into a drover.toml. Settings left at their default are shown commented out.
"""

from __future__ import annotations

import json
from typing import Any

from drover.config.settings import Config, parse_octal_mode, setting_infos


def _literal(value: Any, parse: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if parse is parse_octal_mode and isinstance(value, int):
        return json.dumps(f"{value:o}")  # read back as octal text, not as a decimal number
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple | list):
        items = [_literal(item, parse) for item in value]
        return "[" + ", ".join(item for item in items if item is not None) + "]"
    return json.dumps(str(value))


def render(config: Config) -> str:
    lines = ["# drover --print-config: every setting, its value, and where it came from."]
    topic = ""
    for f, info in setting_infos():
        if info.topic != topic:
            topic = info.topic
            lines += ["", f"# -- {topic}"]
        value = getattr(config, f.name)
        origins = dict(config.origins).get(f.name)
        text = _literal(value, info.parse)
        if not origins:  # a default: shown, but as a comment, so the output reads back as is
            lines.append(f"# {f.name} is not set  # default" if text is None
                         else f"# {f.name} = {text}  # default")
        else:
            lines.append(f"{f.name} = {text}  # {', '.join(dict.fromkeys(origins))}")
    return "\n".join(lines) + "\n"
