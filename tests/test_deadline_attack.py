"""Attacks on the I/O paths of issue 18's second round (items 5, 17, 18): deadlines over TLS,
UNIX sockets and gevent, late duplicate replies under threads, the stray-bytes check,
interruptions in the slow path, and descriptors of 1024 and up."""

from __future__ import annotations

import itertools
import time
from typing import Any, List

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
