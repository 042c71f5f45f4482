"""What every configuration reader hands over: raw strings with their origin, notes and errors.

Runs in the master, before anything is bound. A reader (command line, environment, uwsgi.ini,
TOML, gunicorn.conf.py) never parses a value: it produces ``Raw`` items (setting name, text,
origin) and ``config.load`` parses each one with its setting's ``parse``, in one place. Problems
a reader finds are collected, one line each, so a file with three mistakes gets three lines.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field


class ConfigError(Exception):
    """A setting could not be used; each line names the option, its value and its origin."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Raw:
    """One value for one setting, as text, and where it came from ("uwsgi.ini:12 (processes)",
    "environment variable DROVER_HTTP", "command line")."""

    name: str
    text: str
    origin: str
    key: str = ""  # the option as a file names it ("processes"); empty for flags and variables

    @property
    def where(self) -> str:
        """The origin with the file's own name for the option: "uwsgi.ini:12 (processes)"."""
        return f"{self.origin} ({self.key})" if self.key else self.origin


@dataclass(slots=True)
class Report:
    """What a reader found besides values: errors (stop the start, exit status 2) and log
    lines for later (the log is set up once the log level is known)."""

    errors: list[str] = field(default_factory=list)
    notes: list[tuple[int, str]] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors.append(message)

    def warning(self, message: str) -> None:
        self.notes.append((logging.WARNING, message))

    def debug(self, message: str) -> None:
        self.notes.append((logging.DEBUG, message))


def did_you_mean(word: str, candidates: Iterable[str], prefix: str = "",
                 cutoff: float = 0.6) -> str:
    """' (did you mean --workers?)' when a candidate is close to ``word``, else ''."""
    import difflib  # only on an error path: not loaded into every worker

    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=cutoff)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""
