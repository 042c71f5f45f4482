"""The app's surroundings, set up in the master before sockets are bound: --chdir, --env, --home.

Runs once in the master, before binding and before fork, so every worker inherits the working
directory, the environment variables and the import path, and a relative unix socket path is
relative to --chdir (as with uWSGI's chdir and Gunicorn's --chdir). Only paths and variables
change here: nothing of the app is imported (that happens in the workers, or with --preload).
"""

from __future__ import annotations

import os
import site
import sys

from drover.config import Config


class AppEnvError(Exception):
    """A directory or virtualenv cannot be used; the message names the option and its origin."""


def prepare_master(config: Config) -> None:
    if config.chdir:
        try:
            os.chdir(config.chdir)
        except OSError as exc:
            raise AppEnvError(f"--chdir: cannot change to {config.chdir!r}: {exc.strerror} "
                              f"(from {config.origin('chdir')})") from None
    for assignment in config.env:
        name, _, value = assignment.partition("=")
        os.environ[name] = value
    if config.home:
        add_virtualenv(config.home, config.origin("home"))


def virtualenv_site_packages(home: str) -> str:
    """The site-packages directory of the virtualenv ``home`` for this Python's version."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return os.path.join(os.path.abspath(home), "lib", version, "site-packages")


def add_virtualenv(home: str, origin: str) -> None:
    """Put the virtualenv's site-packages (and what its .pth files name) on sys.path, after
    the standard library and before the site-packages of the Python that runs Drover, so the
    app's own versions of its packages win."""
    packages = virtualenv_site_packages(home)
    if not os.path.isdir(home):
        raise AppEnvError(f"--home: {home!r} is not a directory (from {origin})")
    if not os.path.isdir(packages):
        found = sorted(os.listdir(os.path.join(home, "lib"))) if os.path.isdir(
            os.path.join(home, "lib")) else []
        raise AppEnvError(
            f"--home: {home!r} has no {os.path.relpath(packages, home)} (from {origin}); "
            f"a virtualenv must be made with the Python that runs Drover "
            f"({sys.version_info.major}.{sys.version_info.minor})"
            + (f"; it has lib/{', lib/'.join(found)}" if found else ""))
    before = list(sys.path)
    site.addsitedir(packages)
    added = [entry for entry in sys.path if entry not in before]
    kept = [entry for entry in sys.path if entry in before]
    index = next((i for i, entry in enumerate(kept)
                  if entry.endswith(("site-packages", "dist-packages"))), len(kept))
    sys.path[:] = kept[:index] + added + kept[index:]
    # Workers started later re-read nothing: sys.path is inherited through fork. A process
    # Drover re-executes (none today) would need PYTHONPATH as well.
