"""The README's quick start, as a new user runs it: scripts/serve.sh from the app's directory."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import requests

from tests.conftest import REPO

APP = '''
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from myapp"]
'''


def test_serve_script_runs_an_app_from_the_callers_directory_quietly(tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(APP)
    log = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DROVER_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(REPO / "scripts" / "serve.sh"), "--http", "127.0.0.1:0",
             "--workers", "1", "myapp:app"],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        url = None
        while time.monotonic() < deadline and url is None:
            found = re.search(r"listening at (http://\S+)", log.read_text())
            if found and "ready" in log.read_text():
                url = found.group(1)
            elif proc.poll() is not None:
                break
            time.sleep(0.1)
        assert url, log.read_text()
        assert requests.get(url, timeout=10).text == "hello from myapp"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    text = log.read_text()
    # Set up already (the test run's own set-up): a start installs nothing and says nothing
    # but Drover's own lines.
    assert "Warning" not in text and "setup:" not in text, text
