"""A dropped ElastiCacheClient is collected (issue 18 item 16), and the poller's life cycle
under attack: a poller exception, a discovery reply that changes mid-run, a fork while the
poller runs.

pymemcache's ``AWSElastiCacheHashClient`` has no thread, so code written for it never calls
``close()``. The poller holds the client weakly: a client dropped without ``close()`` is
collected, its poller ends and its connections close, whatever its poll interval.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
from support.helpers import run_in_child, stat, tcp, wait_until
from support.servers import MemcachedProcess

from pymc import ElastiCacheClient
from pymc.testing import ConfigEndpoint

pytestmark = pytest.mark.timeout(60)

FAST: Dict[str, Any] = dict(connect_timeout=1.0, timeout=1.0, discovery_timeout=1.0)


def pollers(endpoint: str) -> List[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("pymc-elasticache") and t.name.endswith(endpoint) and t.is_alive()
    ]


@pytest.fixture
def server(new_memcached: Callable[..., MemcachedProcess]) -> MemcachedProcess:
    """A private memcached: nothing else connects to it, so its connection count is ours."""
    return new_memcached()


@pytest.fixture
def endpoint(server: MemcachedProcess) -> Iterator[ConfigEndpoint]:
    with ConfigEndpoint([tcp(server)]) as ep:
        yield ep


def make_and_drop(
    endpoint: ConfigEndpoint, count: int, check: Callable[[], None] = lambda: None, **kw: Any
) -> List[Any]:
    """Make ``count`` clients, use each (one connection to the node), run ``check`` while
    they all live, drop them without close(); return weak references to them."""
    clients = []
    for i in range(count):
        client = ElastiCacheClient(endpoint.server, **{**FAST, **kw})
        assert client.polling
        assert client.set(f"drop-{i}", b"v") and client.get(f"drop-{i}") == b"v"
        clients.append(client)
    check()
    refs = [weakref.ref(client) for client in clients]
    del client
    clients.clear()
    return refs


def settled_connections(server: MemcachedProcess) -> int:
    """curr_connections once an earlier test's closing connections are gone from it (the
    same count three reads in a row, 50 ms apart; 3 s at most)."""
    seen = [stat(server, "curr_connections")]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and (len(seen) < 3 or len(set(seen[-3:])) > 1):
        time.sleep(0.05)
        seen.append(stat(server, "curr_connections"))
    return seen[-1]


def collected(refs: List[Any], endpoint: ConfigEndpoint) -> bool:
    gc.collect()
    return all(r() is None for r in refs) and not pollers(endpoint.server)


@pytest.mark.parametrize("poll_interval", [0.05, 60.0])
def test_dropped_clients_are_collected_and_their_pollers_and_sockets_go(
    server: MemcachedProcess, endpoint: ConfigEndpoint, poll_interval: float
) -> None:
    baseline = settled_connections(server)

    def five_more() -> None:  # one pooled connection each
        assert stat(server, "curr_connections") == baseline + 5

    refs = make_and_drop(endpoint, 5, five_more, poll_interval=poll_interval)
    wait_until(lambda: collected(refs, endpoint), 5, "the dropped clients to be collected")
    wait_until(
        lambda: stat(server, "curr_connections") == baseline,
        5,
        "the dropped clients' connections to close",
    )


def test_close_still_stops_the_poller_at_once(endpoint: ConfigEndpoint) -> None:
    client = ElastiCacheClient(endpoint.server, poll_interval=60, **FAST)
    poller = client._poller
    assert poller is not None and poller.is_alive()
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 1.0
    assert not poller.is_alive() and not pollers(endpoint.server)


def test_a_client_dropped_during_a_hung_discovery_is_collected_at_once(
    server: MemcachedProcess, endpoint: ConfigEndpoint
) -> None:
    """The poller holds no client during a discovery's I/O: clients dropped while their
    poller is stuck in a discovery (of a 5 s deadline) are collected at once, and that
    discovery is cut off."""
    refs = make_and_drop(endpoint, 2, poll_interval=0.05, discovery_timeout=5.0)
    endpoint.set_mode("stall")
    before = endpoint.requests
    wait_until(lambda: endpoint.requests >= before + 2, 3, "two discoveries in flight")
    started = time.monotonic()
    wait_until(lambda: collected(refs, endpoint), 5, "the dropped clients to be collected")
    wait_until(lambda: endpoint.connections == 0, 5, "the discoveries to be cut off")
    took = time.monotonic() - started
    assert took < 2.0, f"collected and cut off after {took:.2f} s (the deadline is 5 s)"


def test_a_poller_exception_neither_kills_the_poller_nor_pins_the_client(
    endpoint: ConfigEndpoint,
    server: MemcachedProcess,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected exception inside a poll is logged with its traceback (which the log
    capture keeps): the poller goes on polling, and the traceback does not keep a dropped
    client alive."""
    real_apply = ElastiCacheClient._apply
    raised: List[int] = []

    def apply_once_broken(self: ElastiCacheClient, config: Any) -> Any:
        if not raised and self.config_version is not None:
            raised.append(config.version)
            raise RuntimeError("a bug in a poll")
        return real_apply(self, config)

    monkeypatch.setattr(ElastiCacheClient, "_apply", apply_once_broken)
    changes: List[Any] = []
    client = ElastiCacheClient(
        endpoint.server, poll_interval=0.05, on_change=lambda o, n: changes.append(n), **FAST
    )
    endpoint.set_nodes([tcp(server), ("127.0.0.1", 1)], version=5)
    wait_until(lambda: bool(changes), 5, "the poll after the failed one")
    assert raised == [5] and client.config_version == 5 and client.polling
    assert any("ElastiCache poll failed" in r.getMessage() for r in caplog.records)
    ref = weakref.ref(client)
    del client
    wait_until(lambda: collected([ref], endpoint), 5, "the dropped client to be collected")


def test_a_raising_on_change_does_not_pin_a_dropped_client(
    endpoint: ConfigEndpoint, server: MemcachedProcess, caplog: pytest.LogCaptureFixture
) -> None:
    calls: List[Any] = []

    def hook(old: Any, new: Any) -> None:
        calls.append(new)
        raise ValueError("the hook failed")

    client = ElastiCacheClient(endpoint.server, poll_interval=0.05, on_change=hook, **FAST)
    endpoint.set_nodes([tcp(server), ("127.0.0.1", 1)], version=7)
    wait_until(lambda: bool(calls), 5, "the change")
    assert client.config_version == 7
    wait_until(lambda: any("on_change hook failed" in r.getMessage() for r in caplog.records), 2)
    ref = weakref.ref(client)
    del client
    wait_until(lambda: collected([ref], endpoint), 5, "the dropped client to be collected")


# --------------------------------------------------------------------------- mid-run changes


def test_a_reply_that_changes_while_discoveries_run_never_goes_back(
    memcached_nodes: List[MemcachedProcess],
) -> None:
    """The node list changes many times while the poller and four threads call refresh():
    the version only goes up, and the nodes in use are always one of the lists served."""
    servers = [tcp(s) for s in memcached_nodes[:4]]
    lists = {v: servers[: 1 + v % 4] for v in range(1, 41)}
    with ConfigEndpoint(lists[1], version=1) as ep:
        client = ElastiCacheClient(ep.server, poll_interval=0.01, **FAST)
        try:
            seen: List[Tuple[Any, ...]] = []
            stop = threading.Event()
            errors: List[BaseException] = []

            def watch() -> None:
                while not stop.is_set():
                    version, nodes = client.config_version, sorted(client.nodes)
                    seen.append((version, nodes))
                    time.sleep(0.001)

            def refresher() -> None:
                try:
                    while not stop.is_set():
                        client.refresh()
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=watch)]
            threads += [threading.Thread(target=refresher) for _ in range(4)]
            for t in threads:
                t.start()
            for version in range(2, 41):
                ep.set_nodes(lists[version], version=version)
                time.sleep(0.01)
            wait_until(lambda: client.config_version == 40, 5, "the last version")
            stop.set()
            for t in threads:
                t.join(10)
            assert not errors, errors
            assert sorted(client.nodes) == sorted(lists[40])
            versions = [v for v, _ in seen if v is not None]
            assert versions == sorted(versions), "the version went back"
            # every node set in use was one the endpoint served: never a mix, never the
            # endpoint itself
            served = [sorted(nodes) for nodes in lists.values()]
            assert all(nodes in served for _, nodes in seen), "a node set never served"
        finally:
            client.close()


# --------------------------------------------------------------------------- fork


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_childs_poller_ends_when_the_child_drops_the_client(
    endpoint: ConfigEndpoint, server: MemcachedProcess
) -> None:
    client = ElastiCacheClient(endpoint.server, poll_interval=0.05, **FAST)
    try:
        assert client.polling

        def child() -> Dict[str, Any]:
            nonlocal client
            assert client.get("k") is None  # first use: the child's own poller
            report: Dict[str, Any] = {"polling": client.polling}
            ref = weakref.ref(client)
            del client
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                gc.collect()
                if ref() is None and not pollers(endpoint.server):
                    break
                time.sleep(0.02)
            report["collected"] = ref() is None
            report["pollers"] = len(pollers(endpoint.server))
            return report

        report = run_in_child(child)
        assert report == {"polling": True, "collected": True, "pollers": 0}
        assert client.polling  # the parent's poller is untouched
    finally:
        client.close()


def test_the_poller_logs_at_debug_only_while_healthy(
    endpoint: ConfigEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pymc")
    client = ElastiCacheClient(endpoint.server, poll_interval=0.02, **FAST)
    try:
        before = endpoint.requests
        wait_until(lambda: endpoint.requests > before + 3, 3, "a few polls")
    finally:
        client.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_during_a_poll_can_still_drop_the_client(
    endpoint: ConfigEndpoint, server: MemcachedProcess
) -> None:
    """Fork while the parent's poller is inside a (hung) discovery, holding the client."""
    client = ElastiCacheClient(endpoint.server, poll_interval=0.05, **FAST)
    try:
        endpoint.set_mode("stall")
        before = endpoint.requests
        wait_until(lambda: endpoint.requests > before, 3, "a discovery in flight")

        def child() -> Dict[str, Any]:
            nonlocal client
            endpoint_server = endpoint.server
            assert client.get("k") is None  # first use: the child's own poller
            ref = weakref.ref(client)
            del client
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                gc.collect()
                if ref() is None and not pollers(endpoint_server):
                    break
                time.sleep(0.02)
            return {"collected": ref() is None, "pollers": len(pollers(endpoint_server))}

        assert run_in_child(child) == {"collected": True, "pollers": 0}
    finally:
        client.close()
