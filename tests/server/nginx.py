"""Real nginx in front of Drover, for the black-box uwsgi tests.

``start_nginx(prefix, upstreams)`` writes an ``nginx.conf`` into ``prefix`` (pid file, logs and
every temp path inside it), with one ``server`` per upstream on its own ephemeral loopback port,
each doing the stock ``include uwsgi_params; uwsgi_pass ...;``. It runs
``nginx -p PREFIX -c nginx.conf -g 'daemon off;'`` in the foreground (no master process: one
pid to stop), waits until every port answers, and returns an ``Nginx`` whose ``url(name)`` is
the base URL in front of that upstream. ``Nginx.stop()`` ends it.

``run_nginx(prefix, servers, ports)`` runs the same wrapper around ``server`` blocks of the
caller's (a deploy/ site file, an ``upstream`` of several Drover instances). With
``user="www-data"`` either runs as Debian's nginx does: a root master and workers that switch to
that user (``master_process on``), so socket permissions are tested for real.

nginx is required, not optional: the test command installs Debian's nginx-light, so a missing
binary fails the test with a message saying so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

NGINX_PATHS = ("/usr/sbin/nginx",)
DEBIAN_UWSGI_PARAMS = Path("/etc/nginx/uwsgi_params")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

# nginx's own uwsgi_params (as shipped in its conf/ directory), for machines without Debian's.
STANDARD_UWSGI_PARAMS = """\
uwsgi_param  QUERY_STRING       $query_string;
uwsgi_param  REQUEST_METHOD     $request_method;
uwsgi_param  CONTENT_TYPE       $content_type;
uwsgi_param  CONTENT_LENGTH     $content_length;

uwsgi_param  REQUEST_URI        $request_uri;
uwsgi_param  PATH_INFO          $document_uri;
uwsgi_param  DOCUMENT_ROOT      $document_root;
uwsgi_param  SERVER_PROTOCOL    $server_protocol;
uwsgi_param  REQUEST_SCHEME     $scheme;
uwsgi_param  HTTPS              $https if_not_empty;

uwsgi_param  REMOTE_ADDR        $remote_addr;
uwsgi_param  REMOTE_PORT        $remote_port;
uwsgi_param  SERVER_PORT        $server_port;
uwsgi_param  SERVER_NAME        $server_name;
"""

CONF_TEMPLATE = """\
{process}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;

events {{
    worker_connections 512;
}}

http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/temp/client_body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
    client_max_body_size 64m;
    uwsgi_read_timeout 20s;
    uwsgi_send_timeout 20s;
{servers}
}}
"""

SERVER_TEMPLATE = """
    server {{
        listen 127.0.0.1:{port};
        server_name 127.0.0.1;
        root {prefix}/html;
        location / {{
            include {params};
            uwsgi_pass {upstream};
        }}
    }}
"""


def find_nginx() -> str:
    """The nginx binary; fails the test (not a skip) when there is none."""
    for path in NGINX_PATHS:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("nginx")
    if found:
        return found
    pytest.fail("nginx not found (looked at /usr/sbin/nginx and on PATH): the uwsgi tests need "
                "Debian's nginx-light (apt-get install nginx-light; scripts/test.sh does it)",
                pytrace=False)


def free_port() -> int:
    """An ephemeral loopback port nobody listens on right now (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nginx_upstream(address: str) -> str:
    """A Drover address as logged (``unix:/path``, ``uwsgi://127.0.0.1:PORT``) for uwsgi_pass."""
    if address.startswith("unix:"):
        return address
    if address.startswith("uwsgi://"):
        return address[len("uwsgi://"):].rstrip("/")
    raise ValueError(f"not a uwsgi address: {address!r}")


class Nginx:
    """A running nginx (see the module docstring)."""

    def __init__(self, proc: subprocess.Popen[bytes], prefix: Path, ports: dict[str, int]):
        self.proc = proc
        self.prefix = prefix
        self.ports = ports

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text("utf-8", "replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)


def _wait_answering(nginx: Nginx, deadline: float) -> None:
    """Every port accepts a connection and sends back an HTTP status line."""
    for name, port in nginx.ports.items():
        last = ""
        while True:
            if nginx.proc.poll() is not None:
                pytest.fail(f"nginx exited with {nginx.proc.returncode} at startup:\n"
                            f"{nginx.error_log()}", pytrace=False)
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                    sock.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                    if sock.recv(16).startswith(b"HTTP/"):
                        break
                    last = "no status line"
            except OSError as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                nginx.stop()
                pytest.fail(f"nginx did not answer on {name} (port {port}) within "
                            f"{START_TIMEOUT} s ({last}):\n{nginx.error_log()}", pytrace=False)
            time.sleep(0.05)


def uwsgi_params(prefix: Path) -> str:
    """The path of a uwsgi_params file (Debian's, else nginx's standard one in ``prefix``)."""
    if DEBIAN_UWSGI_PARAMS.is_file():
        return str(DEBIAN_UWSGI_PARAMS)
    prefix.mkdir(parents=True, exist_ok=True)
    params = prefix / "uwsgi_params"
    params.write_text(STANDARD_UWSGI_PARAMS)
    return str(params)


def start_nginx(prefix: Path, upstreams: Mapping[str, str], *,
                user: str | None = None) -> Nginx:
    """Start nginx in ``prefix`` with a server per ``name -> Drover address`` (see above)."""
    params = uwsgi_params(prefix)
    ports = {name: free_port() for name in upstreams}
    servers = "".join(
        SERVER_TEMPLATE.format(port=ports[name], prefix=prefix, params=params,
                               upstream=nginx_upstream(address))
        for name, address in upstreams.items())
    return run_nginx(prefix, servers, ports, user=user)


def run_nginx(prefix: Path, servers: str, ports: Mapping[str, int], *,
              user: str | None = None) -> Nginx:
    """Run nginx with the caller's ``server`` (and ``upstream``) blocks inside ``http``;
    ``ports`` names the ports they listen on, each waited for (see the module docstring)."""
    binary = find_nginx()
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "temp").mkdir(exist_ok=True)
    (prefix / "html").mkdir(exist_ok=True)
    process = f"user {user};\nmaster_process on;" if user else "master_process off;"
    (prefix / "nginx.conf").write_text(CONF_TEMPLATE.format(prefix=prefix, servers=servers,
                                                            process=process))
    with open(prefix / "stderr.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", "nginx.conf",
             "-g", "daemon off;"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    nginx = Nginx(proc, prefix, dict(ports))
    try:
        _wait_answering(nginx, time.monotonic() + START_TIMEOUT)
    except BaseException:
        with contextlib.suppress(Exception):
            nginx.stop()
        raise
    return nginx
