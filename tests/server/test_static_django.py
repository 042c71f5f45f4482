"""A fresh ``django-admin startproject`` site, ``collectstatic``, served by Drover alone: the
admin login page comes with its CSS."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import DroverLauncher

TIMEOUT = 10
STYLESHEET_RE = re.compile(r'<link rel="stylesheet" href="([^"]+\.css)"')


def django(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "django", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "mysite.settings",
                               "PYTHONPATH": str(cwd)})
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_admin_of_a_fresh_project_has_its_css(drover: DroverLauncher,
                                                   tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(site)],
                   check=True, capture_output=True, timeout=120)
    static_root = tmp_path / "collected"
    with open(site / "mysite" / "settings.py", "a") as settings:
        settings.write(f"\nSTATIC_ROOT = {str(static_root)!r}\n")
    django("collectstatic", "--noinput", cwd=site)
    assert (static_root / "admin" / "css" / "base.css").is_file()

    server = drover("--workers", "1", "--chdir", str(site), "--pythonpath", str(site),
                    "mysite.wsgi:application", "--static-map", f"/static={static_root}",
                    ready_path="/static/admin/css/base.css")
    page = requests.get(server.url + "/admin/login/", timeout=TIMEOUT)
    assert page.status_code == 200 and "Django" in page.text
    sheets = STYLESHEET_RE.findall(page.text)
    assert sheets and all(sheet.startswith("/static/admin/") for sheet in sheets)
    for sheet in sheets:
        css = requests.get(server.url + sheet, timeout=TIMEOUT)
        assert css.status_code == 200, sheet
        assert css.headers["Content-Type"] == "text/css; charset=utf-8"
        assert css.content == (static_root / sheet.removeprefix("/static/")).read_bytes()
    missing = requests.get(server.url + "/static/admin/css/nope.css", timeout=TIMEOUT)
    assert missing.status_code == 404
    server.assert_clean_log()


@pytest.mark.parametrize("fallthrough", [False, True])
def test_without_the_map_django_answers_404_for_its_static_files(
        drover: DroverLauncher, tmp_path: Path, fallthrough: bool) -> None:
    """What the issue started from, and --static-fallthrough: a miss reaches Django."""
    site = tmp_path / "site"
    site.mkdir()
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(site)],
                   check=True, capture_output=True, timeout=120)
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["--static-map", f"/static={empty}", "--static-fallthrough"] if fallthrough else []
    server = drover("--workers", "1", "--chdir", str(site), "--pythonpath", str(site),
                    "mysite.wsgi:application", *args, ready_path="/admin/login/")
    css = requests.get(server.url + "/static/admin/css/base.css", timeout=TIMEOUT)
    assert css.status_code == 404
    assert "text/html" in css.headers["Content-Type"]  # Django's own 404 page
