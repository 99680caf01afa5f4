"""HashClient.fetch() with ignore_exc: a cache that fails costs no second compute(), and an
error of compute() itself (even a MemcacheError: compute may use a cache of its own) is
raised as it was, after one call."""

from __future__ import annotations

from typing import Any, Callable, Iterator, List, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.helpers import tcp
from support.servers import MemcachedProcess

from pymc import HashClient, MemcacheServerError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def node(memcached: MemcachedProcess) -> Iterator[MemcachedProcess]:
    if not memcached.is_running():
        memcached.start()
    yield memcached


@pytest.mark.parametrize("where", ["up", "down"])
def test_an_error_of_compute_is_raised_after_one_call(node: MemcachedProcess, where: str) -> None:
    address = tcp(node) if where == "up" else ("127.0.0.1", 1)
    client = HashClient([address], ignore_exc=True, connect_timeout=0.5, timeout=2.0)
    calls: List[int] = []

    def compute() -> bytes:
        calls.append(1)
        raise MemcacheServerError("the cache compute() reads from failed")

    try:
        with pytest.raises(MemcacheServerError, match="compute"):
            client.fetch(f"ign-{where}", compute, 60)
        assert calls == [1]
    finally:
        client.close()


def test_a_node_failing_after_compute_costs_no_second_compute(
    node: MemcachedProcess, fault_proxy: Callable[[Tuple[str, int]], FaultProxy]
) -> None:
    proxy = fault_proxy(tcp(node))
    client = HashClient([proxy.server], ignore_exc=True, timeout=1.0, retry_attempts=0)
    calls: List[int] = []

    def compute() -> Any:
        calls.append(1)
        proxy.set_mode("reset")  # the node goes while the value is computed
        return b"computed"

    try:
        assert client.fetch("ign-after", compute, 60) == b"computed"
        assert calls == [1]
    finally:
        client.close()
