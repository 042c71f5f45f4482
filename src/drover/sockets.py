"""Listening sockets: parse addresses, bind TCP and unix sockets, clean up after.

Runs in the master, before workers are forked; workers inherit the bound sockets.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A parsed listen address: a TCP (host, port) or a unix socket path."""

    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return bool(self.path)


def parse_listen_address(text: str) -> ListenAddress:
    """':8000', '127.0.0.1:8000', '[::1]:8000', 'localhost:80', '/run/a.sock', 'unix:/run/a.sock'.

    Raises ValueError with a short reason.
    """
    text = text.strip()
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ValueError(f"{text!r} names no socket path")
        return ListenAddress(path=path)
    if text.startswith(("/", "./", "../")) or (":" not in text and "/" in text):
        return ListenAddress(path=text)
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r} is not [IPv6]:PORT")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} is not HOST:PORT, :PORT or a unix socket path")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r} has no valid port (0-65535)")
    return ListenAddress(host=host, port=int(port_text))


@dataclass(slots=True)
class Listener:
    """A bound, listening socket and what it speaks ('http' or 'uwsgi')."""

    protocol: str
    address: ListenAddress
    sock: socket.socket

    @property
    def display(self) -> str:
        if self.address.is_unix:
            return f"unix:{self.address.path}"
        host, port = self.sock.getsockname()[:2]
        scheme = "http" if self.protocol == "http" else "uwsgi"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{port}"


def _remove_stale_unix_socket(path: str) -> None:
    """Remove a socket file left by a crashed run; refuse if a live server still answers on it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # nobody listens: stale
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another server is listening on {path}")


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET, host)
    except OSError:
        return False
    return True


def bind(protocol: str, text: str, backlog: int, chmod: int | None) -> Listener:
    """Bind and listen; called in the master before fork. Raises OSError with a clear message."""
    address = parse_listen_address(text)
    if address.is_unix:
        _remove_stale_unix_socket(address.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(address.path)
        if chmod is not None:
            os.chmod(address.path, chmod)
    else:
        host = address.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if not host:
            host = "0.0.0.0"
        elif family == socket.AF_INET and not _is_ipv4(host):
            # A name: resolve it. Bytes, so that Python's idna codec (and unicodedata) is not
            # loaded into the master, whose memory every worker inherits.
            name = host.encode("ascii") if host.isascii() else host
            infos = socket.getaddrinfo(name, address.port, type=socket.SOCK_STREAM)
            family, _, _, _, sockaddr = infos[0]
            host = str(sockaddr[0])
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, address.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.listen(backlog)
    sock.setblocking(False)
    sock.set_inheritable(True)
    return Listener(protocol, address, sock)


def close_listeners(listeners: list[Listener], unlink: bool) -> None:
    """Close sockets; the master also removes its unix socket files (on clean exit)."""
    for listener in listeners:
        listener.sock.close()
        if unlink and listener.address.is_unix:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(listener.address.path)
