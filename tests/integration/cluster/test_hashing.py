"""Placement checked against where pylibmc stores keys on real servers."""

from __future__ import annotations

import socket
import uuid
from typing import Iterator, List, Mapping, Optional, Sequence

import pylibmc
import pymemcache
import pytest
from support.servers import MemcachedProcess, MemcachedStartError

from pymc.hashing import KetamaHash

pytestmark = pytest.mark.timeout(60)


def keys_held(server: MemcachedProcess, keys: Sequence[bytes]) -> set[bytes]:
    client = pymemcache.Client(server.address, connect_timeout=2, timeout=5)
    try:
        found: set[bytes] = set()
        for lo in range(0, len(keys), 200):
            found.update(client.get_many(list(keys[lo : lo + 200])))
        return found
    finally:
        client.close()


def live_ketama_check(servers: Sequence[MemcachedProcess], weights: Mapping[str, int]) -> None:
    tag = uuid.uuid4().hex[:8]
    keys: List[str] = [f"pymc-ketama-{tag}-{i}" for i in range(7000)]
    keys += [f"pymc-k\u00e9tama-{tag}-\u4e2d{i}\U0001f600" for i in range(3000)]
    specs = [f"{s.host}:{s.port}:{weights.get(s.server, 1)}" for s in servers]
    client = pylibmc.Client(specs, behaviors={"ketama_weighted": True})
    try:
        assert not client.set_multi({k: b"1" for k in keys})
    finally:
        client.disconnect_all()
    ring = KetamaHash([s.server for s in servers], weights)
    wanted = ring.get_nodes(keys)
    for server in servers:
        mine = {k.encode() if isinstance(k, str) else k for k in wanted.get(server.server, [])}
        assert keys_held(server, [k.encode() for k in keys]) == mine, server


def test_ketama_matches_where_pylibmc_stores_keys(memcached_nodes: List[MemcachedProcess]) -> None:
    weights = {memcached_nodes[0].server: 3, memcached_nodes[2].server: 2}
    live_ketama_check(memcached_nodes, weights)


@pytest.fixture
def server_on_default_port() -> Iterator[Optional[MemcachedProcess]]:
    probe = socket.socket()
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as memcached does
    try:
        probe.bind(("127.0.0.1", 11211))
    except OSError:
        pytest.skip("127.0.0.1:11211 is in use")
    finally:
        probe.close()
    server = MemcachedProcess()
    server.port = 11211
    try:
        server.start()
    except MemcachedStartError:
        server.close()
        pytest.skip("could not start memcached on 127.0.0.1:11211")
    yield server
    server.close()


def test_ketama_live_with_a_server_on_port_11211(
    memcached_nodes: List[MemcachedProcess], server_on_default_port: MemcachedProcess
) -> None:
    servers = [server_on_default_port, *memcached_nodes[:2]]
    live_ketama_check(servers, {servers[1].server: 2})
