"""RetryPolicy (pure logic), call_with_retry, RetryingClient and PooledClient(retry=...).

Network behaviour is checked against real memcached, through the fault proxy where a fault
is needed: what was retried is read from the proxy (connections accepted), from counted
connects, and from the server itself (the value of a counter after an ``incr``).
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import socket
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Tuple
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.faultproxy import FaultProxy
from support.helpers import Interrupt, tcp, wait_until
from support.servers import MemcachedProcess, free_port, request

import pymc.retry
from pymc import (
    Client,
    MemcacheClientError,
    MemcacheConnectError,
    MemcacheError,
    MemcacheIllegalInputError,
    MemcacheNetworkError,
    MemcachePoolTimeoutError,
    MemcacheProtocolError,
    MemcacheServerError,
    MemcacheTimeoutError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    PooledClient,
    RetryingClient,
    RetryPolicy,
)
from pymc.client import COMMANDS
from pymc.retry import IDEMPOTENT, call_with_retry

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


def test_policy_is_immutable_and_increment_returns_a_new_one() -> None:
    policy = RetryPolicy(attempts=3, backoff=0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.attempts = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.attempt = 2  # type: ignore[misc]
    second = policy.increment()
    assert second is not policy
    assert (policy.attempt, second.attempt) == (1, 2)
    assert dataclasses.replace(second, attempt=1) == policy
    third = second.increment()
    assert not policy.exhausted and not second.exhausted and third.exhausted
    assert policy.attempt == 1 and second.attempt == 2  # unchanged by the increments
    assert hash(policy) == hash(RetryPolicy(attempts=3, backoff=0.1))


def test_backoff_is_exponential_and_capped() -> None:
    policy = RetryPolicy(attempts=10, backoff=0.1, max_backoff=1.0, jitter=0)
    delays = []
    for _ in range(7):
        delays.append(policy.backoff_time())
        policy = policy.increment()
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert RetryPolicy(backoff=0, jitter=0.5).backoff_time() == 0


def test_jitter_stays_within_its_band() -> None:
    policy = RetryPolicy(attempts=10, backoff=0.1, max_backoff=10, jitter=0.5).increment()
    full = 0.2  # the second attempt's un-jittered delay
    with mock.patch("pymc.retry.random.random", return_value=0.0):
        assert policy.backoff_time() == pytest.approx(full)
    with mock.patch("pymc.retry.random.random", return_value=0.999999):
        assert policy.backoff_time() == pytest.approx(full * 0.5, rel=1e-5)
    samples = [policy.backoff_time() for _ in range(500)]
    assert all(full * 0.5 <= d <= full for d in samples)
    assert len(set(samples)) > 100  # really random


@given(
    backoff=st.floats(0, 5),
    max_backoff=st.floats(0, 5),
    jitter=st.floats(0, 1),
    attempt=st.integers(1, 40),
)
def test_backoff_property(backoff: float, max_backoff: float, jitter: float, attempt: int) -> None:
    policy = RetryPolicy(
        attempts=50, backoff=backoff, max_backoff=max_backoff, jitter=jitter, attempt=attempt
    )
    full = min(max_backoff, backoff * 2 ** (attempt - 1))
    delay = policy.backoff_time()
    assert (1 - jitter) * full - 1e-9 <= delay <= full + 1e-9


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"attempts": -1},
        {"attempts": 1.5},
        {"backoff": -0.1},
        {"max_backoff": -1},
        {"jitter": 1.5},
        {"jitter": -0.1},
        {"retry_for": "MemcacheError"},
        {"retry_for": (int,)},
        {"do_not_retry_for": (BaseException,)},
        {"retry_for": (MemcacheError,), "do_not_retry_for": (MemcacheError,)},
    ],
)
def test_policy_rejects_bad_arguments(kwargs: Any) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_which_failures_are_retryable() -> None:
    policy = RetryPolicy()
    connect = MemcacheConnectError(111, "refused")
    timeout = MemcacheTimeoutError(None, "timed out")
    closed = MemcacheUnexpectedCloseError("closed")
    garbled = MemcacheProtocolError("garbage")
    for command in COMMANDS:  # the server never saw it: any command
        assert policy.is_retryable(command, connect), command
    for command in ("get", "get_many", "gets", "set", "delete", "touch", "stats"):
        for exc in (timeout, closed, garbled):
            assert policy.is_retryable(command, exc), (command, exc)
    for command in ("incr", "decr", "add", "cas", "append", "prepend", "replace"):
        assert command not in IDEMPOTENT
        for exc in (timeout, closed, garbled):
            assert not policy.is_retryable(command, exc), (command, exc)
    never = [
        MemcacheIllegalInputError("bad key"),
        MemcacheClientError("CLIENT_ERROR"),
        MemcacheUnknownCommandError("ERROR"),
        MemcachePoolTimeoutError("pool"),
        MemcacheServerError("SERVER_ERROR out of memory"),
        ValueError("not ours"),
        KeyError("k"),
        Interrupt(),
        KeyboardInterrupt(),
    ]
    for other in never:
        assert not policy.is_retryable("get", other), other
    # bad input stays unretried even when asked for explicitly
    eager = RetryPolicy(retry_for=(MemcacheError,), idempotent=IDEMPOTENT | {"incr"})
    assert not eager.is_retryable("get", MemcacheIllegalInputError("bad"))
    assert not eager.is_retryable("incr", MemcacheClientError("CLIENT_ERROR"))
    assert eager.is_retryable("incr", timeout)
    # do_not_retry_for wins, even over the connect phase
    shy = RetryPolicy(do_not_retry_for=(MemcacheConnectError,))
    assert not shy.is_retryable("get", connect)
    assert shy.is_retryable("get", timeout)
    # retry_for narrows
    narrow = RetryPolicy(retry_for=(MemcacheUnexpectedCloseError,))
    assert narrow.is_retryable("get", closed)
    assert not narrow.is_retryable("get", timeout)


def test_call_with_retry_sleeps_between_attempts_and_gives_up() -> None:
    policy = RetryPolicy(attempts=4, backoff=0.1, max_backoff=0.3, jitter=0)
    calls: List[int] = []

    def always_refused() -> None:
        calls.append(1)
        raise MemcacheConnectError(111, "refused")

    with mock.patch("pymc.retry.time.sleep") as sleep, pytest.raises(MemcacheConnectError):
        call_with_retry(policy, "incr", always_refused)
    assert len(calls) == 4
    assert [c.args[0] for c in sleep.call_args_list] == pytest.approx([0.1, 0.2, 0.3])

    outcomes: List[Any] = [MemcacheConnectError(111, "x"), MemcacheConnectError(111, "y"), 42]

    def flaky(a: int, b: int = 0) -> Any:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome + a + b

    with mock.patch("pymc.retry.time.sleep") as sleep:
        assert call_with_retry(policy, "incr", flaky, 1, b=2) == 45
    assert sleep.call_count == 2
    assert policy.attempt == 1  # the shared policy was not touched


@pytest.mark.parametrize(
    "exc", [Interrupt(), MemcacheIllegalInputError("bad"), MemcacheTimeoutError(None, "t")]
)
def test_call_with_retry_lets_base_exceptions_and_non_retryable_errors_through(
    exc: BaseException,
) -> None:
    calls: List[int] = []

    def fail() -> None:
        calls.append(1)
        raise exc

    with mock.patch("pymc.retry.time.sleep") as sleep, pytest.raises(type(exc)):
        call_with_retry(RetryPolicy(attempts=5), "incr", fail)
    assert calls == [1] and sleep.call_count == 0


# -- RetryingClient: pymemcache's interface ------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempts": 0},
        {"attempts": -3},
        {"retry_for": "MemcacheError"},
        {"retry_for": MemcacheError},
        {"do_not_retry_for": {"a": MemcacheError}},
        {"retry_for": [int]},
        {"do_not_retry_for": (KeyboardInterrupt,)},
        {"retry_for": [MemcacheError, IOError], "do_not_retry_for": {IOError}},
    ],
)
def test_retrying_client_checks_its_arguments_like_pymemcache(kwargs: Any) -> None:
    with pytest.raises(ValueError):
        RetryingClient(Client(("127.0.0.1", 11211)), **kwargs)


def test_retrying_client_accepts_pymemcache_arguments() -> None:
    inner = Client(("127.0.0.1", 11211))
    for retry_for in (None, (MemcacheError,), [MemcacheError], {MemcacheError}):
        RetryingClient(inner, retry_for=retry_for)
    client = RetryingClient(
        inner,
        attempts=4,
        retry_delay=0.25,
        retry_for=[MemcacheNetworkError],
        do_not_retry_for=(MemcacheIllegalInputError,),
    )
    policy = client.policy
    assert policy.attempts == 4 and policy.retry_for == (MemcacheNetworkError,)
    assert policy.do_not_retry_for == (MemcacheIllegalInputError,)
    # retry_delay is a constant pause, as in pymemcache
    assert policy.backoff_time() == policy.increment().increment().backoff_time() == 0.25


def test_retrying_client_methods_are_real_and_introspectable() -> None:
    params = inspect.signature(RetryingClient.get).parameters
    assert "key" in params and "default" in params
    assert inspect.signature(RetryingClient.get) == inspect.signature(Client.get)
    for name in COMMANDS:
        # defined on the class (or its base), not reached through __getattr__
        assert any(name in vars(cls) for cls in RetryingClient.__mro__), name
        assert inspect.isfunction(inspect.getattr_static(RetryingClient, name)), name


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


def test_retry_module_exports() -> None:
    assert set(pymc.retry.__all__) == {
        "IDEMPOTENT",
        "RetryPolicy",
        "RetryingClient",
        "call_with_retry",
    }
