"""AWS ElastiCache (memcached) auto-discovery: a HashClient that follows the cluster.

:class:`ElastiCacheClient` asks the cluster's configuration endpoint for the node list
(``config get cluster``) once at start-up, then a daemon thread (a greenlet under
``gevent.monkey.patch_all()``) polls it every ``poll_interval`` seconds. A new node list is
applied only when its version is strictly greater than the current one; the new snapshot is
built off the request path and swapped in with one assignment (see :mod:`pymc.cluster`):
pools of nodes that stay are kept, removed nodes' pools close once their operations finish.

Failures of discovery never break requests: the last good node set stays, one warning is
logged (not one per poll), and the next poll tries again. An endpoint that answers
``ERROR`` (plain memcached, ElastiCache Serverless) is used as a single node, unpolled.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Callable, List, Optional, Tuple

from .client import Client, ServerSpec, normalize_server_spec, server_name
from .cluster import HashClient
from .exceptions import MemcacheUnknownCommandError
from .protocol import ClusterConfig

__all__ = ["AWSElastiCacheHashClient", "ElastiCacheClient", "discover"]

logger = logging.getLogger("pymc")

#: Timeouts of a discovery request when the client was given none: discovery must never
#: hang the constructor or the poller.
DISCOVERY_TIMEOUT = 5.0

ChangeHook = Callable[[List[ServerSpec], List[ServerSpec]], Any]


def discover(
    endpoint: Any, timeout: float = DISCOVERY_TIMEOUT, tls_context: Any = None
) -> ClusterConfig:
    """Ask a configuration endpoint for the cluster's version and nodes (one request, a
    fresh connection, so the endpoint's name is resolved again each time)."""
    client = Client(endpoint, connect_timeout=timeout, timeout=timeout, tls_context=tls_context)
    try:
        return client.cluster_config()
    finally:
        client.close()


class ElastiCacheClient(HashClient):
    """A :class:`HashClient` whose nodes come from an ElastiCache configuration endpoint.

    ``endpoint`` is ``"host:port"`` (the ``.cfg.`` name). ``use_vpc=True`` connects to
    each node's IP address, ``False`` to its hostname; with ``tls_context`` the certificate
    is checked against the node's hostname either way. ``on_change(old, new)`` is called
    (from the poller) with the node lists after each change. Every other keyword is a
    :class:`HashClient` option.
    """

    def __init__(
        self,
        endpoint: Any,
        poll_interval: float = 60.0,
        use_vpc: bool = True,
        on_change: Optional[ChangeHook] = None,
        **options: Any,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be > 0")
        self.endpoint = normalize_server_spec(endpoint)
        self.poll_interval = poll_interval
        self.use_vpc = use_vpc
        self.on_change = on_change
        self.config_version: Optional[int] = None
        self._stop = threading.Event()
        self._refresh_lock = threading.Lock()
        self._warned = False
        self._poller: Optional[threading.Thread] = None
        super().__init__([], **options)
        opts = self.options
        self._discovery_timeout = opts.connect_timeout or DISCOVERY_TIMEOUT
        self._discovery_options = dataclasses.replace(
            self._node_options,
            connect_timeout=self._discovery_timeout,
            timeout=opts.timeout or self._discovery_timeout,
        )
        try:
            config = self._discover_config()
        except MemcacheUnknownCommandError:
            logger.info(
                "pymc: %s is not an ElastiCache configuration endpoint (it answered ERROR); "
                "using it as the only node",
                server_name(self.endpoint),
            )
            self.set_servers([self.endpoint])
            return  # nothing to poll
        except Exception as exc:
            self._warn(f"discovery at start-up failed ({exc!r}); using the endpoint as a node")
            self.set_servers([self.endpoint])
        else:
            self._apply(config, notify=False)  # the first node set is no change
        self._poller = threading.Thread(
            target=self._poll, name=f"pymc-elasticache-{server_name(self.endpoint)}", daemon=True
        )
        self._poller.start()

    # ------------------------------------------------------------------ discovery

    def _discover_config(self) -> ClusterConfig:
        client = Client.from_options(self.endpoint, self._discovery_options)
        try:
            return client.cluster_config()
        finally:
            client.close()

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            logger.warning("pymc: ElastiCache %s: %s", server_name(self.endpoint), message)

    def _servers_of(self, config: ClusterConfig) -> List[Tuple[str, int]]:
        servers = []
        for node in config.nodes:
            host = node.ip if self.use_vpc and node.ip else node.hostname
            servers.append((host, node.port))
            if host != node.hostname:
                self._tls_hostnames[server_name((host, node.port))] = node.hostname
        return servers

    def _apply(self, config: ClusterConfig, notify: bool = True) -> bool:
        """Use ``config`` if it is newer than what we have; return whether nodes changed."""
        with self._refresh_lock:
            current = self.config_version
            if current is not None and config.version <= current:
                if config.version < current:
                    self._warn(
                        f"it reported version {config.version}, older than {current}; "
                        "keeping the last good node set"
                    )
                else:  # a good answer: the next failure is news again
                    self._warned = False
                return False
            old = self.nodes
            changed = self.set_servers(self._servers_of(config))
            self.config_version = config.version
            self._warned = False
        if changed and notify and self.on_change is not None:
            try:
                self.on_change(old, self.nodes)
            except Exception:
                logger.exception("pymc: on_change hook failed")
        return changed

    def refresh(self) -> bool:
        """Poll the endpoint now; return whether the node set changed. Failures keep the
        last good node set and are logged once."""
        try:
            config = self._discover_config()
        except MemcacheUnknownCommandError:
            self._warn("it answered ERROR to config get cluster; keeping the last good node set")
            return False
        except Exception as exc:
            self._warn(f"discovery failed ({exc!r}); keeping the last good node set")
            return False
        return self._apply(config)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.refresh()
            except Exception:  # never let the poller die
                logger.exception("pymc: ElastiCache poll failed")

    # ------------------------------------------------------------------ life cycle

    @property
    def polling(self) -> bool:
        """Whether the poller thread is running."""
        return self._poller is not None and self._poller.is_alive()

    def close(self) -> None:
        """Stop the poller and close every connection."""
        self._stop.set()
        poller = self._poller
        if poller is not None and poller is not threading.current_thread():
            poller.join(timeout=1.0)  # a poll stuck in discovery ends on its own timeout
        super().close()

    def __enter__(self) -> ElastiCacheClient:
        return self

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {server_name(self.endpoint)} "
            f"config_version={self.config_version} nodes={[server_name(n) for n in self.nodes]}>"
        )


class AWSElastiCacheHashClient(ElastiCacheClient):
    """For code written against pymemcache's ElastiCache extension: ``cfg_node`` is the
    configuration endpoint and :meth:`reconfigure_nodes` polls it now."""

    def __init__(self, cfg_node: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(cfg_node, *args, **kwargs)

    def reconfigure_nodes(self) -> None:
        self.refresh()
