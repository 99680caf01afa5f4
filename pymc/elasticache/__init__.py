"""AWS ElastiCache (memcached) auto-discovery: a HashClient that follows the cluster.

:class:`ElastiCacheClient` asks the cluster's configuration endpoint for the node list and a
daemon thread (a greenlet under ``gevent.monkey.patch_all()``) keeps asking every
``poll_interval`` seconds (jittered by ±10%, so a fleet of workers does not poll in step).
A node list is applied only when its version is strictly greater than the current one; the
new snapshot is built off the request path and swapped in with one assignment (see
:mod:`pymc.cluster`).

The rule that keeps keys where every other client looks for them: the configuration
endpoint is never used as a cache node because discovery *failed*. Its name points at one
node of the cluster, so every key would land there while other clients spread keys by
hash. Instead:

* until the first node list arrives the client is *not ready*: requests raise
  :class:`~pymc.exceptions.ClusterNotReadyError` (or, with ``ignore_exc``, read as misses
  and write nothing) while discovery retries in the background, 3 tries 500 ms apart, then
  every ``poll_interval``; ``wait_ready()`` waits for it;
* only a real "no configuration here" answer -- a bare ``ERROR`` to ``config get cluster``
  and then no config from the legacy ``get AmazonElastiCache:cluster`` either -- means a
  plain memcached or ElastiCache Serverless: then the endpoint is the one node;
* ``ERROR <message>``, ``SERVER_ERROR``, a timeout, a reset or a malformed answer is a
  transient failure: the last good nodes stay, and the poller asks the known nodes in turn
  (each node of a cluster answers ``config get cluster``).

Each discovery has one overall deadline and a size cap, and opens a fresh connection (so
DNS is resolved again). The deadline covers the whole discovery: the endpoint, then the
known nodes it falls back on (so 30 dead nodes cost one deadline, not 31), and a
``refresh()``'s wait for a discovery another thread has in flight. ``close()`` stops the
poller at once, and after it returns nothing changes. The poller holds the client weakly
(strongly only during a poll), so a client dropped without ``close()`` -- as code written
for pymemcache's thread-less client does -- is collected, and its poller then ends. A
forked child (``gunicorn --preload``, multiprocessing) starts its own poller on first use.


The parts: :mod:`.discovery` (one discovery: the endpoint, then the known nodes, within one
deadline), :mod:`.poller` (the thread that repeats it) and :mod:`.clients` (the clients).

Layer: imports ``client``, ``cluster``, ``protocol`` and ``exceptions`` only.
"""

# The names after `as` were importable from pymc.elasticache before it was split: they stay so.
from ..client import ServerSpec as ServerSpec
from ..client import normalize_server_spec as normalize_server_spec
from ..client import server_name as server_name
from ..cluster import HashClient as HashClient
from ..exceptions import AllNodesDownError as AllNodesDownError
from ..exceptions import ClusterNotReadyError as ClusterNotReadyError
from ..exceptions import MemcacheError as MemcacheError
from ..exceptions import MemcacheNetworkError as MemcacheNetworkError
from ..exceptions import MemcacheProtocolError as MemcacheProtocolError
from ..exceptions import MemcacheTimeoutError as MemcacheTimeoutError
from ..exceptions import MemcacheUnexpectedCloseError as MemcacheUnexpectedCloseError
from ..exceptions import MemcacheUnknownCommandError as MemcacheUnknownCommandError
from ..exceptions import network_error as network_error
from ..protocol import MAX_CONFIG_BYTES as MAX_CONFIG_BYTES
from ..protocol import NEED_DATA as NEED_DATA
from ..protocol import ClusterConfig as ClusterConfig
from ..protocol import ErrorReply as ErrorReply
from ..protocol import Expect as Expect
from ..protocol import ExpectConfig as ExpectConfig
from ..protocol import ExpectLegacyConfig as ExpectLegacyConfig
from ..protocol import Reader as Reader
from ..protocol import encode_config_get as encode_config_get
from ..protocol import encode_legacy_config_get as encode_legacy_config_get
from .clients import AWSElastiCacheHashClient, ElastiCacheClient
from .discovery import DISCOVERY_TIMEOUT as DISCOVERY_TIMEOUT
from .discovery import discover, fetch_config
from .discovery import logger as logger
from .poller import JITTER as JITTER
from .poller import STARTUP_SPACING as STARTUP_SPACING
from .poller import STARTUP_TRIES as STARTUP_TRIES
from .poller import Change as Change
from .poller import ChangeHook as ChangeHook
from .poller import poll_delay

__all__ = [
    "AWSElastiCacheHashClient",
    "ElastiCacheClient",
    "discover",
    "fetch_config",
    "poll_delay",
]
