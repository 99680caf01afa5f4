"""pymc for asyncio: the sync clients' names, arguments, commands and results, with every
method that does I/O a coroutine (``await c.get(k)``, ``await c.close()``, ``async with``).

The command set is the sync one, run unchanged through a greenlet bridge
(:mod:`pymc.asyncio.bridge`) over an asyncio transport (:mod:`pymc.asyncio.connection`);
the hot paths (``get``) are native coroutines. Needs the ``asyncio`` extra (greenlet):
``pip install 'pymc[asyncio]'``.

Layer: asyncio (above elasticache, below contrib).
"""

from __future__ import annotations

from typing import Any

from ..exceptions import (
    MemcacheClientError,
    MemcacheConnectError,
    MemcacheConnectTimeoutError,
    MemcacheError,
    MemcacheIllegalInputError,
    MemcacheNetworkError,
    MemcachePoolTimeoutError,
    MemcacheServerError,
    MemcacheTimeoutError,
    MemcacheUnexpectedCloseError,
)
from .bridge import BridgeError, await_, in_bridge, run_sync
from .client import Client
from .connection import AsyncConnection
from .pool import AsyncObjectPool, PooledClient
from .retry import RetryingClient

__all__ = [
    "AsyncConnection",
    "AsyncObjectPool",
    "BridgeError",
    "Client",
    "MemcacheClientError",
    "MemcacheConnectError",
    "MemcacheConnectTimeoutError",
    "MemcacheError",
    "MemcacheIllegalInputError",
    "MemcacheNetworkError",
    "MemcachePoolTimeoutError",
    "MemcacheServerError",
    "MemcacheTimeoutError",
    "MemcacheUnexpectedCloseError",
    "PooledClient",
    "RetryingClient",
    "await_",
    "in_bridge",
    "run_sync",
]

# The cluster clients live in modules of their own (pymc.asyncio.cluster, .elasticache),
# imported on first use.
_LAZY = {
    "HashClient": "cluster",
    "ElastiCacheClient": "elasticache",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pymc.asyncio' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
