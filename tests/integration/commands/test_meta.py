"""Meta commands and fetch() against real memcached 1.6 servers, on every client."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable, List, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.helpers import make_client, tcp
from support.servers import MemcachedProcess

import pymc
from pymc import (
    Client,
    HashClient,
    MemcacheProtocolError,
    MemcacheUnknownCommandError,
)
from pymc.exceptions import MemcacheLeaseTimeoutError
from pymc.serde import pickle_serde
from pymc.testing import ConfigEndpoint

pytestmark = pytest.mark.timeout(60)
KINDS = ["client", "pooled", "hash"]
_tags = itertools.count()


def tag() -> str:
    return f"meta{next(_tags)}-{time.monotonic_ns() % 10**9}"


make = make_client


def run_threads(n: int, target: Callable[[int], Any]) -> Tuple[List[Any], List[BaseException]]:
    results: List[Any] = [None] * n
    errors: List[BaseException] = []
    barrier = threading.Barrier(n)

    def work(i: int) -> None:
        try:
            barrier.wait(5)
            results[i] = target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a thread hangs"
    return results, errors


# --------------------------------------------------------------------------- fetch


@pytest.mark.parametrize("kind", KINDS)
def test_fetch_from_50_threads_computes_once(nodes: List[MemcachedProcess], kind: str) -> None:
    key = tag()
    calls: List[int] = []
    lock = threading.Lock()

    def compute() -> bytes:
        with lock:
            calls.append(1)
        time.sleep(0.3)
        return b"computed"

    shared = make(kind, nodes)
    own = [make("client", nodes) for _ in range(50)] if kind == "client" else []
    lease_ttl = 5

    def call(i: int) -> Tuple[Any, float]:
        client = own[i] if own else shared
        started = time.monotonic()
        value = client.fetch(key, compute, 60, lease_ttl=lease_ttl)
        return value, time.monotonic() - started

    try:
        results, errors = run_threads(50, call)
        assert not errors, errors[:3]
        assert len(calls) == 1
        assert all(value == b"computed" for value, _ in results)
        assert max(took for _, took in results) < lease_ttl
        assert shared.get(key) == b"computed"
    finally:
        shared.close()
        for c in own:
            c.close()


@pytest.mark.parametrize("kind", KINDS)
def test_after_invalidate_one_recomputes_and_the_rest_get_the_stale_value_at_once(
    nodes: List[MemcachedProcess], kind: str
) -> None:
    key = tag()
    client = make(kind, nodes)
    own = [make("client", nodes) for _ in range(50)] if kind == "client" else []
    try:
        assert client.fetch(key, lambda: b"old", 60) == b"old"
        assert client.invalidate(key) is True
        calls: List[int] = []

        def compute() -> bytes:
            calls.append(1)
            time.sleep(0.5)
            return b"new"

        def call(i: int) -> Tuple[Any, float]:
            started = time.monotonic()
            value = (own[i] if own else client).fetch(key, compute, 60)
            return value, time.monotonic() - started

        results, errors = run_threads(50, call)
        assert not errors, errors[:3]
        assert len(calls) == 1
        stale = [took for value, took in results if value == b"old"]
        fresh = [value for value, _ in results if value == b"new"]
        assert len(stale) == 49 and len(fresh) == 1
        assert max(stale) < 0.4  # none of them waited for the recompute
        assert client.get(key) == b"new"
    finally:
        client.close()
        for c in own:
            c.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_compute_that_raises_gives_the_lease_back(
    nodes: List[MemcachedProcess], kind: str
) -> None:
    key = tag()
    client = make(kind, nodes)
    try:

        def boom() -> bytes:
            raise RuntimeError("backend down")

        with pytest.raises(RuntimeError):
            client.fetch(key, boom, 60, lease_ttl=30)
        started = time.monotonic()
        assert client.fetch(key, lambda: b"second", 60, lease_ttl=30) == b"second"
        assert time.monotonic() - started < 0.5  # nobody waited for the 30 s lease
        # the same after invalidate: the stale value's lease comes back too
        client.invalidate(key)
        with pytest.raises(RuntimeError):
            client.fetch(key, boom, 60)
        assert client.fetch(key, lambda: b"third", 60) == b"third"
    finally:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_value_that_cannot_be_stored_gives_the_lease_back(
    nodes: List[MemcachedProcess], kind: str
) -> None:
    key = tag()
    client = make(kind, nodes, serde=pickle_serde)
    try:
        with pytest.raises(Exception, match="pickle"):  # the serde cannot store a lock
            client.fetch(key, threading.Lock, 60, lease_ttl=30)
        started = time.monotonic()
        assert client.fetch(key, lambda: b"small", 60, lease_ttl=30) == b"small"
        assert time.monotonic() - started < 0.5  # the lease came back: nobody waits 30 s
        assert client.get(key) == b"small"
        # (a value over the item size needs no give-back: memcached drops the key itself)
        with pytest.raises(pymc.MemcacheServerError):
            client.fetch(tag(), lambda: b"x" * (2 * 1024 * 1024), 60, lease_ttl=30)
    finally:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_remembered_lease_probe_refuses_what_a_fresh_one_refuses(
    nodes: List[MemcachedProcess], kind: str
) -> None:
    key = tag()
    client = make(kind, nodes, key_prefix=b"pfx:")
    try:
        assert client.fetch(key, lambda: b"v", 60, lease_ttl=30) == b"v"
        for _ in range(3):  # probed again and again: the request is remembered
            assert client.lease_get(key, 30).value == b"v"
            assert client.lease_get(key.encode(), 30).value == b"v"  # one key, two spellings
        for bad in (30.0, True, 0, -1, "30"):
            with pytest.raises(pymc.MemcacheIllegalInputError):
                client.lease_get(key, bad)
        with pytest.raises(pymc.MemcacheIllegalInputError):
            client.lease_get(key, 30, 10.0)
        with pytest.raises(pymc.MemcacheIllegalInputError):
            client.lease_get(["not", "a", "key"], 30)
        # the prefix is part of what was remembered: the raw key is not the prefixed one
        assert make("client", nodes).get("pfx:" + key if kind != "hash" else key) in (b"v", None)
        # and many keys: what is remembered stays bounded, every probe still right
        for i in range(1500):
            assert client.lease_get(f"{key}-{i}", 30).status in ("miss", "hit")
        assert client.lease_get(key, 30).value == b"v"
    finally:
        client.close()


def test_fetch_waits_at_most_its_wait(nodes: List[MemcachedProcess]) -> None:
    key = tag()
    holder = make("client", nodes)
    other = make("client", nodes)
    try:
        assert holder.meta_get(key, vivify_on_miss=30).win  # a lease nobody will honour
        started = time.monotonic()
        with pytest.raises(MemcacheLeaseTimeoutError):
            other.fetch(key, lambda: b"x", 60, lease_ttl=30, wait=0.5)
        assert 0.4 < time.monotonic() - started < 1.5
    finally:
        holder.close()
        other.close()


def test_hash_client_fetch_with_ignore_exc_computes_when_the_node_is_down() -> None:
    client = HashClient([("127.0.0.1", 1)], ignore_exc=True, connect_timeout=0.2)
    try:
        assert client.fetch("k", lambda: b"computed", 60) == b"computed"
    finally:
        client.close()


# --------------------------------------------------------------------------- keys, serde


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "key",
    [b"with space", b"\x00\x01binary", "ünïcode key", "k" * 186, "k" * 251, b"x" * 400],
    ids=["space", "binary", "unicode", "186", "251", "400"],
)
def test_keys_that_are_no_text_keys_round_trip(
    nodes: List[MemcachedProcess], kind: str, key: Any
) -> None:
    client = make(kind, nodes)
    try:
        assert client.meta_set(key, b"v", 60).status == "stored"
        assert client.meta_get(key).value == b"v"
        assert client.fetch(key, lambda: b"never", 60) == b"v"
        assert client.meta_delete(key).status == "deleted"
        assert client.meta_get(key).status == "miss"
    finally:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_text_and_meta_read_each_others_values(nodes: List[MemcachedProcess], kind: str) -> None:
    client = make(kind, nodes, serde=pickle_serde)
    a, b = tag(), tag()
    try:
        client.set(a, {"text": 1})
        assert client.meta_get(a).value == {"text": 1}
        client.meta_set(b, ["meta", 2])
        assert client.get(b) == ["meta", 2]
        assert client.get_many([a, b]) == {a: {"text": 1}, b: ["meta", 2]}
        value, cas = client.get_cas(a)
        assert value == {"text": 1} and cas
        assert client.set_cas(a, "new", cas) is True
        assert client.set_cas(a, "again", cas) is False  # the cas moved on
        assert client.get(a) == "new"
    finally:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_counters_that_create_themselves(nodes: List[MemcachedProcess], kind: str) -> None:
    client = make(kind, nodes)
    key = tag()
    try:
        assert client.incr(key, 1) is None  # text incr: missing
        assert client.incr(key, 5, initial=100, ttl=60) == 100  # created as initial
        assert client.incr(key, 5, initial=100, ttl=60) == 105
        assert client.decr(key, 10, initial=0) == 95
        assert client.incr(key, 1) == 96
    finally:
        client.close()


# --------------------------------------------------------------------------- checked replies


def test_a_reply_for_another_request_is_refused_and_the_connection_closed(
    nodes: List[MemcachedProcess], fault_proxy: Callable[[Tuple[str, int]], FaultProxy]
) -> None:
    proxy = fault_proxy(tcp(nodes[0]))
    client = Client(proxy.server, timeout=2)
    key = tag()
    try:
        client.meta_set(key, b"v")
        # A middlebox that hands this request the reply (opaque) of another one.
        proxy.set_mode("rewrite", fn=lambda d: d.replace(b" O", b" O9", 1))
        with pytest.raises(MemcacheProtocolError):
            client.meta_get(key)
        assert client.sock is None
        proxy.set_mode("pass")
        assert client.meta_get(key).value == b"v"
    finally:
        client.close()


def test_a_server_without_meta_commands_says_so() -> None:
    with ConfigEndpoint() as old_server:  # answers ERROR to anything it does not know
        client = Client(old_server.address, timeout=2)
        try:
            with pytest.raises(MemcacheUnknownCommandError, match=r"1\.6"):
                client.meta_get("k")
            assert client.version().startswith(b"1.6")  # text commands still work
        finally:
            client.close()


def test_meta_results_are_what_pymemcache_users_would_expect_types(
    nodes: List[MemcachedProcess],
) -> None:
    client = make("client", nodes)
    key = tag()
    try:
        stored = client.meta_set(key, b"v", 60, return_cas=True)
        assert stored.status == "stored" and isinstance(stored.cas, int)
        got = client.meta_get(key, return_cas=True, return_ttl=True, return_size=True)
        assert (got.status, got.value, got.cas, got.size) == ("hit", b"v", stored.cas, 1)
        assert 0 < (got.ttl or 0) <= 60
        assert client.meta_set(key, b"w", compare_cas=(stored.cas or 0) + 1).status == "exists"
        assert client.meta_set(tag(), b"w", mode="replace").status == "not_stored"
        assert client.meta_delete(tag()).status == "not_found"
        with pytest.raises(pymc.MemcacheIllegalInputError):
            client.meta_set(key, b"v", mode="upsert-ish")
    finally:
        client.close()


# --------------------------------------------------------------------------- gevent


@pytest.mark.timeout(120)
def test_fetch_herd_of_500_greenlets_under_gevent(nodes: List[MemcachedProcess]) -> None:
    pytest.importorskip("gevent")
    from support import gevent_runner

    out = gevent_runner.run_scenario(
        "integration/commands/meta_gevent_scenarios.py",
        "herd",
        {"servers": [list(tcp(n)) for n in nodes[:3]]},
    )
    assert "scenario herd passed" in out


# --------------------------------------------------------------------------- quiet pipelines


class _Counted:
    """A socket module whose sockets count their send() calls: one request write each."""

    sends = 0

    def __init__(self) -> None:
        import socket as real

        counted = self

        class CountingSocket(real.socket):
            def send(self, data: Any, *args: Any) -> int:
                counted.sends += 1
                return super().send(data, *args)

            def sendall(self, data: Any, *args: Any) -> None:
                counted.sends += 1
                super().sendall(data, *args)

        self.socket = CountingSocket
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@pytest.mark.parametrize("kind", KINDS)
def test_a_thousand_quiet_sets_cost_one_round_trip_per_node_and_report_only_failures(
    nodes: List[MemcachedProcess], kind: str
) -> None:
    counted = _Counted()
    client = make(kind, nodes, socket_module=counted)
    prefix = tag()
    values = {f"{prefix}-{i}": b"v%d" % i for i in range(1000)}
    try:
        if kind != "hash":
            client.meta_noop()  # connect first
        else:  # (a node's first quiet ms goes through its own client, which checks first
            assert client.meta_get_many(list(values)) == {}  # that it knows meta commands)
        before = counted.sends
        assert client.meta_set_many(values, 60) == []
        writes = counted.sends - before
        assert writes == (1 if kind != "hash" else 3), writes  # one pipeline per node
        assert client.meta_get_many(list(values)) == values
        # only failures come back: the one key that was never stored
        missing = f"{prefix}-never"
        assert client.meta_delete_many([f"{prefix}-1", missing, f"{prefix}-2"]) == [missing]
        assert client.meta_get_many([f"{prefix}-1", f"{prefix}-2", f"{prefix}-3"]) == {
            f"{prefix}-3": b"v3"
        }
    finally:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_an_oversize_value_in_the_middle_of_a_quiet_set(
    nodes: List[MemcachedProcess], kind: str
) -> None:
    client = make(kind, nodes)
    prefix = tag()
    values = {f"{prefix}-{i}": b"v" for i in range(200)}
    big = f"{prefix}-100"
    values[big] = b"x" * (2 << 20)  # over the server's 1 MiB item limit
    try:
        with pytest.raises(pymc.MemcacheServerError) as info:
            client.meta_set_many(values, 60)
        assert repr(big) in str(info.value)
        got = client.meta_get_many(list(values))
        assert set(got) == set(values) - {big}  # every other value was stored
    finally:
        client.close()


def test_swapped_replies_in_a_quiet_pipeline_are_refused(
    nodes: List[MemcachedProcess], fault_proxy: Callable[[Tuple[str, int]], FaultProxy]
) -> None:
    proxy = fault_proxy(tcp(nodes[0]))
    client = Client(proxy.server, timeout=2)
    keys = [tag() for _ in range(3)]
    try:
        client.meta_set_many({k: b"v" for k in keys})

        def swap(data: bytes) -> bytes:  # the first two hits trade places
            parts = data.split(b"VA ")
            if len(parts) >= 3:
                parts[1], parts[2] = parts[2], parts[1]
            return b"VA ".join(parts)

        proxy.set_mode("rewrite", fn=swap)
        with pytest.raises(MemcacheProtocolError):
            client.meta_get_many(keys)
        assert client.sock is None
        proxy.set_mode("pass")
        assert client.meta_get_many(keys) == {k: b"v" for k in keys}
    finally:
        client.close()
