"""pymc.contrib.flask.PymcCache: cachelib's and Flask-Caching's own memcached tests, then ours.

The frameworks' suites come from their pinned sdists (see ``contrib_flask_suites``) and run
against real memcached processes started by our fixtures (their pytest-xprocess fixtures, which
start memcached on port 11212, are replaced).

Excluded, because they test pylibmc's ``ClientPool`` rather than the cache's behaviour (they
call ``cache._client.reserve(block=False)`` and expect pylibmc's ``queue.Empty``; pymc's pool
caps and blocking are tested in tests/integration/pool/test_pool.py and below):

- cachelib ``TestMemcachedCache.test_pool_enforces_capacity_and_blocking_waits_for_release``
- cachelib ``TestMemcachedCache.test_non_blocking_pool_raises_when_exhausted``
"""

from __future__ import annotations

import datetime as dt
import inspect
import pickle
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterator, List

import pytest
from support.faultproxy import FaultProxy
from support.servers import MemcachedProcess

from integration.contrib.contrib_flask_suites import (
    cachelib_suite,
    flask_caching_app_suite,
    flask_caching_suite,
)
from pymc import Client, HashClient, PooledClient
from pymc.contrib.flask import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, PymcCache
from pymc.serde import pickle_serde

CACHELIB = cachelib_suite()
FLASK_CACHING = flask_caching_suite()

#: The framework tests not run against PymcCache: {(suite class, test): reason}.
EXCLUDED = {
    (
        "TestMemcachedCache",
        "test_pool_enforces_capacity_and_blocking_waits_for_release",
    ): "inspects pylibmc's ClientPool (cache._client.reserve(block=False) -> queue.Empty)",
    (
        "TestMemcachedCache",
        "test_non_blocking_pool_raises_when_exhausted",
    ): "inspects pylibmc's ClientPool (cache._client_context() -> queue.Empty)",
}

# cachelib's conftest runs each of its tests with and without a key prefix.
key_prefix = CACHELIB["conftest"].key_prefix


# ---------------------------------------------------------------------- cachelib's suite


class TestCachelibMemcachedCache(CACHELIB["test_memcached_cache"].TestMemcachedCache):  # type: ignore[misc]
    """cachelib's ``TestMemcachedCache`` (CommonTests, ClearTests, HasTests,
    DeleteManyWithPrefixTests and its own) against PymcCache."""

    @pytest.fixture(autouse=True)
    def pymc_cache_factory(self, key_prefix: Any, memcached: MemcachedProcess) -> Iterator[None]:
        caches: List[PymcCache] = []

        def factory(*args: Any, **kwargs: Any) -> PymcCache:
            kwargs.setdefault("servers", [memcached.server])
            kwargs.setdefault("key_prefix", key_prefix)
            cache = PymcCache(*args, **kwargs)
            cache.clear()
            caches.append(cache)
            return cache

        self.cache_factory = factory
        yield
        for cache in caches:
            cache.close()


for (_cls, _name), _reason in EXCLUDED.items():
    assert _cls == "TestMemcachedCache"
    setattr(TestCachelibMemcachedCache, _name, None)  # excluded: see EXCLUDED


@pytest.fixture
def cachelib_name_is_pymc(memcached: MemcachedProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """cachelib's connection tests build ``MemcachedCache(servers=["127.0.0.1:11212"], ...)``
    by the name their module imported: make that name PymcCache, at our server's address."""

    class Redirected(PymcCache):
        def __init__(self, servers: Any = None, **kwargs: Any) -> None:
            servers = [memcached.server if s == "127.0.0.1:11212" else s for s in servers]
            super().__init__(servers, **kwargs)

    monkeypatch.setattr(CACHELIB["test_memcached_cache"], "MemcachedCache", Redirected)


@pytest.mark.usefixtures("cachelib_name_is_pymc")
class TestCachelibCheckConnection(
    CACHELIB["test_memcached_cache"].TestMemcachedCacheCheckConnection  # type: ignore[misc]
):
    pass


@pytest.mark.usefixtures("cachelib_name_is_pymc")
class TestCachelibCheckConnectionLive(
    CACHELIB["test_memcached_cache"].TestMemcachedCacheCheckConnectionLive  # type: ignore[misc]
):
    pass


def test_excluded_tests_still_exist_upstream() -> None:
    """The exclusion list names real tests (it must not go stale silently)."""
    upstream = CACHELIB["test_memcached_cache"]
    for cls, name in EXCLUDED:
        assert callable(getattr(getattr(upstream, cls), name))


# ---------------------------------------------------------------------- Flask-Caching's suite


@pytest.fixture
def clock() -> None:
    """Flask-Caching's ``sleep`` fixture asks for its fake clock (a conftest fixture of
    theirs), which only SimpleCache and FileSystemCache use: the memcached tests sleep."""


class TestFlaskCachingMemcachedCache(FLASK_CACHING["test_backend_cache"].TestMemcachedCache):  # type: ignore[misc]
    """Flask-Caching's ``TestMemcachedCache`` (GenericCacheTests and its own)."""

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def requirements(cls, memcached_server: MemcachedProcess) -> None:
        pass

    @pytest.fixture
    def make_cache(self, memcached: MemcachedProcess) -> Iterator[Callable[[], PymcCache]]:
        cache = PymcCache(servers=[memcached.server], key_prefix="werkzeug-test-case:")
        yield lambda: cache
        cache.clear()
        cache.close()


# ---------------------------------------------------------------------- Flask-Caching's app tests

# An extra beyond its memcached tests: Flask-Caching's tests of ``cached``, ``memoize``, views
# and templates (which it runs on SimpleCache only), with CACHE_TYPE set to PymcCache. Those
# that ask for the ``clock`` fixture are left out: they move Flask-Caching's fake clock, which
# only SimpleCache and FileSystemCache read (memcached expires entries by its own clock, and
# sleeping instead takes minutes); test_cache_unlink needs a Redis server.
APP_TESTS_DIR, APP_MODULES = flask_caching_app_suite()
APP_TESTS_LEFT_OUT: Dict[str, str] = {}
APP_TESTS_RUN: List[str] = []
for _module_name, _module in APP_MODULES.items():
    if _module_name == "conftest":
        continue
    for _test_name, _test in vars(_module).items():
        if not (_test_name.startswith("test_") and inspect.isfunction(_test)):
            continue
        _params = inspect.signature(_test).parameters
        _qualified = f"{_module_name}.{_test_name}"
        if "clock" in _params:
            APP_TESTS_LEFT_OUT[_qualified] = "moves Flask-Caching's fake clock (SimpleCache's)"
        elif "redis_server" in _params:
            APP_TESTS_LEFT_OUT[_qualified] = "needs a Redis server"
        else:
            APP_TESTS_RUN.append(_qualified)
            globals()[f"test_flask_caching_app__{_module_name}__{_test_name}"] = _test


@pytest.fixture
def app(request: pytest.FixtureRequest, memcached: MemcachedProcess) -> Any:
    """Flask-Caching's ``app`` fixture, with PymcCache as the cache type."""
    import flask

    app = flask.Flask(request.module.__name__, template_folder=str(APP_TESTS_DIR))
    app.testing = True
    app.config["CACHE_TYPE"] = "pymc.contrib.flask.PymcCache"
    app.config["CACHE_MEMCACHED_SERVERS"] = [memcached.server]
    return app


@pytest.fixture
def cache(app: Any) -> Any:
    from flask_caching import Cache

    return Cache(app)


def test_flask_caching_app_tests_were_found() -> None:
    assert len(APP_TESTS_RUN) > 50, APP_TESTS_RUN
    assert len(APP_TESTS_LEFT_OUT) < len(APP_TESTS_RUN) / 2, APP_TESTS_LEFT_OUT


# ---------------------------------------------------------------------- ours


class Interrupt(BaseException):
    """Stands for gevent.Timeout or KeyboardInterrupt raised in the middle of a command."""


class RaisesWhenPickled:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> Any:
        raise self.exc


UNPICKLABLE = lambda: None  # noqa: E731 - a lambda cannot be pickled


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raw_client(memcached: MemcachedProcess) -> HashClient:
    """A plain client that reads what PymcCache stored, bytes as bytes."""
    return HashClient([memcached.server], allow_unicode_keys=True, connect_timeout=2, timeout=2)


def every_failure_return(cache: PymcCache) -> Dict[str, Any]:
    return {
        "get": cache.get("k"),
        "get_many": cache.get_many("k", "l"),
        "get_dict": cache.get_dict("k", "l"),
        "set": cache.set("k", 1),
        "add": cache.add("k", 1),
        "set_many": cache.set_many({"k": 1, "l": 2}),
        "has": cache.has("k"),
        "delete": cache.delete("k"),
        "delete_many": cache.delete_many("k", "l"),
        "inc": cache.inc("k"),
        "dec": cache.dec("k"),
        "clear": cache.clear(),
    }


FAILURE_RETURNS = {
    "get": None,
    "get_many": [None, None],
    "get_dict": {"k": None, "l": None},
    "set": False,
    "add": False,
    "set_many": [],
    "has": False,
    "delete": False,
    "delete_many": [],
    "inc": None,
    "dec": None,
    "clear": False,
}


@pytest.mark.timeout(20)
def test_dead_server_gives_the_documented_failure_returns_at_once() -> None:
    cache = PymcCache([f"127.0.0.1:{closed_port()}"], key_prefix="p:")
    started = time.monotonic()
    for _ in range(3):  # before and after the node is counted dead
        assert every_failure_return(cache) == FAILURE_RETURNS
    assert time.monotonic() - started < 5
    strict = PymcCache([f"127.0.0.1:{closed_port()}"], ignore_delete_many_errors=False)
    with pytest.raises(RuntimeError, match="Failed to delete keys"):
        strict.delete_many("k")


def test_dead_server_with_check_connection_raises_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="could not connect to memcached"):
        PymcCache([f"127.0.0.1:{closed_port()}"], check_connection=True)


def test_timeouts_are_finite_by_default(memcached: MemcachedProcess) -> None:
    options = PymcCache([memcached.server]).client.options
    assert options.connect_timeout == DEFAULT_CONNECT_TIMEOUT
    assert options.timeout == DEFAULT_TIMEOUT
    chosen = PymcCache([memcached.server], connect_timeout=0.25, timeout=0.5).client.options
    assert (chosen.connect_timeout, chosen.timeout) == (0.25, 0.5)


@pytest.mark.timeout(30)
def test_server_that_never_answers_does_not_hang_with_the_default_timeouts(
    memcached: MemcachedProcess, fault_proxy: Callable[[Any], FaultProxy]
) -> None:
    proxy = fault_proxy(memcached.address)
    cache = PymcCache([proxy.server])
    assert cache.set("k", "v")
    proxy.set_mode("stall")
    for call in (lambda: cache.get("k"), lambda: cache.set("k", "w"), lambda: cache.has("k")):
        started = time.monotonic()
        assert not call()
        assert time.monotonic() - started < 3 * DEFAULT_TIMEOUT + 1


@pytest.mark.timeout(30)
def test_a_late_reply_is_never_handed_to_the_next_caller(
    memcached: MemcachedProcess, fault_proxy: Callable[[Any], FaultProxy]
) -> None:
    proxy = fault_proxy(memcached.address)
    # retry_attempts, retry_timeout: keep the node in the cluster and in use through the
    # timeouts, so that the next caller really takes its connection from the same pool.
    cache = PymcCache(
        [proxy.server], timeout=0.2, pool_size=1, retry_attempts=1000, retry_timeout=0
    )
    assert cache.set_many({"a": "value of a", "b": "value of b"}) == ["a", "b"]
    for _ in range(3):
        proxy.set_mode("delay", seconds=0.5)
        assert cache.get("a") is None  # timed out; the reply for "a" arrives later
        proxy.set_mode("pass")
        time.sleep(0.6)
        assert cache.get("b") == "value of b"
        assert cache.get_dict("b", "a") == {"b": "value of b", "a": "value of a"}


UNICODE = {"ключ": "значение", "鍵": ["値"], "🔑": {"k": 1}, "café au lait": 7}


@pytest.mark.parametrize("prefix", ["", "préfixe:"])
def test_unicode_keys(memcached: MemcachedProcess, prefix: str) -> None:
    cache = PymcCache([memcached.server], key_prefix=prefix)
    good = {k: v for k, v in UNICODE.items() if " " not in k}
    assert cache.set_many(good) == list(good)
    assert cache.get_dict(*good) == good
    assert cache.get_many(*good) == list(good.values())
    for key in good:
        assert cache.has(key)
    # Stored as UTF-8 under prefix + key, which any other client can find.
    raw = raw_client(memcached)
    assert raw.get((prefix + "ключ").encode("utf-8")) is not None
    assert cache.inc("счётчик", 5) == 5 and cache.dec("счётчик") == 4
    # A space is no key for memcached: a miss, a failed write, never an error.
    assert cache.set("café au lait", 7) is False
    assert cache.get("café au lait") is None
    assert cache.delete_many(*good) == list(good)
    assert cache.get_many(*good) == [None] * len(good)
    if not prefix:  # cachelib passes a key as it is when there is no prefix, bytes too
        assert cache.set(b"bytes-key", 1) and cache.get(b"bytes-key") == 1  # type: ignore[arg-type]


def test_key_prefix_at_the_250_byte_edge(memcached: MemcachedProcess) -> None:
    prefix = "p" * 200
    cache = PymcCache([memcached.server], key_prefix=prefix)
    fits, too_long = "k" * 50, "k" * 51
    assert cache.set(fits, 1) and cache.get(fits) == 1 and cache.has(fits)
    assert raw_client(memcached).get((prefix + fits).encode()) == b"1"
    assert cache.set(too_long, 1) is False
    assert cache.add(too_long, 1) is False
    assert cache.get(too_long) is None
    assert cache.has(too_long) is False
    assert cache.delete(too_long) is False
    assert cache.inc(too_long) is None
    assert cache.get_dict(fits, too_long) == {fits: 1, too_long: None}
    assert cache.set_many({fits: 2, too_long: 2}) == [fits]
    assert cache.get(fits) == 2
    assert cache.delete_many(too_long, fits) == [fits]
    # The limit is in bytes: two-byte characters count twice.
    wide = PymcCache([memcached.server], key_prefix="p:")
    assert wide.set("é" * 124, "fits") and wide.get("é" * 124) == "fits"  # 2 + 248 bytes
    assert wide.set("é" * 125, "no") is False and wide.get("é" * 125) is None


def test_timeouts_follow_cachelib_rules(memcached: MemcachedProcess) -> None:
    cache = PymcCache([memcached.server], default_timeout=dt.timedelta(minutes=5))
    assert cache.default_timeout == 300
    assert cache.set("past", 1, timeout=-1) and cache.get("past") is None
    assert cache.set("forever", 1, timeout=0) and cache.get("forever") == 1
    # Over 30 days memcached reads a Unix time: a relative timeout must still mean "from now".
    assert cache.set("far", 1, timeout=60 * 60 * 24 * 365) and cache.get("far") == 1
    assert cache.set("month", 1, timeout=60 * 60 * 24 * 30) and cache.get("month") == 1


def test_pickling_errors_are_raised_and_leave_the_pool_whole(
    memcached: MemcachedProcess,
) -> None:
    cache = PymcCache([memcached.server], pool_size=1, pool_timeout=1)
    with pytest.raises(pickle.PicklingError):
        cache.set("k", UNPICKLABLE)
    with pytest.raises(Interrupt):
        cache.set("k", RaisesWhenPickled(Interrupt()))
    # The one pooled connection came back: the next commands get it at once.
    assert cache.set("k", "v") and cache.get("k") == "v"


@pytest.mark.timeout(60)
def test_threads_never_see_each_others_values_and_no_increment_is_lost(
    memcached: MemcachedProcess,
) -> None:
    cache = PymcCache([memcached.server], key_prefix="t:", pool_size=4)
    threads_n, rounds = 8, 60
    before = int(memcached.stats()["total_connections"])
    errors: List[str] = []

    def work(t: int) -> None:
        try:
            for i in range(rounds):
                mine = {f"{t}-{i}-{j}": (t, i, j, "x" * (t * 100 + j)) for j in range(3)}
                if cache.set_many(mine) != list(mine):
                    errors.append(f"set_many failed in thread {t}")
                got = cache.get_dict(*mine)
                if got != mine:
                    errors.append(f"thread {t} read {got!r}")
                if cache.get(f"{t}-{i}-0") != mine[f"{t}-{i}-0"]:
                    errors.append(f"thread {t} get mismatch")
                if cache.inc("shared") is None:
                    errors.append(f"inc failed in thread {t}")
        except Exception as exc:  # a failure must be reported, not lost in the thread
            errors.append(repr(exc))

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=50)
    assert not any(w.is_alive() for w in workers)
    assert errors == []
    assert cache.get("shared") == threads_n * rounds
    # Pooled: at most pool_size connections were ever opened, however many requests ran
    # (the last stats() call opens one of its own).
    assert int(memcached.stats()["total_connections"]) - before <= 4 + 1


def test_flask_caching_cache_type(memcached: MemcachedProcess) -> None:
    import flask
    from flask_caching import Cache

    app = flask.Flask(__name__)
    app.config.update(
        CACHE_TYPE="pymc.contrib.flask.PymcCache",
        CACHE_MEMCACHED_SERVERS=[memcached.server],
        CACHE_KEY_PREFIX="app:",
        CACHE_DEFAULT_TIMEOUT=123,
        CACHE_OPTIONS={"timeout": 0.5, "pool_size": 3},
    )
    cache = Cache(app)
    backend = app.extensions["cache"][cache]
    assert isinstance(backend, PymcCache)
    assert backend.key_prefix == "app:" and backend.default_timeout == 123
    assert backend.client.options.timeout == 0.5
    calls: List[int] = []

    @app.route("/")
    @cache.cached()
    def index() -> str:
        calls.append(1)
        return f"rendered {len(calls)}"

    @cache.memoize()
    def square(n: int) -> int:
        calls.append(n)
        return n * n

    with app.test_client() as http:
        assert http.get("/").data == b"rendered 1"
        assert http.get("/").data == b"rendered 1"
    with app.app_context():
        assert square(7) == 49 and square(7) == 49
        assert cache.set("plain", {"a": 1}) and cache.get("plain") == {"a": 1}
    assert calls == [1, 7]
    assert raw_client(memcached).get(b"app:plain") is not None
    # CACHE_ARGS carries the servers when given.
    other = flask.Flask(__name__)
    other.config.update(CACHE_TYPE="pymc.contrib.flask.PymcCache", CACHE_ARGS=[[memcached.server]])
    other_cache = Cache(other)
    with other.app_context():
        assert other_cache.set("x", 1) and other_cache.get("x") == 1


@pytest.mark.timeout(20)
def test_non_blocking_pool_fails_at_once_when_full(
    memcached: MemcachedProcess, fault_proxy: Callable[[Any], FaultProxy]
) -> None:
    proxy = fault_proxy(memcached.address)
    cache = PymcCache([proxy.server], pool_size=1, pool_blocking=False)
    assert cache.set("k", "v")
    proxy.set_mode("delay", seconds=0.8)
    slow: List[Any] = []
    holder = threading.Thread(target=lambda: slow.append(cache.get("k")))
    holder.start()
    time.sleep(0.2)  # the holder has the only connection, waiting for its reply
    started = time.monotonic()
    assert cache.get("k") is None and cache.set("k", "w") is False
    assert time.monotonic() - started < 0.5
    holder.join(timeout=10)
    assert slow == ["v"]
    proxy.set_mode("pass")
    assert cache.get("k") == "v"


def _flask_cache_over(kind: str, servers: List[str]) -> PymcCache:
    """A PymcCache built from server addresses (its own HashClient) or handed a ready
    client, as the docstring invites."""
    options: Dict[str, Any] = {
        "serde": pickle_serde,
        "allow_unicode_keys": True,
        "timeout": 2.0,
        "connect_timeout": 2.0,
    }
    if kind == "servers":
        return PymcCache(servers)
    if kind == "PooledClient":
        return PymcCache(PooledClient(servers[0], **options))
    return PymcCache(Client(servers[0], **options))


@pytest.mark.parametrize("kind", ["servers", "PooledClient", "Client"])
def test_set_many_with_one_oversized_value_returns_the_keys_stored(
    memcached: MemcachedProcess, kind: str
) -> None:
    # The session server runs with -I 1m: a 2 MB value is over its item size.
    cache = _flask_cache_over(kind, [memcached.server])
    mapping = {"small-1": "a", "huge": b"x" * (2 * 1024 * 1024), "small-2": {"b": 2}}
    assert cache.set_many(mapping) == ["small-1", "small-2"]
    assert cache.get_dict(*mapping) == {"small-1": "a", "huge": None, "small-2": {"b": 2}}
    cache.close()


def test_set_many_with_one_oversized_value_over_many_nodes(
    memcached_nodes: List[MemcachedProcess],
) -> None:
    cache = PymcCache([node.server for node in memcached_nodes], key_prefix="big:")
    cache.clear()
    mapping: Dict[str, Any] = {f"small-{i}": i for i in range(20)}
    mapping["huge"] = b"x" * (2 * 1024 * 1024)  # memcached's default item size max is 1 MB
    stored = cache.set_many(mapping)
    assert stored == [k for k in mapping if k != "huge"]
    assert cache.get_dict(*mapping) == {k: (None if k == "huge" else v) for k, v in mapping.items()}
    cache.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("oversized", [False, True], ids=["dead-node", "dead-node+oversized"])
def test_set_many_with_a_dead_node_returns_the_keys_stored_on_the_live_one(
    memcached: MemcachedProcess, oversized: bool
) -> None:
    # One node is dead: the keys it holds are not stored, but those of the live node are,
    # and set_many returns them (cachelib: "a list containing all keys successfully set").
    cache = PymcCache([memcached.server, f"127.0.0.1:{closed_port()}"], key_prefix="dn:")
    mapping: Dict[str, Any] = {f"k{i}": i for i in range(40)}
    if oversized:
        mapping["huge"] = b"x" * (2 * 1024 * 1024)  # over the session server's -I 1m
    with Client(memcached.address) as raw:
        for attempt in range(2):  # the first failure of the node, then while it rests
            memcached.flush_all()
            started = time.monotonic()
            stored = cache.set_many(mapping)
            assert time.monotonic() - started < 5
            on_live = [k for k in mapping if raw.get(f"dn:{k}") is not None]
            assert 0 < len(on_live) < len(mapping) - 1, "the keys land on both nodes"
            assert "huge" not in on_live
            assert stored == on_live, f"attempt {attempt}"
    cache.close()


@pytest.mark.timeout(30)
def test_delete_many_with_a_dead_node_returns_the_keys_deleted_on_the_live_one(
    memcached: MemcachedProcess,
) -> None:
    cache = PymcCache([memcached.server, f"127.0.0.1:{closed_port()}"], key_prefix="dd:")
    keys = [f"k{i}" for i in range(40)]
    with Client(memcached.address) as raw:
        for attempt in range(2):  # the first failure of the node, then while it rests
            for key in keys:
                raw.set(f"dd:{key}", b"v")  # on the live node, whatever the ring says
            started = time.monotonic()
            deleted = cache.delete_many(*keys)
            assert time.monotonic() - started < 5
            gone = [k for k in keys if raw.get(f"dd:{k}") is None]
            assert 0 < len(gone) < len(keys), "the keys land on both nodes"
            assert deleted == gone, f"attempt {attempt}"
    cache.close()
