"""The pool layer: `ObjectPool` and `Lease` (:mod:`.objectpool`, with the fork-safe state and
the checkout every pooled call runs) and `PooledClient` (:mod:`.pooled`).

Layer: imports ``client``, ``protocol`` (key checks), ``retry`` (the policy) and
``exceptions``; it never parses a reply.
"""

# The names after `as` were importable from pymc.pool before it was split: they stay so.
from ..client import Client as Client
from ..client import ClientOptions as ClientOptions
from ..client import Commands as Commands
from ..client import ServerSpec as ServerSpec
from ..client import normalize_server_spec as normalize_server_spec
from ..client import server_name as server_name
from ..client import warn_if_config_endpoint as warn_if_config_endpoint
from ..exceptions import MemcachePoolTimeoutError as MemcachePoolTimeoutError
from ..protocol import validate_key as validate_key
from ..retry import RetryPolicy as RetryPolicy
from ..retry import call_with_retry as call_with_retry
from ..retry import replayable as replayable
from .objectpool import CHECK_IDLE_AFTER as CHECK_IDLE_AFTER
from .objectpool import DEFAULT_POOL_TIMEOUT, Lease, ObjectPool
from .objectpool import T as T
from .pooled import PooledClient

__all__ = ["DEFAULT_POOL_TIMEOUT", "Lease", "ObjectPool", "PooledClient"]
