"""Cancellation at every await of every public command of the cluster clients (HashClient,
ElastiCacheClient), as test_async_cancel does it for Client and PooledClient: the command's
task is cancelled at the n-th wait of any connection (connect, write, reply), for n = 1, 2,
... until the command completes first. After each: no slot of any node's pool is lost, no
connection with a reply unread is kept, and the next commands return the right values."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Dict, List, Tuple

import pytest
from support.servers import MemcachedProcess

import pymc
from pymc.asyncio.cluster import HashClient
from pymc.asyncio.elasticache import ElastiCacheClient
from pymc.testing import ConfigEndpoint

from .test_async_cancel import CALLS, CancelAt, cancel_at

__all__ = ["cancel_at"]  # (the fixture)

pytestmark = pytest.mark.timeout(60)

#: Keys that land on every node (of 3): the many-key commands fan out.
SPREAD = [f"s{i}" for i in range(9)]
VALUES = {k: f"value of {k}".encode() for k in SPREAD}

#: Every public command of the cluster clients (those of Client they have, and theirs).
CLUSTER_CALLS: Dict[str, Callable[[Any], Awaitable[Any]]] = {
    **{name: call for name, call in CALLS.items() if hasattr(HashClient, name)},
    "set_many": lambda c: c.set_many(VALUES),
    "set_multi": lambda c: c.set_multi(VALUES),
    "get_many": lambda c: c.get_many(SPREAD),
    "get_multi": lambda c: c.get_multi(SPREAD),
    "gets_many": lambda c: c.gets_many(SPREAD),
    "gets_multi": lambda c: c.gets_multi(SPREAD),
    "delete_many": lambda c: c.delete_many([f"d{i}" for i in range(9)]),
    "delete_multi": lambda c: c.delete_multi([f"d{i}" for i in range(9)]),
    "touch_many": lambda c: c.touch_many(SPREAD, 0),
    "meta_get_many": lambda c: c.meta_get_many(SPREAD),
    "meta_set_many": lambda c: c.meta_set_many({f"m{i}": b"v" for i in range(9)}),
    "meta_delete_many": lambda c: c.meta_delete_many([f"d{i}" for i in range(9)]),
}


def public_coroutines(cls: type) -> set[str]:
    return {
        name
        for name in dir(cls)
        if not name.startswith("_") and asyncio.iscoroutinefunction(getattr(cls, name))
    }


def test_every_command_is_covered() -> None:
    closing = {"close", "disconnect_all"}
    assert set(CLUSTER_CALLS) == public_coroutines(HashClient) - closing
    # (refresh and wait_ready: see test_cancel_discovery_at_every_step)
    assert public_coroutines(ElastiCacheClient) - public_coroutines(HashClient) == {
        "refresh",
        "wait_ready",
    }


async def check_after(client: Any, tag: int) -> None:
    """No slot lost, nothing dirty kept, and right values from every node."""
    for name, pool in client.clients.items():
        stats = pool.client_pool.stats()
        assert stats["in_use"] == 0, f"a slot of {name} was lost"
        for conn, _ in pool.client_pool._idle:
            assert conn.is_clean(), f"{name} kept a connection with a reply unread"
    # Keys no command writes: a write that was cancelled after its bytes left may still be
    # applied by the server, after a later write of the same key on another connection
    # (memcached's threads run the two connections in any order), so the keys of the
    # cancelled command prove nothing either way.
    keys = [f"after-{k}" for k in SPREAD]
    values = {k: b"%s after %d" % (k.encode(), tag) for k in keys}
    assert await client.set_many(values) == []
    assert await client.get_many([*keys, "nope"]) == values
    for key in keys[:3]:
        assert await client.get(key) == values[key]


async def cancel_at_each_wait(
    client: Any, call: Callable[[Any], Awaitable[Any]], hook: CancelAt, fresh: bool
) -> int:
    """Run ``call(client)`` cancelled at its 1st, 2nd, ... wait until it completes first;
    the number of waits it made. ``fresh``: with no open connection (its connects too)."""
    await client.set("k", b"v")
    at = 0
    while True:
        at += 1
        assert at < 80, "more awaits than any command makes"
        if fresh:
            for pool in client.clients.values():
                await pool.close()
        hook.at, hook.count = at, 0
        task = asyncio.ensure_future(call(client))
        hook.target = task
        try:
            await task
            cancelled = False
        except asyncio.CancelledError:
            assert task.cancelled(), "the caller's task was not the one cancelled"
            cancelled = True
        except pymc.MemcacheError:
            cancelled = False
        waits = hook.count
        hook.at, hook.target = 0, None
        await check_after(client, at)
        if not cancelled:
            assert waits < at
            return at - 1


CLIENTS = ["HashClient", "ElastiCacheClient"]


@pytest.mark.parametrize("fresh", [False, True], ids=["open", "connecting"])
@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("name", sorted(CLUSTER_CALLS))
def test_cancel_at_every_await(
    nodes: List[MemcachedProcess], cancel_at: CancelAt, kind: str, name: str, fresh: bool
) -> None:
    servers: List[Tuple[str, int]] = [n.address for n in nodes[:3]]  # type: ignore[misc]
    options: Dict[str, Any] = dict(
        use_pooling=True, max_pool_size=2, timeout=2, connect_timeout=2, key_prefix=f"cx{name}-"
    )

    async def main() -> int:
        if kind == "HashClient":
            client: Any = HashClient(servers, **options)
            waits = await cancel_at_each_wait(client, CLUSTER_CALLS[name], cancel_at, fresh)
            await client.close()
            return waits
        with ConfigEndpoint(servers) as endpoint:
            client = ElastiCacheClient(endpoint.address, **options)
            assert await client.wait_ready(5)
            waits = await cancel_at_each_wait(client, CLUSTER_CALLS[name], cancel_at, fresh)
            assert client.polling
            await client.close()
            return waits

    waits = arun(main())
    assert waits >= 0


def arun(coro: Awaitable[Any], seconds: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(coro, seconds))


async def cancelled_after(ticks: int, call: Awaitable[Any]) -> bool:
    """Run ``call``, cancelled after ``ticks`` turns of the loop unless done by then;
    whether it completed."""
    task = asyncio.ensure_future(call)
    for _ in range(ticks):
        await asyncio.sleep(0)
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return False
    return True


@pytest.mark.parametrize("call", ["refresh", "wait_ready", "first_command"])
def test_cancel_discovery_at_every_step(nodes: List[MemcachedProcess], call: str) -> None:
    """ElastiCacheClient's own coroutines (and a first command, which waits for the first
    discovery), cancelled after 0, 1, 2, ... turns of the loop
    (discovery's waits are on its own connections): the client stays whole (the node set,
    the poller, the next refresh) and serves right values."""
    servers: List[Tuple[str, int]] = [n.address for n in nodes[:3]]  # type: ignore[misc]
    options: Dict[str, Any] = dict(timeout=2, connect_timeout=2, key_prefix=f"cd{call}-")

    async def one(endpoint: ConfigEndpoint, ticks: int) -> bool:
        ec = ElastiCacheClient(endpoint.address, poll_interval=60, **options)
        if call == "refresh":
            assert await ec.wait_ready(5)
            completed = await cancelled_after(ticks, ec.refresh())
        elif call == "wait_ready":
            completed = await cancelled_after(ticks, ec.wait_ready(5))
        else:  # a command, which first waits for the first discovery
            completed = await cancelled_after(ticks, ec.get_many(SPREAD))
        assert await ec.wait_ready(5)
        assert await asyncio.wait_for(ec.refresh(), 3) is False  # (nothing changed)
        assert set(ec.nodes) == set(servers) and ec.config_version == 1
        assert ec.polling
        await check_after(ec, ticks)
        await ec.close()
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("pymc")]
        return completed

    async def main() -> int:
        with ConfigEndpoint(servers) as endpoint:
            for ticks in range(200):
                if await one(endpoint, ticks):
                    return ticks
        raise AssertionError("never completed")

    ticks = arun(main())
    assert ticks > 0
