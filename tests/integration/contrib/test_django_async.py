"""pymc.contrib.django's native async methods (``aget``, ``aset``, ...), against real memcached.

* **Django's own cache suite, through the async methods.** Django's async cache tests
  (``tests/cache/tests_async.py``) target its dummy backend only; its memcached tests are
  sync. So its whole memcached suite (``PyMemcacheCacheTests``, as ``test_django.py`` runs it)
  runs here on backends whose every sync method runs its async twin on one event loop
  (``django_async_driven.py``): ``get`` is ``aget``, ``incr_version`` is ``aincr_version``,
  ``close`` is ``aclose``, and so on.
* **An ASGI request cycle**: many concurrent requests on one loop (``django.test.AsyncClient``
  over Django's ASGI handler), each reading back only its own values, with
  ``request_finished`` after each; values written async are read by the sync backend and the
  reverse.
* **Loops**: a backend used from several loops (one after another, and at once in threads)
  gets a client per loop, closed when its loop ends.
* **Cancellation** in the middle of async calls (a delaying proxy) leaves the backend usable,
  with the right values.
* **No thread**: no async method goes through ``sync_to_async``.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Tuple
from unittest import mock

import pytest
from django.core.cache import InvalidCacheKey, cache, caches
from django.core.cache.backends.base import BaseCache
from django.core.cache.backends.memcached import BaseMemcachedCache
from django.http import HttpRequest, JsonResponse
from django.test import AsyncClient, override_settings
from django.urls import path
from support.helpers import stat, wait_until
from support.servers import MemcachedProcess

import pymc
import pymc.contrib.django as pymc_django
from pymc.contrib.django import (
    DEFAULT_TIMEOUT,
    ElastiCacheCache,
    PymcCache,
    aclose_clients,
    close_clients,
)

from .django_async_driven import DRIVER, TWINNED, async_client_of
from .test_django import (  # noqa: F401  (fixtures, used by name)
    DjangoSuiteBase,
    ElastiCacheCluster,
    django_test_environment,
    elasticache_cluster,
    end_request,
    one_server,
    run_threads,
)

DRIVEN = "integration.contrib.django_async_driven."


@pytest.fixture(scope="module", autouse=True)
def driver_loop() -> Iterator[None]:
    try:
        yield
    finally:
        DRIVER.stop()
        close_clients()


# --------------------------------------------------------------------------- Django's suite


class AsyncSuite(DjangoSuiteBase):
    """Django's memcached suite with every call going through an async method."""

    __test__ = False

    def test_set_many_returns_failing_keys(self) -> None:
        """Django's, with the asyncio client's set_many made to fail (its test patches the
        sync client class, which the async methods do not use)."""
        client_class = type(async_client_of(cache))

        async def fail_set_many(self: Any, mapping: Dict[bytes, Any], *args: Any) -> Any:
            return list(mapping)

        with mock.patch.object(client_class, "set_many", fail_set_many):
            self.assertEqual(cache.set_many({"key": "value"}), ["key"])

    def test_driven_by_the_async_methods(self) -> None:
        calls = DRIVER.calls
        cache.set("driven", 1)
        self.assertEqual(cache.get("driven"), 1)
        self.assertEqual(DRIVER.calls, calls + 2)
        self.assertIs(type(caches["default"]).aget, PymcCache.aget)

    # Pickling a lazy QuerySet runs its query. In the event loop Django forbids that
    # (SynchronousOnlyOperation: evaluate it first, list(qs)); here the loop is in another
    # thread, which does not see the test's transaction.
    lazy_queryset = "pickles a lazy QuerySet, which queries the database in the event loop"

    def test_cache_read_for_model_instance_with_deferred(self) -> None:
        pytest.skip(self.lazy_queryset)

    def test_cache_write_for_model_instance_with_deferred(self) -> None:
        pytest.skip(self.lazy_queryset)


class TestDjangoSuiteAsyncPymcCache(AsyncSuite):
    __test__ = True
    backend = DRIVEN + "AsyncDrivenPymcCache"

    @pytest.fixture(autouse=True)
    def _caches(self, memcached_nodes: List[MemcachedProcess]) -> Iterator[None]:
        yield from self.configured([node.server for node in memcached_nodes])


class TestDjangoSuiteAsyncElastiCacheCache(AsyncSuite):
    __test__ = True
    backend = DRIVEN + "AsyncDrivenElastiCacheCache"

    @pytest.fixture(autouse=True)
    def _caches(self, request: pytest.FixtureRequest) -> Iterator[None]:
        cluster: ElastiCacheCluster = request.getfixturevalue("elasticache_cluster")
        yield from self.configured(cluster.location)

    def test_location_multiple_servers(self) -> None:
        pytest.skip("puts two servers in LOCATION: ElastiCacheCache takes one endpoint")

    def test_driven_by_the_async_methods(self) -> None:
        super().test_driven_by_the_async_methods()
        self.assertEqual(type(async_client_of(cache)).__name__, "ElastiCacheClient")


# --------------------------------------------------------------------------- no thread hop


def test_every_overridden_sync_method_has_a_native_async_twin() -> None:
    """Where Django's memcached backend (or ours) overrides a sync method of BaseCache, ours
    overrides its async twin (else Django's twin would run the sync method in a thread)."""
    for name in TWINNED:
        overridden = any(name in vars(cls) for cls in (BaseMemcachedCache, PymcCache))
        twin = "a" + name
        if overridden:
            assert twin in vars(PymcCache), twin
        else:  # Django's twin calls other async methods only (proved below)
            assert getattr(PymcCache, twin) is getattr(BaseCache, twin), twin


@pytest.mark.timeout(30)
@pytest.mark.parametrize("backend", ["pymc", "elasticache"])
def test_no_async_method_runs_in_a_thread(
    memcached: MemcachedProcess, backend: str, request: pytest.FixtureRequest
) -> None:
    def no_thread(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("sync_to_async called")

    if backend == "pymc":
        cache_: Any = PymcCache(memcached.server, {})
    else:
        cluster: ElastiCacheCluster = request.getfixturevalue("elasticache_cluster")
        cache_ = ElastiCacheCache(cluster.location, {})

    async def every_method() -> None:
        loop_thread = threading.get_ident()
        assert await cache_.aadd("n", 1) is True
        await cache_.aset("k", "v")
        assert await cache_.aget("k") == "v"
        assert await cache_.atouch("k", 60) is True
        assert await cache_.aget_many(["k", "n"]) == {"k": "v", "n": 1}
        assert await cache_.ahas_key("k") is True
        assert await cache_.aincr("n", 2) == 3
        assert await cache_.adecr("n") == 2
        assert await cache_.aset_many({"a": 1, "b": 2}) == []
        assert await cache_.aget_or_set("c", lambda: 3) == 3
        assert await cache_.aincr_version("c") == 2
        assert await cache_.adecr_version("c", version=2) == 1
        assert await cache_.adelete("a") is True
        await cache_.adelete_many(["b", "c"])
        await cache_.aclose()
        await cache_.aclear()
        assert await cache_.aget("k") is None
        assert threading.get_ident() == loop_thread

    with (
        mock.patch("django.core.cache.backends.base.sync_to_async", no_thread),
        mock.patch("asgiref.sync.SyncToAsync.__call__", no_thread),
    ):
        asyncio.run(every_method())
    close_clients()


# --------------------------------------------------------------------------- sync and async


async def _both(cache_: Any, name: str, *args: Any) -> Tuple[str, Any]:
    try:
        return "ok", await getattr(cache_, "a" + name)(*args)
    except Exception as exc:
        return type(exc).__name__, str(exc)


def _sync(cache_: Any, name: str, *args: Any) -> Tuple[str, Any]:
    try:
        return "ok", getattr(cache_, name)(*args)
    except Exception as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "params",
    [{}, {"KEY_PREFIX": "pré", "VERSION": 3}, {"OPTIONS": {"key_prefix": "app:"}}],
    ids=["plain", "prefix-version", "client-prefix"],
)
def test_async_and_sync_give_the_same_results(
    memcached: MemcachedProcess, params: Dict[str, Any]
) -> None:
    """The same calls, sync then async from the same state: the same results and errors
    (key validation, ValueError of incr, failed keys of set_many, the 1 MB limit)."""
    backend = PymcCache(memcached.server, params)
    big = "x" * (2**20 + 10)
    calls: List[Tuple[Any, ...]] = [
        ("get", "k"),
        ("get", "k", "default"),
        ("add", "k", {"v": [1, 2]}),
        ("add", "k", 2),
        ("get", "k"),
        ("set", "s", "é" * 10),
        ("get", "s"),
        ("set", "s", big),  # over memcached's item size: the old value goes
        ("get", "s"),
        ("set_many", {"a": 1, "b": b"\x00", "big": big}),
        ("get_many", ["a", "b", "big", "none"]),
        ("incr", "a", 5),
        ("incr", "a", -10),
        ("decr", "a", 2),
        ("incr", "missing"),
        ("decr", "missing"),
        ("incr", "b"),
        ("touch", "a", 100),
        ("touch", "missing", 100),
        ("touch", "a", 0),
        ("get", "a"),
        ("has_key", "b"),
        ("has_key", "missing"),
        ("delete", "b"),
        ("delete", "b"),
        ("get_or_set", "gs", 5),
        ("get_or_set", "gs", 6),
        ("incr_version", "gs"),
        ("get", "gs"),
        ("delete_many", ["gs", "k", "nothing"]),
        ("get", "has space"),
        ("set", "x" * 251, 1),
        ("get_many", ["ok", "new\nline"]),
        ("set", "t", 1, None),  # never expires
        ("set", "t0", 1, 0),  # expires at once
        ("get_many", ["t", "t0"]),
        ("set", "far", 1, 60 * 60 * 24 * 365),  # past 30 days: an absolute time
        ("get", "far"),
    ]
    backend.clear()
    sync_results = [_sync(backend, *call) for call in calls]

    async def run() -> List[Tuple[str, Any]]:
        await backend.aclear()
        return [await _both(backend, *call) for call in calls]

    async_results = asyncio.run(run())
    for call, mine, theirs in zip(calls, async_results, sync_results):
        assert (call[:2], mine) == (call[:2], theirs)
    assert sync_results[-1] == ("ok", 1)
    assert [r[0] for c, r in zip(calls, sync_results) if c[1] == "has space"] == ["InvalidCacheKey"]
    close_clients()


@pytest.mark.timeout(30)
def test_values_cross_between_sync_and_async(memcached: MemcachedProcess) -> None:
    values: Dict[str, Any] = {"s": "texte é", "i": 42, "b": b"\x00raw", "d": {"a": [1, 2.5]}}
    with override_settings(CACHES=one_server(memcached)):
        cache.set_many({f"sync-{k}": v for k, v in values.items()})

        async def read_and_write() -> Dict[str, Any]:
            await cache.aset_many({f"async-{k}": v for k, v in values.items()})
            await cache.aincr("sync-i", 1)
            found: Dict[str, Any] = await cache.aget_many([f"sync-{k}" for k in values])
            return found

        read = asyncio.run(read_and_write())
        assert read == {f"sync-{k}": v for k, v in values.items() if k != "i"} | {"sync-i": 43}
        assert cache.get_many([f"async-{k}" for k in values]) == {
            f"async-{k}": v for k, v in values.items()
        }
        end_request()


# --------------------------------------------------------------------------- ASGI

REQUESTS = 200


async def view_own_keys(request: HttpRequest, n: int) -> JsonResponse:
    """One request's work: its own keys written, read back, counted, deleted in part."""
    mine = {f"r{n}:{j}": (n, j, "é" * j) for j in range(5)}
    await cache.aset_many(mine)
    await cache.aset(f"r{n}", {"n": n})
    added = await cache.aadd(f"r{n}:count", 0)
    for _ in range(3):
        await cache.aincr(f"r{n}:count")
    got = await cache.aget_many(list(mine))
    one = await cache.aget(f"r{n}")
    count = await cache.aget(f"r{n}:count")
    await cache.adelete(f"r{n}:0")
    from_sync = await cache.aget(f"sync:{n % 10}")
    wrong = [k for k, v in mine.items() if got.get(k) != v]
    if not added or one != {"n": n} or count != 3 or from_sync != f"sync value {n % 10}":
        wrong.append(f"r{n}")
    return JsonResponse({"n": n, "wrong": wrong})


urlpatterns = [path("own/<int:n>", view_own_keys)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["pymc", "elasticache"])
def test_asgi_requests_at_once_on_one_loop(
    new_memcached: Any, backend: str, memcached_nodes: List[MemcachedProcess]
) -> None:
    """200 concurrent requests through Django's ASGI handler, on one loop; then 200 more:
    every request reads only its own values, the sync backend reads what they wrote,
    ``request_finished`` (after every request) keeps the pooled connections, and the
    second wave opens no connection."""
    if backend == "pymc":
        server = new_memcached()
        caches_ = one_server(server, OPTIONS={"max_pool_size": 20})
        servers = [server]
        cluster = None
    else:
        cluster = ElastiCacheCluster(memcached_nodes)
        location = cluster.location
        servers = memcached_nodes
        caches_ = {
            "default": {
                "BACKEND": "pymc.contrib.django.ElastiCacheCache",
                "LOCATION": location,
                "OPTIONS": {"max_pool_size": 20},
            }
        }
    try:
        with override_settings(CACHES=caches_, ROOT_URLCONF=__name__):
            for i in range(10):
                cache.set(f"sync:{i}", f"sync value {i}")

            async def wave(first: int) -> List[Dict[str, Any]]:
                client = AsyncClient()
                responses = await asyncio.gather(
                    *(client.get(f"/own/{n}") for n in range(first, first + REQUESTS))
                )
                return [json.loads(r.content) for r in responses]

            async def two_waves() -> Tuple[Any, ...]:
                first = await wave(0)
                before = sum(stat(s, "total_connections") for s in servers)
                second = await wave(REQUESTS)
                opened = sum(stat(s, "total_connections") for s in servers) - before
                return first, second, opened

            first, second, opened = asyncio.run(two_waves())
            results = first + second
            assert [r["n"] for r in results] == list(range(2 * REQUESTS))
            assert [r for r in results if r["wrong"]] == []
            # The second wave reused the first's connections (+ the stats calls' own).
            assert opened <= 2 * len(servers) + 1
            # The sync backend reads what the async requests wrote.
            for n in (0, 17, 399):
                assert cache.get(f"r{n}") == {"n": n}
                assert cache.get(f"r{n}:count") == 3
                assert cache.get(f"r{n}:0") is None
                assert cache.get(f"r{n}:4") == (n, 4, "é" * 4)
            end_request()
    finally:
        close_clients()
        if cluster is not None:
            cluster.close()


# --------------------------------------------------------------------------- loops


def _loop_books() -> Dict[Any, Any]:
    return dict(pymc_django._loops.items())


@pytest.mark.timeout(60)
def test_a_backend_used_from_several_loops(new_memcached: Any) -> None:
    """One backend object, used in one asyncio.run after another and in 4 threads each
    running its own loop at once: a client per loop, each closed when its loop ends."""
    server = new_memcached()
    base = stat(server, "curr_connections")
    backend = PymcCache(server.server, {})
    clients: List[Any] = []
    loops: List[Any] = []

    async def use(tag: str, rounds: int = 20) -> None:
        client = backend._acache()
        clients.append(client)
        loops.append(asyncio.get_running_loop())
        for r in range(rounds):
            await backend.aset(f"{tag}:{r}", (tag, r))
            assert await backend.aget(f"{tag}:{r}") == (tag, r)
            assert backend._acache() is client
        await asyncio.sleep(0)

    for i in range(3):
        asyncio.run(use(f"run{i}"))
    run_threads(lambda i: asyncio.run(use(f"thread{i}", 50)), 4, timeout=30)
    assert len({id(c) for c in clients}) == 7  # one per loop
    # Each loop closed its client at its end: no connection of ours is left open.
    wait_until(lambda: stat(server, "curr_connections") <= base, timeout=10, what="closed")
    assert backend.get("thread3:49") == ("thread3", 49)
    books = _loop_books()
    assert all(not books[loop].clients for loop in loops if loop in books)
    close_clients()


@pytest.mark.timeout(30)
def test_a_loop_closed_without_finalizing(memcached: MemcachedProcess) -> None:
    """A loop closed with loop.close() alone (no shutdown_asyncgens, unlike asyncio.run):
    its clients cannot be closed any more; they are dropped at the next loop's first use,
    with no error from the closed loop's async-generator hook."""
    backend = PymcCache(memcached.server, {})
    loop = asyncio.new_event_loop()
    loop.run_until_complete(backend.aset("k", 1))
    old = backend._aheld[2]
    loop.close()
    reported: List[Any] = []
    previous = sys.unraisablehook
    sys.unraisablehook = reported.append
    try:
        assert asyncio.run(backend.aget("k")) == 1
        assert loop not in pymc_django._loops
        del old, loop
        gc.collect()
    finally:
        sys.unraisablehook = previous
    assert [r for r in reported if "generator" in repr(r.object)] == []
    close_clients()


@pytest.mark.timeout(30)
def test_under_uvloop(new_memcached: Any) -> None:
    """The same under uvloop's loop (where installed): its client closed at its end."""
    uvloop = pytest.importorskip("uvloop")
    server = new_memcached()
    base = stat(server, "curr_connections")
    backend = PymcCache(server.server, {})

    async def use() -> None:
        await asyncio.gather(*(backend.aset(f"u{i}", i) for i in range(50)))
        assert await backend.aget_many([f"u{i}" for i in range(50)]) == {
            f"u{i}": i for i in range(50)
        }

    uvloop.run(use())
    wait_until(lambda: stat(server, "curr_connections") <= base, timeout=10, what="closed")
    uvloop.run(use())
    assert backend.get("u49") == 49
    close_clients()


@pytest.mark.timeout(30)
def test_backends_of_one_loop_share_its_client(memcached: MemcachedProcess) -> None:
    """Django makes a backend per request context under ASGI: they share the loop's."""

    async def run() -> None:
        one = PymcCache(memcached.server, {})
        two = PymcCache(memcached.server, {})
        other = PymcCache(memcached.server, {"OPTIONS": {"max_pool_size": 3}})
        assert one._acache() is two._acache()
        assert other._acache() is not one._acache()

    asyncio.run(run())


@pytest.mark.timeout(30)
def test_close_clients_from_another_thread(new_memcached: Any) -> None:
    """close_clients() (sync, any thread) closes a running loop's clients in that loop;
    aclose_clients() in the loop waits for it; the backend then makes new ones."""
    server = new_memcached()
    base = stat(server, "curr_connections")
    backend = PymcCache(server.server, {})

    async def run() -> None:
        await backend.aset("k", 1)
        first = backend._acache()
        await asyncio.get_running_loop().run_in_executor(None, close_clients)
        await asyncio.sleep(0.05)  # the closing task runs
        assert backend._acache() is not first
        assert await backend.aget("k") == 1
        await aclose_clients()
        assert not pymc_django._loops[asyncio.get_running_loop()].clients
        assert await backend.aget("k") == 1

    asyncio.run(run())
    wait_until(lambda: stat(server, "curr_connections") <= base, timeout=10, what="closed")


@pytest.mark.timeout(30)
def test_request_finished_keeps_the_loops_connections(new_memcached: Any) -> None:
    """Django's close() after a request (in a worker thread under ASGI) leaves the loop's
    client and its pooled connections in place."""
    server = new_memcached()
    with override_settings(CACHES=one_server(server)):

        async def requests() -> int:
            await cache.aset("k", 1)
            client = cache._acache()
            before = stat(server, "total_connections")
            for _ in range(20):
                assert await cache.aget("k") == 1
                await asyncio.to_thread(end_request)
                await cache.aclose()
            assert cache._acache() is client
            return stat(server, "total_connections") - before - 1

        assert asyncio.run(requests()) <= 1


# --------------------------------------------------------------------------- cancellation


@pytest.mark.timeout(60)
def test_cancelled_calls_leave_the_backend_right(
    memcached: MemcachedProcess, fault_proxy: Any
) -> None:
    """Hundreds of async calls over a delaying proxy, each cancelled at a random moment
    (asyncio.timeout of a few ms): every call that completes gets its own value, and after
    it all every key reads right, from async and sync alike."""
    proxy = fault_proxy(memcached.address)
    backend = PymcCache(proxy.server, {"OPTIONS": {"max_pool_size": 8}})
    keys = [f"k{i}" for i in range(50)]
    backend.set_many({k: ("v", k) for k in keys})
    proxy.set_mode("delay", seconds=0.003)
    wrong: List[Any] = []
    done = [0, 0]

    async def one(rng: random.Random) -> None:
        key = rng.choice(keys)
        other = rng.choice(keys)
        await asyncio.sleep(rng.uniform(0, 0.4))

        async def call() -> None:
            kind = rng.randrange(4)
            if kind == 0:
                if (got := await backend.aget(key)) != ("v", key):
                    wrong.append((key, got))
            elif kind == 1:
                found = await backend.aget_many([key, other])
                if found != {key: ("v", key), other: ("v", other)}:
                    wrong.append((key, other, found))
            elif kind == 2:
                await backend.aset(key, ("v", key))
            elif await backend.ahas_key(key) is not True:
                wrong.append((key, "has_key"))

        try:
            await asyncio.wait_for(call(), rng.uniform(0.0005, 0.008))
            done[0] += 1
        except asyncio.TimeoutError:
            done[1] += 1

    async def swarm() -> None:
        rng = random.Random(2121)
        await asyncio.gather(*(one(random.Random(rng.random())) for _ in range(400)))
        proxy.set_mode("pass")
        assert await backend.aget_many(keys) == {k: ("v", k) for k in keys}
        for k in keys[:10]:
            assert await backend.aget(k) == ("v", k)
        await backend.aset("after", 1)
        assert await backend.aincr("after") == 2

    asyncio.run(swarm())
    assert wrong == []
    assert done[0] > 20 and done[1] > 20, done  # both kinds of outcome happened
    assert backend.get_many(keys) == {k: ("v", k) for k in keys}
    close_clients()


@pytest.mark.timeout(60)
def test_a_call_cancelled_at_each_point_then_the_next_call(
    memcached: MemcachedProcess, fault_proxy: Any
) -> None:
    """A call cancelled after 0, 1, 2, ... loop ticks (a slow reply), then the next call on
    the same backend: it returns its own value, never the cancelled call's."""
    proxy = fault_proxy(memcached.address)
    backend = PymcCache(proxy.server, {"OPTIONS": {"max_pool_size": 1}})
    backend.set_many({"a": "A", "b": "B", "m1": 1, "m2": 2})

    async def tick_then_cancel(coro: Any, ticks: int) -> bool:
        task = asyncio.ensure_future(coro)
        for _ in range(ticks):
            await asyncio.sleep(0)
            if task.done():
                break
        cancelled: bool = task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return cancelled

    async def run() -> int:
        cancelled = 0
        for ticks in range(40):
            proxy.set_mode("delay", seconds=0.002)
            calls = [
                backend.aget("a"),
                backend.aget_many(["a", "b"]),
                backend.aset("a", "A"),
                backend.aincr("m1", 0),
                backend.atouch("b", 100),
                backend.adelete("nothing"),
            ]
            for call in calls:
                cancelled += await tick_then_cancel(call, ticks)
            proxy.set_mode("pass")
            assert await backend.aget("b") == "B"
            assert await backend.aget_many(["m1", "m2", "a"]) == {"m1": 1, "m2": 2, "a": "A"}
        return cancelled

    assert asyncio.run(run()) > 40
    assert backend.get("a") == "A"
    close_clients()


# --------------------------------------------------------------------------- dead servers


async def _max_tick_gap(call: Any) -> Tuple[Tuple[str, Any], float]:
    """Run ``call`` while a task ticks every 10 ms: its outcome, and the longest gap
    between two ticks (the loop was blocked that long at most)."""
    gaps = [0.0]

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps[0] = max(gaps[0], now - last)
            last = now

    tick = asyncio.ensure_future(ticker())
    try:
        outcome: Tuple[str, Any] = ("ok", await call)
    except Exception as exc:
        outcome = (type(exc).__name__, exc)
    finally:
        tick.cancel()
    return outcome, gaps[0]


@pytest.mark.timeout(30)
def test_a_dead_server_does_not_hang_an_async_request() -> None:
    """A server that accepts and never answers: aget fails after the default timeout (or
    gives the default with ignore_exc), and the loop keeps running meanwhile."""
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(64)
        host, port = mute.getsockname()
        backend = PymcCache(f"{host}:{port}", {})
        quiet = PymcCache(f"{host}:{port}", {"OPTIONS": {"ignore_exc": True, "timeout": 0.3}})

        async def run() -> None:
            started = time.monotonic()
            (kind, exc), gap = await _max_tick_gap(backend.aget("k"))
            assert isinstance(exc, pymc.MemcacheError), (kind, exc)
            assert time.monotonic() - started < DEFAULT_TIMEOUT + 1.5
            assert gap < 0.25
            started = time.monotonic()
            assert await quiet.aget("k", "default") == "default"
            assert await quiet.aadd("k", 1) is False
            await quiet.aset("k", 1)
            assert time.monotonic() - started < 3 * 0.3 + 1.5

        asyncio.run(run())


@pytest.mark.timeout(30)
def test_a_dead_elasticache_endpoint_does_not_hang_an_async_request() -> None:
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(64)
        host, port = mute.getsockname()
        backend = ElastiCacheCache(f"{host}:{port}", {"OPTIONS": {"discovery_timeout": 0.5}})
        quiet = ElastiCacheCache(
            f"{host}:{port}", {"OPTIONS": {"discovery_timeout": 0.4, "ignore_exc": True}}
        )

        async def run() -> None:
            started = time.monotonic()
            (kind, exc), gap = await _max_tick_gap(backend.aget("k"))
            assert isinstance(exc, pymc.ClusterNotReadyError), (kind, exc)
            assert time.monotonic() - started < 0.5 + 1.5
            assert gap < 0.25
            assert await quiet.aget("k") is None

        asyncio.run(run())
    close_clients()


# --------------------------------------------------------------------------- no greenlet


@pytest.mark.timeout(60)
def test_the_sync_backend_needs_no_greenlet(memcached: MemcachedProcess) -> None:
    """Without greenlet the sync methods work (pymc.asyncio is never imported); the first
    async call raises ImportError naming the extra."""
    script = f"""
import asyncio, sys
sys.modules["greenlet"] = None  # as if not installed
from pymc.contrib.django import PymcCache
backend = PymcCache({memcached.server!r}, {{}})
backend.set("k", 1)
assert backend.get("k") == 1
assert "pymc.asyncio" not in sys.modules
try:
    asyncio.run(backend.aget("k"))
except ImportError as exc:
    print("ImportError:", exc)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    assert "ImportError:" in out.stdout and "asyncio" in out.stdout, out.stdout


@pytest.mark.timeout(30)
def test_invalid_keys_raise_before_any_io(memcached: MemcachedProcess) -> None:
    backend = PymcCache(memcached.server, {})

    async def run() -> None:
        for call in (
            backend.aget("has space"),
            backend.aset("x" * 300, 1),
            backend.aget_many(["ok", "bad\x00"]),
            backend.adelete_many(["bad key"]),
            backend.aincr("bad key"),
            backend.atouch("bad key"),
        ):
            with pytest.raises(InvalidCacheKey):
                await call

    asyncio.run(run())
