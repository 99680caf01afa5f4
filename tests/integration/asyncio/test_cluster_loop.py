"""The loop keeps ticking (a 10 ms ticker is never late by more than a small bound) while a
node of a HashClient is black-holed (a connect that never completes, a proxy that stops
forwarding: commands, the failover, the probe of the dead node), and while an
ElastiCacheClient's configuration endpoint is black-holed (wait_ready, the poller,
refresh)."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Dict, List, Tuple

import pytest
from support.servers import MemcachedProcess

import pymc
from pymc.asyncio.cluster import HashClient
from pymc.asyncio.elasticache import ElastiCacheClient
from pymc.testing import ConfigEndpoint

from ..elasticache.test_discovery_deadline import BlackHoles, holes
from .test_async_client import ticking

__all__ = ["holes"]  # (the fixture)

pytestmark = pytest.mark.timeout(60)

Addr = Tuple[str, int]
#: The most a 10 ms tick may be late by (a blocking connect or read would be 300 ms; a
#: loaded machine made one 87 ms late once).
LATE = 0.15
BLACK_HOLED_DISCOVERY: Dict[str, Any] = dict(
    connect_timeout=0.3, timeout=0.3, discovery_timeout=0.3
)


def arun(coro: Awaitable[Any], seconds: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(coro, seconds))


@pytest.mark.parametrize("hole", ["connect", "stall"])
def test_ticks_while_a_node_is_black_holed(
    nodes: List[MemcachedProcess],
    holes: BlackHoles,
    fault_proxy: Callable[[Addr], Any],
    hole: str,
) -> None:
    if hole == "connect":
        black: Addr = holes.full()
    else:
        proxy = fault_proxy(nodes[0].address)  # type: ignore[arg-type]
        proxy.set_mode("stall")
        black = ("127.0.0.1", proxy.port)
    servers: List[Any] = [black, nodes[1].address, nodes[2].address]
    black_name = pymc.client.server_name(black)
    events: List[str] = []

    async def main() -> float:
        client = HashClient(
            servers,
            use_pooling=True,
            connect_timeout=0.3,
            timeout=0.3,
            retry_attempts=2,
            retry_timeout=0,
            dead_timeout=0.1,
            ignore_exc=True,
            key_prefix=b"tick-",
            on_event=lambda event, node, info: events.append(event),
        )
        keys = [f"t{i}" for i in range(30)]
        on_black = next(k for k in keys if client.snapshot.node_for(k) == black_name)

        async def work() -> None:
            assert await client.get(on_black, b"d") == b"d"  # a failure (by its deadline)
            failed = await client.set_many({k: b"v" for k in keys})  # the second: ejected
            assert failed and set(failed) < set(keys)
            assert black_name not in client.snapshot.names
            assert await client.set_many({k: b"v" for k in keys}) == []  # (elsewhere)
            assert await client.get_many(keys) == {k: b"v" for k in keys}
            await asyncio.sleep(0.15)
            await client.get(on_black)  # (dead_timeout passed) the probe starts, and hangs
            await asyncio.sleep(0.4)  # ... the probe fails by its deadline meanwhile
            assert black_name not in client.snapshot.names
            await client.close()

        gap = await ticking(work)
        assert events.count("node_ejected") == 1
        return gap

    assert arun(main()) < LATE


@pytest.mark.parametrize("hole", ["connect", "stall"])
def test_ticks_while_the_config_endpoint_is_black_holed_at_start(
    nodes: List[MemcachedProcess], holes: BlackHoles, hole: str
) -> None:
    with ConfigEndpoint([n.address for n in nodes[:2]]) as endpoint:  # type: ignore[misc]
        endpoint.set_mode("stall")
        black = holes.full() if hole == "connect" else endpoint.address

        async def main() -> float:
            async def starting() -> None:  # the first discovery, wait_ready, a command
                ec = ElastiCacheClient(black, **BLACK_HOLED_DISCOVERY)
                assert not await ec.wait_ready(0.5)
                with pytest.raises(pymc.exceptions.ClusterNotReadyError):
                    await ec.get("k")
                await ec.close()

            return await ticking(starting)

        assert arun(main()) < LATE


def test_ticks_while_the_config_endpoint_stops_answering(nodes: List[MemcachedProcess]) -> None:
    servers: List[Addr] = [n.address for n in nodes[:2]]  # type: ignore[misc]
    with ConfigEndpoint(servers) as endpoint:

        async def main() -> float:
            ec = ElastiCacheClient(endpoint.address, poll_interval=0.1, **BLACK_HOLED_DISCOVERY)
            assert await ec.wait_ready(5)

            async def polling() -> None:  # the poller and refresh, the nodes still served
                endpoint.set_mode("stall")
                assert await ec.refresh() is False
                for i in range(5):  # polls go on meanwhile
                    assert await ec.set(f"poll-{i}", b"v")
                    await asyncio.sleep(0.1)
                assert set(ec.nodes) == set(servers)
                await ec.close()

            return await ticking(polling)

        assert arun(main()) < LATE
