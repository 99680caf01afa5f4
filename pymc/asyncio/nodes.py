"""What the asyncio cluster clients do with one node's pool: take a connection for a fan-out
and give it back, run a big batch alone, the read-through (``fetch``) in the bridge, and the
probe of the dead nodes (an asyncio task).

Layer: imports ``cluster`` (the health books) and this package's ``bridge`` and ``pool``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, List, Tuple

from ..cluster.health import Health
from ..protocol.plans import Plan
from .bridge import await_, run_sync

__all__ = ["bridged_fetch", "checkout", "execute_alone", "give_back", "probe_dead"]


async def checkout(pool: Any) -> Tuple[Any, bool]:
    """A connection of ``pool`` (a node's asyncio pooled client), and whether the call had
    to wait for it (or make it): the node may have failed meanwhile. A cancellation while
    it waits loses no slot."""
    objects = pool.client_pool
    conn = objects.try_get()
    if conn is not None:
        return conn, False
    return await objects.get(), True


def give_back(pool: Any, conn: Any, destroy: bool) -> None:
    """Give ``conn`` back to ``pool``: for reuse, or closed (``destroy``: its reply may be
    unread, or it saw an error)."""
    if destroy:
        pool.client_pool.destroy(conn)
    else:
        pool.client_pool.release(conn)


async def execute_alone(pool: Any, passes: List[Plan]) -> None:
    """Run ``passes`` (a node's batch too big for one pass) on one connection of ``pool``,
    under one deadline."""
    conn, _ = await checkout(pool)
    clean = False
    try:
        await conn.execute_all(passes)
        clean = True
    finally:
        give_back(pool, conn, not clean)


async def bridged_fetch(
    fetch: Callable[..., Any],
    client: Any,
    key: Any,
    compute: Callable[[], Any],
    *args: Any,
    **kwargs: Any,
) -> Any:
    """``fetch(client, key, compute, ...)``, a sync read-through over ``client`` (whose
    commands hand their I/O to the loop), run in the bridge; ``compute`` may be a coroutine
    function (awaited on the loop)."""
    if asyncio.iscoroutinefunction(compute):
        coroutine_function = compute

        def compute() -> Any:
            return await_(coroutine_function())

    return await run_sync(fetch, client, key, compute, *args, **kwargs)


async def probe_dead(health: Health) -> None:
    """The probe of the dead nodes of ``health`` (the task a cluster client starts when
    :meth:`Health.maybe_probe` finds one due): each dead node past ``dead_timeout`` is asked
    for its version at once, on a new asyncio connection of its own with the probe's
    timeouts (``connect_timeout`` and ``timeout``, never unbounded); those that answer are
    re-admitted. The task's end gives the probe's turn back (:meth:`Health.probe_ended`)."""
    due = [name for name, _ in health.due()]
    if len(due) == 1:
        await _probe_one(health, due[0])
    elif due:  # (every one to its end, even when cancelled: then the first error)
        outcomes = await asyncio.gather(
            *(_probe_one(health, name) for name in due), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome


async def _probe_one(health: Health, name: str) -> None:
    record = health.dead.get(name)
    if record is None:  # removed meanwhile
        return
    spec, pool, _ = record
    probe: Any = pool.client_class.from_options(spec, health.probe_options)
    probe.tls_hostname = pool.tls_hostname
    try:
        await probe.version()
    except Exception:
        health.probe_failed(name)
        return
    finally:
        await probe.close()
    health.revive(name)
