"""gunicorn.conf.py, read without running it. Runs in the master, before anything is bound.

Theory of operation
-------------------
A gunicorn.conf.py is Python that Gunicorn executes. Drover does not execute configuration:
the file is parsed with ``ast`` and only assignments of plain values to a name are read
(``workers = 4``, ``bind = ["unix:/run/app.sock"]``, ``preload_app = True``). Two idioms common
enough to be part of the format are evaluated too, with nothing else:

- the CPU count: ``multiprocessing.cpu_count()`` and ``os.cpu_count()``, in arithmetic with
  numbers (``workers = multiprocessing.cpu_count() * 2 + 1``);
- the environment: ``os.environ.get("NAME", default)``, ``os.getenv("NAME", default)`` and
  ``os.environ["NAME"]``, optionally wrapped in ``int()``, ``float()`` or ``str()``.

Anything else that computes a value, any statement other than an assignment or an import, and
any server hook (``def post_fork(server, worker): ...``) is reported as unsupported with its
line: Drover never drops a line of configuration silently.

Gunicorn's names map onto Drover's settings through ``NAMES``; a Gunicorn setting whose Drover
setting does not exist yet is "pending" (with the issue that adds it), as for uWSGI's names.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from drover.config.sources import ConfigError, Raw, Report, did_you_mean
from drover.config.uwsgi_names import Missing, ini_keys, privilege_noop


@dataclass(frozen=True, slots=True)
class Name:
    """A Gunicorn setting: the Drover flag (without dashes) it sets, or why it is not needed,
    or what is missing."""

    target: str = ""
    convert: Callable[[Any], list[str]] | None = None
    not_needed: str = ""
    missing: Missing | None = None


def _access_log(value: Any) -> list[str]:
    """accesslog: "-" (Gunicorn's stdout) is Drover's own log, a path a file, None off."""
    if value is None:
        return [""]
    return ["-" if value in ("-", "/dev/stdout", "/dev/stderr") else str(value)]


def _error_log(value: Any) -> list[str]:
    """errorlog: "-" (stderr) is where Drover's log goes anyway; a path is --log-file."""
    return [""] if value in (None, "-", "/dev/stderr") else [str(value)]


def _octal(value: Any) -> list[str]:
    """umask = 0o022 is the number 18 once Python reads it: give it back as octal text."""
    return [f"{value:o}" if isinstance(value, int) else str(value)]


def _comma_list(value: Any) -> list[str]:
    if isinstance(value, list | tuple):
        return [str(item) for item in value]
    return [part.strip() for part in str(value).split(",") if part.strip()]


_HOOK = "Drover runs no Python from its configuration; move this code into the app"
_TLS = Missing("terminate TLS in nginx (or another proxy) in front of Drover")

NAMES: dict[str, Name] = {
    "bind": Name("http"),
    "workers": Name("workers"),
    "threads": Name("threads"),
    "timeout": Name("timeout"),
    "graceful_timeout": Name("graceful-timeout"),
    "keepalive": Name("keepalive-timeout"),
    "max_requests": Name("max-requests"),
    "max_requests_jitter": Name("max-requests-jitter"),
    "accesslog": Name("access-log", convert=_access_log),
    "errorlog": Name("log-file", convert=_error_log),
    "loglevel": Name("log-level"),
    "preload_app": Name("preload"),
    "chdir": Name("chdir"),
    "raw_env": Name("env"),
    "pythonpath": Name("pythonpath", convert=_comma_list),
    "pidfile": Name("pidfile"),
    "user": Name("uid"),
    "group": Name("gid"),
    "umask": Name("umask", convert=_octal),
    "forwarded_allow_ips": Name("forwarded-allow-ips", convert=_comma_list),
    "secure_scheme_headers": Name(missing=Missing(
        "Drover trusts X-Forwarded-Proto (and Forwarded) from the --forwarded-allow-ips peers",
        refuse=False)),
    "proxy_protocol": Name("proxy-protocol"),
    "proxy_allow_ips": Name("forwarded-allow-ips", convert=_comma_list),
    "wsgi_app": Name("app"),
    "backlog": Name("backlog"),
    "proc_name": Name("proc-name"),
    "default_proc_name": Name("proc-name"),
    "limit_request_line": Name("limit-request-line"),
    "limit_request_fields": Name("limit-request-fields"),
    "limit_request_field_size": Name("limit-request-field-size"),
    "worker_connections": Name("max-connections"),
    "daemon": Name(missing=Missing(
        "use --daemonize LOGFILE (it takes the log file to write), or run Drover in the "
        "foreground under systemd")),
    "reload": Name("reload"),
    "worker_class": Name(not_needed="Drover's workers are threaded event loops (sync and "
                                    "gthread apps run unchanged)"),
    "worker_tmp_dir": Name(not_needed="Drover's workers report to the master over a pipe"),
    "sendfile": Name(not_needed="Drover uses sendfile for wsgi.file_wrapper"),
    "capture_output": Name(not_needed="the app's stdout and stderr go where Drover's log goes"),
    "tmp_upload_dir": Name(not_needed="large bodies spill to the system's temporary directory"),
    "reuse_port": Name(missing=Missing("Drover binds each address once", refuse=False)),
    "keyfile": Name(missing=_TLS),
    "certfile": Name(missing=_TLS),
    "ca_certs": Name(missing=_TLS),
    "ssl_version": Name(missing=_TLS),
    "cert_reqs": Name(missing=_TLS),
    "statsd_host": Name(missing=Missing(
        "Drover's stats server and Prometheus metrics (--stats) are read, not pushed",
        refuse=False)),
    "access_log_format": Name(missing=Missing(
        "Gunicorn's %(h)s atoms are not uWSGI's variables, which --log-format takes: "
        "rewrite the format (docs/access-log.md)", refuse=False)),
    "logconfig": Name(missing=Missing("Drover logs to stderr", refuse=False)),
    "logconfig_dict": Name(missing=Missing("Drover logs to stderr", refuse=False)),
    "logger_class": Name(missing=Missing("Drover logs to stderr", refuse=False)),
    "spew": Name(missing=Missing("use a debugger", refuse=False)),
}

# Gunicorn's worker classes that change how the app runs; sync and gthread apps run as they are.
_PLAIN_WORKERS = {"sync", "gthread"}

HOOKS = frozenset({
    "on_starting", "on_reload", "when_ready", "pre_fork", "post_fork", "post_worker_init",
    "worker_int", "worker_abort", "pre_exec", "pre_request", "post_request", "child_exit",
    "worker_exit", "nworkers_changed", "on_exit", "ssl_context"})


class _Unsupported(Exception):
    pass


class _Evaluator:
    """Evaluates the two idioms of the module docstring, and literals; nothing else."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def value(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.List | ast.Tuple):
            return [self.value(item) for item in node.elts]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -self.value(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult
                                                                  | ast.FloorDiv):
            left, right = self.value(node.left), self.value(node.right)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (left, right)):
                raise _Unsupported
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            return left // right if right else 0
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            name = self.value(node.slice)
            if isinstance(name, str) and name in self.environ:
                return self.environ[name]
            raise _Unsupported
        raise _Unsupported

    def call(self, node: ast.Call) -> Any:
        func = ast.unparse(node.func)
        if node.keywords:
            raise _Unsupported
        args = [self.value(arg) for arg in node.args]
        if func in ("multiprocessing.cpu_count", "os.cpu_count") and not args:
            return os.cpu_count() or 1
        if func in ("os.environ.get", "os.getenv") and 1 <= len(args) <= 2:
            default = args[1] if len(args) == 2 else None
            return self.environ.get(str(args[0]), default)
        if func in ("int", "float", "str") and len(args) == 1:
            return {"int": int, "float": float, "str": str}[func](args[0])
        raise _Unsupported


def read_gunicorn(path: str, environ: Mapping[str, str], report: Report) -> list[Raw]:
    """The values a gunicorn.conf.py sets; problems go to ``report``."""
    try:
        with open(path, encoding="utf-8") as handle:
            source = handle.read()
    except OSError as exc:
        raise ConfigError(f"-c: cannot read {path!r}: {exc.strerror or exc}") from None
    try:
        tree = ast.parse(source, path)
    except SyntaxError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid Python: {exc.msg}") from None
    keys = ini_keys()
    evaluator = _Evaluator(environ)
    raws: list[Raw] = []
    for statement in tree.body:
        origin = f"{path}:{statement.lineno}"
        if isinstance(statement, ast.Import | ast.ImportFrom):
            continue
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue  # a docstring
        if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
            if statement.name in HOOKS:
                report.error(f"{origin}: the server hook {statement.name}() is not "
                             f"supported: {_HOOK}")
            continue  # a helper; what uses it is reported where it is used
        if isinstance(statement, ast.Assign | ast.AnnAssign):
            targets = (statement.targets if isinstance(statement, ast.Assign)
                       else [statement.target])
            if len(targets) != 1 or not isinstance(targets[0], ast.Name) or \
                    statement.value is None:
                report.error(f"{origin}: {_source(source, statement)!r} is not supported: "
                             "Drover reads only 'name = value' lines")
                continue
            name = targets[0].id
            if name in HOOKS:
                report.error(f"{origin}: the server hook {name} is not supported: {_HOOK}")
                continue
            try:
                value = evaluator.value(statement.value)
            except (_Unsupported, ValueError, TypeError):
                entry = NAMES.get(name)
                flag = entry.target if entry is not None else ""
                other = (f", or pass it with --{flag} or DROVER_{flag.replace('-', '_').upper()}"
                         if flag in keys else "")
                report.error(f"{origin}: {name} = {_source(source, statement.value)} is "
                             "computed, which is not supported: Drover reads plain values, the "
                             f"CPU count and os.environ.get(); write the value{other}")
                continue
            raws += _translate(name, value, origin, keys, report)
            continue
        kind = type(statement).__name__.lower()
        report.error(f"{origin}: {'an' if kind[0] in 'aeiou' else 'a'} {kind} statement is not "
                     "supported: Drover reads only 'name = value' lines")
    return raws


def _source(source: str, node: ast.AST) -> str:
    return ast.get_source_segment(source, node) or ast.unparse(node)


def _translate(name: str, value: Any, origin: str, keys: dict[str, str],
               report: Report) -> list[Raw]:
    entry = NAMES.get(name)
    if name.startswith("_") or (name.isupper() and entry is None):
        return []  # a module constant used by the file itself
    if entry is None:
        hint = did_you_mean(name, NAMES)
        report.error(f"{origin}: unknown Gunicorn setting {name!r}{hint}")
        return []
    if name == "worker_class":
        if str(value).rsplit(".", 1)[-1].lower().replace("worker", "") not in _PLAIN_WORKERS:
            report.error(f"{origin}: worker_class = {value!r} is not supported: Drover runs "
                         "WSGI apps in threads (use --threads for blocking apps)")
        else:
            report.debug(f"{origin}: {name} is not needed: {entry.not_needed}")
        return []
    if entry.not_needed:
        report.debug(f"{origin}: {name} is not needed: {entry.not_needed}")
        return []
    target = "app" if entry.target == "app" else keys.get(entry.target)
    if target is None and name in ("user", "group"):
        why = privilege_noop(name, str(value), uwsgi=False)
        if why:
            report.debug(f"{origin}: {name} = {value!r} is not needed: {why}")
            return []
    if target is None:
        missing = entry.missing
        assert missing is not None, name
        line = f"{origin}: {name} is {missing.status}: {missing.advice}"
        if missing.refuse:
            report.error(line)
        else:
            report.warning(line + "; starting without it")
        return []
    try:
        texts = entry.convert(value) if entry.convert else _texts(value)
    except ValueError as exc:
        report.error(f"{origin}: {name} = {value!r}: {exc}")
        return []
    return [Raw(target, text, origin, name) for text in texts]


def _texts(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(item) for item in value]
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if value is None:
        raise ValueError("None is not a value here; leave the line out")
    return [str(value)]
