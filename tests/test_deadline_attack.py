"""Attacks on the I/O paths of issue 18's second round (items 5, 17, 18): deadlines over TLS,
UNIX sockets and gevent, late duplicate replies under threads, the stray-bytes check,
interruptions in the slow path, and descriptors of 1024 and up."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from typing import Any, List, Tuple

import pytest
from support.helpers import tcp
from support.servers import MemcachedProcess
from support.trickle import TrickleProxy

import pymc
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
