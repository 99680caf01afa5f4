"""One discovery, one deadline (issue 18 item 12).

When the configuration endpoint fails, the client asks the nodes it knows. All of that --
the endpoint and every node asked after it, each connect and each read, and the wait for a
discovery already in flight -- shares one deadline of ``discovery_timeout``. The nodes here
are black holes on loopback: listeners that accept and never answer, and listeners whose
accept queue is full, so a connect gets no SYN-ACK (what a dead host looks like).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Iterator, List, Optional, Tuple

import pytest
from support.helpers import tcp, wait_until
from support.servers import MemcachedProcess

import pymc
from pymc import ClusterNotReadyError, ElastiCacheClient
from pymc.testing import ConfigEndpoint

pytestmark = pytest.mark.timeout(60)

Addr = Tuple[str, int]
DEADLINE = 1.0  # discovery_timeout of these tests
MARGIN = 0.8  # what a loaded machine may add


class BlackHoles:
    """Listeners on loopback that never answer: ``silent`` ones accept (the kernel does) and
    never send a byte; ``full`` ones have a full accept queue, so a connect waits."""

    def __init__(self) -> None:
        self.sockets: List[socket.socket] = []

    def silent(self) -> Addr:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self.sockets.append(listener)
        host, port = listener.getsockname()
        return (host, port)

    def full(self) -> Addr:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        self.sockets.append(listener)
        host, port = listener.getsockname()
        for _ in range(8):  # fill the queue: later connects get no SYN-ACK
            filler = socket.socket()
            filler.setblocking(False)
            try:
                filler.connect((host, port))
            except BlockingIOError:
                pass
            self.sockets.append(filler)
        time.sleep(0.05)
        probe = socket.socket()
        probe.settimeout(0.3)
        try:
            probe.connect((host, port))
            pytest.skip("the kernel still completes connections to a full backlog")
        except OSError:
            pass
        finally:
            probe.close()
        return (host, port)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def holes() -> Iterator[BlackHoles]:
    made = BlackHoles()
    yield made
    made.close()


@pytest.fixture
def endpoint() -> Iterator[ConfigEndpoint]:
    with ConfigEndpoint() as ep:
        yield ep


@pytest.fixture
def clients() -> Iterator[List[ElastiCacheClient]]:
    made: List[ElastiCacheClient] = []
    yield made
    for client in made:
        client.close()


def make(made: List[ElastiCacheClient], endpoint: Any, **kw: Any) -> ElastiCacheClient:
    kw.setdefault("connect_timeout", 0.5)
    kw.setdefault("timeout", 0.5)
    kw.setdefault("poll_interval", 60)  # no poll of its own unless a test asks
    kw.setdefault("discovery_timeout", DEADLINE)
    client = ElastiCacheClient(endpoint, **kw)
    made.append(client)
    return client


def timed(fn: Any, *args: Any) -> Tuple[Any, float]:
    started = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - started


# --------------------------------------------------------------------------- refresh()


@pytest.mark.parametrize("endpoint_mode", ["stall", "down"])
def test_refresh_with_the_endpoint_and_every_node_black_holed_takes_one_deadline(
    endpoint: ConfigEndpoint,
    holes: BlackHoles,
    clients: List[ElastiCacheClient],
    endpoint_mode: str,
) -> None:
    nodes = [holes.full(), holes.silent(), holes.full()]
    endpoint.set_nodes(nodes, version=3)
    client = make(clients, endpoint.server)
    assert sorted(client.nodes) == sorted(nodes)
    endpoint.set_mode(endpoint_mode)
    changed, took = timed(client.refresh)
    assert changed is False
    assert took < DEADLINE + MARGIN, f"refresh() took {took:.2f} s for one discovery"
    # the failure kept the discovered nodes: never the endpoint, never anything else
    assert sorted(client.nodes) == sorted(nodes) and client.config_version == 3
    assert client.ready and not client.plain


@pytest.mark.timeout(90)
def test_thirty_black_holed_nodes_still_cost_one_deadline(
    endpoint: ConfigEndpoint, holes: BlackHoles, clients: List[ElastiCacheClient]
) -> None:
    nodes = [holes.silent() for _ in range(30)]
    endpoint.set_nodes(nodes, version=1)
    client = make(clients, endpoint.server, discovery_timeout=0.5)
    endpoint.set_mode("stall")
    changed, took = timed(client.refresh)
    assert changed is False
    assert took < 0.5 + MARGIN, f"refresh() took {took:.2f} s with 30 black-holed nodes"
    assert sorted(client.nodes) == sorted(nodes)


def test_a_node_that_answers_after_black_holes_is_reached_within_the_deadline(
    endpoint: ConfigEndpoint,
    holes: BlackHoles,
    clients: List[ElastiCacheClient],
    memcached_nodes: List[MemcachedProcess],
) -> None:
    """The endpoint hangs, two known nodes are black holes, one node answers (a scale-out
    to two real memcached nodes): the new list is read from that node within the deadline,
    and every key then lands on one of the discovered nodes."""
    servers = memcached_nodes[:2]
    for server in servers:
        if not server.is_running():
            server.start()
        server.flush_all()
    real = [ConfigEndpoint(upstream=tcp(s)).start() for s in servers]
    try:
        new_nodes = [e.address for e in real]
        good = ConfigEndpoint(new_nodes, version=2).start()
        try:
            old_nodes = [holes.full(), holes.silent(), good.address]
            endpoint.set_nodes(old_nodes, version=1)
            client = make(clients, endpoint.server)
            endpoint.set_mode("stall")
            changed, took = timed(client.refresh)
            assert took < DEADLINE + MARGIN, f"refresh() took {took:.2f} s"
            assert changed is True and client.config_version == 2
            assert sorted(client.nodes) == sorted(new_nodes)
        finally:
            good.stop()
        keys = {f"deadline-{i}": f"v{i}".encode() for i in range(40)}
        assert client.set_many(keys) == []
        held = {}
        for server in servers:
            with pymc.Client(tcp(server), timeout=2) as direct:
                held.update(direct.get_many(list(keys)))
        assert held == keys  # every key on a discovered node, none lost elsewhere
    finally:
        for emulator in real:
            emulator.stop()


def test_refresh_while_the_poller_is_stuck_in_a_discovery_takes_one_deadline(
    endpoint: ConfigEndpoint, holes: BlackHoles, clients: List[ElastiCacheClient]
) -> None:
    nodes = [holes.silent(), holes.silent()]
    endpoint.set_nodes(nodes, version=1)
    client = make(clients, endpoint.server, poll_interval=0.1)
    endpoint.set_mode("stall")
    before = endpoint.requests
    wait_until(lambda: endpoint.requests > before, 3, "the poller's discovery in flight")
    changed, took = timed(client.refresh)
    assert changed is False
    assert took < DEADLINE + MARGIN, f"refresh() took {took:.2f} s behind the poller"
    assert sorted(client.nodes) == sorted(nodes)


# --------------------------------------------------------------------------- start-up


def test_the_constructor_and_wait_ready_with_a_black_holed_endpoint(
    endpoint: ConfigEndpoint, clients: List[ElastiCacheClient]
) -> None:
    endpoint.set_mode("stall")
    client, took = timed(lambda: make(clients, endpoint.server))
    assert took < DEADLINE + MARGIN, f"the constructor took {took:.2f} s"
    assert not client.ready and client.nodes == [] and not client.plain
    with pytest.raises(ClusterNotReadyError):
        client.get("k")  # never the endpoint as a node
    ready, took = timed(client.wait_ready, 0.3)
    assert ready is False and took < 0.3 + MARGIN
    started = time.monotonic()
    with pytest.raises(ClusterNotReadyError):
        make(clients, endpoint.server, ready_timeout=DEADLINE)
    took = time.monotonic() - started
    assert took < DEADLINE + MARGIN, f"ready_timeout={DEADLINE} took {took:.2f} s"


def test_start_up_against_a_full_accept_queue(
    holes: BlackHoles, clients: List[ElastiCacheClient]
) -> None:
    address = holes.full()
    client, took = timed(lambda: make(clients, f"{address[0]}:{address[1]}"))
    assert took < DEADLINE + MARGIN, f"the constructor took {took:.2f} s"
    assert not client.ready and client.nodes == []


def test_a_concurrent_refresh_never_waits_more_than_its_deadline(
    endpoint: ConfigEndpoint, holes: BlackHoles, clients: List[ElastiCacheClient]
) -> None:
    """Four threads call refresh() at once against a hung endpoint and black-holed nodes:
    each returns within one deadline (they do not queue behind each other's discovery)."""
    nodes = [holes.silent(), holes.full()]
    endpoint.set_nodes(nodes, version=1)
    client = make(clients, endpoint.server)
    endpoint.set_mode("stall")
    took: List[Optional[float]] = [None] * 4

    def call(i: int) -> None:
        _, took[i] = timed(client.refresh)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert all(t is not None and t < DEADLINE + MARGIN for t in took), took
    assert sorted(client.nodes) == sorted(nodes)
