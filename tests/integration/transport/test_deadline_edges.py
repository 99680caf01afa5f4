"""Attacks on the I/O paths of issue 18's second round (items 5, 17, 18): deadlines over TLS,
UNIX sockets and gevent, late duplicate replies under threads, the stray-bytes check,
interruptions in the slow path, and descriptors of 1024 and up."""

from __future__ import annotations

import itertools
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Dict, List, Set, Tuple

import pytest
from support.helpers import KINDS, Interrupt, one_node_client, source_files, tcp
from support.servers import MemcachedProcess
from support.trickle import TrickleProxy

import pymc
import pymc.transport
from pymc import MemcacheTimeoutError

TIMEOUT = 0.5
BOUND = 1.3 * TIMEOUT + 0.15
_counter = itertools.count()


def tag() -> str:
    return f"da{next(_counter)}-{time.monotonic_ns() % 10**9}"


def keys_on_both(client: Any, names: List[str], prefix: str) -> List[str]:
    """Keys of which each node of ``client`` (a HashClient) holds at least two."""
    keys: List[str] = []
    seen = {name: 0 for name in names}
    for i in range(1000):
        key = f"{prefix}-{i}"
        node = client.snapshot.node_for(key)
        if seen.get(node, 2) < 2:
            seen[node] += 1
            keys.append(key)
        if all(n >= 2 for n in seen.values()):
            return keys
    raise AssertionError(f"keys not spread: {seen}")


@pytest.mark.timeout(60)
def test_tls_fan_out_with_a_dripping_node_ends_by_its_deadline(
    memcached_tls: MemcachedProcess,
) -> None:
    """A HashClient fan-out over two TLS nodes, one of which drips its reply: a byte of a TLS
    record arriving just before the deadline must not start a wait of a whole timeout
    (the TLS layer waits for the rest of the record inside one recv)."""
    fast = TrickleProxy(tcp(memcached_tls), pause=0.0, chunk=65536)
    slow = TrickleProxy(tcp(memcached_tls), pause=0.0, chunk=65536, lead=True)
    try:
        ctx = memcached_tls.client_ssl_context()
        client = pymc.HashClient(
            [fast.server, slow.server], tls_context=ctx, timeout=TIMEOUT, retry_attempts=100
        )
        keys = keys_on_both(client, [fast.server, slow.server], tag())
        client.set_many({k: b"v" for k in keys})
        assert client.get_many(keys) == {k: b"v" for k in keys}
        slow.chunk, slow.pause = 1, 0.8 * TIMEOUT
        started = time.monotonic()
        with pytest.raises(MemcacheTimeoutError):
            client.get_many(keys)
        elapsed = time.monotonic() - started
        assert elapsed < BOUND, f"took {elapsed:.2f} s with timeout={TIMEOUT}"
    finally:
        fast.stop()
        slow.stop()


class DuplicatingProxy:
    """Forwards every reply at once, then the same bytes again ``delay`` seconds later (a
    misbehaving proxy's late duplicate)."""

    def __init__(self, upstream: Tuple[str, int], delay: float = 0.01) -> None:
        self.upstream, self.delay = upstream, delay
        self.duplicates = 0
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.address = self._listener.getsockname()[:2]
        self._stop = threading.Event()
        self._socks: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def server(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            upstream = socket.create_connection(self.upstream, timeout=5)
            lock = threading.Lock()
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(0.2)
                self._socks.append(s)
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, lock), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, lock: Any) -> None:
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                if lock is None:
                    dst.sendall(data)
                    continue
                with lock:
                    dst.sendall(data)
                timer = threading.Timer(self.delay, self._again, (dst, data, lock))
                timer.daemon = True
                timer.start()
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _again(self, dst: socket.socket, data: bytes, lock: Any) -> None:
        try:
            with lock:
                dst.sendall(data)
            self.duplicates += 1
        except OSError:
            pass

    def stop(self) -> None:
        self._stop.set()
        for s in [self._listener, *self._socks]:
            try:
                s.close()
            except OSError:
                pass


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["pooled", "hash"])
def test_late_duplicate_replies_never_give_another_keys_value_under_threads(
    memcached: MemcachedProcess, kind: str
) -> None:
    """8 threads on one pooled client behind a proxy that repeats every reply 10 ms later.
    A duplicate that arrives while a command waits for its own reply cannot be told from
    it (the text protocol has no request ids: README), so a stale value of the same key, or
    an add answered by a repeated STORED, can happen here; but no read may ever return
    another key's value, and the connections end in step."""
    proxy = DuplicatingProxy(tcp(memcached))
    wrong: List[str] = []
    errors: List[BaseException] = []
    if kind == "pooled":
        client: Any = pymc.PooledClient(proxy.server, max_pool_size=4, timeout=2.0)
    else:
        client = pymc.HashClient(
            [proxy.server], use_pooling=True, max_pool_size=4, timeout=2.0, retry_attempts=10**6
        )
    stop_at = time.monotonic() + 4.0

    def check(key: str, got: Any) -> None:
        if got is not None and not got.startswith(key.encode() + b"="):
            wrong.append(f"{key}: {got!r}")

    def worker(n: int) -> None:
        keys = [f"{tag()}-w{n}-{j}" for j in range(3)]
        for i in range(100_000):
            if time.monotonic() > stop_at:
                return
            key = keys[i % 3]
            try:
                if i % 2 == 0:
                    client.set(key, f"{key}={i}".encode())
                else:
                    check(key, client.get(key))
                    for k, v in client.get_many(keys).items():
                        check(k, v)
                    check(key, client.gets(key)[0])
            except pymc.MemcacheError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        proxy.stop()
    assert proxy.duplicates > 20
    assert not wrong, f"{len(wrong)} wrong values ({len(errors)} errors): {wrong[:5]}"


DRIPPED: Dict[str, Callable[[Any, str], Any]] = {
    "get": lambda c, k: c.get(k),
    "set": lambda c, k: c.set(k, b"new"),
    "get_many": lambda c, k: c.get_many([k, k + "-miss"]),
    "meta_get": lambda c, k: c.meta_get(k),
    "incr": lambda c, k: c.incr(k + "-n", 1),
    "after_noreply": lambda c, k: c.get(k),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", list(DRIPPED))
def test_dripping_unix_socket_fails_by_the_deadline(
    memcached: MemcachedProcess, tmp_path: Path, kind: str, command: str
) -> None:
    proxy = TrickleProxy(
        tcp(memcached), pause=0.0, chunk=65536, lead=True, unix_path=str(tmp_path / "drip.sock")
    )
    try:
        key = tag()
        client = one_node_client(kind, proxy.server, timeout=TIMEOUT)
        assert client.set(key, b"abc") and client.set(key + "-n", b"1")
        if command == "after_noreply":
            client.set(key + "-nr", b"x", noreply=True)
        proxy.chunk, proxy.pause = 1, 0.8 * TIMEOUT
        started = time.monotonic()
        with pytest.raises(MemcacheTimeoutError):
            DRIPPED[command](client, key)
        elapsed = time.monotonic() - started
        assert elapsed < BOUND, f"took {elapsed:.2f} s with timeout={TIMEOUT}"
        proxy.chunk, proxy.pause = 65536, 0.0
        assert client.get(key) == (b"new" if command == "set" else b"abc")
        if command == "after_noreply":
            assert client.get(key + "-nr") == b"x"
    finally:
        proxy.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_timeout_none_reads_a_dripped_reply_on_every_path(
    memcached: MemcachedProcess, kind: str
) -> None:
    """timeout=None: no deadline anywhere; a reply dripped slowly is read whole on the paths
    that take the slow path (get, one-reply, request, the sync marker, several requests)."""
    proxy = TrickleProxy(tcp(memcached), pause=0.0, chunk=65536, lead=True)
    try:
        key = tag()
        client = one_node_client(kind, proxy.server, timeout=None, max_get_line=512)
        assert client.set(key, b"abc")
        proxy.chunk, proxy.pause = 1, 0.002
        assert client.get(key) == b"abc"
        assert client.set(key + "-2", b"d") is True
        assert client.incr(key + "-missing", 1) is None
        client.set(key + "-nr", b"e", noreply=True)
        assert client.get(key + "-nr") == b"e"
        many = [key, key + "-2"] + [f"{key}-m{i}".ljust(200, "m") for i in range(4)]
        assert client.get_many(many) == {key: b"abc", key + "-2": b"d"}
        assert client.meta_get(key).value == b"abc"
        assert client.set_many({key + "-3": b"x" * 40000, key + "-4": b"y"}) == []
        proxy.chunk, proxy.pause = 65536, 0.0
        assert client.get(key + "-3") == b"x" * 40000
    finally:
        proxy.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["incr", "append", "cas", "add", "set", "get", "meta_set"])
def test_connection_closed_while_idle_is_replaced_before_anything_is_sent(
    memcached: MemcachedProcess, fault_proxy: Any, command: str
) -> None:
    """The server (a proxy) closes an idle connection; the next command finds it closed
    before it sends anything (the stray-bytes check sees the close) and runs on a new
    connection: one effect, the right answer, no error, whatever the command. (A single
    get skips that check, as it skips it for stray bytes: on a bare Client it raises
    MemcacheUnexpectedCloseError, as pymemcache does; a pool looks at a connection idle for
    CHECK_IDLE_AFTER before reuse, as here.)"""
    proxy = fault_proxy(tcp(memcached))
    key = tag()
    client: Any = pymc.Client(proxy.server, timeout=2.0)
    if command == "get":
        client = pymc.PooledClient(proxy.server, timeout=2.0)
    assert client.set(key, b"5")
    token = client.gets(key)[1]
    proxy.close_all()
    time.sleep(0.06)
    calls: Dict[str, Callable[[], Any]] = {
        "incr": lambda: client.incr(key, 1) == 6,
        "append": lambda: client.append(key, b"0") is True,
        "cas": lambda: client.cas(key, b"9", token) is True,
        "add": lambda: client.add(key, b"x") is False,
        "set": lambda: client.set(key, b"7") is True,
        "get": lambda: client.get(key) == b"5",
        "meta_set": lambda: client.meta_set(key, b"8").stored,
    }
    after = {
        "incr": b"6",
        "append": b"50",
        "cas": b"9",
        "add": b"5",
        "set": b"7",
        "get": b"5",
        "meta_set": b"8",
    }
    assert calls[command]()
    with pymc.Client(tcp(memcached)) as direct:
        assert direct.get(key) == after[command]


_GEVENT_CHILD = r"""
import json, sys, time
from gevent import monkey
monkey.patch_all()
import pymc
import pymc.transport
fast, slow, key, timeout = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
one = pymc.Client(slow, timeout=timeout)
pooled = pymc.PooledClient(slow, timeout=timeout)
hashed = pymc.HashClient([fast, slow], timeout=timeout, retry_attempts=100)
keys = [f"{key}-{i}" for i in range(40)]
assert one.set(key, b"v") and pooled.get(key) == b"v"
assert hashed.set_many({k: b"h" for k in keys}) == []
one.set(key + "-nr", b"x", noreply=True)
print("READY", flush=True)
sys.stdin.readline()  # the parent starts the drip
out = {}
calls = {
    "after_noreply": lambda: one.get(key),
    "get": lambda: one.get(key),
    "set": lambda: one.set(key, b"w"),
    "pooled_get": lambda: pooled.get(key),
    "fan_out": lambda: hashed.get_many(keys),
}
for name, call in calls.items():
    started = time.monotonic()
    try:
        call()
        error = None
    except pymc.MemcacheTimeoutError as exc:
        error = type(exc).__name__
    out[name] = [error, time.monotonic() - started]
print(json.dumps(out), flush=True)
"""


@pytest.mark.timeout(60)
def test_dripping_replies_under_gevent_fail_by_the_deadline(memcached: MemcachedProcess) -> None:
    pytest.importorskip("gevent")
    fast = TrickleProxy(tcp(memcached), pause=0.0, chunk=65536)
    slow = TrickleProxy(tcp(memcached), pause=0.0, chunk=65536, lead=True)
    root = Path(__file__).resolve().parents[3]
    env = dict(os.environ, PYTHONPATH=str(root))
    env.pop("PYTEST_ADDOPTS", None)
    child = subprocess.Popen(
        [sys.executable, "-c", _GEVENT_CHILD, fast.server, slow.server, tag(), str(TIMEOUT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "READY"
        slow.chunk, slow.pause = 1, 0.8 * TIMEOUT
        child.stdin.write("go\n")
        child.stdin.flush()
        report = json.loads(child.stdout.readline())
    finally:
        child.kill()
        child.wait(10)
        fast.stop()
        slow.stop()
    for name, (error, elapsed) in report.items():
        assert error == "MemcacheTimeoutError", (name, report)
        assert elapsed < BOUND, (name, report)


class SlowPathInjector:
    """Raises :class:`Interrupt` at the ``n``-th line event inside the slow path of a read
    or a send (the functions that cut and restore a socket's wait)."""

    FUNCTIONS = frozenset({"_read_rest", "set_wait", "_send_rest", "_read_to_end", "_sync"})
    FILES = frozenset(source_files(pymc.transport))

    def __init__(self, n: int) -> None:
        self.n, self.count, self.where = n, 0, ""

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        if code.co_filename in self.FILES and code.co_name in self.FUNCTIONS:
            return self._local
        return None

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.count += 1
            if self.count == self.n:
                self.where = f"{frame.f_code.co_name} line {frame.f_lineno}"
                raise Interrupt(self.where)
        return self._local


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["get", "set_many", "get_many", "after_noreply", "meta_get"])
def test_interrupted_slow_path_never_leaves_a_cut_wait_in_the_pool(
    memcached: MemcachedProcess, command: str
) -> None:
    """A BaseException at every line of the slow path (a reply split over many recvs, whose
    socket wait is cut to the deadline and restored): the connection the pool keeps is
    either closed or has its whole timeout back, so the next command on it never times out
    early; and the next command gets its own reply."""
    proxy = TrickleProxy(tcp(memcached), pause=0.003, chunk=120)
    try:
        pooled = pymc.PooledClient(proxy.server, max_pool_size=1, timeout=2.0)
        key = tag()
        value = b"x" * 300
        assert pooled.set(key, value)
        calls: Dict[str, Callable[[], Any]] = {
            "get": lambda: pooled.get(key),
            "set_many": lambda: pooled.set_many({f"{key}-{i}": b"s" for i in range(30)}),
            "get_many": lambda: pooled.get_many([key, key + "-miss"]),
            "after_noreply": lambda: (pooled.set(key, value, noreply=True), pooled.get(key)),
            "meta_get": lambda: pooled.meta_get(key),
        }
        seen: Set[str] = set()
        for n in range(1, 1000):
            injector = SlowPathInjector(n)
            sys.settrace(injector._global)
            try:
                calls[command]()
            except Interrupt:
                pass
            finally:
                sys.settrace(None)
            with pooled.client_pool.get_and_release() as conn:
                sock = conn.sock
                if sock is not None:
                    timeval = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
                    assert timeval == struct.pack("@ll", 2, 0), injector.where
                    timeval = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16)
                    assert timeval == struct.pack("@ll", 2, 0), injector.where
            assert pooled.get(key) == value, injector.where
            seen.add(injector.where.split()[0] if injector.where else "")
            if injector.count < n:
                break
        else:
            raise AssertionError("still injecting after 1000 lines")
        assert n > 10
        assert {"_read_rest", "set_wait"} <= seen, seen  # the wait was cut, and restored
    finally:
        proxy.stop()
