"""The worker process: its loop threads and its main (control) thread, and the entry point
the master calls after fork (see the package docstring for the theory of operation)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from drover import logs
from drover.access import AccessLog
from drover.access import wanted as access_wanted
from drover.body import BodyPool
from drover.config import Config
from drover.harakiri import HarakiriWatch
from drover.logs import log
from drover.protocols.forwarded import TrustedPeers
from drover.protocols.http import HttpLimits
from drover.recycling import max_requests_for
from drover.sockets import Listener
from drover.stats import scoreboard
from drover.worker.connection import Connection, UwsgiHandler
from drover.worker.loop_thread import LoopThread
from drover.worker.title import ProcessTitle
from drover.wsgi import base_environ

if TYPE_CHECKING:
    from drover.static import StaticFiles

EXIT_APP_LOAD = 3  # the worker could not load the app: the master must not respawn in a loop

WsgiApp = Callable[..., Iterable[bytes]]


class Worker:
    """The worker process: its loop threads and its main (control) thread."""

    def __init__(self, config: Config, listeners: list[Listener], app: WsgiApp,
                 worker_id: int, generation: int, pipe: int) -> None:
        self.config = config
        self.listeners = listeners
        self.app = app
        self.worker_id = worker_id
        self.label = f"worker {worker_id} (pid {os.getpid()}, generation {generation})"
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
        self.max_requests = max_requests_for(config)
        self.retiring = False  # asked the master for a replacement
        self.harakiri_count = 0  # requests ended by --harakiri (read by stats)
        self.harakiri: HarakiriWatch | None = None
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
        self.static: StaticFiles | None = None
        if config.static_map:  # imported only when used: it adds to every worker's start-up
            from drover.static import StaticFiles

            self.static = StaticFiles.from_config(config)
        self.access_log = AccessLog(config, worker_id) if access_wanted(config) else None
        self.stats = scoreboard.mine()  # None: --stats off
        self.title = ProcessTitle(config.proc_name, worker_id)
        self.threads = [LoopThread(self, i) for i in range(config.threads)]
        if config.harakiri:
            self.harakiri = HarakiriWatch(self)
        self._signals: list[int] = []
        self._next_observation = 0.0
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

    def tell_master(self, message: bytes) -> None:
        """A message on the pipe to the master (any thread: one write of under PIPE_BUF
        bytes is atomic)."""
        with contextlib.suppress(OSError):
            os.write(self.pipe, message)

    def recycle(self) -> None:
        """--max-requests reached (on a loop thread): ask the master for a replacement and
        serve on; it tells us to retire (SIGHUP) once the replacement is ready."""
        if not self.retiring:
            self.retiring = True
            self.tell_master(f"Qit served {self.served} requests (--max-requests "
                             f"{self.max_requests})\n".encode())

    def _accept(self, listener: Listener, limit: int = 64) -> int:
        """Main thread, threads > 1: accept what is queued, each to the least loaded loop.
        Returns how many were taken (``limit``: maybe more are waiting)."""
        threads = self.threads
        for taken in range(limit):
            try:
                conn, _ = listener.sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return taken
            except OSError as exc:  # EMFILE and the like: try again on the next wake-up
                log.warning("accept failed: %s", exc)
                return taken
            # (the loop's adopt_socket makes it non-blocking and sets TCP_NODELAY)
            # Never a thread stuck in a request harakiri ended, if another is left (what it
            # holds is lost if the worker is killed); then fewest connections first (a burst
            # spreads evenly); among equals, one not inside the app right now.
            stuck = self.harakiri.claimed if self.harakiri is not None else {}
            target = min(threads, key=lambda t: (t.index in stuck, t.assigned - t.released,
                                                 t.in_app is not None))
            target.assigned += 1
            target.loop.call_soon_threadsafe(target.adopt, conn, listener)
        return limit

    def _code_changed(self, paths: list[str]) -> None:
        """--reload (the watcher's thread): a source file changed; the master reloads."""
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        log.info("%s: %s changed (--reload)", self.label, shown)
        self.tell_master(b"C")

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)  # only queue: the main loop acts (no work in handlers)

    def run(self) -> None:
        """The main thread: start loops, then signals and heartbeats until stopped."""
        wake_r = self._wake_r
        signal.set_wakeup_fd(self._wake_w)
        for handled in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                        signal.SIGUSR1):
            signal.signal(handled, self._on_signal)
        for lt in self.threads:
            lt.thread.start()
        if self.config.reload:
            from drover.reloader import ModuleWatcher

            ModuleWatcher(self._code_changed).start()
        os.write(self.pipe, b"R")
        harakiri = self.harakiri
        wait = 1.0
        master = os.getppid()
        stopping = False
        accepting = {listener.sock.fileno(): listener for listener in self.listeners
                     if not self.threads[0].accepts_itself}
        next_beat = 0.0
        while True:
            try:
                ready, _, _ = select.select([wake_r, *accepting], [], [], wait)
            except InterruptedError:
                ready = []
            for fd in ready:
                if fd in accepting:
                    self._accept(accepting[fd])
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 64)
            while self._signals:
                signum = self._signals.pop(0)
                if signum == signal.SIGUSR1:
                    logs.reopen()  # the master forwards USR1 after reopening its own
                    continue
                if signum == signal.SIGQUIT:
                    self._exit(0)
                if not stopping:
                    stopping = True
                    drain = signum == signal.SIGHUP  # retiring: reload, recycling, TTOU
                    if not drain:
                        # Shutting down: what waits in the listen queue reached us before the
                        # signal and is served (handed to the loops before they stop).
                        for listener in accepting.values():
                            while self._accept(listener) == 64:
                                pass
                    accepting.clear()
                    log.info("%s %s", self.label,
                             "retiring" if drain else "stopping gracefully")
                    for lt in self.threads:
                        lt.loop.call_soon_threadsafe(lt.begin_stop, drain)
            self._observe()
            if stopping:
                # Threads stuck in a request harakiri already answered have nothing left to
                # finish: they do not hold up the stop.
                if all(not lt.thread.is_alive()
                       or (harakiri is not None and lt.index in harakiri.claimed)
                       for lt in self.threads):
                    break
                if harakiri is not None:
                    wait = min(1.0, harakiri.check(time.monotonic()))
                continue
            if os.getppid() != master:
                log.warning("%s: master is gone, stopping", self.label)
                self._signals.append(signal.SIGTERM)
                continue
            dead = [lt.index for lt in self.threads if not lt.thread.is_alive()]
            if dead:
                log.error("%s: loop thread(s) %s died; exiting", self.label, dead)
                self._exit(1)
            now = time.monotonic()
            if harakiri is not None:
                wait = min(1.0, harakiri.check(now))
            if now >= next_beat:
                next_beat = now + 1.0
                # With --harakiri a loop inside the app is harakiri's to end: the heartbeat
                # (--timeout) stops only for a loop stuck elsewhere.
                if all(now - lt.last_tick < 3.0 or (harakiri is not None and lt.in_app)
                       for lt in self.threads):
                    self.tell_master(b".")
        self._exit(0)

    def _observe(self) -> None:
        """Main thread, about once a second: publish the loop threads' counters on the
        scoreboard and show what the worker is doing in its process title."""
        now = time.monotonic()
        if now < self._next_observation:
            return
        self._next_observation = now + 1.0
        if self.stats is not None:
            self.stats.publish(self.threads, logs.dropped_total())
        self.title.show(self.threads, now)

    def _exit(self, status: int) -> None:
        if self.stats is not None:
            self.stats.publish(self.threads, logs.dropped_total())
        logs.flush()
        os._exit(status)


def load_worker_app(config: Config, listeners: list[Listener]) -> WsgiApp:
    """Import the app in the worker (no --preload), or the welcome page when none is given."""
    if not config.app and not config.mount:
        from drover.welcome import make_welcome_app

        return make_welcome_app([listener.display for listener in listeners])
    from drover.loader import load_configured_app, prepare_path

    prepare_path(config.chdir, config.pythonpath)
    return load_configured_app(config.app, config.mount)


def run_worker(config: Config, listeners: list[Listener], app: WsgiApp | None,
               worker_id: int, generation: int, pipe: int) -> None:
    """Entry point in the child after fork; never returns."""
    try:
        import setproctitle

        setproctitle.setproctitle(f"{config.proc_name}: worker {worker_id} "
                                  f"[{config.app_title()}]")
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
        from drover.loader import describe_load_failure

        try:
            app = load_worker_app(config, listeners)
        except BaseException as exc:
            log.error("%s", describe_load_failure(config.app, exc))
            logs.flush()
            os._exit(EXIT_APP_LOAD)
    try:
        Worker(config, listeners, app, worker_id, generation, pipe).run()
    except BaseException:
        log.exception("worker %d (pid %d, generation %d) failed", worker_id, os.getpid(),
                      generation)
        logs.flush()
        os._exit(1)


