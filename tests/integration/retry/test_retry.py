"""RetryPolicy (pure logic), call_with_retry, RetryingClient and PooledClient(retry=...).

Network behaviour is checked against real memcached, through the fault proxy where a fault
is needed: what was retried is read from the proxy (connections accepted), from counted
connects, and from the server itself (the value of a counter after an ``incr``).
"""

from __future__ import annotations

import collections
import socket
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.helpers import tcp, wait_until
from support.servers import MemcachedProcess, free_port, request

from pymc import (
    Client,
    MemcacheClientError,
    MemcacheConnectError,
    MemcacheIllegalInputError,
    MemcacheTimeoutError,
    MemcacheUnknownCommandError,
    PooledClient,
    RetryingClient,
    RetryPolicy,
)
from pymc.retry import IDEMPOTENT

ProxyFactory = Callable[[Tuple[str, int]], FaultProxy]
ServerFactory = Callable[..., MemcachedProcess]

pytestmark = pytest.mark.timeout(30)


# -- helpers ------------------------------------------------------------------------------------


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
    return rest[: int(header.split()[3])]


class CountingSockets:
    """A ``socket_module`` that counts connect attempts (failed ones included)."""

    def __init__(self) -> None:
        self.connects = 0
        outer = self

        class Sock(socket.socket):
            def connect(self, address: Any) -> None:
                outer.connects += 1
                super().connect(address)

        self.socket = Sock

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)


class Counting:
    """Wraps a client and counts the calls of each method."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return call


@pytest.fixture
def late_server() -> Iterator[Callable[[float], Tuple[Tuple[str, int], threading.Thread]]]:
    """``late_server(delay)``: a free port now, a memcached listening on it ``delay`` s later."""
    servers: List[MemcachedProcess] = []
    threads: List[threading.Thread] = []

    def factory(delay: float) -> Tuple[Tuple[str, int], threading.Thread]:
        server = MemcachedProcess()
        server.port = free_port()
        servers.append(server)

        def start() -> None:
            time.sleep(delay)
            server.start()

        thread = threading.Thread(target=start, daemon=True)
        threads.append(thread)
        return (server.host, server.port), thread

    yield factory
    for thread in threads:
        thread.join(10)
    for server in servers:
        server.close()


def heal_after_first_attempt(proxy: FaultProxy) -> threading.Thread:
    """Switch ``proxy`` to pass once the first connection through it has come and gone
    (the first attempt timed out and closed it)."""

    def run() -> None:
        try:
            wait_until(lambda: proxy.connections >= 1, 5)
            wait_until(lambda: proxy.connections == 0, 5)
        finally:
            proxy.set_mode("pass")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# -- RetryPolicy: pure logic --------------------------------------------------------------------


# -- RetryingClient: pymemcache's interface ------------------------------------------------------


def test_retrying_client_passes_other_attributes_through(memcached: MemcachedProcess) -> None:
    pooled = PooledClient(tcp(memcached), key_prefix=b"p:", max_pool_size=2)
    client = RetryingClient(pooled)
    assert client.client_pool is pooled.client_pool
    assert client.server == pooled.server
    assert client.key_prefix == b"p:"
    assert client.check_key("k") == b"p:k"
    with pytest.raises(AttributeError):
        client.no_such_attribute  # noqa: B018
    assert client.set("k", b"v") and client.get("k") == b"v"
    assert client["k"] == b"v"
    assert raw_get(memcached, b"p:k") == b"v"
    assert "RetryingClient" in repr(client)


def test_retrying_client_retries_connect_failures_for_any_command() -> None:
    sockets = CountingSockets()
    dead = ("127.0.0.1", free_port())
    client = RetryingClient(
        Client(dead, socket_module=sockets, connect_timeout=1), attempts=3, retry_delay=0.01
    )
    with pytest.raises(MemcacheConnectError):
        client.incr("n", 1)
    assert sockets.connects == 3


def test_retrying_client_reaches_a_server_that_starts_late(late_server: Any) -> None:
    address, starter = late_server(0.1)
    sockets = CountingSockets()
    client = RetryingClient(
        Client(address, socket_module=sockets, connect_timeout=1), attempts=40, retry_delay=0.05
    )
    starter.start()
    assert client.set("k", b"v") is True
    assert sockets.connects >= 2
    assert client.get("k") == b"v"


def test_retrying_client_does_not_retry_incr_after_a_read_timeout(
    new_memcached: ServerFactory, fault_proxy: ProxyFactory
) -> None:
    server = new_memcached()
    proxy = fault_proxy(tcp(server))
    raw_set(server, b"n", b"5")
    client = RetryingClient(Client(proxy.address, timeout=0.3), attempts=3)
    proxy.set_mode("stall")
    start = time.monotonic()
    with pytest.raises(MemcacheTimeoutError):
        client.incr("n", 1)
    assert time.monotonic() - start < 0.6  # one timeout, not three (that takes >= 0.6 s)
    assert raw_get(server, b"n") == b"6"
    assert server.stats()["incr_hits"] == "1"
    assert proxy.accepted == 1


def test_retrying_client_retries_get_after_a_read_timeout(
    memcached: MemcachedProcess, fault_proxy: ProxyFactory
) -> None:
    raw_set(memcached, b"k", b"value")
    proxy = fault_proxy(tcp(memcached))
    proxy.set_mode("stall")
    client = RetryingClient(Client(proxy.address, timeout=0.3), attempts=3, retry_delay=0.2)
    healer = heal_after_first_attempt(proxy)
    assert client.get("k") == b"value"
    healer.join(5)
    assert proxy.accepted >= 2


def test_retrying_client_never_retries_bad_input_or_client_errors(
    memcached: MemcachedProcess,
) -> None:
    inner = Counting(Client(tcp(memcached)))
    client = RetryingClient(inner, attempts=5)
    with pytest.raises(MemcacheIllegalInputError):
        client.get("bad key")
    with pytest.raises(MemcacheIllegalInputError):
        client.set("k" * 300, b"v")
    raw_set(memcached, b"text", b"not a number")
    with pytest.raises(MemcacheClientError):
        client.incr("text", 1)
    with pytest.raises(MemcacheUnknownCommandError):
        client.raw_command("bogus_command")
    assert inner.calls == {"get": 1, "set": 1, "incr": 1, "raw_command": 1}
    # nor when the caller lists them
    eager = RetryingClient(inner, attempts=5, retry_for=(MemcacheClientError,))
    with pytest.raises(MemcacheIllegalInputError):
        eager.get("bad key")
    assert inner.calls["get"] == 2


# -- PooledClient(retry=...) --------------------------------------------------------------------


def test_pooled_connection_refused_is_retried_until_the_server_listens(
    late_server: Any,
) -> None:
    address, starter = late_server(0.1)
    without = PooledClient(address, connect_timeout=1)
    with pytest.raises(MemcacheConnectError):
        without.get("k")  # nothing listens yet
    sockets = CountingSockets()
    client = PooledClient(
        address,
        max_pool_size=1,
        connect_timeout=1,
        socket_module=sockets,
        retry=RetryPolicy(attempts=12, backoff=0.05, max_backoff=0.2),
    )
    starter.start()
    assert client.incr("missing", 1) is None  # connect failures: retried for any command
    assert sockets.connects >= 2
    assert client.set("k", b"v") is True
    assert client.get("k") == b"v"
    s = client.client_pool.stats()
    assert s["in_use"] == 0 and s["idle"] == 1 and s["destroyed"] == s["created"] - 1


def test_pooled_connect_failures_give_up_after_attempts_and_keep_the_pool_whole() -> None:
    sockets = CountingSockets()
    client = PooledClient(
        ("127.0.0.1", free_port()),
        max_pool_size=1,
        pool_timeout=0.2,
        socket_module=sockets,
        retry=RetryPolicy(attempts=4, backoff=0),
    )
    with pytest.raises(MemcacheConnectError):
        client.set("k", b"v")
    assert sockets.connects == 4
    s = client.client_pool.stats()
    assert s["in_use"] == 0 and s["created"] == 4 and s["destroyed"] == 4 and s["timeouts"] == 0


def test_pooled_incr_is_not_retried_after_a_read_timeout(
    new_memcached: ServerFactory, fault_proxy: ProxyFactory
) -> None:
    server = new_memcached()
    proxy = fault_proxy(tcp(server))
    raw_set(server, b"n", b"5")
    client = PooledClient(proxy.address, timeout=0.3, retry=RetryPolicy(attempts=3))
    assert client.get("n") == b"5"  # a warm connection
    proxy.set_mode("stall")  # memcached executes the request; the reply is dropped
    start = time.monotonic()
    with pytest.raises(MemcacheTimeoutError):
        client.incr("n", 1)
    assert time.monotonic() - start < 0.6  # one timeout, not three (that takes >= 0.6 s)
    assert raw_get(server, b"n") == b"6"  # the server saw exactly one increment
    assert server.stats()["incr_hits"] == "1"
    assert proxy.accepted == 1  # no second connection was tried
    s = client.client_pool.stats()
    assert s["in_use"] == 0 and s["destroyed"] == 1


def test_pooled_get_is_retried_after_a_read_timeout(
    memcached: MemcachedProcess, fault_proxy: ProxyFactory
) -> None:
    raw_set(memcached, b"k", b"value")
    proxy = fault_proxy(tcp(memcached))
    proxy.set_mode("stall")
    client = PooledClient(
        proxy.address, timeout=0.3, retry=RetryPolicy(attempts=3, backoff=0.2, jitter=0)
    )
    healer = heal_after_first_attempt(proxy)
    start = time.monotonic()
    assert client.get("k") == b"value"
    assert time.monotonic() - start >= 0.3  # the first attempt did time out
    healer.join(5)
    assert proxy.accepted >= 2
    assert client.get_many(["k"]) == {"k": b"value"}


def test_pooled_get_many_is_retried_after_the_connection_is_reset(
    memcached: MemcachedProcess, fault_proxy: ProxyFactory
) -> None:
    raw_set(memcached, b"k", b"value")
    proxy = fault_proxy(tcp(memcached))
    client = PooledClient(proxy.address, timeout=2, retry=RetryPolicy(attempts=3, backoff=0.2))
    assert client.get("k") == b"value"
    proxy.set_mode("reset")
    healer = heal_after_first_attempt(proxy)
    assert client.get_many(["k", "other"]) == {"k": b"value"}
    healer.join(5)
    assert proxy.accepted >= 2


def test_pooled_bad_input_and_client_errors_are_not_retried(
    memcached: MemcachedProcess,
) -> None:
    client = PooledClient(
        tcp(memcached),
        max_pool_size=1,
        retry=RetryPolicy(attempts=5, backoff=0, idempotent=IDEMPOTENT | {"incr"}),
    )
    attempts: collections.Counter[str] = collections.Counter()
    once = client._once

    def counted(name: str, args: Any, kwargs: Any) -> Any:
        attempts[name] += 1
        return once(name, args, kwargs)

    client._once = counted  # type: ignore[method-assign,assignment]
    with pytest.raises(MemcacheIllegalInputError):
        client.get("bad key")
    with pytest.raises(MemcacheIllegalInputError):
        client.set_many({"ok": b"1", "not ok": b"2"})
    raw_set(memcached, b"text", b"not a number")
    with pytest.raises(MemcacheClientError):
        client.incr("text", 1)  # CLIENT_ERROR, though incr is "idempotent" for this policy
    assert attempts == {"get": 1, "set_many": 1, "incr": 1}
    assert raw_get(memcached, b"text") == b"not a number"
    assert client.get("text") == b"not a number"
    assert client.client_pool.stats()["in_use"] == 0


def test_pooled_client_without_retry_does_not_retry(
    memcached: MemcachedProcess, fault_proxy: ProxyFactory
) -> None:
    raw_set(memcached, b"k", b"value")
    proxy = fault_proxy(tcp(memcached))
    client = PooledClient(proxy.address, timeout=0.2)
    proxy.set_mode("stall")
    with pytest.raises(MemcacheTimeoutError):
        client.get("k")
    assert proxy.accepted == 1
    proxy.set_mode("pass")
    assert client.get("k") == b"value"
