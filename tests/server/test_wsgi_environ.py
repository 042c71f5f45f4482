"""The WSGI environ Drover builds: every key PEP 3333 requires, with the values the request implies.

Requests are sent byte for byte with the fixture's raw client, so what the server receives is
exactly what the test says; ``probe:environ_app`` answers with the environ as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import pytest

CGI_KEYS = ("REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "SERVER_NAME", "SERVER_PORT",
            "SERVER_PROTOCOL")
WSGI_KEYS = ("wsgi.version", "wsgi.url_scheme", "wsgi.input", "wsgi.errors", "wsgi.multithread",
             "wsgi.multiprocess", "wsgi.run_once")


@pytest.fixture(scope="module")
def server(drover_module: Any) -> Any:
    return drover_module.app("probe:environ_app", "--workers", "1", "--threads", "1")


def report(server: Any, target: str = "/", headers: Any = None, body: bytes = b"",
           method: str = "GET", version: str = "HTTP/1.1") -> dict[str, Any]:
    """The environ_app answer to one request (asserting it is a 200)."""
    response = server.request(method, target, headers, body, version=version)
    assert response.status == 200, (response, server.log())
    return json.loads(response.body)  # type: ignore[no-any-return]


def environ(server: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    return report(server, *args, **kwargs)["environ"]  # type: ignore[no-any-return]


# -- required keys and types ---------------------------------------------------------------------


def test_environ_is_a_builtin_dict(server: Any) -> None:
    assert report(server)["environ_type"] == "dict"


def test_required_cgi_and_wsgi_keys_are_present(server: Any) -> None:
    types = report(server)["types"]
    missing = [key for key in (*CGI_KEYS, *WSGI_KEYS) if key not in types]
    assert not missing


def test_cgi_variables_are_native_strings(server: Any) -> None:
    types = report(server, "/x?y=1", {"X-Thing": "1", "Content-Type": "text/plain"}, b"body",
                   method="POST")["types"]
    not_str = {key: kind for key, kind in types.items() if "." not in key and kind != "str"}
    assert not not_str


def test_wsgi_keys_have_pep3333_values(server: Any) -> None:
    env = environ(server)
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True


def test_wsgi_file_wrapper_is_provided(server: Any) -> None:
    assert "wsgi.file_wrapper" in report(server)["types"]


def test_wsgi_errors_writes_reach_the_log(server: Any) -> None:
    report(server, "/?errors=environ-probe-errors-marker")
    server.wait_for_log("environ-probe-errors-marker")


# -- request line --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE"])
def test_request_method_is_the_request_method(server: Any, method: str) -> None:
    assert environ(server, "/", method=method)["REQUEST_METHOD"] == method


def test_script_name_is_empty_and_path_info_is_the_path(server: Any) -> None:
    env = environ(server, "/some/where")
    assert env["SCRIPT_NAME"] == ""
    assert env["PATH_INFO"] == "/some/where"


def test_path_info_is_percent_decoded_bytes_as_latin1(server: Any) -> None:
    assert environ(server, "/caf%C3%A9")["PATH_INFO"] == "/caf\u00c3\u00a9"


def test_path_info_decodes_every_escape_and_keeps_plus(server: Any) -> None:
    assert environ(server, "/a%2Fb+c%20d%25")["PATH_INFO"] == "/a/b+c d%"


def test_query_string_is_raw(server: Any) -> None:
    env = environ(server, "/p?q=a+b%20c&x=%2F&caf%C3%A9&empty=")
    assert env["PATH_INFO"] == "/p"
    assert env["QUERY_STRING"] == "q=a+b%20c&x=%2F&caf%C3%A9&empty="


def test_query_string_is_present_and_empty_without_query(server: Any) -> None:
    assert environ(server, "/p")["QUERY_STRING"] == ""
    assert environ(server, "/p?")["QUERY_STRING"] == ""


def test_request_uri_is_the_raw_target(server: Any) -> None:
    target = "/caf%C3%A9/x%2Fy?q=a+b%20c"
    assert environ(server, target)["REQUEST_URI"] == target


def test_absolute_form_target_is_split_into_path_and_query(server: Any) -> None:
    env = environ(server, f"http://127.0.0.1:{server.port}/abs/path?x=1")
    assert env["PATH_INFO"] == "/abs/path"
    assert env["QUERY_STRING"] == "x=1"


@pytest.mark.parametrize("version", ["HTTP/1.0", "HTTP/1.1"])
def test_server_protocol_is_the_request_version(server: Any, version: str) -> None:
    assert environ(server, "/", version=version)["SERVER_PROTOCOL"] == version


# -- server and client addresses -------------------------------------------------------------------


def test_server_name_and_port_describe_the_listening_socket(server: Any) -> None:
    env = environ(server)
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(server.port)


def test_remote_addr_and_port_are_the_client_socket(server: Any) -> None:
    with server.connect() as sock:
        client_port = sock.getsockname()[1]
        sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                     "Connection: close\r\n\r\n".encode())
        response = server.read_response(sock)
    env = json.loads(response.body)["environ"]
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(client_port)


# -- headers -------------------------------------------------------------------------------------


def test_headers_become_http_variables(server: Any) -> None:
    env = environ(server, "/", [("User-Agent", "probe/1.0"), ("x-lower-case", "v1"),
                                ("X-Empty", ""), ("Accept", "text/html, */*;q=0.1")])
    assert env["HTTP_HOST"] == f"127.0.0.1:{server.port}"
    assert env["HTTP_USER_AGENT"] == "probe/1.0"
    assert env["HTTP_X_LOWER_CASE"] == "v1"
    assert env["HTTP_X_EMPTY"] == ""
    assert env["HTTP_ACCEPT"] == "text/html, */*;q=0.1"


def test_header_with_underscore_in_its_name_is_dropped(server: Any) -> None:
    env = environ(server, "/", [("X_Only_Underscore", "evil")])
    assert "HTTP_X_ONLY_UNDERSCORE" not in env


def test_underscore_header_cannot_spoof_its_dashed_twin(server: Any) -> None:
    env = environ(server, "/", [("X-Remote-User", "alice"), ("X_Remote_User", "mallory")])
    assert env["HTTP_X_REMOTE_USER"] == "alice"


def test_duplicate_headers_are_joined_with_comma(server: Any) -> None:
    env = environ(server, "/", [("X-Dup", "a"), ("X-Other", "o"), ("X-Dup", "b"),
                                ("x-dup", "c")])
    assert env["HTTP_X_DUP"] == "a, b, c"
    assert env["HTTP_X_OTHER"] == "o"


def test_cookie_headers_are_joined_with_semicolon(server: Any) -> None:
    env = environ(server, "/", [("Cookie", "a=1"), ("Cookie", "b=2; c=3")])
    assert env["HTTP_COOKIE"] == "a=1; b=2; c=3"


def test_header_value_bytes_are_decoded_as_latin1(server: Any) -> None:
    env = environ(server, "/", [("X-Latin", "caf\u00e9")])  # sent as the byte 0xE9
    assert env["HTTP_X_LATIN"] == "caf\u00e9"


# -- body ------------------------------------------------------------------------------------------


def test_content_type_and_length_describe_the_body(server: Any) -> None:
    data = report(server, "/", {"Content-Type": "application/x-www-form-urlencoded"},
                  b"a=1&b=2", method="POST")
    env = data["environ"]
    assert env["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert env["CONTENT_LENGTH"] == "7"
    assert "HTTP_CONTENT_TYPE" not in env
    assert "HTTP_CONTENT_LENGTH" not in env
    assert data["body"]["head"] == "a=1&b=2"


def test_no_content_length_or_type_without_a_body(server: Any) -> None:
    env = environ(server)
    assert env.get("CONTENT_LENGTH", "") == ""
    assert env.get("CONTENT_TYPE", "") == ""


def test_empty_post_has_content_length_zero(server: Any) -> None:
    data = report(server, "/", {"Content-Length": "0"}, method="POST")
    assert data["environ"]["CONTENT_LENGTH"] == "0"
    assert data["body"]["length"] == 0


def test_body_with_content_length_is_read_whole(server: Any) -> None:
    body = os.urandom(300_000)
    data = report(server, "/", {"Content-Type": "application/octet-stream"}, body,
                  method="POST")
    assert data["body"]["length"] == len(body)
    assert data["body"]["sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_body_is_decoded_and_readable_to_eof(server: Any) -> None:
    pieces = [b"first piece\n", os.urandom(70_000), b"last\n"]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    data = report(server, "/", {"Transfer-Encoding": "chunked"}, chunked, method="POST")
    body = b"".join(pieces)
    # CGI (RFC 3875 4.1.2) allows CONTENT_LENGTH here only as the decoded length.
    assert data["environ"].get("CONTENT_LENGTH", "") in ("", str(len(body)))
    assert data["environ"]["wsgi.input_terminated"] is True
    assert data["body"]["length"] == len(body)
    assert data["body"]["sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(
    "mode", ["read", "read_all", "readline", "readline_sized", "iter", "readlines"])
def test_wsgi_input_read_methods_return_the_body(server: Any, mode: str) -> None:
    body = b"".join(b"line %d %s\n" % (i, b"x" * (i * 37 % 250)) for i in range(400)) + b"end"
    data = report(server, f"/?read={mode}", {"Content-Type": "text/plain"}, body, method="POST")
    assert data["body"]["length"] == len(body)
    assert data["body"]["sha256"] == hashlib.sha256(body).hexdigest()


def test_wsgi_input_ends_at_content_length_on_a_kept_alive_connection(server: Any) -> None:
    # read=read reads until EOF: the server must end the stream after Content-Length bytes
    # even though the connection stays open and the next request follows on it.
    first = (f"POST /?read=read HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
             "Content-Length: 5\r\n\r\nhello").encode()
    second = (f"GET /second HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
              "Connection: close\r\n\r\n").encode()
    with server.connect() as sock:
        sock.sendall(first + second)
        one = server.read_response(sock)
        two = server.read_response(sock, buffer=one.rest)
    assert one.status == 200
    assert json.loads(one.body)["body"]["head"] == "hello"
    assert two.status == 200
    assert json.loads(two.body)["environ"]["PATH_INFO"] == "/second"


# -- process model flags -------------------------------------------------------------------------


@pytest.mark.parametrize(("workers", "threads"), [(1, 1), (2, 1), (1, 4), (2, 2)])
def test_multithread_and_multiprocess_follow_threads_and_workers(
        drover: Any, workers: int, threads: int) -> None:
    server = drover.app("probe:environ_app", "--workers", str(workers),
                        "--threads", str(threads))
    env = environ(server)
    assert env["wsgi.multithread"] is (threads > 1)
    assert env["wsgi.multiprocess"] is (workers > 1)


# -- wsgiref.validate ----------------------------------------------------------------------------


def test_validator_finds_no_pep3333_violation(drover: Any) -> None:
    server = drover.app("probe:validated_environ_app", "--workers", "1", "--threads", "2")
    assert report(server, "/a%20b?x=1", [("X-A", "1"), ("Cookie", "c=1")])["environ"]
    assert report(server, "/", {"Content-Type": "text/plain"}, b"body", method="POST")
    chunked = b"4\r\nbody\r\n0\r\n\r\n"
    data = report(server, "/", {"Transfer-Encoding": "chunked"}, chunked, method="POST")
    assert data["body"]["head"] == "body"
    assert report(server, "/?read=readline", body=b"l1\nl2\n", method="POST")
    assert report(server, "/?read=readlines", body=b"l1\nl2\n", method="POST")
    assert report(server, "/", version="HTTP/1.0")
    server.assert_clean_log()
