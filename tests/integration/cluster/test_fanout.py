"""HashClient's fan-out reads the nodes' replies in the order they arrive and gives each
connection back as soon as its own reply is read: a slow node never holds a healthy node's
connections, and the whole fan-out's reads end by the ``timeout`` deadline.
"""

from __future__ import annotations

import sys
import threading
import time
from types import FrameType
from typing import AbstractSet, Any, Callable, ClassVar, Dict, List, Optional, Set, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.helpers import Interrupt, source_files, tcp
from support.servers import MemcachedProcess

import pymc.client
import pymc.cluster
import pymc.cluster.fanout
import pymc.pool
import pymc.pool.objectpool
import pymc.pool.pooled
import pymc.transport.connection
from pymc import Client, HashClient, MemcachePoolTimeoutError, MemcacheTimeoutError
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


# -- an exception at every line of the fan-out --------------------------------------------------

#: The fan-out's functions (in whichever file of pymc.cluster they are).
_FAN_OUT = frozenset(
    {
        "execute",
        "_take_and_exchange",
        "_exchange",
        "_read_as_they_come",
        "_lost",
        "_note_failures",
        "_give_back",
    }
)
_TRACED: Dict[str, Optional[AbstractSet[str]]] = {
    **dict.fromkeys(source_files(pymc.pool), None),  # every function
    **dict.fromkeys(source_files(pymc.cluster), _FAN_OUT),
    **dict.fromkeys(
        source_files(pymc.transport),
        frozenset({"send", "receive", "receive_some", "_read_to_end", "_abort", "close"}),
    ),
}


class Injected(Interrupt):
    """What the tracer raises."""


class Injector:
    """Raises :class:`Injected` at the ``n``-th line event of the traced functions."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.where = ""

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        if code.co_filename not in _TRACED:
            return None
        names = _TRACED[code.co_filename]
        if names is not None and code.co_name not in names:
            return None
        if threading.current_thread() is not threading.main_thread():
            return None
        return self._local

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.count += 1
            if self.count == self.n:
                self.where = f"{frame.f_code.co_name} line {frame.f_lineno}"
                raise Injected(self.where)
        return self._local

    def run(self, fn: Callable[[], Any]) -> bool:
        sys.settrace(self._global)
        try:
            fn()
        except Injected:
            assert self.where
        finally:
            sys.settrace(None)
        return self.count >= self.n


class Counted(Client):
    made: ClassVar[List[Client]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        Counted.made.append(self)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("call", ["get_many", "set_many", "meta_get_many"])
def test_an_exception_at_every_line_of_the_fan_out_loses_nothing(
    memcached_nodes: List[MemcachedProcess], call: str
) -> None:
    """A BaseException lands at each line of the fan-out (cluster.py's, the pool's, and the
    connection's send and reads) in turn, while replies of several sizes come back from
    three nodes (some in many recvs): no slot is lost, no connection is left outside its
    pool, none in a pool has unread bytes, and the next fan-out reads no stale reply."""
    Counted.made = []
    client = HashClient(
        [tcp(n) for n in memcached_nodes[:3]],
        use_pooling=True,
        max_pool_size=2,
        pool_timeout=2,
        timeout=5,
        retry_attempts=1000,
    )
    client.client_class = Counted
    for pool in client.clients.values():
        pool.client_class = Counted
    by_node: Dict[Optional[str], List[str]] = {name: [] for name in client.snapshot.names}
    for i in range(300):  # four keys on each node (placement depends on the ports)
        key = f"k{i}"
        group = by_node[client.snapshot.node_for(key)]
        if len(group) < 4:
            group.append(key)
    keys = [k for group in by_node.values() for k in group]
    assert len(keys) == 12
    values = {k: (b"v%d" % i) * (1 if i % 3 else 20_000) for i, k in enumerate(keys)}
    assert client.set_many(values) == []
    scenario: Callable[[], Any] = {
        "get_many": lambda: client.get_many(list(values)),
        "set_many": lambda: client.set_many(values),
        "meta_get_many": lambda: client.meta_get_many(list(values)),
    }[call]

    def check(where: str) -> None:
        pools = [pool.client_pool for pool in client.clients.values()]
        for pool in pools:
            s = pool.stats()
            assert s["in_use"] == 0 and s["waiting"] == 0, (where, s)
        idle = [c for pool in pools for c in pool.idle_objects()]
        assert all(c.is_clean() for c in idle), f"{where}: a dirty connection in a pool"
        leaked = [c for c in Counted.made if c.sock is not None and c not in idle]
        assert not leaked, f"{where}: open connections outside the pools: {leaked}"
        assert client.get_many(list(values)) == values, where  # no stale reply anywhere

    places: Set[str] = set()
    for n in range(1, 5000):
        injector = Injector(n)
        fired = injector.run(scenario)
        places.add(injector.where.split(" line")[0])
        check(f"injection #{n} at {injector.where or '(none)'}")
        if not fired:
            assert n > 50, n
            break
    else:
        raise AssertionError("still injecting after 5000 lines")
    assert len(client.snapshot.names) == 3  # an interruption is no failure of a node
    # the fan-out's own reads and give-backs were covered
    assert {"_exchange", "_give_back", "receive_some", "give_back"} <= places, places
    if call != "set_many":  # (a pipeline's replies come in one recv)
        assert "_read_as_they_come" in places, places


def test_a_fan_out_over_tls_reads_every_record(
    new_memcached: Callable[..., MemcachedProcess],
) -> None:
    """Replies of many TLS records from two nodes at once: the bytes TLS has decrypted
    already (which no poll shows) are read too, and every value comes back whole."""
    first, second = new_memcached(tls=True), new_memcached(tls=True)
    ctx = first.client_ssl_context()
    assert second.ca is not None
    second.ca.configure_trust(ctx)
    client = HashClient([tcp(first), tcp(second)], tls_context=ctx, timeout=5)
    values = {f"tls-{i}": bytes([65 + i % 26]) * (50_000 + i) for i in range(16)}
    assert len({client.snapshot.node_for(k) for k in values}) == 2
    assert client.set_many(values) == []
    for _ in range(5):
        assert client.get_many(list(values)) == values
        assert client.gets_many(list(values)).keys() == values.keys()


def test_a_fan_out_without_a_timeout_waits_for_every_reply(
    memcached_nodes: List[MemcachedProcess],
    fault_proxy: Callable[[Tuple[str, int]], FaultProxy],
) -> None:
    """timeout=None: no deadline; the slow node's reply (held 0.3 s) is waited for, while
    the fast node's connection is back in its pool at once."""
    slow = fault_proxy(tcp(memcached_nodes[1]))
    client = HashClient([tcp(memcached_nodes[0]), slow.address], use_pooling=True, timeout=None)
    fast = server_name(tcp(memcached_nodes[0]))
    on_a, on_b = split_keys(client, fast, 100)
    values = {k: k.encode() for k in on_a[:5] + on_b[:5]}
    assert client.set_many(values) == []
    slow.set_mode("delay", seconds=0.3)
    seen: Dict[str, Any] = {}

    def watch() -> None:
        time.sleep(0.15)  # the fan-out waits for the slow node now
        seen.update(client.clients[fast].client_pool.stats())

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert client.get_many(list(values)) == values
    watcher.join()
    assert seen["in_use"] == 0 and seen["idle"] == 1, seen


def test_without_a_poll_each_node_is_read_in_turn(
    memcached_nodes: List[MemcachedProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the sockets have no poll (eventlet's, Windows), each node's reply is read in
    turn through the connection's own recv, and every connection goes back clean."""
    monkeypatch.setattr(pymc.cluster.fanout, "readiness_poll", lambda sock: None)
    client = HashClient([tcp(n) for n in memcached_nodes[:3]], use_pooling=True, timeout=5)
    values = {f"turn-{i}": b"%d" % i * (1 + i * 1000) for i in range(30)}
    assert len({client.snapshot.node_for(k) for k in values}) == 3
    assert client.set_many(values) == []
    assert client.get_many(list(values)) == values
    for pool in client.clients.values():
        assert pool.client_pool.stats()["in_use"] == 0
        assert all(c.is_clean() for c in pool.client_pool.idle_objects())
