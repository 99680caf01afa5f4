"""ObjectPool and PooledClient against real memcached processes.

Everything a user would see is checked on a real server: values read back, how many
connections the server saw (its ``total_connections`` / ``curr_connections`` stats), what the
pool reports, and how long a caller waited.
"""

from __future__ import annotations

import inspect
import os
import signal
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import pymemcache.client.base
import pytest
from support.faultproxy import FaultProxy
from support.helpers import Interrupt, current_sock, stat, tcp, wait_until
from support.servers import MemcachedProcess, request

import pymc
import pymc.pool
import pymc.pool.objectpool
from pymc import (
    Client,
    KeepaliveOpts,
    MemcacheError,
    MemcacheNetworkError,
    MemcachePoolTimeoutError,
    ObjectPool,
    PooledClient,
)

ProxyFactory = Callable[[Tuple[str, int]], FaultProxy]
ServerFactory = Callable[..., MemcachedProcess]

pytestmark = pytest.mark.timeout(30)


# -- helpers ------------------------------------------------------------------------------------


def settled_stat(server: MemcachedProcess, name: str) -> int:
    """A stat read until it holds still (connections closed just before may still count)."""
    last = stat(server, name)
    for _ in range(100):
        time.sleep(0.01)
        now = stat(server, name)
        if now == last:
            return now
        last = now
    raise AssertionError(f"{name} does not settle")


def total_connections(server: MemcachedProcess) -> int:
    """The server's ``total_connections``, once the count has caught up: memcached counts a
    new connection on a worker thread, so a reading just after start can lag. Settled, each
    reading adds exactly its own connection."""
    last = stat(server, "total_connections")
    for _ in range(100):
        now = stat(server, "total_connections")
        if now == last + 1:
            return now
        last = now
        time.sleep(0.01)
    raise AssertionError("total_connections does not settle")


def raw_set(server: MemcachedProcess, key: bytes, value: bytes) -> None:
    with server.connect() as sock:
        reply = request(sock, b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value), b"\r\n")
    assert reply == b"STORED\r\n"


def raw_get(server: MemcachedProcess, key: bytes) -> Optional[bytes]:
    with server.connect() as sock:
        reply = request(sock, b"get %s\r\n" % key, b"END\r\n")
    if reply == b"END\r\n":
        return None
    header, _, rest = reply.partition(b"\r\n")
    size = int(header.split()[3])
    return rest[:size]


class FaultySockets:
    """A ``socket_module``: the real socket module, except that its sockets count connects
    and raise :class:`Interrupt` from ``recv`` when armed (on the ``n``-th recv from then)."""

    def __init__(self) -> None:
        self.connects = 0
        self.recv_countdown = 0  # 0: disarmed; n: the n-th recv from now raises
        self.interrupts = 0
        outer = self

        class Sock(socket.socket):
            def connect(self, address: Any) -> None:
                outer.connects += 1
                super().connect(address)

            def recv(self, bufsize: int, *flags: int) -> bytes:
                if outer.recv_countdown:
                    outer.recv_countdown -= 1
                    if outer.recv_countdown == 0:
                        outer.interrupts += 1
                        raise Interrupt("interrupted mid-reply")
                return super().recv(bufsize, *flags)

        self.socket = Sock

    def arm(self, nth_recv: int = 1) -> None:
        self.recv_countdown = nth_recv

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)


def pool_stats(client: PooledClient) -> Dict[str, Any]:
    return client.client_pool.stats()


# -- concurrency --------------------------------------------------------------------------------


def test_64_threads_share_4_connections_and_read_their_own_values(
    new_memcached: ServerFactory,
) -> None:
    server = new_memcached()
    client = PooledClient(tcp(server), max_pool_size=4, pool_timeout=10, timeout=5)
    before = total_connections(server)  # counts the connection of this stats call
    threads_n, rounds = 64, 100
    errors: List[BaseException] = []
    wrong: List[str] = []
    done = [0]
    barrier = threading.Barrier(threads_n)

    def worker(tid: int) -> None:
        try:
            barrier.wait(5)
            for i in range(rounds):
                key, other = f"t{tid}:{i % 7}", f"t{tid}:other"
                value = f"{tid}-{i}-{os.urandom(4).hex()}".encode()
                assert client.set(key, value) is True
                assert client.set(other, value[::-1]) is True
                got = client.get(key)
                if got != value:
                    wrong.append(f"get {key}: {got!r} != {value!r}")
                many = client.get_many([key, other, f"t{tid}:missing"])
                if many != {key: value, other: value[::-1]}:
                    wrong.append(f"get_many {key}: {many!r}")
            done[0] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(threads_n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 25
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert not errors, errors[:3]
    assert not wrong, wrong[:5]
    assert done[0] == threads_n
    after = stat(server, "total_connections")
    # the pool opened at most 4 connections; the second stats call opened one more
    assert after - before <= 4 + 1
    s = pool_stats(client)
    assert s["created"] <= 4 and s["destroyed"] == 0
    assert s["in_use"] == 0 and s["waiting"] == 0 and s["idle"] == s["created"]


# -- exhaustion and hand-off --------------------------------------------------------------------


def test_exhausted_pool_times_out_after_pool_timeout(memcached: MemcachedProcess) -> None:
    client = PooledClient(tcp(memcached), max_pool_size=1, pool_timeout=0.3)
    assert client.set("k", b"v")
    held = client.client_pool.get()
    try:
        start = time.monotonic()
        with pytest.raises(MemcachePoolTimeoutError) as info:
            client.get("k")
        waited = time.monotonic() - start
        assert isinstance(info.value, MemcacheError)
        assert 0.25 <= waited < 3.0
        s = pool_stats(client)
        assert s["timeouts"] == 1 and s["in_use"] == 1 and s["waiting"] == 0
    finally:
        client.client_pool.release(held)
    assert client.get("k") == b"v"  # the released connection serves the next call
    assert pool_stats(client)["created"] == 1


def test_exhausted_pool_times_out_while_a_slow_reply_holds_the_connection(
    memcached: MemcachedProcess, fault_proxy: ProxyFactory
) -> None:
    proxy = fault_proxy(tcp(memcached))
    client = PooledClient(proxy.address, max_pool_size=1, pool_timeout=0.3, timeout=5)
    assert client.set("k", b"slow")
    proxy.set_mode("delay", seconds=0.8)
    results: List[Any] = []
    slow = threading.Thread(target=lambda: results.append(client.get("k")), daemon=True)
    slow.start()
    wait_until(lambda: pool_stats(client)["in_use"] == 1, what="the slow call to check out")
    start = time.monotonic()
    with pytest.raises(MemcachePoolTimeoutError):
        client.get("k")
    assert 0.25 <= time.monotonic() - start < 3.0
    slow.join(5)
    assert results == [b"slow"]
    proxy.set_mode("pass")
    assert client.get("k") == b"slow"


def test_released_connection_goes_to_a_waiter(memcached: MemcachedProcess) -> None:
    client = PooledClient(tcp(memcached), max_pool_size=1, pool_timeout=5)
    assert client.set("k", b"v")
    held = client.client_pool.get()
    finished: List[float] = []
    results: List[Any] = []

    def waiter() -> None:
        results.append(client.get("k"))
        finished.append(time.monotonic())

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    wait_until(lambda: pool_stats(client)["waiting"] == 1, what="the waiter to block")
    time.sleep(0.1)
    assert not finished, "the waiter did not wait"
    assert "waiting=1" in repr(client) and "in_use=1" in repr(client)
    released = time.monotonic()
    client.client_pool.release(held)
    t.join(4)
    assert results == [b"v"]
    assert finished[0] - released < 1.0  # well before its 5 s pool_timeout
    s = pool_stats(client)
    assert s["created"] == 1 and s["timeouts"] == 0 and s["waiting"] == 0 and s["in_use"] == 0


# -- BaseException mid-command ------------------------------------------------------------------


def test_interrupt_with_unread_reply_destroys_the_connection_and_frees_the_slot(
    memcached: MemcachedProcess,
) -> None:
    sockets = FaultySockets()
    client = PooledClient(
        tcp(memcached), max_pool_size=1, pool_timeout=0.5, timeout=5, socket_module=sockets
    )
    big = os.urandom(300_000)  # several recv()s: the interrupt leaves most of it unread
    assert client.set("big", big)
    assert client.set("small", b"right value")
    for i in range(50):
        before = pool_stats(client)
        sockets.arm(nth_recv=2 if i % 2 else 1)  # before any byte, or after the first chunk
        with pytest.raises(Interrupt):
            client.get("big")
        s = pool_stats(client)
        assert s["destroyed"] == before["destroyed"] + 1
        assert s["in_use"] == 0 and s["idle"] == 0
        # the next call (one slot only) works and is not fed the rest of "big"
        assert client.get("small") == b"right value"
    assert sockets.interrupts == 50
    s = pool_stats(client)
    assert s["created"] == 51 and s["destroyed"] == 50 and s["timeouts"] == 0
    assert s["in_use"] == 0 and s["idle"] == 1
    assert client.get("big") == big


def test_interrupt_raised_by_the_serde_destroys_the_connection(
    memcached: MemcachedProcess,
) -> None:
    class BoomSerde:
        def serialize(self, key: Any, value: Any) -> Tuple[bytes, int]:
            return value, 0

        def deserialize(self, key: Any, value: bytes, flags: int) -> Any:
            if value == b"boom":
                raise Interrupt()
            return value

    client = PooledClient(tcp(memcached), BoomSerde(), max_pool_size=1, pool_timeout=0.5)
    client.set("a", b"boom")
    client.set("b", b"fine")
    for _ in range(5):
        with pytest.raises(Interrupt):
            client.get("a")
        assert client.get("b") == b"fine"
    s = pool_stats(client)
    assert s["destroyed"] == 5 and s["in_use"] == 0 and s["created"] == 6


# -- reuse, reaping, lifetime -------------------------------------------------------------------


def test_pooled_client_reuses_one_warm_connection(new_memcached: ServerFactory) -> None:
    server = new_memcached()
    client = PooledClient(tcp(server), max_pool_size=4)
    before = total_connections(server)
    for i in range(50):
        client.set("k", str(i))
        assert client.get("k") == str(i).encode()
    assert stat(server, "total_connections") - before == 1 + 1  # ours + this stats call
    assert pool_stats(client)["created"] == 1


def test_idle_connections_are_reaped(new_memcached: ServerFactory) -> None:
    server = new_memcached()
    client = PooledClient(tcp(server), max_pool_size=4, pool_idle_timeout=0.25)
    base = settled_stat(server, "curr_connections")
    held = [client.client_pool.get() for _ in range(4)]
    for conn in held:
        assert conn.version()
    wait_until(lambda: stat(server, "curr_connections") == base + 4)
    for conn in held:
        client.client_pool.release(conn)
    # light load: LIFO keeps using the same connection; the other three idle out
    end = time.monotonic() + 0.5
    while time.monotonic() < end:
        assert client.get("nothing") is None
        time.sleep(0.02)
    s = pool_stats(client)
    assert s["created"] == 4 and s["destroyed"] == 3 and s["idle"] == 1
    wait_until(lambda: stat(server, "curr_connections") == base + 1, what="3 closed")
    time.sleep(0.35)
    assert client.client_pool.reap() == 1
    wait_until(lambda: stat(server, "curr_connections") == base, what="all closed")
    assert client.get("nothing") is None
    assert pool_stats(client)["created"] == 5


def test_max_lifetime_replaces_old_connections(new_memcached: ServerFactory) -> None:
    server = new_memcached()
    client = PooledClient(tcp(server), max_pool_size=2, max_lifetime=0.3)
    base = settled_stat(server, "curr_connections")
    client.set("k", b"v")
    first = client.client_pool.get()
    client.client_pool.release(first)
    assert client.get("k") == b"v"
    assert pool_stats(client)["created"] == 1  # young: reused
    time.sleep(0.35)
    assert client.get("k") == b"v"  # the old one is dropped at checkout
    s = pool_stats(client)
    assert s["created"] == 2 and s["destroyed"] == 1
    assert first.sock is None
    wait_until(lambda: stat(server, "curr_connections") == base + 1)
    # a connection that outlives max_lifetime while checked out is dropped when released
    conn = client.client_pool.get()
    time.sleep(0.35)
    client.client_pool.release(conn)
    s = pool_stats(client)
    assert s["destroyed"] == 2 and s["idle"] == 0 and conn.sock is None
    assert client.get("k") == b"v"


# -- servers going away -------------------------------------------------------------------------


def test_server_restart_between_calls(new_memcached: ServerFactory) -> None:
    server = new_memcached()
    client = PooledClient(tcp(server), max_pool_size=2)
    assert client.set("k", b"before")
    server.kill()
    server.start()  # same port, empty cache
    time.sleep(pymc.pool.CHECK_IDLE_AFTER * 2)
    assert client.get("k") is None  # no error: the dead connection was replaced
    assert client.set("k", b"after")
    assert client.get("k") == b"after"
    s = pool_stats(client)
    assert s["created"] == 2 and s["destroyed"] == 1


def test_incr_after_restart_succeeds_through_the_checkout_check(
    new_memcached: ServerFactory,
) -> None:
    server = new_memcached()
    client = PooledClient(tcp(server), max_pool_size=1)  # no retry policy at all
    assert client.set("n", b"1")
    server.kill()
    server.start()
    raw_set(server, b"n", b"41")
    time.sleep(pymc.pool.CHECK_IDLE_AFTER * 2)
    assert client.incr("n", 1) == 42
    assert raw_get(server, b"n") == b"42"  # incremented exactly once


def test_connection_closed_by_peer_is_discarded_at_checkout(
    memcached: MemcachedProcess, fault_proxy: ProxyFactory
) -> None:
    proxy = fault_proxy(tcp(memcached))
    client = PooledClient(proxy.address, max_pool_size=1)
    assert client.set("n", b"10")
    proxy.close_all()
    time.sleep(pymc.pool.CHECK_IDLE_AFTER * 2)
    assert client.incr("n", 5) == 15
    assert proxy.accepted == 2
    s = pool_stats(client)
    assert s["created"] == 2 and s["destroyed"] == 1
    assert client.get("n") == b"15"


def test_without_the_checkout_check_incr_would_fail(
    memcached: MemcachedProcess, fault_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control for the test above: it is the check that saves the call. Only ``get``
    (whose hot path looks at nothing before sending) relies on it alone: every other
    command looks for bytes or a close on its connection before sending (issue 18 item
    17), so an incr goes out on a new connection even without the pool's check."""
    monkeypatch.setattr(pymc.pool.objectpool, "CHECK_IDLE_AFTER", 1e9)
    proxy = fault_proxy(tcp(memcached))
    client = PooledClient(proxy.address, max_pool_size=1)
    assert client.set("n", b"10")
    proxy.close_all()
    time.sleep(0.1)
    with pytest.raises(MemcacheNetworkError):
        client.get("n")
    assert client.get("n") == b"10"
    proxy.close_all()
    time.sleep(0.1)
    assert client.incr("n", 5) == 15
    assert client.get("n") == b"15"


class CheckCountingClient(Client):
    """Counts the pool's reusable checks (``is_clean``) of its connections."""

    checks = 0

    def is_clean(self) -> bool:
        CheckCountingClient.checks += 1
        return super().is_clean()


def test_fast_checkout_takes_a_fresh_connection_unchecked_and_checks_an_idle_one(
    memcached: MemcachedProcess, fault_proxy: ProxyFactory
) -> None:
    """The checkout's fast path takes a connection given back less than CHECK_IDLE_AFTER
    ago without a look; one idle longer is checked, and one the server closed meanwhile is
    replaced (the value read is the server's, never an error)."""
    proxy = fault_proxy(tcp(memcached))
    client = PooledClient(proxy.address, max_pool_size=2)
    client.client_class = CheckCountingClient
    CheckCountingClient.checks = 0
    assert client.set("k", b"v")
    for _ in range(20):
        assert client.get("k") == b"v"
    assert CheckCountingClient.checks == 0
    time.sleep(pymc.pool.CHECK_IDLE_AFTER * 2)
    assert client.get("k") == b"v"
    assert CheckCountingClient.checks == 1
    proxy.close_all()
    time.sleep(pymc.pool.CHECK_IDLE_AFTER * 2)
    assert client.get("k") == b"v"
    s = pool_stats(client)
    assert CheckCountingClient.checks == 2 and s["created"] == 2 and s["destroyed"] == 1, s


def test_fast_checkout_serves_waiters_first_and_keeps_the_bound(
    memcached: MemcachedProcess,
) -> None:
    """Threads hammering a 2-connection pool: never more than 2 connections, every call
    reads its own value, nothing left checked out or waiting."""
    client = PooledClient(tcp(memcached), max_pool_size=2, pool_timeout=10)
    made: List[Client] = []

    class Made(Client):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    client.client_class = Made
    for i in range(8):
        assert client.set(f"t{i}", str(i))
    bad: List[Any] = []

    def worker(i: int) -> None:
        for _ in range(200):
            if client.get(f"t{i}") != str(i).encode():
                bad.append(i)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not bad
    s = pool_stats(client)
    assert len(made) <= 2 and s["created"] <= 2, s
    assert s["in_use"] == 0 and s["waiting"] == 0, s


# -- fork ---------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_gets_its_own_connections(memcached: MemcachedProcess) -> None:
    client = PooledClient(tcp(memcached), max_pool_size=2, timeout=5, pool_timeout=2)
    assert client.set("parent", b"p")
    conn = client.client_pool.get()
    client.client_pool.release(conn)
    assert conn.sock is not None
    parent_sockname = conn.sock.getsockname()

    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 10
        try:
            code = 11
            for i in range(20):
                client.set(f"child{i}", f"c{i}")
            if client.get_many([f"child{i}" for i in range(20)]) != {
                f"child{i}": f"c{i}".encode() for i in range(20)
            }:
                os._exit(12)
            if client.get("parent") != b"p":
                os._exit(13)
            mine = client.client_pool.get()
            client.client_pool.release(mine)
            if mine is conn or mine.sock is None or mine.sock.getsockname() == parent_sockname:
                os._exit(14)
            if client.client_pool.stats()["created"] != 1:
                os._exit(15)
            code = 0
        finally:
            os._exit(code)

    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the child did not finish in 10 s")
    assert status is not None and os.WIFEXITED(status)
    assert os.WEXITSTATUS(status) == 0, f"child failed with code {os.WEXITSTATUS(status)}"

    # the parent: its idle connection was left alone and is reused
    assert client.get("parent") == b"p"
    assert client.get("child19") == b"c19"
    for i in range(10):
        client.set("p2", str(i))
        assert client.get("p2") == str(i).encode()
    s = pool_stats(client)
    assert s["created"] == 1 and s["destroyed"] == 0
    again = client.client_pool.get()
    client.client_pool.release(again)
    assert again is conn and again.sock is not None
    assert again.sock.getsockname() == parent_sockname


# -- introspection ------------------------------------------------------------------------------


def test_pooled_client_repr(memcached: MemcachedProcess) -> None:
    client = PooledClient(tcp(memcached), max_pool_size=3)
    client.get("x")
    text = repr(client)
    assert f"127.0.0.1:{memcached.port}" in text
    assert "in_use=0" in text and "idle=1" in text and "waiting=0" in text
    held = client.client_pool.get()
    assert "in_use=1" in repr(client) and "idle=0" in repr(client)
    client.client_pool.release(held)


# -- locks --------------------------------------------------------------------------------------


@pytest.mark.parametrize("lock_generator", [threading.Lock, threading.RLock])
def test_lock_generator(memcached: MemcachedProcess, lock_generator: Any) -> None:
    client = PooledClient(
        tcp(memcached), max_pool_size=2, pool_timeout=5, lock_generator=lock_generator
    )
    errors: List[BaseException] = []

    def worker(tid: int) -> None:
        try:
            for i in range(50):
                client.set(f"lg{tid}", str(i))
                assert client.get(f"lg{tid}") == str(i).encode()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors, errors[:3]
    assert pool_stats(client)["created"] <= 2
    # the waiting path (Condition.wait on the generated lock) and a timeout
    held = [client.client_pool.get(), client.client_pool.get()]
    with pytest.raises(MemcachePoolTimeoutError):
        client.client_pool.get(timeout=0.1)
    for conn in held:
        client.client_pool.release(conn)
    assert client.get("lg0") == b"49"


# -- pymemcache compatibility -------------------------------------------------------------------


def test_every_pymemcache_pooled_client_parameter_is_accepted(
    memcached: MemcachedProcess,
) -> None:
    def serializer(key: Any, value: Any) -> Tuple[bytes, int]:
        return (value if isinstance(value, bytes) else str(value).encode()), 7

    def deserializer(key: Any, value: bytes, flags: int) -> Any:
        return (value, flags)

    values: Dict[str, Any] = {
        "serde": None,
        "serializer": serializer,
        "deserializer": deserializer,
        "connect_timeout": 2.0,
        "timeout": 2.0,
        "no_delay": True,
        "ignore_exc": False,
        "socket_module": socket,
        "socket_keepalive": KeepaliveOpts(idle=5, intvl=2, cnt=3),
        "key_prefix": b"pre:",
        "max_pool_size": 3,
        "pool_idle_timeout": 30,
        "lock_generator": threading.Lock,
        "default_noreply": False,
        "allow_unicode_keys": False,
        "encoding": "ascii",
        "tls_context": None,
    }
    names = [
        name
        for name in inspect.signature(pymemcache.client.base.PooledClient.__init__).parameters
        if name not in ("self", "server")
    ]
    missing = set(names) - set(values)
    assert not missing, f"pymemcache PooledClient grew parameters this test lacks: {missing}"
    client = PooledClient(tcp(memcached), **{name: values[name] for name in names})
    assert client.set("k", b"value")
    assert client.get("k") == (b"value", 7)
    assert raw_get(memcached, b"pre:k") == b"value"
    assert client.client_pool.max_size == 3
    # and pymc's published signature lists them all, for IDEs and help()
    published = inspect.signature(PooledClient).parameters
    assert set(names) <= set(published)


def test_pooled_client_mapping_sugar_and_close(memcached: MemcachedProcess) -> None:
    with PooledClient(tcp(memcached), max_pool_size=2) as client:
        client["a"] = b"1"
        assert client["a"] == b"1"
        del client["a"]
        with pytest.raises(KeyError):
            client["a"]
        s = pool_stats(client)
        assert s["created"] == 1 and s["destroyed"] == 0  # a miss is no reason to reconnect
        conn = client.client_pool.get()
        client.client_pool.release(conn)
        assert conn.sock is not None
    assert current_sock(conn) is None  # closed on exit
    assert pool_stats(client)["idle"] == 0
    assert isinstance(pymc.PooledClient, type)


# -- fork: two threads of the child reset the pool at once ----------------------------------------


def run_child(child: Callable[[], str], seconds: float = 10) -> str:
    """Fork; run ``child()`` in the child (it returns "" when every check held, else what
    failed) and return what it reported. The child always ends in os._exit."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # never return into pytest
        code = 1
        try:
            os.close(read_end)
            try:
                report = child()
            except BaseException as exc:
                report = f"child raised {exc!r}"
            os.write(write_end, (report or "ok").encode()[:4000])
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_end)
            pytest.fail(f"the child did not finish in {seconds} s")
        time.sleep(0.01)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, report)
    return report


class SlowLocksInChild:
    """A lock_generator that is slow in a forked child -- the first lock it makes there
    takes 50 ms, later ones 300 ms -- so two threads resetting the pool at once overlap."""

    def __init__(self) -> None:
        self.parent = os.getpid()
        self.calls_in_child = 0

    def __call__(self) -> Any:
        if os.getpid() != self.parent:
            self.calls_in_child += 1
            time.sleep(0.05 if self.calls_in_child == 1 else 0.3)
        return threading.Lock()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.timeout(30)
def test_two_threads_of_a_forked_child_reset_the_pool_once(memcached: MemcachedProcess) -> None:
    removed: List[Tuple[int, int]] = []  # (pid that removed, serial)
    serials = iter(range(1000))
    made: List[Tuple[int, int]] = []

    def make() -> List[int]:
        serial = next(serials)
        made.append((os.getpid(), serial))
        return [serial]

    pool: ObjectPool[List[int]] = ObjectPool(
        make,
        after_remove=lambda obj: removed.append((os.getpid(), obj[0])),
        max_size=4,
        timeout=3,
        lock_generator=SlowLocksInChild(),
    )
    client = PooledClient(tcp(memcached), max_pool_size=4, lock_generator=SlowLocksInChild())
    assert client.set("k", b"parent")
    parent_conn = client.client_pool.get()
    client.client_pool.release(parent_conn)
    assert parent_conn.sock is not None
    parent_sockname = parent_conn.sock.getsockname()
    idle_in_parent = pool.get()
    out_in_parent = pool.get()
    pool.release(idle_in_parent)
    parent = os.getpid()

    def child() -> str:
        errors: List[str] = []
        barrier = threading.Barrier(2, timeout=5)

        def use_pool() -> None:
            try:
                barrier.wait()
                obj = pool.get()
                time.sleep(0.5)  # still out when the other thread is done resetting
                pool.release(obj)
            except BaseException as exc:
                errors.append(f"pool: {exc!r}")

        def use_client(i: int) -> None:
            try:
                barrier.wait()
                client.set(f"child{i}", f"c{i}")
                if client.get(f"child{i}") != f"c{i}".encode():
                    errors.append("client: wrong value")
            except BaseException as exc:
                errors.append(f"client: {exc!r}")

        for target, arg in ((use_pool, False), (use_client, True)):
            threads = [
                threading.Thread(target=target, args=(i,) if arg else (), daemon=True)
                for i in range(2)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(5)
                if t.is_alive():
                    return "a thread of the child hangs"
        if errors:
            return "; ".join(errors)
        pool.release(out_in_parent)  # the parent's: ignored
        pool.destroy(idle_in_parent)  # likewise
        mine = [serial for pid, serial in made if pid != parent]
        idle = [obj[0] for obj in pool.idle_objects()]
        s = pool.stats()
        if s["created"] != len(mine) or s["in_use"] != 0 or s["idle"] + s["in_use"] > 4:
            return f"counts are wrong: {s}, made in the child: {mine}"
        lost = [n for n in mine if n not in idle and (os.getpid(), n) not in removed]
        if lost:
            return f"objects made in the child neither idle nor removed: {lost} {s}"
        if [n for pid, n in removed if pid != parent and n in (0, 1)]:
            return "the child removed an object made by the parent"
        if parent_conn.sock is None or parent_conn.sock.getsockname() != parent_sockname:
            return "the child closed the parent's connection"
        cs = client.client_pool.stats()
        if cs["in_use"] != 0 or cs["created"] > 2 or cs["created"] + cs["destroyed"] == 0:
            return f"client pool counts are wrong: {cs}"
        if client.get("k") != b"parent" or client.client_pool.stats()["in_use"] != 0:
            return "the client does not work in the child"
        with pool.get_and_release() as obj:
            if obj[0] in (0, 1):
                return "the child was handed an object of the parent"
        return ""

    assert run_child(child) == "ok"
    # the parent's objects are as they were
    assert pool.stats()["in_use"] == 1 and pool.stats()["idle"] == 1
    assert not removed
    assert client.get("k") == b"parent" and client.get("child1") == b"c1"
    assert parent_conn.sock is not None and parent_conn.sock.getsockname() == parent_sockname


# -- close while busy -------------------------------------------------------------------------


def test_connection_busy_at_close_is_closed_when_it_comes_back(
    memcached: MemcachedProcess, fault_proxy: ProxyFactory
) -> None:
    proxy = fault_proxy(tcp(memcached))
    client = PooledClient(proxy.address, max_pool_size=4, timeout=5, pool_timeout=2)
    assert client.set("k", b"v")
    pool = client.client_pool
    idle, busy = pool.get(), pool.get()
    pool.release(idle)
    pool.release(busy)  # LIFO: the call below takes this one
    proxy.set_mode("delay", seconds=0.5)
    got: Dict[str, Any] = {}
    caller = threading.Thread(target=lambda: got.update(v=client.get("k")), daemon=True)
    caller.start()
    wait_until(lambda: busy.sock is not None, what="the call to connect")
    assert pool_stats(client)["in_use"] == 1
    client.close()  # while the call waits for its reply
    assert idle.sock is None and busy.sock is not None
    caller.join(5)
    assert got == {"v": b"v"}  # the call in progress finished normally
    s = pool_stats(client)
    assert s["in_use"] == 0 and s["idle"] == 0, s  # ... and its connection was closed
    assert current_sock(busy) is None
    wait_until(lambda: proxy.connections == 0, what="the proxy to see the close")
    # the client stays usable: new checkouts are kept for reuse as usual
    proxy.set_mode("pass")
    assert client.get("k") == b"v" and client.get("k") == b"v"
    s = pool_stats(client)
    assert s["in_use"] == 0 and s["idle"] == 1, s


def test_object_checked_out_at_clear_is_destroyed_on_release(memcached: MemcachedProcess) -> None:
    client = PooledClient(tcp(memcached), max_pool_size=2)
    pool = client.client_pool
    conn = pool.get()
    assert conn.set("k", b"v")
    client.close()
    after_close = pool.get()  # a checkout after close() is a new one, and is kept
    pool.release(conn)
    assert conn.sock is None
    assert after_close.get("k") == b"v"
    pool.release(after_close)
    assert after_close.sock is not None
    assert pool.get() is after_close
    s = pool.stats()
    assert s["in_use"] == 1 and s["destroyed"] == 1 and s["created"] == 2, s


# -- try_get ----------------------------------------------------------------------------------
