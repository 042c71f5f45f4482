"""drover.loop on real sockets (socket pairs and TCP on 127.0.0.1): reading, buffered writing
with backpressure, close and abort, hang-ups, accepting, callbacks across threads and timers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest

from drover.loop import Loop, Server, Transport, adopt_socket

PATTERN = bytes(range(256)) * 256  # 64 KiB


class Recorder:
    """A protocol that records what the transport tells it; hooks let a test act."""

    def __init__(self, on_data: Callable[[Recorder, bytes], None] | None = None,
                 keep_open_on_eof: bool = False) -> None:
        self.transport: Transport | None = None
        self.received = b""
        self.events: list[str] = []
        self.lost: Exception | str | None = "not lost"
        self.on_data = on_data
        self.keep_open_on_eof = keep_open_on_eof

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.on_data is not None:
            self.on_data(self, data)

    def eof_received(self) -> bool:
        self.events.append("eof")
        return self.keep_open_on_eof

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append("lost")
        self.lost = exc

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")


class _Until:
    """Stops the loop once ``done()`` (checked every 10 ms) or at the deadline. A class, not a
    closure that reschedules itself: that would be a reference cycle, and one test counts
    them."""

    def __init__(self, loop: Loop, done: Callable[[], bool], deadline: float) -> None:
        self.loop, self.done, self.deadline = loop, done, deadline

    def __call__(self) -> None:
        if self.done() or time.monotonic() > self.deadline:
            self.loop.stop()
        else:
            self.loop.call_later(0.01, self)


def run_until(loop: Loop, done: Callable[[], bool], timeout: float = 5.0) -> None:
    """Run ``loop`` in this thread until ``done()`` or fail after ``timeout`` seconds."""
    loop.call_soon(_Until(loop, done, time.monotonic() + timeout))
    loop.run_forever()
    assert done(), "timed out"


@pytest.fixture
def loop() -> Loop:
    return Loop()


def pair(loop: Loop, protocol: Recorder) -> socket.socket:
    server_side, client = socket.socketpair()
    adopt_socket(loop, server_side, lambda: protocol)
    return client


def connected(loop: Loop) -> tuple[Recorder, socket.socket, Transport]:
    """A recording protocol on the loop, the client socket, and the protocol's transport."""
    proto = Recorder()
    client = pair(loop, proto)
    transport = proto.transport
    assert transport is not None
    return proto, client, transport


def test_data_is_delivered_and_eof_closes(loop: Loop) -> None:
    proto = Recorder(on_data=lambda p, d: p.transport.write(d.upper()))  # type: ignore[union-attr]
    client = pair(loop, proto)
    client.sendall(b"hello")
    run_until(loop, lambda: proto.received == b"hello")
    client.settimeout(2)
    assert client.recv(100) == b"HELLO"
    client.shutdown(socket.SHUT_WR)
    run_until(loop, lambda: "lost" in proto.events)
    assert proto.events == ["made", "eof", "lost"] and proto.lost is None
    assert client.recv(100) == b""  # closed by the server after eof_received() said so


def test_writes_buffer_pause_and_resume_and_arrive_in_order(loop: Loop) -> None:
    proto = Recorder()
    client = pair(loop, proto)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    transport = proto.transport
    assert transport is not None
    transport.set_write_buffer_limits(256 * 1024)
    written = 0
    while "pause" not in proto.events:  # the client reads nothing yet
        transport.write(PATTERN)
        written += len(PATTERN)
        assert written < 256 * 1024 * 1024, "never paused"
    assert transport.get_write_buffer_size() > 256 * 1024
    received = bytearray()

    def read_all() -> None:
        client.settimeout(5)
        while len(received) < written:
            received.extend(client.recv(1 << 20))

    reader = threading.Thread(target=read_all)
    reader.start()
    run_until(loop, lambda: transport.get_write_buffer_size() == 0)
    reader.join(5)
    assert proto.events.count("pause") == 1 and proto.events[-1] == "resume"
    assert len(received) == written
    assert received == PATTERN * (written // len(PATTERN))


def test_close_sends_what_is_buffered_first(loop: Loop) -> None:
    proto, client, transport = connected(loop)
    for _ in range(64):  # 4 MiB: more than the socket buffers take at once
        transport.write(PATTERN)
    assert transport.get_write_buffer_size() > 0
    transport.close()
    assert transport.is_closing()
    transport.write(b"ignored after close")
    received = bytearray()

    def read_to_eof() -> None:
        client.settimeout(5)
        while piece := client.recv(1 << 20):
            received.extend(piece)

    reader = threading.Thread(target=read_to_eof)
    reader.start()
    run_until(loop, lambda: "lost" in proto.events)
    reader.join(5)
    assert bytes(received) == PATTERN * 64 and proto.lost is None


def test_abort_drops_the_buffer_and_reports_lost_once(loop: Loop) -> None:
    proto, client, transport = connected(loop)
    for _ in range(64):
        transport.write(PATTERN)
    transport.close()  # waiting for the buffer to drain...
    transport.abort()  # ...then cut
    run_until(loop, lambda: "lost" in proto.events)
    loop.run_ready()
    assert proto.events.count("lost") == 1 and transport.get_write_buffer_size() == 0
    client.settimeout(2)
    total = 0
    while piece := client.recv(1 << 20):
        total += len(piece)
    assert total < 64 * len(PATTERN)


def test_paused_reading_delivers_nothing_until_resumed(loop: Loop) -> None:
    proto, client, transport = connected(loop)
    transport.pause_reading()
    client.sendall(b"waiting")
    deadline = time.monotonic() + 0.2
    run_until(loop, lambda: time.monotonic() > deadline)
    assert proto.received == b""
    transport.resume_reading()
    run_until(loop, lambda: proto.received == b"waiting")


def test_hang_up_while_nothing_is_wanted_does_not_spin(loop: Loop) -> None:
    proto, client, transport = connected(loop)
    transport.pause_reading()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    client.close()
    cpu = time.thread_time()
    deadline = time.monotonic() + 0.5
    run_until(loop, lambda: time.monotonic() > deadline)
    assert time.thread_time() - cpu < 0.25, "the loop spun on a hang-up nobody asked for"
    transport.resume_reading()  # now the loss is noticed
    run_until(loop, lambda: "lost" in proto.events)


def test_server_accepts_sets_nodelay_and_stops_accepting(loop: Loop) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    accepted: list[Recorder] = []

    def factory() -> Recorder:
        accepted.append(Recorder())
        return accepted[-1]

    server = Server(loop, listener, factory)
    server.start()
    first = socket.create_connection(("127.0.0.1", port))
    run_until(loop, lambda: len(accepted) == 1)
    transport = accepted[0].transport
    assert transport is not None
    sock = transport.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert transport.get_extra_info("peername") == first.getsockname()
    server.stop()
    second = socket.create_connection(("127.0.0.1", port))  # waits in the backlog
    deadline = time.monotonic() + 0.2
    run_until(loop, lambda: time.monotonic() > deadline)
    assert len(accepted) == 1
    server.start()
    run_until(loop, lambda: len(accepted) == 2)
    for s in (first, second, listener):
        s.close()


def test_call_soon_threadsafe_wakes_a_waiting_loop(loop: Loop) -> None:
    woke: list[float] = []

    def later() -> None:
        time.sleep(0.1)
        loop.call_soon_threadsafe(lambda: (woke.append(time.monotonic()), loop.stop()))

    started = time.monotonic()
    threading.Thread(target=later).start()
    loop.run_forever()  # no timers and no sockets: only the wake-up can end this
    assert woke and woke[0] - started < 2.0


def test_callbacks_and_timers_run_in_order(loop: Loop) -> None:
    order: list[str] = []
    loop.call_later(0.05, order.append, "timer 50ms")
    loop.call_later(0.01, order.append, "timer 10ms")
    loop.call_soon(lambda: (order.append("soon 1"), loop.call_soon(order.append, "next pass")))
    loop.call_soon(order.append, "soon 2")
    loop.call_later(0.1, loop.stop)
    loop.run_forever()
    assert order == ["soon 1", "soon 2", "next pass", "timer 10ms", "timer 50ms"]


def test_an_error_in_a_callback_is_logged_and_the_loop_goes_on(
        loop: Loop, caplog: pytest.LogCaptureFixture) -> None:
    ran: list[bool] = []

    def boom() -> None:
        raise RuntimeError("deliberate")

    loop.call_soon(boom)
    loop.call_soon(lambda: (ran.append(True), loop.stop()))
    loop.run_forever()
    assert ran == [True]
    assert "deliberate" in caplog.text


def answered(client: socket.socket) -> bool:
    try:
        return bool(client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False


def test_closed_connections_leave_no_reference_cycles() -> None:
    """A worker's connections are freed by reference counting when they close: cycles would
    wait for a full collection, and a burst of connections would grow the worker for good."""
    import gc
    import resource

    from drover.config import load_config
    from drover.sockets import bind
    from drover.worker.process import Worker

    def hello(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "2")])
        return [b"hi"]

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1024:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    config = load_config(["--http", "127.0.0.1:0", "--workers", "1", "x:y"], {})
    listener = bind("http", "127.0.0.1:0", 128, None)
    worker = Worker(config, [listener], hello, 1, 0, -1)
    lt = worker.threads[0]
    clients = []
    for _ in range(100):
        server_side, client = socket.socketpair()
        adopt_socket(lt.loop, server_side, worker.factory_for(lt, listener))
        clients.append(client)
    lt.loop.run_ready()
    gc.collect()
    gc.disable()
    try:
        for client in clients:
            client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        run_until(lt.loop, lambda: all(answered(client) for client in clients))
        for client in clients:
            client.close()
        run_until(lt.loop, lambda: not lt.connections)
        lt.loop.run_ready()
        assert gc.collect() == 0
    finally:
        gc.enable()
        listener.sock.close()
        lt.loop.close()
