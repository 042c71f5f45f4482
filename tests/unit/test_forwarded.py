"""drover.protocols.forwarded: forwarding fields from trusted proxies, and PROXY headers,
fed with plain values (no sockets). Each row: the fields a request carries, and what the
environ must say after."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest

from drover.protocols.forwarded import (
    V2_SIGNATURE,
    ProxyHeader,
    TrustedPeers,
    apply_forwarded,
    parse_proxy_header,
)
from drover.protocols.request import ProtocolError

PEERS = TrustedPeers(["127.0.0.1", "10.0.0.0/8", "::1"])
BASE = {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "5555", "wsgi.url_scheme": "http",
        "HTTP_HOST": "internal:8000", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000"}


def forwarded(**fields: str) -> dict[str, Any]:
    environ = dict(BASE)
    environ.update(fields)
    apply_forwarded(environ, PEERS)
    return environ


CASES = [
    # X-Forwarded-For: the right-most hop that is not a trusted proxy.
    ("xff_one_hop", {"HTTP_X_FORWARDED_FOR": "203.0.113.7"},
     {"REMOTE_ADDR": "203.0.113.7", "REMOTE_PORT": None}),
    ("xff_client_spoofs_the_left", {"HTTP_X_FORWARDED_FOR": "6.6.6.6, 203.0.113.7"},
     {"REMOTE_ADDR": "203.0.113.7"}),
    ("xff_trusted_hops_skipped", {"HTTP_X_FORWARDED_FOR": "6.6.6.6, 203.0.113.7, 10.1.2.3"},
     {"REMOTE_ADDR": "203.0.113.7"}),
    ("xff_all_trusted_gives_the_left_most", {"HTTP_X_FORWARDED_FOR": "10.0.0.5,10.0.0.6"},
     {"REMOTE_ADDR": "10.0.0.5"}),
    ("xff_with_port_and_ipv6", {"HTTP_X_FORWARDED_FOR": "[2001:db8::1]:4711"},
     {"REMOTE_ADDR": "2001:db8::1", "REMOTE_PORT": "4711"}),
    ("xff_ipv4_with_port", {"HTTP_X_FORWARDED_FOR": "203.0.113.7:1234"},
     {"REMOTE_ADDR": "203.0.113.7", "REMOTE_PORT": "1234"}),
    ("xff_garbage_changes_nothing", {"HTTP_X_FORWARDED_FOR": "not-an-ip"},
     {"REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "5555"}),
    ("xff_garbage_stops_the_walk", {"HTTP_X_FORWARDED_FOR": "1.1.1.1, bogus, 10.0.0.9"},
     {"REMOTE_ADDR": "10.0.0.9"}),
    # -Proto, -Host, -Port.
    ("proto_https", {"HTTP_X_FORWARDED_PROTO": "https"}, {"wsgi.url_scheme": "https"}),
    ("proto_right_most", {"HTTP_X_FORWARDED_PROTO": "http, HTTPS"},
     {"wsgi.url_scheme": "https"}),
    ("proto_other_ignored", {"HTTP_X_FORWARDED_PROTO": "gopher"}, {"wsgi.url_scheme": "http"}),
    ("host", {"HTTP_X_FORWARDED_HOST": "example.com"},
     {"HTTP_HOST": "example.com", "SERVER_NAME": "example.com", "SERVER_PORT": "80"}),
    ("host_with_https_default_port",
     {"HTTP_X_FORWARDED_HOST": "example.com", "HTTP_X_FORWARDED_PROTO": "https"},
     {"HTTP_HOST": "example.com", "SERVER_PORT": "443", "wsgi.url_scheme": "https"}),
    ("host_and_port", {"HTTP_X_FORWARDED_HOST": "example.com:8443",
                       "HTTP_X_FORWARDED_PORT": "9443"},
     {"HTTP_HOST": "example.com:8443", "SERVER_NAME": "example.com", "SERVER_PORT": "9443"}),
    ("host_ipv6", {"HTTP_X_FORWARDED_HOST": "[2001:db8::2]:81"},
     {"SERVER_NAME": "[2001:db8::2]", "SERVER_PORT": "81"}),
    ("host_with_junk_ignored", {"HTTP_X_FORWARDED_HOST": "evil.com/path"},
     {"HTTP_HOST": "internal:8000", "SERVER_NAME": "127.0.0.1"}),
    ("port_not_a_number_ignored", {"HTTP_X_FORWARDED_PORT": "eighty"}, {"SERVER_PORT": "8000"}),
    # RFC 7239 Forwarded.
    ("forwarded_for_proto_host",
     {"HTTP_FORWARDED": 'for=192.0.2.60;proto=https;host="example.org"'},
     {"REMOTE_ADDR": "192.0.2.60", "wsgi.url_scheme": "https", "HTTP_HOST": "example.org",
      "SERVER_PORT": "443"}),
    ("forwarded_chain_right_most_untrusted",
     {"HTTP_FORWARDED": 'for=6.6.6.6;proto=http, for="[2001:db8::7]:99";proto=https, '
                        'for=10.2.2.2;proto=http'},
     {"REMOTE_ADDR": "2001:db8::7", "REMOTE_PORT": "99", "wsgi.url_scheme": "https"}),
    ("forwarded_unknown_for_keeps_the_peer",
     {"HTTP_FORWARDED": "for=unknown;proto=https"},
     {"REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "https"}),
    ("forwarded_wins_over_x_forwarded",
     {"HTTP_FORWARDED": "for=192.0.2.1", "HTTP_X_FORWARDED_FOR": "192.0.2.2",
      "HTTP_X_FORWARDED_PROTO": "https"},
     {"REMOTE_ADDR": "192.0.2.1", "wsgi.url_scheme": "http"}),
    ("forwarded_quoted_separators", {"HTTP_FORWARDED": 'for="192.0.2.9";host="a.example;b"'},
     {"REMOTE_ADDR": "192.0.2.9", "HTTP_HOST": "a.example;b"}),  # not split inside quotes
]


@pytest.mark.parametrize(("fields", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_forwarding_fields_from_a_trusted_peer(fields: dict[str, str],
                                               expected: dict[str, str | None]) -> None:
    environ = forwarded(**fields)
    for key, value in expected.items():
        assert environ.get(key) == value, key
    for key, value in fields.items():
        assert environ[key] == value  # the fields themselves reach the app untouched


@pytest.mark.parametrize(("entries", "host", "trusted"), [
    (["*"], "198.51.100.1", True),
    (["127.0.0.1"], "127.0.0.1", True),
    (["127.0.0.1"], "127.0.0.2", False),
    (["10.0.0.0/8", "::1"], "::1", True),
    (["10.0.0.0/8"], "fe80::1%eth0", False),
    (["fe80::/10"], "fe80::1%eth0", True),
    (["10.0.0.0/8"], "garbage", False),
])
def test_trusted_peers(entries: list[str], host: str, trusted: bool) -> None:
    assert TrustedPeers(entries).trusts(host) is trusted


# -- PROXY protocol ------------------------------------------------------------------------------


def v2(command: int, family: int, payload: bytes) -> bytes:
    return V2_SIGNATURE + bytes((0x20 | command, family)) + struct.pack("!H", len(payload)) \
        + payload


V2_TCP4 = v2(1, 0x11, ipaddress.IPv4Address("192.0.2.1").packed
             + ipaddress.IPv4Address("198.51.100.2").packed + struct.pack("!HH", 4000, 443))
V2_TCP6 = v2(1, 0x21, ipaddress.IPv6Address("2001:db8::1").packed
             + ipaddress.IPv6Address("2001:db8::2").packed + struct.pack("!HH", 5, 6)
             + b"\x04\x00\x01x")  # a TLV after the addresses, skipped


@pytest.mark.parametrize(("data", "expected"), [
    (b"PROXY TCP4 192.0.2.1 198.51.100.2 4000 443\r\nGET",
     ProxyHeader(44, False, "192.0.2.1", 4000, "198.51.100.2", 443)),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 5 6\r\n",
     ProxyHeader(40, False, "2001:db8::1", 5, "2001:db8::2", 6)),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(15, local=True)),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyHeader(35, local=True)),
    (V2_TCP4 + b"GET", ProxyHeader(28, False, "192.0.2.1", 4000, "198.51.100.2", 443)),
    (V2_TCP6, ProxyHeader(56, False, "2001:db8::1", 5, "2001:db8::2", 6)),
    (v2(0, 0x00, b""), ProxyHeader(16, local=True)),
], ids=["v1_tcp4", "v1_tcp6", "v1_unknown", "v1_unknown_with_addresses", "v2_tcp4",
        "v2_tcp6_tlv", "v2_local"])
def test_proxy_header_parses_at_every_split(data: bytes, expected: ProxyHeader) -> None:
    assert parse_proxy_header(data) == expected
    for cut in range(expected.length):
        assert parse_proxy_header(data[:cut]) is None, cut  # needs more bytes, no error


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 4000\r\n",
    b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 2\r\n",
    b"PROXY TCP4 192.0.2.1 198.51.100.2 01 2\r\n",
    b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
    b"PROXY TCP4 " + b"1" * 120,
    V2_SIGNATURE[:11] + b"X" + bytes(8),
    v2(2, 0x11, bytes(12)),
    v2(1, 0x11, bytes(4)),
    v2(1, 0x11, bytes(2000)),
    b"\r\n\r\nGET / HTTP/1.1\r\n\r\n",
], ids=["http", "v1_missing_port", "v1_family_mismatch", "v1_port_too_big",
        "v1_leading_zero", "v1_udp", "v1_too_long", "v2_bad_signature", "v2_bad_command",
        "v2_short_addresses", "v2_too_long", "crlf_then_http"])
def test_what_is_not_a_proxy_header_is_refused(data: bytes) -> None:
    with pytest.raises(ProtocolError) as raised:
        parse_proxy_header(data)
    assert raised.value.status == 0  # closed without an answer
