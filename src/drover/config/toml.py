"""Drover's own file format: TOML. Runs in the master, before anything is bound.

``drover --config drover.toml``: top-level keys are setting names, with dashes or underscores
(``max-requests = 1000``, ``max_requests = 1000``, ``http = [":8000", "/run/app.sock"]``).
``drover --config pyproject.toml`` reads the ``[tool.drover]`` table instead. Neither file is
read unless named: the directory Drover starts in never changes what it does.

Values are turned back into text and parsed by the settings table like every other source, so
``"10M"`` and ``10485760`` are both a size and ``true`` is a boolean. An unknown key is an
error (with a "did you mean"); a list is accepted only for a repeatable setting.
"""

from __future__ import annotations

import os
import re
import tomllib
from typing import Any

from drover.config.settings import setting_infos
from drover.config.sources import ConfigError, Raw, Report, did_you_mean


def _text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    return None


def _key_lines(text: str, table: tuple[str, ...]) -> dict[str, int]:
    """Line numbers of the keys of ``table`` (tomllib keeps none): good enough for messages."""
    lines: dict[str, int] = {}
    current: tuple[str, ...] = ()
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.fullmatch(r"\[([^\[\]]+)\]\s*(#.*)?", stripped)
        if header:
            current = tuple(part.strip().strip("\"'") for part in header.group(1).split("."))
            continue
        key = re.match(r"[\"']?([A-Za-z0-9_-]+)[\"']?\s*=", stripped)
        if key and current == table:
            lines.setdefault(key.group(1), number)
    return lines


def read_toml(path: str, report: Report) -> list[Raw]:
    """The values a TOML file sets; problems go to ``report``."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path!r}: {exc.strerror or exc}") from None
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    table_path: tuple[str, ...] = ()
    table: Any = document
    if os.path.basename(path) == "pyproject.toml":
        table_path = ("tool", "drover")
        table = document.get("tool", {}).get("drover")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: no [tool.drover] table")
    lines = _key_lines(data.decode("utf-8"), table_path)
    infos = {f.name: info for f, info in setting_infos()}
    raws: list[Raw] = []
    for key, value in table.items():
        origin = f"{path}:{lines[key]}" if key in lines else path
        name = key.replace("-", "_")
        info = infos.get(name)
        if info is None:
            hint = did_you_mean(name, infos)
            report.error(f"{origin}: unknown setting {key!r}{hint}")
            continue
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not info.multi:
            report.error(f"{origin}: {key} takes one value, not a list")
            continue
        for item in items:
            text = _text(item)
            if text is None:
                report.error(f"{origin}: {key} = {item!r}: expected a string, number or "
                             "boolean")
                continue
            raws.append(Raw(name, text, origin, key))
    return raws
