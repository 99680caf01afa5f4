"""pymc: a fast, thread- and gevent-safe memcached client, a drop-in for pymemcache."""

from .client import Client, ClientOptions, KeepaliveOpts
from .cluster import HashClient
from .elasticache import AWSElastiCacheHashClient, ElastiCacheClient
from .exceptions import (
    MemcacheAuthenticationError,
    MemcacheClientError,
    MemcacheConnectError,
    MemcacheConnectTimeoutError,
    MemcacheError,
    MemcacheIllegalInputError,
    MemcacheNetworkError,
    MemcachePoolTimeoutError,
    MemcacheProtocolError,
    MemcacheServerError,
    MemcacheTimeoutError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    MemcacheUnknownError,
)
from .hashing import KetamaHash, RendezvousHash
from .pool import ObjectPool, PooledClient
from .retry import RetryingClient, RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "AWSElastiCacheHashClient",
    "Client",
    "ClientOptions",
    "ElastiCacheClient",
    "HashClient",
    "KeepaliveOpts",
    "KetamaHash",
    "MemcacheAuthenticationError",
    "MemcacheClientError",
    "MemcacheConnectError",
    "MemcacheConnectTimeoutError",
    "MemcacheError",
    "MemcacheIllegalInputError",
    "MemcacheNetworkError",
    "MemcachePoolTimeoutError",
    "MemcacheProtocolError",
    "MemcacheServerError",
    "MemcacheTimeoutError",
    "MemcacheUnexpectedCloseError",
    "MemcacheUnknownCommandError",
    "MemcacheUnknownError",
    "ObjectPool",
    "PooledClient",
    "RendezvousHash",
    "RetryPolicy",
    "RetryingClient",
]
