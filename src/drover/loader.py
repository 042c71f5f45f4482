"""Turn an app spec into a WSGI callable.

Forms: 'module:callable', 'module' (looks for 'application', then 'app'), 'path/to/app.py',
'path/to/app.py:callable', and a factory call 'module:create_app()' whose arguments are
Python literals. Runs in each worker after fork, or in the master with --preload.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

DEFAULT_NAMES = ("application", "app")


class AppLoadError(Exception):
    """The app cannot be loaded; the message says what was looked for and where."""

    def details(self) -> str:
        """More lines for the log after the message (none: the message says it all)."""
        return ""


class AppCodeError(AppLoadError):
    """The app's own code raised, while its module was imported or its factory ran.

    ``details()`` is the traceback of the app's frames only: the frames of Drover and of
    importlib that lead to the app's first line say nothing to its author.
    """

    def __init__(self, what: str, exc: BaseException) -> None:
        # The exception's own line ends details(): said once, after the app's frames.
        super().__init__(f"{what} raised {type(exc).__name__}")
        self.original = exc

    def details(self) -> str:
        frames = [frame for frame in traceback.extract_tb(self.original.__traceback__)
                  if not _is_loading_machinery(frame.filename)]
        lines = traceback.format_list(frames) + traceback.format_exception_only(self.original)
        head = "Traceback of the app's code (most recent call last):\n" if frames else ""
        return (head + "".join(lines)).rstrip("\n")


def describe_load_failure(spec: str, exc: BaseException) -> str:
    """The log message when the app could not be loaded (in the master or a worker)."""
    if isinstance(exc, AppLoadError):
        details = exc.details()
        return f"cannot load the app: {exc}" + (f"\n{details}" if details else "")
    lines = traceback.format_exception(exc)
    return (f"cannot load the app {spec!r}: loading it raised {type(exc).__name__}\n"
            + "".join(lines).rstrip("\n"))


_DROVER_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _is_loading_machinery(filename: str) -> bool:
    return (filename.startswith(_DROVER_DIR) or filename.startswith("<frozen importlib")
            or os.sep + "importlib" + os.sep in filename)


def prepare_path(chdir: str, pythonpath: tuple[str, ...]) -> None:
    """Apply --chdir and --pythonpath; the working directory is importable, as with python -m."""
    if chdir:
        try:
            os.chdir(chdir)
        except OSError as exc:
            raise AppLoadError(f"--chdir: cannot change to {chdir!r}: {exc.strerror}") from None
    for entry in reversed(pythonpath):
        sys.path.insert(0, os.path.abspath(entry))
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def _split_spec(spec: str) -> tuple[str, str]:
    """'a.b:c' -> ('a.b', 'c'); a Windows-free rule: the last ':' outside parentheses splits."""
    depth = 0
    for i in range(len(spec) - 1, -1, -1):
        ch = spec[i]
        if ch == ")":
            depth += 1
        elif ch == "(":
            depth -= 1
        elif ch == ":" and depth == 0:
            return spec[:i], spec[i + 1:]
    return spec, ""


def _parse_attribute(expr: str, spec: str) -> tuple[str, tuple[Any, ...], dict[str, Any], bool]:
    """'app' -> ('app', (), {}, False); 'create_app("x", debug=True)' -> a factory call."""
    try:
        node = ast.parse(expr.strip(), mode="eval").body
    except SyntaxError:
        raise AppLoadError(f"{spec!r}: {expr!r} is not a name or a call with literal "
                           "arguments") from None
    if isinstance(node, ast.Name | ast.Attribute):
        return ast.unparse(node), (), {}, False
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
        try:
            args = tuple(ast.literal_eval(a) for a in node.args)
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
        except ValueError:
            raise AppLoadError(f"{spec!r}: factory arguments must be Python literals") from None
        return ast.unparse(node.func), args, kwargs, True
    raise AppLoadError(f"{spec!r}: {expr!r} is not a name or a call with literal arguments")


def _import_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise AppLoadError(f"app file {path!r} not found (in {os.getcwd()})")
    directory = os.path.dirname(os.path.abspath(path))
    if directory not in sys.path:
        sys.path.insert(0, directory)
    name = os.path.splitext(os.path.basename(path))[0]
    # An explicit source loader: uWSGI's wsgi-file is often a .wsgi file, which the default
    # suffix-based lookup would not take for Python.
    module_spec = importlib.util.spec_from_file_location(
        name, path, loader=importlib.machinery.SourceFileLoader(name, path))
    if module_spec is None or module_spec.loader is None:
        raise AppLoadError(f"app file {path!r} cannot be imported as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise AppCodeError(f"importing {path!r}", exc) from exc
    return module


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        # Only a missing *target* module is our clear error; a missing import inside the
        # app's own code is the app's exception and keeps its traceback.
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise AppLoadError(f"module {name!r} not found (sys.path starts with "
                               f"{sys.path[:3]})") from None
        raise AppCodeError(f"importing module {name!r}", exc) from exc
    except Exception as exc:
        raise AppCodeError(f"importing module {name!r}", exc) from exc


def load_app(spec: str) -> Callable[..., Any]:
    """Import and return the WSGI callable named by spec.

    Raises AppLoadError for a missing module or callable; an exception raised while importing
    the app's code propagates unchanged (the caller prints its traceback, then a summary line).
    """
    module_part, attr_part = _split_spec(spec.strip())
    if module_part.endswith(".py") or os.sep in module_part:
        module = _import_file(module_part)
        where = f"file {module_part!r}"
    else:
        module = _import_module(module_part)
        where = f"module {module_part!r}"

    if attr_part:
        name, args, kwargs, is_call = _parse_attribute(attr_part, spec)
        candidates: tuple[str, ...] = (name,)
    else:
        args, kwargs, is_call = (), {}, False
        candidates = DEFAULT_NAMES

    for name in candidates:
        obj: Any = module
        try:
            for part in name.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if is_call:
            if not callable(obj):
                raise AppLoadError(f"{name!r} in {where} is not callable, so it is no factory")
            try:
                obj = obj(*args, **kwargs)
            except Exception as exc:
                raise AppCodeError(f"calling the factory {attr_part.strip()!r} of {where}",
                                   exc) from exc
            name = f"{name}(...)"
        if not callable(obj):
            raise AppLoadError(f"{name!r} in {where} is not callable "
                               f"(it is a {type(obj).__name__})")
        if not _takes_two_arguments(obj):
            hint = f"{module_part}:{name}()" if not is_call else ""
            raise AppLoadError(
                f"{name!r} in {where} cannot be a WSGI app: it cannot be called with "
                f"(environ, start_response)"
                + (f". If it is a factory that returns the app, call it: {hint!r}"
                   if hint else ""))
        return obj  # type: ignore[no-any-return]
    looked = " or ".join(repr(c) for c in candidates)
    raise AppLoadError(f"no {looked} in {where} ({getattr(module, '__file__', '?')})")


def _takes_two_arguments(obj: Any) -> bool:
    """Can ``obj`` be called as ``obj(environ, start_response)``? (True when Python cannot
    tell, as for some callables written in C.)"""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(None, None)
    except TypeError:
        return False
    return True


class MountDispatcher:
    """Several apps under URL prefixes (``--mount``): the longest matching prefix wins.

    The prefix moves from PATH_INFO to the end of SCRIPT_NAME, as PEP 3333 wants for an app
    that lives below the root. Runs on worker loop threads.
    """

    def __init__(self, mounts: list[tuple[str, Callable[..., Any]]],
                 fallback: Callable[..., Any] | None) -> None:
        self.mounts = sorted(mounts, key=lambda item: -len(item[0]))
        self.fallback = fallback

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        for prefix, app in self.mounts:
            if path == prefix or path.startswith(prefix + "/"):
                environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
                environ["PATH_INFO"] = path[len(prefix):]
                return app(environ, start_response)
        if self.fallback is not None:
            return self.fallback(environ, start_response)
        body = b"Not found: no app is mounted at this path.\n"
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"),
                                         ("Content-Length", str(len(body)))])
        return [body]


def load_configured_app(spec: str, mounts: tuple[str, ...]) -> Callable[..., Any]:
    """The positional app and/or the --mount apps, as one WSGI callable."""
    if not mounts:
        return load_app(spec)
    loaded = []
    for mount in mounts:
        prefix, _, mount_spec = mount.partition("=")
        loaded.append((prefix, load_app(mount_spec)))
    return MountDispatcher(loaded, load_app(spec) if spec else None)
