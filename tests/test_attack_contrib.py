"""Defects an outside review found in issue 12's work (contrib backends, the on_command hook,
fetch/lease_get), each shown against real memcached servers."""

from __future__ import annotations

import json
from typing import Any, Tuple

import pytest
from support.helpers import tcp
from support.servers import MemcachedProcess

import pymc


class DocumentedJsonSerde:
    """The JSON serde of pymemcache's documentation: it knows its own flags and refuses
    any other, as a careful serde does."""

    def serialize(self, key: Any, value: Any) -> Tuple[bytes, int]:
        if isinstance(value, str):
            return value.encode("utf-8"), 1
        return json.dumps(value).encode("utf-8"), 2

    def deserialize(self, key: Any, value: bytes, flags: int) -> Any:
        if flags == 1:
            return value.decode("utf-8")
        if flags == 2:
            return json.loads(value.decode("utf-8"))
        raise ValueError(f"unknown serialization format {flags}")


# ---------------------------------------------------------------------- fetch and its lease


@pytest.mark.timeout(20)
def test_fetch_with_a_serde_that_knows_only_its_own_flags(memcached: MemcachedProcess) -> None:
    """A miss hands the winner (and every waiter) the lease's empty placeholder, which is
    no stored value: it must not go through the serde. Before the fix the winner's
    lease_get raised the serde's ValueError, and the lease it had won stayed taken, so the
    next caller waited out lease_ttl and got MemcacheLeaseTimeoutError."""
    client = pymc.Client(tcp(memcached), serde=DocumentedJsonSerde())
    try:
        assert client.fetch("doc-serde", lambda: {"a": 1}, lease_ttl=5) == {"a": 1}
        assert client.fetch("doc-serde", lambda: {"a": 2}, lease_ttl=5) == {"a": 1}
        # A waiter, while another caller holds the lease, sees the placeholder too.
        held = client.lease_get("doc-serde-2", 5)
        assert held.win
        waiter = client.lease_get("doc-serde-2", 5)
        assert waiter.won_elsewhere and waiter.status == "hit"
        # The value after a stale hit still goes through the serde.
        assert client.invalidate("doc-serde")
        stale = client.lease_get("doc-serde", 5)
        value: Any = stale.value
        assert stale.stale and value == {"a": 1}
    finally:
        client.close()
