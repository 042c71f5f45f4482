"""Drover: a fast, strict application server for Python WSGI apps."""

__version__ = "0.1.0"
