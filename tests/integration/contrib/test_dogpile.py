# dogpile's test suites are untyped (Any): subclassing them is the point of this module.
# mypy: disallow-subclassing-any=False
"""pymc.contrib.dogpile: dogpile.cache's own backend tests, and the distributed lock's proofs.

dogpile.cache's memcached test module is not in its wheel: ``sdist_tree("dogpile.cache")``
downloads the sdist of the pinned version (1.5.0) and we import
``tests/cache/test_memcached_backend.py`` from it. Its generic suites (from
``dogpile.testing.fixtures``) run here against the ``pymc`` backend, once for each of its
``PyMemcache*`` configurations, on this suite's memcached processes, never 127.0.0.1:11211.

Not run, with the reason:

* ``PyMemcacheArgsTest`` (6 tests): they replace the ``pymemcache`` module inside
  ``dogpile.cache.backends.memcached`` with mocks and assert the exact calls made to
  pymemcache's ``HashClient``/``RetryingClient`` constructors: pymemcache internals, not
  the cache's behaviour. The same options are checked on pymc's clients by
  ``test_options_reach_the_hash_client`` and its neighbours below.
* ``LocalThreadTest`` (3 tests): they count the per-thread clients (``threading.local``) of
  dogpile's ``GenericMemcachedBackend`` with a mock client. The pymc backend has no
  per-thread client: one pooled, thread-safe HashClient serves every thread
  (``test_threads_share_one_bounded_pool`` covers it).
* ``MemcachedBackendTest``, ``PylibmcArgsTest``, ``MemcachedArgstest`` and the ``Pylibmc*``,
  ``BMemcached*`` and ``Memcached*`` suites: other drivers' backends (python-memcached,
  pylibmc, python-binary-memcached), not the pymemcache backend this one replaces.
"""

from __future__ import annotations

import importlib.util
import linecache
import os
import subprocess
import sys
import threading
import time
from functools import partial
from types import FrameType
from typing import Any, Callable, ClassVar, Dict, List, Optional

import dogpile.cache
import pytest
from dogpile.cache import make_region
from dogpile.cache.api import NO_VALUE
from support import gevent_runner
from support.helpers import Interrupt, stat, tcp, wait_until
from support.sdist import sdist_tree
from support.servers import MemcachedProcess

import pymc
import pymc.client
import pymc.cluster
import pymc.contrib.dogpile
import pymc.meta
import pymc.pool
import pymc.protocol
import pymc.serde
from pymc.contrib.dogpile import (
    LOCK_PREFIX,
    LOCK_TOKEN_PREFIX,
    PROVISIONAL_TTL,
    PymcBackend,
    PymcLock,
)


def _load_dogpile_tests() -> Any:
    """dogpile.cache 1.5.0's ``tests/cache/test_memcached_backend.py``, from its sdist."""
    root = sdist_tree("dogpile.cache")
    path = root / "tests" / "cache" / "test_memcached_backend.py"
    spec = importlib.util.spec_from_file_location("dogpile_sdist_test_memcached_backend", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import {path}")
    module: Any = importlib.util.module_from_spec(spec)
    here = os.getcwd()
    os.chdir(root)  # it opens "tests/tls/ca-root.crt" (relative) at import
    try:
        spec.loader.exec_module(module)
    finally:
        os.chdir(here)
    # A suite whose server does not answer fails; it never skips.
    module.expect_memcached_running = True
    module.expect_tls_memcached_running = True
    return module


upstream: Any = _load_dogpile_tests()


class _OnOurServers:
    """Runs one of dogpile's suites with ``backend = "pymc"`` against our servers: the
    upstream ``setup_class`` (which needs the address) is replaced by ``_bind``."""

    backend = "pymc"
    #: ours, on top of the upstream suite's arguments
    pymc_arguments: ClassVar[Dict[str, Any]] = {}
    # The upstream suite's (declared only, so they do not hide the suite's own):
    config_args: ClassVar[Dict[str, Any]]
    _check_backend_available: ClassVar[Callable[[Any], None]]
    tls = False
    setup_class = None

    @pytest.fixture(autouse=True, scope="class")
    @classmethod
    def _bind(
        cls,
        memcached_server: MemcachedProcess,
        memcached_tls: MemcachedProcess,
    ) -> None:
        arguments = dict(cls.config_args.get("arguments", {}))
        if cls.tls:
            arguments["url"] = f"localhost:{memcached_tls.port}"
            arguments["tls_context"] = memcached_tls.client_ssl_context()
        else:
            arguments["url"] = memcached_server.server
        arguments.update(cls.pymc_arguments)
        arguments.setdefault("timeout", 5.0)
        arguments.setdefault("connect_timeout", 5.0)
        cls.config_args = {**cls.config_args, "arguments": arguments}
        if "distributed_lock" in arguments:
            assert isinstance(PymcBackend(arguments).get_mutex("k"), PymcLock)
        # What dogpile's setup_class does: load the backend by name, check it works.
        region = make_region().configure(cls.backend, arguments=arguments)
        assert type(region.backend) is PymcBackend
        cls._check_backend_available(region.backend)

    @pytest.fixture(autouse=True)
    def _fresh(self, memcached: MemcachedProcess) -> None:
        """Each test starts on a running, empty server."""


# One class per PyMemcache* class of dogpile's test_memcached_backend.py.


class TestPymc(_OnOurServers, upstream._NonDistributedMemcachedTestSuite):
    pass


class TestPymcDistributedWithTimeout(
    _OnOurServers, upstream._DistributedMemcachedWithTimeoutTestSuite
):
    pass


class TestPymcTLS(_OnOurServers, upstream._NonDistributedTLSMemcachedTestSuite):
    tls = True


class TestPymcDistributed(_OnOurServers, upstream._DistributedMemcachedTestSuite):
    pass


class TestPymcDistributedMutex(_OnOurServers, upstream._DistributedMemcachedMutexTestSuite):
    pass


class TestPymcDistributedMutexWithTimeout(
    _OnOurServers, upstream._DistributedMemcachedMutexWithTimeoutTestSuite
):
    pass


class TestPymcSerializer(
    _OnOurServers,
    upstream._GenericSerializerTestSuite,
    upstream._NonDistributedMemcachedTestSuite,
):
    pass


class TestPymcRetry(_OnOurServers, upstream._NonDistributedMemcachedTestSuite):
    config_args = upstream.PyMemcacheRetryTest.config_args


# dogpile's mutex suites again, with the add/delete lock that servers without meta commands get.


class TestPymcAddLockMutex(_OnOurServers, upstream._DistributedMemcachedMutexTestSuite):
    pymc_arguments: ClassVar[Dict[str, Any]] = {"meta_lock": False}


class TestPymcAddLockMutexWithTimeout(
    _OnOurServers, upstream._DistributedMemcachedMutexWithTimeoutTestSuite
):
    pymc_arguments: ClassVar[Dict[str, Any]] = {"meta_lock": False}


# --------------------------------------------------------------------------- registration


def test_entry_point_finds_the_backend(memcached: MemcachedProcess) -> None:
    """A fresh interpreter that never imports pymc finds "pymc" through the entry point."""
    script = (
        "import sys\n"
        "from dogpile.cache import make_region\n"
        "region = make_region().configure('pymc', arguments={'url': sys.argv[1]})\n"
        "assert 'pymc.contrib.dogpile' in sys.modules\n"
        "region.set('ep', {'a': 1})\n"
        "print(type(region.backend).__module__, region.get('ep'))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, memcached.server],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["pymc.contrib.dogpile", "{'a':", "1}"]


def test_register_backend_by_hand(memcached: MemcachedProcess) -> None:
    # (dogpile's register_backend has no annotations)
    dogpile.cache.register_backend(  # type: ignore[no-untyped-call]
        "pymc.by_hand", "pymc.contrib.dogpile", "PymcBackend"
    )
    region = make_region().configure("pymc.by_hand", arguments={"url": memcached.server})
    assert type(region.backend) is PymcBackend
    region.set("k", [1, 2])
    assert region.get("k") == [1, 2]


# --------------------------------------------------------------------------- options


def _hash_client(backend: PymcBackend) -> pymc.HashClient:
    client = backend.client
    assert isinstance(client, pymc.HashClient)
    return client


def test_options_reach_the_hash_client(memcached: MemcachedProcess) -> None:
    keepalive = pymc.KeepaliveOpts(idle=3, intvl=2, cnt=4)
    backend = PymcBackend(
        {
            "url": memcached.server,
            "hashclient_retry_attempts": 4,
            "hashclient_retry_timeout": 5,
            "hashclient_dead_timeout": 6,
            "default_noreply": True,
            "socket_keepalive": keepalive,
            "max_pool_size": 3,
            "timeout": 2.5,
        }
    )
    client = _hash_client(backend)
    assert client.retry_attempts == 4
    assert client.retry_timeout == 5
    assert client.dead_timeout == 6
    assert client.use_pooling is True
    assert client.options.serde is pymc.serde.pickle_serde
    assert client.options.default_noreply is True
    assert client.options.socket_keepalive is keepalive
    assert client.options.timeout == 2.5
    assert client.options.tls_context is None


def test_retry_client_wraps_the_hash_client(memcached: MemcachedProcess) -> None:
    backend = PymcBackend(
        {
            "url": memcached.server,
            "enable_retry_client": True,
            "retry_attempts": 3,
            "retry_delay": 0.01,
            "retry_for": [pymc.MemcacheUnexpectedCloseError],
        }
    )
    client = backend.client
    assert isinstance(client, pymc.RetryingClient)
    assert client.policy.attempts == 3
    backend.set("k", b"v")
    assert backend.get("k") == b"v"


@pytest.mark.timeout(20)
def test_memcached_expire_time_expires_values(memcached: MemcachedProcess) -> None:
    backend = PymcBackend({"url": memcached.server, "memcached_expire_time": 1})
    backend.set("one", b"1")
    backend.set_multi({"two": b"2"})
    assert backend.get_multi(["one", "two"]) == [b"1", b"2"]
    deadline = time.monotonic() + 5
    while backend.get_multi(["one", "two"]) != [NO_VALUE, NO_VALUE]:
        assert time.monotonic() < deadline, "memcached_expire_time=1 did not expire them"
        time.sleep(0.2)


def test_falsy_values_are_values(memcached: MemcachedProcess) -> None:
    """A stored None, b"" or 0 is a hit, not NO_VALUE (pymemcache's backend maps None to
    NO_VALUE)."""
    backend = PymcBackend({"url": memcached.server})
    backend.set_multi({"none": None, "empty": b"", "zero": 0})  # type: ignore[dict-item]
    assert backend.get("none") is None
    assert backend.get_multi(["empty", "zero", "absent"]) == [b"", 0, NO_VALUE]


# --------------------------------------------------------------------------- threads, pool


@pytest.mark.timeout(30)
def test_threads_share_one_bounded_pool(memcached: MemcachedProcess) -> None:
    """16 threads on one region: each reads back only its own values, and the server never
    sees more than max_pool_size connections from the backend."""
    region = make_region().configure(
        "pymc", arguments={"url": memcached.server, "max_pool_size": 4, "pool_timeout": 10}
    )
    before = stat(memcached, "curr_connections")
    errors: List[BaseException] = []
    peak = [0]

    def worker(n: int) -> None:
        try:
            for i in range(50):
                region.set(f"t{n}", (n, i))
                got = region.get(f"t{n}")
                assert got == (n, i), f"thread {n} read {got!r}"
                both = region.get_multi([f"t{n}", "nope"])  # type: ignore[no-untyped-call]
                assert both == [(n, i), NO_VALUE]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak[0] = max(peak[0], stat(memcached, "curr_connections") - before)
        time.sleep(0.01)
    for t in threads:
        t.join(10)
    assert not errors, errors[0]
    assert peak[0] <= 4
    region.backend.close()
    wait_until(
        lambda: stat(memcached, "curr_connections") <= before,
        what="close() to close the pooled connections",
    )
    region.set("after-close", 1)  # still usable
    assert region.get("after-close") == 1


# --------------------------------------------------------------------------- the lock

LOCK_KINDS = [pytest.param(None, id="meta"), pytest.param(False, id="text")]


def _backend(server: MemcachedProcess, meta_lock: Optional[bool], **more: Any) -> PymcBackend:
    """A backend as another process would have it: its own client and pool."""
    arguments: Dict[str, Any] = {
        "url": server.server,
        "distributed_lock": True,
        "meta_lock": meta_lock,
        "timeout": 5.0,
    }
    arguments.update(more)
    return PymcBackend(arguments)


def _lock(backend: PymcBackend, key: str) -> PymcLock:
    mutex = backend.get_mutex(key)
    assert isinstance(mutex, PymcLock)
    return mutex


@pytest.mark.timeout(40)
@pytest.mark.parametrize("meta_lock", LOCK_KINDS)
def test_lock_is_mutually_exclusive_across_clients(
    memcached: MemcachedProcess, meta_lock: Optional[bool]
) -> None:
    """8 threads, each with its own backend (as 8 processes would be), take one key's lock
    20 times each: two holders never overlap, and every round gets the lock."""
    inside = threading.Lock()
    overlaps: List[int] = []
    rounds: List[int] = []
    errors: List[BaseException] = []

    def worker(n: int) -> None:
        mutex = _lock(_backend(memcached, meta_lock), "shared")
        try:
            for _ in range(20):
                assert mutex.acquire()
                if not inside.acquire(blocking=False):
                    overlaps.append(n)
                else:
                    time.sleep(0.001)
                    inside.release()
                rounds.append(n)
                mutex.release()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(35)
    assert not any(t.is_alive() for t in threads), "a lock waiter hung"
    assert not errors, errors[0]
    assert overlaps == []
    assert len(rounds) == 160


@pytest.mark.timeout(60)
@pytest.mark.parametrize("meta_lock", LOCK_KINDS)
def test_one_lock_object_shared_by_threads(
    memcached: MemcachedProcess, meta_lock: Optional[bool]
) -> None:
    """dogpile's region hands every caller of a key the same mutex object (its NameRegistry),
    so one PymcLock is acquired and released by many threads in turn: they exclude each
    other, and a release never forgets the hold of the thread that took the lock next (which
    would leave a lock nobody releases, and every later caller waiting forever)."""
    mutex = _lock(_backend(memcached, meta_lock), "shared")
    inside = threading.Lock()
    overlaps: List[int] = []
    rounds: List[int] = []
    errors: List[BaseException] = []

    def worker(n: int) -> None:
        try:
            for _ in range(15):
                assert mutex.acquire()
                if not inside.acquire(blocking=False):
                    overlaps.append(n)
                else:
                    inside.release()
                rounds.append(n)
                mutex.release()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads), (
        f"waiters hung after {len(rounds)} rounds: the lock was left taken"
    )
    assert not errors, errors[0]
    assert overlaps == []
    assert len(rounds) == 90
    assert not mutex.locked()


class _SlowDeletes:
    """A real client whose deletes take 0.2 s longer to come back (a slow reply, or the
    releasing thread descheduled right after the server deleted the lock)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        done = self.client.delete(*args, **kwargs)
        time.sleep(0.2)
        return done

    def meta_delete(self, *args: Any, **kwargs: Any) -> Any:
        done = self.client.meta_delete(*args, **kwargs)
        time.sleep(0.2)
        return done

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


class _SlowDeletesBackend(PymcBackend):
    def _create_client(self) -> Any:
        return _SlowDeletes(super()._create_client())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("meta_lock", LOCK_KINDS)
def test_a_slow_release_does_not_forget_the_next_holders_hold(
    memcached: MemcachedProcess, meta_lock: Optional[bool]
) -> None:
    """On one shared lock object: A releases, the server deletes the lock, and while A's
    reply is still on its way B takes the lock. A must not then clear B's hold, or B's release
    deletes nothing and the lock stays taken (forever with lock_timeout=0)."""
    backend = _SlowDeletesBackend(
        {"url": memcached.server, "distributed_lock": True, "meta_lock": meta_lock}
    )
    mutex = _lock(backend, "k")
    assert mutex.acquire(wait=False)
    b_holds = threading.Event()

    def b() -> None:
        assert mutex.acquire()
        b_holds.set()
        time.sleep(0.4)  # holds it past the end of A's release
        mutex.release()

    thread_b = threading.Thread(target=b, daemon=True)
    thread_b.start()
    time.sleep(0.05)  # B is waiting for the lock
    mutex.release()  # A
    assert b_holds.is_set(), "B did not get the lock while A's release came back"
    thread_b.join(5)
    assert not thread_b.is_alive()
    other = _lock(_backend(memcached, meta_lock), "k")
    assert other.acquire(wait=False), "B's release left the lock taken"
    other.release()


@pytest.mark.parametrize("meta_lock", LOCK_KINDS)
def test_release_frees_the_lock(memcached: MemcachedProcess, meta_lock: Optional[bool]) -> None:
    one = _lock(_backend(memcached, meta_lock), "k")
    two = _lock(_backend(memcached, meta_lock), "k")
    assert not one.locked()
    assert one.acquire(wait=False)
    assert one.locked() and two.locked()
    assert not two.acquire(wait=False)
    assert not one.acquire(wait=False)  # not reentrant, as dogpile's
    one.release()
    assert not two.locked()
    assert two.acquire(wait=False)
    one.release()  # one no longer holds it: two's lock stays
    assert two.locked()
    two.release()
    assert not one.locked()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("meta_lock", LOCK_KINDS)
def test_crashed_holders_lock_expires(
    memcached: MemcachedProcess, meta_lock: Optional[bool]
) -> None:
    """A holder that never releases (it crashed) blocks others for lock_timeout seconds (to
    lock_timeout + 1: memcached's clock ticks once a second), then the lock is free; a
    waiting acquire() gets it then."""
    crashed = _lock(_backend(memcached, meta_lock, lock_timeout=1), "k")
    assert crashed.acquire(wait=False)
    start = time.monotonic()
    other = _lock(_backend(memcached, meta_lock, lock_timeout=1), "k")
    assert not other.acquire(wait=False)
    got: List[float] = []
    waiter = threading.Thread(target=lambda: got.append(float(other.acquire())), daemon=True)
    waiter.start()
    waiter.join(6)
    assert got == [1.0], "the waiting acquire() did not get the expired lock"
    # memcached's clock ticks once a second, so a 1 s item lasts from just over 0 s (set just
    # before a tick; 0.39 s was seen) to 2 s: that it was held at all is the failed
    # acquire(wait=False) above.
    assert time.monotonic() - start < 6
    other.release()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("meta_lock", LOCK_KINDS)
def test_lock_lasts_at_least_lock_timeout(
    memcached: MemcachedProcess, meta_lock: Optional[bool]
) -> None:
    """memcached counts a ttl of N from its clock's last one-second tick, so N alone would
    last between N - 1 and N seconds (a 1-second lock, sometimes a millisecond, and two
    holders overlap). Twice: a lock_timeout=1 lock still excludes others 0.95 s later."""
    for _ in range(2):
        holder = _lock(_backend(memcached, meta_lock, lock_timeout=1), "k")
        other = _lock(_backend(memcached, meta_lock), "k")
        assert holder.acquire(wait=False)
        held_from = time.monotonic()
        while time.monotonic() - held_from < 0.95:
            assert not other.acquire(wait=False), (
                f"the lock expired {time.monotonic() - held_from:.3f} s after it was taken"
            )
            time.sleep(0.02)
        holder.release()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("meta_lock", LOCK_KINDS)
def test_a_store_whose_reply_never_came_leaves_a_lock_that_expires(
    memcached: MemcachedProcess,
    fault_proxy: Callable[[Any], Any],
    meta_lock: Optional[bool],
) -> None:
    """The server stored the lock, but its reply never came (the client timed out) and the
    clean-up could not reach the server either (the node rests after a failure). With
    lock_timeout=0 (no expiry) that lock would stay forever, and every later caller would
    wait for it; it is stored for PROVISIONAL_TTL seconds until its owner knows it holds it."""
    proxy = fault_proxy(tcp(memcached))
    backend = _backend(memcached, meta_lock, url=proxy.server, timeout=0.5)
    warm = _lock(backend, "warm")  # (a meta lock's connection checks once that the server
    assert warm.acquire(wait=False)  # knows meta commands before its first ms: done here)
    warm.release()
    proxy.set_mode("stall")
    with pytest.raises(pymc.MemcacheError):
        _lock(backend, "k").acquire(wait=False)
    found = pymc.Client(tcp(memcached), timeout=2).meta_get("_lockk", return_ttl=True)
    assert found.hit, "the stalled store never reached the server"
    assert found.ttl is not None and 0 < found.ttl <= PROVISIONAL_TTL, found


@pytest.mark.parametrize("lock_timeout", [0, 10])
@pytest.mark.parametrize("meta_lock", LOCK_KINDS)
def test_a_held_lock_lasts_the_full_lock_timeout(
    memcached: MemcachedProcess, meta_lock: Optional[bool], lock_timeout: int
) -> None:
    mutex = _lock(_backend(memcached, meta_lock, lock_timeout=lock_timeout), "k")
    assert mutex.acquire(wait=False)
    found = pymc.Client(tcp(memcached), timeout=2).meta_get("_lockk", return_ttl=True)
    if lock_timeout:
        assert found.ttl is not None and lock_timeout <= found.ttl <= lock_timeout + 1, found
    else:
        assert found.ttl == -1, found  # never expires
    mutex.release()
    assert not mutex.locked()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("meta_lock", LOCK_KINDS)
def test_expired_holder_does_not_release_the_next_holders_lock(
    memcached: MemcachedProcess, meta_lock: Optional[bool]
) -> None:
    """A holder whose lock expired and was taken by another caller deletes nothing when it
    finally releases (dogpile's add/delete lock deletes the other caller's lock)."""
    late = _lock(_backend(memcached, meta_lock, lock_timeout=1), "k")
    assert late.acquire(wait=False)
    now = _lock(_backend(memcached, meta_lock, lock_timeout=30), "k")
    deadline = time.monotonic() + 6
    while not now.acquire(wait=False):
        assert time.monotonic() < deadline, "the expired lock was never freed"
        time.sleep(0.1)
    late.release()
    third = _lock(_backend(memcached, meta_lock), "k")
    assert third.locked()
    assert not third.acquire(wait=False)
    now.release()
    assert third.acquire(wait=False)
    third.release()


@pytest.mark.parametrize("first", [None, False], ids=["meta-first", "text-first"])
def test_meta_and_text_locks_exclude_each_other(
    memcached: MemcachedProcess, first: Optional[bool]
) -> None:
    """Processes with either kind of lock share a cache safely."""
    holder = _lock(_backend(memcached, first), "k")
    other = _lock(_backend(memcached, not first), "k")
    assert holder.acquire(wait=False)
    assert other.locked()
    assert not other.acquire(wait=False)
    holder.release()
    assert other.acquire(wait=False)
    assert not holder.acquire(wait=False)
    other.release()


def test_add_lock_is_exclusive_with_default_noreply(memcached: MemcachedProcess) -> None:
    """default_noreply=True makes a plain add() answer True whatever the server did; the
    lock asks for the reply, so the second caller does not get it."""
    one = _lock(_backend(memcached, False, default_noreply=True), "k")
    two = _lock(_backend(memcached, False, default_noreply=True), "k")
    assert one.acquire(wait=False)
    assert not two.acquire(wait=False)
    one.release()
    assert two.acquire(wait=False)
    two.release()


class _NoMeta:
    """A real client to a real server, as an old server (no meta commands) would answer."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.meta_calls = 0

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        self.meta_calls += 1
        raise pymc.MemcacheUnknownCommandError("ERROR")

    meta_get = meta_set = meta_delete = _refuse

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


class _NoMetaBackend(PymcBackend):
    def _create_client(self) -> Any:
        return _NoMeta(super()._create_client())


def test_server_without_meta_commands_gets_the_add_lock(memcached: MemcachedProcess) -> None:
    backend = _NoMetaBackend({"url": memcached.server, "distributed_lock": True})
    one, two = _lock(backend, "k"), _lock(backend, "k")
    assert one.acquire(wait=False)
    assert backend.meta_lock is False  # detected once, then never asked again
    assert not two.acquire(wait=False)
    assert two.locked()
    assert backend.client.meta_calls == 1
    one.release()
    assert not two.locked()
    # and it excludes a holder on a server that has meta commands
    assert one.acquire(wait=False)
    assert not _lock(_backend(memcached, None), "k").acquire(wait=False)
    one.release()


def test_meta_lock_true_raises_on_a_server_without_meta(memcached: MemcachedProcess) -> None:
    backend = _NoMetaBackend({"url": memcached.server, "distributed_lock": True, "meta_lock": True})
    with pytest.raises(pymc.MemcacheUnknownCommandError):
        _lock(backend, "k").acquire(wait=False)


@pytest.mark.timeout(30)
def test_region_get_or_create_runs_creator_once_across_backends(
    memcached: MemcachedProcess,
) -> None:
    """Four regions (four 'processes') ask for one missing key at once: with the distributed
    lock the creator runs once and every caller gets its value."""
    calls: List[int] = []
    results: List[Any] = []
    barrier = threading.Barrier(4, timeout=10)

    def creator() -> str:
        calls.append(1)
        time.sleep(0.3)
        return "made"

    def worker() -> None:
        region = make_region().configure(
            "pymc",
            arguments={"url": memcached.server, "distributed_lock": True, "lock_timeout": 10},
        )
        barrier.wait()
        results.append(region.get_or_create("herd", creator))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == ["made"] * 4
    assert len(calls) == 1


# --------------------------------------------------------------------------- interruptions

TRACED = {
    m.__file__
    for m in (pymc.client, pymc.cluster, pymc.pool, pymc.protocol, pymc.meta, pymc.contrib.dogpile)
}


def _run_interrupted(call: Callable[[], Any], at: int, where: List[str]) -> bool:
    """Run ``call``, raising Interrupt (a BaseException, as gevent.Timeout) at the ``at``-th
    line it executes in pymc; True if it fired."""
    seen = [0]
    fired = [False]

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        # (CPython reports a line event on a bare "try:", where no real interruption lands)
        if event == "line" and not fired[0]:
            line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
            if line != "try:":
                seen[0] += 1
                if seen[0] == at:
                    fired[0] = True
                    where[:] = [f"line {frame.f_lineno} of {frame.f_code.co_filename}: {line}"]
                    raise Interrupt(where[0])
        return local

    def global_(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename in TRACED and not fired[0] else None

    sys.settrace(global_)
    try:
        call()
    except Interrupt:
        pass
    finally:
        sys.settrace(None)
    return fired[0]


def _assert_a_late_store_expires(checker: PymcBackend, where: List[str]) -> None:
    """The lock is taken after an interrupted acquire: only the documented race may do that.
    The store was sent, its connection closed unread, and the clean-up (on another
    connection, so maybe another server thread) ran before the server read the store. Such
    a lock must hold a lock token and expire within PROVISIONAL_TTL, never stay for
    lock_timeout (0 here: forever). Deleted here so the next step starts free."""
    client = _hash_client(checker)
    key = LOCK_PREFIX + "k"
    found = client.meta_get(key, return_ttl=True, no_bump=True)
    assert found.hit, f"the lock was taken, then gone, after an interrupt at {where}"
    assert str(found.value).startswith(LOCK_TOKEN_PREFIX), (where, found)
    assert found.ttl is not None and 0 <= found.ttl <= PROVISIONAL_TTL, (
        f"the lock stayed taken for good after an interrupt at {where}: {found}"
    )
    client.delete(key, noreply=False)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("step", ["acquire", "release"])
@pytest.mark.parametrize("meta_lock", LOCK_KINDS)
def test_an_interrupt_anywhere_in_the_lock_leaves_it_free(
    memcached: MemcachedProcess, meta_lock: Optional[bool], step: str
) -> None:
    """A BaseException (gevent.Timeout, KeyboardInterrupt) at any line of acquire() or
    release() leaves no lock that nobody holds (even with lock_timeout=0, where it would stay
    forever) and no pool slot taken."""
    backend = _backend(memcached, meta_lock, max_pool_size=1, pool_timeout=2)
    checker = _backend(memcached, meta_lock)
    where: List[str] = []
    for at in range(1, 5000):
        mutex = _lock(backend, "k")
        if step == "release":
            assert mutex.acquire(wait=False)
            fired = _run_interrupted(mutex.release, at, where)
        else:
            fired = _run_interrupted(partial(mutex.acquire, wait=False), at, where)
            if not fired:
                mutex.release()
        other = _lock(checker, "k")
        if other.acquire(wait=False):
            other.release()
        else:
            _assert_a_late_store_expires(checker, where)
        pools = _hash_client(backend).clients.values()
        assert [p.client_pool.stats()["in_use"] for p in pools] == [0], where
        if not fired:
            return
    raise AssertionError("the scenario never ran to its end")


# --------------------------------------------------------------------------- gevent


@pytest.mark.timeout(120)
def test_gevent_herd_with_random_timeouts_leaves_no_lock_and_no_slot(
    memcached: MemcachedProcess,
) -> None:
    """tests/integration/contrib/contrib_dogpile_gevent_scenarios.py's "herd", in a patched process.
    (Before the lock's fixes for shared lock objects and stores whose reply never came, 3 to 5 runs
    in 15 left a lock nobody held, and greenlets waiting for it forever.)"""
    out = gevent_runner.run_scenario(
        "integration/contrib/contrib_dogpile_gevent_scenarios.py",
        "herd",
        {"server": memcached.server, "greenlets": 500, "join": 30},
    )
    assert "scenario herd passed" in out
