"""Hostile tests of pymc.elasticache: each test here shows a defect (it fails on the code
it was written against). Real memcached nodes behind pymc.testing.ConfigEndpoint."""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
from support.helpers import run_in_child
from support.servers import MemcachedProcess

from pymc.elasticache import ElastiCacheClient
from pymc.exceptions import ClusterNotReadyError
from pymc.testing import ConfigEndpoint

FAST: Dict[str, Any] = dict(connect_timeout=1.0, timeout=1.0)
Addr = Tuple[str, int]


def addr(server: MemcachedProcess) -> Addr:
    assert isinstance(server.address, tuple)
    return server.address


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout}s: {predicate}")
        time.sleep(step)


def pollers(endpoint: str) -> List[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("pymc-elasticache") and t.name.endswith(endpoint) and t.is_alive()
    ]


@pytest.fixture
def endpoint() -> Iterator[ConfigEndpoint]:
    with ConfigEndpoint() as ep:
        yield ep


@pytest.fixture
def make_client() -> Iterator[Callable[..., ElastiCacheClient]]:
    clients: List[ElastiCacheClient] = []

    def factory(endpoint: Any, **kw: Any) -> ElastiCacheClient:
        for name, value in FAST.items():
            kw.setdefault(name, value)
        client = ElastiCacheClient(endpoint, **kw)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


@pytest.fixture
def nodes(memcached_nodes: List[MemcachedProcess]) -> List[MemcachedProcess]:
    for node in memcached_nodes:
        if not node.is_running():
            node.start()
        node.flush_all()
    return memcached_nodes


# -- close() -------------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_close_from_on_change_during_a_manual_refresh_hangs_and_leaves_the_poller(
    endpoint: ConfigEndpoint,
    nodes: List[MemcachedProcess],
    make_client: Callable[..., ElastiCacheClient],
) -> None:
    """on_change runs with the refresh lock held. When it calls close() (from a thread that
    called refresh()) while the poller waits for that lock, close() joins the poller, which
    cannot finish: close() blocks discovery_timeout + 1 s and returns with the poller alive,
    which then runs one more discovery after close()."""
    endpoint.set_nodes([addr(nodes[0])], version=1)
    closing: Dict[str, float] = {}

    def on_change(old: Any, new: Any) -> None:
        time.sleep(0.6)  # the poller (every ~0.2 s) is now waiting for the refresh lock
        started = time.monotonic()
        client.close()
        closing["took"] = time.monotonic() - started
        closing["pollers"] = len(pollers(endpoint.server))
        closing["requests"] = endpoint.requests

    client = make_client(
        endpoint.server, poll_interval=0.2, discovery_timeout=1.0, on_change=on_change
    )
    assert client.ready
    endpoint.set_nodes([addr(nodes[0]), addr(nodes[1])], version=2)
    client.refresh()  # in this thread: on_change closes the client
    time.sleep(0.5)
    problems = []
    if closing["took"] >= 0.5:
        problems.append(f"close() took {closing['took']:.2f} s")
    if closing["pollers"]:
        problems.append("close() returned with the poller still running")
    if endpoint.requests != closing["requests"]:
        problems.append("the endpoint was asked after close() returned")
    assert not problems, problems


# -- not ready -----------------------------------------------------------------------------------


def test_flush_all_stats_and_version_while_not_ready_report_success(
    endpoint: ConfigEndpoint, make_client: Callable[..., ElastiCacheClient]
) -> None:
    """Until the first node list, requests raise ClusterNotReadyError. flush_all() instead
    returns True (nothing was flushed), stats() and version() return {}."""
    endpoint.set_mode("down")
    client = make_client(endpoint.server, poll_interval=60)
    assert not client.ready
    with pytest.raises(ClusterNotReadyError):
        client.get("k")
    problems = []
    for name, call in (
        ("flush_all", lambda: client.flush_all()),
        ("stats", lambda: client.stats()),
        ("version", lambda: client.version()),
    ):
        try:
            result = call()
        except ClusterNotReadyError:
            continue
        problems.append(f"{name}() returned {result!r}")
    assert not problems, problems


@pytest.mark.timeout(20)
def test_ready_timeout_bounds_the_constructor(
    endpoint: ConfigEndpoint, make_client: Callable[..., ElastiCacheClient]
) -> None:
    """ready_timeout=0.3 against a hung endpoint: the constructor first spends a whole
    discovery_timeout (here 2 s) in its own discovery, then ready_timeout more."""
    endpoint.set_mode("stall")
    started = time.monotonic()
    with pytest.raises(ClusterNotReadyError):
        make_client(endpoint.server, ready_timeout=0.3, discovery_timeout=2.0)
    took = time.monotonic() - started
    assert took < 1.0, f"ready_timeout=0.3 but the constructor took {took:.2f} s"


# -- fork ----------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.timeout(30)
def test_a_child_forked_during_a_discovery_keeps_the_parents_connection_open(
    endpoint: ConfigEndpoint,
    nodes: List[MemcachedProcess],
    make_client: Callable[..., ElastiCacheClient],
) -> None:
    """Fork while the poller's discovery is in flight: the child forgets the socket
    (``_sockets = {}``) without closing its copy, so the connection to the endpoint stays
    open as long as the child lives, after the parent's discovery ended."""
    endpoint.set_nodes([addr(nodes[0])], version=1)
    client = make_client(endpoint.server, poll_interval=0.2, discovery_timeout=1.0)
    assert client.ready
    endpoint.set_mode("stall")
    before = endpoint.requests
    wait_for(lambda: endpoint.requests > before, 3)
    assert endpoint.connections == 1

    def body() -> Dict[str, Any]:
        client.get("k")  # first use in the child: its own poller
        time.sleep(3.0)  # the parent's discovery times out meanwhile
        return {}

    out: List[Dict[str, Any]] = []
    child = threading.Thread(target=lambda: out.append(run_in_child(body)), daemon=True)
    child.start()
    time.sleep(0.3)
    endpoint.set_mode("normal")
    # The parent's stalled discovery times out (1 s) and closes its socket; its next
    # polls are answered.
    time.sleep(1.8)
    samples = []
    for _ in range(10):  # a poll's own short connection is not counted: the fewest seen
        samples.append(endpoint.connections)
        time.sleep(0.03)
    open_now = min(samples)
    client.close()
    child.join(10)
    assert out == [{}]
    assert open_now == 0, f"{open_now} connection(s) to the endpoint held by the child"
