"""The master process: binds sockets, forks workers and keeps them healthy. No request work.

Theory of operation
-------------------
The master's loop waits (``select``) on a self-pipe that signal handlers write to, and on one
pipe per worker. Signal handlers only queue the signal number; the loop then dispatches to
``handle_<name>``, reads worker messages (``R``: booted, ``.``: heartbeat), reaps exited
children, kills workers that are stuck, and brings the worker count back to its target.

- A worker that dies is replaced. A worker that dies before booting is replaced after a backoff
  that doubles (0.1 s up to 10 s), so a crashing app does not make the master spin.
- A worker that exits with EXIT_APP_LOAD could not import the app. Before any worker ever
  booted, that ends the master (status 1): retrying cannot help. During a reload it aborts the
  reload and the old workers keep serving.
- SIGHUP: a new generation of workers is started (re-importing the app unless --preload); as
  each new worker reports that it booted, one old worker is told to stop gracefully. The
  listening sockets stay open in the master throughout, so no connection is refused. Old
  workers are retired with SIGHUP, which lets idle keep-alive connections drain rather than
  cutting them (SIGTERM, for shutdown, closes idle connections at once).
- SIGTERM/SIGINT: workers stop gracefully within --graceful-timeout, then are killed; exit 0.
  SIGQUIT: workers are told to exit at once.
- SIGTTIN/SIGTTOU: one worker more or less.

The master imports neither the protocol nor the WSGI code: workers import them after fork.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import select
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from drover.config import Config
from drover.logs import log
from drover.sockets import Listener, bind, close_listeners

EXIT_APP_LOAD = 3  # keep in step with drover.worker.process.EXIT_APP_LOAD (not imported: see above)

SIGNAL_NAMES: dict[int, str] = {
    signal.SIGTERM: "term", signal.SIGINT: "int", signal.SIGQUIT: "quit", signal.SIGHUP: "hup",
    signal.SIGTTIN: "ttin", signal.SIGTTOU: "ttou", signal.SIGCHLD: "chld",
    signal.SIGUSR1: "usr1", signal.SIGUSR2: "usr2", signal.SIGWINCH: "winch"}
_WORKER_IGNORES = frozenset({signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH})


@dataclass
class WorkerProcess:
    pid: int
    worker_id: int
    generation: int
    pipe: int
    started: float
    last_beat: float
    booted: bool = False
    kill_at: float = 0.0  # set when told to stop: SIGKILL after this


class Master:
    """Runs in the master process; ``run()`` returns the exit status."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.listeners: list[Listener] = []
        self.app: Any = None
        self.workers: dict[int, WorkerProcess] = {}
        self.target = config.workers
        self.generation = 0
        self.reload_from: int | None = None  # the generation being replaced, during a reload
        self.ever_booted = False
        self.failures = 0
        self.next_spawn = 0.0
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_status = 0
        self._signals: list[int] = []

    # -- startup ------------------------------------------------------------------------------

    def _bind_all(self) -> bool:
        config = self.config
        for protocol, addresses, flag in (("http", config.http, "--http"),
                                          ("uwsgi", config.uwsgi, "--uwsgi")):
            for address in addresses:
                try:
                    listener = bind(protocol, address, config.backlog, config.chmod_socket)
                except OSError as exc:
                    log.error("cannot listen on %s (%s): %s", address, flag,
                              exc.strerror or exc)
                    return False
                self.listeners.append(listener)
                log.info("listening at %s (%s)", listener.display, protocol)
        return True

    def _preload(self) -> bool:
        from drover.loader import AppLoadError, load_configured_app, prepare_path

        try:
            prepare_path(self.config.chdir, self.config.pythonpath)
            self.app = load_configured_app(self.config.app, self.config.mount)
        except AppLoadError as exc:
            log.error("cannot load the app: %s", exc)
            return False
        except BaseException as exc:
            log.error("cannot load the app %r: importing it raised %s", self.config.app,
                      type(exc).__name__, exc_info=exc)
            return False
        log.info("preloaded %s", self.config.app)
        return True

    def run(self) -> int:
        _raise_fd_limit()
        try:
            import setproctitle

            setproctitle.setproctitle(f"{self.config.proc_name}: master "
                                      f"[{self.config.app or 'welcome'}]")
        except ImportError:  # pragma: no cover
            pass
        if not self._bind_all():
            close_listeners(self.listeners, unlink=True)
            return 1
        if (self.config.preload and (self.config.app or self.config.mount)
                and not self._preload()):
            close_listeners(self.listeners, unlink=True)
            return 1
        # Nearly every app loads OpenSSL (an HTTPS client, a database driver with TLS, Flask
        # through its dependencies). Initialised here, before the fork, its pages are shared by
        # all workers; initialised by each worker's first "import ssl", each pays again (3 MiB
        # of libcrypto touched per worker: Flask's worker 32.0 -> 30.5 MiB RSS).
        import ssl  # noqa: F401
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_w)
        for signum in SIGNAL_NAMES:
            signal.signal(signum, self._queue_signal)
        log.info("drover %s master starting %d worker(s) x %d thread(s) for %s",
                 _version(), self.target, self.config.threads, self.config.app or "welcome page")
        try:
            self._loop(wake_r)
        finally:
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            close_listeners(self.listeners, unlink=True)
        log.info("master exiting (status %d)", self.exit_status)
        return self.exit_status

    def _queue_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)  # only queue; the loop acts (no work in handlers)

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self, wake_r: int) -> None:
        while True:
            if not self.stopping:
                self._manage_workers()
            timeout = 1.0
            if self.next_spawn:
                timeout = max(0.0, min(timeout, self.next_spawn - time.monotonic()))
            pipes = {w.pipe: w for w in self.workers.values()}
            try:
                ready, _, _ = select.select([wake_r, *pipes], [], [], timeout)
            except InterruptedError:
                ready = []
            for fd in ready:
                if fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 256)
                else:
                    self._read_worker(pipes[fd])
            while self._signals:
                signum = self._signals.pop(0)
                getattr(self, "handle_" + SIGNAL_NAMES[signum])()
            self._reap()
            self._kill_stuck()
            if self.stopping and not self.workers:
                return

    def _read_worker(self, worker: WorkerProcess) -> None:
        try:
            data = os.read(worker.pipe, 512)
        except OSError:
            data = b""
        if not data:
            return  # closed: reaping handles the exit
        worker.last_beat = time.monotonic()
        if b"R" in data and not worker.booted:
            worker.booted = True
            self.ever_booted = True
            self.failures = 0
            log.info("worker %d (pid %d) ready", worker.worker_id, worker.pid)
            self._retire_one_old()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            os.close(worker.pipe)
            code = os.waitstatus_to_exitcode(status)
            self._worker_exited(worker, code)

    def _worker_exited(self, worker: WorkerProcess, code: int) -> None:
        told_to_stop = bool(worker.kill_at)
        how = f"exit status {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        if told_to_stop and code in (0, -signal.SIGKILL, -signal.SIGTERM, -signal.SIGHUP):
            log.info("worker %d (pid %d) stopped", worker.worker_id, worker.pid)
            return
        if self.stopping:
            log.info("worker %d (pid %d) exited (%s)", worker.worker_id, worker.pid, how)
            return
        if code == EXIT_APP_LOAD:
            if not self.ever_booted:
                log.error("the app cannot be loaded (see above); stopping")
                self.exit_status = 1
                self._begin_stop(signal.SIGTERM)
                return
            if self.reload_from is not None and worker.generation == self.generation:
                log.error("reload failed: the new code cannot be loaded (see above); "
                          "the old workers keep serving")
                self._abort_reload()
                return
        if code == 0 and not worker.booted:
            pass
        elif code == 0:
            log.info("worker %d (pid %d) exited; replacing it", worker.worker_id, worker.pid)
        else:
            log.error("worker %d (pid %d) died (%s); replacing it", worker.worker_id,
                      worker.pid, how)
        if not worker.booted or time.monotonic() - worker.started < 1.0:
            self.failures += 1
            delay = min(10.0, 0.1 * 2 ** (self.failures - 1))
            self.next_spawn = time.monotonic() + delay
            if self.failures > 1:
                log.warning("worker failing at start; next try in %.1f s", delay)

    def _kill_stuck(self) -> None:
        now = time.monotonic()
        timeout = self.config.timeout
        for worker in list(self.workers.values()):
            if worker.kill_at:
                if now > worker.kill_at:
                    log.warning("worker %d (pid %d) did not stop in time; killing",
                                worker.worker_id, worker.pid)
                    _kill(worker.pid, signal.SIGKILL)
                    worker.kill_at = now + 3600
            elif timeout and now - worker.last_beat > max(timeout, 2.0 if worker.booted else 60):
                log.error("worker %d (pid %d) %s for %.0f s (--timeout); killing it",
                          worker.worker_id, worker.pid,
                          "stuck" if worker.booted else "not booted", now - worker.last_beat)
                _kill(worker.pid, signal.SIGKILL)
                worker.kill_at = now + 3600

    def _current(self) -> list[WorkerProcess]:
        return [w for w in self.workers.values()
                if w.generation == self.generation and not w.kill_at]

    def _manage_workers(self) -> None:
        current = self._current()
        if len(current) > self.target:
            for worker in sorted(current, key=lambda w: -w.worker_id)[:len(current) -
                                                                          self.target]:
                self._stop_worker(worker, signal.SIGHUP)
        elif len(current) < self.target and time.monotonic() >= self.next_spawn:
            self.next_spawn = 0.0
            used = {w.worker_id for w in current}
            free = (i for i in range(1, self.target + 1) if i not in used)
            for _ in range(self.target - len(current)):
                self._spawn(next(free))
                if self.failures:
                    break  # one at a time while workers fail at start

    def _spawn(self, worker_id: int) -> None:
        read_fd, write_fd = os.pipe()
        # Signals are blocked across fork: until the child has reset the master's handlers, a
        # signal meant for it would land in the master's queue copy and be lost. Once
        # unblocked in the child, a pending TERM ends it by default action.
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNAL_NAMES)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNAL_NAMES)
            raise
        if pid == 0:  # the child
            try:
                signal.set_wakeup_fd(-1)
                for signum in SIGNAL_NAMES:
                    # USR1, USR2 and WINCH never end a worker (run_worker ignores them too):
                    # ignored from here, not from after importing the worker's code.
                    signal.signal(signum, signal.SIG_IGN if signum in _WORKER_IGNORES
                                  else signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNAL_NAMES)
                os.close(read_fd)
                for other in self.workers.values():
                    os.close(other.pipe)
                from drover.worker import run_worker

                run_worker(self.config, self.listeners, self.app, worker_id, write_fd)
            finally:
                os._exit(1)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNAL_NAMES)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        now = time.monotonic()
        self.workers[pid] = WorkerProcess(pid, worker_id, self.generation, read_fd, now, now)
        log.info("booting worker %d (pid %d)", worker_id, pid)

    def _stop_worker(self, worker: WorkerProcess, signum: int) -> None:
        if not worker.kill_at:
            worker.kill_at = time.monotonic() + self.config.graceful_timeout + 1.0
            _kill(worker.pid, signum)

    def _retire_one_old(self) -> None:
        """During a reload: a new worker booted, so one old worker may go."""
        if self.reload_from is None:
            return
        old = [w for w in self.workers.values()
               if w.generation != self.generation and not w.kill_at]
        if old:
            self._stop_worker(old[0], signal.SIGHUP)
        if len(old) <= 1 and all(w.booted for w in self._current()):
            log.info("reload complete")
            self.reload_from = None

    def _abort_reload(self) -> None:
        assert self.reload_from is not None
        for worker in self._current():
            self._stop_worker(worker, signal.SIGTERM)
        self.generation = self.reload_from
        self.reload_from = None

    def _begin_stop(self, signum: int) -> None:
        self.stopping = True
        for worker in self.workers.values():
            worker.kill_at = 0.0
            self._stop_worker(worker, signum)
            if signum == signal.SIGQUIT:
                worker.kill_at = time.monotonic() + 2.0

    # -- signal handlers (called from the loop, never from the signal context) ---------------

    def handle_term(self) -> None:
        if not self.stopping:
            log.info("graceful stop requested")
            self._begin_stop(signal.SIGTERM)

    handle_int = handle_term

    def handle_quit(self) -> None:
        log.info("immediate stop requested")
        self._begin_stop(signal.SIGQUIT)

    def handle_hup(self) -> None:
        if self.stopping:
            return
        if self.config.preload and self.config.app:
            log.warning("reloading workers; with --preload the code in the master is not "
                        "re-read: restart Drover to load new code")
        log.info("reloading: starting a new generation of %d worker(s)", self.target)
        if self.reload_from is None:
            self.reload_from = self.generation
        self.generation += 1
        self.failures = 0
        self.next_spawn = 0.0

    def handle_ttin(self) -> None:
        self.target += 1
        log.info("SIGTTIN: %d worker(s)", self.target)

    def handle_ttou(self) -> None:
        if self.target > 1:
            self.target -= 1
        log.info("SIGTTOU: %d worker(s)", self.target)

    def handle_chld(self) -> None:
        pass  # reaping happens in the loop

    def handle_usr1(self) -> None:
        log.info("SIGUSR1 ignored (no log file to reopen)")

    def handle_usr2(self) -> None:
        log.info("SIGUSR2 ignored")

    def handle_winch(self) -> None:
        pass  # a terminal resize: nothing to do (its default action is already to ignore)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def _raise_fd_limit() -> None:
    """Many keep-alive connections need many descriptors: use the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _version() -> str:
    from drover import __version__

    return __version__


def run(config: Config) -> int:
    sys.stdout.flush()
    return Master(config).run()
