"""The compiled round trip (``pymc.speedups.exchange``, issue 19): a command's send and
its first recv in one call that releases the GIL once, on a plain socket.

It must be invisible: every test runs each scenario on both paths -- "compiled" (the
exchange, and a check that it was used) and "pure" (the Python socket calls it replaces,
which are the reference) -- and asserts the same user-visible outcome: the same value, the
same exception (type and errno), the connection closed after any failure, the deadline
bounding the whole call. Under ``PYMC_NO_EXTENSIONS=1`` only the pure path runs.
"""

from __future__ import annotations

import errno
import itertools
import resource
import signal
import socket
import threading
import time
from typing import Any, Iterator, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.faultproxy import FaultProxy
from support.helpers import KINDS, one_node_client, tcp
from support.servers import MemcachedProcess
from test_deadline import SlowReader as _SlowReader

import pymc
import pymc.client
import pymc.transport.connect
import pymc.transport.connection
from pymc import (
    Client,
    MemcacheNetworkError,
    MemcacheTimeoutError,
    MemcacheUnexpectedCloseError,
)

COMPILED = pymc.transport.COMPILED_EXCHANGE
_tags = itertools.count()


def tag() -> str:
    return f"ex{next(_tags)}-{time.monotonic_ns() % 10**9}"


@pytest.fixture(params=["compiled", "pure"])
def path(request: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[List[int]]:
    """Which round trip new connections take; yields a list whose one item counts the
    compiled exchanges made (it must be > 0 on the compiled path when a command ran)."""
    calls = [0]
    if request.param == "pure":
        monkeypatch.setattr(pymc.transport.connect, "COMPILED_EXCHANGE", None)
    else:
        if COMPILED is None:
            pytest.skip("the compiled exchange is not in use (pure build or not Linux)")
        real = COMPILED

        def counting(sock: Any, data: bytes, started: float) -> bytes:
            calls[0] += 1
            return real(sock, data, started)

        monkeypatch.setattr(pymc.transport.connection, "_exchange", counting)
    yield calls
    if request.param == "compiled":
        assert calls[0] > 0, "the compiled exchange was never used"


def wire_value(key: bytes, value: bytes, flags: int = 0) -> bytes:
    return b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (key, flags, len(value), value)


class SlowReader(_SlowReader):
    """test_deadline's SlowReader, which first answers one ``get`` (END), so that a client
    is connected, in step, before its large request: that one takes the hot path."""

    def _drain(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        line = b""
        try:
            while not line.endswith(b"\r\n"):
                piece = conn.recv(1)
                if not piece:
                    return
                line += piece
            conn.sendall(b"END\r\n")
        except OSError:
            return
        super()._drain(conn)


# --------------------------------------------------------------------------- results


@pytest.mark.parametrize("kind", KINDS)
def test_values_and_replies_are_the_same_on_both_paths(
    memcached: MemcachedProcess, path: List[int], kind: str
) -> None:
    client = one_node_client(kind, tcp(memcached))
    key = tag()
    for value in (b"", b"x", b"v" * 100, b"\r\nEND\r\n", b"L" * 70_000, b"M" * 300_000):
        assert client.set(key, value) is True
        assert client.get(key) == value
        assert client.get_many([key, key + "-missing"]) == {key: value}
    assert client.get(key + "-missing", "dflt") == "dflt"
    assert client.add(key, b"a") is False
    assert client.incr(key + "-n", 1) is None
    assert client.set(key + "-n", b"41") and client.incr(key + "-n", 1) == 42
    assert client.delete(key) is True and client.get(key) is None
    assert client.version()


@pytest.mark.skipif(COMPILED is None, reason="the compiled exchange is not in use")
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=st.binary(max_size=200_000), flags=st.integers(0, 2**32 - 1))
def test_exchange_returns_what_the_socket_calls_return(
    memcached_server: MemcachedProcess, value: bytes, flags: int
) -> None:
    """The bytes the exchange returns, followed by what later recvs return, are the reply
    on the wire, byte for byte, as the sendall + recv of Python's socket read it."""
    if not memcached_server.is_running():
        memcached_server.start()
    assert COMPILED is not None
    key = tag().encode()
    with (
        socket.create_connection(tcp(memcached_server), timeout=5.0) as ours,
        socket.create_connection(tcp(memcached_server), timeout=5.0) as theirs,
    ):
        ours.settimeout(None)  # blocking, as pymc's plain sockets are
        store = b"set %s %d 0 %d\r\n%s\r\n" % (key, flags, len(value), value)
        assert COMPILED(ours, store, time.monotonic()) == b"STORED\r\n"
        want = wire_value(key, value, flags)
        got = COMPILED(ours, b"get " + key + b"\r\n", time.monotonic())
        assert 0 < len(got) <= pymc.client.RECV_SIZE
        while len(got) < len(want):
            got += ours.recv(65536)
        theirs.sendall(b"get " + key + b"\r\n")
        reference = b""
        while len(reference) < len(want):
            reference += theirs.recv(65536)
        assert got == reference == want


@pytest.mark.skipif(COMPILED is None, reason="the compiled exchange is not in use")
def test_exchange_on_a_closed_or_shut_socket_raises_as_the_socket_does(
    memcached: MemcachedProcess,
) -> None:
    assert COMPILED is not None
    sock = socket.create_connection(tcp(memcached))
    sock.close()
    with pytest.raises(OSError) as ours:
        COMPILED(sock, b"version\r\n", time.monotonic())
    with pytest.raises(OSError) as theirs:
        sock.send(b"version\r\n")
    assert ours.value.errno == theirs.value.errno == errno.EBADF
    near, peer = socket.socketpair()
    with near, peer:
        peer.shutdown(socket.SHUT_WR)  # the peer reads, but will send nothing: EOF
        assert COMPILED(near, b"version\r\n", time.monotonic()) == b""
        assert peer.recv(100) == b"version\r\n"
        peer.close()
        with pytest.raises(BrokenPipeError):
            COMPILED(near, b"version\r\n", time.monotonic())
        with pytest.raises(BrokenPipeError):
            near.send(b"version\r\n")
    with pytest.raises(TypeError):
        COMPILED(sock, "version\r\n", time.monotonic())  # type: ignore[arg-type]


# --------------------------------------------------------------------------- failures


def proxied(memcached: MemcachedProcess, fault_proxy: Any, **options: Any) -> Any:
    proxy = fault_proxy(tcp(memcached))
    client = Client(tcp(proxy), **{"timeout": 1.0, **options})
    client.set("big", b"B" * 300_000)
    assert client.get("big") == b"B" * 300_000  # connected, and the exchange in use
    return proxy, client


def next_calls_work(proxy: FaultProxy, client: Client) -> None:
    proxy.set_mode("pass")
    assert client.set("after", b"fine") and client.get("after") == b"fine"


def test_a_reset_is_a_network_error_and_closes(
    memcached: MemcachedProcess, fault_proxy: Any, path: List[int]
) -> None:
    proxy, client = proxied(memcached, fault_proxy)
    proxy.set_mode("reset")
    with pytest.raises(MemcacheNetworkError) as caught:
        client.get("big")
    assert isinstance(caught.value, ConnectionResetError)
    assert caught.value.errno == errno.ECONNRESET
    assert client.sock is None
    next_calls_work(proxy, client)


@pytest.mark.parametrize("nbytes", [0, 10, 70_000])
def test_a_close_mid_reply_is_an_unexpected_close(
    memcached: MemcachedProcess, fault_proxy: Any, path: List[int], nbytes: int
) -> None:
    """Closed before the reply (0), inside the first recv's bytes (10), after them."""
    proxy, client = proxied(memcached, fault_proxy)
    proxy.set_mode("close_after", nbytes=nbytes) if nbytes else proxy.set_mode("close")
    with pytest.raises(MemcacheUnexpectedCloseError):
        client.get("big")
    assert client.sock is None
    next_calls_work(proxy, client)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("command", ["get", "set", "get_many", "version"])
def test_a_stalled_server_times_out_and_closes(
    memcached: MemcachedProcess, fault_proxy: Any, path: List[int], command: str
) -> None:
    """The kernel's timeout expires in the recv: EAGAIN, a MemcacheTimeoutError (never a
    close), as on the Python path."""
    proxy, client = proxied(memcached, fault_proxy, timeout=0.3)
    proxy.set_mode("stall")
    started = time.monotonic()
    with pytest.raises(MemcacheTimeoutError) as caught:
        {
            "get": lambda: client.get("big"),
            "set": lambda: client.set("k", b"v"),
            "get_many": lambda: client.get_many(["big", "other"]),
            "version": lambda: client.version(),
        }[command]()
    assert time.monotonic() - started < 1.5
    assert caught.value.errno in (errno.EAGAIN, errno.ETIMEDOUT)
    assert client.sock is None
    next_calls_work(proxy, client)


@pytest.mark.timeout(20)
def test_a_dripping_reply_fails_by_the_deadline(
    memcached: MemcachedProcess, fault_proxy: Any, path: List[int]
) -> None:
    """The first recv gets a piece; the rest drips, each piece within the timeout: the
    deadline from the command's start ends it."""

    def drip(chunk: bytes) -> List[bytes]:
        return [chunk[i : i + 1000] for i in range(0, len(chunk), 1000)]

    proxy, client = proxied(memcached, fault_proxy, timeout=0.5)
    proxy.set_mode("rewrite", fn=drip, seconds=0.2)
    started = time.monotonic()
    with pytest.raises(MemcacheTimeoutError):
        client.get("big")
    assert time.monotonic() - started < 1.3
    assert client.sock is None
    next_calls_work(proxy, client)


@pytest.mark.timeout(40)
@pytest.mark.parametrize("kind", KINDS)
def test_a_partial_send_is_bounded_by_the_deadline_and_closes(path: List[int], kind: str) -> None:
    """A large request to a peer that takes it slowly: the exchange's send goes on past its
    first send() by the deadline, and the connection is not reused."""
    server = SlowReader()
    try:
        client = one_node_client(kind, server.server, timeout=0.4)
        assert client.get("warm") is None
        started = time.monotonic()
        with pytest.raises(MemcacheTimeoutError):
            client.set(tag(), b"s" * (32 << 20))
        assert time.monotonic() - started < 1.2
        if kind == "client":
            assert client.sock is None
    finally:
        server.stop()


# --------------------------------------------------------------------------- signals
#
# SIGUSR1, sent to the main thread (where the command runs and Python runs its handlers) by
# a helper thread: SIGALRM is pytest-timeout's.


class Signaller:
    """Sends SIGUSR1 to the main thread after ``first`` seconds, then every ``every``
    seconds (0: once), for at most ``limit`` seconds or until stopped."""

    def __init__(self, first: float, every: float = 0.0, limit: float = 3.0) -> None:
        self._stop = threading.Event()
        self._args = (first, every, limit)
        self._target = threading.main_thread().ident
        assert threading.current_thread() is threading.main_thread()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        first, every, limit = self._args
        end = time.monotonic() + limit
        if self._stop.wait(first):
            return
        while True:
            signal.pthread_kill(self._target, signal.SIGUSR1)  # type: ignore[arg-type]
            if not every or self._stop.wait(every) or time.monotonic() > end:
                return

    def __enter__(self) -> Signaller:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.timeout(20)
def test_keyboard_interrupt_during_the_exchange_closes_the_connection(
    memcached: MemcachedProcess, fault_proxy: Any, path: List[int]
) -> None:
    """A signal whose handler raises arrives while the exchange waits for the reply: the
    handler's exception comes out of the command at once, and the connection is closed."""
    proxy, client = proxied(memcached, fault_proxy, timeout=5.0)
    proxy.set_mode("stall")

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGUSR1, interrupt)
    started = time.monotonic()
    try:
        with Signaller(0.2), pytest.raises(KeyboardInterrupt):
            client.get("big")
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert time.monotonic() - started < 2.0  # not the 5 s timeout
    assert client.sock is None
    next_calls_work(proxy, client)


@pytest.mark.timeout(20)
@pytest.mark.skipif(COMPILED is None, reason="the compiled exchange is not in use")
def test_signals_during_the_exchange_do_not_extend_the_deadline(
    memcached: MemcachedProcess, fault_proxy: Any, path: List[int]
) -> None:
    """A signal every 0.1 s (its handler returns) while the server stalls: the exchange
    goes on after each, and the command still ends by its deadline. (Python's own recv,
    retried after EINTR, waits the kernel's timeout afresh each time: the pure path has no
    such bound, so this is checked on the compiled one.)"""
    if pymc.transport.connect.COMPILED_EXCHANGE is None:
        pytest.skip("the pure path retries each recv with a fresh kernel timeout")
    proxy, client = proxied(memcached, fault_proxy, timeout=0.4)
    proxy.set_mode("stall")
    ticks = [0]

    def tick(signum: int, frame: Any) -> None:
        ticks[0] += 1

    previous = signal.signal(signal.SIGUSR1, tick)
    started = time.monotonic()
    try:
        with Signaller(0.1, every=0.1), pytest.raises(MemcacheTimeoutError):
            client.get("big")
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert time.monotonic() - started < 1.5
    assert ticks[0] >= 2
    assert client.sock is None
    next_calls_work(proxy, client)


# --------------------------------------------------------------------------- descriptors


@pytest.fixture
def high_fds() -> Iterator[None]:
    """Push the descriptors the next sockets get above 1024 (select()'s limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200) if hard == -1 else hard, hard))
    filler: List[socket.socket] = []
    try:
        while True:
            s = socket.socket()
            filler.append(s)
            if s.fileno() > 1030:
                break
        yield
    finally:
        for s in filler:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.timeout(40)
def test_descriptors_above_1024(
    memcached: MemcachedProcess, fault_proxy: Any, path: List[int], high_fds: None
) -> None:
    proxy, client = proxied(memcached, fault_proxy, timeout=0.4)
    assert client.sock is not None and client.sock.fileno() > 1024
    assert client.get_many(["big", "none"]) == {"big": b"B" * 300_000}
    proxy.set_mode("stall")
    with pytest.raises(MemcacheTimeoutError):
        client.get("big")
    next_calls_work(proxy, client)
    # The slow send path waits with poll() on such a descriptor too.
    server = SlowReader()
    try:
        slow = Client(server.address, timeout=0.4)
        assert slow.get("warm") is None
        assert slow.sock is not None and slow.sock.fileno() > 1024
        started = time.monotonic()
        with pytest.raises(MemcacheTimeoutError):
            slow.set(tag(), b"s" * (32 << 20))
        assert time.monotonic() - started < 1.2
        assert slow.sock is None
    finally:
        server.stop()


# --------------------------------------------------------------------------- threads


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["pooled", "hash"])
def test_threads_each_get_their_own_values(
    memcached: MemcachedProcess, path: List[int], kind: str
) -> None:
    """Eight threads over a pool of four: every get returns its own key's value."""
    client = one_node_client(kind, tcp(memcached))
    keys = [f"{tag()}-{i}" for i in range(64)]
    for i, key in enumerate(keys):
        client.set(key, b"%d" % i * (i + 1))
    wrong: List[Any] = []
    stop = time.monotonic() + 1.5

    def worker(offset: int) -> None:
        n = 0
        while time.monotonic() < stop and n < 5000:
            i = (offset + n) % len(keys)
            got = client.get(keys[i])
            if got != b"%d" % i * (i + 1):
                wrong.append((keys[i], got))
            n += 1

    threads: List[threading.Thread] = [
        threading.Thread(target=worker, args=(t * 7,)) for t in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not wrong


# --------------------------------------------------------------------------- other sockets


@pytest.mark.parametrize("kind", ["tls", "unix", "wrapped"])
def test_only_plain_stdlib_sockets_take_the_exchange(
    kind: str, request: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TLS (the exchange would write plaintext on the TLS socket's descriptor) and any
    object standing in for the socket keep Python's calls; a UNIX socket, a plain stdlib
    one, takes the exchange."""
    calls = [0]
    real = pymc.transport.connection._exchange

    def counting(sock: Any, data: bytes, started: float) -> bytes:
        calls[0] += 1
        return real(sock, data, started)

    monkeypatch.setattr(pymc.transport.connection, "_exchange", counting)
    if kind == "tls":
        server = request.getfixturevalue("memcached_tls")
        client = Client(tcp(server), tls_context=server.client_ssl_context(), timeout=2.0)
    elif kind == "unix":
        server = request.getfixturevalue("memcached_unix")
        client = Client(server.unix_path, timeout=2.0)
    else:
        server = request.getfixturevalue("memcached")
        client = Client(tcp(server), timeout=2.0)
    with client:
        assert client.set("plain-k", b"v" * 70_000)
        if kind == "wrapped":

            class Wrapped:
                def __init__(self, real: socket.socket) -> None:
                    self.real = real

                def __getattr__(self, name: str) -> Any:
                    return getattr(self.real, name)

            assert client.sock is not None
            client.sock = Wrapped(client.sock)  # type: ignore[assignment]
        before = calls[0]
        for _ in range(3):
            assert client.get("plain-k") == b"v" * 70_000
            assert client.set("plain-k", b"v" * 70_000)
        used = calls[0] - before
    if kind == "unix" and COMPILED is not None:
        assert used == 6
    else:
        assert used == 0
