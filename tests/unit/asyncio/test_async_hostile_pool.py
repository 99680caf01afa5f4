"""Hostile tests of the asyncio object pool's hand-off: a slot freed while tasks wait is
theirs, in turn, whatever callers that did not wait do meanwhile."""

from __future__ import annotations

import asyncio
import itertools

import pytest

import pymc
import pymc.asyncio as aio


def test_a_slot_freed_by_a_destroy_goes_to_the_waiting_task() -> None:
    """A connection destroyed (its command failed) frees a slot for the oldest waiting
    task: a caller that did not wait (a retry, the failing task's next command) does not
    take it first, which would send the waiting task back to the end of the queue."""

    async def main() -> None:
        made = itertools.count()
        pool = aio.AsyncObjectPool(lambda: next(made), lambda obj: None, max_size=1, timeout=0.3)
        first = pool.try_get()
        assert first is not None
        waiting = asyncio.ensure_future(pool.get())
        await asyncio.sleep(0.01)
        pool.destroy(first)
        assert pool.try_get() is None  # the slot is the waiting task's
        assert await waiting == 1
        assert pool.stats() == {"in_use": 1, "idle": 0, "waiting": 0}

    asyncio.run(asyncio.wait_for(main(), 5))


def test_a_task_that_keeps_failing_does_not_starve_the_waiting_ones() -> None:
    """One task fails again and again (each failure destroys its connection) and tries
    again at once; a task waiting for the pool's one slot is served all the same, before
    its pool_timeout."""

    async def main() -> None:
        made = itertools.count()
        pool = aio.AsyncObjectPool(lambda: next(made), lambda obj: None, max_size=1, timeout=0.3)
        stop = False

        async def failing() -> None:
            while not stop:
                obj = await pool.get()
                await asyncio.sleep(0.005)  # its command, which fails
                pool.destroy(obj)

        hog = asyncio.ensure_future(failing())
        await asyncio.sleep(0.01)
        try:
            got = await pool.get()  # (MemcachePoolTimeoutError if it never gets a turn)
            pool.release(got)
        finally:
            stop = True
            await hog
        assert pool.stats()["in_use"] == 0

    asyncio.run(asyncio.wait_for(main(), 5))


def test_a_woken_task_cancelled_before_it_runs_passes_its_slot_on() -> None:
    """A waiting task is woken with a freed slot and cancelled before it runs: the slot
    goes to the next waiting task, none is lost."""

    async def main() -> None:
        made = itertools.count()
        pool = aio.AsyncObjectPool(lambda: next(made), lambda obj: None, max_size=1, timeout=1)
        first = pool.try_get()
        assert first is not None
        woken = asyncio.ensure_future(pool.get())
        second = asyncio.ensure_future(pool.get())
        await asyncio.sleep(0.01)
        pool.destroy(first)
        woken.cancel()
        with pytest.raises(asyncio.CancelledError):
            await woken
        got = await second
        assert pool.stats() == {"in_use": 1, "idle": 0, "waiting": 0}
        pool.release(got)
        assert pool.stats() == {"in_use": 0, "idle": 1, "waiting": 0}
        with pytest.raises(pymc.MemcachePoolTimeoutError):
            held = pool.try_get()
            assert held is not None
            pool.timeout = 0.01
            await pool.get()

    asyncio.run(asyncio.wait_for(main(), 5))
