"""Listening sockets: parse addresses, bind TCP and unix sockets, adopt inherited ones, clean up.

Runs in the master, before workers are forked; workers inherit the bound sockets.

Sockets come from three places. ``bind`` makes a new one for an ``--http``/``--uwsgi`` address.
``inherited_listeners`` adopts those a master is started with: from the master it replaces on
USR2 (``DROVER_LISTEN_FDS``: one line ``FD PROTOCOL OWNED ADDRESS`` per socket, written by
``handoff``), and from systemd's socket activation (``drover.systemd``). An inherited socket
stands for the configured address it was made for, which is then not bound again.

A unix socket file is removed on exit by the master that created it or took it over on USR2
(``Listener.owned``), never by a master that handed it to a successor, and never when systemd
made it (the socket unit owns its file).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import MutableMapping
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
    source: str = ""  # the configured address text it stands for ("" from systemd, unmatched)
    owned: bool = True  # a unix socket file this master removes on exit

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


def bind(protocol: str, text: str, backlog: int, chmod: int | None,
         owner: tuple[int, int] | None = None) -> Listener:
    """Bind and listen; called in the master before fork. Raises OSError with a clear message.

    ``owner`` (uid, gid; -1 keeps one) is given to a unix socket file (--chown-socket).
    """
    address = parse_listen_address(text)
    if address.is_unix:
        directory = os.path.dirname(os.path.abspath(address.path))
        if not os.path.isdir(directory):
            raise OSError(errno.ENOENT, f"directory {directory} does not exist")
        _remove_stale_unix_socket(address.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(address.path)
        what = "mode (--chmod-socket)"
        try:
            if chmod is not None:
                os.chmod(address.path, chmod)
            what = "owner (--chown-socket)"
            if owner is not None:
                os.chown(address.path, *owner)
        except OSError as exc:
            sock.close()
            os.unlink(address.path)
            raise OSError(exc.errno, f"cannot set its {what}: {exc.strerror}") from None
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
    return Listener(protocol, address, sock, text)


def unlink_unix_sockets(listeners: list[Listener]) -> None:
    """Remove the unix socket files this master owns (master: when a stop begins, and on exit).

    Removed as soon as a graceful stop begins, a socket is no longer found by new clients
    (nginx gets ENOENT before it sends anything and tries its next upstream), while the
    connections already queued on it are still served.
    """
    for listener in listeners:
        if listener.owned and listener.address.is_unix:
            try:
                os.unlink(listener.address.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                from drover.logs import log

                log.warning("cannot remove the socket %s: %s", listener.address.path,
                            exc.strerror or exc)
            listener.owned = False


def close_listeners(listeners: list[Listener], unlink: bool) -> None:
    """Close sockets; the master also removes the unix socket files it owns (on exit)."""
    if unlink:
        unlink_unix_sockets(listeners)
    for listener in listeners:
        listener.sock.close()


# -- inherited sockets: from the master replaced on USR2, and from systemd -------------------

HANDOFF_ENV = "DROVER_LISTEN_FDS"


def handoff(listeners: list[Listener]) -> str:
    """DROVER_LISTEN_FDS for a successor master (USR2); the sockets must be inheritable."""
    return "\n".join(f"{listener.sock.fileno()} {listener.protocol} {int(listener.owned)} "
                     f"{listener.source}" for listener in listeners)


def _listener_for_fd(fd: int, protocol: str, source: str, owned: bool) -> Listener:
    sock = socket.socket(fileno=fd)
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ValueError(f"inherited fd {fd} is not a stream socket")
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        path = name.decode() if isinstance(name, bytes) else str(name)
        address = ListenAddress(path=path)
    else:
        address = ListenAddress(host=str(name[0]), port=int(name[1]))
    sock.setblocking(False)
    sock.set_inheritable(True)
    return Listener(protocol, address, sock, source, owned)


def _same_address(wanted: ListenAddress, bound: ListenAddress) -> bool:
    if wanted.is_unix or bound.is_unix:
        return (wanted.is_unix and bound.is_unix
                and os.path.abspath(wanted.path) == os.path.abspath(bound.path))
    if wanted.port != bound.port:
        return False
    wildcard = ("", "0.0.0.0", "::", "*")
    return wanted.host.strip("[]") == bound.host or (wanted.host in wildcard
                                                    and bound.host in wildcard)


def inherited_listeners(environ: MutableMapping[str, str],
                        wanted: list[tuple[str, str]]) -> list[Listener]:
    """Sockets this master was started with (master, before binding; see the module docstring).

    ``wanted``: the configured (protocol, address) pairs. Raises ValueError for a socket from
    systemd that neither its name nor its address maps to a protocol. The variables are removed
    from the environment, so workers, apps and successors never see them.
    """
    from drover import systemd

    listeners = []
    handed = environ.pop(HANDOFF_ENV, None)
    for line in (handed or "").splitlines():
        fd_text, protocol, owned, source = ([*line.split(" ", 3), "", "", ""])[:4]
        if not fd_text.isdigit() or protocol not in ("http", "uwsgi"):
            raise ValueError(f"{HANDOFF_ENV}: malformed line {line!r}")
        listeners.append(_listener_for_fd(int(fd_text), protocol, source, owned == "1"))
    for activated in systemd.listen_fds(environ):
        listener = _listener_for_fd(activated.fd, activated.protocol or "http", "", False)
        for protocol, text in wanted:
            if _same_address(parse_listen_address(text), listener.address):
                listener.protocol, listener.source = protocol, text
                break
        else:
            if activated.protocol is None:
                shown = (listener.address.path if listener.address.is_unix
                         else f"{listener.address.host}:{listener.address.port}")
                listener.sock.detach()
                raise ValueError(
                    f"systemd passed socket fd {activated.fd} ({shown}, name "
                    f"{activated.name or 'unset'!r}) that matches no --http/--uwsgi address; "
                    f"set FileDescriptorName=http or =uwsgi in the socket unit")
        listeners.append(listener)
    return listeners
