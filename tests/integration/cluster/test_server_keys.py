"""Tuple keys (server_key, key): placement by the server key on every command."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import pytest
from support.hashclients import SINGLE_KEY_COMMANDS, no_slot_out, tag
from support.helpers import stat, tcp
from support.servers import MemcachedProcess

from pymc import (
    Client,
    HashClient,
    MemcacheIllegalInputError,
)

pytestmark = pytest.mark.timeout(60)


def test_tuple_keys_go_to_the_server_keys_node_on_every_single_key_command(
    memcached_nodes: List[MemcachedProcess],
) -> None:
    servers = [tcp(n) for n in memcached_nodes]
    client = HashClient(servers, use_pooling=True)
    direct = {f"{h}:{p}": Client((h, p)) for h, p in servers}
    for node in direct.values():
        node.flush_all()
    names = list(client.clients)
    # A server key for each node, and a real key placed elsewhere by itself.
    server_key: Dict[Optional[str], str] = {}
    for i in range(200):
        server_key.setdefault(client.snapshot.node_for(f"sk{i}"), f"sk{i}")
    assert set(server_key) == set(names)
    for name in names:
        sk = server_key[name]
        key = next(f"k{i}" for i in range(500) if client.snapshot.node_for(f"k{i}") != name)
        tk: Any = (sk, key)  # (the signatures name str/bytes keys only)
        assert client.set(tk, b"1")
        assert direct[name].get(key) == b"1"
        assert client.get(tk) == b"1"
        assert client.get(key) is None  # placed elsewhere by itself
        assert client.add(tk, b"x") is False
        assert client.replace(tk, b"2") is True
        assert client.append(tk, b"3") is True
        assert client.prepend(tk, b"0") is True
        assert client.get(tk) == b"023"
        assert client.get_many([tk, key]) == {tk: b"023"}
        assert client.get(tk, default="d") == b"023"
        assert client.get(key=tk) == b"023"
        assert client[tk] == b"023"
        assert client.incr(tk, 1) is None or True  # (not a number: memcached refuses)
        assert client.delete(tk) is True
        assert client.get(tk, "gone") == "gone"
        client[tk] = b"5"
        assert direct[name].get(key) == b"5"
        del client[tk]
        assert direct[name].get(key) is None
    assert no_slot_out(client)


@pytest.mark.parametrize("command", sorted(SINGLE_KEY_COMMANDS))
def test_an_unhashable_server_key_is_not_hidden_by_ignore_exc(
    memcached: MemcachedProcess, command: str
) -> None:
    """A ``(server_key, key)`` tuple whose server key cannot be routed (unhashable) is the
    caller's error: raised as before, whatever ignore_exc says (get_many raises it too),
    never answered with the default as if a node had failed."""
    before = stat(memcached, "cmd_get"), stat(memcached, "cmd_set")
    for ignore_exc in (False, True):
        client = HashClient([tcp(memcached)], ignore_exc=ignore_exc)
        with pytest.raises((TypeError, MemcacheIllegalInputError)):
            getattr(client, command)((["unhashable"], "k"), *SINGLE_KEY_COMMANDS[command])
        with pytest.raises((TypeError, MemcacheIllegalInputError)):
            client.get_many([(["unhashable"], "k")])
        assert not client._failures
    assert (stat(memcached, "cmd_get"), stat(memcached, "cmd_set")) == before


def test_tuple_keys_with_one_real_key_on_two_server_keys(
    memcached_nodes: List[MemcachedProcess],
) -> None:
    """``(server_key, key)`` routes by server_key: ``("a", k)`` and ``("b", k)`` are two
    items (on two nodes). get_many of both must answer both, as two get() calls do."""
    client = HashClient([tcp(n) for n in memcached_nodes], timeout=2, connect_timeout=2)
    key = tag()
    snap = client.snapshot
    names = [f"route{i}" for i in range(200)]
    first = names[0]
    other = next(n for n in names if snap.node_for(n) != snap.node_for(first))
    client.set((first, key), b"one")  # type: ignore[arg-type]
    client.set((other, key), b"two")  # type: ignore[arg-type]
    single = {
        (first, key): client.get((first, key)),  # type: ignore[arg-type]
        (other, key): client.get((other, key)),  # type: ignore[arg-type]
    }
    assert single == {(first, key): b"one", (other, key): b"two"}
    assert client.get_many([(first, key), (other, key)]) == single
    many = client.gets_many([(first, key), (other, key)])
    assert {k: v for k, (v, _) in many.items()} == single
