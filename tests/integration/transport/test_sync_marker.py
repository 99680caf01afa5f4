"""The resync marker against servers that refuse it."""

from __future__ import annotations

from typing import Callable, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.hashclients import tag
from support.helpers import KINDS, one_node_client, tcp
from support.servers import MemcachedProcess

from pymc import MemcacheProtocolError

ProxyFactory = Callable[[Tuple[str, int]], FaultProxy]


make = one_node_client


@pytest.fixture
def proxy(memcached: MemcachedProcess, fault_proxy: ProxyFactory) -> FaultProxy:
    return fault_proxy(tcp(memcached))


@pytest.mark.parametrize("kind", KINDS)
def test_marker_refused_by_a_server_claiming_1_6(kind: str, proxy: FaultProxy) -> None:
    """A server (or proxy) that says ``VERSION 1.6.x`` but answers ``mn`` with ``ERROR``.

    After the first sync (``version``) the client switches to ``mn``; from then on every
    request after a noreply command should still answer right (fall back to ``version``, or
    at worst one failure), not fail forever with a protocol error."""
    proxy.set_mode("rewrite", fn=lambda data: data.replace(b"MN\r\n", b"ERROR\r\n"))
    client = make(kind, proxy.server)
    key = tag()
    client.set(key, b"v0")
    client.set(key, b"v1", noreply=True)
    assert client.get(key) == b"v1"  # first sync: ``version``, learns 1.6
    outcomes = []
    for i in range(3):
        client.set(key, b"v%d" % (i + 2), noreply=True)
        try:
            outcomes.append(client.get(key))
        except Exception as exc:
            outcomes.append(type(exc).__name__)
    assert outcomes[1:] == [b"v3", b"v4"], outcomes


def test_marker_refusal_is_not_a_noreply_error(proxy: FaultProxy) -> None:
    """The marker's own ``ERROR`` is counted as an error line of a noreply command."""
    proxy.set_mode("rewrite", fn=lambda data: data.replace(b"MN\r\n", b"ERROR\r\n"))
    client = make("client", proxy.server)
    key = tag()
    client.set(key, b"v1", noreply=True)
    client.get(key)
    client.set(key, b"v2", noreply=True)  # no error from this command
    try:
        client.get(key)
    except MemcacheProtocolError:
        pass
    assert client.noreply_errors == 0
