"""A real Flask app for Drover's black-box tests.

``app`` is built by ``create_app()``; ``validated_app`` is ``app`` behind
``wsgiref.validate.validator`` (use it for routes that do not read a body: Werkzeug reads an
input-terminated stream with ``read()`` and no size, which the validator forbids).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any
from wsgiref.validate import validator

from flask import (
    Flask,
    Response,
    abort,
    jsonify,
    make_response,
    redirect,
    request,
    stream_with_context,
    url_for,
)

READ_CHUNK = 64 * 1024


def digest(data: bytes) -> dict[str, Any]:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def create_app(name: str = "drover-flask-test") -> Flask:
    """Build the test app; ``name`` is echoed by ``/`` so a test can tell factories apart."""
    app = Flask(__name__)
    app.config["APP_NAME"] = name

    @app.get("/")
    def index() -> Response:
        return Response(f"Hello from Flask ({app.config['APP_NAME']})\n", mimetype="text/plain")

    @app.get("/args")
    def args() -> Response:
        return jsonify(request.args.to_dict(flat=False))

    @app.post("/form")
    def form() -> Response:
        return jsonify({"form": request.form.to_dict(flat=False),
                        "content_type": request.mimetype})

    @app.post("/json")
    def json_echo() -> Response:
        return jsonify({"echo": request.get_json()})

    @app.post("/upload")
    def upload() -> Response:
        f = request.files.get("file")
        if f is None:
            abort(400, "no 'file' field")
        data = f.read()
        return jsonify({**digest(data), "filename": f.filename,
                        "form": request.form.to_dict(flat=False)})

    @app.post("/chunked")
    def chunked() -> Response:
        # Read the raw stream in pieces, as an app handling a large upload would.
        hasher, size = hashlib.sha256(), 0
        while chunk := request.stream.read(READ_CHUNK):
            hasher.update(chunk)
            size += len(chunk)
        return jsonify({"size": size, "sha256": hasher.hexdigest(),
                        "content_length": request.environ.get("CONTENT_LENGTH"),
                        "transfer_encoding": request.headers.get("Transfer-Encoding")})

    @app.post("/data")
    def data() -> Response:
        return jsonify(digest(request.get_data()))

    @app.get("/stream")
    def stream() -> Response:
        n = request.args.get("n", 5, type=int)
        delay = request.args.get("delay_ms", 0, type=int) / 1000

        @stream_with_context
        def generate() -> Iterator[str]:
            # request is only usable here thanks to stream_with_context.
            label = request.args.get("label", "chunk")
            for i in range(n):
                if i and delay:
                    time.sleep(delay)
                yield f"{label} {i}\n"

        return Response(generate(), mimetype="text/plain")

    @app.get("/cookies/set")
    def set_cookies() -> Response:
        response = make_response(jsonify({"set": sorted(request.args)}))
        for key, value in request.args.items():
            response.set_cookie(key, value, httponly=True)
        return response

    @app.get("/cookies")
    def get_cookies() -> Response:
        return jsonify(dict(request.cookies))

    @app.get("/redirect")
    def go_home() -> Response:
        return redirect(url_for("index"))

    @app.get("/error")
    def error() -> Response:
        raise RuntimeError("flask_app: deliberate failure")

    @app.get("/whoami")
    def whoami() -> Response:
        return jsonify({"url": request.url, "host": request.host, "scheme": request.scheme,
                        "remote_addr": request.remote_addr, "path": request.path,
                        "method": request.method})

    return app


app = create_app()
validated_app = validator(app)
