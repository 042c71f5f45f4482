"""Static-file scenarios of the benchmark harness: the files, and how each peer serves them.

The harness (harness.py) wires these into its server and scenario tables. Every server serves
the same folder (made once per run by ``make_files``) under ``/static/``:

- Drover: ``--static-map /static=DIR`` in front of the hello app.
- nginx: ``location /static/ { alias DIR/; }`` with sendfile and tcp_nopush, one worker process
  (nginx is the server measured here, so it runs on the server core).
- WhiteNoise (under Gunicorn gthread, one worker): ``bench/apps/static_whitenoise.py``.
- Granian: its static mount, ``--static-path-route /static --static-path-mount DIR``.
"""

from __future__ import annotations

import os
from pathlib import Path

PREFIX = "/static"
FILES = {"10k.bin": 10 * 1024, "1m.bin": 1024 * 1024}


def make_files(folder: Path) -> Path:
    """The served folder with its files (random bytes, so nothing compresses them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in FILES.items():
        path = folder / name
        if not path.exists() or path.stat().st_size != size:
            path.write_bytes(os.urandom(size))
        path.chmod(0o644)
    # nginx's worker runs as an unprivileged user when started as root: let it in.
    for directory in (folder.parent, folder):
        directory.chmod(0o755)
    return folder


def drover_args(folder: str) -> list[str]:
    return ["--static-map", f"{PREFIX}={folder}"]


def granian_args(folder: str) -> list[str]:
    return ["--static-path-route", PREFIX, "--static-path-mount", folder]


def gunicorn_env_args(folder: str) -> list[str]:
    """Gunicorn passes it to the WhiteNoise app module (bench/apps/static_whitenoise.py)."""
    return ["--env", f"BENCH_STATIC_DIR={folder}"]


def nginx_config(prefix: Path, host: str, port: int, folder: str) -> str:
    """nginx serving ``folder`` at /static/ as a production site would (sendfile, tcp_nopush,
    no access log); its other locations answer like the hello app."""
    temp = prefix / "tmp"
    for sub in ("body", "proxy", "uwsgi", "fastcgi", "scgi"):
        (temp / sub).mkdir(parents=True, exist_ok=True)
    return f"""worker_processes 1;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{
    worker_connections 8192;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    default_type application/octet-stream;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    uwsgi_temp_path {temp}/uwsgi;
    fastcgi_temp_path {temp}/fastcgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen {host}:{port} backlog=4096;
        location {PREFIX}/ {{
            alias {folder}/;
        }}
        location / {{
            return 200 "Hello, World!";
        }}
    }}
}}
"""


def nginx_command(binary: str, prefix: Path, host: str, port: int, folder: str) -> list[str]:
    """Write the config under ``prefix`` and return nginx's command line (in the foreground)."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(prefix, host, port, folder))
    return [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf),
            "-g", "daemon off;"]
