"""Scenario 2: a small Flask JSON endpoint."""

from flask import Flask, jsonify
from flask.wrappers import Response

app = Flask(__name__)


@app.get("/")
def index() -> Response:
    return jsonify(message="Hello, World!", server="bench", items=[1, 2, 3])
