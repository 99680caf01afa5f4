"""What an ElastiCache client does with what discovery found, whatever runs the discovery
(the poller thread of :class:`~pymc.elasticache.ElastiCacheClient`, or the asyncio task of
``pymc.asyncio.ElastiCacheClient``): :class:`FollowsConfig`, a mixin over a cluster client.

Layer: imports ``client``, ``cluster``, ``protocol`` and ``exceptions``; no I/O.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union, cast

from ..client import ServerSpec, server_name
from ..cluster import NodeSet
from ..exceptions import AllNodesDownError, ClusterNotReadyError
from ..protocol import ClusterConfig
from .poller import Change

__all__ = ["FollowsConfig"]

logger = logging.getLogger("pymc")


class FollowsConfig:
    """Readiness, and the application of a discovery's outcome (a new node list, a plain
    server, a failure), for a cluster client with ``set_servers``. The client holds
    ``_ready`` and ``_stop`` (events: ``set()``/``is_set()``), ``_state_lock`` (guards
    ``_closed`` and the node-set swap) and the attributes :meth:`__init__` of an
    ElastiCache client sets."""

    endpoint: ServerSpec
    use_vpc: bool
    config_version: Optional[int]
    plain: bool
    _closed: bool
    _failing: bool
    _older_seen: Optional[int]
    _ready: Any
    _stop: Any
    _state_lock: Any
    _tls_hostnames: Dict[str, str]

    if TYPE_CHECKING:  # what the cluster client provides

        @property
        def snapshot(self) -> NodeSet: ...

        @property
        def nodes(self) -> List[ServerSpec]: ...

        def set_servers(self, servers: Any) -> bool: ...

    @property
    def ready(self) -> bool:
        """Whether a node list (or a plain server) is known."""
        return bool(self._ready.is_set())

    def _no_nodes(self) -> AllNodesDownError:
        if not self._ready.is_set():
            return ClusterNotReadyError(
                f"no node list from {server_name(self.endpoint)} yet (discovery is retrying "
                "in the background; wait_ready() waits for it)"
            )
        return cast(Any, super())._no_nodes()  # type: ignore[no-any-return]

    def known_nodes(self) -> List[Tuple[str, ServerSpec, Optional[str]]]:
        """The nodes a discovery asks when the endpoint fails: ``(name, address, TLS
        hostname)`` of the node set in use (none before the first node list)."""
        if self.config_version is None:
            return []
        return [
            (name, spec, self._tls_hostnames.get(name))
            for name, spec in self.snapshot.servers.items()
        ]

    def take_outcome(
        self, outcome: Union[ClusterConfig, Exception, None]
    ) -> Tuple[bool, Optional[Change]]:
        """Apply a discovery's outcome: whether the node set changed, and the ``(old,
        new)`` lists for ``on_change``."""
        if isinstance(outcome, Exception):
            if not self._stop.is_set():
                self._discovery_failed(repr(outcome))
            return False, None
        if outcome is None:
            if self.config_version is not None:  # it had a config: this is news, not truth
                self._discovery_failed("the endpoint now says it has no cluster configuration")
                return False, None
            return self._become_plain(), None
        change = self._apply(outcome)
        return change is not None, change

    def _discovery_failed(self, why: str) -> None:
        if not self._failing:
            self._failing = True
            state = "keeping the last good node set" if self.ready else "not ready yet, retrying"
            logger.warning(
                "pymc: ElastiCache discovery at %s is failing (%s); %s",
                server_name(self.endpoint),
                why,
                state,
            )

    def _discovery_recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.info("pymc: ElastiCache discovery at %s works again", server_name(self.endpoint))

    def _become_plain(self) -> bool:
        with self._state_lock:
            if self._closed:
                return False
            logger.info(
                "pymc: %s has no ElastiCache cluster configuration (plain memcached or "
                "Serverless): using it as the only node",
                server_name(self.endpoint),
            )
            self.plain = True
            self.set_servers([self.endpoint])
            self._ready.set()
        self._discovery_recovered()
        return True

    def _servers_of(self, config: ClusterConfig) -> List[Tuple[str, int]]:
        servers = []
        for node in config.nodes:
            host = node.ip if self.use_vpc and node.ip else node.hostname
            servers.append((host, node.port))
            if host != node.hostname:
                self._tls_hostnames[server_name((host, node.port))] = node.hostname
        return servers

    def _apply(self, config: ClusterConfig) -> Optional[Change]:
        """Use ``config`` if it is newer than what we have. Returns ``(old, new)`` node
        lists when the node set changed after the first, for ``on_change``; else None."""
        self._discovery_recovered()
        current = self.config_version
        if current is not None and config.version <= current:
            if config.version < current and self._older_seen != config.version:
                self._older_seen = config.version
                logger.info(
                    "pymc: ElastiCache %s reported version %d, older than %d; keeping %d",
                    server_name(self.endpoint),
                    config.version,
                    current,
                    current,
                )
            return None
        with self._state_lock:
            if self._closed:
                return None
            old = self.nodes
            changed = self.set_servers(self._servers_of(config))
            self.config_version = config.version
            first = not self._ready.is_set()
            self._ready.set()
        if changed and not first:
            return old, self.nodes
        return None
