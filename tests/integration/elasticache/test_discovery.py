"""ElastiCache discovery that never misroutes a key (issue 10).

Every case runs a live ElastiCacheClient against the suite's emulated configuration
endpoint (``pymc.testing.ConfigEndpoint``) in front of real memcached processes. The nodes
of the emulated cluster are emulators too, each relaying to one memcached (``upstream=``),
so that like real ElastiCache nodes they answer ``config get cluster``.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest
from support.helpers import run_in_child, tcp
from support.servers import MemcachedProcess

import pymc
from pymc import ClusterNotReadyError, ElastiCacheClient
from pymc.testing import ConfigEndpoint

pytestmark = pytest.mark.timeout(60)

Addr = Tuple[str, int]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s: {what or predicate}")
        time.sleep(0.01)


def pymc_threads() -> List[threading.Thread]:
    return [
        t for t in threading.enumerate() if t.name.startswith("pymc-elasticache") and t.is_alive()
    ]


class Cluster:
    """Real memcached processes, each behind an emulated ElastiCache node, and an endpoint."""

    def __init__(self, servers: List[MemcachedProcess]) -> None:
        self.servers = servers
        self.node_emulators = [ConfigEndpoint(upstream=tcp(s)).start() for s in servers]
        self.addresses: List[Addr] = [e.address for e in self.node_emulators]
        self.endpoint = ConfigEndpoint().start()
        self.version = 1

    def serve(self, indexes: List[int], version: Optional[int] = None) -> None:
        """Make the cluster ``indexes`` (on the endpoint and on every node)."""
        self.version = version if version is not None else self.version + 1
        nodes = [self.addresses[i] for i in indexes]
        for emulator in [self.endpoint, *self.node_emulators]:
            emulator.set_nodes(nodes, version=self.version)

    def holds(self, index: int, key: str) -> Optional[bytes]:
        with pymc.Client(tcp(self.servers[index]), timeout=2) as direct:
            value: Optional[bytes] = direct.get(key)
            return value

    def close(self) -> None:
        for emulator in [self.endpoint, *self.node_emulators]:
            emulator.stop()


@pytest.fixture
def cluster(memcached_nodes: List[MemcachedProcess]) -> Iterator[Cluster]:
    for server in memcached_nodes:
        if not server.is_running():
            server.start()
        server.flush_all()
    c = Cluster(memcached_nodes[:4])
    yield c
    c.close()


@pytest.fixture
def clients() -> Iterator[List[ElastiCacheClient]]:
    made: List[ElastiCacheClient] = []
    yield made
    for client in made:
        client.close()


def make(made: List[ElastiCacheClient], endpoint: Any, **kw: Any) -> ElastiCacheClient:
    kw.setdefault("connect_timeout", 1.0)
    kw.setdefault("timeout", 1.0)
    kw.setdefault("poll_interval", 0.1)
    client = ElastiCacheClient(endpoint, **kw)
    made.append(client)
    return client


class Load:
    """8 threads writing, reading and deleting through one client; every read is checked."""

    def __init__(self, client: ElastiCacheClient, tag: str, threads: int = 8) -> None:
        self.client = client
        self.tag = tag
        self.stop = threading.Event()
        self.errors: List[BaseException] = []
        self.ops = [0] * threads
        self.deleted: List[str] = []
        self.threads = [
            threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(threads)
        ]

    def _work(self, index: int) -> None:
        rng = random.Random(index)
        client = self.client
        try:
            n = 0
            while not self.stop.is_set():
                n += 1
                key = f"{self.tag}-{index}-{rng.randrange(50)}"
                value = f"{index}:{n}".encode()
                try:
                    client.set(key, value)
                    got = client.get(key)
                    assert got in (None, value), (key, got, value)  # never another value
                    client.delete(key)
                    gone = client.get(key)
                    assert gone is None, (key, gone)  # a delete is never undone
                    self.deleted.append(key)
                except pymc.MemcacheError:
                    pass  # a node that just left may fail a request: never a wrong value
                self.ops[index] += 1
        except BaseException as exc:
            self.errors.append(exc)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        assert not any(t.is_alive() for t in self.threads), "a load thread hangs"
        assert not self.errors, self.errors[:3]
        assert sum(self.ops) > 50, self.ops


def assert_nothing_outside(cluster: Cluster, inside: List[int], tag: str) -> None:
    """No key of the load is on a node outside ``inside``."""
    for index in range(len(cluster.servers)):
        if index in inside:
            continue
        stray = [
            k
            for k in (f"{tag}-{i}-{j}" for i in range(8) for j in range(50))
            if cluster.holds(index, k)
        ]
        assert not stray, f"keys on node {index}, outside the config: {stray[:5]}"


# --------------------------------------------------------------------------- each case, under load

CASES = ["legacy", "lf", "too_many", "endpoint_down_nodes_answer", "lower_version"]


@pytest.mark.parametrize("case", CASES)
def test_each_case_under_load_never_misroutes_and_recovers(
    cluster: Cluster, clients: List[ElastiCacheClient], case: str
) -> None:
    tag = f"load-{case}"
    cluster.serve([0, 1])
    client = make(clients, cluster.endpoint.server)
    assert client.ready and len(client.nodes) == 2
    with Load(client, tag):
        time.sleep(0.3)
        if case == "legacy":
            cluster.endpoint.set_mode("legacy")
            cluster.serve([0, 1, 2])  # a scale-out seen only through the legacy command
            wait_for(lambda: len(client.nodes) == 3, 5, "the legacy answer applied")
        elif case == "lf":
            cluster.endpoint.set_mode("lf")
            cluster.serve([1, 2])
            wait_for(lambda: set(client.nodes) == {cluster.addresses[1], cluster.addresses[2]}, 5)
        elif case == "too_many":
            cluster.endpoint.set_mode("too_many")
            cluster.serve([0, 1, 2])  # the nodes know; the full endpoint must not matter
            wait_for(lambda: len(client.nodes) == 3, 5, "the nodes' answer applied")
            cluster.endpoint.set_mode("normal")
        elif case == "endpoint_down_nodes_answer":
            cluster.endpoint.set_mode("down")
            cluster.serve([1, 2, 3])
            wait_for(lambda: len(client.nodes) == 3, 5, "a node's answer applied")
        elif case == "lower_version":
            for emulator in [cluster.endpoint, *cluster.node_emulators]:
                emulator.set_nodes([cluster.addresses[3]], version=cluster.version - 1)
            time.sleep(0.5)
            assert len(client.nodes) == 2  # an older config is never applied
        # Operations that chose a node before the change may still finish on it; after
        # that, nothing may reach a node outside the config. Clear those nodes and go on.
        current = [cluster.addresses.index(n) for n in client.nodes if isinstance(n, tuple)]
        time.sleep(0.2)
        for index in range(len(cluster.servers)):
            if index not in current:
                cluster.servers[index].flush_all()
        time.sleep(0.6)
    assert [cluster.addresses.index(n) for n in client.nodes if isinstance(n, tuple)] == current
    assert_nothing_outside(cluster, current, tag)
    # It recovers by itself: a new config is followed.
    for emulator in [cluster.endpoint, *cluster.node_emulators]:
        if emulator.mode not in ("normal",):
            emulator.set_mode("normal")
    cluster.serve([0, 3], version=cluster.version + 10)
    wait_for(lambda: set(client.nodes) == {cluster.addresses[0], cluster.addresses[3]}, 5)
    assert client.set(f"{tag}-after", b"1") and client.get(f"{tag}-after") == b"1"


# --------------------------------------------------------------------------- start-up


@pytest.mark.parametrize("ignore_exc", [False, True])
def test_start_up_with_the_endpoint_down_for_2_s(
    cluster: Cluster, clients: List[ElastiCacheClient], ignore_exc: bool
) -> None:
    cluster.serve([0, 1, 2])
    cluster.endpoint.set_mode("down")
    started = time.monotonic()
    client = make(clients, cluster.endpoint.server, poll_interval=0.3, ignore_exc=ignore_exc)
    assert not client.ready and client.nodes == []
    while time.monotonic() - started < 2.0:
        if ignore_exc:
            assert client.get("early") is None
            assert client.set("early", b"x") is False
            assert client.get_many(["early", "b"]) == {}
            assert client.set_many({"early": b"x"}) == ["early"]
        else:
            with pytest.raises(ClusterNotReadyError, match="wait_ready"):
                client.get("early")
            with pytest.raises(ClusterNotReadyError):
                client.set("early", b"x")
            with pytest.raises(ClusterNotReadyError):
                client.get_many(["early", "b"])
        time.sleep(0.1)
    # nothing was written anywhere, least of all to the endpoint's node
    assert all(cluster.holds(i, "early") is None for i in range(4))
    cluster.endpoint.set_mode("normal")
    assert client.wait_ready(5)
    assert len(client.nodes) == 3
    assert client.set("later", b"y") and client.get("later") == b"y"
    assert sum(cluster.holds(i, "later") == b"y" for i in range(3)) == 1


def test_ready_timeout_blocks_until_ready_or_raises(
    cluster: Cluster, clients: List[ElastiCacheClient]
) -> None:
    cluster.serve([0])
    client = make(clients, cluster.endpoint.server, ready_timeout=2)
    assert client.ready
    client.close()
    cluster.endpoint.set_mode("down")
    started = time.monotonic()
    with pytest.raises(ClusterNotReadyError):
        ElastiCacheClient(cluster.endpoint.server, ready_timeout=0.8, connect_timeout=0.3)
    assert time.monotonic() - started < 3
    # the client that gave up was closed: its poller is gone
    assert not [t for t in pymc_threads() if cluster.endpoint.server in t.name]


def test_startup_retries_quickly_then_at_the_interval(
    cluster: Cluster, clients: List[ElastiCacheClient]
) -> None:
    cluster.serve([0])
    cluster.endpoint.set_mode("garbage")
    client = make(clients, cluster.endpoint.server, poll_interval=30)
    # the constructor's try, then two more 0.5 s apart; then nothing for ~30 s
    wait_for(lambda: cluster.endpoint.requests >= 3, 3, "three quick tries")
    time.sleep(0.8)
    assert cluster.endpoint.requests == 3
    assert not client.ready


# --------------------------------------------------------------------------- what is plain


@pytest.mark.parametrize("mode", ["plain", "error"])
def test_only_a_real_no_config_answer_makes_the_endpoint_a_node(
    cluster: Cluster, clients: List[ElastiCacheClient], mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pymc")
    cluster.endpoint.set_mode(mode)  # bare ERROR to both commands, or ERROR then a miss
    client = make(clients, cluster.endpoint.server)
    assert client.plain and client.ready and client.nodes == [cluster.endpoint.address]
    assert not client.polling
    for _ in range(3):
        assert client.refresh() is False
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("mode", ["too_many", "garbage", "malformed", "stall", "down"])
def test_transient_failures_never_make_the_endpoint_a_node(
    cluster: Cluster, clients: List[ElastiCacheClient], mode: str
) -> None:
    cluster.endpoint.set_mode(mode)
    client = make(clients, cluster.endpoint.server, connect_timeout=0.3, timeout=0.3)
    assert not client.plain and not client.ready and client.nodes == []
    assert client.polling


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize("mode", ["slowloris", "huge"])
def test_discovery_has_a_deadline_and_a_size_cap(
    cluster: Cluster, clients: List[ElastiCacheClient], mode: str
) -> None:
    cluster.serve([0, 1])
    client = make(clients, cluster.endpoint.server, discovery_timeout=1.0)
    assert client.ready
    cluster.endpoint.set_mode(mode)
    started = time.monotonic()
    assert client.refresh() is False
    assert time.monotonic() - started < 2.0  # one deadline for the whole discovery
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 2.0
    assert not [t for t in pymc_threads() if cluster.endpoint.server in t.name]


def test_close_means_closed(cluster: Cluster, clients: List[ElastiCacheClient]) -> None:
    cluster.serve([0])
    changes: List[Any] = []
    client = make(clients, cluster.endpoint.server, on_change=lambda old, new: changes.append(new))
    cluster.endpoint.set_mode("stall")  # the next poll hangs in discovery
    polls = cluster.endpoint.requests
    wait_for(lambda: cluster.endpoint.requests > polls, 3, "a poll in flight")
    cluster.serve([1, 2])
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 1.5  # the discovery in flight was cut off
    assert not [t for t in pymc_threads() if cluster.endpoint.server in t.name]
    cluster.endpoint.set_mode("normal")
    time.sleep(0.5)
    assert client.nodes == [cluster.addresses[0]] and changes == []
    assert client.refresh() is False


# --------------------------------------------------------------------------- fork


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_follows_a_scale_out(
    cluster: Cluster, clients: List[ElastiCacheClient]
) -> None:
    cluster.serve([0])
    client = make(clients, cluster.endpoint.server)
    assert client.polling

    def child() -> Dict[str, Any]:
        report: Dict[str, Any] = {"polling_before": client.polling}
        client.set("child", b"1")  # first use: the child's own poller starts
        report["polling_after"] = client.polling
        deadline = time.monotonic() + 5
        while len(client.nodes) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        report["nodes"] = len(client.nodes)
        return report

    # The scale-out happens while the child runs: the parent serves it after 0.3 s.
    threading.Timer(0.3, cluster.serve, args=([0, 1, 2],)).start()
    report = run_in_child(child)
    assert report == {"polling_before": False, "polling_after": True, "nodes": 3}


# --------------------------------------------------------------------------- logging, jitter


def test_logging_levels(
    cluster: Cluster, clients: List[ElastiCacheClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pymc")
    cluster.serve([0])
    client = make(
        clients, cluster.endpoint.server, poll_interval=0.05, connect_timeout=0.3, timeout=0.3
    )
    cluster.endpoint.set_mode("garbage")
    polls = cluster.endpoint.requests
    wait_for(lambda: cluster.endpoint.requests > polls + 5, 5)
    for node in cluster.node_emulators:  # the nodes fail too: discovery is failing
        node.set_mode("garbage")
    time.sleep(0.3)
    cluster.endpoint.set_mode("normal")
    for node in cluster.node_emulators:
        node.set_mode("normal")
    cluster.serve([0, 1])
    wait_for(lambda: len(client.nodes) == 2, 5)
    ours = [r for r in caplog.records if r.name == "pymc" and "ElastiCache" in r.getMessage()]
    assert [r.levelno for r in ours if r.levelno >= logging.INFO] == [logging.WARNING, logging.INFO]
    assert sum(r.levelno == logging.DEBUG for r in ours) >= 5  # one per poll


# --------------------------------------------------------------------------- other clients


def test_ipv6_nodes(
    memcached_nodes: List[MemcachedProcess], clients: List[ElastiCacheClient]
) -> None:
    """Nodes named by IPv6 addresses in the config's ip field are reached over IPv6."""
    servers = memcached_nodes[:2]
    for server in servers:
        server.flush_all()
    nodes6 = [ConfigEndpoint(host="::1", upstream=tcp(s)).start() for s in servers]
    endpoint = ConfigEndpoint().start()
    try:
        config = [(f"node{i}.example", "::1", e.address[1]) for i, e in enumerate(nodes6)]
        for emulator in [endpoint, *nodes6]:
            emulator.set_nodes(config, version=7)
        client = make(clients, endpoint.server)
        assert set(client.nodes) == {("::1", e.address[1]) for e in nodes6}
        keys = [f"v6-{i}" for i in range(40)]
        assert client.set_many({k: b"6" for k in keys}) == []
        assert client.get_many(keys) == {k: b"6" for k in keys}
        held = [sum(1 for k in keys if pymc.Client(tcp(s)).get(k) == b"6") for s in servers]
        assert sum(held) == 40 and all(held)
        result = pymc.elasticache.discover(endpoint.server)
        assert [n.ip for n in result.nodes] == ["::1", "::1"]
    finally:
        for emulator in [endpoint, *nodes6]:
            emulator.stop()


# --------------------------------------------------------------------------- request size


@pytest.mark.parametrize("kind", ["client", "hash"])
def test_multi_gets_over_max_get_line_are_split_and_complete(
    memcached_nodes: List[MemcachedProcess], kind: str
) -> None:
    keys = [f"line-{i}-" + "y" * 100 for i in range(200)]  # ~21 KB of keys
    if kind == "client":
        client: Any = pymc.Client(tcp(memcached_nodes[0]), max_get_line=600, timeout=2)
    else:
        client = pymc.HashClient([tcp(n) for n in memcached_nodes], max_get_line=600, timeout=2)
    try:
        assert client.set_many({k: b"v" for k in keys}) == []
        assert client.get_many(keys) == {k: b"v" for k in keys}
        assert set(client.gets_many(keys)) == set(keys)
    finally:
        client.close()
    with pytest.raises(ValueError):
        pymc.Client(("127.0.0.1", 1), max_get_line=100)


# --------------------------------------------------------------------------- the CLI


def test_cli_discover_handles_the_legacy_command_and_ipv6() -> None:
    import subprocess
    import sys

    endpoint = ConfigEndpoint(
        [("node-a.example", "2001:db8::1", 11211), ("node-b.example", "10.0.0.2", 11212)],
        version=8,
        host="::1",
    ).start()
    try:
        endpoint.set_mode("legacy")
        result = subprocess.run(
            [sys.executable, "-m", "pymc", "--timeout", "2", "discover", endpoint.server],
            cwd=str(Path(__file__).resolve().parents[3]),
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        endpoint.stop()
    assert result.returncode == 0, result.stderr
    assert "version 8" in result.stdout
    assert "node-a.example 2001:db8::1 11211" in result.stdout
    assert "node-b.example 10.0.0.2 11212" in result.stdout
