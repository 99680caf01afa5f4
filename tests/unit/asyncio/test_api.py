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


def test_waiting_tasks_are_served_in_turn_and_nobody_jumps_the_queue() -> None:
    """A connection given back goes to the oldest waiting task, with its slot: a task that
    arrives meanwhile (get or try_get) queues behind, it does not take it."""

    async def main() -> None:
        pool = make_pool(max_size=1, timeout=1)
        a = await pool.get()
        order: List[int] = []

        async def waiter(n: int) -> None:
            obj = await pool.get()
            order.append(n)
            await asyncio.sleep(0)
            pool.put(obj)

        tasks = [asyncio.ensure_future(waiter(n)) for n in range(5)]
        await asyncio.sleep(0.01)
        assert pool.stats() == {"in_use": 1, "idle": 0, "waiting": 5}
        pool.put(a)  # handed to task 0 at once ...
        assert pool.stats()["in_use"] == 1 and pool.stats()["idle"] == 0
        assert pool.try_get() is None  # ... so a newcomer finds nothing free
        late = asyncio.ensure_future(waiter(99))
        await asyncio.gather(*tasks, late)
        assert order == [0, 1, 2, 3, 4, 99]
        assert pool.stats() == {"in_use": 0, "idle": 1, "waiting": 0}

    asyncio.run(asyncio.wait_for(main(), 5))


def test_a_destroyed_object_frees_its_slot_for_the_next_waiter() -> None:
    async def main() -> None:
        pool = make_pool(max_size=1, timeout=1)
        a = await pool.get()
        waiting = asyncio.ensure_future(pool.get())
        await asyncio.sleep(0.01)
        pool.destroy(a)
        b = await waiting
        assert a.destroyed and b is not a and not b.destroyed
        pool.release(b)
        assert pool.stats() == {"in_use": 0, "idle": 1, "waiting": 0}

    asyncio.run(asyncio.wait_for(main(), 5))


def test_a_waiter_that_times_out_leaves_the_queue() -> None:
    async def main() -> None:
        pool = make_pool(max_size=1, timeout=0.02)
        a = await pool.get()
        with pytest.raises(pymc.MemcachePoolTimeoutError):
            await pool.get()
        assert pool.stats() == {"in_use": 1, "idle": 0, "waiting": 0}
        pool.put(a)
        assert (await pool.get()) is a

    asyncio.run(asyncio.wait_for(main(), 5))


def test_a_retired_pool_destroys_what_comes_back() -> None:
    async def main() -> None:
        pool = make_pool(max_size=2)
        a = await pool.get()
        b = await pool.get()
        pool.put(b)
        pool.retire()
        assert pool.retired and b.destroyed and not a.destroyed
        pool.release(a)
        assert a.destroyed and pool.stats() == {"in_use": 0, "idle": 0, "waiting": 0}
        c = await pool.get()  # later checkouts still work (a request that chose the node)
        pool.release(c)
        assert c.destroyed

    asyncio.run(asyncio.wait_for(main(), 5))


class _Recorder:
    """A stand-in client for the pool's run(): records its calls, fails on demand."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls: List[Any] = []
        self.fail: Any = None

    async def delete_many(self, keys: Any) -> Any:
        self.calls.append(list(keys))
        if self.fail is not None:
            raise self.fail
        return True


def _pooled_with(clients: List[_Recorder], **kw: Any) -> Any:
    pc: Any = aio.PooledClient(("127.0.0.1", 1), max_pool_size=1, **kw)
    made = iter(clients)
    pc.client_pool = aio.AsyncObjectPool(lambda: next(made), lambda c: None, max_size=1)
    return pc


def test_run_calls_check_only_after_a_wait_and_failed_before_the_give_back() -> None:
    async def main() -> None:
        first, second = _Recorder(1), _Recorder(2)
        pc = _pooled_with([first, second])
        seen: List[Any] = []

        def check() -> None:
            seen.append(("check", pc.client_pool.stats()["in_use"]))

        def failed(exc: Exception) -> None:
            seen.append(("failed", type(exc).__name__, pc.client_pool.stats()["in_use"]))

        await pc.run("delete_many", (["a"],), {}, check, failed)
        assert seen == []  # a free connection: no check
        first.fail = pymc.MemcacheUnexpectedCloseError()
        held = pc.client_pool.try_get()
        blocked = asyncio.ensure_future(pc.run("delete_many", (["b"],), {}, check, failed))
        await asyncio.sleep(0.01)
        pc.client_pool.release(held)
        with pytest.raises(pymc.MemcacheUnexpectedCloseError):
            await blocked
        # checked once (it waited), the failure seen while the connection was still out
        assert seen == [("check", 1), ("failed", "MemcacheUnexpectedCloseError", 1)]
        assert pc.client_pool.stats() == {"in_use": 0, "idle": 0, "waiting": 0}

    asyncio.run(asyncio.wait_for(main(), 5))


def test_a_check_that_raises_gives_the_connection_back_unused() -> None:
    async def main() -> None:
        rec = _Recorder(1)
        pc = _pooled_with([rec])
        held = pc.client_pool.try_get()

        def check() -> None:
            raise pymc.MemcacheError("node failed meanwhile")

        blocked = asyncio.ensure_future(pc.run("delete_many", (["b"],), {}, check))
        await asyncio.sleep(0.01)
        pc.client_pool.release(held)
        with pytest.raises(pymc.MemcacheError, match="meanwhile"):
            await blocked
        assert rec.calls == [] and pc.client_pool.stats() == {"in_use": 0, "idle": 1, "waiting": 0}

    asyncio.run(asyncio.wait_for(main(), 5))


def test_a_retried_command_gets_its_generator_argument_again() -> None:
    async def main() -> None:
        recs = [_Recorder(1), _Recorder(2)]
        recs[0].fail = pymc.MemcacheUnexpectedCloseError()
        pc = _pooled_with(recs, retry=pymc.RetryPolicy(attempts=2, backoff=0))
        assert await pc.run("delete_many", ((k for k in "xyz"),), {}) is True
        # a generator is read once: the retry must send the same keys, not none
        assert recs[0].calls == [["x", "y", "z"]] and recs[1].calls == [["x", "y", "z"]]

    asyncio.run(asyncio.wait_for(main(), 5))
