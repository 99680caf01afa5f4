"""Client, PooledClient and HashClient answer and refuse the same."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.hashclients import BAD_KEYS, PREFIX, SINGLE_KEY_COMMANDS, tag
from support.helpers import KINDS, one_node_client, tcp
from support.servers import MemcachedProcess

from pymc import (
    HashClient,
    MemcacheUnknownCommandError,
    RetryingClient,
)


def test_hash_client_takes_keys_by_keyword(memcached: MemcachedProcess) -> None:
    with HashClient([tcp(memcached)], timeout=2.0) as client:
        retrying = RetryingClient(client)
        assert retrying.set(key="x", value=b"1", expire=0) is True
        assert client.get(key="x", default=None) == b"1"
        assert retrying.get(key="y", default="d") == "d"
        assert retrying.get_many(keys=["x"]) == {"x": b"1"}
        assert retrying.delete(key="x", noreply=False) is True


pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("command", sorted(SINGLE_KEY_COMMANDS))
def test_every_client_kind_answers_and_refuses_the_same(
    memcached: MemcachedProcess, command: str
) -> None:
    """For each single-key command: the same results on good keys and the same error type
    on each bad key from Client, PooledClient and HashClient (which leaves some checks to
    its node's client now)."""
    clients = {kind: one_node_client(kind, tcp(memcached), key_prefix=PREFIX) for kind in KINDS}
    outcomes: Dict[str, List[Any]] = {}
    for kind, client in clients.items():
        client.flush_all() if kind != "hash" else None
        seen: List[Any] = []
        for key in [f"good-{command}", *BAD_KEYS]:
            for setup in (None, b"7"):
                if setup is not None and isinstance(key, str) and key.startswith("good"):
                    clients["client"].set(key, setup)
                try:
                    seen.append(
                        ("ok", getattr(client, command)(key, *SINGLE_KEY_COMMANDS[command]))
                    )
                except Exception as exc:  # what is compared: its type
                    seen.append(("raised", type(exc).__name__))
                if isinstance(key, str) and key.startswith("good"):
                    clients["client"].delete(key)
        outcomes[kind] = [
            (o, v if o == "raised" or command not in ("gets", "cas") else type(v).__name__)
            for o, v in seen
        ]
    assert outcomes["pooled"] == outcomes["client"]
    assert outcomes["hash"] == outcomes["client"]


ProxyFactory = Callable[[Tuple[str, int]], FaultProxy]


make = one_node_client


@pytest.fixture
def proxy(memcached: MemcachedProcess, fault_proxy: ProxyFactory) -> FaultProxy:
    return fault_proxy(tcp(memcached))


def _bad_item(data: bytes) -> bytes:
    """A server whose retrieval answers end in a corrupt data block."""
    if b"VALUE " in data:
        return data.replace(b"\r\nEND\r\n", b"XXEND\r\n")
    return data


_FAULTS: Dict[str, Callable[[FaultProxy], None]] = {
    "garbage": lambda p: p.set_mode("garbage"),
    "server_error": lambda p: p.set_mode(
        "rewrite", fn=lambda d: b"SERVER_ERROR busy\r\n" * max(1, d.count(b"END\r\n"))
    ),
    "close": lambda p: p.set_mode("close"),
    "corrupt_block": lambda p: p.set_mode("rewrite", fn=_bad_item),
}


@pytest.mark.parametrize("fault", list(_FAULTS))
def test_ignore_exc_answers_the_same_on_every_client(
    fault: str, memcached: MemcachedProcess, fault_proxy: ProxyFactory
) -> None:
    """ignore_exc=True: every read command gives the same answer on Client, PooledClient and
    HashClient for the same failure."""
    key = tag()
    seen: Dict[str, List[Any]] = {}
    for kind in KINDS:
        proxy = fault_proxy(tcp(memcached))
        client = make(kind, proxy.server, ignore_exc=True)
        client.set(key, b"v")
        _FAULTS[fault](proxy)
        answers: List[Any] = []
        calls: List[Callable[[Any], Any]] = [
            lambda c: c.get(key, "dflt"),
            lambda c: c.get_many([key, key + "m"]),
            lambda c: c.gets(key, "dflt", "cdflt"),
            lambda c: c.gets_many([key]),
            lambda c: c.gat(key, 0, "dflt"),
            lambda c: c.gats(key, 0, "dflt", "cdflt"),
        ]
        for call in calls:
            try:
                answers.append(call(client))
            except Exception as exc:
                answers.append(type(exc).__name__)
        seen[kind] = answers
    assert seen["pooled"] == seen["client"], seen
    assert seen["hash"] == seen["client"], seen


def test_pooled_client_has_every_client_command(memcached: MemcachedProcess) -> None:
    """PooledClient is documented as taking Client's place; Client.cluster_config (the one
    ElastiCache command) is missing from it, so ``PooledClient(...).cluster_config()`` is
    an AttributeError instead of the server's answer."""

    pooled = make("pooled", tcp(memcached))
    with pytest.raises(MemcacheUnknownCommandError):
        pooled.cluster_config()
