"""The worker process: its loop threads and its main (control) thread, and the entry point
the master calls after fork (see the package docstring for the theory of operation)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from drover.body import BodyPool
from drover.config import Config
from drover.logs import log
from drover.protocols.forwarded import TrustedPeers
from drover.protocols.http import HttpLimits
from drover.sockets import Listener
from drover.worker.connection import Connection, UwsgiHandler
from drover.worker.loop_thread import LoopThread
from drover.wsgi import base_environ

EXIT_APP_LOAD = 3  # the worker could not load the app: the master must not respawn in a loop

WsgiApp = Callable[..., Iterable[bytes]]


class Worker:
    """The worker process: its loop threads and its main (control) thread."""

    def __init__(self, config: Config, listeners: list[Listener], app: WsgiApp,
                 worker_id: int, pipe: int) -> None:
        self.config = config
        self.listeners = listeners
        self.app = app
        self.worker_id = worker_id
        self.pipe = pipe
        # Request bodies kept in memory, shared by the loop threads (see drover.body).
        self.bodies = BodyPool(config.body_buffer_size, config.body_memory_limit)
        self.limits = HttpLimits(
            request_line=config.limit_request_line, fields=config.limit_request_fields,
            field_size=config.limit_request_field_size,
            header_block=config.limit_request_headers, body=config.limit_request_body,
            spill=config.body_buffer_size,
            bodies=self.bodies)
        self.served = 0  # requests answered, over all loop threads (approximate: no lock)
        self.max_requests = config.max_requests or -1
        self.retiring = False
        self.environs = {
            id(listener): base_environ(config.threads > 1, config.workers > 1)
            for listener in listeners}
        self.trusted_peers = TrustedPeers(config.forwarded_allow_ips
                                          or ("127.0.0.0/8", "::1/128"))
        self._uwsgi_peers: dict[str, bool] = {}
        self.uwsgi_networks: list[Any] = []
        if any(listener.protocol == "uwsgi" for listener in listeners):
            import ipaddress

            self.uwsgi_networks = [
                ipaddress.ip_network(net, strict=False)
                for net in (config.uwsgi_allow_from or ("127.0.0.0/8", "::1/128"))]
        self.threads = [LoopThread(self, i) for i in range(config.threads)]
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def wake(self) -> None:
        """Interrupt the main thread's wait (any thread)."""
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def factory_for(self, lt: LoopThread, listener: Listener) -> Callable[[], Connection]:
        environ = self.environs[id(listener)]
        if listener.protocol == "uwsgi":
            return lambda: UwsgiHandler(lt, environ)
        return lambda: Connection(lt, environ)

    def uwsgi_allowed(self, host: str) -> bool:
        """Is this peer address in --uwsgi-allow-from? Answers are cached per address."""
        allowed = self._uwsgi_peers.get(host)
        if allowed is None:
            import ipaddress

            try:
                address = ipaddress.ip_address(host.partition("%")[0])
                allowed = any(address in network for network in self.uwsgi_networks)
            except ValueError:
                allowed = False
            if len(self._uwsgi_peers) < 4096:
                self._uwsgi_peers[host] = allowed
        return allowed

    def recycle(self) -> None:
        """--max-requests reached (on a loop thread): retire; the master replaces us."""
        if not self.retiring:
            self.retiring = True
            log.info("worker %d served %d requests (--max-requests): recycling",
                     self.worker_id, self.served)
            os.kill(os.getpid(), signal.SIGHUP)

    def _accept(self, listener: Listener) -> None:
        """Main thread, threads > 1: accept what is queued, each to the least loaded loop."""
        threads = self.threads
        for _ in range(64):
            try:
                conn, _ = listener.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:  # EMFILE and the like: try again on the next wake-up
                log.warning("accept failed: %s", exc)
                return
            # (the loop's adopt_socket makes it non-blocking and sets TCP_NODELAY)
            # Fewest connections first (a burst spreads evenly); among equals, one not inside
            # the app right now.
            target = min(threads, key=lambda t: (t.assigned - t.released, t.in_app))
            target.assigned += 1
            target.loop.call_soon_threadsafe(target.adopt, conn, listener)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)  # only queue: the main loop acts (no work in handlers)

    def run(self) -> None:
        """The main thread: start loops, then signals and heartbeats until stopped."""
        wake_r = self._wake_r
        signal.set_wakeup_fd(self._wake_w)
        for handled in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
            signal.signal(handled, self._on_signal)
        for lt in self.threads:
            lt.thread.start()
        os.write(self.pipe, b"R")
        master = os.getppid()
        stopping = False
        accepting = {listener.sock.fileno(): listener for listener in self.listeners
                     if not self.threads[0].accepts_itself}
        next_beat = 0.0
        while True:
            try:
                ready, _, _ = select.select([wake_r, *accepting], [], [], 1.0)
            except InterruptedError:
                ready = []
            for fd in ready:
                if fd in accepting:
                    self._accept(accepting[fd])
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 64)
            while self._signals:
                signum = self._signals.pop(0)
                if signum == signal.SIGQUIT:
                    os._exit(0)
                if not stopping:
                    stopping = True
                    accepting.clear()
                    drain = signum == signal.SIGHUP  # retiring: reload, recycling, TTOU
                    log.info("worker %d %s", self.worker_id,
                             "retiring" if drain else "stopping gracefully")
                    for lt in self.threads:
                        lt.loop.call_soon_threadsafe(lt.begin_stop, drain)
            if stopping:
                if not any(lt.thread.is_alive() for lt in self.threads):
                    break
                continue
            if os.getppid() != master:
                log.warning("worker %d: master is gone, stopping", self.worker_id)
                self._signals.append(signal.SIGTERM)
                continue
            dead = [lt.index for lt in self.threads if not lt.thread.is_alive()]
            if dead:
                log.error("worker %d: loop thread(s) %s died; exiting", self.worker_id, dead)
                os._exit(1)
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + 1.0
                if all(now - lt.last_tick < 3.0 for lt in self.threads):
                    with contextlib.suppress(OSError):
                        os.write(self.pipe, b".")
        sys.stderr.flush()
        os._exit(0)


def load_worker_app(config: Config, listeners: list[Listener]) -> WsgiApp:
    """Import the app in the worker (no --preload), or the welcome page when none is given."""
    if not config.app and not config.mount:
        from drover.welcome import make_welcome_app

        return make_welcome_app([listener.display for listener in listeners])
    from drover.loader import load_configured_app, prepare_path

    prepare_path(config.chdir, config.pythonpath)
    return load_configured_app(config.app, config.mount)


def run_worker(config: Config, listeners: list[Listener], app: WsgiApp | None,
               worker_id: int, pipe: int) -> None:
    """Entry point in the child after fork; never returns."""
    try:
        import setproctitle

        setproctitle.setproctitle(f"{config.proc_name}: worker {worker_id} "
                                  f"[{config.app or 'welcome'}]")
    except ImportError:  # pragma: no cover - a hard dependency, but titles are cosmetic
        pass
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                   signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    # Meant for the master (an operator's "pkill -USR1 drover" reaches every process): never
    # a reason for a worker to die, not even while it loads the app.
    for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU,
                   signal.SIGWINCH):
        signal.signal(signum, signal.SIG_IGN)
    if app is None:
        from drover.loader import AppLoadError

        try:
            app = load_worker_app(config, listeners)
        except AppLoadError as exc:
            log.error("cannot load the app: %s", exc)
            sys.stderr.flush()
            os._exit(EXIT_APP_LOAD)
        except BaseException as exc:
            log.error("cannot load the app %r: importing it raised %s", config.app,
                      type(exc).__name__, exc_info=exc)
            sys.stderr.flush()
            os._exit(EXIT_APP_LOAD)
    try:
        Worker(config, listeners, app, worker_id, pipe).run()
    except BaseException:
        log.exception("worker %d failed", worker_id)
        sys.stderr.flush()
        os._exit(1)


