"""Keys at their edges: bad keys, the length limit after the prefix, unicode and UTF-8 prefixes, on
every client kind."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import pytest
from support.hashclients import (
    BAD_KEYS,
    MULTI_KEY_COMMANDS,
    PREFIX,
    SINGLE_KEY_COMMANDS,
    Events,
    no_slot_out,
    tag,
)
from support.helpers import KINDS, one_node_client, stat, tcp
from support.servers import MemcachedProcess, request

import pymc
import pymc.cluster
import pymc.pool
from pymc import (
    Client,
    HashClient,
    MemcacheIllegalInputError,
    PooledClient,
)


def _construct(kind: str, address: Tuple[str, int], **kwargs: Any) -> Any:
    if kind == "HashClient":
        return HashClient([address], **kwargs)
    return {"Client": Client, "PooledClient": PooledClient}[kind](address, **kwargs)


CLASS_NAMES = ["Client", "PooledClient", "HashClient"]


@pytest.mark.parametrize("kind", CLASS_NAMES)
def test_key_length_edge_counts_the_prefix(kind: str, memcached: MemcachedProcess) -> None:
    client = _construct(kind, tcp(memcached), key_prefix="five:", timeout=2.0)
    try:
        assert client.set("k" * 245, b"edge") is True  # 5 + 245 = 250 bytes
        assert client.get("k" * 245) == b"edge"
        with pytest.raises(MemcacheIllegalInputError):
            client.set("k" * 246, b"over")  # 251 bytes
        with pytest.raises(MemcacheIllegalInputError):
            client.get("k" * 246)
    finally:
        client.close()
    assert raw_get(memcached, b"five:" + b"k" * 245).startswith(b"VALUE five:kkk")


def raw_get(server: MemcachedProcess, key: bytes) -> bytes:
    with server.connect() as sock:
        return request(sock, b"get " + key + b"\r\n", b"END\r\n")


@pytest.mark.parametrize("kind", CLASS_NAMES)
def test_utf8_key_prefix_round_trips_with_allow_unicode_keys(
    kind: str, memcached: MemcachedProcess
) -> None:
    client = _construct(
        kind, tcp(memcached), key_prefix="café:", allow_unicode_keys=True, timeout=2.0
    )
    try:
        assert client.set("clé", b"valeur") is True
        assert client.get("clé") == b"valeur"
        assert client.get_many(["clé", "other"]) == {"clé": b"valeur"}
        # the prefix is 6 bytes of UTF-8: 244 more bytes fit, 245 do not
        assert client.set("k" * 244, b"edge") is True
        with pytest.raises(MemcacheIllegalInputError):
            client.set("k" * 245, b"over")
    finally:
        client.close()
    reply = raw_get(memcached, "café:clé".encode())
    assert reply.startswith("VALUE café:clé 0 6\r\nvaleur".encode())


ServerFactory = Callable[..., MemcachedProcess]


pytestmark = pytest.mark.timeout(60)


DEAD = ("127.0.0.1", 1)  # nothing listens there: connections are refused


def _clients(server: MemcachedProcess, events: Events, unicode: bool) -> Dict[str, HashClient]:
    common: Dict[str, Any] = {
        "key_prefix": PREFIX,
        "allow_unicode_keys": unicode,
        "on_event": events,
        "connect_timeout": 0.5,
        "timeout": 2,
        "retry_attempts": 1,  # any failure counted ejects at once: visible
        "retry_timeout": 0,
    }
    resting = HashClient([DEAD], **{**common, "retry_attempts": 100, "retry_timeout": 60})
    with pytest.raises(pymc.MemcacheError):
        resting.get("k")  # the node rests now
    return {
        "live": HashClient([tcp(server)], **common),
        "live_ignore_exc": HashClient([tcp(server)], ignore_exc=True, **common),
        "pooled": HashClient([tcp(server)], use_pooling=True, ignore_exc=True, **common),
        "dead": HashClient([DEAD], **common),
        "dead_ignore_exc": HashClient([DEAD], ignore_exc=True, **common),
        "resting": resting,
        "no_nodes": HashClient([], ignore_exc=True, **common),
        "hooked": HashClient(
            [tcp(server)], ignore_exc=True, on_command=lambda *a: events("hook", "", {}), **common
        ),
    }


@pytest.mark.timeout(120)
@pytest.mark.parametrize("unicode", [False, True])
def test_a_bad_key_raises_as_a_bad_key_from_every_single_key_command_in_every_state(
    new_memcached: ServerFactory, unicode: bool
) -> None:
    server = new_memcached()
    events = Events()
    clients = _clients(server, events, unicode)
    failures_before = events.count("node_failed")
    for state, client in clients.items():
        for command, rest in SINGLE_KEY_COMMANDS.items():
            for bad in BAD_KEYS:
                if unicode and bad == "é":
                    continue  # a good key then
                where = (state, command, bad if not isinstance(bad, (str, bytes)) else bad[:8])
                with pytest.raises(MemcacheIllegalInputError):
                    getattr(client, command)(bad, *rest)
                    pytest.fail(f"no error: {where}")
                with pytest.raises(MemcacheIllegalInputError):  # (server_key, bad key)
                    getattr(client, command)(("sk", bad), *rest)
                assert no_slot_out(client), where
    assert events.count("node_failed") == failures_before  # no failure counted
    assert events.count("node_ejected") == 0
    assert events.count("hook") == 0  # a hook never sees a bad key
    for state, client in clients.items():
        assert not client._dead or state == "resting", state
    assert stat(server, "cmd_get") == stat(server, "cmd_set") == stat(server, "cmd_touch") == 0


_META_BAD = [
    None,
    1,
    bytearray(b"ab"),
]  # meta commands take any other str/bytes key (base64, or a digest, on the wire)


@pytest.mark.timeout(120)
def test_a_bad_key_among_good_ones_raises_from_every_multi_key_command_in_every_state(
    new_memcached: ServerFactory,
) -> None:
    server = new_memcached()
    events = Events()
    clients = _clients(server, events, False)
    failures_before = events.count("node_failed")
    for state, client in clients.items():
        for command, call in MULTI_KEY_COMMANDS.items():
            bads = _META_BAD if command.startswith("meta") else BAD_KEYS
            for bad in bads:
                if isinstance(bad, (list, bytearray)) and command.endswith("set_many"):
                    continue  # (a dict's keys: unhashable ones cannot get there)
                for keys in (
                    [bad],
                    ["good", bad],
                    ["good", ("sk", "good2"), bad],
                    ["good", ("sk", bad)],
                ):
                    where = (state, command, keys)
                    with pytest.raises(MemcacheIllegalInputError):
                        call(client, keys)
                        pytest.fail(f"no error: {where}")
                    assert no_slot_out(client), where
    assert events.count("node_failed") == failures_before
    assert events.count("node_ejected") == 0
    assert events.count("hook") == 0
    assert stat(server, "cmd_get") == stat(server, "cmd_set") == stat(server, "cmd_touch") == 0


def test_unicode_keys_route_and_read_back_the_same_on_every_client_kind(
    memcached: MemcachedProcess,
) -> None:
    """With allow_unicode_keys a UTF-8 key is one key for Client, PooledClient and
    HashClient, whatever command stores it and however it is read."""
    clients = [one_node_client(kind, tcp(memcached), allow_unicode_keys=True) for kind in KINDS]
    for i, client in enumerate(clients):
        key = f"clé-{i}"
        assert client.set(key, b"v%d" % i)
        for other in clients:
            assert other.get(key) == b"v%d" % i
            assert other.get(key.encode()) == b"v%d" % i  # the bytes spelling
            assert other.get_many([key, "absent"]) == {key: b"v%d" % i}
    for client in clients:
        with pytest.raises(MemcacheIllegalInputError):
            client.get("é" * 126)  # 252 bytes


make = one_node_client


@pytest.mark.parametrize("kind", KINDS)
def test_keys_at_the_length_limit_after_prefix(kind: str, memcached: MemcachedProcess) -> None:
    """With key_prefix "pf:", a 247-byte key is legal (250 in all) and a 248-byte one is not,
    in every multi-key command, and duplicates of one key change nothing."""
    from pymc import MemcacheIllegalInputError

    client = make(kind, tcp(memcached), key_prefix="pf:")
    base = tag()
    ok = [base + str(i) + "k" * (247 - len(base) - len(str(i))) for i in range(3)]
    assert all(len(k) == 247 for k in ok)
    bad = ok[0] + "k"
    assert client.set_many({k: k.encode() for k in ok}) == []
    assert client.get_many(ok * 3) == {k: k.encode() for k in ok}
    assert set(client.gets_many(ok + ok)) == set(ok)
    if kind == "hash":
        assert client.touch_many(ok + ok) == {k: True for k in ok}
    calls: List[Callable[[], Any]] = [
        lambda: client.get_many([*ok, bad]),
        lambda: client.gets_many([bad]),
        lambda: client.set_many({bad: b"x"}),
        lambda: client.delete_many([*ok, bad]),
        lambda: client.get(bad),
    ]
    for call in calls:
        with pytest.raises(MemcacheIllegalInputError):
            call()
    assert client.get_many(ok) == {k: k.encode() for k in ok}  # nothing was half-done
    assert client.delete_many(ok + ok) is True
    assert client.get_many(ok) == {}
