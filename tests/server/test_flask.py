"""A real Flask app (tests/apps/flask_app.py) served by Drover, driven with ``requests``."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

TIMEOUT = 10


@pytest.fixture(scope="module")
def server(drover_module: Any) -> Any:
    return drover_module.app("flask_app:app", "--workers", "2", "--threads", "2")


@pytest.fixture(scope="module")
def validated(drover_module: Any) -> Any:
    return drover_module.app("flask_app:validated_app", "--workers", "1", "--threads", "2")


def get(server: Any, path: str, **kwargs: Any) -> requests.Response:
    return requests.get(server.url + path, timeout=TIMEOUT, **kwargs)


def post(server: Any, path: str, **kwargs: Any) -> requests.Response:
    return requests.post(server.url + path, timeout=TIMEOUT, **kwargs)


# -- routing and plain responses -----------------------------------------------------------------


def test_index_answers_hello(server: Any) -> None:
    response = get(server, "/")
    assert response.status_code == 200
    assert response.text == "Hello from Flask (drover-flask-test)\n"
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.headers["Content-Length"] == str(len(response.content))


def test_query_args_are_parsed_with_repeats_and_utf8(server: Any) -> None:
    response = get(server, "/args?a=1&b=2&b=3&c=caf%C3%A9&d=x+y&e=")
    assert response.json() == {"a": ["1"], "b": ["2", "3"], "c": ["caf\u00e9"], "d": ["x y"],
                               "e": [""]}


def test_unknown_route_is_404(server: Any) -> None:
    response = get(server, "/no/such/route")
    assert response.status_code == 404
    assert "Not Found" in response.text


def test_wrong_method_is_405_with_allow_header(server: Any) -> None:
    response = get(server, "/form")
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]


def test_redirect_is_302_to_index(server: Any) -> None:
    response = get(server, "/redirect", allow_redirects=False)
    assert response.status_code == 302
    assert response.headers["Location"] in ("/", server.url + "/")
    followed = get(server, "/redirect")
    assert followed.status_code == 200
    assert followed.text.startswith("Hello from Flask")


def test_exception_in_view_is_500_and_the_server_keeps_serving(server: Any) -> None:
    response = get(server, "/error")
    assert response.status_code == 500
    assert "Internal Server Error" in response.text
    server.wait_for_log("flask_app: deliberate failure")
    assert get(server, "/").status_code == 200


def test_request_url_host_and_client_address_are_right(server: Any) -> None:
    data = get(server, "/whoami?x=1").json()
    assert data["url"] == server.url + "/whoami?x=1"
    assert data["host"] == f"127.0.0.1:{server.port}"
    assert data["scheme"] == "http"
    assert data["remote_addr"] == "127.0.0.1"


def test_head_sends_no_body_and_keeps_the_connection_usable(server: Any) -> None:
    with requests.Session() as session:
        head = session.head(server.url + "/", timeout=TIMEOUT)
        assert head.status_code == 200
        assert head.content == b""
        assert head.headers["Content-Length"] == str(len("Hello from Flask (drover-flask-test)\n"))
        # A body after the HEAD response would corrupt this next response.
        after = session.get(server.url + "/args?k=v", timeout=TIMEOUT)
        assert after.json() == {"k": ["v"]}


# -- request bodies ------------------------------------------------------------------------------


def test_urlencoded_form_post_is_parsed(server: Any) -> None:
    response = post(server, "/form", data={"name": "Ann", "tags": ["x", "y"], "uni": "caf\u00e9"})
    assert response.status_code == 200
    assert response.json() == {"form": {"name": ["Ann"], "tags": ["x", "y"],
                                        "uni": ["caf\u00e9"]},
                               "content_type": "application/x-www-form-urlencoded"}


def test_multipart_form_post_is_parsed(server: Any) -> None:
    fields = {"name": (None, "Ann"), "note": (None, "two\r\nlines \u00e9")}
    response = post(server, "/form", files=fields)
    assert response.status_code == 200
    assert response.json() == {"form": {"name": ["Ann"], "note": ["two\r\nlines \u00e9"]},
                               "content_type": "multipart/form-data"}


def test_json_body_is_echoed(server: Any) -> None:
    payload = {"text": "caf\u00e9 \u2603", "n": [1, 2.5, None, True], "nested": {"a": {"b": []}}}
    response = post(server, "/json", json=payload)
    assert response.status_code == 200
    assert response.json() == {"echo": payload}


def test_invalid_json_is_400(server: Any) -> None:
    response = post(server, "/json", data=b"{not json",
                    headers={"Content-Type": "application/json"})
    assert response.status_code == 400


def test_file_upload_arrives_intact(server: Any) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # bigger than the default in-memory body buffer
    response = post(server, "/upload", files={"file": ("blob.bin", data)},
                    data={"comment": "hi"})
    assert response.status_code == 200
    assert response.json() == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                               "filename": "blob.bin", "form": {"comment": ["hi"]}}


def test_chunked_upload_is_read_from_the_stream(server: Any) -> None:
    pieces = [os.urandom(size) for size in (1, 1000, 65536, 300_000, 7)]

    def body() -> Iterator[bytes]:  # a generator makes requests send Transfer-Encoding: chunked
        yield from pieces

    response = post(server, "/chunked", data=body())
    assert response.status_code == 200
    whole = b"".join(pieces)
    data = response.json()
    assert (data["size"], data["sha256"]) == (len(whole), hashlib.sha256(whole).hexdigest())


def test_bodies_on_a_kept_alive_connection_do_not_leak_into_each_other(server: Any) -> None:
    with requests.Session() as session:
        for i in range(10):
            data = os.urandom(1000 * i + 1)
            response = session.post(server.url + "/data", data=data, timeout=TIMEOUT)
            assert response.json() == {"size": len(data),
                                       "sha256": hashlib.sha256(data).hexdigest()}


# -- responses -----------------------------------------------------------------------------------


def test_streamed_response_is_chunked_and_uses_request_context(server: Any) -> None:
    response = get(server, "/stream?n=4&label=part")
    assert response.status_code == 200
    assert response.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.headers
    assert response.text == "part 0\npart 1\npart 2\npart 3\n"


def test_streamed_response_arrives_before_the_generator_finishes(server: Any) -> None:
    started = time.monotonic()
    with requests.get(server.url + "/stream?n=3&delay_ms=500", stream=True,
                      timeout=TIMEOUT) as response:
        arrivals = []
        for piece in response.iter_content(chunk_size=None):
            if piece:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 2
    # The first chunk must not wait for the two 0.5 s sleeps that produce the others.
    assert arrivals[0] < arrivals[-1] - 0.7


def test_cookies_set_by_the_app_are_sent_back(server: Any) -> None:
    with requests.Session() as session:
        response = session.get(server.url + "/cookies/set?flavour=oat&size=large",
                               timeout=TIMEOUT)
        assert response.status_code == 200
        assert len(response.raw.headers.getlist("Set-Cookie")) == 2
        assert session.get(server.url + "/cookies", timeout=TIMEOUT).json() == {
            "flavour": "oat", "size": "large"}


def test_concurrent_clients_all_get_their_own_answers(server: Any) -> None:
    def fetch(i: int) -> tuple[int, Any]:
        return i, get(server, f"/args?i={i}").json()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(fetch, range(64)))
    assert all(answer == {"i": [str(i)]} for i, answer in results)


# -- app specs -----------------------------------------------------------------------------------


def test_factory_spec_calls_create_app(drover: Any) -> None:
    server = drover.app("flask_app:create_app()", "--workers", "1")
    assert get(server, "/").text == "Hello from Flask (drover-flask-test)\n"


def test_factory_spec_passes_literal_arguments(drover: Any) -> None:
    server = drover.app("flask_app:create_app('from-factory')", "--workers", "1")
    assert get(server, "/").text == "Hello from Flask (from-factory)\n"


# -- wsgiref.validate ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/args?a=1", "/stream?n=3", "/redirect", "/nope",
                                  "/cookies", "/whoami"])
def test_validator_finds_no_pep3333_violation(validated: Any, path: str) -> None:
    before = len(validated.log())
    response = get(validated, path, allow_redirects=False)
    assert response.status_code in (200, 302, 404)
    time.sleep(0.1)  # the validator reports an unclosed iterator when it is collected
    text = validated.log()[before:]
    assert "WSGIWarning" not in text
    assert "AssertionError" not in text
    assert "garbage collected without being closed" not in text
