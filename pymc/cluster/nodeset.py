"""The node set: one immutable snapshot of the cluster, and where each key lives in it.

Every operation of a :class:`~pymc.cluster.HashClient` reads its snapshot once and uses it to
the end, so a concurrent change (``add_server``, ``remove_server``, an ejection, a revival, an
ElastiCache poll) can never show it half a node set. A change builds a new NodeSet and swaps it
in with one assignment; the read path takes no lock.

Placement: a snapshot caches the node of each key it has placed (it never changes, so the
answers never go stale); ``place_keys`` splits checked keys by node in one pass over that cache
(compiled in pymc/protocol/speedups.c, with :func:`place_keys_py` as its reference).

Layer: imports ``client`` (``ServerSpec``), ``pool`` (``PooledClient``), ``protocol``
(``SPEEDUPS``) and the locators.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from ..client import ServerSpec
from ..pool import PooledClient
from ..protocol import SPEEDUPS
from .locators import build_locator

__all__ = [
    "PLACEMENT_CACHE_SIZE",
    "NodeSet",
    "bare_key",
    "place_keys",
    "place_keys_py",
    "server_key",
]

Key = Union[str, bytes]
AnyKey = Union[Key, Tuple[Any, Key]]

#: Placement answers kept per snapshot (a snapshot is immutable, so they never go stale).
PLACEMENT_CACHE_SIZE = 65536


class NodeSet:
    """One immutable view of the cluster: node names, locator, per-node clients, version.

    The locator is built in one step from all the names (see :func:`pymc.hashing.build_locator`:
    ``hasher.from_nodes(names, ...)`` for pymc's hashers, ``hasher()`` plus ``add_node`` per
    name for a pymemcache-style one). ``cache`` holds the placements made so far
    (``{routing key: node name}``).
    """

    __slots__ = ("cache", "clients", "locator", "names", "servers", "version")

    def __init__(
        self,
        version: int,
        servers: Mapping[str, ServerSpec],
        clients: Mapping[str, PooledClient],
        hasher: Callable[[], Any],
    ) -> None:
        self.version = version
        self.servers = dict(servers)
        self.clients = dict(clients)
        self.names = tuple(servers)
        self.locator = build_locator(hasher, self.names)  # new, never changed later
        self.cache: Dict[Any, Optional[str]] = {}

    def node_for(self, key: Any) -> Optional[str]:
        """The node a key (str/bytes, or a tuple's server key) lives on; None if no node."""
        cache = self.cache
        name = cache.get(key)
        if name is None:
            if not self.names:
                return None
            name = self.locator.get_node(key)
            if len(cache) >= PLACEMENT_CACHE_SIZE:
                cache.clear()
            cache[key] = name
        return name

    def remember(self, keys: List[Any], name: str) -> None:
        """Cache the placement of ``keys`` (all on node ``name``)."""
        cache = self.cache
        if len(cache) + len(keys) > PLACEMENT_CACHE_SIZE:
            cache.clear()
        for key in keys:
            cache[key] = name

    def group(self, keys: Iterable[AnyKey]) -> Dict[str, List[AnyKey]]:
        """Keys grouped by node (the snapshot has nodes): placements come from the cache,
        and the keys it has not seen are placed in one batch by the locator when it can."""
        cache = self.cache
        groups: Dict[str, List[AnyKey]] = {}
        unseen: List[AnyKey] = []
        for key in keys:
            name = cache.get(key[0] if type(key) is tuple else key)
            if name is None:
                unseen.append(key)
            else:
                group = groups.get(name)
                if group is None:
                    groups[name] = [key]
                else:
                    group.append(key)
        if unseen:
            batch = getattr(self.locator, "get_nodes", None)
            if batch is not None and not any(type(k) is tuple for k in unseen):
                for name, placed in batch(unseen).items():
                    groups.setdefault(name, []).extend(placed)
                    self.remember(placed, name)
            else:
                for key in unseen:
                    name = self.node_for(key[0] if type(key) is tuple else key)
                    groups.setdefault(name, []).append(key)  # type: ignore[arg-type]
        return groups

    def __repr__(self) -> str:
        return f"<NodeSet v{self.version} {list(self.names)}>"


def place_keys_py(
    checked: Dict[bytes, AnyKey], cache: Dict[Any, Optional[str]]
) -> Tuple[Dict[str, Dict[bytes, AnyKey]], Optional[Dict[AnyKey, bytes]]]:
    """``(placed, unseen)`` for checked keys (``{raw: key}``): each node's ``{raw: key}``
    for the keys whose node ``cache`` (a NodeSet's placement cache) knows, and ``{key: raw}``
    for the others (None when there are none). The reference of the compiled
    ``place_keys`` (pymc/speedups.c)."""
    placed: Dict[str, Dict[bytes, AnyKey]] = {}
    unseen: Optional[Dict[AnyKey, bytes]] = None
    for raw, key in checked.items():
        name = cache.get(key)
        if name is None:
            if unseen is None:
                unseen = {}
            unseen[key] = raw
        else:
            wanted = placed.get(name)
            if wanted is None:
                placed[name] = {raw: key}
            else:
                wanted[raw] = key
    return placed, unseen


place_keys: Callable[[Any, Any], Any] = place_keys_py
if SPEEDUPS:
    from ..protocol import speedups

    if hasattr(speedups, "place_keys"):  # (else a build older than this file)
        place_keys = speedups.place_keys


def server_key(key: AnyKey) -> Any:
    """What a key is placed by: the server key of a ``(server_key, key)`` tuple."""
    return key[0] if type(key) is tuple else key


def bare_key(key: AnyKey) -> Key:
    """The key itself, without the routing part of a ``(server_key, key)`` tuple."""
    return key[1] if type(key) is tuple else key  # type: ignore[return-value]
