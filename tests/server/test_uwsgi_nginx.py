"""Drover behind real nginx (``include uwsgi_params; uwsgi_pass ...``), over a unix socket and
over TCP, driven with ``requests``; plus the unix socket's life cycle and uwsgi_curl.

One module-scoped Drover serves tests/apps/probe.py (through ``uwsgi_client.probe_router``) on a
unix socket, a TCP uwsgi socket and HTTP at once; two more serve the Flask app and the Django
project; one nginx fronts all four uwsgi sockets.
"""

from __future__ import annotations

import hashlib
import html
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import uwsgi_client
from nginx import Nginx, start_nginx
from probe import pattern
from uwsgi_client import ROUTER_ARGS

TIMEOUT = 20
DJANGO_DIR = uwsgi_client.APPS_DIR / "django_project"
TOKEN_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
TRANSPORTS = ("unix", "tcp")


def uwsgi_address(server: Any, kind: str) -> str:
    """The logged uwsgi address of ``server`` of kind ``unix`` or ``tcp``."""
    prefix = "unix:" if kind == "unix" else "uwsgi://"
    addresses: list[str] = server.addresses
    return next(a for a in addresses if a.startswith(prefix))


# -- servers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sockets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sock")  # short: unix socket paths are limited to 107 bytes


@pytest.fixture(scope="module")
def probe_server(drover_module: Any, sockets_dir: Path) -> Any:
    return drover_module("--uwsgi", str(sockets_dir / "probe.sock"), "--uwsgi", "127.0.0.1:0",
                         "--http", "127.0.0.1:0", "--chmod-socket", "660", "--workers", "2",
                         *ROUTER_ARGS)


@pytest.fixture(scope="module")
def flask_server(drover_module: Any, sockets_dir: Path) -> Any:
    return drover_module("--uwsgi", str(sockets_dir / "flask.sock"), "--workers", "1",
                         "--pythonpath", str(uwsgi_client.APPS_DIR), "flask_app:app")


@pytest.fixture(scope="module")
def django_server(drover_module: Any) -> Any:
    return drover_module("--uwsgi", "127.0.0.1:0", "--workers", "1", "--chdir", str(DJANGO_DIR),
                         "--pythonpath", str(DJANGO_DIR), "testsite.wsgi:application")


@pytest.fixture(scope="module")
def front(probe_server: Any, flask_server: Any, django_server: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx with a server for each uwsgi socket: unix, tcp (probe), flask, django."""
    nginx = start_nginx(tmp_path_factory.mktemp("nginx"), {
        "unix": uwsgi_address(probe_server, "unix"), "tcp": uwsgi_address(probe_server, "tcp"),
        "flask": uwsgi_address(flask_server, "unix"),
        "django": uwsgi_address(django_server, "tcp")})
    try:
        yield nginx
    finally:
        nginx.stop()


@pytest.fixture(params=TRANSPORTS)
def url(request: pytest.FixtureRequest, front: Nginx) -> str:
    """nginx's URL in front of the probe server's unix or TCP uwsgi socket."""
    return front.url(request.param)


def environ_of(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text[:2000]
    return response.json()["environ"]  # type: ignore[no-any-return]


# -- the environ --------------------------------------------------------------------------------


def test_environ_carries_what_nginx_sent(url: str, front: Nginx) -> None:
    target = "/caf%C3%A9/a%20b?x=1&y=%C3%A9"
    response = requests.get(url + target, headers={"X-Custom-Header": "custom value",
                                                   "User-Agent": "drover-tests/1"},
                            timeout=TIMEOUT)
    environ = environ_of(response)
    port = url.rsplit(":", 1)[1]
    expected = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/caf\u00e9/a b".encode().decode("latin-1"),
        "QUERY_STRING": "x=1&y=%C3%A9",
        "REQUEST_URI": target,
        "SCRIPT_NAME": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": port,
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_X_CUSTOM_HEADER": "custom value",
        "HTTP_USER_AGENT": "drover-tests/1",
        "wsgi.url_scheme": "http",
    }
    assert {key: environ.get(key) for key in expected} == expected
    assert environ["REMOTE_PORT"].isdigit()
    assert environ["HTTP_HOST"].split(":")[0] == "127.0.0.1"
    assert not [key for key in environ if key.startswith("UWSGI_")]


def test_get_through_nginx_passes_wsgiref_validate(url: str, probe_server: Any) -> None:
    response = requests.get(url + "/validated?q=1", timeout=TIMEOUT)
    assert response.status_code == 200  # the default probe app is wrapped in the validator
    assert response.json()["environ"]["PATH_INFO"] == "/validated"
    probe_server.assert_clean_log(allow_tracebacks=True)


def test_environ_has_no_http_content_type_or_length_duplicates(url: str) -> None:
    """nginx forwards the Content-Type and Content-Length headers as HTTP_* vars besides
    CONTENT_TYPE/LENGTH; the app must see the same environ as over HTTP, which PEP 3333's
    reference validator insists on."""
    response = requests.post(url + "/", data=b"abc", timeout=TIMEOUT,
                             headers={"Content-Type": "text/plain", "X-Probe-App": "environ"})
    environ = environ_of(response)
    assert (environ["CONTENT_TYPE"], environ["CONTENT_LENGTH"]) == ("text/plain", "3")
    assert "HTTP_CONTENT_TYPE" not in environ and "HTTP_CONTENT_LENGTH" not in environ


def test_repeated_headers_are_joined(front: Nginx, url: str) -> None:
    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.putrequest("GET", "/dup")
        for name, value in (("X-Dup", "one"), ("X-Dup", "two"), ("Cookie", "a=1"),
                            ("Cookie", "b=2")):
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 200
        environ = json.loads(response.read())["environ"]
    finally:
        conn.close()
    assert environ["HTTP_X_DUP"] == "one, two"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"


# -- request bodies -----------------------------------------------------------------------------


def test_form_post_body_and_content_headers_arrive(url: str) -> None:
    form = {"name": "Ann \u00c9lise", "tags": "a&b=c"}
    response = requests.post(url + "/form", data=form, headers={"X-Probe-App": "environ"},
                             timeout=TIMEOUT)
    environ = environ_of(response)
    sent = response.request.body
    assert isinstance(sent, str)
    body = sent.encode()
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert environ["CONTENT_LENGTH"] == str(len(body))
    assert response.json()["body"]["sha256"] == hashlib.sha256(body).hexdigest()


def test_five_mib_post_body_arrives_intact(url: str) -> None:
    body = random.Random(5).randbytes(5 * 1024 * 1024)
    response = requests.post(url + "/upload", data=body, timeout=TIMEOUT,
                             headers={"X-Probe-App": "echo",
                                      "Content-Type": "application/octet-stream"})
    assert response.status_code == 200
    assert response.headers["X-Body-Sha256"] == hashlib.sha256(body).hexdigest()
    assert response.content == body


def test_chunked_upload_is_buffered_by_nginx_and_arrives_with_content_length(url: str) -> None:
    pieces = [bytes([i]) * (64 * 1024 + i) for i in range(16)]
    whole = b"".join(pieces)
    response = requests.post(url + "/chunked", data=iter(pieces), timeout=TIMEOUT,
                             headers={"X-Probe-App": "environ"})
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    environ = environ_of(response)
    assert environ["CONTENT_LENGTH"] == str(len(whole))
    body = response.json()["body"]
    assert (body["length"], body["sha256"]) == (len(whole), hashlib.sha256(whole).hexdigest())


# -- responses ----------------------------------------------------------------------------------


def test_twenty_mib_response_arrives_intact(url: str) -> None:
    size = 20 * 1024 * 1024
    response = requests.get(url + f"/big?bytes={size}", headers={"X-Probe-App": "big"},
                            timeout=TIMEOUT)
    assert response.status_code == 200
    assert len(response.content) == size
    assert hashlib.sha256(response.content).digest() == hashlib.sha256(pattern(size)).digest()


def test_app_exception_is_500_and_the_next_request_is_served(url: str, probe_server: Any) -> None:
    since = len(probe_server.log())
    response = requests.get(url + "/boom", headers={"X-Probe-App": "error"}, timeout=TIMEOUT)
    assert response.status_code == 500
    probe_server.wait_for_log(r"error_app: deliberate failure", since=since)
    after = requests.get(url + "/after", timeout=TIMEOUT)
    assert environ_of(after)["PATH_INFO"] == "/after"
    assert "died" not in probe_server.log()


# -- Flask and Django ---------------------------------------------------------------------------


def test_flask_form_post(front: Nginx) -> None:
    response = requests.post(front.url("flask") + "/form", data={"a": "1", "b": "\u00e9"},
                             timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == {"form": {"a": ["1"], "b": ["\u00e9"]},
                               "content_type": "application/x-www-form-urlencoded"}


def test_flask_json_post(front: Nginx) -> None:
    payload: dict[str, Any] = {"n": 1, "list": [1, 2, 3], "text": "caf\u00e9"}
    response = requests.post(front.url("flask") + "/json", json=payload, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == {"echo": payload}


def test_flask_cookies_round_trip(front: Nginx) -> None:
    with requests.Session() as session:
        set_response = session.get(front.url("flask") + "/cookies/set?a=1&b=two",
                                   timeout=TIMEOUT)
        assert set_response.status_code == 200
        assert len(set_response.raw.headers.getlist("Set-Cookie")) == 2
        response = session.get(front.url("flask") + "/cookies", timeout=TIMEOUT)
    assert response.json() == {"a": "1", "b": "two"}


def test_flask_redirect_is_followed(front: Nginx) -> None:
    response = requests.get(front.url("flask") + "/redirect", timeout=TIMEOUT)
    assert [r.status_code for r in response.history] == [302]
    assert response.history[0].headers["Location"] in ("/", front.url("flask") + "/")
    assert response.status_code == 200
    assert response.text == "Hello from Flask (drover-flask-test)\n"


def test_django_template_view(front: Nginx) -> None:
    response = requests.get(front.url("django") + "/?q=caf%C3%A9", timeout=TIMEOUT)
    assert response.status_code == 200
    assert "<h1>Hello from Django</h1>" in response.text
    assert '<p id="query">caf\u00e9</p>' in response.text


def test_django_csrf_protected_post(front: Nginx) -> None:
    base = front.url("django")
    with requests.Session() as session:
        page = session.get(base + "/sign/", timeout=TIMEOUT)
        match = TOKEN_RE.search(page.text)
        assert match, page.text
        response = session.post(base + "/sign/", timeout=TIMEOUT, data={
            "csrfmiddlewaretoken": html.unescape(match.group(1)), "name": "Ann", "message": "hi"})
    assert response.status_code == 200
    assert "Thanks for signing, Ann!" in response.text
    refused = requests.post(base + "/sign/", data={"name": "Eve"}, timeout=TIMEOUT)
    assert refused.status_code == 403


def test_django_admin_login_page(front: Nginx) -> None:
    response = requests.get(front.url("django") + "/admin/login/", timeout=TIMEOUT)
    assert response.status_code == 200
    assert "Django administration" in response.text
    assert 'name="csrfmiddlewaretoken"' in response.text


# -- sockets ------------------------------------------------------------------------------------


def test_chmod_socket_sets_the_unix_socket_mode(probe_server: Any) -> None:
    path = uwsgi_address(probe_server, "unix")[len("unix:"):]
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_http_and_uwsgi_are_served_at_once(probe_server: Any, front: Nginx) -> None:
    direct = requests.get(probe_server.url + "/over-http", timeout=TIMEOUT)
    proxied = requests.get(front.url("tcp") + "/over-uwsgi", timeout=TIMEOUT)
    raw = uwsgi_client.get(uwsgi_address(probe_server, "tcp"), "/over-raw-uwsgi")
    assert environ_of(direct)["PATH_INFO"] == "/over-http"
    assert "DOCUMENT_ROOT" not in environ_of(direct)  # spoken by no nginx
    assert environ_of(proxied)["DOCUMENT_ROOT"].startswith(str(front.prefix))
    assert raw.status == 200 and raw.json()["environ"]["PATH_INFO"] == "/over-raw-uwsgi"


def test_unix_socket_file_is_removed_after_sigterm(
        drover: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("s") / "term.sock"
    server = drover("--uwsgi", str(path), "--workers", "1", *ROUTER_ARGS)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert server.stop(signal.SIGTERM) == 0
    assert not path.exists(), server.log()


def test_stale_socket_file_does_not_prevent_start(
        drover: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("s") / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # as a crashed run leaves it: the file stays, nobody listens
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    server = drover("--uwsgi", str(path), "--workers", "1", *ROUTER_ARGS)
    answer = uwsgi_client.get(f"unix:{path}", "/after-stale")
    assert answer.status == 200, server.log()
    assert answer.json()["environ"]["PATH_INFO"] == "/after-stale"


# -- another uwsgi client: uwsgi_curl from uwsgi-tools ------------------------------------------


def uwsgi_curl() -> str:
    found = Path(sys.executable).with_name("uwsgi_curl")
    if found.exists():
        return str(found)
    which = shutil.which("uwsgi_curl")
    if which is None:
        pytest.fail("uwsgi_curl not found: install uwsgi-tools (in the test extra)",
                    pytrace=False)
    return which


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_uwsgi_curl_is_answered(probe_server: Any, kind: str) -> None:
    address = uwsgi_address(probe_server, kind)
    target = address[len("unix:"):] if kind == "unix" else address[len("uwsgi://"):]
    done = subprocess.run([uwsgi_curl(), "-t", "10", "-H", "Xfrom: uwsgi_curl", target,
                           "/curl/path?k=v"], capture_output=True, timeout=TIMEOUT)
    output = done.stdout.decode("utf-8", "replace")  # bytes: keep the CRLFs as sent
    assert done.returncode == 0, output + done.stderr.decode("utf-8", "replace")
    status_line, _, rest = output.partition("\r\n")
    assert status_line == "HTTP/1.1 200 OK"
    environ = json.loads(rest.partition("\r\n\r\n")[2])["environ"]
    assert (environ["PATH_INFO"], environ["QUERY_STRING"]) == ("/curl/path", "k=v")
    assert environ["HTTP_XFROM"] == "uwsgi_curl"
