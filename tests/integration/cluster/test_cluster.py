"""HashClient against real memcached processes.

What a user of a cluster would see is checked on real servers: where each key is stored
(read back from every node with a plain Client, and compared with pymemcache and pylibmc),
how long a multi-key call takes when every node is slow, what happens when a node dies
and comes back, when all of them die, and when the node set changes under many threads.
"""

from __future__ import annotations

import inspect
import socket
import threading
import time
import uuid
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)
from urllib.parse import unquote_to_bytes

import pylibmc
import pymemcache.client.hash
import pytest
from support.faultproxy import FaultProxy
from support.helpers import stat, tcp, wait_until
from support.servers import MemcachedProcess, request

import pymc
from pymc import (
    Client,
    HashClient,
    KetamaHash,
    MemcacheError,
    MemcachePoolTimeoutError,
    ObjectPool,
    PooledClient,
    RendezvousHash,
)
from pymc.client import server_name
from pymc.cluster import AllNodesDownError, NodeSet

ProxyFactory = Callable[[Tuple[str, int]], FaultProxy]
ServerFactory = Callable[..., MemcachedProcess]
Event = Tuple[str, str, Dict[str, Any]]
#: What HashClient.set_many takes: a key, or a ``(server_key, key)`` tuple. Its Mapping's key
#: type is invariant, so a dict[str, bytes] would not do.
HashKey = Union[str, bytes, Tuple[Any, Union[str, bytes]]]
Values = Dict[HashKey, bytes]

pytestmark = pytest.mark.timeout(30)

# Fast failure detection for the failover tests.
FAILOVER: Dict[str, Any] = dict(
    retry_timeout=0, retry_attempts=2, dead_timeout=0.5, connect_timeout=0.2, timeout=0.5
)


# -- helpers ------------------------------------------------------------------------------------


#: In every key this module writes, so the cleanup below finds them all.
RUN = f"cl{uuid.uuid4().hex[:6]}"


def tag() -> str:
    """A prefix no other test (or run) uses, so the shared session servers need no flush."""
    return RUN + uuid.uuid4().hex[:6]


@pytest.fixture(scope="module", autouse=True)
def leave_the_shared_nodes_clean(memcached_nodes: List[MemcachedProcess]) -> Iterator[None]:
    """Delete every key this module wrote to the session servers (other modules count
    their items, and ``flush_all`` leaves ``curr_items`` as it was)."""
    yield
    for node in memcached_nodes:
        if not node.is_running():
            continue
        with node.connect() as sock:
            dump = request(sock, b"lru_crawler metadump all\r\n", b"END\r\n")
            keys = [
                unquote_to_bytes(line.split(b" ", 1)[0][4:].decode())
                for line in dump.split(b"\n")
                if line.startswith(b"key=")
            ]
            mine = [k for k in keys if RUN.encode() in k]
            for start in range(0, len(mine), 500):
                batch = b"".join(b"delete %s noreply\r\n" % k for k in mine[start : start + 500])
                assert request(sock, batch + b"version\r\n", b"\r\n").startswith(b"VERSION")


def locate(
    servers: Sequence[Any], keys: Iterable[Any], allow_unicode_keys: bool = False
) -> Dict[Any, str]:
    """``{key: name of the one node that holds it}``, asking every node with a plain Client.
    A key found on more than one node fails the test."""
    keys = list(keys)
    found: Dict[Any, str] = {}
    for server in servers:
        name = server_name(tcp(server))
        with Client(tcp(server), allow_unicode_keys=allow_unicode_keys, timeout=5) as plain:
            for start in range(0, len(keys), 500):
                for key in plain.get_many(keys[start : start + 500]):
                    assert key not in found, f"{key!r} is on {found[key]} and on {name}"
                    found[key] = name
    return found


def timed(fn: Callable[[], Any]) -> Tuple[Any, float]:
    start = time.monotonic()
    result = fn()
    return result, time.monotonic() - start


class Events:
    """An ``on_event`` hook that records what it is told (thread-safe)."""

    def __init__(self) -> None:
        self.seen: List[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: str, node: str, info: Dict[str, Any]) -> None:
        with self._lock:
            self.seen.append((event, node, dict(info)))

    def of(self, event: str, node: Optional[str] = None) -> List[Event]:
        with self._lock:
            return [e for e in self.seen if e[0] == event and (node is None or e[1] == node)]


def in_use(pool: ObjectPool[Any], count: int) -> Callable[[], bool]:
    """A predicate for wait_until: ``pool`` has ``count`` objects checked out."""
    return lambda: pool.used == count


def keys_on(client: HashClient, name: str, keys: Iterable[Any]) -> List[Any]:
    nodes = client.snapshot
    return [k for k in keys if nodes.node_for(k) == name]


def join_all(threads: Sequence[threading.Thread], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"threads still running (hung?): {alive}"


# -- placement ----------------------------------------------------------------------------------


def test_rendezvous_placement_matches_pymemcache(
    memcached_nodes: List[MemcachedProcess],
) -> None:
    servers = [tcp(s) for s in memcached_nodes]
    t = tag()
    ascii_keys: List[Any] = [f"{t}-key-{i}" for i in range(700)]
    unicode_keys: List[Any] = [f"{t}-ключ-€-{i}" for i in range(700)]
    bytes_keys: List[Any] = [f"{t}-bytes-{i}".encode() for i in range(600)]
    keys = ascii_keys + unicode_keys + bytes_keys
    values = {k: f"value-{i}".encode() for i, k in enumerate(keys)}
    client = HashClient(servers, allow_unicode_keys=True)
    # Half through set_many (the fan-out), half through set (the single-key path).
    half = len(keys) // 2
    assert client.set_many({k: values[k] for k in keys[:half]}) == []
    for key in keys[half:]:
        assert client.set(key, values[key]) is True

    reference = pymemcache.client.hash.HashClient(servers, allow_unicode_keys=True)
    # A deliberate difference: pymemcache places b"k" by its repr "b'k'", pymc with "k"
    # (both spellings of a key on one node), so pymemcache is asked for the str spelling.
    expected = {
        k: server_name(reference._get_client(k.decode() if type(k) is bytes else k).server)
        for k in keys
    }
    assert len(set(expected.values())) == 4  # the keys spread over every node
    assert locate(memcached_nodes, keys, allow_unicode_keys=True) == expected
    assert {k: client.snapshot.node_for(k) for k in keys} == expected
    assert client.get_many(keys) == values
    assert all(client.get(k) == values[k] for k in keys[::50])
    client.close()


def test_ketama_placement_matches_pylibmc(memcached_nodes: List[MemcachedProcess]) -> None:
    servers = [tcp(s) for s in memcached_nodes]
    t = tag()
    mc = pylibmc.Client([s.server for s in memcached_nodes], behaviors={"ketama_weighted": True})
    client = HashClient(servers, hasher=KetamaHash)
    try:
        # pylibmc writes, pymc reads (through the cluster, and node by node).
        theirs = {f"{t}-libmc-{i}": f"from pylibmc {i}".encode() for i in range(1000)}
        assert mc.set_multi(theirs) == []
        placed = locate(memcached_nodes, theirs)
        assert len(placed) == len(theirs)
        assert len(set(placed.values())) == 4
        assert {k: client.snapshot.node_for(k) for k in theirs} == placed
        assert client.get_many(list(theirs)) == theirs

        # pymc writes, pylibmc reads.
        ours: Values = {f"{t}-pymc-{i}": f"from pymc {i}".encode() for i in range(1000)}
        assert client.set_many(ours) == []
        assert mc.get_multi(list(ours)) == ours
        placed = locate(memcached_nodes, ours)
        assert {k: client.snapshot.node_for(k) for k in ours} == placed
    finally:
        mc.disconnect_all()
        client.close()


def test_tuple_keys_route_by_their_server_key(memcached_nodes: List[MemcachedProcess]) -> None:
    servers = [tcp(s) for s in memcached_nodes]
    t = tag()
    client = HashClient(servers)
    keys = [("user-42", f"{t}-item-{i}") for i in range(100)]
    # Routed by the key itself, these would spread over the nodes.
    assert len({client.snapshot.node_for(k[1]) for k in keys}) > 1
    home = client.snapshot.node_for("user-42")

    assert client.set_many({k: f"v{i}".encode() for i, k in enumerate(keys)}) == []
    # HashClient's single-key commands are typed as Client's (str | bytes), though they take
    # the (server_key, key) tuples set_many/get_many/delete_many are typed for: so the ignores.
    assert client.set(("user-42", f"{t}-single"), b"one") is True  # type: ignore[arg-type]
    real_keys = [k[1] for k in keys] + [f"{t}-single"]
    assert set(locate(memcached_nodes, real_keys).values()) == {home}

    assert client.get(keys[3]) == b"v3"  # type: ignore[arg-type]
    assert client.get(("user-42", f"{t}-single")) == b"one"  # type: ignore[arg-type]
    got = client.get_many(keys)
    assert got == {k: f"v{i}".encode() for i, k in enumerate(keys)}  # keyed by the tuples
    assert client.delete(("user-42", f"{t}-single")) is True  # type: ignore[arg-type]
    assert client.delete_many(keys) is True
    assert client.get_many(keys) == {}
    assert locate(memcached_nodes, real_keys) == {}
    client.close()


# -- fan-out ------------------------------------------------------------------------------------


def test_multi_key_commands_wait_for_the_slowest_node_not_the_sum(
    memcached_nodes: List[MemcachedProcess], fault_proxy: ProxyFactory
) -> None:
    proxies = [fault_proxy(tcp(s)) for s in memcached_nodes]
    client = HashClient([p.address for p in proxies], timeout=3, connect_timeout=3)
    t = tag()
    values: Values = {f"{t}-{i}": f"v{i}".encode() for i in range(200)}
    keys = list(values)
    assert {client.snapshot.node_for(k) for k in keys} == {p.server for p in proxies}
    assert client.set_many(values) == []  # every node has a warm connection now
    assert client.get_many(keys) == values
    for proxy in proxies:
        proxy.set_mode("delay", seconds=0.3)

    got, elapsed = timed(lambda: client.get_many(keys))
    assert got == values
    assert 0.29 <= elapsed < 0.55, elapsed

    got, elapsed = timed(lambda: client.gets_many(keys))
    assert {k: v for k, (v, _) in got.items()} == values
    assert all(isinstance(cas, bytes) and cas.isdigit() for _, cas in got.values())
    assert 0.29 <= elapsed < 0.55, elapsed

    new_values = {k: v + b"-new" for k, v in values.items()}
    failed, elapsed = timed(lambda: client.set_many(new_values))
    assert failed == []
    assert 0.29 <= elapsed < 0.55, elapsed

    got, elapsed = timed(lambda: client.get_many(keys))
    assert got == new_values
    assert elapsed < 0.55, elapsed

    deleted, elapsed = timed(lambda: client.delete_many(keys))
    assert deleted is True
    assert 0.29 <= elapsed < 0.55, elapsed

    for proxy in proxies:
        proxy.set_mode("pass")
    assert client.get_many(keys) == {}
    assert locate(memcached_nodes, keys) == {}
    client.close()


def test_get_many_with_ignore_exc_returns_the_other_nodes_values_when_one_stalls(
    memcached_nodes: List[MemcachedProcess], fault_proxy: ProxyFactory
) -> None:
    proxies = [fault_proxy(tcp(s)) for s in memcached_nodes]
    addresses = [p.address for p in proxies]
    client = HashClient(addresses, ignore_exc=True, timeout=0.5, connect_timeout=0.5)
    strict = HashClient(addresses, timeout=0.5, connect_timeout=0.5)
    t = tag()
    values: Values = {f"{t}-{i}": f"v{i}".encode() for i in range(200)}
    assert client.set_many(values) == []
    assert strict.get_many(list(values)) == values
    stalled = proxies[1].server
    on_stalled = keys_on(client, stalled, values)
    assert on_stalled
    expected = {k: v for k, v in values.items() if k not in on_stalled}

    proxies[1].set_mode("stall")
    got, elapsed = timed(lambda: client.get_many(list(values)))
    assert got == expected
    assert elapsed < 1.0, elapsed  # about one timeout, not one per node

    with pytest.raises(MemcacheError):
        strict.get_many(list(values))

    # The other multi-key commands leave the stalled node's keys out the same way.
    failed, elapsed = timed(lambda: client.set_many(values))
    assert sorted(failed) == sorted(on_stalled)
    assert elapsed < 1.0, elapsed
    client.close()
    strict.close()


def test_get_many_with_ignore_exc_skips_a_killed_node(new_memcached: ServerFactory) -> None:
    servers = [new_memcached() for _ in range(4)]
    client = HashClient([tcp(s) for s in servers], ignore_exc=True, **FAILOVER)
    t = tag()
    values: Values = {f"{t}-{i}": f"v{i}".encode() for i in range(200)}
    assert client.set_many(values) == []
    victim = servers[2]
    on_victim = keys_on(client, victim.server, values)
    assert on_victim
    victim.kill()
    got, elapsed = timed(lambda: client.get_many(list(values)))
    assert got == {k: v for k, v in values.items() if k not in on_victim}
    assert elapsed < 1.0, elapsed
    assert client.get(on_victim[0], default="dflt") == "dflt"
    client.close()


# -- failover -----------------------------------------------------------------------------------


def test_dead_node_is_ejected_its_keys_remap_and_it_comes_back(
    new_memcached: ServerFactory,
) -> None:
    servers = [new_memcached() for _ in range(3)]
    names = [s.server for s in servers]
    events = Events()
    client = HashClient([tcp(s) for s in servers], on_event=events, **FAILOVER)
    t = tag()
    keys = [f"{t}-{i}" for i in range(300)]
    assert client.set_many({k: b"before" for k in keys}) == []
    victim = servers[1]
    name = victim.server
    on_victim = keys_on(client, name, keys)
    elsewhere = [k for k in keys if k not in on_victim]
    assert on_victim and elsewhere
    version = client.snapshot.version

    victim.kill()
    # retry_attempts=2: the first failure only counts, the second ejects.
    with pytest.raises(MemcacheError):
        client.set(on_victim[0], b"after")
    assert name in client.snapshot.names
    assert [e[2]["failures"] for e in events.of("node_failed", name)] == [1]
    assert not events.of("node_ejected")
    with pytest.raises(MemcacheError):
        client.get(on_victim[0])
    assert name not in client.snapshot.names
    assert sorted(client.snapshot.names) == sorted(n for n in names if n != name)
    assert sorted(client.nodes) == sorted(tcp(s) for s in servers if s is not victim)
    assert client.snapshot.version > version
    assert [e[2]["failures"] for e in events.of("node_failed", name)] == [1, 2]
    assert len(events.of("node_ejected", name)) == 1

    # The dead node's keys now live elsewhere; the others did not move.
    assert {client.snapshot.node_for(k) for k in on_victim} <= set(names) - {name}
    assert client.get_many(elsewhere) == {k: b"before" for k in elsewhere}
    assert client.get_many(on_victim) == {}
    assert client.set_many({k: b"after" for k in keys}) == []
    assert client.get_many(keys) == {k: b"after" for k in keys}
    assert all(client.get(k) == b"after" for k in on_victim)

    # Back on the same port: re-admitted after dead_timeout by the background probe.
    victim.start()
    deadline = time.monotonic() + 5.0
    while name not in client.snapshot.names:
        assert time.monotonic() < deadline, "the restarted node was never re-admitted"
        client.get(elsewhere[0])  # requests are what start the probe
        time.sleep(0.05)
    assert len(events.of("node_revived", name)) == 1
    assert sorted(client.snapshot.names) == sorted(names)
    assert sorted(client.nodes) == sorted(tcp(s) for s in servers)
    # Its keys map back to it (it restarted empty), and it takes writes again.
    assert {client.snapshot.node_for(k) for k in on_victim} == {name}
    assert client.get_many(on_victim) == {}
    assert client.set_many({k: b"revived" for k in on_victim}) == []
    with Client(tcp(victim)) as plain:  # (stale copies from its absence stay elsewhere)
        assert plain.get_many(on_victim) == {k: b"revived" for k in on_victim}
    assert client.get_many(keys) == {
        **{k: b"after" for k in elsewhere},
        **{k: b"revived" for k in on_victim},
    }
    client.close()


def test_failures_seen_after_an_ejection_do_not_count_against_the_revived_node(
    memcached_nodes: List[MemcachedProcess], fault_proxy: ProxyFactory
) -> None:
    proxies = [fault_proxy(tcp(s)) for s in memcached_nodes[:3]]
    victim = proxies[0]
    events = Events()
    client = HashClient(
        [p.address for p in proxies],
        use_pooling=True,
        max_pool_size=4,
        on_event=events,
        **FAILOVER,
    )
    key = keys_on(client, victim.server, (f"{tag()}-{i}" for i in range(1000)))[0]
    assert client.set(key, b"v") is True

    # Four requests in flight on the node when it stops answering: the second failure
    # ejects it, the last two arrive when it is already out.
    victim.set_mode("stall")
    barrier = threading.Barrier(4)

    def read() -> None:
        barrier.wait(5)
        with pytest.raises(MemcacheError):
            client.get(key)

    readers = [threading.Thread(target=read, daemon=True) for _ in range(4)]
    for reader in readers:
        reader.start()
    join_all(readers)
    assert victim.server not in client.snapshot.names
    assert len(events.of("node_ejected", victim.server)) == 1

    victim.set_mode("pass")
    deadline = time.monotonic() + 5.0
    while victim.server not in client.snapshot.names:
        assert time.monotonic() < deadline, "never re-admitted"
        client.get(f"{key}-other")
        time.sleep(0.05)

    # Re-admitted with a clean record: again retry_attempts (2) failures before ejection.
    victim.set_mode("stall")
    with pytest.raises(MemcacheError):
        client.get(key)
    assert victim.server in client.snapshot.names
    with pytest.raises(MemcacheError):
        client.get(key)
    assert victim.server not in client.snapshot.names
    assert len(events.of("node_ejected", victim.server)) == 2
    client.close()


def test_a_pool_timeout_in_a_fan_out_is_hidden_by_ignore_exc(
    memcached_nodes: List[MemcachedProcess], fault_proxy: ProxyFactory
) -> None:
    proxies = [fault_proxy(tcp(s)) for s in memcached_nodes]
    addresses = [p.address for p in proxies]
    common: Dict[str, Any] = dict(use_pooling=True, max_pool_size=1, pool_timeout=0.1, timeout=3)
    client = HashClient(addresses, ignore_exc=True, **common)
    strict = HashClient(addresses, **common)
    t = tag()
    values: Values = {f"{t}-{i}": f"v{i}".encode() for i in range(100)}
    assert client.set_many(values) == []
    slow = proxies[0]
    on_slow = keys_on(client, slow.server, values)
    others = {k: v for k, v in values.items() if k not in on_slow}
    slow.set_mode("delay", seconds=2.0)

    # Another thread holds the slow node's only connection (of each client) meanwhile.
    holders = [
        threading.Thread(target=hc.get, args=(on_slow[0],), daemon=True) for hc in (client, strict)
    ]
    for holder in holders:
        holder.start()
    for hc in (client, strict):
        pool = hc.clients[slow.server].client_pool
        wait_until(in_use(pool, 1), what="the holder to check the connection out")

    # (The holders keep the connections for 2 s: the four waits of 0.1 s below fit in that
    # on a loaded machine; with 0.8 s they once did not, and strict got the connection.)
    with pytest.raises(MemcachePoolTimeoutError):
        strict.get_many(list(values))
    assert client.get(on_slow[1], default="dflt") == "dflt"  # as for one key...
    got, elapsed = timed(lambda: client.get_many(list(values)))  # ...so for many
    assert got == others
    assert elapsed < 0.5, elapsed
    assert sorted(client.set_many(values)) == sorted(on_slow)
    assert in_use(client.clients[slow.server].client_pool, 1)(), "the holder let go too soon"
    join_all(holders)
    client.close()
    strict.close()


def test_all_nodes_down_raises_a_clear_memcache_error(new_memcached: ServerFactory) -> None:
    servers = [new_memcached() for _ in range(2)]
    options = {**FAILOVER, "dead_timeout": 60}
    client = HashClient([tcp(s) for s in servers], **options)
    lenient = HashClient([tcp(s) for s in servers], ignore_exc=True, **options)
    t = tag()
    keys = [f"{t}-{i}" for i in range(50)]
    assert client.set_many({k: b"v" for k in keys}) == []
    assert lenient.get_many(keys) == {k: b"v" for k in keys}
    for server in servers:
        server.kill()

    for hc in (client, lenient):
        for _ in range(20):  # each node fails retry_attempts times, then is ejected
            if not hc.snapshot.names:
                break
            for key in keys[:10]:
                try:
                    hc.get(key)
                except MemcacheError:
                    pass
        assert hc.snapshot.names == ()

    with pytest.raises(AllNodesDownError, match="down") as info:
        client.get(keys[0])
    assert isinstance(info.value, MemcacheError)
    for call in (
        lambda: client.set(keys[0], b"v"),
        lambda: client.get_many(keys),
        lambda: client.set_many({keys[0]: b"v"}),
        lambda: client.delete(keys[0]),
        lambda: client.incr(keys[0], 1),
    ):
        with pytest.raises(AllNodesDownError):
            call()

    assert lenient.get(keys[0]) is None
    assert lenient.get(keys[0], default="dflt") == "dflt"
    assert lenient.get(keys[0], "dflt") == "dflt"
    assert lenient.gets(keys[0], default="d", cas_default="c") == ("d", "c")
    assert lenient.get_many(keys) == {}
    assert lenient.gets_many(keys) == {}
    assert lenient.set(keys[0], b"v") is False
    assert sorted(lenient.set_many({k: b"v" for k in keys})) == sorted(keys)
    assert lenient.delete(keys[0]) is False
    assert lenient.incr(keys[0], 1) is None
    client.close()
    lenient.close()


# -- threads ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ignore_exc", [True, False], ids=["ignore_exc", "raising"])
@pytest.mark.parametrize("use_pooling", [False, True], ids=["one-conn", "pooled"])
def test_threads_read_only_their_own_values_while_a_node_dies(
    new_memcached: ServerFactory, ignore_exc: bool, use_pooling: bool
) -> None:
    servers = [new_memcached() for _ in range(4)]
    options = {**FAILOVER, "dead_timeout": 60}
    client = HashClient(
        [tcp(s) for s in servers],
        ignore_exc=ignore_exc,
        use_pooling=use_pooling,
        max_pool_size=4,
        **options,
    )
    t = tag()
    n_threads, n_keys = 16, 12
    stop = threading.Event()
    killed = threading.Event()
    wrong: List[str] = []
    errors: List[BaseException] = []
    reads_after_kill = [0] * n_threads

    def work(me: int) -> None:
        keys = [f"{t}-t{me}-k{j}" for j in range(n_keys)]
        confirmed: Dict[str, Optional[str]] = dict.fromkeys(keys)
        pending: Dict[str, Set[str]] = {k: set() for k in keys}

        def check(key: str, got: Any) -> None:
            if got is None:
                return
            value = got.decode() if isinstance(got, bytes) else got
            if value != confirmed[key] and value not in pending[key]:
                wrong.append(
                    f"thread {me} read {value!r} for {key}: expected "
                    f"{confirmed[key]!r} or one of {pending[key]}"
                )
            elif killed.is_set():
                reads_after_kill[me] += 1

        seq = 0
        try:
            while not stop.is_set():
                seq += 1
                key = keys[seq % n_keys]
                value = f"{me}-{seq % n_keys}-{seq}"
                try:
                    stored = client.set(key, value)
                except MemcacheError as exc:
                    errors.append(exc)
                    stored = False
                if stored:
                    confirmed[key] = value
                    pending[key].clear()
                else:
                    pending[key].add(value)  # it may have been stored all the same
                try:
                    check(key, client.get(key))
                    if seq % 5 == 0:
                        got = client.get_many(keys)
                        assert set(got) <= set(keys), f"foreign keys: {set(got) - set(keys)}"
                        for k, v in got.items():
                            check(k, v)
                except MemcacheError as exc:
                    errors.append(exc)
        except BaseException as exc:  # anything else is a failure of the test
            errors.append(exc)
            raise

    threads = [
        threading.Thread(target=work, args=(i,), name=f"worker-{i}", daemon=True)
        for i in range(n_threads)
    ]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.4)
        # SIGKILL without waiting here for the process to be reaped: under 16 busy threads
        # the main thread's polling wait can be starved of the GIL for a long time.
        assert servers[2].proc is not None
        servers[2].proc.kill()
        killed.set()
        time.sleep(0.8)
    finally:
        stop.set()
        join_all(threads)
        servers[2].kill()  # reaps it

    assert not wrong, wrong[:5]
    if ignore_exc:
        assert not errors, errors[:5]
    else:
        unexpected = [e for e in errors if not isinstance(e, MemcacheError)]
        assert not unexpected, unexpected[:5]
    assert servers[2].server not in client.snapshot.names
    assert all(reads_after_kill), reads_after_kill  # everybody kept going after the kill
    client.close()


def test_nodes_added_and_removed_while_threads_work(
    memcached_nodes: List[MemcachedProcess], new_memcached: ServerFactory
) -> None:
    base = [tcp(s) for s in memcached_nodes[:3]]
    extra = [new_memcached(), new_memcached()]
    d, e = tcp(extra[0]), tcp(extra[1])
    events = Events()
    client = HashClient([*base, d], on_event=events, timeout=5, connect_timeout=5)
    t = tag()
    stop = threading.Event()
    wrong: List[str] = []
    errors: List[BaseException] = []
    ops = [0] * 8

    def work(me: int) -> None:
        # Every key is written once, so a read is either its value or a miss (a key can
        # miss after its node changed).
        written: List[Tuple[str, bytes]] = []
        i = 0
        try:
            while not stop.is_set():
                i += 1
                key, value = f"{t}-t{me}-{i}", f"{me}-{i}".encode()
                assert client.set(key, value) is True
                written.append((key, value))
                got = client.get(key)
                if got not in (None, value):
                    wrong.append(f"{key}: {got!r} instead of {value!r}")
                if i % 4 == 0:
                    recent = dict(written[-10:])
                    for k, v in client.get_many(list(recent)).items():
                        if recent.get(k) != v:
                            wrong.append(f"{k}: {v!r} instead of {recent.get(k)!r}")
                ops[me] += 1
        except BaseException as exc:
            errors.append(exc)
            raise

    threads = [
        threading.Thread(target=work, args=(i,), name=f"worker-{i}", daemon=True) for i in range(8)
    ]
    for thread in threads:
        thread.start()
    try:
        before = stat(extra[0], "cmd_set")
        for _ in range(25):  # churn: every way of changing the node set
            client.remove_server(d[0], d[1])
            time.sleep(0.002)
            client.add_server(d[0], d[1])
            client.add_server(f"{e[0]}:{e[1]}")
            time.sleep(0.002)
            client.remove_server(e)
            client.set_servers([*base, e])
            time.sleep(0.002)
            client.set_servers([*base, d, e])
            client.remove_server(f"{e[0]}:{e[1]}")
        assert stat(extra[0], "cmd_set") > before  # d did get keys meanwhile
        assert not errors, errors[:5]

        # Remove d for good: once its last operations finish, nothing new lands on it.
        last = client.snapshot
        assert server_name(d) in last.names
        client.remove_server(d)
        assert server_name(d) not in client.snapshot.names
        time.sleep(0.1)
        pool = last.clients[server_name(d)].client_pool
        wait_until(lambda: pool.used == 0, what="d's in-flight operations to finish")
        sets_on_d = stat(extra[0], "cmd_set")
        sets_on_e = stat(extra[1], "cmd_set")
        ops_before = sum(ops)
        time.sleep(0.3)
        assert sum(ops) > ops_before + 100  # the threads kept working
        assert stat(extra[0], "cmd_set") == sets_on_d
        assert stat(extra[1], "cmd_set") == sets_on_e
    finally:
        stop.set()
        join_all(threads)

    assert not errors, errors[:5]
    assert not wrong, wrong[:5]
    assert sorted(client.snapshot.names) == sorted(server_name(s) for s in base)
    assert pool.retired and pool.free == 0
    assert len(events.of("snapshot_swapped")) >= 25 * 7
    client.close()


# -- snapshots ----------------------------------------------------------------------------------


def test_node_set_snapshots_versions_pool_identity_and_retirement(
    memcached_nodes: List[MemcachedProcess], fault_proxy: ProxyFactory
) -> None:
    a, b, c = (tcp(s) for s in memcached_nodes[:3])
    proxy = fault_proxy(tcp(memcached_nodes[3]))
    d = proxy.address
    events = Events()
    client = HashClient([a, b, c], use_pooling=True, on_event=events, timeout=3)
    first = client.snapshot
    assert isinstance(first, NodeSet)
    assert sorted(client.nodes) == sorted([a, b, c])  # the live servers
    assert sorted(first.names) == sorted(server_name(s) for s in (a, b, c))
    pools = dict(first.clients)
    assert all(isinstance(p, PooledClient) for p in pools.values())

    assert client.set_servers([a, b, c]) is False  # nothing changed: same snapshot
    assert client.snapshot is first

    client.add_server(d[0], d[1])
    second = client.snapshot
    assert second.version > first.version
    assert server_name(d) in second.names
    assert server_name(d) not in first.names  # the old snapshot was not changed
    for name, pool in pools.items():
        assert second.clients[name] is pool
    assert events.of("snapshot_swapped")

    # A request in flight on d when d is removed finishes; then d's pool winds down.
    t = tag()
    key = next(k for k in (f"{t}-{i}" for i in range(1000)) if second.node_for(k) == server_name(d))
    assert client.set(key, b"in flight") is True
    d_pool = second.clients[server_name(d)].client_pool
    assert d_pool.free == 1
    proxy.set_mode("delay", seconds=0.4)
    result: List[Any] = []
    reader = threading.Thread(target=lambda: result.append(client.get(key)), daemon=True)
    reader.start()
    wait_until(lambda: d_pool.used == 1, what="the get to check d's connection out")
    time.sleep(0.05)

    client.remove_server(d)
    third = client.snapshot
    assert third.version > second.version
    assert server_name(d) not in third.names
    assert server_name(d) in second.names
    for name, pool in pools.items():
        assert third.clients[name] is pool
    assert d_pool.retired
    assert d_pool.free == 0 and d_pool.used == 1
    destroyed = d_pool.stats()["destroyed"]

    join_all([reader])
    assert result == [b"in flight"]
    assert d_pool.used == 0 and d_pool.free == 0  # destroyed when it came back
    assert d_pool.stats()["destroyed"] == destroyed + 1
    wait_until(lambda: proxy.connections == 0, what="d's connection to close")

    versions = [client.snapshot.version]
    for _ in range(3):
        client.add_server(d)
        versions.append(client.snapshot.version)
        client.remove_server(d)
        versions.append(client.snapshot.version)
    assert versions == sorted(set(versions))  # strictly increasing
    assert client.clients == {n: pools[n] for n in client.snapshot.names}
    client.close()


# -- every node ---------------------------------------------------------------------------------


def test_stats_per_node(memcached_nodes: List[MemcachedProcess]) -> None:
    client = HashClient([tcp(s) for s in memcached_nodes])
    stats = client.stats()
    assert set(stats) == {s.server for s in memcached_nodes}
    for server in memcached_nodes:
        node_stats = stats[server.server]
        assert node_stats[b"pid"] == int(server.stats()["pid"])
        assert isinstance(node_stats[b"version"], bytes)
    assert set(client.version()) == set(stats)
    client.close()


def _hammer(client: HashClient, t: str, n_threads: int = 16, rounds: int = 150) -> List[str]:
    wrong: List[str] = []
    errors: List[BaseException] = []

    def work(me: int) -> None:
        try:
            for i in range(rounds):
                key, value = f"{t}-t{me}-{i % 10}", f"{me}-{i}".encode()
                assert client.set(key, value) is True
                got = client.get(key)
                if got != value:
                    wrong.append(f"{key}: {got!r} instead of {value!r}")
                if i % 10 == 9:
                    keys = [f"{t}-t{me}-{j}" for j in range(10)]
                    got_many = client.get_many(keys[::-1] if me % 2 else keys)
                    if set(got_many) != set(keys) or any(
                        not v.startswith(f"{me}-".encode()) for v in got_many.values()
                    ):
                        wrong.append(f"thread {me}: get_many gave {got_many!r}")
                    assert client.set_many(dict.fromkeys(keys, value)) == []
        except BaseException as exc:
            errors.append(exc)
            raise

    threads = [
        threading.Thread(target=work, args=(i,), name=f"worker-{i}", daemon=True)
        for i in range(n_threads)
    ]
    for thread in threads:
        thread.start()
    join_all(threads, timeout=20)
    assert not errors, errors[:5]
    return wrong


def _settled_total_connections(server: MemcachedProcess) -> int:
    """The server's total_connections once nothing but our readings adds to it (each
    reading is a connection of its own; a start-up probe may still be counted late)."""
    last = stat(server, "total_connections")
    for _ in range(50):
        now = stat(server, "total_connections")
        if now == last + 1:
            return int(now)
        last = now
        time.sleep(0.02)
    raise AssertionError(f"{server.server}: total_connections never settled")


@pytest.mark.parametrize("use_pooling", [True, False], ids=["pooled", "one-conn"])
def test_connections_per_node_are_bounded(new_memcached: ServerFactory, use_pooling: bool) -> None:
    servers = [new_memcached() for _ in range(3)]
    before = {s.server: _settled_total_connections(s) for s in servers}
    client = HashClient(
        [tcp(s) for s in servers], use_pooling=use_pooling, max_pool_size=3, timeout=5
    )
    started = time.monotonic()
    wrong = _hammer(client, tag())
    assert time.monotonic() - started < 15  # no deadlock between fan-outs
    assert not wrong, wrong[:5]
    limit = 3 if use_pooling else 1
    for name, pool in client.clients.items():
        s = pool.client_pool.stats()
        assert s["created"] <= limit, (name, s)
        assert s["destroyed"] == 0, (name, s)
    for server in servers:
        # each stats() reading is one more connection of its own
        opened = stat(server, "total_connections") - before[server.server] - 1
        assert 1 <= opened <= limit, (server, opened)
    client.close()


# -- pymemcache compatibility -------------------------------------------------------------------


def test_every_pymemcache_hash_client_parameter_is_accepted(
    memcached_nodes: List[MemcachedProcess],
) -> None:
    theirs = inspect.signature(pymemcache.client.hash.HashClient.__init__).parameters
    ours = inspect.signature(HashClient.__init__).parameters
    kwargs: Dict[str, Any] = {}
    for name, param in theirs.items():
        if name in ("self", "servers"):
            continue
        assert name in ours or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in ours.values()
        ), name
        kwargs[name] = param.default
    kwargs["hasher"] = RendezvousHash
    servers = [tcp(s) for s in memcached_nodes]
    # pymemcache's defaults, every one by keyword
    client = HashClient(servers, **kwargs)
    t = tag()
    assert client.set(f"{t}-a", b"1", noreply=False) is True
    assert client.get(f"{t}-a") == b"1"
    client.close()
    # and each one alone, with a non-default value
    values: Dict[str, Any] = {
        "hasher": RendezvousHash,
        "serde": None,
        "serializer": lambda k, v: (v if isinstance(v, bytes) else str(v).encode(), 0),
        "deserializer": lambda k, v, f: v,
        "connect_timeout": 2.0,
        "timeout": 2.0,
        "no_delay": True,
        "socket_module": socket,
        "socket_keepalive": None,
        "key_prefix": b"pfx:",
        "max_pool_size": 2,
        "pool_idle_timeout": 30,
        "lock_generator": threading.Lock,
        "retry_attempts": 3,
        "retry_timeout": 2,
        "dead_timeout": 10,
        "use_pooling": True,
        "ignore_exc": True,
        "allow_unicode_keys": True,
        "default_noreply": False,
        "encoding": "utf-8",
        "tls_context": None,
    }
    assert set(values) == set(kwargs)
    for name, value in values.items():
        with HashClient(servers, **{name: value}) as client:
            key = f"{t}-{name}"
            client.set(key, b"x", noreply=False)
            assert client.get(key) == b"x", name
    with HashClient(servers, key_prefix=b"pfx:") as client:
        client.set(f"{t}-p", b"y", noreply=False)
    assert list(locate(memcached_nodes, [f"pfx:{t}-p"])) == [f"pfx:{t}-p"]
    hc = HashClient(servers, retry_attempts=5, retry_timeout=3, dead_timeout=7, use_pooling=True)
    assert (hc.retry_attempts, hc.retry_timeout, hc.dead_timeout) == (5, 3, 7)
    assert hc.use_pooling is True and hc.ignore_exc is False
    hc.close()


def test_every_public_pymemcache_hash_client_method_exists() -> None:
    assert pymc.HashClient is pymc.cluster.HashClient
    assert issubclass(AllNodesDownError, MemcacheError)
    theirs = pymemcache.client.hash.HashClient
    names = [
        n for n in dir(theirs) if not n.startswith("_") and inspect.isfunction(getattr(theirs, n))
    ]
    assert len(names) > 20
    missing = [n for n in names if not callable(getattr(HashClient, n, None))]
    assert not missing


def test_same_answers_as_pymemcache_hash_client(memcached_nodes: List[MemcachedProcess]) -> None:
    """The same calls, by the same positional and keyword arguments, return the same."""
    servers = [tcp(s) for s in memcached_nodes]
    ref = pymemcache.client.hash.HashClient(servers, default_noreply=False)
    ours = HashClient(servers, default_noreply=False)
    t = tag()

    def run(client: Any, p: str) -> List[Any]:
        k = [f"{p}-{i}" for i in range(8)]
        out = [
            client.set(k[0], b"1"),
            client.get(k[0]),
            client.get(k[1]),
            client.get(k[1], default=b"d"),
            client.add(k[0], b"2"),
            client.add(k[1], b"2"),
            client.replace(k[2], b"3"),
            client.append(k[0], b"a"),
            client.prepend(k[0], b"p"),
            client.get(k[0]),
            client.incr(k[3], 1),
            client.set(k[3], b"10"),
            client.incr(k[3], 5),
            client.decr(k[3], 3),
            client.touch(k[3], 100),
            client.touch(k[4], 100),
            client.delete(k[4]),
            client.delete(k[3]),
            sorted(client.set_many({k[5]: b"5", k[6]: b"6"})),
            sorted(client.get_many([k[5], k[6], k[7]]).items()),
            client.delete_many([k[5], k[6]]),
            client.get_many([k[5], k[6]]),
            client.set_multi({k[7]: b"7"}),
            client.get_multi([k[7]]),
            client.delete_multi([k[7]]),
        ]
        value, cas = client.gets(k[0])
        out.append(value)
        out.append(client.cas(k[0], b"c", cas))
        out.append(client.cas(k[0], b"d", cas))
        out.append(client.gets(k[6]))
        out.append({key: v for key, (v, _) in client.gets_many([k[0], k[6]]).items()})
        return [tuple(x) if isinstance(x, list) else x for x in out]

    prefix = f"{t}-same"
    theirs = run(ref, prefix)
    ref.delete_many([f"{prefix}-{i}" for i in range(8)])
    mine = run(ours, prefix)
    assert mine == theirs
    ref.close()
    ours.close()


# -- bad input is never hidden ---------------------------------------------------------------


@pytest.mark.parametrize("bad", [["x"], "a b", 1, "", "k" * 300, "a\r\nflush_all"])
def test_bad_keys_raise_even_with_ignore_exc_and_a_dead_node(
    new_memcached: ServerFactory, bad: Any
) -> None:
    server = new_memcached()
    live = HashClient([tcp(server)], ignore_exc=True)
    dead = HashClient([("127.0.0.1", 1)], ignore_exc=True, connect_timeout=0.2)
    for client in (live, dead):
        with pytest.raises(pymc.MemcacheIllegalInputError):
            client.get(bad)
        with pytest.raises(pymc.MemcacheIllegalInputError):
            client.get_many(["fine", bad])
        with pytest.raises(pymc.MemcacheIllegalInputError):
            client.set_many(
                {"fine": b"1", bad: b"2"} if not isinstance(bad, list) else {bad[0]: 1.5}
            )
        assert client.get("missing", "default") == "default"  # ignore_exc still hides failures
    assert stat(server, "cmd_set") == 0  # nothing half-sent by the refused calls


@pytest.mark.timeout(20)
def test_a_fan_out_never_uses_a_connection_it_gave_back_when_its_node_failed_meanwhile(
    new_memcached: ServerFactory,
) -> None:
    """A get_many that waited for a node's connection while the node failed gives the
    connection back unused, and leaves the node's keys out (ignore_exc): it must not then
    send on that connection, which is idle in the pool again (another thread may have it)."""
    server = new_memcached()
    hc = HashClient([tcp(server)], ignore_exc=True, retry_attempts=100, retry_timeout=30)
    assert hc.set("k", b"v")
    (name,) = hc.clients
    pool = hc.clients[name].client_pool
    held = pool.get()  # the node's only connection (no use_pooling: one per node)
    gets = stat(server, "cmd_get")
    got: Dict[str, Any] = {}
    fan_out = threading.Thread(target=lambda: got.update(result=hc.get_many(["k"])))
    fan_out.start()
    try:
        wait_until(lambda: pool.stats()["waiting"] == 1, what="the fan-out waiting")
        hc._health.failed(name, pymc.MemcacheUnexpectedCloseError("failed meanwhile"))
    finally:
        pool.release(held)
        fan_out.join(10)
    assert got == {"result": {}}
    assert stat(server, "cmd_get") == gets  # nothing was sent on the given-back connection
    assert pool.stats()["in_use"] == 0


# What each single-key command takes after its key, for the bad-key tests below.
_AFTER_KEY = {
    "get": (),
    "set": (b"v",),
    "add": (b"v",),
    "replace": (b"v",),
    "append": (b"v",),
    "prepend": (b"v",),
    "delete": (),
}


@pytest.mark.parametrize("command", sorted(_AFTER_KEY))
@pytest.mark.parametrize("bad", [["x"], "a b", 1, "", "k" * 300])
def test_a_bad_key_left_to_the_node_raises_as_a_bad_key_on_every_path(
    new_memcached: ServerFactory, command: str, bad: Any
) -> None:
    """The commands whose key the node's client checks (HashClient does not check it
    first): a bad key raises MemcacheIllegalInputError on a live node, a dead one, a resting
    one and with no node at all, whatever ignore_exc says; nothing reaches a server, no
    connection stays checked out, and an on_command hook sees nothing."""
    server = new_memcached()
    seen: List[Any] = []
    live = HashClient([tcp(server)], ignore_exc=True)
    hooked = HashClient([tcp(server)], on_command=lambda *a: seen.append(a))
    dead = HashClient([("127.0.0.1", 1)], ignore_exc=True, connect_timeout=0.2)
    resting = HashClient([("127.0.0.1", 1)], connect_timeout=0.2, retry_attempts=100)
    with pytest.raises(pymc.MemcacheError):
        resting.get("k")  # fails: the node now rests for retry_timeout
    empty = HashClient([], ignore_exc=True)
    for client in (live, hooked, dead, resting, empty):
        with pytest.raises(pymc.MemcacheIllegalInputError):
            getattr(client, command)(bad, *_AFTER_KEY[command])
        for pool in client.clients.values():
            assert pool.client_pool.stats()["in_use"] == 0
    assert seen == []
    assert stat(server, "cmd_set") == stat(server, "cmd_get") == 0
    assert stat(server, "delete_misses") == stat(server, "delete_hits") == 0


def test_noreply_fan_out_marks_connections_for_the_checkout_check(
    memcached_nodes: List[MemcachedProcess],
) -> None:
    client = HashClient([tcp(n) for n in memcached_nodes], use_pooling=True)
    keys = [f"{tag()}:nr:{i}" for i in range(40)]
    assert client.set_many({k: b"v" for k in keys}, noreply=True) == []
    marked = [
        conn
        for pool in client.clients.values()
        for conn in pool.client_pool.idle_objects()
        if conn.owes_sync
    ]
    assert marked, "a noreply fan-out must leave its connections marked"
    assert client.get_many(keys) == {k: b"v" for k in keys}
    client.delete_many(keys)


def test_get_many_too_big_for_one_pass_goes_through_each_node_alone(
    memcached_nodes: List[MemcachedProcess],
) -> None:
    """Requests over one pass's size (pymc.client.PIPELINE_BYTES) per node are sent by the
    node's own client in passes; the answers are the same."""
    client = HashClient([tcp(n) for n in memcached_nodes], use_pooling=True)
    prefix = f"{tag()}:big:" + "x" * 180
    keys = [f"{prefix}{i}" for i in range(1200)]
    assert client.set_many({k: k.encode()[-8:] for k in keys}) == []
    got = client.get_many([*keys, f"{prefix}missing"])
    assert got == {k: k.encode()[-8:] for k in keys}
    cas = client.gets_many(keys[:700])
    assert len(cas) == 700 and all(v[0] == k.encode()[-8:] for k, v in cas.items())
    client.delete_many(keys)
    assert client.get_many(keys[:50]) == {}


def test_concurrent_add_server_calls_lose_no_node() -> None:
    """add_server reads the node set and swaps in a new one: two at once must not drop
    each other's node (nothing connects here: node sets are built without I/O)."""
    client = HashClient([("127.0.0.1", 1)])
    ports = [[20000 + t * 100 + i for i in range(20)] for t in range(8)]

    def add(mine: List[int]) -> None:
        for port in mine:
            client.add_server("127.0.0.1", port)

    threads = [threading.Thread(target=add, args=(mine,)) for mine in ports]
    for t in threads:
        t.start()
    join_all(threads)
    expected = {("127.0.0.1", 1)} | {("127.0.0.1", p) for mine in ports for p in mine}
    assert set(client.nodes) == expected
    assert client.snapshot.version == 160


@pytest.mark.parametrize("kind", ["client", "pooled", "hash"])
def test_a_key_spelled_as_str_or_bytes_is_one_key_on_every_client(
    memcached_nodes: List[MemcachedProcess], kind: str
) -> None:
    # pymemcache's rendezvous placement formats b"k" as "b'k'": the two spellings of a key
    # lived on different nodes, so a write through one left the other's old value (stale
    # reads, failed invalidation). Every client here sees one key.
    if kind == "hash":
        client: Any = HashClient([tcp(n) for n in memcached_nodes], timeout=5)
    elif kind == "pooled":
        client = PooledClient(tcp(memcached_nodes[0]), timeout=5)
    else:
        client = Client(tcp(memcached_nodes[0]), timeout=5)
    prefix = tag()
    try:
        for i in range(40):  # enough keys that some would have landed on two nodes
            text = f"{prefix}:{i}"
            assert client.set(text, b"old")
            assert client.get(text.encode()) == b"old"
            assert client.set(text.encode(), b"new")
            assert client.get(text) == b"new"  # never the stale b"old"
            assert client.delete(text.encode())
            assert client.get(text) is None
            assert client.meta_set(text, b"m").status == "stored"
            assert client.meta_get(text.encode()).value == b"m"
            assert client.fetch(text.encode(), lambda: b"x", 60) == b"m"
    finally:
        client.close()
