"""issue 19: a fan-out sends every node its request back to back, after one poll over all
its pooled connections for stray bytes (``pymc.client.quiet_connections``) instead of one
look per connection. The guarantees of that look stay: bytes nobody asked for (a late
duplicate) never answer the next command, and a connection the server closed is never sent
on.
"""

from __future__ import annotations

import socket
import time
from typing import Callable, Dict, List

import pytest
from support.helpers import tcp
from support.servers import MemcachedProcess

import pymc.pool
import pymc.pool.objectpool
from pymc import Client, HashClient
from pymc.client import quiet_connections, server_name


def keys_on_every_node(client: HashClient, per_node: int = 3) -> Dict[str, List[str]]:
    """``{node: [keys placed there]}``, ``per_node`` keys for every node."""
    found: Dict[str, List[str]] = {name: [] for name in client.snapshot.names}
    i = 0
    while any(len(keys) < per_node for keys in found.values()):
        key = f"fanout-send-{i}"
        name = client.snapshot.node_for(key)
        assert name is not None
        if len(found[name]) < per_node:
            found[name].append(key)
        i += 1
        assert i < 10000
    return found


def wait_readable(sock: socket.socket, seconds: float = 2.0) -> None:
    """Until bytes (or the server's close) wait on ``sock``, without reading them."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) is not None:
                return
        except BlockingIOError:
            time.sleep(0.005)
    raise AssertionError("nothing came")


@pytest.mark.timeout(60)
def test_quiet_connections_one_poll_over_all(memcached: MemcachedProcess) -> None:
    """Each connection's answer: not connected, quiet, holding stray bytes, closed by the
    server (its EOF waits unread)."""
    address = tcp(memcached)
    fresh = Client(address)
    quiet, stray, closed = Client(address), Client(address), Client(address)
    for conn in (quiet, stray, closed):
        assert conn.version()
    assert stray.sock is not None and closed.sock is not None
    stray.sock.sendall(b"version\r\n")  # its answer: bytes nobody will ask for
    wait_readable(stray.sock)
    closed.sock.sendall(b"quit\r\n")  # the server closes its end
    wait_readable(closed.sock)
    try:
        assert quiet_connections([fresh, quiet, stray, closed]) == [False, True, False, False]
        assert quiet_connections([]) == []
    finally:
        for conn in (fresh, quiet, stray, closed):
            conn.close()


@pytest.fixture
def no_idle_look(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pools reuse an idle connection without their own look (see CHECK_IDLE_AFTER), so
    only the fan-out's look before sending can find what waits on it."""
    monkeypatch.setattr(pymc.pool.objectpool, "CHECK_IDLE_AFTER", 3600.0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["get_many", "gets_many"])
def test_stray_bytes_on_a_pooled_connection_never_answer_the_fan_out(
    nodes: List[MemcachedProcess], command: str, no_idle_look: None
) -> None:
    """A pooled connection of one node holds a late duplicate of an old reply (an old
    value of a key the fan-out asks for): the fan-out starts over on a new connection for
    that node and answers the key's new value, every node's keys, and no failure."""
    events: List[str] = []
    client = HashClient([tcp(n) for n in nodes], on_event=lambda e, n, i: events.append(e))
    writer = HashClient([tcp(n) for n in nodes])
    try:
        by_node = keys_on_every_node(client)
        keys = [k for group in by_node.values() for k in group]
        for key in keys:
            writer.set(key, b"old")
        assert len(client.get_many(keys)) == len(keys)  # every node has a pooled connection
        victim = sorted(by_node)[1]
        key = by_node[victim][0]
        with client.clients[victim].client_pool.get_and_release() as conn:
            assert conn.sock is not None
            conn.sock.sendall(b"get " + key.encode() + b"\r\n")  # its reply: left unread
            wait_readable(conn.sock)
        for k in keys:
            writer.set(k, b"new")
        got = getattr(client, command)(keys)
        values = {k: (v[0] if command == "gets_many" else v) for k, v in got.items()}
        assert values == {k: b"new" for k in keys}
        assert events == []
        assert not client._failures
    finally:
        client.close()
        writer.close()


@pytest.mark.timeout(60)
def test_a_pooled_connection_the_server_closed_is_not_sent_on(
    nodes: List[MemcachedProcess],
    new_memcached: Callable[..., MemcachedProcess],
    no_idle_look: None,
) -> None:
    """A node restarted between two fan-outs (its pooled connection holds the close): the
    second fan-out reconnects to it before sending, answers every key, and counts no
    failure (a request sent on the closed connection fails: the close is read as its
    reply)."""
    extra = new_memcached()
    events: List[str] = []
    servers = [tcp(n) for n in nodes[:2]] + [tcp(extra)]
    client = HashClient(servers, on_event=lambda e, n, i: events.append(e))
    try:
        by_node = keys_on_every_node(client)
        keys = [k for group in by_node.values() for k in group]
        for key in keys:
            client.set(key, b"v")
        assert len(client.get_many(keys)) == len(keys)
        name = server_name(tcp(extra))
        with client.clients[name].client_pool.get_and_release() as conn:
            sock = conn.sock
        extra.restart()
        assert sock is not None
        wait_readable(sock)  # the close waits, unread
        with Client(tcp(extra)) as direct:
            for key in by_node[name]:
                direct.set(key, b"v")
        assert client.get_many(keys) == {k: b"v" for k in keys}
        assert events == []
        assert not client._failures
    finally:
        client.close()
