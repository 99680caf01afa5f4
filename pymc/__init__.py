"""pymc: a fast, thread- and gevent-safe memcached client, a drop-in for pymemcache.

The modules form layers; each imports only the public names of those before it:
``exceptions`` -> ``protocol`` (sans-IO; what every reply means: ``RULES`` and the
``Expect*`` readers) -> ``serde`` -> ``client`` (``Client``, ``Commands``) -> ``retry``
-> ``pool`` -> ``hashing`` -> ``cluster`` (``HashClient``) -> ``elasticache``.
"""

import logging

from .client import Client, ClientOptions, KeepaliveOpts
from .cluster import HashClient
from .elasticache import AWSElastiCacheHashClient, ElastiCacheClient
from .exceptions import (
    AllNodesDownError,
    ClusterNotReadyError,
    MemcacheAuthenticationError,
    MemcacheAuthNotRequiredError,
    MemcacheClientError,
    MemcacheConnectError,
    MemcacheConnectTimeoutError,
    MemcacheError,
    MemcacheIllegalInputError,
    MemcacheNetworkError,
    MemcachePoolTimeoutError,
    MemcacheProtocolError,
    MemcacheServerError,
    MemcacheServerRefusedError,
    MemcacheTimeoutError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    MemcacheUnknownError,
    MemcacheUnsupportedCommandError,
    NodeRestingError,
)
from .hashing import KetamaHash, RendezvousHash
from .pool import ObjectPool, PooledClient
from .protocol import SPEEDUPS
from .retry import RetryingClient, RetryPolicy

__version__ = "0.1.0"

#: True when the compiled reader (``pymc.speedups``) is in use, False for pure Python
#: (no compiler at install, or ``PYMC_NO_EXTENSIONS=1`` at build or run time).
__speedups__: bool = SPEEDUPS

# A library's log records (node ejections, discovery failures) go wherever the application's
# logging sends them, and nowhere -- not stderr through logging's last resort -- without it.
logging.getLogger("pymc").addHandler(logging.NullHandler())

__all__ = [
    "AWSElastiCacheHashClient",
    "AllNodesDownError",
    "Client",
    "ClientOptions",
    "ClusterNotReadyError",
    "ElastiCacheClient",
    "HashClient",
    "KeepaliveOpts",
    "KetamaHash",
    "MemcacheAuthNotRequiredError",
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
    "MemcacheServerRefusedError",
    "MemcacheTimeoutError",
    "MemcacheUnexpectedCloseError",
    "MemcacheUnknownCommandError",
    "MemcacheUnknownError",
    "MemcacheUnsupportedCommandError",
    "NodeRestingError",
    "ObjectPool",
    "PooledClient",
    "RendezvousHash",
    "RetryPolicy",
    "RetryingClient",
]
