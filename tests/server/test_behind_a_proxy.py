"""Behind a proxy, through the real drover process and raw sockets on 127.0.0.1: forwarding
fields believed from --forwarded-allow-ips peers only, and PROXY protocol headers."""

from __future__ import annotations

import ipaddress
import json
import os
import struct
import subprocess
import sys
from typing import Any

import pytest
from rawhttp import http, read_responses, wait_closed

from tests.conftest import DroverLauncher, Server, read_response

W1 = ("--workers", "1")
HOST = "Host: 127.0.0.1"
SPOOF = ("X-Forwarded-For: 6.6.6.6, 203.0.113.7", "X-Forwarded-Proto: https",
         "X-Forwarded-Host: shop.example", "X-Forwarded-Port: 8443")


def environ_of(server: Server, *lines: str, prefix: bytes = b"") -> dict[str, Any]:
    with server.connect() as sock:
        sock.sendall(prefix + http("GET /e HTTP/1.1", HOST, *lines))
        response = read_response(sock)
    assert response.status == 200, response
    environ: dict[str, Any] = json.loads(response.body)["environ"]
    return environ


@pytest.fixture(scope="module")
def trusting_server(drover_module: DroverLauncher) -> Server:
    """The default: loopback (the tests' own address) is trusted."""
    return drover_module.app("probe:environ_app", *W1)


@pytest.fixture(scope="module")
def distrusting_server(drover_module: DroverLauncher) -> Server:
    return drover_module.app("probe:environ_app", *W1, "--forwarded-allow-ips", "10.0.0.0/8",
                             "--forwarded-allow-ips", "192.0.2.0/24,198.51.100.1")


def test_forwarding_fields_from_a_trusted_peer_are_believed(trusting_server: Server) -> None:
    environ = environ_of(trusting_server, *SPOOF)
    assert environ["REMOTE_ADDR"] == "203.0.113.7"  # the right-most untrusted hop
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["HTTP_HOST"] == "shop.example"
    assert environ["SERVER_NAME"] == "shop.example"
    assert environ["SERVER_PORT"] == "8443"
    assert environ["HTTP_X_FORWARDED_FOR"] == "6.6.6.6, 203.0.113.7"  # passed on as well


def test_forwarded_rfc7239_from_a_trusted_peer(trusting_server: Server) -> None:
    environ = environ_of(trusting_server,
                         'Forwarded: for="[2001:db8::5]:4444";proto=https;host=api.example')
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("2001:db8::5", "4444")
    assert environ["wsgi.url_scheme"] == "https" and environ["HTTP_HOST"] == "api.example"


def test_a_request_without_forwarding_fields_keeps_the_peer(trusting_server: Server) -> None:
    environ = environ_of(trusting_server)
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["wsgi.url_scheme"] == "http" and environ["HTTP_HOST"] == "127.0.0.1"


def test_each_request_on_a_connection_is_judged_alone(trusting_server: Server) -> None:
    with trusting_server.connect() as sock:
        sock.sendall(http("GET /1 HTTP/1.1", HOST, "X-Forwarded-For: 203.0.113.9")
                     + http("GET /2 HTTP/1.1", HOST))
        first, second = (json.loads(r.body)["environ"] for r in read_responses(sock, 2))
    assert first["REMOTE_ADDR"] == "203.0.113.9"
    assert second["REMOTE_ADDR"] == "127.0.0.1"


def test_spoofed_fields_from_an_untrusted_peer_change_nothing(distrusting_server: Server
                                                              ) -> None:
    environ = environ_of(distrusting_server, *SPOOF, "Forwarded: for=1.2.3.4;proto=https")
    assert environ["REMOTE_ADDR"] == "127.0.0.1"
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["HTTP_HOST"] == "127.0.0.1"
    assert environ["SERVER_NAME"] == "127.0.0.1"
    assert environ["HTTP_X_FORWARDED_FOR"] == "6.6.6.6, 203.0.113.7"  # the app still sees them
    assert environ["HTTP_FORWARDED"] == "for=1.2.3.4;proto=https"


def test_star_trusts_every_peer(drover: DroverLauncher) -> None:
    server = drover.app("probe:environ_app", *W1, "--forwarded-allow-ips", "*")
    assert environ_of(server, "X-Forwarded-For: 203.0.113.1")["REMOTE_ADDR"] == "203.0.113.1"


def test_a_bad_forwarded_allow_ips_is_a_configuration_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "drover", "--forwarded-allow-ips", "10.0.0.0/33"],
        capture_output=True, text=True, timeout=20, start_new_session=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("DROVER_")})
    assert result.returncode == 2
    assert "--forwarded-allow-ips" in result.stderr


# -- PROXY protocol --------------------------------------------------------------------------------


V1 = b"PROXY TCP4 192.0.2.44 198.51.100.2 40000 443\r\n"


def v2_tcp4(source: str, port: int) -> bytes:
    payload = (ipaddress.IPv4Address(source).packed + ipaddress.IPv4Address("10.0.0.1").packed
               + struct.pack("!HH", port, 443))
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes((0x21, 0x11)) + struct.pack("!H", len(payload)) \
        + payload


@pytest.fixture(scope="module")
def proxy_server(drover_module: DroverLauncher) -> Server:
    # Ready when listening: the readiness probe, from loopback (trusted), sends no PROXY header.
    return drover_module.app("probe:environ_app", *W1, "--proxy-protocol", ready_path=None)


def test_proxy_protocol_v1_gives_the_client_address(proxy_server: Server) -> None:
    environ = environ_of(proxy_server, prefix=V1)
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("192.0.2.44", "40000")


def test_proxy_protocol_v2_in_pieces_gives_the_client_address(proxy_server: Server) -> None:
    data = v2_tcp4("192.0.2.45", 40001) + http("GET /e HTTP/1.1", HOST)
    with proxy_server.connect() as sock:
        for i in range(0, len(data), 7):
            sock.sendall(data[i:i + 7])
        environ = json.loads(read_response(sock).body)["environ"]
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("192.0.2.45", "40001")


def test_forwarding_fields_behind_a_proxy_header_are_the_clients_and_not_believed(
        proxy_server: Server) -> None:
    """The PROXY header names the real client (untrusted): its X-Forwarded-For is its own."""
    environ = environ_of(proxy_server, "X-Forwarded-For: 6.6.6.6", prefix=V1)
    assert environ["REMOTE_ADDR"] == "192.0.2.44"


def test_a_trusted_peer_without_a_proxy_header_is_closed(proxy_server: Server) -> None:
    with proxy_server.connect() as sock:
        sock.sendall(http("GET /e HTTP/1.1", HOST))
        closed, data, _ = wait_closed(sock, 5)
    assert closed and data == b""
    proxy_server.wait_for_log("no PROXY protocol header")


def test_a_proxy_header_from_an_untrusted_peer_is_refused(drover: DroverLauncher) -> None:
    server = drover.app("probe:environ_app", *W1, "--proxy-protocol",
                        "--forwarded-allow-ips", "10.0.0.0/8", ready_path=None)
    for prefix in (V1, v2_tcp4("192.0.2.46", 1)):
        with server.connect() as sock:
            sock.sendall(prefix + http("GET /e HTTP/1.1", HOST))
            closed, data, _ = wait_closed(sock, 5)
        assert closed and data == b""
    server.wait_for_log("PROXY protocol header from 127.0.0.1, not in --forwarded-allow-ips")
    # Plain HTTP from the same peer is served as usual, with its own address.
    assert environ_of(server)["REMOTE_ADDR"] == "127.0.0.1"
