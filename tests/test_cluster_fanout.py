"""HashClient's fan-out reads the nodes' replies in the order they arrive and gives each
connection back as soon as its own reply is read: a slow node never holds a healthy node's
connections, and the whole fan-out's reads end by the ``timeout`` deadline.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.helpers import tcp
from support.servers import MemcachedProcess

from pymc import HashClient, MemcachePoolTimeoutError, MemcacheTimeoutError
from pymc.client import server_name


def split_keys(client: HashClient, fast: str, count: int = 400) -> Tuple[List[str], List[str]]:
    on_fast: List[str] = []
    on_slow: List[str] = []
    for i in range(count):
        key = f"fan-{i}"
        (on_fast if client.snapshot.node_for(key) == fast else on_slow).append(key)
    return on_fast, on_slow


@pytest.mark.timeout(60)
def test_a_slow_node_does_not_starve_a_healthy_one(
    memcached_nodes: List[MemcachedProcess],
    fault_proxy: Callable[[Tuple[str, int]], FaultProxy],
) -> None:
    """issue 18 #11: 16 threads run get_many over a healthy node A and a node B whose every
    reply is held 0.5 s (max_pool_size=2, pool_timeout=1); single gets to A all succeed."""
    healthy = tcp(memcached_nodes[0])
    slow = fault_proxy(tcp(memcached_nodes[1]))
    client = HashClient(
        [healthy, slow.address],
        use_pooling=True,
        max_pool_size=2,
        pool_timeout=1,
        timeout=5,
        retry_attempts=1000,
    )
    on_a, on_b = split_keys(client, server_name(healthy))
    assert len(on_a) > 20 and len(on_b) > 20
    values = {k: k.encode() for k in on_a[:20] + on_b[:20]}
    assert client.set_many(values) == []
    slow.set_mode("delay", seconds=0.5)
    stop = threading.Event()
    fan_outs: Dict[str, int] = {"ok": 0, "pool timeout": 0}
    other: List[BaseException] = []

    def worker() -> None:
        keys = list(values)
        while not stop.is_set():
            try:
                assert client.get_many(keys) == values
                fan_outs["ok"] += 1
            except MemcachePoolTimeoutError:  # waiting for B's connections: expected
                fan_outs["pool timeout"] += 1
            except BaseException as exc:
                other.append(exc)
                return

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(16)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.6)  # every thread is in a fan-out, waiting for B
        outcomes: List[Any] = []
        for i in range(8):
            key = on_a[i]
            try:
                outcomes.append(client.get(key) == values[key])
            except MemcachePoolTimeoutError as exc:
                outcomes.append(exc)
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not other, other[:3]
    assert outcomes == [True] * 8, outcomes
    assert fan_outs["ok"] > 0, fan_outs
    assert len(client.snapshot.names) == 2  # nobody was ejected


@pytest.mark.timeout(60)
def test_the_fan_out_reads_end_by_the_timeout_deadline(
    memcached_nodes: List[MemcachedProcess],
    fault_proxy: Callable[[Tuple[str, int]], FaultProxy],
) -> None:
    """A node that drips its reply (every chunk of it held 0.2 s, under a 0.5 s timeout:
    no single recv times out) fails the fan-out's read of it by the deadline, and no
    connection is left checked out."""
    healthy = tcp(memcached_nodes[0])
    proxy = fault_proxy(tcp(memcached_nodes[1]))
    client = HashClient(
        [healthy, proxy.address], use_pooling=True, timeout=0.5, retry_attempts=1000
    )
    on_a, on_b = split_keys(client, server_name(healthy))
    big = b"x" * 200_000
    values = {k: big for k in on_b[:10]}
    values.update({k: b"a" for k in on_a[:10]})
    assert client.set_many(values) == []

    def drip(chunk: bytes) -> bytes:
        time.sleep(0.2)  # each chunk of the reply held: each recv well within the timeout
        return chunk

    proxy.set_mode("rewrite", fn=drip)
    start = time.monotonic()
    with pytest.raises(MemcacheTimeoutError):
        client.get_many(list(values))
    took = time.monotonic() - start
    assert took < 1.5, took
    proxy.set_mode("pass")
    for pool in client.clients.values():
        stats = pool.client_pool.stats()
        assert stats["in_use"] == 0, stats
