"""HashClient builds its locator once, and weighted ketama places keys like pylibmc."""

from __future__ import annotations

import functools
import uuid
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import pylibmc
import pytest

from pymc import HashClient, KetamaHash

pytestmark = pytest.mark.timeout(30)


def fake_nodes(count: int) -> List[Tuple[str, int]]:
    """Loopback addresses that no request in these tests is sent to."""
    return [("127.0.0.1", 40000 + i) for i in range(count)]


class CountingKetama(KetamaHash):
    """A KetamaHash that counts every ring it builds (construction or add_node) and records
    whether the watched client's request lock was held at the time."""

    __slots__ = ()
    builds: ClassVar[int] = 0
    added: ClassVar[int] = 0
    watched: ClassVar[Optional[HashClient]] = None
    locked_during_build: ClassVar[List[bool]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        CountingKetama.builds += 1
        CountingKetama._record()
        super().__init__(*args, **kwargs)

    def add_node(self, node: str, weight: int = 1) -> None:
        CountingKetama.added += 1
        CountingKetama._record()
        super().add_node(node, weight)

    @staticmethod
    def _record() -> None:
        client = CountingKetama.watched
        if client is not None:
            CountingKetama.locked_during_build.append(client._lock.locked())

    @classmethod
    def reset(cls, client: Optional[HashClient] = None) -> int:
        done = cls.builds + cls.added
        cls.builds = cls.added = 0
        cls.watched = client
        cls.locked_during_build = []
        return done

    @classmethod
    def rings(cls) -> int:
        return cls.builds + cls.added


def test_constructor_and_set_servers_build_one_locator_for_60_nodes() -> None:
    CountingKetama.reset()
    servers = fake_nodes(60)
    client = HashClient(servers, hasher=CountingKetama)
    try:
        assert CountingKetama.rings() == 1, "one locator for the first snapshot, not one a node"
        assert len(client.snapshot.locator) == 60
        assert sorted(client.snapshot.locator.nodes) == sorted(client.snapshot.names)

        CountingKetama.reset(client)
        assert client.set_servers(fake_nodes(120)[60:])
        assert CountingKetama.rings() == 1
        assert CountingKetama.locked_during_build == [False]
        assert len(client.snapshot.locator) == 60

        CountingKetama.reset(client)
        client.add_server("127.0.0.1", 41000)
        client.remove_server("127.0.0.1", 40060)
        assert CountingKetama.rings() == 2
        assert CountingKetama.locked_during_build == [False, False]
    finally:
        CountingKetama.reset()
        client.close()


def pylibmc_nodes(nodes: List[str], weights: Dict[str, int], keys: List[str]) -> List[str]:
    specs = [f"{node}:{weights.get(node, 1)}" for node in nodes]
    mc = pylibmc.Client(specs, behaviors={"ketama_weighted": True})
    return [nodes[mc.hash(key)] for key in keys]


def test_weighted_ketama_through_hash_client_places_keys_like_pylibmc() -> None:
    servers = [("127.0.0.1", 41001), ("127.0.0.1", 11211), ("127.0.0.7", 41003), ("::1", 41004)]
    servers.append(("127.0.0.1", 41005))
    names = ["127.0.0.1:41001", "127.0.0.1:11211", "127.0.0.7:41003", "[::1]:41004"]
    names.append("127.0.0.1:41005")
    weights = {names[0]: 5, names[1]: 1, names[2]: 3, names[3]: 2}  # the fifth weighs 1
    client = HashClient(servers, hasher=functools.partial(KetamaHash, weights=weights))
    try:
        assert list(client.snapshot.names) == names
        keys = [f"weighted-{i}-{uuid.uuid4().hex[:4]}" for i in range(6000)]
        expected = pylibmc_nodes(names, weights, keys)
        got = [client.snapshot.node_for(k) for k in keys]
        mismatches = [k for k, a, b in zip(keys, got, expected) if a != b]
        assert mismatches == []
        assert set(expected) == set(names)
        assert client.snapshot.locator.weights == {**weights, names[4]: 1}
    finally:
        client.close()
