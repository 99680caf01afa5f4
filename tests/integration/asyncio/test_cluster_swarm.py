"""A swarm over the asyncio HashClient: hundreds of tasks with random timeouts of a few
ms, keyed and many-key commands mixed, over 3 nodes, one behind a delaying proxy. No task
ever sees a value that is not its key's, no node is ejected for a caller's timeout, and
every pool slot of every node works afterwards."""

from __future__ import annotations

import asyncio
import random
from typing import Any, Awaitable, Callable, List, Tuple

import pytest
from support.servers import MemcachedProcess

import pymc
from pymc.asyncio.cluster import HashClient

pytestmark = pytest.mark.timeout(60)

TASKS, ROUNDS, SLOTS = 300, 8, 8


async def within(seconds: float, call: Awaitable[Any]) -> Any:
    """``call`` under ``asyncio.timeout`` (``wait_for`` before Python 3.11)."""
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:
        return await asyncio.wait_for(call, seconds)
    async with timeout(seconds):
        return await call


def value_of(key: str) -> bytes:
    return b"value of " + key.encode()


def meta_value(result: Any) -> Any:
    return result.value


def gets_values(result: Any) -> Any:
    return {k: v for k, (v, _) in result.items()}


def test_swarm_over_three_nodes_one_delayed(
    nodes: List[MemcachedProcess], fault_proxy: Callable[..., Any]
) -> None:
    proxy = fault_proxy(nodes[0].address)
    servers = [("127.0.0.1", proxy.port), nodes[1].address, nodes[2].address]
    keys = [f"sw-{i}" for i in range(TASKS)]
    rng = random.Random(21)
    events: List[Tuple[str, str]] = []

    async def main() -> Tuple[int, int, int]:
        client = HashClient(
            servers,
            use_pooling=True,
            max_pool_size=SLOTS,
            pool_timeout=10,
            timeout=2,
            connect_timeout=2,
            key_prefix=b"swarm-",
            on_event=lambda event, node, info: events.append((event, node)),
        )
        assert await client.set_many({k: value_of(k) for k in keys}) == []
        proxy.set_mode("delay", seconds=0.003)
        wrong = timeouts = done = 0

        def ops(i: int) -> List[Tuple[Callable[[], Awaitable[Any]], Callable[[Any], Any], Any]]:
            """(call, what to compare, the right value) for task ``i``."""
            key = keys[i]
            group = [keys[(i + j * 37) % TASKS] for j in range(4)]  # (on every node)
            right = {k: value_of(k) for k in group}
            return [
                (lambda: client.get(key), bytes, value_of(key)),
                (lambda: client.get_many(group), dict, right),
                (lambda: client.set(key, value_of(key)), bool, True),
                (lambda: client.set_many(right), list, []),
                (lambda: client.gets_many(group), gets_values, right),
                (lambda: client.meta_get(key), meta_value, value_of(key)),
                (lambda: client.meta_get_many(group), dict, right),
                (lambda: client.touch_many(group, 0), dict, dict.fromkeys(group, True)),
                (lambda: client.fetch(key, lambda: b"computed"), bytes, value_of(key)),
            ]

        def deadline() -> float:
            """A few ms mostly; one call in four may take its time (its check then runs on
            connections that interrupted calls gave up)."""
            return rng.uniform(0.001, 0.01) if rng.random() < 0.75 else 1.0

        async def worker(i: int) -> None:
            nonlocal wrong, timeouts, done
            choices = ops(i)
            for r in range(ROUNDS):
                call, shape, right = choices[(i + r) % len(choices)]
                try:
                    result = await within(deadline(), call())
                except asyncio.TimeoutError:
                    timeouts += 1
                    continue
                done += 1
                if shape(result) != right:
                    wrong += 1

        await asyncio.gather(*(worker(i) for i in range(TASKS)))
        proxy.set_mode("pass")
        assert set(client.snapshot.names) == {pymc.client.server_name(s) for s in servers}
        for name, pool in client.clients.items():
            assert pool.client_pool.stats()["in_use"] == 0, f"a slot of {name} was lost"
            for conn, _ in pool.client_pool._idle:
                assert conn.is_clean(), f"{name} kept a connection with a reply unread"
        # Every slot usable: more concurrent commands than there are slots, all right.
        results = await asyncio.gather(*(client.get(k) for k in keys[: SLOTS * 3 * 4]))
        assert results == [value_of(k) for k in keys[: SLOTS * 3 * 4]]
        many = await asyncio.gather(*(client.get_many(keys[i::40]) for i in range(40)))
        assert many == [{k: value_of(k) for k in keys[i::40]} for i in range(40)]
        assert all(p.client_pool.stats()["in_use"] == 0 for p in client.clients.values())
        await client.close()
        return wrong, timeouts, done

    wrong, timeouts, done = asyncio.run(asyncio.wait_for(main(), 50))
    assert wrong == 0
    assert timeouts > 0 and done > 0  # the timeouts did interrupt commands, not all
    assert events == []  # (a caller's timeout is no failure of the node)
