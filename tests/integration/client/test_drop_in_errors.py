"""Drop-in ``except`` clauses: what pymemcache lets reach the caller from the socket
(``ConnectionRefusedError``, ``FileNotFoundError``, ``ConnectionResetError``,
``ssl.SSLError``) is still caught by an ``except`` for that class, although pymc raises its
own network errors. Each error is made for real: a refused port, a missing UNIX socket, a
reset from the fault proxy, a TLS handshake against a plain server; on every client."""

from __future__ import annotations

import errno
import pickle
import socket
import ssl
from typing import Any, Callable, Dict, Iterator, List, Tuple, Type

import pytest
from support.faultproxy import FaultProxy
from support.helpers import tcp
from support.servers import MemcachedProcess

from pymc import (
    Client,
    HashClient,
    MemcacheConnectError,
    MemcacheNetworkError,
    MemcacheTimeoutError,
    PooledClient,
    RetryingClient,
)

Factory = Callable[..., Any]


def closed_port() -> Tuple[str, int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return ("127.0.0.1", sock.getsockname()[1])


def _client(server: Any, **kw: Any) -> Any:
    return Client(server, **kw)


def _pooled(server: Any, **kw: Any) -> Any:
    return PooledClient(server, **kw)


def _hash(server: Any, **kw: Any) -> Any:
    # retry_timeout=0: each call tries the node (a node that failed less than
    # retry_timeout ago is not tried, and the error says so instead).
    return HashClient([server], retry_timeout=0, **kw)


def _retrying(server: Any, **kw: Any) -> Any:
    return RetryingClient(Client(server, **kw), attempts=2)


@pytest.fixture(
    params=[
        pytest.param(_client, id="Client"),
        pytest.param(_pooled, id="PooledClient"),
        pytest.param(_hash, id="HashClient"),
        pytest.param(_retrying, id="RetryingClient"),
    ]
)
def make(request: pytest.FixtureRequest) -> Iterator[Factory]:
    made: List[Any] = []

    def factory(server: Any, **kw: Any) -> Any:
        kw.setdefault("connect_timeout", 2.0)
        kw.setdefault("timeout", 2.0)
        client = request.param(server, **kw)
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()


def check(
    exc: BaseException, original: Type[BaseException], pymc_class: Type[BaseException]
) -> type:
    """``exc`` is both pymc's error and the class pymemcache lets through."""
    assert isinstance(exc, original)
    assert isinstance(exc, pymc_class)
    assert isinstance(exc, OSError)
    assert not isinstance(exc, MemcacheTimeoutError)
    cause = exc.__cause__
    assert isinstance(cause, original)
    assert isinstance(exc, OSError) and isinstance(cause, OSError)
    assert exc.errno == cause.errno
    assert exc.strerror and exc.args == (exc.errno, exc.strerror)
    # It survives pickling (a task queue's result backend, multiprocessing).
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc)
    assert copy.args == exc.args and copy.errno == exc.errno
    assert vars(copy) == vars(exc)
    # One class per pair, not one per error.
    return type(exc)


def test_connection_refused(make: Factory) -> None:
    c = make(closed_port())
    types = set()
    for _ in range(2):
        try:
            c.get("k")
        except ConnectionRefusedError as exc:  # the clause written for pymemcache
            types.add(check(exc, ConnectionRefusedError, MemcacheConnectError))
            assert exc.errno == errno.ECONNREFUSED
        else:
            pytest.fail("no error")
    assert len(types) == 1


def test_missing_unix_socket(make: Factory, tmp_path: Any) -> None:
    c = make(str(tmp_path / "no-such.sock"))
    with pytest.raises(FileNotFoundError) as info:
        c.set("k", b"v")
    check(info.value, FileNotFoundError, MemcacheConnectError)
    assert info.value.errno == errno.ENOENT


def test_connection_reset(
    make: Factory, memcached: MemcachedProcess, fault_proxy: Callable[..., FaultProxy]
) -> None:
    proxy = fault_proxy(tcp(memcached))
    c = make(proxy.address)
    assert c.set("k", b"v")
    proxy.set_mode("reset")
    with pytest.raises(ConnectionResetError) as info:
        c.get("k")
    check(info.value, ConnectionResetError, MemcacheNetworkError)
    assert not isinstance(info.value, MemcacheConnectError)
    assert info.value.errno == errno.ECONNRESET
    proxy.set_mode("pass")
    assert c.get("k") == b"v"  # and the client goes on


def test_tls_handshake_against_a_plain_server(
    make: Factory, memcached: MemcachedProcess, memcached_tls: MemcachedProcess
) -> None:
    c = make(tcp(memcached), tls_context=memcached_tls.client_ssl_context())
    with pytest.raises(ssl.SSLError) as info:
        c.get("k")
    check(info.value, ssl.SSLError, MemcacheConnectError)
    # ssl's own attributes are kept.
    assert info.value.reason == info.value.__cause__.reason  # type: ignore[union-attr]
    assert info.value.library == info.value.__cause__.library  # type: ignore[union-attr]


def test_an_untrusted_certificate_is_an_ssl_verification_error(
    make: Factory, memcached_tls: MemcachedProcess
) -> None:
    c = make(tcp(memcached_tls), tls_context=ssl.create_default_context())
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        c.get("k")
    check(info.value, ssl.SSLCertVerificationError, MemcacheConnectError)
    assert isinstance(info.value, ValueError)  # as ssl.SSLCertVerificationError is
    cause = info.value.__cause__
    assert info.value.verify_code == cause.verify_code  # type: ignore[union-attr]
    assert info.value.verify_message == cause.verify_message  # type: ignore[union-attr]


def test_retry_for_names_the_class_pymemcache_raised(memcached: MemcachedProcess) -> None:
    # A RetryingClient configured for pymemcache retries what it names.
    calls: List[int] = []
    inner = Client(closed_port(), connect_timeout=2.0)
    real = inner.get

    def counting(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(*args, **kw)

    inner.get = counting  # type: ignore[method-assign]
    client = RetryingClient(inner, attempts=3, retry_for=[ConnectionRefusedError])
    with pytest.raises(ConnectionRefusedError):
        client.get("k")
    assert len(calls) == 3


def test_a_timeout_stays_a_timeout(
    make: Factory, memcached: MemcachedProcess, fault_proxy: Callable[..., FaultProxy]
) -> None:
    proxy = fault_proxy(tcp(memcached))
    c = make(proxy.address, timeout=0.2)
    proxy.set_mode("stall")
    with pytest.raises(socket.timeout) as info:
        c.get("k")
    assert isinstance(info.value, MemcacheTimeoutError)
    assert not isinstance(info.value, BlockingIOError)  # pymc's kernel timeouts stay hidden


@pytest.mark.parametrize("command", ["get_many", "set_many", "delete_many", "meta_get_many"])
def test_a_fan_out_re_raises_the_nodes_error_as_it_is(
    memcached: MemcachedProcess, command: str
) -> None:
    client = HashClient([tcp(memcached), closed_port()], retry_timeout=0, timeout=2.0)
    keys = [f"fan:{i}" for i in range(16)]  # on both nodes
    values = {k: b"v" for k in keys}
    calls: Dict[str, Callable[[], Any]] = {
        "get_many": lambda: client.get_many(keys),
        "set_many": lambda: client.set_many(values),
        "delete_many": lambda: client.delete_many(keys),
        "meta_get_many": lambda: client.meta_get_many(keys),
    }
    with pytest.raises(ConnectionRefusedError) as info:
        calls[command]()
    check(info.value, ConnectionRefusedError, MemcacheConnectError)
    client.close()
