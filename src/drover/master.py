"""The master process: binds sockets, forks workers and keeps them healthy. No request work.

Theory of operation
-------------------
The master's loop waits (``select``) on a self-pipe that signal handlers write to, and on one
pipe per worker. Signal handlers only queue the signal number; the loop then dispatches to
``handle_<name>``, reads worker messages, reaps exited children, kills workers that are stuck,
and brings the worker count back to its target.

Worker messages are single bytes: ``R`` booted, ``.`` heartbeat, ``H``/``F``/``K`` harakiri
fired, freed, kill me (``drover.harakiri``), ``C`` a source file changed (``--reload``,
``drover.reloader``), and ``Q`` with a reason up to a newline: recycle me
(``drover.recycling``). Every line about a worker names its number, pid and generation: during
a reload or a recycle, an old and a new worker share a number.

- A worker that dies is replaced. A worker that dies before booting is replaced after a backoff
  that doubles (0.1 s up to 10 s), so a crashing app does not make the master spin.
- A worker that exits with EXIT_APP_LOAD could not import the app. Before any worker ever
  booted, that ends the master (status 1): retrying cannot help. During a reload it aborts the
  reload and the old workers keep serving.
- SIGHUP (also --touch-reload and --reload): a new generation of workers is started
  (re-importing the app unless --preload), the first one alone, so that code that does not
  load fails once; as each new worker reports that it booted, one old worker is told to stop
  gracefully. The listening sockets stay open in the master throughout, so no connection is
  refused. Old workers are retired with SIGHUP, which lets idle keep-alive connections drain
  rather than cutting them (SIGTERM, for shutdown, closes idle connections at once).
- Recycling (--max-requests, --reload-on-rss, --max-worker-lifetime): the worker's replacement
  is forked first, and the worker retires once it is ready.
- SIGTERM/SIGINT: workers stop gracefully within --graceful-timeout, then are killed; exit 0.
  A second SIGINT (Ctrl-C twice), or SIGQUIT: workers are told to exit at once.
- SIGTTIN/SIGTTOU: one worker more or less.
- SIGUSR2, and SIGHUP with --preload (so that new code is really loaded): a new master is
  executed that inherits the listening sockets (``drover.upgrade``); once its workers are up,
  this master retires its own as a reload does and exits, leaving the sockets and the pidfile
  to it. If the new master fails to start, this one keeps serving.

Startup order (``run``): umask, pidfile claimed, sockets bound or inherited (USR2, systemd),
daemonized, pidfile written, privileges dropped, app preloaded, workers. Each step is a call
into ``privileges``, ``sockets`` or ``systemd``; any failure is one log line naming the option,
exit status 1, and nothing left behind. When the first generation of workers is up the master
is *ready*: it tells systemd (READY=1), the command that daemonized it, or its predecessor.

The master imports neither the protocol nor the WSGI code: workers import them after fork.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drover import __version__, logs, privileges, upgrade
from drover.config import Config
from drover.harakiri import FIRED, Escalation
from drover.logs import log
from drover.privileges import Identity, Pidfile, StartupError
from drover.recycling import RecyclePolicy
from drover.reloader import PollingWatch
from drover.sockets import Listener, bind, close_listeners, inherited_listeners, unlink_unix_sockets
from drover.systemd import Notifier

if TYPE_CHECKING:
    from drover.stats.server import StatsServer

EXIT_APP_LOAD = 3  # keep in step with drover.worker.process.EXIT_APP_LOAD (not imported: see above)

SIGNAL_NAMES: dict[int, str] = {
    signal.SIGTERM: "term", signal.SIGINT: "int", signal.SIGQUIT: "quit", signal.SIGHUP: "hup",
    signal.SIGTTIN: "ttin", signal.SIGTTOU: "ttou", signal.SIGCHLD: "chld",
    signal.SIGUSR1: "usr1", signal.SIGUSR2: "usr2", signal.SIGWINCH: "winch"}
# Ignored by workers (they are the master's to act on); keep in step with drover.worker.process.
WORKER_IGNORES = frozenset({signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU,
                            signal.SIGWINCH})


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
    recycling: str = ""  # why it is being replaced (it retires once its replacement is ready)
    replaces: WorkerProcess | None = None  # the recycled worker this one replaces
    harakiri_at: float = 0.0  # when a request of it passed --harakiri (0.0: none stuck)
    harakiri_count: int = 0  # requests of this worker ended by harakiri (read by stats)
    messages: bytes = b""  # an incomplete message read from its pipe

    slot: int = -1  # its place on the stats scoreboard (--stats)

    @property
    def label(self) -> str:
        return f"worker {self.worker_id} (pid {self.pid}, generation {self.generation})"


class Master:
    """Runs in the master process; ``run()`` returns the exit status."""

    def __init__(self, config: Config, argv: list[str] | None = None) -> None:
        self.config = config
        self.argv = list(sys.argv[1:] if argv is None else argv)  # for a successor (USR2)
        try:
            self.launch_cwd = os.getcwd()  # where a successor is started (USR2)
        except OSError:
            self.launch_cwd = "/"
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
        self.quitting = False  # stopping at once (SIGQUIT, a second SIGINT)
        self.stop_deadline = 0.0
        self.exit_status = 0
        self._signals: list[int] = []
        self.identity: Identity | None = None
        self.pidfile: Pidfile | None = None
        self.daemon: privileges.Daemon | None = None
        self.notifier = Notifier(os.environ)
        self.predecessor: upgrade.Predecessor | None = None  # we were started by USR2
        self.successor: upgrade.Successor | None = None  # we started one (USR2)
        self.handed_over = False  # the successor is ready: sockets and pidfile are its own
        self.ready = False
        self.recycle = RecyclePolicy(config)
        self.escalation = Escalation(config.harakiri_grace)
        self.touch_watch = PollingWatch(config.touch_reload) if config.touch_reload else None
        self.next_policy_check = 0.0
        # Requests ended by harakiri, per worker number, over all its processes (never reset,
        # as uWSGI's harakiri_count: read by stats).
        self.harakiri_count: dict[int, int] = {}
        self.stats: StatsServer | None = None

    # -- startup ------------------------------------------------------------------------------

    def _bind_all(self) -> bool:
        config = self.config
        wanted = [(protocol, address, index)
                  for protocol, addresses in (("http", config.http), ("uwsgi", config.uwsgi))
                  for index, address in enumerate(addresses)]
        try:
            self.listeners.extend(inherited_listeners(os.environ, [w[:2] for w in wanted]))
        except (ValueError, OSError) as exc:
            log.error("cannot use the inherited sockets: %s", exc)
            return False
        taken = {(listener.protocol, listener.source) for listener in self.listeners}
        owner = None
        if config.chown_socket:
            owner = privileges.resolve_owner(config.chown_socket)
        elif self.identity is not None:
            owner = (self.identity.uid, self.identity.gid)
        for protocol, address, index in wanted:
            if (protocol, address) in taken:
                continue
            try:
                listener = bind(protocol, address, config.backlog, config.chmod_socket, owner)
            except OSError as exc:
                log.error("cannot listen on %s (--%s from %s): %s", address, protocol,
                          config.origin(protocol, index), exc.strerror or exc)
                return False
            self.listeners.append(listener)
        return True

    def _start(self) -> bool:
        """Everything before the workers, in order (see the module docstring)."""
        config = self.config
        self.predecessor = upgrade.predecessor_from(os.environ)
        try:
            privileges.apply_umask(config.umask)
            self.identity = privileges.target_identity(config.uid, config.gid)
            if self.identity is not None:
                privileges.check_can_switch(self.identity)
            if config.pidfile:
                self.pidfile = Pidfile(config.pidfile)
                self.pidfile.claim(self.predecessor.pid if self.predecessor else 0)
        except StartupError as exc:
            log.error("%s", exc)
            return False
        if not self._bind_all():
            return False
        try:
            if config.daemonize and self.predecessor is None:
                self.daemon = privileges.daemonize(config.daemonize)
            for listener in self.listeners:  # (after daemonizing: into its log file)
                log.info("listening at %s (%s)", listener.display, listener.protocol)
            if self.pidfile is not None and self.predecessor is None:
                self.pidfile.write()
            if self.identity is not None:
                if self.pidfile is not None:
                    self.pidfile.hand_to(self.identity)
                for listener in self.listeners:
                    if listener.owned and listener.address.is_unix:
                        privileges.warn_unremovable("socket", listener.address.path,
                                                    self.identity)
                privileges.drop_privileges(self.identity)
        except StartupError as exc:
            log.error("%s", exc)
            return False
        except OSError as exc:
            log.error("--uid/--gid: cannot switch to uid %s gid %s: %s", config.uid or "-",
                      config.gid or "-", exc.strerror or exc)
            return False
        return True

    def _predecessor_serving(self) -> bool:
        """A master started by USR2 that never became ready: the sockets are still its
        predecessor's, which keeps serving on them."""
        return self.predecessor is not None and not self.ready and self.predecessor.alive()

    def _cleanup(self) -> None:
        """On every exit the master controls: its sockets and pidfile go, unless handed over."""
        keep = self.handed_over or self.successor is not None or self._predecessor_serving()
        close_listeners(self.listeners, unlink=not keep)
        if self.pidfile is not None:
            self.pidfile.remove()
        self.notifier.close()

    def _preload(self) -> bool:
        from drover.loader import describe_load_failure, load_configured_app, prepare_path

        try:
            prepare_path(self.config.chdir, self.config.pythonpath)
            self.app = load_configured_app(self.config.app, self.config.mount)
        except BaseException as exc:
            log.error("%s", describe_load_failure(self.config.app, exc))
            return False
        log.info("preloaded %s", self.config.app)
        return True

    def run(self) -> int:
        privileges.raise_fd_limit()
        try:
            import setproctitle

            setproctitle.setproctitle(f"{self.config.proc_name}: master "
                                      f"[{self.config.app_title()}]")
        except ImportError:  # pragma: no cover
            pass
        # Handlers first: a signal during startup (binding, loading the app) is queued and acted
        # on by the loop, rather than killing the master with its sockets and pidfile left.
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_w)
        for signum in SIGNAL_NAMES:
            signal.signal(signum, self._queue_signal)
        try:
            if not self._start():
                return 1
            if (self.config.preload and (self.config.app or self.config.mount)
                    and not self._preload()):
                return 1
            # Nearly every app loads OpenSSL (an HTTPS client, a database driver with TLS, Flask
            # through its dependencies). Initialised here, before the fork, its pages are shared
            # by all workers; initialised by each worker's first "import ssl", each pays again
            # (3 MiB of libcrypto touched per worker: Flask's worker 32.0 -> 30.5 MiB RSS).
            import ssl  # noqa: F401
            if self.config.stats and not self._start_stats():
                return 1
            log.info("drover %s master starting %d worker(s) x %d thread(s) for %s",
                     __version__, self.target, self.config.threads,
                     self.config.app_description())
            for path in self.config.touch_reload:
                if not os.path.exists(path):
                    log.warning("--touch-reload %s does not exist yet: creating it reloads",
                                path)
            if self.config.reload and self.config.preload:
                log.warning("--reload with --preload: the code imported in the master is not "
                            "re-read when it changes")
            self._loop(wake_r)
        finally:
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)
            self._cleanup()
            if self.stats is not None:
                self.stats.close()
        log.info("master exiting (status %d)", self.exit_status)
        return self.exit_status

    def _start_stats(self) -> bool:
        """--stats: the scoreboard and the stats server, before the first fork."""
        from drover.stats.server import StatsServer, WorkerView

        def workers() -> list[WorkerView]:
            # Every live process: during a reload a worker id has an old and a new one.
            return [WorkerView(w.worker_id, w.pid, w.slot, w.booted and not w.kill_at)
                    for w in self.workers.values()]

        try:
            self.stats = StatsServer(self.config, self.listeners, workers,
                                     f"drover {__version__}")
        except OSError as exc:
            log.error("cannot serve stats on %s (--stats): %s", self.config.stats,
                      exc.strerror or exc)
            return False
        log.info("stats server at %s%s", self.stats.display,
                 " (http)" if self.config.stats_http else "")
        return True

    def _queue_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)  # only queue; the loop acts (no work in handlers)

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self, wake_r: int) -> None:
        while True:
            if not self.stopping:
                self._manage_workers()
            timeout = 1.0
            now = time.monotonic()
            if self.next_spawn:
                timeout = max(0.0, min(timeout, self.next_spawn - now))
            watchdog = self.notifier.watchdog_timeout(now)
            if watchdog is not None:
                timeout = min(timeout, watchdog)
            pipes = {w.pipe: w for w in self.workers.values()}
            waits = [wake_r, *pipes]
            if self.successor is not None and self.successor.pipe >= 0:
                waits.append(self.successor.pipe)
            stats = self.stats
            ready: list[int]
            writable: list[int]
            try:
                if stats is None:
                    ready, writable, _ = select.select(waits, [], [], timeout)
                else:
                    ready, writable, _ = select.select(
                        [*waits, *stats.readable()], stats.writable(), [], timeout)
            except InterruptedError:
                ready, writable = [], []
            if stats is not None:
                stats.handle(ready, writable)
            for fd in ready:
                if fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 256)
                elif fd in pipes:
                    self._read_worker(pipes[fd])
                elif self.successor is not None and fd == self.successor.pipe:
                    self._read_successor()
            while self._signals:
                signum = self._signals.pop(0)
                getattr(self, "handle_" + SIGNAL_NAMES[signum])()
            self._reap()
            self._kill_stuck()
            self.notifier.tick(time.monotonic())
            if self.stopping and not self.workers:
                return
            now = time.monotonic()
            if now >= self.next_policy_check and not self.stopping:
                self.next_policy_check = now + 1.0
                self._check_policies(now)

    def _check_policies(self, now: float) -> None:
        """Once a second: --touch-reload files, --reload-on-rss, --max-worker-lifetime."""
        if self.touch_watch is not None:
            changed = self.touch_watch.check(self.config.touch_reload)
            if changed:
                log.info("%s changed (--touch-reload)", ", ".join(changed))
                self.handle_hup()
        if self.recycle.active:
            for worker in self._current():
                if worker.booted and not worker.recycling:
                    reason = self.recycle.reason(worker.pid, worker.started, now)
                    if reason:
                        self._begin_recycle(worker, reason)

    def _read_worker(self, worker: WorkerProcess) -> None:
        try:
            data = os.read(worker.pipe, 512)
        except OSError:
            data = b""
        if not data:
            return  # closed: reaping handles the exit
        now = worker.last_beat = time.monotonic()
        data = worker.messages + data
        worker.messages = b""
        pos = 0
        while pos < len(data):
            code = data[pos:pos + 1]
            pos += 1
            if code == b".":
                continue
            if code == b"R":
                self._worker_ready(worker)
            elif code in b"HFK":
                self._harakiri_report(worker, code, now)
            elif code == b"C":
                self._code_changed(worker)
            elif code == b"Q":
                end = data.find(b"\n", pos)
                if end < 0:
                    worker.messages = data[pos - 1:]  # the rest comes with the next read
                    return
                reason = data[pos:end].decode("utf-8", "replace")
                pos = end + 1
                if worker.generation == self.generation and not self.stopping:
                    self._begin_recycle(worker, reason)

    def _worker_ready(self, worker: WorkerProcess) -> None:
        """``worker`` booted: retire the worker it replaces (recycling) or an old one
        (reload)."""
        if worker.booted:
            return
        worker.booted = True
        self.ever_booted = True
        self.failures = 0
        old = worker.replaces
        worker.replaces = None
        if old is not None:
            log.info("%s ready; retiring %s", worker.label, old.label)
            self._stop_worker(old, signal.SIGHUP, self.recycle.mercy)
        else:
            log.info("%s ready", worker.label)
        self._retire_one_old()
        if not self.ready and not self.stopping and sum(
                w.booted for w in self._current()) >= self.target:
            self._on_ready()

    def _begin_recycle(self, worker: WorkerProcess, reason: str) -> None:
        """Replace ``worker``: its replacement is forked now (it no longer counts towards
        --workers) and it retires once that one is ready (``_worker_ready``)."""
        if worker.recycling or worker.kill_at:
            return
        worker.recycling = reason
        log.info("recycling %s: %s; it serves on until its replacement is ready",
                 worker.label, reason)

    def _harakiri_report(self, worker: WorkerProcess, code: bytes, now: float) -> None:
        kill = self.escalation.report(worker, code, now)
        if code == FIRED:
            number = worker.worker_id
            self.harakiri_count[number] = self.harakiri_count.get(number, 0) + 1
            if self.stats is not None:
                from drover.stats import scoreboard

                scoreboard.bump_harakiri(number)
        if kill and not worker.kill_at:
            log.error("killing %s: its request is still running --harakiri-grace %g s "
                      "after harakiri", worker.label, self.config.harakiri_grace)
            self._kill_now(worker)

    def _code_changed(self, worker: WorkerProcess) -> None:
        """--reload: a worker of the current generation saw a source file change (the old
        generation's reports are about code the new one has imported already)."""
        if worker.generation == self.generation and not self.stopping:
            log.info("source files changed (--reload)")
            self.handle_hup()

    def _on_ready(self) -> None:
        """The first generation of workers is up: tell whoever waits for it."""
        self.ready = True
        status = f"{self.target} worker(s) serving"
        log.info("ready: %s", status)
        if self.predecessor is not None:
            if self.pidfile is not None:
                try:
                    self.pidfile.write()
                except StartupError as exc:
                    log.warning("%s", exc)
            self.notifier.ready_as_successor(status)
            self.predecessor.ready()
        else:
            self.notifier.ready(status)
        if self.daemon is not None:
            self.daemon.ready()

    def _read_successor(self) -> None:
        """The new master (USR2) wrote on its pipe: ready, or it is gone."""
        successor = self.successor
        assert successor is not None
        outcome = successor.outcome()
        if outcome is None:
            return
        if outcome:
            log.info("the new master (pid %d) is ready; retiring this one (pid %d)",
                     successor.pid, os.getpid())
            self.handed_over = True
            self.notifier.stop_watchdog()  # WATCHDOG_PID is the new master's now
            if not self.stopping:
                self._begin_stop(signal.SIGHUP)  # as a reload: idle keep-alives drain
            return
        self.successor = None
        log.error("the new master (pid %d) exited before it was ready (see above); this "
                  "master (pid %d) keeps serving", successor.pid, os.getpid())
        self.notifier.ready(f"{self.target} worker(s) serving (the upgrade failed)")

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
                continue  # a successor master (USR2): its pipe tells how it went
            os.close(worker.pipe)
            if self.stats is not None:
                self.stats.release(worker.slot)
            code = os.waitstatus_to_exitcode(status)
            self._worker_exited(worker, code)

    def _worker_exited(self, worker: WorkerProcess, code: int) -> None:
        how = f"exit status {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        for other in self.workers.values():
            if other.replaces is worker:
                other.replaces = None  # gone before its replacement was ready
        if worker.kill_at:  # told to stop (or killed): never replaced as such
            if code in (0, -signal.SIGKILL, -signal.SIGTERM, -signal.SIGHUP):
                log.info("%s stopped", worker.label)
            else:
                log.info("%s stopped (%s)", worker.label, how)
            return
        if self.stopping:
            log.info("%s exited (%s)", worker.label, how)
            return
        if code == EXIT_APP_LOAD:
            if not self.ever_booted:
                log.error("the app cannot be loaded (see above); stopping")
                self.exit_status = 1
                self._begin_stop(signal.SIGTERM)
                return
            # The reload fails when its first worker cannot load the code. Once one new
            # worker has booted, the code loads: a later failure is a worker's own, retried.
            if (self.reload_from is not None and worker.generation == self.generation
                    and not any(w.booted for w in self._current())):
                log.error("reload failed: the new code cannot be loaded (see above); "
                          "the old workers keep serving")
                self._abort_reload()
                return
        replaced = worker.generation == self.generation and not worker.recycling
        if worker.recycling:
            then = "its replacement is on its way"
        elif replaced:
            then = "replacing it"
        else:
            then = "not replaced: the reload replaces its generation"
        if code == 0 and not worker.booted:
            pass
        elif code == 0:
            log.info("%s exited; %s", worker.label, then)
        else:
            log.error("%s died (%s); %s", worker.label, how, then)
        if not replaced:
            return
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
                    log.warning("%s did not stop in time; killing it", worker.label)
                    self._kill_now(worker)
            elif self.escalation.overdue(worker, now):
                log.error("killing %s: its request is still running --harakiri-grace %g s "
                          "after harakiri", worker.label, self.config.harakiri_grace)
                self._kill_now(worker)
            elif timeout and now - worker.last_beat > max(timeout, 2.0 if worker.booted else 60):
                log.error("%s %s for %.0f s (--timeout); killing it", worker.label,
                          "stuck" if worker.booted else "not booted", now - worker.last_beat)
                self._kill_now(worker)

    def _kill_now(self, worker: WorkerProcess) -> None:
        _kill(worker.pid, signal.SIGKILL)
        worker.kill_at = time.monotonic() + 3600

    def _current(self) -> list[WorkerProcess]:
        """The workers that count towards --workers (neither leaving nor being replaced)."""
        return [w for w in self.workers.values()
                if w.generation == self.generation and not w.kill_at and not w.recycling]

    def _manage_workers(self) -> None:
        current = self._current()
        if len(current) > self.target:
            for worker in sorted(current, key=lambda w: -w.worker_id)[:len(current) -
                                                                          self.target]:
                self._stop_worker(worker, signal.SIGHUP)
        elif len(current) < self.target and time.monotonic() >= self.next_spawn:
            if self.reload_from is not None and current and not any(w.booted for w in current):
                return  # a reload's first worker must boot before the others are forked
            self.next_spawn = 0.0
            used = {w.worker_id for w in current}
            free = (i for i in range(1, self.target + 1) if i not in used)
            # Recycled workers waiting for their replacement, by number.
            leaving = {w.worker_id: w for w in self.workers.values()
                       if w.recycling and not w.kill_at and w.generation == self.generation
                       and not any(o.replaces is w for o in self.workers.values())}
            for _ in range(self.target - len(current)):
                worker_id = next(free)
                new = self._spawn(worker_id)
                new.replaces = leaving.get(worker_id)
                if self.failures or (self.reload_from is not None and not current):
                    break  # one at a time while workers fail at start, or a reload begins

    def _spawn(self, worker_id: int) -> WorkerProcess:
        read_fd, write_fd = os.pipe()
        slot = self.stats.claim(worker_id) if self.stats is not None else -1
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
                    # Signals meant for the master (an operator's "pkill -USR1 drover") are
                    # ignored from here on, not from when run_worker is reached: importing the
                    # worker's modules takes a while, and their default action is to die.
                    signal.signal(signum, signal.SIG_IGN if signum in WORKER_IGNORES
                                  else signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNAL_NAMES)
                os.close(read_fd)
                for other in self.workers.values():
                    os.close(other.pipe)
                if self.stats is not None:
                    from drover.stats import scoreboard

                    scoreboard.attach(slot)
                    self.stats.forget_in_child()
                from drover.worker import run_worker

                run_worker(self.config, self.listeners, self.app, worker_id, self.generation,
                           write_fd)
            finally:
                os._exit(1)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNAL_NAMES)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        now = time.monotonic()
        worker = WorkerProcess(pid, worker_id, self.generation, read_fd, now, now,
                               slot=slot)
        self.workers[pid] = worker
        if self.stats is not None:
            self.stats.started(slot, pid)
        log.info("booting %s", worker.label)
        return worker

    def _stop_worker(self, worker: WorkerProcess, signum: int,
                     within: float | None = None) -> None:
        """Tell ``worker`` to stop; it is killed if still there ``within`` seconds (default:
        --graceful-timeout) and a second later."""
        if not worker.kill_at:
            if within is None:
                within = self.config.graceful_timeout
            worker.kill_at = time.monotonic() + within + 1.0
            logs.flush()  # our lines first: the log keeps the order of events across processes
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
            self.notifier.ready(f"{self.target} worker(s) serving (reloaded)")

    def _abort_reload(self) -> None:
        assert self.reload_from is not None
        for worker in self._current():
            self._stop_worker(worker, signal.SIGTERM)
        self.generation = self.reload_from
        self.reload_from = None

    def _begin_stop(self, signum: int) -> None:
        self.stopping = True
        self.quitting = self.quitting or signum == signal.SIGQUIT
        if not (self.handed_over or self.successor is not None or self._predecessor_serving()):
            self.notifier.stopping("stopping")
            unlink_unix_sockets(self.listeners)
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

    def handle_int(self) -> None:
        """Ctrl-C: a graceful stop; pressed again, a stop at once."""
        if self.stopping and not self.quitting:
            log.info("SIGINT again: stopping at once")
            self._begin_stop(signal.SIGQUIT)
        elif not self.stopping:
            log.info("graceful stop requested (SIGINT; again to stop at once)")
            self._begin_stop(signal.SIGTERM)

    def handle_quit(self) -> None:
        log.info("immediate stop requested")
        self._begin_stop(signal.SIGQUIT)

    def handle_hup(self) -> None:
        if self.stopping:
            return
        if self.config.preload and (self.config.app or self.config.mount):
            # The code lives in the master: only a new master loads new code.
            self._start_successor("SIGHUP with --preload")
            return
        log.info("reloading: starting a new generation of %d worker(s)", self.target)
        self.notifier.reloading("reloading workers")
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
        else:
            log.info("SIGTTOU ignored: already down to one worker")

    def handle_chld(self) -> None:
        pass  # reaping happens in the loop

    def handle_usr1(self) -> None:
        """Reopen the log files (after logrotate moved them), then tell workers to."""
        log.info("SIGUSR1: reopening log files")
        logs.reopen()
        for worker in self.workers.values():
            if worker.booted:  # a booting worker opens the files after its handlers are set
                _kill(worker.pid, signal.SIGUSR1)

    def handle_usr2(self) -> None:
        if not self.stopping:
            self._start_successor("SIGUSR2")

    def _start_successor(self, why: str) -> None:
        if self.successor is not None:
            log.warning("%s ignored: a new master (pid %d) was already started", why,
                        self.successor.pid)
            return
        try:
            self.successor = upgrade.start_successor(self.argv, self.launch_cwd, self.listeners,
                                                     SIGNAL_NAMES)
        except OSError as exc:
            log.error("%s: cannot start a new master: %s", why, exc.strerror or exc)
            return
        log.info("%s: starting a new master (pid %d) that inherits the sockets", why,
                 self.successor.pid)
        self.notifier.reloading(f"starting a new master (pid {self.successor.pid})")

    def handle_winch(self) -> None:
        pass  # a terminal resize: nothing to do (its default action is already to ignore)


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def run(config: Config, argv: list[str] | None = None) -> int:
    """Runs the master; ``argv`` (the command line) is what a successor is started with."""
    sys.stdout.flush()
    return Master(config, argv).run()
