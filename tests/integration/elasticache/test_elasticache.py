"""ElastiCacheClient against real memcached nodes behind an emulated configuration endpoint
(pymc.testing.ConfigEndpoint): discovery, scaling under load, every way the endpoint can
fail, plain memcached as the endpoint, start-up without an endpoint, the request path never
waiting for discovery, close(), and ``python -m pymc discover``."""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple, Type

import pytest
from support.servers import MemcachedProcess

import pymc
from pymc.elasticache import AWSElastiCacheHashClient, ElastiCacheClient
from pymc.testing import ConfigEndpoint

POLL = 0.2  # poll interval of the tests that wait for a poll
FAST: Dict[str, Any] = dict(connect_timeout=1.0, timeout=1.0)
Addr = Tuple[str, int]


def addr(server: MemcachedProcess) -> Addr:
    assert isinstance(server.address, tuple)
    return server.address


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.01) -> float:
    """Poll ``predicate`` until true; return the seconds it took. Fails after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"still false after {timeout}s: {predicate}")
        time.sleep(step)
    return time.monotonic() - started


def node_set(client: ElastiCacheClient) -> Set[Any]:
    return set(client.nodes)


def config_version(client: ElastiCacheClient) -> Optional[int]:
    """``client.config_version`` read afresh (mypy keeps an attribute narrowed by an
    earlier assert, across the calls that change it)."""
    return client.config_version


def pollers(endpoint: str) -> List[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("pymc-elasticache") and t.name.endswith(endpoint) and t.is_alive()
    ]


def warnings_of(caplog: pytest.LogCaptureFixture) -> List[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("pymc") and r.levelno >= logging.WARNING]


def stat(server: MemcachedProcess, name: str) -> int:
    return int(server.stats()[name])


@pytest.fixture
def endpoint() -> Iterator[ConfigEndpoint]:
    with ConfigEndpoint() as ep:
        yield ep


@pytest.fixture
def make_client() -> Iterator[Callable[..., ElastiCacheClient]]:
    """``make_client(endpoint, **kw)``: an ElastiCacheClient closed at teardown."""
    clients: List[ElastiCacheClient] = []

    def factory(
        endpoint: Any, cls: Type[ElastiCacheClient] = ElastiCacheClient, **kw: Any
    ) -> ElastiCacheClient:
        for name, value in FAST.items():
            kw.setdefault(name, value)
        client = cls(endpoint, **kw)
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


# -- discovery ----------------------------------------------------------------------------------


def test_start_up_discovery(
    endpoint: ConfigEndpoint,
    nodes: List[MemcachedProcess],
    make_client: Callable[..., ElastiCacheClient],
) -> None:
    endpoint.set_nodes([addr(n) for n in nodes[:3]], version=12)
    client = make_client(endpoint.server, poll_interval=60)
    assert node_set(client) == {addr(n) for n in nodes[:3]}
    assert client.config_version == 12
    assert endpoint.requests == 1
    assert client.polling and len(pollers(endpoint.server)) == 1
    keys = [f"key-{i}" for i in range(60)]
    client.set_many({k: k.upper().encode() for k in keys})
    assert client.get_many(keys) == {k: k.upper().encode() for k in keys}
    held = []
    for node in nodes:
        direct = pymc.Client(addr(node), **FAST)
        try:
            held.append(len(direct.get_many(keys)))
        finally:
            direct.close()
    assert all(held[:3]) and sum(held) == 60 and held[3] == 0  # spread over nodes 0-2 only


@pytest.mark.parametrize("use_vpc", [True, False])
def test_use_vpc_picks_the_ip_or_the_hostname(
    endpoint: ConfigEndpoint,
    nodes: List[MemcachedProcess],
    make_client: Callable[..., ElastiCacheClient],
    use_vpc: bool,
) -> None:
    port = addr(nodes[0])[1]
    endpoint.set_nodes([("localhost", "127.0.0.1", port)])
    client = make_client(endpoint.server, poll_interval=60, use_vpc=use_vpc)
    assert client.nodes == [("127.0.0.1" if use_vpc else "localhost", port)]
    assert client.set("vpc", b"1") and client.get("vpc") == b"1"


def test_a_node_without_ip_is_reached_by_hostname(
    endpoint: ConfigEndpoint,
    nodes: List[MemcachedProcess],
    make_client: Callable[..., ElastiCacheClient],
) -> None:
    port = addr(nodes[0])[1]
    endpoint.set_nodes([("localhost", "", port)])
    client = make_client(endpoint.server, poll_interval=60, use_vpc=True)
    assert client.nodes == [("localhost", port)]
    assert client.set("no-ip", b"1") and client.get("no-ip") == b"1"


def test_refresh_and_on_change(
    endpoint: ConfigEndpoint,
    nodes: List[MemcachedProcess],
    make_client: Callable[..., ElastiCacheClient],
) -> None:
    changes: List[Tuple[Set[Any], Set[Any]]] = []
    endpoint.set_nodes([addr(nodes[0])])
    client = make_client(
        endpoint.server,
        poll_interval=60,  # no poll races the refresh() calls below
        on_change=lambda old, new: changes.append((set(old), set(new))),
    )
    assert client.refresh() is False  # same version
    endpoint.set_nodes([addr(nodes[0]), addr(nodes[1])])
    assert client.refresh() is True
    assert node_set(client) == {addr(nodes[0]), addr(nodes[1])}
    assert client.config_version == 3
    assert changes == [({addr(nodes[0])}, {addr(nodes[0]), addr(nodes[1])})]
    endpoint.set_nodes(endpoint.nodes)  # a new version, the same nodes
    assert client.refresh() is False
    assert client.config_version == 4
    assert len(changes) == 1


def test_aws_elasticache_hash_client_reconfigure_nodes(
    endpoint: ConfigEndpoint,
    nodes: List[MemcachedProcess],
    make_client: Callable[..., ElastiCacheClient],
) -> None:
    endpoint.set_nodes([addr(nodes[0])])
    client = make_client(endpoint.server, cls=AWSElastiCacheHashClient, poll_interval=60)
    assert isinstance(client, AWSElastiCacheHashClient)
    assert client.nodes == [addr(nodes[0])]
    endpoint.set_nodes([addr(nodes[1])])
    client.reconfigure_nodes()
    assert client.nodes == [addr(nodes[1])]


# -- scaling under load -------------------------------------------------------------------------


class Load:
    """8 threads doing set/get/get_many on their own keys until stopped. A get returns the
    thread's last value or nothing (a key that just moved), never an older value."""

    def __init__(self, client: ElastiCacheClient, threads: int = 8) -> None:
        self.client = client
        self.stop = threading.Event()
        self.errors: List[BaseException] = []
        self.ops = [0] * threads
        self.threads = [
            threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(threads)
        ]

    def _work(self, index: int) -> None:
        rng = random.Random(index)
        last: dict[str, bytes] = {}
        client = self.client
        try:
            n = 0
            while not self.stop.is_set():
                n += 1
                key = f"load-{index}-{rng.randrange(300)}"
                value = f"{index}:{n}".encode()
                assert client.set(key, value) is True
                last[key] = value
                got = client.get(key)
                assert got in (None, value), (key, got, value)
                sample = rng.sample(sorted(last), min(10, len(last)))
                for k, v in client.get_many(sample).items():
                    assert v == last[k], (k, v, last[k])
                self.ops[index] += 3
        except BaseException as exc:
            self.errors.append(exc)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(5)
        assert not any(t.is_alive() for t in self.threads), "a load thread hangs"

    def check(self) -> None:
        assert not self.errors, self.errors[:3]
        assert all(n > 30 for n in self.ops), self.ops


@pytest.mark.parametrize("use_pooling", [False, True])
def test_scale_out_and_in_under_load(
    endpoint: ConfigEndpoint,
    nodes: List[MemcachedProcess],
    make_client: Callable[..., ElastiCacheClient],
    use_pooling: bool,
) -> None:
    a, b, c, d = nodes
    b_connections = stat(b, "curr_connections")  # before this client connects
    endpoint.set_nodes([addr(a), addr(b), addr(c)])
    client = make_client(endpoint.server, poll_interval=POLL, use_pooling=use_pooling)
    assert node_set(client) == {addr(a), addr(b), addr(c)}
    bound = 2 * POLL + 0.3  # "within about two poll intervals"
    with Load(client) as load:
        time.sleep(0.3)
        d_sets = stat(d, "cmd_set")
        endpoint.set_nodes([addr(a), addr(b), addr(c), addr(d)])  # scale out
        took = wait_for(lambda: len(client.nodes) == 4, timeout=5)
        assert took < bound, f"scale-out seen after {took:.2f}s"
        assert node_set(client) == {addr(a), addr(b), addr(c), addr(d)}
        wait_for(lambda: stat(d, "cmd_set") > d_sets + 10, timeout=3)  # the new node works

        endpoint.set_nodes([addr(a), addr(c), addr(d)])  # scale in: b goes
        took = wait_for(lambda: len(client.nodes) == 3, timeout=5)
        assert took < bound, f"scale-in seen after {took:.2f}s"
        assert node_set(client) == {addr(a), addr(c), addr(d)}
        time.sleep(0.1)  # operations that picked the old snapshot just before the swap end
        # (commands, not curr_items: memcached reclaims items an earlier flush_all
        # invalidated in its own time, so that count can change with no client at all)
        counted = ("cmd_set", "cmd_get", "delete_hits", "delete_misses", "cmd_touch")
        before = {name: stat(b, name) for name in counted}
        ops_before = sum(load.ops)
        time.sleep(0.5)
        ops_after = sum(load.ops)
    load.check()
    assert ops_after > ops_before + 100  # the load did run after the scale-in
    after = {name: stat(b, name) for name in before}
    assert after == before, "a key landed on the removed node"
    # the removed node's connections are closed once its last operations ended
    wait_for(lambda: stat(b, "curr_connections") <= b_connections, timeout=3)
    assert client.config_version == 4  # 1 empty, 2 at start-up, 3 out, 4 in


# -- a failing endpoint keeps the last good nodes -----------------------------------------------

FAILURES = ["equal-version", "lower-version", "garbage", "malformed", "error", "down", "stall"]


def break_endpoint(endpoint: ConfigEndpoint, how: str, new_nodes: List[Addr]) -> None:
    if how == "equal-version":
        endpoint.set_nodes(new_nodes, version=endpoint.version)
    elif how == "lower-version":
        endpoint.set_nodes(new_nodes, version=endpoint.version - 1)
    else:
        endpoint.set_nodes(new_nodes)  # a newer version nobody may see
        endpoint.set_mode(how)


@pytest.mark.parametrize("how", FAILURES)
def test_failures_keep_the_last_good_nodes_and_warn_once(
    endpoint: ConfigEndpoint,
    nodes: List[MemcachedProcess],
    make_client: Callable[..., ElastiCacheClient],
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    caplog.set_level(logging.INFO, logger="pymc")
    good = {addr(nodes[0]), addr(nodes[1])}
    endpoint.set_nodes(sorted(good), version=5)
    # short timeouts only where the endpoint stalls: elsewhere a slow poll on a busy machine
    # must not look like a failure
    limit = 0.3 if how == "stall" else 1.0
    client = make_client(endpoint.server, poll_interval=0.05, connect_timeout=limit, timeout=limit)
    assert node_set(client) == good
    assert not warnings_of(caplog)

    break_endpoint(endpoint, how, [addr(nodes[2])])
    assert client.refresh() is False
    polls = endpoint.requests
    if how == "down":
        time.sleep(0.5)  # about ten polls
    else:
        wait_for(lambda: endpoint.requests >= polls + 5, timeout=5)
    assert client.refresh() is False
    assert node_set(client) == good
    assert client.config_version == 5
    assert client.polling
    assert client.set("still", b"works") and client.get("still") == b"works"
    # the same version again is the normal case; an older one is logged at INFO, once
    failure = how not in ("equal-version", "lower-version")
    assert len(warnings_of(caplog)) == (1 if failure else 0), [
        r.getMessage() for r in warnings_of(caplog)
    ]

    # it recovers, and the next failure is news again: one more warning
    endpoint.set_mode("normal")
    endpoint.set_nodes([addr(nodes[2])], version=9)
    wait_for(lambda: client.config_version == 9, timeout=3)
    assert client.nodes == [addr(nodes[2])]
    endpoint.set_mode("garbage")
    wait_for(lambda: len(warnings_of(caplog)) == (2 if failure else 1), timeout=3)
    time.sleep(0.3)
    assert len(warnings_of(caplog)) == (2 if failure else 1)
    assert client.nodes == [addr(nodes[2])]


def test_a_new_outage_after_recovery_at_the_same_version_warns_again(
    endpoint: ConfigEndpoint,
    nodes: List[MemcachedProcess],
    make_client: Callable[..., ElastiCacheClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pymc")
    endpoint.set_nodes([addr(nodes[0])], version=3)
    client = make_client(endpoint.server, poll_interval=0.05)
    for outage in (1, 2):
        endpoint.set_mode("down")
        wait_for(lambda n=outage: len(warnings_of(caplog)) == n, timeout=3)  # type: ignore[misc]
        endpoint.set_mode("normal")  # back, with the very same configuration
        polls = endpoint.requests
        wait_for(lambda p=polls: endpoint.requests >= p + 2, timeout=3)  # type: ignore[misc]
    assert len(warnings_of(caplog)) == 2
    assert client.nodes == [addr(nodes[0])] and client.config_version == 3


# -- the endpoint is plain memcached ------------------------------------------------------------


def test_plain_memcached_endpoint_is_a_single_unpolled_node(
    nodes: List[MemcachedProcess],
    make_client: Callable[..., ElastiCacheClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pymc")
    server = nodes[0]
    client = make_client(server.server, poll_interval=0.05)
    assert client.nodes == [addr(server)]
    assert client.config_version is None
    assert not client.polling and not pollers(server.server)
    assert not warnings_of(caplog)  # a supported set-up, not a failure
    assert client.set("plain", b"yes")
    direct = pymc.Client(addr(server), **FAST)
    try:
        assert direct.get("plain") == b"yes"
    finally:
        direct.close()
    # nothing polls it behind our back: a poll would be a new connection
    connections = stat(server, "total_connections")
    time.sleep(0.3)
    assert stat(server, "total_connections") == connections + 1  # that stats() call's
    assert not pollers(server.server)


# -- no endpoint at start-up --------------------------------------------------------------------


@pytest.mark.parametrize("how", ["down", "stall"])
def test_unreachable_endpoint_at_start_up(
    endpoint: ConfigEndpoint,
    nodes: List[MemcachedProcess],
    make_client: Callable[..., ElastiCacheClient],
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    caplog.set_level(logging.INFO, logger="pymc")
    endpoint.set_nodes([addr(nodes[0]), addr(nodes[1])])
    endpoint.set_mode(how)
    started = time.monotonic()
    client = make_client(
        endpoint.server, poll_interval=POLL, connect_timeout=0.3, timeout=0.3, ignore_exc=False
    )
    assert time.monotonic() - started < 2.0
    # Never the endpoint as a node: not ready, and requests say so.
    assert client.nodes == [] and not client.ready
    assert client.config_version is None
    assert client.polling
    with pytest.raises(pymc.ClusterNotReadyError):
        client.get("k")
    with pytest.raises(pymc.ClusterNotReadyError):
        client.set_many({"k": b"v"})
    assert len(warnings_of(caplog)) == 1
    time.sleep(2 * POLL)
    assert client.nodes == []
    assert len(warnings_of(caplog)) == 1

    endpoint.set_mode("normal")
    assert client.wait_ready(2 * POLL + 2.0)
    wait_for(lambda: len(client.nodes) == 2, timeout=1.0)
    assert node_set(client) == {addr(nodes[0]), addr(nodes[1])}
    assert config_version(client) == 2
    assert client.set("back", b"1") and client.get("back") == b"1"


# -- discovery never blocks a request -----------------------------------------------------------


def test_requests_never_wait_for_a_stalled_endpoint(
    endpoint: ConfigEndpoint,
    nodes: List[MemcachedProcess],
    make_client: Callable[..., ElastiCacheClient],
) -> None:
    endpoint.set_nodes([addr(nodes[0]), addr(nodes[1])])
    client = make_client(endpoint.server, poll_interval=0.02, connect_timeout=1.0, timeout=1.0)
    endpoint.set_mode("stall")
    polls = endpoint.requests
    wait_for(lambda: endpoint.requests > polls, timeout=2)  # the poller now hangs for 1 s
    refresher = threading.Thread(target=client.refresh, daemon=True)  # and so does a refresh
    refresher.start()
    worst = 0.0
    deadline = time.monotonic() + 0.6
    n = 0
    while time.monotonic() < deadline:
        n += 1
        t0 = time.monotonic()
        assert client.set(f"s{n % 50}", b"v")
        assert client.get(f"s{n % 50}") == b"v"
        client.get_many([f"s{i}" for i in range(10)])
        worst = max(worst, time.monotonic() - t0)
    assert n > 50
    # A request that waited for the stalled discovery would take about its 1 s; the bound
    # leaves room for a loaded machine (0.28 s was seen on 2 busy cores).
    assert worst < 0.6, f"a request took {worst:.3f}s while discovery stalled"
    refresher.join(3)
    assert not refresher.is_alive()


# -- close --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["normal", "stall"])
def test_close_stops_the_poller_promptly(
    endpoint: ConfigEndpoint,
    nodes: List[MemcachedProcess],
    make_client: Callable[..., ElastiCacheClient],
    mode: str,
) -> None:
    endpoint.set_nodes([addr(nodes[0])])
    # a long interval: close() must not wait for it; in "stall" the poller is mid-request
    interval = 30.0 if mode == "normal" else 0.02
    client = make_client(endpoint.server, poll_interval=interval, connect_timeout=0.3, timeout=0.3)
    endpoint.set_mode(mode)
    if mode == "stall":
        polls = endpoint.requests
        wait_for(lambda: endpoint.requests > polls, timeout=2)
    assert len(pollers(endpoint.server)) == 1
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 1.0
    wait_for(lambda: not pollers(endpoint.server), timeout=1.0)
    assert not client.polling
    client.close()  # twice is fine


def test_context_manager_stops_the_poller(
    endpoint: ConfigEndpoint, nodes: List[MemcachedProcess]
) -> None:
    endpoint.set_nodes([addr(nodes[0])])
    with ElastiCacheClient(endpoint.server, poll_interval=30, **FAST) as client:
        assert client.polling
        assert client.set("cm", b"1")
    wait_for(lambda: not pollers(endpoint.server), timeout=1.0)


# -- the command line ---------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pymc", "--timeout", "2", *args],
        cwd=str(Path(__file__).resolve().parents[3]),  # the checkout
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cli_discover(endpoint: ConfigEndpoint, nodes: List[MemcachedProcess]) -> None:
    endpoint.set_nodes([("node-a.example", "10.1.2.3", 11211), ("0b.example", "", 11212)], 42)
    result = run_cli("discover", endpoint.server)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "42" in lines[0]
    assert any(
        "node-a.example" in line and "10.1.2.3" in line and "11211" in line for line in lines
    )
    assert any("0b.example" in line and "11212" in line for line in lines)

    result = run_cli("discover", nodes[0].server)  # plain memcached
    assert result.returncode != 0
    assert "ERROR" in result.stdout + result.stderr

    endpoint.set_mode("down")
    result = run_cli("discover", endpoint.server)
    assert result.returncode != 0 and result.stderr


# -- TLS: nodes reached by IP are verified against their hostname --------------------------


def test_a_node_reached_by_ip_verifies_its_certificate_against_its_hostname(
    new_memcached: Callable[..., MemcachedProcess],
) -> None:
    """The certificate names only the node's DNS name, as ElastiCache's do: reached by IP,
    the node verifies only when the hostname is what TLS checks."""
    node = new_memcached(tls=True, tls_names=("node-1.cache.example",))
    context = node.client_ssl_context()
    by_ip = pymc.PooledClient(addr(node), tls_context=context, connect_timeout=1)
    with pytest.raises(pymc.MemcacheConnectError):
        by_ip.get("k")  # the certificate is not for 127.0.0.1
    named = pymc.PooledClient(
        addr(node), tls_context=context, connect_timeout=1, tls_hostname="node-1.cache.example"
    )
    assert named.set("k", b"v") and named.get("k") == b"v"
    named.close()


def test_use_vpc_gives_each_node_pool_its_hostname_for_tls(
    endpoint: ConfigEndpoint, nodes: List[MemcachedProcess], make_client: Any
) -> None:
    endpoint.set_nodes([("localhost", "127.0.0.1", n.port) for n in nodes[:2]])
    client = make_client(endpoint.server, use_vpc=True)
    assert sorted(client.clients) == sorted(f"127.0.0.1:{n.port}" for n in nodes[:2])
    assert {pool.tls_hostname for pool in client.clients.values()} == {"localhost"}
    assert client.set("k", b"v") and client.get("k") == b"v"
