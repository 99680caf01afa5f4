"""Hostile tests of the single-node asyncio clients (Client, PooledClient, RetryingClient):
interruptions by ``asyncio.timeout``/``wait_for`` rather than ``task.cancel()``, a client
that outlives its event loop, pools whose waiters give up, servers that drip, refuse or
misbehave. Each test targets a way the clients could return a wrong value, lose a pool
slot, hang, or raise something other than what the sync client raises."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable

import pytest
from support.servers import MemcachedProcess

import pymc.asyncio as aio

KINDS = ["Client", "PooledClient", "RetryingClient"]


def make(kind: str, server: Any, **options: Any) -> Any:
    options.setdefault("timeout", 2)
    if kind == "Client":
        return aio.Client(server, **options)
    if kind == "PooledClient":
        return aio.PooledClient(server, max_pool_size=2, **options)
    return aio.RetryingClient(aio.Client(server, **options), attempts=2)


def arun(coro: Awaitable[Any], seconds: float = 20) -> Any:
    return asyncio.run(asyncio.wait_for(coro, seconds))


# --------------------------------------------------------------------------- event loops


async def set_get(client: Any, value: bytes) -> Any:
    await client.set("loop", value)
    return (await client.get("loop"), await client.get_many(["loop"]))


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_outlives_its_event_loop(memcached: MemcachedProcess, kind: str) -> None:
    """A client made once and used by one ``asyncio.run`` after another (a module-level
    client under pytest-asyncio's loop per test, a script's several runs): each run gets
    right values, and ``close()`` in a later loop works."""
    client = make(kind, memcached.server)
    for i in range(3):
        value = b"run-%d" % i
        assert arun(set_get(client, value)) == (value, {"loop": value})
    arun(client.close())
    assert arun(set_get(client, b"after")) == (b"after", {"loop": b"after"})


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_moves_to_another_threads_loop(memcached: MemcachedProcess, kind: str) -> None:
    """Used on a loop that still runs in another thread, then on this thread's own loop
    (one at a time): the connection of the other loop is not used from this one."""
    client = make(kind, memcached.server)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        there = asyncio.run_coroutine_threadsafe(set_get(client, b"there"), loop).result(10)
        assert there == (b"there", {"loop": b"there"})
        assert arun(set_get(client, b"here")) == (b"here", {"loop": b"here"})
        back = asyncio.run_coroutine_threadsafe(set_get(client, b"back"), loop).result(10)
        assert back == (b"back", {"loop": b"back"})
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert arun(set_get(client, b"closed")) == (b"closed", {"loop": b"closed"})
