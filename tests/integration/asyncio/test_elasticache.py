"""The asyncio ElastiCacheClient against real memcached nodes behind the emulated
configuration endpoint: discovery, a change of the node list, the plain-server fallback,
start-up faults that never misroute, and close() cancelling the poller task."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Dict, List, Tuple

import pytest
from support.servers import MemcachedProcess

from pymc.asyncio.elasticache import ElastiCacheClient
from pymc.exceptions import ClusterNotReadyError
from pymc.testing import ConfigEndpoint

pytestmark = pytest.mark.timeout(60)

Addr = Tuple[str, int]
FAST: Dict[str, Any] = dict(connect_timeout=1.0, timeout=1.0)


def addrs(nodes: List[MemcachedProcess]) -> List[Addr]:
    return [n.address for n in nodes]  # type: ignore[misc]


def run(coro: Awaitable[Any], timeout: float = 30) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def pollers() -> List[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("pymc-elasticache")]


def polling(ec: ElastiCacheClient) -> bool:
    return ec.polling  # (read afresh: mypy keeps an earlier assert's narrowing)


def test_discovers_and_follows(nodes: List[MemcachedProcess]) -> None:
    servers = addrs(nodes)
    with ConfigEndpoint(servers[:2]) as endpoint:

        async def main() -> None:
            ec = ElastiCacheClient(endpoint.address, poll_interval=0.2, **FAST)
            assert await ec.wait_ready(5)
            assert set(ec.nodes) == set(servers[:2])
            assert ec.config_version == 1
            assert await ec.set("ec-k", b"v")
            assert await ec.get("ec-k") == b"v"
            endpoint.set_nodes(servers[:3])
            for _ in range(100):
                if ec.config_version == 2:
                    break
                await asyncio.sleep(0.05)
            assert set(ec.nodes) == set(servers[:3])
            assert await ec.set_many({f"ec-{i}": b"x" for i in range(30)}) == []
            assert len(await ec.get_many([f"ec-{i}" for i in range(30)])) == 30
            assert ec.polling
            await ec.close()
            assert not polling(ec)
            assert pollers() == []

        run(main())


def test_first_command_waits_for_the_first_discovery(nodes: List[MemcachedProcess]) -> None:
    servers = addrs(nodes)
    with ConfigEndpoint(servers[:2]) as endpoint:

        async def main() -> None:
            ec = ElastiCacheClient(endpoint.address, **FAST)
            assert await ec.set("first-k", b"v")  # no ClusterNotReadyError
            assert await ec.get("first-k") == b"v"
            await ec.close()

        run(main())


def test_made_outside_a_loop(nodes: List[MemcachedProcess]) -> None:
    servers = addrs(nodes)
    with ConfigEndpoint(servers[:1]) as endpoint:
        ec = ElastiCacheClient(endpoint.address, **FAST)
        assert not ec.polling

        async def main() -> None:
            assert await ec.wait_ready(5)
            assert ec.polling
            await ec.close()

        run(main())


def test_plain_server_is_the_one_node(nodes: List[MemcachedProcess]) -> None:
    async def main() -> None:
        ec = ElastiCacheClient(nodes[0].address, **FAST)
        assert await ec.wait_ready(5)
        assert ec.plain
        assert ec.nodes == [nodes[0].address]
        assert await ec.set("plain-k", b"v")
        await asyncio.sleep(0.05)
        assert not ec.polling  # a plain server is not polled
        await ec.close()

    run(main())


@pytest.mark.parametrize("mode", ["error", "garbage", "malformed", "stall", "too_many", "down"])
def test_startup_fault_never_misroutes(nodes: List[MemcachedProcess], mode: str) -> None:
    servers = addrs(nodes)
    with ConfigEndpoint(servers[:2]) as endpoint:
        endpoint.set_mode(mode)

        async def main() -> None:
            ec = ElastiCacheClient(
                endpoint.address, poll_interval=0.2, discovery_timeout=0.5, **FAST
            )
            if mode == "error":  # a bare ERROR twice: a plain server, by the sync rules
                assert await ec.wait_ready(5)
                assert ec.plain
            else:
                with pytest.raises(ClusterNotReadyError):
                    await ec.get("nr-k")
                assert not ec.ready and ec.nodes == []
                endpoint.set_mode("normal")
                assert await ec.wait_ready(10)
                assert set(ec.nodes) == set(servers[:2])  # never the endpoint itself
            await ec.close()

        run(main(), timeout=40)


def test_ignore_exc_before_ready_reads_misses() -> None:
    with ConfigEndpoint([]) as endpoint:
        endpoint.set_mode("stall")

        async def main() -> None:
            ec = ElastiCacheClient(endpoint.address, discovery_timeout=0.3, ignore_exc=True, **FAST)
            assert await ec.get("k", b"d") == b"d"
            assert await ec.get_many(["a", "b"]) == {}
            assert await ec.set("k", b"v") is False
            await ec.close()

        run(main())


def test_ready_timeout_in_async_with() -> None:
    with ConfigEndpoint([]) as endpoint:
        endpoint.set_mode("stall")

        async def main() -> None:
            ec = ElastiCacheClient(endpoint.address, ready_timeout=0.3, **FAST)
            with pytest.raises(ClusterNotReadyError):
                async with ec:
                    pass
            assert not ec.polling

        run(main())


def test_close_cancels_a_discovery_in_flight() -> None:
    with ConfigEndpoint([]) as endpoint:
        endpoint.set_mode("stall")

        async def main() -> None:
            ec = ElastiCacheClient(endpoint.address, discovery_timeout=30, **FAST)
            await asyncio.sleep(0.1)
            assert ec.polling
            await asyncio.wait_for(ec.close(), 2)
            assert not polling(ec) and pollers() == []

        run(main())
