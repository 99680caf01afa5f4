"""Cancellation at every await of every command (Client, PooledClient): the connection is
closed when a reply may be unread, the pool slot comes back, and the next call returns the
right value. And a swarm: hundreds of tasks with random timeouts of a few ms over a
delaying proxy: no task ever sees another's value, and every pool slot works after."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

import pytest
from support.servers import MemcachedProcess

import pymc
import pymc.asyncio as aio
from pymc.asyncio.connection import AsyncConnection

_fresh = itertools.count()


async def leased(client: Any, name: str, *args: Any) -> Any:
    lease = await client.lease_get("l")
    if name == "lease_set":
        return await client.lease_set("l", args[0], args[1], lease)
    return await client.lease_release("l", lease)


# Every public command, with arguments that make it do its real work.
CALLS: Dict[str, Callable[[Any], Awaitable[Any]]] = {
    "set": lambda c: c.set("k", b"v"),
    "set_many": lambda c: c.set_many({"k": b"v", "k2": b"v2"}),
    "set_multi": lambda c: c.set_multi({"k": b"v"}),
    "add": lambda c: c.add("a", b"v"),
    "replace": lambda c: c.replace("k", b"v"),
    "append": lambda c: c.append("k", b""),
    "prepend": lambda c: c.prepend("k", b""),
    "cas": lambda c: c.cas("k", b"v", 1),
    "get": lambda c: c.get("k"),
    "get_many": lambda c: c.get_many(["k", "k2"]),
    "get_multi": lambda c: c.get_multi(["k"]),
    "gets": lambda c: c.gets("k"),
    "gets_many": lambda c: c.gets_many(["k"]),
    "gets_multi": lambda c: c.gets_multi(["k"]),
    "gat": lambda c: c.gat("k", 0),
    "gats": lambda c: c.gats("k", 0),
    "delete": lambda c: c.delete("d"),
    "delete_many": lambda c: c.delete_many(["d", "d2"]),
    "delete_multi": lambda c: c.delete_multi(["d"]),
    "incr": lambda c: c.incr("n", 1),
    "decr": lambda c: c.decr("n", 1),
    "touch": lambda c: c.touch("k", 0),
    "stats": lambda c: c.stats(),
    "cache_memlimit": lambda c: c.cache_memlimit(64),
    "version": lambda c: c.version(),
    "verbosity": lambda c: c.verbosity(0),
    "flush_all": lambda c: c.flush_all(100000),
    "quit": lambda c: c.quit(),
    "raw_command": lambda c: c.raw_command("get k", "END\r\n"),
    "meta_get": lambda c: c.meta_get("k"),
    "lease_get": lambda c: c.lease_get("l"),
    "lease_set": lambda c: leased(c, "lease_set", b"v", 0),
    "lease_release": lambda c: leased(c, "lease_release"),
    "meta_set": lambda c: c.meta_set("m", b"v"),
    "meta_delete": lambda c: c.meta_delete("d"),
    "meta_arithmetic": lambda c: c.meta_arithmetic("n", 1),
    "meta_noop": lambda c: c.meta_noop(),
    "meta_get_many": lambda c: c.meta_get_many(["k", "m"]),
    "meta_set_many": lambda c: c.meta_set_many({"m": b"v", "m2": b"v"}),
    "meta_delete_many": lambda c: c.meta_delete_many(["d", "d2"]),
    "get_cas": lambda c: c.get_cas("k"),
    "set_cas": lambda c: c.set_cas("k", b"v", 1),
    "invalidate": lambda c: c.invalidate("i"),
    "cluster_config": lambda c: c.cluster_config(),  # (an error on plain memcached)
    "shutdown": lambda c: c.shutdown(),  # (refused: the server runs without shutdown)
    # (a key per call: a lease taken by a cancelled call is held until it expires)
    "fetch": lambda c: c.fetch(f"f{next(_fresh)}", lambda: b"computed", 0, lease_ttl=2),
}


def test_every_command_is_covered() -> None:
    assert set(CALLS) == set(aio.commands.COMMAND_NAMES) | {"get"}


class CancelAt:
    """Wraps AsyncConnection's one waiting point: the ``at``-th wait cancels the task
    (``target``, when set: the command's task, whose fan-out waits in tasks of its own)."""

    def __init__(self) -> None:
        self.at = 0
        self.count = 0
        self.target: Optional[asyncio.Task[Any]] = None

    async def wait(self, conn: AsyncConnection, awaitable: Any) -> Any:
        self.count += 1
        if self.count == self.at:
            task = self.target or asyncio.current_task()
            assert task is not None
            task.cancel()
        return await awaitable


@pytest.fixture
def cancel_at(monkeypatch: pytest.MonkeyPatch) -> CancelAt:
    hook = CancelAt()
    original = AsyncConnection._wait

    async def wait(conn: AsyncConnection, awaitable: Any) -> Any:
        if hook.at:
            return await hook.wait(conn, awaitable)
        return await original(conn, awaitable)

    monkeypatch.setattr(AsyncConnection, "_wait", wait)
    return hook


def connections(client: Any) -> List[AsyncConnection]:
    if isinstance(client, aio.PooledClient):
        return [c.conn for c, _ in client.client_pool._idle]
    return [client.conn]


async def check_after(client: Any, tag: int) -> None:
    for conn in connections(client):
        assert not conn.pending, "a connection with a reply unread was kept"
    if isinstance(client, aio.PooledClient):
        assert client.client_pool.stats()["in_use"] == 0, "a pool slot was lost"
    value = b"after-%d" % tag
    assert await client.set("check", value) is True
    assert await client.get("check") == value
    assert await client.get_many(["check", "nope"]) == {"check": value}


@pytest.mark.parametrize("kind", ["Client", "PooledClient"])
@pytest.mark.parametrize("name", sorted(CALLS))
def test_cancel_at_every_await(
    memcached: MemcachedProcess, cancel_at: CancelAt, kind: str, name: str
) -> None:
    call = CALLS[name]

    async def main() -> int:
        if kind == "Client":
            client: Any = aio.Client(memcached.server, timeout=2)
        else:
            client = aio.PooledClient(memcached.server, timeout=2, max_pool_size=2)
        await client.set("k", b"v")
        at = 0
        while True:
            at += 1
            assert at < 50, "more awaits than any command makes"
            cancel_at.at, cancel_at.count = at, 0
            try:
                await call(client)
            except asyncio.CancelledError:
                uncancel = getattr(asyncio.current_task(), "uncancel", None)
                if uncancel is not None:  # (3.11+: the task would stay "cancelling")
                    uncancel()
                cancelled = True
            except pymc.MemcacheError:
                cancelled = False
            else:
                cancelled = False
            waits = cancel_at.count
            cancel_at.at = 0
            await check_after(client, at)
            if not cancelled:
                assert waits < at
                await client.close()
                return at - 1

    assert arun(main()) >= 0


def arun(coro: Awaitable[Any], seconds: float = 30) -> Any:
    return asyncio.run(asyncio.wait_for(coro, seconds))


def test_swarm_over_a_delaying_proxy(memcached: MemcachedProcess, fault_proxy: Any) -> None:
    proxy = fault_proxy(memcached.address)
    tasks, rounds = 300, 10
    sync = pymc.Client(memcached.server)
    sync.set_many({f"sw{i}": b"value-%d" % i for i in range(tasks)})
    proxy.set_mode("delay", seconds=0.003)
    rng = random.Random(21)

    async def main() -> Tuple[int, int]:
        pc = aio.PooledClient(proxy.server, timeout=1, max_pool_size=16, pool_timeout=5)
        foreign = 0
        timeouts = 0

        async def worker(i: int) -> None:
            nonlocal foreign, timeouts
            key, want = f"sw{i}", b"value-%d" % i
            for r in range(rounds):
                op = (i + r) % 3
                try:
                    if op == 0:
                        got = await asyncio.wait_for(pc.get(key), rng.uniform(0.001, 0.01))
                    elif op == 1:
                        many = await asyncio.wait_for(pc.get_many([key]), rng.uniform(0.001, 0.01))
                        got = many.get(key)
                    else:
                        meta = await asyncio.wait_for(pc.meta_get(key), rng.uniform(0.001, 0.01))
                        got = meta.value
                except (asyncio.TimeoutError, pymc.MemcacheTimeoutError):
                    timeouts += 1
                    continue
                if got != want:
                    foreign += 1

        await asyncio.gather(*(worker(i) for i in range(tasks)))
        assert pc.client_pool.stats()["in_use"] == 0
        proxy.set_mode("pass")
        # Every slot usable: as many concurrent gets as the pool has slots, all right.
        results = await asyncio.gather(*(pc.get(f"sw{i}") for i in range(64)))
        assert results == [b"value-%d" % i for i in range(64)]
        assert pc.client_pool.stats()["in_use"] == 0
        return foreign, timeouts

    foreign, timeouts = arun(main(), 50)
    assert foreign == 0
    assert timeouts > 0  # the timeouts did interrupt commands
