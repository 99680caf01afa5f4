"""Defects an outside review found in issue 12's work (contrib backends, the on_command hook,
fetch/lease_get), each shown against real memcached servers."""

from __future__ import annotations

import copy
import gc
import json
import socket
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Tuple

import flask
import flask_caching
import pytest
from support.faultproxy import FaultProxy
from support.helpers import current_sock, source_files, tcp
from support.servers import MemcachedProcess

import pymc
import pymc.cluster
from pymc import MemcacheIllegalInputError
from pymc.contrib.flask import PymcCache as FlaskPymcCache


class DocumentedJsonSerde:
    """The JSON serde of pymemcache's documentation: it knows its own flags and refuses
    any other, as a careful serde does."""

    def serialize(self, key: Any, value: Any) -> Tuple[bytes, int]:
        if isinstance(value, str):
            return value.encode("utf-8"), 1
        return json.dumps(value).encode("utf-8"), 2

    def deserialize(self, key: Any, value: bytes, flags: int) -> Any:
        if flags == 1:
            return value.decode("utf-8")
        if flags == 2:
            return json.loads(value.decode("utf-8"))
        raise ValueError(f"unknown serialization format {flags}")


# ---------------------------------------------------------------------- fetch and its lease


@pytest.mark.timeout(20)
def test_fetch_with_a_serde_that_knows_only_its_own_flags(memcached: MemcachedProcess) -> None:
    """A miss hands the winner (and every waiter) the lease's empty placeholder, which is
    no stored value: it must not go through the serde. Before the fix the winner's
    lease_get raised the serde's ValueError, and the lease it had won stayed taken, so the
    next caller waited out lease_ttl and got MemcacheLeaseTimeoutError."""
    client = pymc.Client(tcp(memcached), serde=DocumentedJsonSerde())
    try:
        assert client.fetch("doc-serde", lambda: {"a": 1}, lease_ttl=5) == {"a": 1}
        assert client.fetch("doc-serde", lambda: {"a": 2}, lease_ttl=5) == {"a": 1}
        # A waiter, while another caller holds the lease, sees a miss (the lease is no
        # item a read sees: issue 18).
        held = client.lease_get("doc-serde-2", 5)
        assert held.win
        waiter = client.lease_get("doc-serde-2", 5)
        assert waiter.won_elsewhere and waiter.status == "miss" and waiter.value is None
        # The value after a stale hit still goes through the serde.
        assert client.invalidate("doc-serde")
        stale = client.lease_get("doc-serde", 5)
        value: Any = stale.value
        assert stale.stale and value == {"a": 1}
    finally:
        client.close()


# ---------------------------------------------------------------------- Flask-Caching / cachelib


@pytest.mark.parametrize("options", [{"max_pool_size": 2}, {"use_pooling": False}])
def test_flask_cache_options_may_name_hash_client_pool_arguments(
    memcached: MemcachedProcess, options: Dict[str, Any]
) -> None:
    """CACHE_OPTIONS go to PymcCache, and what it does not know to the HashClient (its
    docstring says so), but ``max_pool_size`` and ``use_pooling`` collided with the
    arguments PymcCache itself passes: ``TypeError: got multiple values for keyword``."""
    app = flask.Flask("attack12")
    app.config.update(
        CACHE_TYPE="pymc.contrib.flask.PymcCache",
        CACHE_MEMCACHED_SERVERS=[f"{tcp(memcached)[0]}:{tcp(memcached)[1]}"],
        CACHE_OPTIONS=options,
    )
    cache = flask_caching.Cache(app)
    with app.app_context():
        assert cache.set("opt", 1) and cache.get("opt") == 1
        backend: Any = cache.cache
        assert isinstance(backend, FlaskPymcCache)
        client = backend.client
        assert client.use_pooling is options.get("use_pooling", True)
        (pooled,) = client.clients.values()
        assert pooled.client_pool.max_size == options.get("max_pool_size", 1)
        backend.close()


def test_flask_pool_size_given_twice_is_refused(memcached: MemcachedProcess) -> None:
    with pytest.raises(TypeError, match="not both"):
        FlaskPymcCache([tcp(memcached)], pool_size=2, max_pool_size=3)


def test_meta_argument_checks_do_not_depend_on_earlier_calls(memcached: MemcachedProcess) -> None:
    """The mg flags are built once per combination (an lru_cache), but an untyped cache
    takes 30.0 for 30 and True for 1: a float lease_ttl, refused on a fresh process, was
    accepted once some caller had asked with the int."""
    client = pymc.Client(tcp(memcached))
    try:
        client.lease_get("typed-a", 30)
        with pytest.raises(MemcacheIllegalInputError, match="must be an int"):
            client.lease_get("typed-b", 30.0)  # type: ignore[arg-type]
        client.lease_get("typed-c", 30, 5)
        with pytest.raises(MemcacheIllegalInputError, match="must be an int"):
            client.lease_get("typed-d", 30, 5.0)  # type: ignore[arg-type]
        client.meta_get("typed-e", vivify_on_miss=1)
        with pytest.raises(MemcacheIllegalInputError, match="must be an int"):
            client.meta_get("typed-f", vivify_on_miss=True)
        for key in ("typed-b", "typed-d", "typed-f"):  # nothing was sent for them
            assert client.meta_get(key).status == "miss"
    finally:
        client.close()


@pytest.mark.parametrize("lease_ttl", [0, -1])
def test_a_lease_that_never_expires_or_never_holds_is_refused(
    memcached: MemcachedProcess, lease_ttl: int
) -> None:
    """``lease_ttl=0`` made a placeholder that never expires (memcached's ttl 0): were its
    winner killed before storing, every later fetch of the key would time out, forever.
    A negative one made a placeholder already expired: every caller won, no herd was held
    back. Both are refused, and nothing is sent."""
    client = pymc.Client(tcp(memcached))
    hashed = pymc.HashClient([tcp(memcached)])
    try:
        with pytest.raises(MemcacheIllegalInputError, match="lease_ttl"):
            client.lease_get("lease-ttl", lease_ttl)
        with pytest.raises(MemcacheIllegalInputError, match="lease_ttl"):
            client.fetch("lease-ttl", lambda: 1, lease_ttl=lease_ttl)
        with pytest.raises(MemcacheIllegalInputError, match="lease_ttl"):
            hashed.fetch("lease-ttl", lambda: 1, lease_ttl=lease_ttl)
        assert client.meta_get("lease-ttl").status == "miss"
        assert client.fetch("lease-ttl", lambda: 2, lease_ttl=1) == 2  # the least allowed
    finally:
        client.close()
        hashed.close()


# ---------------------------------------------------------------------- retries


@pytest.mark.timeout(30)
@pytest.mark.parametrize("wrap", ["retrying", "hooked-retrying"])
def test_a_retried_multi_key_command_replays_its_keys(
    memcached: MemcachedProcess, fault_proxy: Callable[..., FaultProxy], wrap: str
) -> None:
    """Keys given as an iterator (a generator, ``map``, ``dict.keys()`` of a view's
    iterator) are read by the first attempt; a retry read the spent iterator and returned
    ``{}``: every value silently a miss after a connection had broken."""
    seed = pymc.Client(tcp(memcached))
    seed.set_many({"gen-a": b"1", "gen-b": b"2"})
    seed.close()
    proxy = fault_proxy(tcp(memcached))
    hook = (lambda command, keys, server: None) if wrap == "hooked-retrying" else None
    inner = pymc.Client(("127.0.0.1", proxy.port), on_command=hook)
    client = pymc.RetryingClient(inner, attempts=3)
    try:
        assert client.get_many(iter(["gen-a", "gen-b"])) == {"gen-a": b"1", "gen-b": b"2"}
        proxy.close_all()  # the connection breaks under the client
        found = client.get_many(key for key in ["gen-a", "gen-b"])
        assert found == {"gen-a": b"1", "gen-b": b"2"}
        proxy.close_all()
        assert client.delete_many(iter(["gen-a"])) is True
        assert client.get_many(iter(["gen-a", "gen-b"])) == {"gen-b": b"2"}
    finally:
        client.close()


# ---------------------------------------------------------------------- packaging


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "module, blocked, extra",
    [
        ("pymc.contrib.django", ["django"], "django"),
        ("pymc.contrib.flask", ["flask_caching", "cachelib"], "flask"),
        ("pymc.contrib.opentelemetry", ["opentelemetry"], "opentelemetry"),
    ],
)
def test_a_backend_without_its_framework_names_the_extra(
    module: str, blocked: List[str], extra: str
) -> None:
    """Without its framework a backend said only ``No module named 'cachelib'`` (for the
    Flask backend, a package the user never asked for); it names the extra to install."""
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "try:\n"
        f"    import {module}\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=True
    )
    assert f"pip install 'pymc-memcached[{extra}]'" in proc.stdout, proc.stdout


# ---------------------------------------------------------------------- the on_command hook


def test_a_hooked_client_is_freed_when_dropped(memcached: MemcachedProcess) -> None:
    """A hooked Client bound its observed commands on itself, each holding the client: a
    reference cycle, so a client dropped without close() kept its socket (and the server's
    connection) until the cycle collector ran; never, with gc disabled or frozen, as some
    prefork servers do. An unhooked client is freed at once; a hooked one must be too."""
    server = tcp(memcached)
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for hook in (None, lambda command, keys, where: None):
            client = pymc.Client(server, on_command=hook)
            assert client.get("dropped") is None
            sock = client.sock
            assert sock is not None
            client_ref, sock_ref = weakref.ref(client), weakref.ref(sock)
            del client, sock
            assert client_ref() is None and sock_ref() is None, f"hook={hook!r}"
    finally:
        if was_enabled:
            gc.enable()


def test_a_copy_of_a_hooked_client_runs_on_its_own_connection(
    memcached: MemcachedProcess,
) -> None:
    """copy.copy() of a hooked Client copied the observed commands bound to the original:
    the copy's commands ran on the original's socket and state."""
    seen: List[Any] = []
    original = pymc.Client(tcp(memcached), on_command=lambda c, k, s: seen.append(c))
    original.set("copied", b"1")
    duplicate = copy.copy(original)
    duplicate.sock = None  # its own connection, made on first use
    try:
        assert duplicate.get("copied") == b"1"
        assert current_sock(duplicate) not in (None, original.sock)
        assert seen == ["set", "get"]
    finally:
        original.close()
        duplicate.close()


@pytest.mark.timeout(60)
def test_flask_inc_under_contention_loses_no_increment(memcached: MemcachedProcess) -> None:
    """inc/dec are a compare-and-swap loop "so concurrent increments are never lost", but
    the loop retried at once: 8 threads incrementing one key spun together and ran out of
    attempts, so some inc() calls returned None (the failure return) and their increment
    was never applied."""
    cache = FlaskPymcCache([tcp(memcached)], key_prefix="contended:")
    threads_n, rounds = 8, 150
    failed: List[int] = []
    assert cache.set("n", 0)

    def work() -> None:
        for _ in range(rounds):
            if cache.inc("n") is None:
                failed.append(1)

    workers = [threading.Thread(target=work) for _ in range(threads_n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=50)
    assert not any(worker.is_alive() for worker in workers)
    assert (len(failed), cache.get("n")) == (0, threads_n * rounds)
    cache.close()


# ---------------------------------------------------------------------- timeouts by default


@pytest.mark.timeout(60)
@pytest.mark.parametrize("options", [{}, {"use_pooling": True, "max_pool_size": 2}])
@pytest.mark.parametrize("command", ["get", "get_many"])
def test_requests_queued_for_a_dead_nodes_connection_fail_fast(
    options: Dict[str, Any], command: str
) -> None:
    """A HashClient (pymemcache's default: one connection per node) in front of a server
    that accepts but never answers: the first request costs the timeout and marks the
    node failed, but the requests queued for its connection meanwhile each tried it
    again, one after another, so the k-th request took k timeouts (up to pool_timeout,
    10 s, for a 2 s timeout), single keys and fan-outs alike. A request must cost at most
    about twice the timeout."""
    timeout = 0.5
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # connections complete in the backlog; nothing is ever read
    client = pymc.HashClient(
        [silent.getsockname()], connect_timeout=timeout, timeout=timeout, **options
    )
    took: List[float] = []
    errors: List[str] = []

    def request() -> None:
        start = time.monotonic()
        try:
            if command == "get":
                client.get("dead")
            else:  # a fan-out
                client.get_many(["dead", "gone"])
        except pymc.MemcacheError as exc:
            errors.append(type(exc).__name__)
        took.append(time.monotonic() - start)

    workers = [threading.Thread(target=request) for _ in range(6)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)
        assert len(took) == len(errors) == 6
        assert max(took) <= 2 * timeout + 0.5, sorted(round(t, 2) for t in took)
    finally:
        client.close()
        silent.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["get", "get_many"])
def test_a_node_is_marked_failed_before_the_next_request_gets_its_connection(
    command: str,
) -> None:
    """A request that timed out on a silent node gave its connection back first and marked
    the node failed afterwards: a request waiting for that connection took it in between,
    found the node usable and spent a whole timeout of its own there (the race a loaded
    machine hits; here a trace holds the first request at its first line in pymc.cluster
    after the connection went back)."""
    timeout = 0.5
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    client = pymc.HashClient(
        [silent.getsockname()],
        connect_timeout=timeout,
        timeout=timeout,
        use_pooling=True,
        max_pool_size=1,
    )
    (pool,) = [node.client_pool for node in client.clients.values()]
    traced = source_files(pymc.cluster)  # (not pool.py: stats() there would wait on its lock)
    state = {"had_it": False, "held": False}
    first_done: List[float] = []
    second: List[Any] = []

    def line(frame: Any, event: str, arg: Any) -> Any:
        if event == "line" and not state["held"]:
            in_use = pool.stats()["in_use"]
            if in_use:
                state["had_it"] = True
            elif state["had_it"]:  # the connection just went back: hold here
                state["held"] = True
                deadline = time.monotonic() + 5
                while pool.stats()["in_use"] == 0 and time.monotonic() < deadline:
                    time.sleep(0.005)  # until the waiting request has the connection
                time.sleep(0.2)  # and has looked at the node (microseconds) before it asks
        return line

    def call(frame: Any, event: str, arg: Any) -> Any:
        return line if frame.f_code.co_filename in traced else None

    def run() -> None:
        if command == "get":
            client.get("dead")
        else:
            client.get_many(["dead", "gone"])

    def first() -> None:
        sys.settrace(call)
        try:
            with pytest.raises(pymc.MemcacheError):
                run()
        finally:
            sys.settrace(None)
            first_done.append(time.monotonic())

    def waiting() -> None:
        try:
            run()
        except pymc.MemcacheError as exc:
            second.append(exc)
        second.append(time.monotonic())

    a = threading.Thread(target=first)
    a.start()
    deadline = time.monotonic() + 5
    while pool.stats()["in_use"] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)  # the first request holds the connection
    b = threading.Thread(target=waiting)
    try:
        b.start()
        a.join(10)
        b.join(10)
        assert state["held"] and first_done and len(second) == 2, (state, first_done, second)
        assert isinstance(second[0], pymc.MemcacheError)
        # It failed at once (the node had failed), not a timeout later.
        assert second[1] - first_done[0] < timeout / 2, second[1] - first_done[0]
    finally:
        client.close()
        silent.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args", [["stats", "127.0.0.1:notaport"], ["discover", "[::1"], ["stats", "host:99999"]]
)
def test_the_command_line_reports_a_bad_address_without_a_traceback(args: List[str]) -> None:
    """``python -m pymc stats HOST:PORT`` with a malformed address died with a Python
    traceback (ValueError) instead of the one-line error and exit status 2 it gives for a
    server that cannot be reached."""
    proc = subprocess.run(
        [sys.executable, "-m", "pymc", "--timeout", "1", *args],
        capture_output=True,
        text=True,
        timeout=50,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: "), proc.stderr


# ---------------------------------------------------------------------- Django


@pytest.mark.timeout(30)
def test_elasticache_backend_takes_django_elastipymemcache_1x_cluster_timeout(
    memcached: MemcachedProcess,
) -> None:
    """django-elastipymemcache 1.x/2.x documented ``cluster_timeout`` (seconds for the
    cluster query) beside ``ignore_exc`` and ``ignore_cluster_errors``; the README here
    maps ``ignore_cluster_errors`` from those versions, but a site switching with their
    settings block failed at its first request: ``TypeError: unexpected keyword argument
    'cluster_timeout'``. It is discovery_timeout's old name."""
    from django.core.cache.backends.base import InvalidCacheBackendError

    from pymc.contrib.django import ElastiCacheCache, close_clients

    host, port = tcp(memcached)
    options = {"cluster_timeout": 1, "ignore_exc": True, "ignore_cluster_errors": True}
    backend = ElastiCacheCache(f"{host}:{port}", {"OPTIONS": options})
    try:
        # A plain memcached has no cluster configuration: it is the one node.
        assert backend.set("cluster-timeout", "v") is None
        assert backend.get("cluster-timeout") == "v"
        backend.delete("cluster-timeout")
        both = {"cluster_timeout": 1, "discovery_timeout": 1}
        with pytest.raises(InvalidCacheBackendError, match="not both"):
            ElastiCacheCache(f"{host}:{port}", {"OPTIONS": both})
    finally:
        close_clients()
