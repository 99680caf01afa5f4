"""Weighted ketama: libmemcached's placement (pylibmc with ``ketama_weighted``), bit for bit.

Node names are the strings a ``HashClient`` builds: ``"host:port"`` for TCP servers, the
socket path for UNIX ones. Pure computation: no I/O, no locks, standard library only.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

from .rendezvous import KB, Key

__all__ = ["KetamaHash", "ketama_points"]

# ---------------------------------------------------------------------------------------------
# Weighted ketama, libmemcached placement
# ---------------------------------------------------------------------------------------------

_KETAMA_POINTS = 160  # MEMCACHED_POINTS_PER_SERVER_KETAMA
_DEFAULT_PORT = 11211
_f32 = struct.Struct("<f")


def _to_f32(value: float) -> float:
    """Round a double to the nearest IEEE single, as a C ``float`` store does."""
    result: float = _f32.unpack(_f32.pack(value))[0]
    return result


def ketama_points(weight: int, total_weight: int, server_count: int) -> int:
    """Continuum points libmemcached gives a server in weighted ketama mode.

    libmemcached computes ``floor(weight / total_weight * 160 / 4 * server_count + 1e-10) * 4``
    with every intermediate rounded to a C ``float``; that rounding is part of the placement.
    Most equal-weight fleets get 160 points per server, but e.g. 25, 47 or 50 servers get 156,
    and unequal weights land on a multiple of 4 near their share of ``160 * server_count``.
    """
    pct = _to_f32(_to_f32(float(weight)) / _to_f32(float(total_weight)))
    scaled = _to_f32(_to_f32(_to_f32(pct * _KETAMA_POINTS) / 4.0) * float(server_count))
    return int(_to_f32(scaled + 0.0000000001) // 1) * 4


def _split_node(node: str) -> Tuple[str, int]:
    """``(host, port)`` as libmemcached sees the server named ``node``."""
    if node.startswith("/"):
        return node, 0  # a UNIX socket: libmemcached records port 0
    host, sep, port = node.rpartition(":")
    if sep and port.isdigit():
        return (host[1:-1] if host.startswith("[") and host.endswith("]") else host), int(port)
    return node, _DEFAULT_PORT


def _point_prefix(node: str) -> str:
    """The text before ``-<index>`` in this node's continuum point names."""
    host, port = _split_node(node)
    return host if port == _DEFAULT_PORT else f"{host}:{port}"


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


class _KetamaState:
    __slots__ = ("nodes", "owners", "single", "values", "weights")

    def __init__(self, nodes: Tuple[str, ...], weights: Tuple[int, ...]) -> None:
        self.nodes = nodes
        self.weights = weights
        total = sum(weights)
        points: List[Tuple[int, int]] = []
        unpack4 = struct.Struct("<4I").unpack
        for index, (node, weight) in enumerate(zip(nodes, weights)):
            prefix = _point_prefix(node)
            for i in range(ketama_points(weight, total, len(nodes)) // 4):
                for value in unpack4(_md5(f"{prefix}-{i}".encode())):
                    points.append((value, index))
        points.sort()
        self.values: List[int] = [value for value, _ in points]
        self.owners: Tuple[str, ...] = tuple(nodes[index] for _, index in points)
        # libmemcached skips hashing entirely with a single server.
        self.single: Optional[str] = nodes[0] if len(nodes) == 1 else None


class KetamaHash:
    """Consistent hashing with libmemcached's weighted ketama continuum (pylibmc placement).

    ``KetamaHash(nodes, weights)`` with ``nodes`` named ``"host:port"`` (or a socket path) and
    ``weights`` a mapping ``node -> positive int`` (missing nodes weigh 1) places keys exactly as
    ``pylibmc.Client(["host:port:weight", ...], behaviors={"ketama_weighted": True})``:

    * each server owns ``ketama_points(weight, total, count)`` points on a ring of uint32 (160
      per server with equal weights, for most fleet sizes); point ``4*i + j`` is the ``j``-th
      little-endian uint32 of ``md5(f"{host}:{port}-{i}")``, the ``:port`` being left out when
      it is 11211 (a UNIX socket path counts as port 0);
    * a key's hash is the little-endian uint32 of the first 4 bytes of its MD5 (``str`` keys
      are UTF-8 encoded first, as pylibmc does);
    * the key belongs to the first point at or above its hash, wrapping to the lowest point.
      Two servers' points with the same value (a rare 32-bit collision) are ordered by the
      servers' order in ``nodes``; libmemcached's ``qsort`` leaves their order unspecified.

    Like :class:`RendezvousHash` it is an immutable value with ``with_node``/``without_node``;
    ``add_node``/``remove_node`` mutate in place for pymemcache-style callers.
    """

    __slots__ = ("__weakref__", "_state")

    def __init__(
        self,
        nodes: Optional[Iterable[str]] = None,
        weights: Optional[Mapping[str, int]] = None,
    ) -> None:
        names = tuple(dict.fromkeys(nodes or ()))
        weights = weights or {}
        unknown = set(weights).difference(names)
        if unknown:
            raise ValueError(f"weights given for unknown nodes: {sorted(unknown)!r}")
        self._state = self._build(names, tuple(weights.get(n, 1) for n in names))

    @classmethod
    def from_nodes(
        cls, nodes: Iterable[str], weights: Optional[Mapping[str, int]] = None
    ) -> KetamaHash:
        """A locator over all of ``nodes``, built in one step, with the ``weights`` of those
        nodes; weights of nodes not in ``nodes`` are ignored (a cluster client passes its live
        nodes, and a weighted node may be ejected or removed).

        This is what ``HashClient(servers, hasher=functools.partial(KetamaHash, weights=...))``
        calls for every node set, through :func:`build_locator`.
        """
        names = tuple(dict.fromkeys(nodes))
        present = set(names)
        mine = {n: w for n, w in (weights or {}).items() if n in present}
        return cls(names, mine)

    @staticmethod
    def _build(nodes: Tuple[str, ...], weights: Tuple[int, ...]) -> _KetamaState:
        for node, weight in zip(nodes, weights):
            if type(weight) is not int or weight < 1:
                raise ValueError(f"weight of {node!r} must be a positive int, not {weight!r}")
        return _KetamaState(nodes, weights)

    @classmethod
    def _from_state(cls, state: _KetamaState) -> KetamaHash:
        other = cls.__new__(cls)
        other._state = state
        return other

    # -- read-only view -------------------------------------------------------------------------
    @property
    def nodes(self) -> Tuple[str, ...]:
        return self._state.nodes

    @property
    def weights(self) -> Dict[str, int]:
        return dict(zip(self._state.nodes, self._state.weights))

    def __len__(self) -> int:
        return len(self._state.nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._state.nodes

    def __repr__(self) -> str:
        return f"KetamaHash({list(self._state.nodes)!r}, weights={self.weights!r})"

    # -- immutable API --------------------------------------------------------------------------
    def with_node(self, node: str, weight: int = 1) -> KetamaHash:
        """A new locator with ``node`` added, or with its weight set if already present."""
        current = self.weights
        current[node] = weight
        return self._from_state(self._build(tuple(current), tuple(current.values())))

    def without_node(self, node: str) -> KetamaHash:
        """A new locator without ``node``; ``ValueError`` if it is not present."""
        current = self.weights
        if node not in current:
            raise ValueError(f"No such node {node} to remove")
        del current[node]
        return self._from_state(self._build(tuple(current), tuple(current.values())))

    # -- pymemcache-style mutating API ----------------------------------------------------------
    def add_node(self, node: str, weight: int = 1) -> None:
        """Add ``node`` in place; a node already present is ignored."""
        if node not in self._state.nodes:
            self._state = self.with_node(node, weight)._state

    def remove_node(self, node: str) -> None:
        """Remove ``node`` in place; ``ValueError`` if it is not present."""
        self._state = self.without_node(node)._state

    # -- lookups --------------------------------------------------------------------------------
    def get_node(self, key: Key) -> Optional[str]:
        """The node for ``key``, or ``None`` when there are no nodes."""
        state = self._state
        if state.single is not None or not state.values:
            return state.single
        raw = key.encode() if isinstance(key, str) else key
        values = state.values
        i = bisect.bisect_left(values, int.from_bytes(_md5(raw)[:4], "little"))
        return state.owners[i if i < len(values) else 0]

    def get_nodes(self, keys: Iterable[KB]) -> Dict[str, List[KB]]:
        """Group ``keys`` by node: ``{node: [key, ...]}``, each list in input order; empty when
        there are no nodes."""
        state = self._state
        out: Dict[str, List[KB]] = {}
        if state.single is not None:
            out[state.single] = list(keys)
            return out
        values, owners = state.values, state.owners
        if not values:
            return out
        size = len(values)
        find = bisect.bisect_left
        md5 = hashlib.md5
        frombytes = int.from_bytes
        for key in keys:
            raw = key.encode() if isinstance(key, str) else key
            i = find(values, frombytes(md5(raw, usedforsecurity=False).digest()[:4], "little"))
            node = owners[i if i < size else 0]
            found = out.get(node)
            if found is None:
                out[node] = [key]
            else:
                found.append(key)
        return out
