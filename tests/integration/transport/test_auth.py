"""ASCII authentication (``memcached -Y``) on every client, against real servers.

memcached's ASCII auth is a ``set`` whose data is ``"<user> <password>"``. A server started
without ``-Y`` would store that as an item (under the key ``auth``) and answer ``STORED``,
so pymc first sends ``get auth``: a server that requires auth answers it with
``CLIENT_ERROR unauthenticated``, and only then are the credentials sent. A server that
answers normally never sees them: the connect fails with
:class:`MemcacheAuthNotRequiredError`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, List

import pytest
from support.helpers import tcp
from support.servers import MemcachedProcess, request

from pymc import (
    Client,
    HashClient,
    MemcacheAuthenticationError,
    MemcacheAuthNotRequiredError,
    MemcacheClientError,
    PooledClient,
)

Factory = Callable[..., Any]


def _client(address: Any, **kw: Any) -> Client:
    return Client(address, **kw)


def _pooled(address: Any, **kw: Any) -> PooledClient:
    return PooledClient(address, **kw)


def _hash(address: Any, **kw: Any) -> HashClient:
    # Refused credentials are the command's error, not a node failure: no ejection.
    return HashClient([address], **kw)


CLIENTS = [
    pytest.param(_client, id="Client"),
    pytest.param(_pooled, id="PooledClient"),
    pytest.param(_hash, id="HashClient"),
]


@pytest.fixture(params=CLIENTS)
def make(request: pytest.FixtureRequest) -> Iterator[Factory]:
    made = []

    def factory(address: Any, **kw: Any) -> Any:
        client = request.param(address, timeout=2.0, connect_timeout=2.0, **kw)
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()


def raw_get(server: MemcachedProcess, key: bytes) -> bytes:
    with server.connect() as sock:
        return request(sock, b"get " + key + b"\r\n", b"END\r\n")


def test_credentials_are_never_written_to_a_server_without_auth(
    make: Factory, memcached: MemcachedProcess
) -> None:
    sets_before = int(memcached.stats()["cmd_set"])  # (the session's server: earlier tests')
    c = make(tcp(memcached), username="user1", password="s3cret")
    for _ in range(2):  # and on every later connect
        with pytest.raises(MemcacheAuthNotRequiredError) as info:
            c.set("app-key", b"v")
        assert isinstance(info.value, MemcacheAuthenticationError)
        assert isinstance(info.value, MemcacheClientError)
        message = str(info.value)
        assert "does not require authentication" in message
        assert "s3cret" not in message
    with pytest.raises(MemcacheAuthNotRequiredError):
        c.get("auth")
    # Nothing was stored: not the credentials, not the command that could not go out.
    assert raw_get(memcached, b"auth") == b"END\r\n"
    assert raw_get(memcached, b"app-key") == b"END\r\n"
    assert int(memcached.stats()["cmd_set"]) == sets_before


def test_an_application_key_named_auth_is_never_overwritten(
    make: Factory, memcached: MemcachedProcess
) -> None:
    with Client(tcp(memcached)) as plain:
        assert plain.set("auth", b"application data")
    c = make(tcp(memcached), username="user1", password="s3cret")
    with pytest.raises(MemcacheAuthNotRequiredError):
        c.get("other")
    assert raw_get(memcached, b"auth") == b"VALUE auth 0 16\r\napplication data\r\nEND\r\n"


def test_a_server_with_auth_still_works(make: Factory, memcached_auth: MemcachedProcess) -> None:
    user, password = memcached_auth.username, memcached_auth.password
    c = make(tcp(memcached_auth), username=user, password=password)
    assert c.set("auth-probe-k", b"v")
    assert c.get("auth-probe-k") == b"v"
    assert c.get_many(["auth-probe-k", "missing"]) == {"auth-probe-k": b"v"}
    c.close()
    assert c.get("auth-probe-k") == b"v"  # authenticates again after reconnecting
    assert c.delete("auth-probe-k") is True


def test_a_wrong_password_still_fails_clearly(
    make: Factory, memcached_auth: MemcachedProcess
) -> None:
    user = memcached_auth.username
    c = make(tcp(memcached_auth), username=user, password="wrong")
    for _ in range(2):
        with pytest.raises(MemcacheAuthenticationError) as info:
            c.get("auth-probe-k")
        assert not isinstance(info.value, MemcacheAuthNotRequiredError)
        assert "refused the credentials" in str(info.value)


def replies_seen(proxy: Any, server: MemcachedProcess, **credentials: Any) -> List[bytes]:
    """The reply chunks a Client's connect and one get drew through ``proxy``."""
    replies: List[bytes] = []

    def record(chunk: bytes) -> bytes:
        replies.append(chunk)
        return chunk

    proxy.set_mode("rewrite", fn=record)
    with Client(proxy.address, timeout=2.0, **credentials) as c:
        assert c.get("auth-probe-k") is None
    return replies


def test_the_probe_is_one_round_trip_and_only_with_credentials(
    memcached: MemcachedProcess, memcached_auth: MemcachedProcess, fault_proxy: Any
) -> None:
    # No credentials: no probe.
    assert replies_seen(fault_proxy(tcp(memcached)), memcached) == [b"END\r\n"]
    user, password = memcached_auth.username, memcached_auth.password
    replies = replies_seen(
        fault_proxy(tcp(memcached_auth)), memcached_auth, username=user, password=password
    )
    assert replies == [b"CLIENT_ERROR unauthenticated\r\n", b"STORED\r\n", b"END\r\n"]


def test_a_fan_out_never_writes_credentials_either(
    memcached_nodes: List[MemcachedProcess],
) -> None:
    sets_before = [int(node.stats()["cmd_set"]) for node in memcached_nodes]
    client = HashClient(
        [tcp(n) for n in memcached_nodes], username="user1", password="s3cret", timeout=2.0
    )
    keys = [f"fan:{i}" for i in range(16)]
    for _ in range(3):  # the nodes are never counted failed: the same error each time
        with pytest.raises(MemcacheAuthNotRequiredError):
            client.get_many(keys)
        with pytest.raises(MemcacheAuthNotRequiredError):
            client.set_many({k: b"v" for k in keys})
        with pytest.raises(MemcacheAuthNotRequiredError):
            client.meta_get_many(keys)
    assert len(client.nodes) == len(memcached_nodes)
    for node, before in zip(memcached_nodes, sets_before):
        # (flushed items stay in curr_items until memcached looks at them: count the sets)
        assert raw_get(node, b"auth") == b"END\r\n"
        assert int(node.stats()["cmd_set"]) == before
    client.close()
