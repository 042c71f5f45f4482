"""Access-log lines: uWSGI's format variables, the presets, JSON, and which requests to log.

Theory of operation
-------------------
``--log-format`` is compiled once, in each worker, into one Python function that builds the
whole line with a single ``"".join`` of expressions: no format parsing per request. The
variables are uWSGI's (``%(addr)``, ``%(status)``, ``%(msecs)``, ``%(var.NAME)``...; the list
is ``VARIABLES``); an unknown one is a configuration error, so a typo is found at start.

Anything that comes from the client is escaped so that it cannot forge a line: in the text
formats every byte outside printable ASCII, and ``"`` and ``\\``, become ``\\xHH`` (as nginx
does); in the ``json`` preset every value is a JSON string or number with JSON's escapes and
non-ASCII as ``\\u00HH`` (WSGI strings carry the raw bytes as latin-1 code points).

``AccessLog.log`` runs on the loop thread after a response is complete: the filters
(``--log-exclude``, ``--disable-logging`` with ``--log-4xx``/``--log-5xx``/``--log-slow``)
first, then the formatter, then the line is queued on a ``LogSink`` (drover.logs), whose own
thread writes it: a slow disk costs lines, not requests.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

from drover.logs import LogSink, main_sink

PRESETS = {
    "common": '%(addr) - %(user) [%(ltime)] "%(method) %(uri) %(proto)" %(status) %(size)',
    "combined": '%(addr) - %(user) [%(ltime)] "%(method) %(uri) %(proto)" %(status) %(size) '
                '"%(referer)" "%(uagent)"',
    "uwsgi": "[pid: %(pid)|app: 0|req: %(worker_requests)/%(worker_requests)] %(addr) (%(user)) "
             "{%(vars) vars in %(pktsize) bytes} [%(ctime)] %(method) %(uri) => generated "
             "%(rsize) bytes in %(msecs) msecs (%(proto) %(status)) %(headers) headers in "
             "%(hsize) bytes (1 switches on core %(core))",
}
# The json preset: (key, variable) pairs; numbers stay numbers.
JSON_FIELDS = (("time", "iso"), ("addr", "addr"), ("user", "user"), ("method", "method"),
               ("uri", "uri"), ("proto", "proto"), ("status", "status"), ("size", "size"),
               ("referer", "referer"), ("uagent", "uagent"), ("host", "host"),
               ("msecs", "msecs"), ("micros", "micros"), ("pid", "pid"), ("wid", "wid"))

# Formatter arguments: e (environ), r (Response), took (seconds), end (epoch seconds at the end
# of the response), lt (the loop thread: index, worker). Each variable: (expression, is_text).
# Text expressions give str from the client, escaped per format; others are made by us.
VARIABLES: dict[str, tuple[str, bool]] = {
    "addr": ("e.get('REMOTE_ADDR') or '-'", True),
    "user": ("e.get('REMOTE_USER') or '-'", True),
    "host": ("e.get('HTTP_HOST') or '-'", True),
    "method": ("e.get('REQUEST_METHOD') or '-'", True),
    "uri": ("e.get('REQUEST_URI') or '-'", True),
    "proto": ("e.get('SERVER_PROTOCOL') or '-'", True),
    "uagent": ("e.get('HTTP_USER_AGENT') or '-'", True),
    "referer": ("e.get('HTTP_REFERER') or '-'", True),
    "cl": ("e.get('CONTENT_LENGTH') or '0'", True),
    "status": ("(r.status or '500 ')[:3]", False),
    "size": ("str(r.sent)", False),
    "rsize": ("str(r.sent)", False),
    "hsize": ("str(_head_size(r))", False),
    "headers": ("str(len(r.headers) + (r.content_length is not None))", False),
    "micros": ("str(int(took * 1000000))", False),
    "msecs": ("str(int(took * 1000))", False),
    "secs": ("f'{took:.6f}'", False),
    "time": ("str(int(end - took))", False),
    "tmsecs": ("str(int((end - took) * 1000))", False),
    "tmicros": ("str(int((end - took) * 1000000))", False),
    "ctime": ("time.ctime(end - took)", False),
    "ltime": ("_ltime(end - took)", False),
    "iso": ("_iso(end - took)", False),
    "epoch": ("str(int(end))", False),
    "pid": ("_pid", False),
    "wid": ("_wid", False),
    "core": ("str(lt.index)", False),
    "vars": ("str(len(e))", False),
    "pktsize": ("str(_packet_size(e))", False),
    "worker_requests": ("str(lt.worker.served + 1)", False),
}
_NUMERIC = {"status", "size", "rsize", "hsize", "headers", "micros", "msecs", "time", "tmsecs",
            "tmicros", "epoch", "pid", "wid", "core", "vars", "pktsize", "worker_requests"}
_VAR_RE = re.compile(r"%\(([A-Za-z0-9_.\-]+)\)")

Formatter = Callable[[dict[str, Any], Any, float, float, Any], str]

# -- escaping ------------------------------------------------------------------------------------

_UNSAFE = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')


def _hex(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code > 0xFF:  # not from the wire (WSGI strings are latin-1): escape its UTF-8 bytes
        return "".join(f"\\x{b:02X}" for b in match.group().encode("utf-8"))
    return f"\\x{code:02X}"


def escape_text(value: str) -> str:
    """Bytes outside printable ASCII, ``"`` and ``\\`` as ``\\xHH`` (nginx's escaping)."""
    if _UNSAFE.search(value) is None:
        return value
    return _UNSAFE.sub(_hex, value)


def escape_json(value: str) -> str:
    """A JSON string literal, quotes included, ASCII only."""
    return str(_json_str(value))


# -- time formats, cached per second ------------------------------------------------------------

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_ltime_cache: list[Any] = [-1, ""]
_iso_cache: list[Any] = [-1, ""]


def _ltime(ts: float) -> str:
    """Apache's %t without brackets: 26/Nov/2026:00:21:05 +0000 (local time)."""
    second = int(ts)
    cache = _ltime_cache
    if cache[0] != second:
        t = time.localtime(second)
        cache[1] = (f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:"
                    f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} "
                    f"{time.strftime('%z', t)}")
        cache[0] = second
    return str(cache[1])


def _iso(ts: float) -> str:
    """ISO 8601 with milliseconds and the UTC offset: 2026-11-26T00:21:05.123+00:00."""
    second = int(ts)
    cache = _iso_cache
    if cache[0] != second:
        t = time.localtime(second)
        zone = time.strftime("%z", t)
        cache[1] = (time.strftime("%Y-%m-%dT%H:%M:%S", t), f"{zone[:3]}:{zone[3:]}")
        cache[0] = second
    stamp, zone = cache[1]
    return f"{stamp}.{int((ts - second) * 1000):03d}{zone}"


def _head_size(r: Any) -> int:
    """The status line and the app's header lines, in bytes (the Server and Date fields and
    the framing Drover adds are not counted)."""
    size = 9 + len(r.status or "500 ") + 2 + sum(len(line) for line in r.headers) + 2
    if r.content_length is not None:
        size += len(f"Content-Length: {r.content_length}\r\n")
    return size


def _packet_size(e: dict[str, Any]) -> int:
    """What the CGI variables would take in a uwsgi packet (uWSGI's ``pktsize``)."""
    return sum(4 + len(k) + len(v) for k, v in e.items() if type(v) is str)


# -- compiling ------------------------------------------------------------------------------------


def _variable(name: str, json: bool) -> tuple[str, bool]:
    """(expression, is_number) for one variable; ValueError names an unknown one."""
    if name.startswith("var."):
        key = name[4:]
        if not key:
            raise ValueError("%(var.) names no environ variable")
        expression = f"str(e.get({key!r}, '-'))"
        return (f"_json({expression})" if json else f"_esc({expression})"), False
    known = VARIABLES.get(name)
    if known is None:
        raise ValueError(f"unknown variable %({name}) (docs/access-log.md lists them)")
    expression, text = known
    if json:
        return (expression, True) if name in _NUMERIC else (f"_json({expression})", False)
    return (f"_esc({expression})" if text else expression), name in _NUMERIC


def _namespace(worker_id: int) -> dict[str, Any]:
    return {"_esc": escape_text, "_json": escape_json, "_ltime": _ltime, "_iso": _iso,
            "_head_size": _head_size, "_packet_size": _packet_size, "time": time,
            "_pid": str(os.getpid()), "_wid": str(worker_id)}


def compile_format(spec: str, worker_id: int = 0) -> Formatter:
    """Turn ``--log-format`` (a preset name or a format) into a function that returns the line
    (with its newline). Runs once per worker, and once in the master to check the setting.
    Raises ValueError for an unknown variable."""
    if spec == "json":
        parts: list[str] = []
        for n, (key, name) in enumerate(JSON_FIELDS):
            parts.append(repr(("{" if n == 0 else ",") + escape_json(key) + ":"))
            parts.append(_variable(name, json=True)[0])
        parts.append(repr("}\n"))
    else:
        text = PRESETS.get(spec, spec)
        parts = []
        pos = 0
        for match in _VAR_RE.finditer(text):
            if match.start() > pos:
                parts.append(repr(text[pos:match.start()]))
            parts.append(_variable(match.group(1), json=False)[0])
            pos = match.end()
        parts.append(repr(text[pos:] + "\n"))
    source = ("def access_line(e, r, took, end, lt):\n"
              f"    return ''.join(({', '.join(parts)},))\n")
    namespace = _namespace(worker_id)
    exec(compile(source, "<log-format>", "exec"), namespace)
    formatter: Formatter = namespace["access_line"]
    return formatter


class AccessLog:
    """The access log of one worker: filters, the compiled format, the sink (loop threads call
    ``log``; built by the worker after fork)."""

    def __init__(self, config: Any, worker_id: int) -> None:
        self.format = compile_format(config.log_format, worker_id)
        self.sink: LogSink = (main_sink() if config.access_log in ("", "-")
                              else LogSink(config.access_log, config.log_maxsize))
        self.exclude = (re.compile("|".join(f"(?:{rx})" for rx in config.log_exclude)).search
                        if config.log_exclude else None)
        # --log-4xx/5xx/slow without --access-log: only those lines, to Drover's log.
        self.selective = config.disable_logging or not config.access_log
        self.log_4xx = config.log_4xx
        self.log_5xx = config.log_5xx
        self.slow = config.log_slow / 1000.0 if config.log_slow else 0.0
        self._time = time.time

    def log(self, environ: dict[str, Any], response: Any, took: float, lt: Any) -> None:
        """Loop thread, after a response ended (or failed)."""
        exclude = self.exclude
        if exclude is not None and exclude(environ.get("PATH_INFO", "")) is not None:
            return
        if self.selective:
            status = response.status or "500"
            if not ((self.log_4xx and status[0] == "4") or (self.log_5xx and status[0] == "5")
                    or (self.slow and took > self.slow)):
                return
        self.sink.write(self.format(environ, response, took, self._time(), lt))


def wanted(config: Any) -> bool:
    """Is there an access log at all? (--access-log, or --log-4xx/5xx/slow, which imply '-'.)"""
    return bool(config.access_log or config.log_4xx or config.log_5xx or config.log_slow)
