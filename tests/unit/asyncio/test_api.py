"""pymc.asyncio's API: every public command of pymc.Client exists on each asyncio client
with the same parameters, as a coroutine function; the bridge; the pool's bookkeeping."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, List

import pytest

import pymc
import pymc.asyncio as aio
from pymc.asyncio.bridge import BridgeError, await_, in_bridge, run_sync
from pymc.asyncio.commands import COMMAND_NAMES
from pymc.client import Commands as SyncCommands

ASYNC_CLIENTS = [aio.Client, aio.PooledClient, aio.RetryingClient]

# Every public method of pymc.Client that is a command (not a transport internal).
SYNC_PUBLIC = sorted(
    name for name in dir(SyncCommands) if not name.startswith("_") and name != "run"
)


def test_the_command_list_is_the_sync_one() -> None:
    assert sorted(COMMAND_NAMES) == SYNC_PUBLIC
    for name in ("get", "set", "get_many", "fetch", "meta_set", "lease_get", "raw_command"):
        assert name in COMMAND_NAMES


@pytest.mark.parametrize("cls", ASYNC_CLIENTS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", SYNC_PUBLIC)
def test_each_command_is_a_coroutine_with_the_sync_signature(cls: Any, name: str) -> None:
    method = getattr(cls, name)
    assert inspect.iscoroutinefunction(method), f"{cls.__name__}.{name} is not a coroutine"
    sync = inspect.signature(getattr(pymc.Client, name))
    assert inspect.signature(method) == sync, f"{cls.__name__}.{name}"


@pytest.mark.parametrize("cls", ASYNC_CLIENTS, ids=lambda c: c.__name__)
def test_close_and_async_with(cls: Any) -> None:
    assert inspect.iscoroutinefunction(cls.close)
    assert inspect.iscoroutinefunction(cls.__aenter__)
    assert inspect.iscoroutinefunction(cls.__aexit__)


def test_constructors_take_the_sync_arguments() -> None:
    assert inspect.signature(aio.Client) == inspect.signature(pymc.Client)
    assert inspect.signature(aio.PooledClient) == inspect.signature(pymc.PooledClient)
    assert inspect.signature(aio.RetryingClient) == inspect.signature(pymc.RetryingClient)
    client = aio.Client(("localhost", 11211), None, None, None, 1.5, timeout=2, key_prefix=b"p:")
    assert client.connect_timeout == 1.5 and client.timeout == 2 and client.key_prefix == b"p:"
    with pytest.raises(TypeError):
        aio.Client("localhost:11211", nonsense=1)
    with pytest.raises(ValueError):
        aio.PooledClient("localhost:11211", max_pool_size=0)
    with pytest.raises(ValueError):
        aio.RetryingClient(client, attempts=0)


def test_servers_are_normalized_as_in_sync() -> None:
    assert aio.Client("127.0.0.1:11311").server == pymc.Client("127.0.0.1:11311").server
    assert aio.Client(("h", 1)).server == ("h", 1)
    assert aio.Client("/tmp/mc.sock").server == "/tmp/mc.sock"


def test_the_cluster_names_are_lazy() -> None:
    with pytest.raises(AttributeError):
        aio.NoSuchClient  # noqa: B018


# ---------------------------------------------------------------------------- the bridge


def test_await_outside_the_bridge_is_an_error() -> None:
    assert not in_bridge()
    with pytest.raises(BridgeError, match="outside"):
        await_(asyncio.sleep(0))


def test_run_sync_returns_and_raises() -> None:
    def work(x: int) -> int:
        assert in_bridge()
        return await_(asyncio.sleep(0, result=x)) * 2

    def fail() -> None:
        await_(asyncio.sleep(0))
        raise KeyError("k")

    async def main() -> None:
        assert await run_sync(work, 21) == 42
        with pytest.raises(KeyError):
            await run_sync(fail)

    asyncio.run(main())


def test_an_exception_of_the_awaitable_is_raised_inside() -> None:
    seen: List[str] = []

    async def boom() -> None:
        raise ValueError("x")

    def work() -> str:
        try:
            await_(boom())
        except ValueError:
            seen.append("caught")
        return "done"

    assert asyncio.run(run_sync(work)) == "done"
    assert seen == ["caught"]


def test_a_cancellation_is_thrown_into_the_function_at_its_await() -> None:
    seen: List[str] = []

    def work() -> None:
        try:
            await_(asyncio.sleep(10))
        except asyncio.CancelledError:
            seen.append("cancelled inside")
            raise
        finally:
            seen.append("finally")

    async def main() -> None:
        task = asyncio.ensure_future(run_sync(work))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(run_sync(work), 0.01)

    asyncio.run(asyncio.wait_for(main(), 5))
    assert seen == ["cancelled inside", "finally"] * 2


def test_contextvars_are_the_task_s() -> None:
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    def work() -> str:
        return var.get()

    async def main() -> str:
        var.set("task")
        return await run_sync(work)

    assert asyncio.run(main()) == "task"


# ---------------------------------------------------------------------------- the pool


class Obj:
    def __init__(self, n: int) -> None:
        self.n = n
        self.destroyed = False


def make_pool(**kw: Any) -> Any:
    made = iter(range(1000))
    return aio.AsyncObjectPool(
        lambda: Obj(next(made)), lambda o: setattr(o, "destroyed", True), **kw
    )


def test_pool_is_lifo_and_bounded() -> None:
    async def main() -> None:
        pool = make_pool(max_size=2, timeout=0.05)
        a = await pool.get()
        b = await pool.get()
        with pytest.raises(pymc.MemcachePoolTimeoutError):
            await pool.get()
        pool.put(a)
        pool.put(b)
        assert (await pool.get()) is b  # the last given back comes first
        pool.put(b, reusable=False)
        assert b.destroyed
        assert pool.stats() == {"in_use": 0, "idle": 1, "waiting": 0}

    asyncio.run(asyncio.wait_for(main(), 5))


def test_a_waiter_gets_the_slot_given_back() -> None:
    async def main() -> None:
        pool = make_pool(max_size=1, timeout=1)
        a = await pool.get()
        waiting = asyncio.ensure_future(pool.get())
        await asyncio.sleep(0.01)
        pool.put(a)
        assert (await waiting) is a

    asyncio.run(asyncio.wait_for(main(), 5))


def test_a_cancelled_waiter_loses_no_slot() -> None:
    async def main() -> None:
        pool = make_pool(max_size=1, timeout=1)
        a = await pool.get()
        first = asyncio.ensure_future(pool.get())
        second = asyncio.ensure_future(pool.get())
        await asyncio.sleep(0.01)
        pool.put(a)  # wakes the first ...
        first.cancel()  # ... which is cancelled before it runs: the wake passes on
        assert (await second) is a
        with pytest.raises(asyncio.CancelledError):
            await first
        pool.put(a)
        assert pool.stats() == {"in_use": 0, "idle": 1, "waiting": 0}
        assert (await pool.get()) is a

    asyncio.run(asyncio.wait_for(main(), 5))


def test_idle_objects_are_reaped_and_clear_destroys() -> None:
    async def main() -> None:
        pool = make_pool(idle_timeout=0.02)
        a = await pool.get()
        pool.put(a)
        await asyncio.sleep(0.05)
        b = await pool.get()
        assert b is not a and a.destroyed
        c = await pool.get()
        pool.put(c)
        pool.clear()
        assert c.destroyed
        pool.put(b)  # taken before clear(): destroyed when it comes back
        assert b.destroyed and pool.stats()["idle"] == 0

    asyncio.run(asyncio.wait_for(main(), 5))
