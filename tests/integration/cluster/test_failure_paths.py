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
from typing import Any, Callable, ClassVar, Dict, List, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.hashclients import Events, no_slot_out, tag
from support.helpers import Interrupt, source_files, tcp
from support.servers import MemcachedProcess

import pymc
import pymc.cluster
import pymc.cluster.health
import pymc.pool
import pymc.pool.objectpool
import pymc.pool.pooled
from pymc import (
    Client,
    HashClient,
    RetryingClient,
    RetryPolicy,
)

ProxyFactory = Callable[[Tuple[str, int]], FaultProxy]

pytestmark = pytest.mark.timeout(60)


# -- bad keys -------------------------------------------------------------------------------------


# -- (server_key, key) tuples -----------------------------------------------------------------


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


#: cluster.py functions injected at every line (in the others, at their start only: a
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


# -- fork, then two threads -----------------------------------------------------------------------


@pytest.fixture
def proxy(memcached: MemcachedProcess, fault_proxy: ProxyFactory) -> FaultProxy:
    return fault_proxy(tcp(memcached))


@pytest.mark.parametrize("nkeys", [20, 200])
def test_hash_retry_policy_covers_big_get_many(
    nkeys: int, memcached: MemcachedProcess, fault_proxy: ProxyFactory
) -> None:
    """HashClient(retry=RetryPolicy(...)): one garbled reply to an idempotent get_many is
    retried, whether the node's request is small (one pass) or over 32 KiB (passes)."""
    from pymc.retry import RetryPolicy

    proxy = fault_proxy(tcp(memcached))
    client = HashClient(
        [proxy.server],
        retry=RetryPolicy(attempts=3, backoff=0),
        retry_attempts=1000,
        retry_timeout=0,
        timeout=2,
        connect_timeout=2,
    )
    base = tag()
    keys = [f"{base}-{i}-".ljust(240, "k") for i in range(nkeys)]
    assert client.set_many({k: b"v" for k in keys}) == []
    hits = [0]

    def once(data: bytes) -> bytes:
        if b"VALUE " in data and hits[0] == 0:
            hits[0] += 1
            return b"HUH?\r\n"
        return data

    proxy.set_mode("rewrite", fn=once)
    assert client.get_many(keys) == {k: b"v" for k in keys}
    assert hits[0] == 1
