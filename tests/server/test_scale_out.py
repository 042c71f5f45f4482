"""Scale-out with nginx's upstream balancing: two Drover instances behind deploy/'s nginx site.

Clients drive traffic through nginx while one instance reloads (HUP) and the other stops
gracefully (TERM); not one request may fail. The nginx configuration is deploy/nginx/mysite.conf
itself, with only its addresses and paths replaced (each replacement must match exactly once,
so the test follows the shipped file).
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path

import requests
from lifecycle import group_pids, wait_for
from nginx import free_port, run_nginx, uwsgi_params

from tests.conftest import REPO, DroverLauncher

SITE = REPO / "deploy" / "nginx" / "mysite.conf"

APP = '''
import os
def application(environ, start_response):
    body = f"{os.environ['INSTANCE']} {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def render_site(port: int, first: Path, second: Path, static: Path, params: str) -> str:
    text = SITE.read_text()
    for old, new in (
            ("listen 80;", f"listen 127.0.0.1:{port};"),
            ("listen [::]:80;", ""),
            ("server unix:/run/mysite/mysite.sock ", f"server unix:{first} "),
            ("# server unix:/run/mysite/mysite-2.sock ", f"server unix:{second} "),
            ("alias /srv/mysite/static/;", f"alias {static}/;"),
            ("include uwsgi_params;", f"include {params};")):
        assert text.count(old) == 1, f"{old!r} is not once in {SITE}"
        text = text.replace(old, new)
    return text


def test_two_instances_behind_nginx_one_reloads_one_stops_no_request_fails(
        drover: DroverLauncher, tmp_path: Path) -> None:
    (tmp_path / "instance.py").write_text(APP)
    sock_a, sock_b = tmp_path / "a.sock", tmp_path / "b.sock"
    common = ("--workers", "2", "--chdir", str(tmp_path), "instance")
    a = drover("--uwsgi", str(sock_a), *common, env={"INSTANCE": "A"})
    b = drover("--uwsgi", str(sock_b), *common, env={"INSTANCE": "B"})
    (tmp_path / "static").mkdir()
    port = free_port()
    prefix = tmp_path / "nginx"
    nginx = run_nginx(prefix, render_site(port, sock_a, sock_b, tmp_path / "static",
                                          uwsgi_params(prefix)), {"site": port})
    url = f"http://127.0.0.1:{port}/"
    answers: list[tuple[float, str]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                response = session.get(url, timeout=10)
                if response.status_code != 200:
                    failures.append(f"status {response.status_code}: {response.text[:80]!r}")
                else:
                    answers.append((time.monotonic(), response.text))
            except requests.RequestException as exc:
                failures.append(repr(exc))

    clients = [threading.Thread(target=client) for _ in range(4)]
    try:
        for thread in clients:
            thread.start()
        wait_for(lambda: {text.split()[0] for _, text in answers} == {"A", "B"}, 15,
                 "both instances answering through nginx")
        a_before = {text for _, text in answers if text.startswith("A ")}
        a.send_signal(signal.SIGHUP)
        b.send_signal(signal.SIGTERM)
        assert b.proc.wait(30) == 0
        a.wait_for_log("reload complete", timeout=30)
        settled = time.monotonic() + 0.5  # B gone, A's old workers told to go
        wait_for(lambda: len([t for t, _ in answers if t > settled]) >= 50, 30,
                 "traffic after B stopped and A reloaded")
    finally:
        stop.set()
        for thread in clients:
            thread.join(15)
        nginx.stop()
    assert failures == [], failures[:5]
    served = Counter(text.split()[0] for _, text in answers)
    assert served["A"] and served["B"]
    # Once B was gone, A answered everything, from its new generation of workers.
    after = [text for t, text in answers if t > settled]
    assert after and all(text.startswith("A ") for text in after)
    assert not set(after) & a_before
    assert not sock_b.exists()
    assert a.stop() == 0
    assert not sock_a.exists()
    assert group_pids(a.proc.pid) == [] and group_pids(b.proc.pid) == []
