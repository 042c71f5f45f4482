"""The page Drover serves when no app is given: proof it works, and what to do next."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable
from typing import Any

from drover import __version__

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Drover is running</title>
<style>
 body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 42rem; margin: 3rem auto;
        padding: 0 1rem; color: #1d2330; }}
 h1 {{ font-size: 1.8rem; margin-bottom: .2rem; }}
 .ok {{ color: #1a7f37; }}
 code, pre {{ font-family: ui-monospace, monospace; background: #f2f4f7; border-radius: 4px; }}
 code {{ padding: .1rem .3rem; }}
 pre {{ padding: .8rem 1rem; overflow-x: auto; }}
 footer {{ margin-top: 2.5rem; color: #667085; font-size: .9rem; }}
</style>
</head>
<body>
<h1><span class="ok">&#10003;</span> Drover is running</h1>
<p>Drover {version} answered this request. No application was given, so this is its
built-in welcome page.</p>
<h2>Listening on</h2>
<ul>
{addresses}
</ul>
<h2>Serve your app</h2>
<p>Give Drover your WSGI callable, as <code>module:callable</code>, a file path, or a
factory call:</p>
<pre>drover --http :8000 mysite.wsgi:application --workers 4 --threads 8
drover --http :8000 app.py
drover --http :8000 'myapp:create_app()'</pre>
<p>Put nginx in front with <code>uwsgi_pass</code> using <code>--uwsgi /run/app.sock</code>.
Run <code>drover --help</code> for every option.</p>
<footer>Drover {version}</footer>
</body>
</html>
"""


def make_welcome_app(addresses: list[str]) -> Callable[..., Iterable[bytes]]:
    """Build the welcome WSGI app (runs in the worker)."""
    items = "\n".join(f"<li><code>{html.escape(a)}</code></li>" for a in addresses)
    page = _PAGE.format(version=__version__, addresses=items).encode("utf-8")
    headers = [("Content-Type", "text/html; charset=utf-8"),
               ("Content-Length", str(len(page)))]
    not_found = b"Not found. Drover is serving its welcome page at /.\n"

    def welcome(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ["PATH_INFO"] not in ("/", "/index.html"):
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"),
                                             ("Content-Length", str(len(not_found)))])
            return [not_found]
        start_response("200 OK", list(headers))
        return [page]

    return welcome
