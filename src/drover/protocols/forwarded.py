"""Behind a proxy: X-Forwarded-*, RFC 7239 Forwarded and the PROXY protocol, sans-I/O.

Theory of operation
-------------------
A proxy in front of Drover knows what Drover cannot see: the client's address, the scheme it
used, the Host it asked for. It says so in header fields (X-Forwarded-For, -Proto, -Host,
-Port, or the standard ``Forwarded``) or, for TCP balancers, in a PROXY protocol header sent
before the first byte of HTTP. Any client can write those fields too, so they are believed only
from the peers listed in ``--forwarded-allow-ips`` (``TrustedPeers``): the worker decides once
per connection whether its peer is one, and only then calls ``apply_forwarded`` on each of its
requests. From any other peer the fields reach the app untouched and change nothing.

X-Forwarded-For and Forwarded list one hop per proxy, each appending the address it received
the request from. The client is the right-most hop that is not a trusted proxy: everything to
the left of it was written by the client itself (``X-Forwarded-For: 1.2.3.4`` is free to send).
The scheme and host are taken from that same hop's Forwarded element, or from the right-most
X-Forwarded-Proto / -Host / -Port (the nearest proxy's word). Forwarded wins over the
X-Forwarded-* fields when a request has both. Values that do not parse (an address that is not
an IP, a scheme other than http or https, a port that is not a number) change nothing.

``parse_proxy_header`` reads a PROXY protocol header (v1 text or v2 binary, HAProxy's
specification) from the start of a connection: the addresses it gives replace the peer's, and
the trust decision is then made again for the new peer (the real client). A header that does
not parse closes the connection.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drover.protocols.request import ProtocolError

if TYPE_CHECKING:
    import ipaddress

# ipaddress is imported where it is used (once per worker, then from sys.modules): importing it
# costs a worker 4 ms at start.
_CACHE_MAX = 4096


class TrustedPeers:
    """The peers whose forwarding fields are believed (``--forwarded-allow-ips``): networks,
    or everyone (``*``). Answers are cached per address. Built once per worker."""

    def __init__(self, entries: Iterable[str]) -> None:
        import ipaddress

        entries = [part.strip() for entry in entries for part in entry.split(",")
                   if part.strip()]
        self.everyone = "*" in entries
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [
            ipaddress.ip_network(entry, strict=False) for entry in entries if entry != "*"]
        self._cache: dict[str, bool] = {}

    def trusts(self, host: str) -> bool:
        known = self._cache.get(host)
        if known is not None:
            return known
        address = _ip(host)
        trusted = self.everyone or (
            address is not None and any(address in network for network in self.networks))
        if len(self._cache) < _CACHE_MAX:
            self._cache[host] = trusted
        return trusted


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    import ipaddress

    try:
        return ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None


def _node(text: str) -> tuple[str, str] | None:
    """An address with an optional port (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``, ``::1``):
    (address, port or ""), or None if it is not an IP address."""
    text = text.strip()
    port = ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not port.isdigit():
            return None
    else:
        host = text
    address = _ip(host)
    return None if address is None else (str(address), port)


FORWARDED_KEYS = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO",
                  "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PORT")


def apply_forwarded(environ: dict[str, Any], peers: TrustedPeers) -> None:
    """Lay what a trusted proxy says over one request's environ (REMOTE_ADDR, REMOTE_PORT,
    wsgi.url_scheme, HTTP_HOST, SERVER_NAME, SERVER_PORT). Runs on a loop thread, only for
    requests on connections from a trusted peer that carry one of ``FORWARDED_KEYS``."""
    forwarded = environ.get("HTTP_FORWARDED")
    if forwarded is not None:
        _apply_rfc7239(environ, forwarded, peers)
        return
    chain = environ.get("HTTP_X_FORWARDED_FOR")
    if chain is not None:
        _walk(environ, [(hop, None) for hop in chain.split(",")], peers)
    proto = environ.get("HTTP_X_FORWARDED_PROTO")
    if proto is not None:
        _set_scheme(environ, proto.rsplit(",", 1)[-1])
    host = environ.get("HTTP_X_FORWARDED_HOST")
    if host is not None:
        _set_host(environ, host.rsplit(",", 1)[-1].strip())
    port = environ.get("HTTP_X_FORWARDED_PORT")
    if port is not None:
        port = port.rsplit(",", 1)[-1].strip()
        if port.isdigit() and port.isascii():
            environ["SERVER_PORT"] = port


def _walk(environ: dict[str, Any], hops: list[tuple[str, dict[str, str] | None]],
          peers: TrustedPeers) -> dict[str, str] | None:
    """From the right: each hop a trusted proxy saw; stop at the first that is not trusted
    (the client). Returns that hop's Forwarded parameters (None for X-Forwarded-For)."""
    chosen: dict[str, str] | None = None
    for text, params in reversed(hops):
        node = _node(text)
        if node is None:
            break  # "unknown", an obfuscated name, or garbage: no further
        address, port = node
        environ["REMOTE_ADDR"] = address
        if port:
            environ["REMOTE_PORT"] = port
        else:
            environ.pop("REMOTE_PORT", None)  # the proxy's port, not the client's
        chosen = params
        if not peers.trusts(address):
            break
    return chosen


def _apply_rfc7239(environ: dict[str, Any], value: str, peers: TrustedPeers) -> None:
    """RFC 7239: ``Forwarded: for=192.0.2.60;proto=https;host=example.com, for=...``."""
    elements: list[tuple[str, dict[str, str] | None]] = []
    for element in _split_quoted(value, ","):
        params: dict[str, str] = {}
        for pair in _split_quoted(element, ";"):
            name, sep, raw = pair.partition("=")
            if not sep:
                continue
            raw = raw.strip()
            if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            params[name.strip().lower()] = raw
        elements.append((params.get("for", ""), params))
    if not elements:
        return
    chosen = _walk(environ, elements, peers)
    params = chosen if chosen is not None else elements[-1][1] or {}  # else: the nearest's
    proto = params.get("proto")
    if proto is not None:
        _set_scheme(environ, proto)
    host = params.get("host")
    if host is not None:
        _set_host(environ, host)


def _split_quoted(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double quotes."""
    parts: list[str] = []
    start = 0
    quoted = escaped = False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [part for part in (p.strip() for p in parts) if part]


def _set_scheme(environ: dict[str, Any], value: str) -> None:
    scheme = value.strip().lower()
    if scheme in ("http", "https"):
        environ["wsgi.url_scheme"] = scheme


def _set_host(environ: dict[str, Any], host: str) -> None:
    """Host as the client sent it (RFC 9110 section 7.2): name or [IPv6], optional port."""
    if not host or any(c in host for c in " \t,/?#@\\\"") or not host.isprintable():
        return
    if host.startswith("["):
        name, sep, rest = host.partition("]")
        name += sep
        port = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            return
    else:
        name, _, port = host.partition(":")
    if port and not (port.isdigit() and port.isascii()):
        return
    environ["HTTP_HOST"] = host
    environ["SERVER_NAME"] = name
    environ["SERVER_PORT"] = port or ("443" if environ.get("wsgi.url_scheme") == "https"
                                      else "80")


# -- the PROXY protocol ------------------------------------------------------------------------

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
_V1_MAX = 107  # the longest v1 line, CRLF included (the specification's bound)
_V2_MAX = 16 + 1024  # header and addresses; TLVs past this are refused


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a PROXY header said: the client's address and port, and the address it connected
    to; ``local`` (v2 LOCAL, v1 UNKNOWN: a balancer's health check) means keep the real peer."""

    length: int  # bytes of the header, to drop before HTTP
    local: bool = False
    source: str = ""
    source_port: int = 0
    destination: str = ""
    destination_port: int = 0


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """The PROXY header ``data`` starts with, or None when more bytes are needed. Raises
    ProtocolError(0, ...) (close without an answer) when it is not one."""
    if data[:12] == V2_SIGNATURE[:len(data[:12])] and data[:1] == b"\r":
        return _parse_v2(data)
    if data[:6] != V1_PREFIX[:len(data[:6])]:
        raise ProtocolError(0, "no PROXY protocol header from a peer that must send one")
    end = data.find(b"\r\n", 0, _V1_MAX)
    if end < 0:
        if len(data) >= _V1_MAX:
            raise ProtocolError(0, "PROXY protocol v1 line too long")
        return None
    return _parse_v1(data[:end].decode("latin-1"), end + 2)


def _parse_v1(line: str, length: int) -> ProxyHeader:
    import ipaddress

    parts = line.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(length, local=True)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProtocolError(0, "malformed PROXY protocol v1 header")
    _, family, source, destination, source_port, destination_port = parts
    want = ipaddress.IPv4Address if family == "TCP4" else ipaddress.IPv6Address
    try:
        addresses = [want(source), want(destination)]
    except ValueError:
        raise ProtocolError(0, "bad address in PROXY protocol v1 header") from None
    ports = []
    for port in (source_port, destination_port):
        if not (port.isdigit() and port.isascii() and len(port) <= 5 and int(port) <= 65535
                and (port == "0" or port[0] != "0")):
            raise ProtocolError(0, "bad port in PROXY protocol v1 header")
        ports.append(int(port))
    return ProxyHeader(length, False, str(addresses[0]), ports[0], str(addresses[1]), ports[1])


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < 16:
        return None
    if data[:12] != V2_SIGNATURE:
        raise ProtocolError(0, "malformed PROXY protocol v2 signature")
    version_command, family, size = data[12], data[13], struct.unpack_from("!H", data, 14)[0]
    if version_command >> 4 != 2 or version_command & 0xF > 1:
        raise ProtocolError(0, "unsupported PROXY protocol v2 version or command")
    if 16 + size > _V2_MAX:
        raise ProtocolError(0, "PROXY protocol v2 header too long")
    length = 16 + size
    if len(data) < length:
        return None
    if version_command & 0xF == 0:
        return ProxyHeader(length, local=True)  # LOCAL: the balancer itself (health check)
    body = data[16:length]
    import ipaddress

    if family in (0x11, 0x12) and size >= 12:  # TCP or UDP over IPv4
        source, destination, sport, dport = struct.unpack_from("!4s4sHH", body)
        return ProxyHeader(length, False, str(ipaddress.IPv4Address(source)), sport,
                           str(ipaddress.IPv4Address(destination)), dport)
    if family in (0x21, 0x22) and size >= 36:  # over IPv6
        source, destination, sport, dport = struct.unpack_from("!16s16sHH", body)
        return ProxyHeader(length, False, str(ipaddress.IPv6Address(source)), sport,
                           str(ipaddress.IPv6Address(destination)), dport)
    if family == 0x00 or family in (0x31, 0x32):
        return ProxyHeader(length, local=True)  # unspecified or unix: keep the real peer
    raise ProtocolError(0, "bad address family or length in PROXY protocol v2 header")
