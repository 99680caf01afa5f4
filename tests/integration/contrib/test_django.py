"""pymc.contrib.django: Django's own memcached cache tests against PymcCache and
ElastiCacheCache, and tests of our own.

Django's ``tests/cache`` app is not in its wheel: it comes from the sdist of the pinned Django
(``support.sdist.sdist_tree``), whose ``tests/`` directory goes at the *end* of ``sys.path`` (so
none of its many top-level packages shadows anything) and whose ``cache`` app is installed.
Django is configured here, at import, with an in-memory SQLite database (its cache tests read
and write a model); nothing of this reaches other test modules, which do not use Django.

Excluded from Django's suite, each with its reason (also in the README):

* ``test_pymemcache_highest_pickle_version``: reads pymemcache's serde internals
  (``default_kwargs["serde"]._serialize_func.keywords``). Ours:
  ``test_values_are_pickled_with_the_highest_protocol``.
* ``test_pymemcache_options``: reads pymemcache's ``HashClient.default_kwargs``. Ours:
  ``test_options_reach_the_client``.
* ``ElastiCacheCache.test_location_multiple_servers``: puts two servers in ``LOCATION``;
  ElastiCacheCache takes exactly one (the configuration endpoint) and says so when it is made,
  as django-elastipymemcache does. Ours: ``test_elasticache_needs_one_endpoint``.
"""

from __future__ import annotations

import importlib
import json
import pickle
import socket
import sys
import threading
import time
import unittest
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Tuple

import django
import pytest
from django.conf import settings
from support.gevent_runner import run_scenario
from support.helpers import stat, tcp, wait_until
from support.sdist import sdist_tree
from support.servers import MemcachedProcess

import pymc
from pymc.testing import ConfigEndpoint

DJANGO_TESTS = sdist_tree("Django") / "tests"
if str(DJANGO_TESTS) not in sys.path:
    sys.path.append(str(DJANGO_TESTS))

if not settings.configured:
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "cache"],
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        USE_TZ=True,
        SECRET_KEY="pymc-tests",
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates"}],
    )
    django.setup()

from django.core import signals  # noqa: E402
from django.core.cache import InvalidCacheKey, cache  # noqa: E402
from django.core.cache.backends.base import InvalidCacheBackendError  # noqa: E402
from django.test import override_settings  # noqa: E402
from django.test.utils import (  # noqa: E402
    setup_databases,
    setup_test_environment,
    teardown_databases,
    teardown_test_environment,
)

from pymc.contrib.django import (  # noqa: E402
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    ElastiCacheCache,
    PymcCache,
    close_clients,
)

# Imported as a module, not its names: pytest would collect Django's own classes too.
django_cache_tests: Any = importlib.import_module("cache.tests")

PYMC = "pymc.contrib.django.PymcCache"
ELASTICACHE = "pymc.contrib.django.ElastiCacheCache"


@pytest.fixture(scope="module", autouse=True)
def django_test_environment() -> Iterator[None]:
    setup_test_environment()
    old = setup_databases(verbosity=0, interactive=False)
    try:
        yield
    finally:
        close_clients()
        teardown_databases(old, verbosity=0)
        teardown_test_environment()


def suite_caches(params: Dict[str, Any]) -> Dict[str, Any]:
    """The CACHES Django's memcached tests run with (its helper, with its exclusions)."""
    setting: Dict[str, Any] = django_cache_tests.caches_setting_for_tests(
        base=params, exclude=django_cache_tests.memcached_excluded_caches
    )
    return setting


class DjangoSuiteBase(django_cache_tests.PyMemcacheCacheTests):  # type: ignore[misc]
    """Django's ``PyMemcacheCacheTests`` (and so ``BaseMemcachedTests`` and
    ``BaseCacheTests``), with our backend in ``base_params``."""

    __test__ = False  # only its subclasses run
    __unittest_skip_why__ = ""
    # Django's class is skipped unless its settings name a PyMemcacheCache server; ours run.
    __unittest_skip__ = False
    # Django's close() after a request keeps the pooled connections: no disconnect_all().
    should_disconnect_on_close = False
    base_params: ClassVar[Dict[str, Any]] = {}
    backend = ""

    def configured(self, location: Any) -> Iterator[None]:
        """Django's settings for its memcached tests, with our backend at ``location``."""
        type(self).base_params = {"BACKEND": self.backend, "LOCATION": location}
        with override_settings(CACHES=suite_caches(self.base_params)):
            yield

    @unittest.skip("reads pymemcache's serde internals; see test_values_are_pickled_with...")
    def test_pymemcache_highest_pickle_version(self) -> None:
        pass

    @unittest.skip("reads pymemcache's HashClient.default_kwargs; see test_options_reach...")
    def test_pymemcache_options(self) -> None:
        pass


class TestDjangoSuitePymcCache(DjangoSuiteBase):
    __test__ = True
    backend = PYMC

    @pytest.fixture(autouse=True)
    def _caches(self, memcached_nodes: List[MemcachedProcess]) -> Iterator[None]:
        yield from self.configured([node.server for node in memcached_nodes])


class ElastiCacheCluster:
    """A configuration endpoint naming emulated nodes that relay to real memcached."""

    def __init__(self, servers: List[MemcachedProcess]) -> None:
        self.servers = servers
        self.nodes = [ConfigEndpoint(upstream=tcp(s)).start() for s in servers]
        addresses = [node.address for node in self.nodes]
        self.endpoint = ConfigEndpoint(addresses).start()
        for node in self.nodes:
            node.set_nodes(addresses, version=1)

    @property
    def location(self) -> str:
        host, port = self.endpoint.address
        return f"{host}:{port}"

    def close(self) -> None:
        for emulator in [self.endpoint, *self.nodes]:
            emulator.stop()
        for server in self.servers:  # session servers: leave them empty
            server.flush_all()


@pytest.fixture(scope="module")
def elasticache_cluster(memcached_nodes: List[MemcachedProcess]) -> Iterator[ElastiCacheCluster]:
    cluster = ElastiCacheCluster(memcached_nodes)
    try:
        yield cluster
    finally:
        close_clients()  # its pollers first
        cluster.close()


class TestDjangoSuiteElastiCacheCache(DjangoSuiteBase):
    __test__ = True
    backend = ELASTICACHE

    @pytest.fixture(autouse=True)
    def _caches(self, elasticache_cluster: ElastiCacheCluster) -> Iterator[None]:
        yield from self.configured(elasticache_cluster.location)

    @unittest.skip("puts two servers in LOCATION: ElastiCacheCache takes one endpoint")
    def test_location_multiple_servers(self) -> None:
        pass


# --------------------------------------------------------------------------- our own tests


def one_server(server: MemcachedProcess, **params: Any) -> Dict[str, Any]:
    return {"default": {"BACKEND": PYMC, "LOCATION": server.server, **params}}


def end_request() -> None:
    """What Django does when a response is done: close every cache this thread used."""
    signals.request_finished.send(sender=None)


def pool_stats(client: Any) -> Dict[str, Any]:
    """The connection pool's counts of the only node of ``client``."""
    (pool,) = client.clients.values()
    stats: Dict[str, Any] = pool.client_pool.stats()
    return stats


def run_threads(target: Callable[[int], None], count: int, timeout: float = 20.0) -> None:
    """Run ``target(i)`` in ``count`` threads at once; re-raise the first failure."""
    errors: List[BaseException] = []

    def run(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.01))
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def test_values_are_pickled_with_the_highest_protocol(memcached: MemcachedProcess) -> None:
    with override_settings(CACHES=one_server(memcached)):
        client = cache._cache
        assert client.options.serde.pickle_version == pickle.HIGHEST_PROTOCOL
        for pool in client.clients.values():
            assert pool.options.serde.pickle_version == pickle.HIGHEST_PROTOCOL


def test_options_reach_the_client(memcached: MemcachedProcess) -> None:
    options = {"no_delay": False, "max_pool_size": 3, "timeout": None, "key_prefix": "app:"}
    with override_settings(CACHES=one_server(memcached, OPTIONS=options)):
        client = cache._cache
        assert client.options.no_delay is False
        assert client.options.timeout is None  # None is honoured: the user asked to wait
        assert client.options.connect_timeout == DEFAULT_CONNECT_TIMEOUT
        assert client.options.key_prefix == b"app:"
        assert client.use_pooling is True
        cache.set("k", "v")
        with pymc.Client(tcp(memcached), timeout=2) as direct:
            assert direct.get(cache.make_key("k").encode()) is None
            assert direct.get(b"app:" + cache.make_key("k").encode()) is not None
    with override_settings(CACHES=one_server(memcached)):
        client = cache._cache
        assert (client.options.connect_timeout, client.options.timeout) == (
            DEFAULT_CONNECT_TIMEOUT,
            DEFAULT_TIMEOUT,
        )


def test_values_written_by_djangos_pymemcache_backend_read_back(
    memcached: MemcachedProcess,
) -> None:
    """Switching BACKEND keeps what is cached: same keys, same pickles and flags."""
    values: Dict[str, Any] = {"s": "texte é", "i": 42, "b": b"\x00raw", "d": {"a": [1, 2.5]}}
    theirs = {"BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache"}
    with override_settings(CACHES={"default": {**theirs, "LOCATION": memcached.server}}):
        cache.set_many(values)
        end_request()
    with override_settings(CACHES=one_server(memcached)):
        assert cache.get_many(list(values)) == values
        cache.set("mine", {"x": (1, 2)})
        assert cache.incr("i") == 43
    with override_settings(CACHES={"default": {**theirs, "LOCATION": memcached.server}}):
        assert cache.get("mine") == {"x": (1, 2)}
        assert cache.get("i") == 43
        end_request()


def test_close_after_each_request_keeps_pooled_connections(new_memcached: Any) -> None:
    server = new_memcached()
    with override_settings(CACHES=one_server(server)):
        cache.set("k", 1)
        end_request()
        before = stat(server, "total_connections")
        for _ in range(20):
            assert cache.get("k") == 1
            end_request()
        opened = stat(server, "total_connections") - before - 1  # -1: the stats call
        assert pool_stats(cache._cache)["created"] == 1
    # memcached may count the first stats connection late: hence 1, not 0.
    assert opened <= 1


def test_djangos_pymemcache_backend_reconnects_after_each_request(new_memcached: Any) -> None:
    """The behaviour ours departs from (Django has no option to keep it or to drop it)."""
    server = new_memcached()
    theirs = {"BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache"}
    with override_settings(CACHES={"default": {**theirs, "LOCATION": server.server}}):
        before = stat(server, "total_connections")
        for _ in range(5):
            cache.get("k")
            end_request()
        opened = stat(server, "total_connections") - before - 1
    assert opened >= 5


def test_a_backend_per_thread_shares_one_client(new_memcached: Any) -> None:
    """Django makes a backend per thread (per greenlet, per ASGI request): 30 one-request
    threads, as a thread-per-request server runs, open one connection, not 30."""
    server = new_memcached()
    with override_settings(CACHES=one_server(server)):
        before = stat(server, "total_connections")

        def request(i: int) -> None:
            cache.set(f"k{i}", i)
            assert cache.get(f"k{i}") == i
            end_request()

        for _ in range(30):
            run_threads(request, 1)
        opened = stat(server, "total_connections") - before - 1
        assert pool_stats(cache._cache)["created"] == 1
    assert opened <= 2  # (memcached may count the first stats connection late)


@pytest.mark.timeout(60)
def test_close_between_requests_under_threads(new_memcached: Any) -> None:
    """16 threads, 40 requests each, close() after every one: every thread reads its own
    data, and the connections stay bounded by the number of threads."""
    server = new_memcached()
    threads, requests = 16, 40
    peak = [0]
    with override_settings(CACHES=one_server(server)):
        before = stat(server, "total_connections")

        def worker(t: int) -> None:
            for r in range(requests):
                mine = {f"t{t}:{j}": (t, r, j) for j in range(5)}
                cache.set_many(mine)
                assert cache.get_many(list(mine)) == mine
                assert cache.get(f"t{t}:0") == (t, r, 0)
                assert cache.incr(f"n{t}", 1) if r else cache.add(f"n{t}", 0) is True
                end_request()
                if r % 10 == 0:
                    peak[0] = max(peak[0], stat(server, "curr_connections"))

        run_threads(worker, threads, timeout=50)
        for t in range(threads):
            assert cache.get(f"n{t}") == requests - 1
        pool = pool_stats(cache._cache)
        assert pool["created"] <= threads
        assert pool["destroyed"] == 0
        opened = stat(server, "total_connections") - before
    # The pool's connections, plus one per stats call (16 threads x 4 calls, +1, +1 late).
    assert opened - (threads * 4 + 2) <= threads
    assert peak[0] <= threads + threads + 1  # pooled + concurrent stats calls


@pytest.mark.timeout(30)
def test_a_dead_server_does_not_hang_a_request() -> None:
    """A server that accepts connections and never answers: a request ends after the
    default timeout, with an error, or a miss with ignore_exc."""
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(64)  # the kernel completes the handshakes; nobody ever reads or answers
        host, port = mute.getsockname()
        location = f"{host}:{port}"
        backend = PymcCache(location, {})
        started = time.monotonic()
        with pytest.raises(pymc.MemcacheError):
            backend.get("k")
        assert time.monotonic() - started < DEFAULT_TIMEOUT + 1.5
        quiet = PymcCache(location, {"OPTIONS": {"ignore_exc": True, "timeout": 0.3}})
        started = time.monotonic()
        assert quiet.get("k", "default") == "default"
        assert quiet.add("k", 1) is False
        quiet.set("k", 1)
        assert time.monotonic() - started < 3 * 0.3 + 1.5


@pytest.mark.timeout(30)
def test_a_dead_elasticache_endpoint_does_not_hang_a_request() -> None:
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(64)
        host, port = mute.getsockname()
        backend = ElastiCacheCache(f"{host}:{port}", {"OPTIONS": {"discovery_timeout": 0.5}})
        started = time.monotonic()
        with pytest.raises(pymc.ClusterNotReadyError):
            backend.get("k")
        assert time.monotonic() - started < 0.5 + 1.5
        quiet = ElastiCacheCache(
            f"{host}:{port}", {"OPTIONS": {"discovery_timeout": 0.4, "ignore_exc": True}}
        )
        assert quiet.get("k") is None
        close_clients()


def test_str_and_bytes_keys(memcached: MemcachedProcess) -> None:
    with override_settings(CACHES=one_server(memcached)):
        cache.set("clé-ünïcode", "u")
        cache.set(b"k", "bytes")
        cache.set("k", "str")
        assert cache.get("clé-ünïcode") == "u"
        assert cache.get(b"k") == "bytes"  # Django makes b"k" the key "b'k'"
        assert cache.get("k") == "str"
        assert cache.get_many(["k", b"k", "clé-ünïcode"]) == {
            "k": "str",
            b"k": "bytes",
            "clé-ünïcode": "u",
        }
        with pytest.raises(InvalidCacheKey):
            cache.get("has space")
        with pytest.raises(InvalidCacheKey):
            cache.set("new\nline", 1)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"KEY_PREFIX": "site-a"},
        {"KEY_PREFIX": "pré", "VERSION": 12},
        {"KEY_FUNCTION": "cache.tests.custom_key_func", "KEY_PREFIX": "p"},
    ],
    ids=["plain", "prefix", "unicode-prefix-version", "key-function"],
)
def test_keys_at_250_bytes(memcached: MemcachedProcess, params: Dict[str, Any]) -> None:
    with override_settings(CACHES=one_server(memcached, **params)):
        # 250 bytes once the prefix, the version and the key function have had their say.
        extra = len(cache.make_key("").encode()) - len(cache.make_key(""))  # multi-byte prefix
        longest = "x" * (250 - len(cache.make_key("")) - extra)
        assert len(cache.make_key(longest).encode()) == 250
        cache.set(longest, "fits")
        assert cache.get(longest) == "fits"
        assert cache.get_many([longest]) == {longest: "fits"}
        for too_long in (longest + "x", longest[:-1] + "é"):  # 251 characters; 251 bytes
            assert len(cache.make_key(too_long).encode()) == 251
            calls: List[Tuple[str, Tuple[Any, ...]]] = [
                ("get", (too_long,)),
                ("set", (too_long, 1)),
                ("get_many", ([too_long, "b"],)),
                ("delete", (too_long,)),
                ("incr", (too_long,)),
            ]
            for name, args in calls:
                with pytest.raises(InvalidCacheKey):
                    getattr(cache, name)(*args)
        # The version is part of the key: at version+1 (two digits more) it no longer fits.
        if "VERSION" in params:
            with pytest.raises(InvalidCacheKey):
                cache.get(longest, version=100)


def test_a_client_key_prefix_counts_towards_250_bytes(memcached: MemcachedProcess) -> None:
    with override_settings(CACHES=one_server(memcached, OPTIONS={"key_prefix": "12345"})):
        key = "x" * (250 - 5 - len(cache.make_key("")))
        cache.set(key, 1)
        assert cache.get(key) == 1
        with pytest.raises(InvalidCacheKey):
            cache.set(key + "x", 1)


def test_close_clients_forgets_the_shared_clients(memcached: MemcachedProcess) -> None:
    with override_settings(CACHES=one_server(memcached)):
        cache.set("k", 1)
        first = cache._cache
        close_clients()
        end_request()
        assert cache.get("k") == 1
        assert cache._cache is not first


# --------------------------------------------------------------------------- ElastiCache


def test_elasticache_needs_one_endpoint() -> None:
    for location in (["a.example:11211", "b.example:11211"], "a:1;b:2", "", "no-port"):
        with pytest.raises(InvalidCacheBackendError, match="LOCATION"):
            ElastiCacheCache(location, {})


def test_elasticache_accepts_django_elastipymemcache_options(
    elasticache_cluster: ElastiCacheCluster,
) -> None:
    options = {
        "discovery_interval": 30,
        "discovery_retry_delay": 2.0,
        "use_vpc_ip_address": False,
        "ignore_cluster_errors": True,
        "use_pooling": True,
        "max_pool_size": 5,
        "ignore_exc": True,
    }
    backend = ElastiCacheCache(elasticache_cluster.location, {"OPTIONS": options})
    client = backend._cache
    assert isinstance(client, pymc.ElastiCacheClient)
    assert client.poll_interval == 30
    assert client.use_vpc is False
    assert client.ignore_exc is True
    backend.set("k", "v")
    assert backend.get("k") == "v"
    # discovery_interval 0 (its "no periodic discovery") polls at our default.
    off = ElastiCacheCache(elasticache_cluster.location, {"OPTIONS": {"discovery_interval": 0}})
    assert off._cache.poll_interval == 60.0
    for both in (
        {"discovery_interval": 1, "poll_interval": 1},
        {"use_vpc_ip_address": True, "use_vpc": True},
    ):
        with pytest.raises(InvalidCacheBackendError, match="not both"):
            ElastiCacheCache(elasticache_cluster.location, {"OPTIONS": both})
    with pytest.raises(InvalidCacheBackendError, match="discovery_interval"):
        ElastiCacheCache(elasticache_cluster.location, {"OPTIONS": {"discovery_interval": -1}})


@pytest.mark.timeout(30)
def test_elasticache_follows_the_cluster(memcached_nodes: List[MemcachedProcess]) -> None:
    cluster = ElastiCacheCluster(memcached_nodes)
    try:
        settings_ = {"BACKEND": ELASTICACHE, "LOCATION": cluster.location}
        options = {"discovery_interval": 0.2}
        with override_settings(CACHES={"default": {**settings_, "OPTIONS": options}}):
            assert len(cache._cache.nodes) == 4
            cache.set("k", 1)
            one = [cluster.nodes[0].address]
            for emulator in [cluster.endpoint, *cluster.nodes]:
                emulator.set_nodes(one, version=2)
            wait_until(lambda: len(cache._cache.nodes) == 1, timeout=10, what="the new node list")
            cache.set("k", 2)
            assert cache.get("k") == 2
    finally:
        close_clients()
        cluster.close()


@pytest.mark.timeout(30)
def test_async_methods(memcached: MemcachedProcess) -> None:
    """Django's cache tests for async methods target its dummy backend only
    (tests/cache/tests_async.py): these are Django's async methods on ours."""
    import asyncio

    async def requests() -> None:
        await cache.aset("a", {"x": 1})
        assert await cache.aget("a") == {"x": 1}
        assert await cache.aadd("a", 2) is False
        await cache.aset_many({"b": 1, "c": "é"})
        assert await cache.aget_many(["a", "b", "c", "d"]) == {"a": {"x": 1}, "b": 1, "c": "é"}
        assert await cache.aincr("b", 5) == 6
        assert await cache.adelete("a") is True
        assert await cache.aget_or_set("a", lambda: 7) == 7
        await asyncio.gather(*(cache.aset(f"k{i}", i) for i in range(20)))
        assert await cache.aget_many([f"k{i}" for i in range(20)]) == {
            f"k{i}": i for i in range(20)
        }

    with override_settings(CACHES=one_server(memcached)):
        asyncio.run(requests())
        end_request()


@pytest.mark.timeout(90)
def test_greenlets_share_the_pool_and_see_only_their_data(new_memcached: Any) -> None:
    """gevent, patched: 200 greenlets x 10 requests, each greenlet with its own backend
    (Django's caches are per greenlet) and close() after every request."""
    server = new_memcached()
    out = run_scenario(
        "integration/contrib/contrib_django_gevent.py",
        "requests",
        {"server": server.server, "greenlets": 200, "rounds": 10, "timeout": 60},
        timeout=80,
    )
    result = json.loads(out.strip().splitlines()[-1])
    assert result["wrong"] == [] and result["unfinished"] == 0
    assert 1 <= result["pool"]["created"] <= 200
    assert result["pool"]["destroyed"] == 0


def test_unix_socket_location(memcached_unix: MemcachedProcess) -> None:
    try:
        for location in (f"unix:{memcached_unix.server}", memcached_unix.server):
            backend = PymcCache(location, {})
            backend.set("k", location)
            assert backend.get("k") == location
    finally:
        memcached_unix.flush_all()  # a session server: other modules expect it empty
