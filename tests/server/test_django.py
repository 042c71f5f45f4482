"""A real Django project (tests/apps/django_project) served by Drover, driven with ``requests``."""

from __future__ import annotations

import hashlib
import html
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

TIMEOUT = 10
DJANGO_DIR = Path(__file__).resolve().parent.parent / "apps" / "django_project"
TOKEN_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
ADMIN_USER, ADMIN_PASSWORD = "admin", "drover-test-password-1"


@pytest.fixture(scope="module")
def server(drover_module: Any) -> Any:
    return drover_module.django("--workers", "2", "--threads", "2")


@pytest.fixture(scope="module")
def db_server(drover_module: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The site on a migrated sqlite file with a superuser, for the admin login."""
    db_path = tmp_path_factory.mktemp("django-db") / "db.sqlite3"
    env = {**os.environ, "DJANGO_DB_PATH": str(db_path),
           "DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD,
           "DJANGO_SETTINGS_MODULE": "testsite.settings"}
    for command in (["migrate", "--noinput"],
                    ["createsuperuser", "--noinput", "--username", ADMIN_USER,
                     "--email", "admin@example.com"]):
        done = subprocess.run([sys.executable, "manage.py", *command], cwd=DJANGO_DIR, env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
    return drover_module.django("--workers", "2", "--threads", "1",
                                env={"DJANGO_DB_PATH": str(db_path)})


@pytest.fixture(scope="module")
def validated(drover_module: Any) -> Any:
    return drover_module.django("--workers", "1", "--threads", "2",
                                spec="testsite.wsgi:validated_application")


def csrf_token(page: str) -> str:
    match = TOKEN_RE.search(page)
    assert match, page
    return html.unescape(match.group(1))


# -- templates and routing -----------------------------------------------------------------------


def test_home_renders_its_template(server: Any) -> None:
    response = requests.get(server.url + "/", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<title>Guestbook home</title>" in response.text
    assert "<h1>Hello from Django</h1>" in response.text
    assert '<p id="method">GET</p>' in response.text


def test_query_parameter_reaches_the_template(server: Any) -> None:
    response = requests.get(server.url + "/?q=caf%C3%A9+%26+tea", timeout=TIMEOUT)
    assert '<p id="query">caf\u00e9 &amp; tea</p>' in response.text


def test_utf8_path_segment_is_decoded(server: Any) -> None:
    response = requests.get(server.url + "/hello/caf%C3%A9%20cr%C3%A8me/", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.text == "Hello, caf\u00e9 cr\u00e8me!"


def test_missing_trailing_slash_redirects(server: Any) -> None:
    response = requests.get(server.url + "/sign", allow_redirects=False, timeout=TIMEOUT)
    assert response.status_code == 301
    assert response.headers["Location"] == "/sign/"


def test_unknown_url_is_404(server: Any) -> None:
    response = requests.get(server.url + "/no/such/page/", timeout=TIMEOUT)
    assert response.status_code == 404
    assert "Not Found" in response.text


def test_exception_in_view_is_500_and_the_server_keeps_serving(server: Any) -> None:
    response = requests.get(server.url + "/boom/", timeout=TIMEOUT)
    assert response.status_code == 500
    assert "Server Error (500)" in response.text
    server.wait_for_log("guestbook: deliberate failure")
    assert requests.get(server.url + "/", timeout=TIMEOUT).status_code == 200


def test_host_not_in_allowed_hosts_is_400(server: Any) -> None:
    response = requests.get(server.url + "/", headers={"Host": "evil.example"}, timeout=TIMEOUT)
    assert response.status_code == 400


def test_absolute_uri_host_port_and_client_are_right(server: Any) -> None:
    data = requests.get(server.url + "/whoami/?a=1&a=2", timeout=TIMEOUT).json()
    assert data["absolute_uri"] == server.url + "/whoami/?a=1&a=2"
    assert data["host"] == f"127.0.0.1:{server.port}"
    assert data["port"] == str(server.port)
    assert (data["scheme"], data["is_secure"]) == ("http", False)
    assert data["get"] == {"a": ["1", "2"]}
    assert data["remote_addr"] == "127.0.0.1"


def test_head_sends_no_body_and_keeps_the_connection_usable(server: Any) -> None:
    with requests.Session() as session:
        head = session.head(server.url + "/", timeout=TIMEOUT)
        assert head.status_code == 200
        assert head.content == b""
        # A body after the HEAD response would corrupt this next response.
        after = session.get(server.url + "/hello/again/", timeout=TIMEOUT)
        assert after.text == "Hello, again!"


# -- forms and CSRF ------------------------------------------------------------------------------


def test_form_page_sets_the_csrf_cookie_and_embeds_a_token(server: Any) -> None:
    response = requests.get(server.url + "/sign/", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.cookies.get("csrftoken")
    assert csrf_token(response.text)


def test_post_with_the_csrf_token_is_accepted(server: Any) -> None:
    with requests.Session() as session:
        token = csrf_token(session.get(server.url + "/sign/", timeout=TIMEOUT).text)
        response = session.post(server.url + "/sign/", timeout=TIMEOUT, data={
            "csrfmiddlewaretoken": token, "name": "Ann \u00c9lise", "message": "hi & bye"})
    assert response.status_code == 200
    assert "Thanks for signing, Ann \u00c9lise!" in response.text
    assert '<p id="message">hi &amp; bye</p>' in response.text


def test_csrf_token_in_a_header_is_accepted(server: Any) -> None:
    with requests.Session() as session:
        session.get(server.url + "/sign/", timeout=TIMEOUT)
        response = session.post(server.url + "/sign/", data={"name": "Bob"}, timeout=TIMEOUT,
                                headers={"X-CSRFToken": session.cookies["csrftoken"]})
    assert response.status_code == 200
    assert "Thanks for signing, Bob!" in response.text


def test_post_without_csrf_cookie_or_token_is_403(server: Any) -> None:
    response = requests.post(server.url + "/sign/", data={"name": "Eve"}, timeout=TIMEOUT)
    assert response.status_code == 403
    assert "CSRF" in response.text


def test_post_with_cookie_but_without_token_is_403(server: Any) -> None:
    with requests.Session() as session:
        session.get(server.url + "/sign/", timeout=TIMEOUT)
        response = session.post(server.url + "/sign/", data={"name": "Eve"}, timeout=TIMEOUT)
    assert response.status_code == 403


def test_invalid_form_is_redisplayed_with_errors(server: Any) -> None:
    with requests.Session() as session:
        token = csrf_token(session.get(server.url + "/sign/", timeout=TIMEOUT).text)
        response = session.post(server.url + "/sign/", data={"csrfmiddlewaretoken": token},
                                timeout=TIMEOUT)
    assert response.status_code == 400
    assert "This field is required." in response.text


# -- bodies --------------------------------------------------------------------------------------


def test_multipart_upload_arrives_intact(server: Any) -> None:
    data = os.urandom(2 * 1024 * 1024 + 3)
    response = requests.post(server.url + "/upload/", files={"file": ("photo.jpg", data)},
                             data={"title": "caf\u00e9", "tag": ["a", "b"]}, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                               "filename": "photo.jpg",
                               "fields": {"title": ["caf\u00e9"], "tag": ["a", "b"]}}


def test_raw_body_is_read_whole(server: Any) -> None:
    data = os.urandom(500_000)
    response = requests.post(server.url + "/echo/", data=data, timeout=TIMEOUT,
                             headers={"Content-Type": "application/octet-stream"})
    assert response.json() == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                               "content_type": "application/octet-stream"}


# -- admin ---------------------------------------------------------------------------------------


def test_admin_login_page_renders(server: Any) -> None:
    response = requests.get(server.url + "/admin/login/", timeout=TIMEOUT)
    assert response.status_code == 200
    assert "Django administration" in response.text
    assert 'name="username"' in response.text
    assert 'name="password"' in response.text


def test_admin_sends_anonymous_users_to_the_login_page(server: Any) -> None:
    response = requests.get(server.url + "/admin/", allow_redirects=False, timeout=TIMEOUT)
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/login/?next=/admin/"


def test_admin_login_with_a_superuser_opens_the_dashboard(db_server: Any) -> None:
    with requests.Session() as session:
        page = session.get(db_server.url + "/admin/login/?next=/admin/", timeout=TIMEOUT)
        response = session.post(db_server.url + "/admin/login/?next=/admin/", timeout=TIMEOUT,
                                allow_redirects=False, data={
                                    "csrfmiddlewaretoken": csrf_token(page.text),
                                    "username": ADMIN_USER, "password": ADMIN_PASSWORD,
                                    "next": "/admin/"})
        assert response.status_code == 302, (response.text, db_server.log())
        assert response.headers["Location"] == "/admin/"
        dashboard = session.get(db_server.url + "/admin/", timeout=TIMEOUT)
        assert dashboard.status_code == 200
        assert "Site administration" in dashboard.text
        users = session.get(db_server.url + "/admin/auth/user/", timeout=TIMEOUT)
        assert users.status_code == 200
        assert ADMIN_USER in users.text


def test_admin_login_with_a_wrong_password_is_refused(db_server: Any) -> None:
    with requests.Session() as session:
        page = session.get(db_server.url + "/admin/login/", timeout=TIMEOUT)
        response = session.post(db_server.url + "/admin/login/", timeout=TIMEOUT, data={
            "csrfmiddlewaretoken": csrf_token(page.text), "username": ADMIN_USER,
            "password": "wrong"})
    assert response.status_code == 200
    assert "Please enter the correct username and password" in response.text


# -- wsgiref.validate ----------------------------------------------------------------------------


def test_validator_finds_no_pep3333_violation(validated: Any) -> None:
    with requests.Session() as session:
        assert session.get(validated.url + "/", timeout=TIMEOUT).status_code == 200
        token = csrf_token(session.get(validated.url + "/sign/", timeout=TIMEOUT).text)
        signed = session.post(validated.url + "/sign/", timeout=TIMEOUT,
                              data={"csrfmiddlewaretoken": token, "name": "Val"})
        assert signed.status_code == 200
        upload = session.post(validated.url + "/upload/", files={"file": ("a", b"x" * 5000)},
                              timeout=TIMEOUT)
        assert upload.json()["size"] == 5000
        assert session.get(validated.url + "/admin/login/", timeout=TIMEOUT).status_code == 200
        assert session.get(validated.url + "/nope/", timeout=TIMEOUT).status_code == 404
    time.sleep(0.1)  # the validator reports an unclosed iterator when it is collected
    validated.assert_clean_log()
