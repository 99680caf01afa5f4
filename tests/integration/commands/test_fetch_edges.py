"""Defects an outside review found in issue 12's work (contrib backends, the on_command hook,
fetch/lease_get), each shown against real memcached servers."""

from __future__ import annotations

import json
from typing import Any, Tuple

import pytest
from support.helpers import tcp
from support.servers import MemcachedProcess

import pymc
import pymc.cluster
from pymc import MemcacheIllegalInputError


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
        # A waiter, while another caller holds the lease, sees a miss (the lease is no
        # item a read sees: issue 18).
        held = client.lease_get("doc-serde-2", 5)
        assert held.win
        waiter = client.lease_get("doc-serde-2", 5)
        assert waiter.won_elsewhere and waiter.status == "miss" and waiter.value is None
        # The value after a stale hit still goes through the serde.
        assert client.invalidate("doc-serde")
        stale = client.lease_get("doc-serde", 5)
        value: Any = stale.value
        assert stale.stale and value == {"a": 1}
    finally:
        client.close()


# ---------------------------------------------------------------------- Flask-Caching / cachelib


def test_meta_argument_checks_do_not_depend_on_earlier_calls(memcached: MemcachedProcess) -> None:
    """The mg flags are built once per combination (an lru_cache), but an untyped cache
    takes 30.0 for 30 and True for 1: a float lease_ttl, refused on a fresh process, was
    accepted once some caller had asked with the int."""
    client = pymc.Client(tcp(memcached))
    try:
        client.lease_get("typed-a", 30)
        with pytest.raises(MemcacheIllegalInputError, match="must be an int"):
            client.lease_get("typed-b", 30.0)  # type: ignore[arg-type]
        client.lease_get("typed-c", 30, 5)
        with pytest.raises(MemcacheIllegalInputError, match="must be an int"):
            client.lease_get("typed-d", 30, 5.0)  # type: ignore[arg-type]
        client.meta_get("typed-e", vivify_on_miss=1)
        with pytest.raises(MemcacheIllegalInputError, match="must be an int"):
            client.meta_get("typed-f", vivify_on_miss=True)
        for key in ("typed-b", "typed-d", "typed-f"):  # nothing was sent for them
            assert client.meta_get(key).status == "miss"
    finally:
        client.close()


@pytest.mark.parametrize("lease_ttl", [0, -1])
def test_a_lease_that_never_expires_or_never_holds_is_refused(
    memcached: MemcachedProcess, lease_ttl: int
) -> None:
    """``lease_ttl=0`` made a placeholder that never expires (memcached's ttl 0): were its
    winner killed before storing, every later fetch of the key would time out, forever.
    A negative one made a placeholder already expired: every caller won, no herd was held
    back. Both are refused, and nothing is sent."""
    client = pymc.Client(tcp(memcached))
    hashed = pymc.HashClient([tcp(memcached)])
    try:
        with pytest.raises(MemcacheIllegalInputError, match="lease_ttl"):
            client.lease_get("lease-ttl", lease_ttl)
        with pytest.raises(MemcacheIllegalInputError, match="lease_ttl"):
            client.fetch("lease-ttl", lambda: 1, lease_ttl=lease_ttl)
        with pytest.raises(MemcacheIllegalInputError, match="lease_ttl"):
            hashed.fetch("lease-ttl", lambda: 1, lease_ttl=lease_ttl)
        assert client.meta_get("lease-ttl").status == "miss"
        assert client.fetch("lease-ttl", lambda: 2, lease_ttl=1) == 2  # the least allowed
    finally:
        client.close()
        hashed.close()


# ---------------------------------------------------------------------- retries


# ---------------------------------------------------------------------- packaging


# ---------------------------------------------------------------------- the on_command hook


# ---------------------------------------------------------------------- timeouts by default


# ---------------------------------------------------------------------- Django
