"""Test helpers that ship with pymc: an emulated ElastiCache configuration endpoint (and node).

:class:`ConfigEndpoint` is a small TCP server that speaks the part of the memcached protocol
an ElastiCache (memcached) *configuration endpoint* adds: ``config get cluster`` and, for
engines older than 1.4.14, the legacy ``get AmazonElastiCache:cluster``. Put it in front of
your own memcached servers (a local ``memcached`` process, a container, ...) and your
application's :class:`pymc.ElastiCacheClient` discovers them exactly as it would discover the
nodes of a real cluster. Then change the cluster under the running application (add nodes,
remove nodes, break the endpoint) and check that it behaves::

    import pymc
    from pymc.testing import ConfigEndpoint

    def test_app_follows_scale_out():
        with ConfigEndpoint([("127.0.0.1", 11211)]) as endpoint:
            with pymc.ElastiCacheClient(endpoint.server, poll_interval=0.5) as client:
                client.set("greeting", "hello")
                endpoint.set_nodes([("127.0.0.1", 11211), ("127.0.0.1", 11212)])
                ...  # within a poll interval or two, client.nodes lists both servers
                endpoint.set_mode("down")  # the endpoint disappears: the last nodes stay
                ...

Real ElastiCache *nodes* answer ``config get cluster`` too. ``ConfigEndpoint(nodes,
upstream=(host, port))`` emulates such a node: it answers the configuration requests itself
and relays every other command to the memcached server at ``upstream``, so a client that
polls the nodes when the configuration endpoint is down can be tested: put one emulator with
an ``upstream`` in front of each memcached server and list the emulators as the nodes.

Broken and unusual endpoints are one :meth:`ConfigEndpoint.set_mode` call away (see
:data:`MODES`): errors, garbage, malformed or tolerant-but-odd configurations, a hung server,
a server that drips its reply, one that announces a terabyte, one that is full, and one that
is gone. The module needs nothing but the standard library and pymc itself; without an
``upstream`` it never touches the memcached servers it lists.
"""

# The names after `as` were importable from pymc.testing before it was split: they stay so.
from ..protocol import ClusterNode as ClusterNode
from .endpoint import ConfigEndpoint
from .replies import CALL_TIMEOUT as CALL_TIMEOUT
from .replies import DRIP_SECONDS as DRIP_SECONDS
from .replies import ERROR_REPLY as ERROR_REPLY
from .replies import HUGE_CHUNK as HUGE_CHUNK
from .replies import HUGE_SIZE as HUGE_SIZE
from .replies import LEGACY_KEY as LEGACY_KEY
from .replies import LINGER as LINGER
from .replies import MAX_CONNECTIONS as MAX_CONNECTIONS
from .replies import MAX_LINE as MAX_LINE
from .replies import MAX_PENDING_OUTPUT as MAX_PENDING_OUTPUT
from .replies import MISS_REPLY as MISS_REPLY
from .replies import MODES, NodeSpec, config_reply
from .replies import TICK as TICK
from .replies import TOO_MANY_REPLY as TOO_MANY_REPLY
from .replies import VERSION_REPLY as VERSION_REPLY

__all__ = ["MODES", "ConfigEndpoint", "NodeSpec", "config_reply"]
