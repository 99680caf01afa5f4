"""The asyncio clients' command set: every public command of :class:`pymc.Client` as a
coroutine with the sync signature, each run by the client's :meth:`Commands.run` (the
asyncio :class:`~pymc.asyncio.Client` runs the sync command through the bridge; the
pooled and retrying clients run it on a pooled client, with retries). One list, here.

Layer: asyncio.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Concatenate, Coroutine, Dict, Optional, ParamSpec, Tuple, TypeVar

from ..client import Client as SyncClient
from ..client import Commands as SyncCommands
from ..commands import read_through
from ..options import Key
from .bridge import await_, run_sync

__all__ = ["COMMAND_NAMES", "Commands", "SyncFacade", "fetch_through"]

P = ParamSpec("P")
R = TypeVar("R")

#: The public commands of :class:`pymc.Client` that every client runs (those of
#: :class:`pymc.client.Commands`): each asyncio client has each as a coroutine.
COMMAND_NAMES: Tuple[str, ...] = tuple(
    name
    for name, value in vars(SyncCommands).items()
    if not name.startswith("_") and name != "run" and callable(value)
)


def _delegate(
    method: Callable[Concatenate[SyncClient, P], R],
) -> Callable[Concatenate[Commands, P], Coroutine[Any, Any, R]]:
    """A coroutine that runs the Client command ``method`` through ``self.run``."""
    name = method.__name__

    @functools.wraps(method)
    async def call(self: Commands, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.run(name, args, kwargs)  # type: ignore[no-any-return]

    return call


def _sync_compute(compute: Callable[[], Any]) -> Callable[[], Any]:
    """``compute`` as the sync read-through calls it: what a coroutine function returns is
    awaited (on the loop, through the bridge)."""

    def call() -> Any:
        value = compute()
        if inspect.isawaitable(value):
            value = await_(value)
        return value

    return call


class SyncFacade:
    """An asyncio client as the sync read-through sees it inside the bridge: each method
    call awaits the client's coroutine."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return await_(method(*args, **kwargs))

        return call


def _loop_sleep(seconds: float) -> None:
    import asyncio

    await_(asyncio.sleep(seconds))


async def fetch_through(
    client: Any,
    key: Key,
    compute: Callable[[], Any],
    ttl: int = 0,
    lease_ttl: int = 30,
    recache_ttl: Optional[int] = None,
    wait: Optional[float] = None,
) -> Any:
    """``fetch`` for an asyncio client: the sync read-through (:func:`read_through`) on
    ``client``, whose lease commands are awaited through the bridge, waiting on the loop;
    ``compute`` may be a coroutine function."""
    return await run_sync(
        read_through,
        SyncFacade(client),
        key,
        _sync_compute(compute),
        ttl,
        lease_ttl,
        recache_ttl,
        wait,
        _loop_sleep,
    )


class Commands:
    """Every :class:`pymc.Client` command as a coroutine with Client's signature, each run
    by :meth:`run` (see the module's docstring)."""

    async def run(self, name: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        """Run the command ``name`` with ``args`` and ``kwargs``."""
        raise NotImplementedError

    async def fetch(
        self,
        key: Key,
        compute: Callable[[], Any],
        ttl: int = 0,
        *,
        lease_ttl: int = 30,
        recache_ttl: Optional[int] = None,
        wait: Optional[float] = None,
    ) -> Any:
        """As :meth:`pymc.Client.fetch`; ``compute`` may be a coroutine function. Each
        step is a command of its own, so nothing is held while this caller waits for
        another's lease."""
        return await fetch_through(self, key, compute, ttl, lease_ttl, recache_ttl, wait)

    set = _delegate(SyncClient.set)
    set_many = _delegate(SyncClient.set_many)
    set_multi = set_many
    add = _delegate(SyncClient.add)
    replace = _delegate(SyncClient.replace)
    append = _delegate(SyncClient.append)
    prepend = _delegate(SyncClient.prepend)
    cas = _delegate(SyncClient.cas)
    get = _delegate(SyncClient.get)
    get_many = _delegate(SyncClient.get_many)
    get_multi = get_many
    gets = _delegate(SyncClient.gets)
    gets_many = _delegate(SyncClient.gets_many)
    gets_multi = gets_many
    gat = _delegate(SyncClient.gat)
    gats = _delegate(SyncClient.gats)
    delete = _delegate(SyncClient.delete)
    delete_many = _delegate(SyncClient.delete_many)
    delete_multi = delete_many
    incr = _delegate(SyncClient.incr)
    decr = _delegate(SyncClient.decr)
    touch = _delegate(SyncClient.touch)
    stats = _delegate(SyncClient.stats)
    cache_memlimit = _delegate(SyncClient.cache_memlimit)
    version = _delegate(SyncClient.version)
    verbosity = _delegate(SyncClient.verbosity)
    flush_all = _delegate(SyncClient.flush_all)
    quit = _delegate(SyncClient.quit)
    shutdown = _delegate(SyncClient.shutdown)
    raw_command = _delegate(SyncClient.raw_command)
    cluster_config = _delegate(SyncClient.cluster_config)
    meta_get = _delegate(SyncClient.meta_get)
    lease_get = _delegate(SyncClient.lease_get)
    lease_set = _delegate(SyncClient.lease_set)
    lease_release = _delegate(SyncClient.lease_release)
    meta_set = _delegate(SyncClient.meta_set)
    meta_delete = _delegate(SyncClient.meta_delete)
    meta_arithmetic = _delegate(SyncClient.meta_arithmetic)
    meta_noop = _delegate(SyncClient.meta_noop)
    meta_get_many = _delegate(SyncClient.meta_get_many)
    meta_set_many = _delegate(SyncClient.meta_set_many)
    meta_delete_many = _delegate(SyncClient.meta_delete_many)
    get_cas = _delegate(SyncClient.get_cas)
    set_cas = _delegate(SyncClient.set_cas)
    invalidate = _delegate(SyncClient.invalidate)
