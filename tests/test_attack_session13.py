"""A hostile review of session 13's pool and HashClient changes, against real memcached.

What is attacked: HashClient's single-key commands leaving the key check to the node's
client, the failure counted through PooledClient.run's ``failed=`` callback (before the
connection goes back), the fan-out's ``_note_failures``, get_many's one-pass grouping and
one-call decoding, and the pool's inlined checkout and give-back.
"""

from __future__ import annotations

import linecache
import sys
import threading
from types import FrameType
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.helpers import (
    KINDS,
    Interrupt,
    one_node_client,
    run_in_child,
    source_files,
    stat,
    tcp,
)
from support.servers import MemcachedProcess

import pymc
import pymc.cluster
import pymc.cluster.health
import pymc.pool
import pymc.pool.objectpool
import pymc.pool.pooled
from pymc import Client, HashClient, MemcacheIllegalInputError, RetryingClient, RetryPolicy

ProxyFactory = Callable[[Tuple[str, int]], FaultProxy]
ServerFactory = Callable[..., MemcachedProcess]

pytestmark = pytest.mark.timeout(60)

DEAD = ("127.0.0.1", 1)  # nothing listens there: connections are refused


class Events:
    """An ``on_event`` hook that counts what it is told (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: List[Tuple[str, str]] = []

    def __call__(self, event: str, node: str, info: Dict[str, Any]) -> None:
        with self.lock:
            self.seen.append((event, node))

    def count(self, event: str) -> int:
        with self.lock:
            return sum(1 for e, _ in self.seen if e == event)


def in_use(client: HashClient) -> Dict[str, int]:
    """Connections checked out, per node (live and ejected): all 0 between calls."""
    pools = dict(client.clients)
    for name, (_, pool, _) in list(client._dead.items()):
        pools[name] = pool
    return {name: pool.client_pool.stats()["in_use"] for name, pool in pools.items()}


def no_slot_out(client: HashClient) -> bool:
    return not any(in_use(client).values())


# -- bad keys -------------------------------------------------------------------------------------

# What each command takes after its key.
_SINGLE: Dict[str, Tuple[Any, ...]] = {
    "get": (),
    "set": (b"v",),
    "add": (b"v",),
    "replace": (b"v",),
    "append": (b"v",),
    "prepend": (b"v",),
    "delete": (),
    "gets": (),
    "touch": (0,),
    "incr": (1,),
    "decr": (1,),
    "cas": (b"v", 1),
    "gat": (0,),
}

PREFIX = b"p:"
_BAD_KEYS: List[Any] = [
    "k" * (251 - len(PREFIX)),  # 251 bytes with the prefix
    b"k" * (251 - len(PREFIX)),
    "a\x00b",
    b"a\x7fb",
    "a\r\nget x",
    b"a b",
    "é",  # allow_unicode_keys is off
    "é" * 125,  # 250 bytes of UTF-8 + the prefix: too long even with allow_unicode_keys
    None,
    1,
    bytearray(b"ab"),
    ["x"],
]


def _clients(server: MemcachedProcess, events: Events, unicode: bool) -> Dict[str, HashClient]:
    common: Dict[str, Any] = {
        "key_prefix": PREFIX,
        "allow_unicode_keys": unicode,
        "on_event": events,
        "connect_timeout": 0.5,
        "timeout": 2,
        "retry_attempts": 1,  # any failure counted ejects at once: visible
        "retry_timeout": 0,
    }
    resting = HashClient([DEAD], **{**common, "retry_attempts": 100, "retry_timeout": 60})
    with pytest.raises(pymc.MemcacheError):
        resting.get("k")  # the node rests now
    return {
        "live": HashClient([tcp(server)], **common),
        "live_ignore_exc": HashClient([tcp(server)], ignore_exc=True, **common),
        "pooled": HashClient([tcp(server)], use_pooling=True, ignore_exc=True, **common),
        "dead": HashClient([DEAD], **common),
        "dead_ignore_exc": HashClient([DEAD], ignore_exc=True, **common),
        "resting": resting,
        "no_nodes": HashClient([], ignore_exc=True, **common),
        "hooked": HashClient(
            [tcp(server)], ignore_exc=True, on_command=lambda *a: events("hook", "", {}), **common
        ),
    }


@pytest.mark.timeout(120)
@pytest.mark.parametrize("unicode", [False, True])
def test_a_bad_key_raises_as_a_bad_key_from_every_single_key_command_in_every_state(
    new_memcached: ServerFactory, unicode: bool
) -> None:
    server = new_memcached()
    events = Events()
    clients = _clients(server, events, unicode)
    failures_before = events.count("node_failed")
    for state, client in clients.items():
        for command, rest in _SINGLE.items():
            for bad in _BAD_KEYS:
                if unicode and bad == "é":
                    continue  # a good key then
                where = (state, command, bad if not isinstance(bad, (str, bytes)) else bad[:8])
                with pytest.raises(MemcacheIllegalInputError):
                    getattr(client, command)(bad, *rest)
                    pytest.fail(f"no error: {where}")
                with pytest.raises(MemcacheIllegalInputError):  # (server_key, bad key)
                    getattr(client, command)(("sk", bad), *rest)
                assert no_slot_out(client), where
    assert events.count("node_failed") == failures_before  # no failure counted
    assert events.count("node_ejected") == 0
    assert events.count("hook") == 0  # a hook never sees a bad key
    for state, client in clients.items():
        assert not client._dead or state == "resting", state
    assert stat(server, "cmd_get") == stat(server, "cmd_set") == stat(server, "cmd_touch") == 0


_MULTI: Dict[str, Callable[[HashClient, List[Any]], Any]] = {
    "get_many": lambda c, keys: c.get_many(keys),
    "gets_many": lambda c, keys: c.gets_many(keys),
    "set_many": lambda c, keys: c.set_many({k: b"v" for k in keys}),
    "delete_many": lambda c, keys: c.delete_many(keys),
    "touch_many": lambda c, keys: c.touch_many(keys),
    "meta_get_many": lambda c, keys: c.meta_get_many(keys),
    "meta_delete_many": lambda c, keys: c.meta_delete_many(keys),
    "meta_set_many": lambda c, keys: c.meta_set_many({k: b"v" for k in keys}),
}
_META_BAD = [
    None,
    1,
    bytearray(b"ab"),
]  # meta commands take any other str/bytes key (base64, or a digest, on the wire)


@pytest.mark.timeout(120)
def test_a_bad_key_among_good_ones_raises_from_every_multi_key_command_in_every_state(
    new_memcached: ServerFactory,
) -> None:
    server = new_memcached()
    events = Events()
    clients = _clients(server, events, False)
    failures_before = events.count("node_failed")
    for state, client in clients.items():
        for command, call in _MULTI.items():
            bads = _META_BAD if command.startswith("meta") else _BAD_KEYS
            for bad in bads:
                if isinstance(bad, (list, bytearray)) and command.endswith("set_many"):
                    continue  # (a dict's keys: unhashable ones cannot get there)
                for keys in (
                    [bad],
                    ["good", bad],
                    ["good", ("sk", "good2"), bad],
                    ["good", ("sk", bad)],
                ):
                    where = (state, command, keys)
                    with pytest.raises(MemcacheIllegalInputError):
                        call(client, keys)
                        pytest.fail(f"no error: {where}")
                    assert no_slot_out(client), where
    assert events.count("node_failed") == failures_before
    assert events.count("node_ejected") == 0
    assert events.count("hook") == 0
    assert stat(server, "cmd_get") == stat(server, "cmd_set") == stat(server, "cmd_touch") == 0


def test_unicode_keys_route_and_read_back_the_same_on_every_client_kind(
    memcached: MemcachedProcess,
) -> None:
    """With allow_unicode_keys a UTF-8 key is one key for Client, PooledClient and
    HashClient, whatever command stores it and however it is read."""
    clients = [one_node_client(kind, tcp(memcached), allow_unicode_keys=True) for kind in KINDS]
    for i, client in enumerate(clients):
        key = f"clé-{i}"
        assert client.set(key, b"v%d" % i)
        for other in clients:
            assert other.get(key) == b"v%d" % i
            assert other.get(key.encode()) == b"v%d" % i  # the bytes spelling
            assert other.get_many([key, "absent"]) == {key: b"v%d" % i}
    for client in clients:
        with pytest.raises(MemcacheIllegalInputError):
            client.get("é" * 126)  # 252 bytes


# -- (server_key, key) tuples -----------------------------------------------------------------


def test_tuple_keys_go_to_the_server_keys_node_on_every_single_key_command(
    memcached_nodes: List[MemcachedProcess],
) -> None:
    servers = [tcp(n) for n in memcached_nodes]
    client = HashClient(servers, use_pooling=True)
    direct = {f"{h}:{p}": Client((h, p)) for h, p in servers}
    for node in direct.values():
        node.flush_all()
    names = list(client.clients)
    # A server key for each node, and a real key placed elsewhere by itself.
    server_key: Dict[Optional[str], str] = {}
    for i in range(200):
        server_key.setdefault(client.snapshot.node_for(f"sk{i}"), f"sk{i}")
    assert set(server_key) == set(names)
    for name in names:
        sk = server_key[name]
        key = next(f"k{i}" for i in range(500) if client.snapshot.node_for(f"k{i}") != name)
        tk: Any = (sk, key)  # (the signatures name str/bytes keys only)
        assert client.set(tk, b"1")
        assert direct[name].get(key) == b"1"
        assert client.get(tk) == b"1"
        assert client.get(key) is None  # placed elsewhere by itself
        assert client.add(tk, b"x") is False
        assert client.replace(tk, b"2") is True
        assert client.append(tk, b"3") is True
        assert client.prepend(tk, b"0") is True
        assert client.get(tk) == b"023"
        assert client.get_many([tk, key]) == {tk: b"023"}
        assert client.get(tk, default="d") == b"023"
        assert client.get(key=tk) == b"023"
        assert client[tk] == b"023"
        assert client.incr(tk, 1) is None or True  # (not a number: memcached refuses)
        assert client.delete(tk) is True
        assert client.get(tk, "gone") == "gone"
        client[tk] = b"5"
        assert direct[name].get(key) == b"5"
        del client[tk]
        assert direct[name].get(key) is None
    assert no_slot_out(client)


@pytest.mark.parametrize("command", sorted(_SINGLE))
def test_an_unhashable_server_key_is_not_hidden_by_ignore_exc(
    memcached: MemcachedProcess, command: str
) -> None:
    """A ``(server_key, key)`` tuple whose server key cannot be routed (unhashable) is the
    caller's error: raised as before, whatever ignore_exc says (get_many raises it too),
    never answered with the default as if a node had failed."""
    before = stat(memcached, "cmd_get"), stat(memcached, "cmd_set")
    for ignore_exc in (False, True):
        client = HashClient([tcp(memcached)], ignore_exc=ignore_exc)
        with pytest.raises((TypeError, MemcacheIllegalInputError)):
            getattr(client, command)((["unhashable"], "k"), *_SINGLE[command])
        with pytest.raises((TypeError, MemcacheIllegalInputError)):
            client.get_many([(["unhashable"], "k")])
        assert not client._failures
    assert (stat(memcached, "cmd_get"), stat(memcached, "cmd_set")) == before


# -- failures counted once ------------------------------------------------------------------------


def _proxied(
    fault_proxy: ProxyFactory, server: MemcachedProcess, **options: Any
) -> Tuple[HashClient, FaultProxy, Events]:
    proxy = fault_proxy(tcp(server))
    events = Events()
    client = HashClient(
        [proxy.server],
        on_event=events,
        retry_attempts=3,
        retry_timeout=0,  # no resting: every request goes to the node
        connect_timeout=1,
        timeout=1,
        **options,
    )
    assert client.set("k", b"v")
    proxy.set_mode("reset")
    return client, proxy, events


_RETRIES: Dict[str, Dict[str, Any]] = {
    "no_retry": {},
    "pooled": {"use_pooling": True, "max_pool_size": 3},
    "retry_policy": {"retry": RetryPolicy(attempts=3, backoff=0, jitter=0)},
    "pooled_retry_policy": {
        "use_pooling": True,
        "retry": RetryPolicy(attempts=2, backoff=0, jitter=0),
    },
}


@pytest.mark.parametrize("command", ["get", "set", "delete", "incr", "get_many", "set_many"])
@pytest.mark.parametrize("setup", sorted(_RETRIES))
def test_a_failed_request_counts_once_and_ejects_after_exactly_retry_attempts(
    memcached: MemcachedProcess, fault_proxy: ProxyFactory, command: str, setup: str
) -> None:
    client, _, events = _proxied(fault_proxy, memcached, **_RETRIES[setup])
    (name,) = client.clients
    calls: Dict[str, Callable[[], Any]] = {
        "get": lambda: client.get("k"),
        "set": lambda: client.set("k", b"v"),
        "delete": lambda: client.delete("k"),
        "incr": lambda: client.incr("k", 1),
        "get_many": lambda: client.get_many(["k", "k2"]),
        "set_many": lambda: client.set_many({"k": b"v", "k2": b"w"}),
    }
    for attempt in (1, 2):
        with pytest.raises(pymc.MemcacheError):
            calls[command]()
        assert events.count("node_failed") == attempt, events.seen
        assert client._failures[name][0] == attempt
        assert no_slot_out(client)
    with pytest.raises(pymc.MemcacheError):
        calls[command]()
    assert events.count("node_failed") == 3
    assert events.count("node_ejected") == 1
    assert name in client._dead and not client.clients
    assert no_slot_out(client)


@pytest.mark.parametrize("setup", sorted(_RETRIES))
def test_a_success_clears_the_count_and_ejection_still_needs_retry_attempts_in_a_row(
    memcached: MemcachedProcess, fault_proxy: ProxyFactory, setup: str
) -> None:
    client, proxy, events = _proxied(fault_proxy, memcached, **_RETRIES[setup])
    (name,) = client.clients
    for _ in range(3):
        for _ in range(2):
            with pytest.raises(pymc.MemcacheError):
                client.get("k")
        proxy.set_mode("pass")
        assert client.get("k") == b"v"
        assert name not in client._failures
        proxy.set_mode("reset")
    assert events.count("node_ejected") == 0
    assert events.count("node_failed") == 6


def test_retrying_client_over_a_hash_client_counts_each_try_once(
    memcached: MemcachedProcess, fault_proxy: ProxyFactory
) -> None:
    client, _, events = _proxied(fault_proxy, memcached, use_pooling=True)
    retrying = RetryingClient(client, attempts=2, retry_delay=0)
    with pytest.raises(pymc.MemcacheError):
        retrying.get("k")
    assert events.count("node_failed") == 2  # two tries, two failed requests
    with pytest.raises(pymc.MemcacheError):
        retrying.get("k")
    assert events.count("node_failed") == 3  # the third ejects; the fourth finds no node
    assert events.count("node_ejected") == 1
    assert no_slot_out(client)


def test_a_fan_out_counts_a_failed_node_once_and_still_answers_from_the_others(
    memcached_nodes: List[MemcachedProcess], fault_proxy: ProxyFactory
) -> None:
    proxies = [fault_proxy(tcp(n)) for n in memcached_nodes]
    events = Events()
    client = HashClient(
        [p.server for p in proxies],
        ignore_exc=True,
        on_event=events,
        retry_attempts=3,
        retry_timeout=0,
        timeout=1,
        connect_timeout=1,
    )
    values = {f"key{i}": b"%d" % i for i in range(40)}
    assert client.set_many(values) == []
    bad = proxies[0]
    on_bad = {k for k in values if client.snapshot.node_for(k) == bad.server}
    assert on_bad and len(on_bad) < len(values)
    bad.set_mode("reset")
    for attempt in (1, 2):
        got = client.get_many(list(values))
        assert got == {k: v for k, v in values.items() if k not in on_bad}
        assert events.count("node_failed") == attempt
    got = client.get_many(list(values))
    assert events.count("node_ejected") == 1
    assert no_slot_out(client)


# -- an exception at every line of the failure paths ----------------------------------------------

_CLUSTER_FILES = source_files(pymc.cluster)
_TRACED = source_files(pymc.pool) | _CLUSTER_FILES


class Injected(Interrupt):
    """What the tracer raises."""


class _Injector:
    """Raises :class:`Injected` at the ``n``-th line event in pymc/pool.py or pymc/cluster.py
    (the health books, ``_count_failure``, ``_failed``, ``_note_failures`` included)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.where = ""

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        code = frame.f_code
        if code.co_filename not in _TRACED or isinstance(
            frame.f_locals.get("self"), pymc.cluster.health.ForkSafeLock
        ):
            return None  # (see _skipped)
        return self._local(frame, event, arg)

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event in ("line", "call") and _injectable(frame, event):
            self.count += 1
            if self.count == self.n:
                self.where = f"{frame.f_code.co_name} line {frame.f_lineno} ({event})"
                raise Injected(self.where)
        return self._local

    def run(self, fn: Callable[[], Any]) -> bool:
        sys.settrace(self._global)
        try:
            fn()
        except Injected:
            pass
        except pymc.MemcacheError:
            pass  # the node's failure, raised as usual
        finally:
            sys.settrace(None)
        return self.count >= self.n


#: pymc.cluster functions injected at every line (in the others, at their start only: a
#: signal handler's exception lands where a function starts, or a loop jumps back).
_EVERY_LINE = {
    "_run",
    "count_failure",
    "failed",
    "_note_failures",
    "_take_and_exchange",
    "_exchange",
    "_read_as_they_come",
    "_lost",
    "still_usable",
    "still_usable_after_wait",
    "_give_back",
    "succeeded",
    "fail_fast",
}


def _injectable(frame: FrameType, event: str) -> bool:
    if threading.current_thread() is not threading.main_thread():
        return False
    if event == "call":
        return True
    if frame.f_code.co_filename in _CLUSTER_FILES and (frame.f_code.co_name not in _EVERY_LINE):
        return False
    return not _skipped(frame)


def _skipped(frame: FrameType) -> bool:
    """HashClient's own locks are ``_ForkSafeLock``s, taken in multi-line ``with`` blocks:
    a line event at the ``with`` line also comes as the block ends, before ``__exit__``
    runs, and an exception raised there leaves the lock held. That is no change of this
    session (and is reported as such): those lines are left out here."""
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
    return line.startswith(("with self._lock", "with self._change_lock"))


class _Counted(Client):
    made: ClassVar[List[Client]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _Counted.made.append(self)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("attempts", [1, 1000])
@pytest.mark.parametrize("call", ["get", "set", "get_many"])
def test_an_exception_at_every_line_of_a_failing_request_loses_no_slot(
    memcached_nodes: List[MemcachedProcess], fault_proxy: ProxyFactory, attempts: int, call: str
) -> None:
    """A node resets every connection; an exception lands at each line of pool.py and
    cluster.py in turn while a request fails there (the failure counted through the pool's
    ``failed`` callback or the fan-out's ``_note_failures``, with the connection still held,
    and with ``attempts=1`` the node ejected and its pool cleared meanwhile): no slot is
    lost, no lock stays held, no open connection is left outside a pool."""
    _Counted.made = []
    proxies = [fault_proxy(tcp(n)) for n in memcached_nodes[:2]]
    client = HashClient(
        [p.server for p in proxies],
        use_pooling=True,
        max_pool_size=2,
        pool_timeout=2,
        timeout=2,
        connect_timeout=2,
        retry_attempts=attempts,
        retry_timeout=0,
        dead_timeout=0.01,
    )
    client.client_class = _Counted
    for pool in client.clients.values():
        pool.client_class = _Counted
    values = {f"k{i}": b"v%d" % i for i in range(12)}
    assert client.set_many(values) == []
    bad = proxies[0]
    key = next(k for k in values if client.snapshot.node_for(k) == bad.server)
    all_pools = {name: pool.client_pool for name, pool in client.clients.items()}
    scenario: Callable[[], Any] = {
        "get": lambda: client.get(key),
        "set": lambda: client.set(key, b"x"),
        "get_many": lambda: client.get_many(list(values)),
    }[call]

    def check(where: str) -> None:
        for name, pool in all_pools.items():
            s = pool.stats()
            assert s["in_use"] == 0 and s["waiting"] == 0, (where, name, s)
        assert not client._lock.locked(), where
        assert not client._change_lock._current()._is_owned(), where
        idle = [c for p in all_pools.values() for c in p.idle_objects()]
        leaked = [c for c in _Counted.made if c.sock is not None and c not in idle]
        assert not leaked, f"{where}: open connections outside the pools: {leaked}"

    bad.set_mode("reset")
    for n in range(1, 3000):
        injector = _Injector(n)
        fired = injector.run(scenario)
        check(f"injection #{n} at {injector.where or '(none)'}")
        # the node back in the set for the next run (as a probe would re-admit it)
        if bad.server in client._dead:
            with client._change_lock:
                spec, pool, _ = client._dead.pop(bad.server)
                nodes = client.snapshot
                client._swap(
                    client._next_snapshot(
                        {**nodes.servers, bad.server: spec}, {**nodes.clients, bad.server: pool}
                    )
                )
        client._failures.clear()
        if not fired:
            assert n > 20, n
            break
    else:
        raise AssertionError("still injecting after 3000 lines")
    bad.set_mode("pass")
    client._failures.clear()
    got = client.get_many(list(values))  # every node serves again, with no stale reply
    assert {k: v for k, v in got.items() if k != key} == {
        k: v for k, v in values.items() if k != key
    }
    assert got[key] in (values[key], b"x")


# -- the same answers from every client kind --------------------------------------------------


@pytest.mark.parametrize("command", sorted(_SINGLE))
def test_every_client_kind_answers_and_refuses_the_same(
    memcached: MemcachedProcess, command: str
) -> None:
    """For each single-key command: the same results on good keys and the same error type
    on each bad key from Client, PooledClient and HashClient (which leaves some checks to
    its node's client now)."""
    clients = {kind: one_node_client(kind, tcp(memcached), key_prefix=PREFIX) for kind in KINDS}
    outcomes: Dict[str, List[Any]] = {}
    for kind, client in clients.items():
        client.flush_all() if kind != "hash" else None
        seen: List[Any] = []
        for key in [f"good-{command}", *_BAD_KEYS]:
            for setup in (None, b"7"):
                if setup is not None and isinstance(key, str) and key.startswith("good"):
                    clients["client"].set(key, setup)
                try:
                    seen.append(("ok", getattr(client, command)(key, *_SINGLE[command])))
                except Exception as exc:  # what is compared: its type
                    seen.append(("raised", type(exc).__name__))
                if isinstance(key, str) and key.startswith("good"):
                    clients["client"].delete(key)
        outcomes[kind] = [
            (o, v if o == "raised" or command not in ("gets", "cas") else type(v).__name__)
            for o, v in seen
        ]
    assert outcomes["pooled"] == outcomes["client"]
    assert outcomes["hash"] == outcomes["client"]


# -- fork, then two threads -----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_forked_child_serves_two_threads_on_its_own_sockets_and_the_parent_counts_once(
    memcached_nodes: List[MemcachedProcess], fault_proxy: ProxyFactory
) -> None:
    proxies = [fault_proxy(tcp(n)) for n in memcached_nodes[:2]]
    events = Events()
    client = HashClient(
        [p.server for p in proxies],
        use_pooling=True,
        max_pool_size=2,
        ignore_exc=True,
        retry_attempts=1000,
        retry_timeout=0,
        timeout=2,
        connect_timeout=2,
        on_event=events,
    )
    values = {f"f{i}": b"%d" % i for i in range(20)}
    assert client.set_many(values) == []
    assert client.get_many(list(values)) == values  # idle connections in the parent's pools
    parent_socks = {
        c.sock.getsockname()
        for p in client.clients.values()
        for c in p.client_pool.idle_objects()
        if c.sock is not None
    }
    bad = proxies[0]
    on_bad = [k for k in values if client.snapshot.node_for(k) == bad.server]
    good = {k: v for k, v in values.items() if k not in on_bad}

    def body() -> Dict[str, Any]:
        errors: List[str] = []
        results: List[bool] = []

        def worker() -> None:
            try:
                for _ in range(20):
                    results.append(client.get_many(list(values)) == values)
                    results.append(client.get(on_bad[0]) == values[on_bad[0]])
            except BaseException as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        used = [
            c.sock.getsockname()
            for p in client.clients.values()
            for c in p.client_pool.idle_objects()
            if c.sock is not None
        ]
        return {
            "errors": errors,
            "ok": all(results) and len(results) == 80,
            "alive": any(t.is_alive() for t in threads),
            "in_use": sum(p.client_pool.stats()["in_use"] for p in client.clients.values()),
            "parent_socket_reused": any(u in parent_socks for u in used),
            "failures": dict(client._failures),
        }

    report = run_in_child(body, timeout=30)
    assert report.get("errors") == [], report
    assert report["ok"] and not report["alive"] and report["in_use"] == 0, report
    assert not report["parent_socket_reused"], report
    assert report["failures"] == {}, report
    # The parent's pools are untouched by the child, and the parent counts once per request.
    bad.set_mode("reset")
    for attempt in (1, 2):
        assert client.get_many(list(values)) == good
        assert client._failures[bad.server][0] == attempt
    bad.set_mode("pass")
    assert client.get_many(list(values)) == values
    assert not client._failures
    assert no_slot_out(client)
