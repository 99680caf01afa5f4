"""fetch()'s refresh and lease paths racing writers: a value put back or stored by a
read-through never hides a write that completed first (issue 18, second attack round)."""

from __future__ import annotations

import itertools
import time
from typing import Any, Dict, List

import pytest
from support.helpers import make_client
from support.servers import MemcachedProcess

from pymc import MemcacheError

pytestmark = pytest.mark.timeout(60)
KINDS = ["client", "pooled", "hash"]
_tags = itertools.count()


def tag() -> str:
    return f"race{next(_tags)}-{time.monotonic_ns() % 10**9}"


make = make_client


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", ["recache", "invalidate"])
def test_a_refused_refresh_never_puts_back_a_value_over_a_newer_write(
    nodes: List[MemcachedProcess], kind: str, how: str
) -> None:
    """A writer's set lands while the winner computes a value too large to store; memcached
    drops the key when it refuses that value (whatever the cas), and the old value the
    winner puts back must not come back in place of the writer's."""
    client = make(kind, nodes)
    writer = make(kind, nodes)
    try:
        key = tag()
        options: Dict[str, Any] = {}
        if how == "recache":
            assert client.set(key, b"old", 30)
            options["recache_ttl"] = 60
        else:
            assert client.set(key, b"old", 60)
            assert client.invalidate(key)

        def compute() -> bytes:
            assert writer.set(key, b"newer", 60)  # completes before the refresh stores
            return b"x" * (2 * 1024 * 1024)

        with pytest.raises(MemcacheError):
            client.fetch(key, compute, 60, **options)
        assert writer.get(key) in (b"newer", None)
        assert writer.meta_get(key).value in (b"newer", None)
    finally:
        client.close()
        writer.close()
