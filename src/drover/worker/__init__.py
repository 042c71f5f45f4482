"""The worker process: event loops that accept connections, parse requests and call the app.

Theory of operation
-------------------
The master forks a worker and calls ``run_worker`` in the child. The worker starts ``--threads``
loop threads; each runs its own event loop (``drover.loop``) and calls the app *directly on its loop
thread*: no thread hop per request. A blocking app blocks only its own thread's loop while the
others keep serving, so a worker serves up to ``--threads`` blocking requests at once.

Accepting: with one thread (the default, for apps that never block) the loop accepts on the
inherited listening sockets itself. With several, the worker's main thread
accepts and hands each connection to the least loaded loop (one hop per *connection*), so that
simultaneous clients spread over the threads instead of piling onto whichever loop woke first.

The worker's main thread does no request work: besides accepting (threads > 1) it waits for
signals (TERM/INT: graceful stop, HUP: retire with keep-alive drain, QUIT: immediate exit) and,
once a second, writes a heartbeat byte to the master's pipe if every loop thread has ticked
recently (or, with ``--harakiri``, is inside app code, which the harakiri watch on this same
thread looks after: ``drover.harakiri``). A loop stuck past ``--timeout`` stops the heartbeat
and the master replaces the worker. Past ``--max-requests`` the worker asks the master for a
replacement and serves on until told to retire (``drover.recycling``); with ``--reload`` a
watcher thread reports changed source files (``drover.reloader``).

Per connection (``Connection``): bytes go to the protocol's sans-I/O parser, which queues
events. Events are handled strictly in order, one response at a time, so pipelined requests are
answered in order. A request's body is complete before the app runs (the parser buffers it,
spilling large ones to a temporary file), so a slow client never holds the app. Responses
respect backpressure: when the transport's buffer passes its high-water mark, iteration of the
app's body stops until the buffer drains (``resume_writing``), so a 1 GiB response costs a
few hundred KiB of memory. ``wsgi.file_wrapper`` over a regular file goes out with
``os.sendfile``.

A loop ticks once a second: it refreshes the cached ``Date`` header and drops connections past
their deadline (header, body/write progress, or keep-alive idle).

Modules: ``process`` (the process and its main thread: signals, heartbeat, accepting for
several threads), ``loop_thread`` (one event loop and its connections), ``connection`` (one
client connection: parse, call the app, write), ``sendfile`` (files sent with os.sendfile:
wsgi.file_wrapper, and the static files of ``drover.static``, answered before the app).
"""

from __future__ import annotations

from drover.worker.process import EXIT_APP_LOAD, run_worker

__all__ = ["EXIT_APP_LOAD", "run_worker"]
