"""ElastiCacheClient's own options: a value that would make discovery silently never
succeed, or kill the poller thread, is refused at once with a ValueError."""

from __future__ import annotations

import math
import threading
from typing import Any, Callable, Iterator

import pytest
from support.helpers import tcp
from support.servers import MemcachedProcess

from pymc import ElastiCacheClient
from pymc.testing import ConfigEndpoint

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def endpoint(new_memcached: Callable[..., MemcachedProcess]) -> Iterator[ConfigEndpoint]:
    with ConfigEndpoint([tcp(new_memcached())]) as ep:
        yield ep


@pytest.mark.parametrize(
    "options",
    [
        {"discovery_timeout": 0},
        {"discovery_timeout": -1.0},
        {"discovery_timeout": math.nan},
        {"discovery_timeout": math.inf},
        {"poll_interval": math.nan},
        {"poll_interval": math.inf},
        {"poll_interval": -1.0},
    ],
)
def test_a_discovery_timeout_or_poll_interval_that_cannot_work_is_refused(
    endpoint: ConfigEndpoint, options: Any
) -> None:
    before = set(threading.enumerate())
    with pytest.raises(ValueError, match=r"discovery_timeout|poll_interval"):
        ElastiCacheClient(endpoint.server, timeout=1.0, **options)
    started = [t for t in set(threading.enumerate()) - before if t.name.startswith("pymc-")]
    assert not started  # no poller left behind


def test_a_tiny_discovery_timeout_still_discovers_eventually(endpoint: ConfigEndpoint) -> None:
    """A small positive deadline is taken as given (no silent default)."""
    client = ElastiCacheClient(endpoint.server, timeout=1.0, discovery_timeout=0.5)
    try:
        assert client.wait_ready(5)
        assert client.set("opt", b"v") and client.get("opt") == b"v"
    finally:
        client.close()


def test_a_very_long_poll_interval_keeps_the_poller_alive(endpoint: ConfigEndpoint) -> None:
    client = ElastiCacheClient(endpoint.server, timeout=1.0, poll_interval=1e12)
    try:
        assert client.wait_ready(5)
        poller = [t for t in threading.enumerate() if t.name.endswith(endpoint.server)]
        assert poller and all(t.is_alive() for t in poller)
        threading.Event().wait(0.2)
        assert all(t.is_alive() for t in poller)  # (its sleep did not overflow)
        assert client.refresh() is False
    finally:
        client.close()
    assert not any(t.is_alive() for t in poller)
