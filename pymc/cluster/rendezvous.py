"""Rendezvous hashing: pymemcache 4.0's placement, and the MurmurHash3 it scores with.

:class:`RendezvousHash` places keys exactly like pymemcache 4.0's ``RendezvousHash`` (the
default of its ``HashClient``): every node scores ``murmur3_32(f"{node}-{key}")`` and the
highest score wins, a tie going to the larger node name. One deliberate difference: a bytes
key holding UTF-8 text is placed as that text, with its str spelling (pymemcache formats it as
``"b'k'"``, which splits one key over two nodes). See :mod:`pymc.cluster.hashing` for what the
locators share (immutable values, ``from_nodes``, ``with_node``/``without_node``).

Pure computation: no I/O, no locks, standard library only.
"""

from __future__ import annotations

import struct
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
    cast,
)

__all__ = ["KB", "K", "Key", "RendezvousHash", "murmur3_32"]

Key = Union[str, bytes]
K = TypeVar("K")
KB = TypeVar("KB", bound=Union[str, bytes])

_MASK32 = 0xFFFFFFFF
_C1 = 0xCC9E2D51
_C2 = 0x1B873593
_N = 0xE6546B64
_F1 = 0x85EBCA6B
_F2 = 0xC2B2AE35


# ---------------------------------------------------------------------------------------------
# MurmurHash3 x86_32
# ---------------------------------------------------------------------------------------------


def _low_bytes(text: str) -> bytes:
    """One byte per character: the low 8 bits of its code point.

    This is what pymemcache's pure-Python murmur hashes (``ord(ch) & 0xFF``), so a non-ASCII
    character does *not* hash as its UTF-8 bytes.
    """
    if text.isascii():
        return text.encode("ascii")
    # UTF-32-LE stores each code point as 4 little-endian bytes; the first is the low byte.
    # "surrogatepass" keeps lone surrogates (which pymemcache hashes like any character).
    return text.encode("utf-32-le", "surrogatepass")[::4]


def _murmur_blocks(h: int, data: bytes) -> int:
    """Mix the whole 4-byte blocks of ``data`` into the state ``h``."""
    end = len(data) & ~3
    if end:
        for (k,) in struct.iter_unpack("<I", data[:end]):
            k = (k * _C1) & _MASK32
            k = ((k << 15) | (k >> 17)) & _MASK32
            h ^= (k * _C2) & _MASK32
            h = ((h << 13) | (h >> 19)) & _MASK32
            h = (h * 5 + _N) & _MASK32
    return h


def murmur3_32(data: Key, seed: int = 0) -> int:
    """MurmurHash3 x86_32 of ``data``, as an unsigned 32-bit int.

    ``bytes`` are hashed as they are. A ``str`` is hashed one byte per character, that byte
    being the low 8 bits of the code point: the same value pymemcache's ``murmur3_32`` gives
    for the same string (it differs from hashing the UTF-8 encoding for non-ASCII text).
    """
    raw = _low_bytes(data) if isinstance(data, str) else bytes(data)
    h = _murmur_blocks(seed & _MASK32, raw)
    tail = raw[len(raw) & ~3 :]
    if tail:
        k = (int.from_bytes(tail, "little") * _C1) & _MASK32
        k = ((k << 15) | (k >> 17)) & _MASK32
        h ^= (k * _C2) & _MASK32
    h ^= len(raw)
    h ^= h >> 16
    h = (h * _F1) & _MASK32
    h ^= h >> 13
    h = (h * _F2) & _MASK32
    return h ^ (h >> 16)


def _is_default_murmur(func: Callable[..., Any]) -> bool:
    """Whether ``func`` is pymc's or pymemcache's murmur3_32 (same values, fast path applies)."""
    if func is murmur3_32:
        return True
    return (
        getattr(func, "__module__", None) == "pymemcache.client.murmur3"
        and getattr(func, "__name__", None) == "murmur3_32"
    )


def _key_text(key: object) -> str:
    """The text hashed after ``f"{node}-"`` for ``key``: pymemcache's, except for bytes.

    A bytes key is placed as its str spelling (``b"k"`` as ``"k"``), so that both
    spellings of one key live on one node: pymemcache formats bytes as ``"b'k'"``, which
    sends ``set("k")`` and ``get(b"k")`` to different nodes (a miss, or a stale value
    after a write through the other spelling). Bytes that are no UTF-8 text, which no str
    key can spell, keep pymemcache's placement."""
    if type(key) is str:
        return key
    if type(key) is bytes:
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return repr(key)  # what f"{key}" gives for bytes, minus the -b BytesWarning
    return f"{key}"


# ---------------------------------------------------------------------------------------------
# Rendezvous (highest random weight) hashing, pymemcache placement
# ---------------------------------------------------------------------------------------------
#
# Speed: every node hashes f"{node}-{key}". The node's prefix f"{node}-" is the same for every
# key, so the murmur state after its whole 4-byte blocks is computed once per node, along with
# its last ``len % 4`` bytes, which share the next block with the key's first bytes. Nodes whose
# prefixes have the same length modulo 4 then see the key's remaining blocks at the same offsets,
# so they are hashed together: each node's 32-bit state is a 64-bit lane of one Python int and
# every murmur step is a handful of big-int operations on all lanes at once (SWAR). Lanes never
# carry into each other: every intermediate value is below 2**64 and is masked back to 32 bits.
# The node's rank in name order sits under the final score, so the max over lanes picks the
# highest score and, on a tie, the larger name, as pymemcache does.


class _Lanes:
    """Precomputed state for nodes whose ``f"{node}-"`` prefixes have the same length mod 4.

    Each per-node value is kept both packed (lane ``i`` = bits ``64*i`` up) for one key, and as
    8-byte little-endian lane images for building the wider many-keys layout of ``get_nodes``.
    """

    __slots__ = (
        "add",
        "count",
        "fmt",
        "lane_lengths",
        "lane_ranks",
        "lane_starts",
        "lane_tails",
        "lengths",
        "mask",
        "need",
        "ones",
        "rank_bits",
        "ranks",
        "shift",
        "size",
        "start",
        "tails",
    )

    def __init__(
        self, rem: int, entries: Sequence[Tuple[int, bytes]], rank_bits: int, seed: int
    ) -> None:
        # entries: (rank, prefix bytes) per node; every prefix has len % 4 == rem.
        self.shift = 8 * rem
        self.need = (4 - rem) & 3
        self.count = len(entries)
        self.rank_bits = rank_bits
        starts = [_murmur_blocks(seed, prefix[: len(prefix) - rem]) for _, prefix in entries]
        tails = [int.from_bytes(prefix[len(prefix) - rem :], "little") for _, prefix in entries]
        lengths = [len(prefix) for _, prefix in entries]
        ranks = [rank for rank, _ in entries]
        self.lane_starts = _lane_images(starts)
        self.lane_tails = _lane_images(tails)
        self.lane_lengths = _lane_images(lengths)
        self.lane_ranks = _lane_images(ranks)
        self.start = _pack(self.lane_starts, 1)
        self.tails = _pack(self.lane_tails, 1)
        self.lengths = _pack(self.lane_lengths, 1)
        self.ranks = _pack(self.lane_ranks, 1)
        self.ones = _pack((_ONE,) * self.count, 1)
        self.mask = _MASK32 * self.ones
        self.add = _N * self.ones
        self.fmt = struct.Struct(f"<{self.count}Q")
        self.size = 8 * self.count


_ONE = (1).to_bytes(8, "little")


def _lane_images(values: Iterable[int]) -> Tuple[bytes, ...]:
    return tuple(value.to_bytes(8, "little") for value in values)


def _pack(images: Iterable[bytes], repeat: int) -> int:
    """One int holding each 8-byte lane image ``repeat`` times in a row, image after image."""
    return int.from_bytes(b"".join([image * repeat for image in images]), "little")


def _rendezvous_best(groups: Tuple[_Lanes, ...], raw: bytes) -> int:
    """max over nodes of ``(score << rank_bits) | rank`` for the low-byte text ``raw``."""
    best = -1
    n = len(raw)
    for g in groups:
        mask = g.mask
        ones = g.ones
        add = g.add
        h = g.start
        need = g.need
        if need:
            # The node's leftover prefix bytes and the key's first bytes share one block.
            if n >= need:
                k = g.tails | (int.from_bytes(raw[:need], "little") << g.shift) * ones
                k = (k * _C1) & mask
                k = ((k << 15) | (k >> 17)) & mask
                h ^= (k * _C2) & mask
                h = ((h << 13) | (h >> 19)) & mask
                h = (h * 5 + add) & mask
                rest = raw[need:]
            else:
                # Leftover prefix plus the whole (short) key are the final partial block.
                k = g.tails | (int.from_bytes(raw, "little") << g.shift) * ones
                k = (k * _C1) & mask
                k = ((k << 15) | (k >> 17)) & mask
                h ^= (k * _C2) & mask
                rest = b""
        else:
            rest = raw
        end = len(rest) & ~3
        if end:
            # The key's remaining blocks are the same for every lane: mix each once, broadcast.
            for (k,) in struct.iter_unpack("<I", rest[:end]):
                k = (k * _C1) & _MASK32
                k = ((k << 15) | (k >> 17)) & _MASK32
                h ^= ((k * _C2) & _MASK32) * ones
                h = ((h << 13) | (h >> 19)) & mask
                h = (h * 5 + add) & mask
        if end != len(rest):
            k = (int.from_bytes(rest[end:], "little") * _C1) & _MASK32
            k = ((k << 15) | (k >> 17)) & _MASK32
            h ^= ((k * _C2) & _MASK32) * ones
        h ^= g.lengths + n * ones
        h ^= (h >> 16) & mask
        h = (h * _F1) & mask
        h ^= (h >> 13) & mask
        h = (h * _F2) & mask
        h ^= (h >> 16) & mask
        if g.count == 1:
            top = (h << g.rank_bits) | g.ranks
        else:
            top = max(g.fmt.unpack(((h << g.rank_bits) | g.ranks).to_bytes(g.size, "little")))
        if top > best:
            best = top
    return best


_BATCH_MIN = 5  # below this many keys of one length, hashing them one by one is as fast
_BATCH_MAX = 1024  # keys per batch: bigger ints stop paying off


def _rendezvous_best_many(groups: Tuple[_Lanes, ...], raws: Sequence[bytes], n: int) -> List[int]:
    """``_rendezvous_best`` for many low-byte texts, all ``n`` bytes long, hashed together.

    The lanes now cover every (node, key) pair, node-major: lane ``i * m + j`` is node ``i``
    with key ``j``. The key's 4-byte blocks are gathered across keys with strided slices (byte
    ``b`` of block ``off`` of every key is ``data[off + b :: n]``), mixed once per key, then
    copied to every node's lanes by one multiplication.
    """
    m = len(raws)
    data = b"".join(raws)
    fb = int.from_bytes
    key_ones = fb(_ONE * m, "little")
    key_mask = key_ones * _MASK32
    gap = bytes(8 * m - 8)
    best: Optional[List[int]] = None
    for g in groups:
        nodes = g.count
        ones = _pack((_ONE,) * nodes, m)
        mask = ones * _MASK32
        add = ones * _N
        to_nodes = fb((_ONE + gap) * nodes, "little")  # copies m key lanes to every node
        h = _pack(g.lane_starts, m)
        buf = bytearray(8 * m)
        off = 0
        if g.need:
            off = min(g.need, n)
            for b in range(off):
                buf[b::8] = data[b::n]
            k = _pack(g.lane_tails, m) | (fb(buf, "little") << g.shift) * to_nodes
            k = (k * _C1) & mask
            k = ((k << 15) | (k >> 17)) & mask
            h ^= (k * _C2) & mask
            if off == g.need:  # a whole block, else the final partial one
                h = ((h << 13) | (h >> 19)) & mask
                h = (h * 5 + add) & mask
        while off + 4 <= n:
            buf[0::8] = data[off::n]
            buf[1::8] = data[off + 1 :: n]
            buf[2::8] = data[off + 2 :: n]
            buf[3::8] = data[off + 3 :: n]
            k = (fb(buf, "little") * _C1) & key_mask
            k = ((k << 15) | (k >> 17)) & key_mask
            h ^= ((k * _C2) & key_mask) * to_nodes
            h = ((h << 13) | (h >> 19)) & mask
            h = (h * 5 + add) & mask
            off += 4
        if off < n:
            buf = bytearray(8 * m)
            for b in range(n - off):
                buf[b::8] = data[off + b :: n]
            k = (fb(buf, "little") * _C1) & key_mask
            k = ((k << 15) | (k >> 17)) & key_mask
            h ^= ((k * _C2) & key_mask) * to_nodes
        h ^= _pack(g.lane_lengths, m) + n * ones
        h ^= (h >> 16) & mask
        h = (h * _F1) & mask
        h ^= (h >> 13) & mask
        h = (h * _F2) & mask
        h ^= (h >> 16) & mask
        h = (h << g.rank_bits) | _pack(g.lane_ranks, m)
        scores = struct.unpack(f"<{m * nodes}Q", h.to_bytes(8 * m * nodes, "little"))
        if nodes == 1:
            tops = list(scores)
        else:
            tops = list(map(max, *[scores[i * m : (i + 1) * m] for i in range(nodes)]))
        best = tops if best is None else list(map(max, best, tops))
    return best if best is not None else []


class _RendezvousState:
    """Everything a lookup needs, built once per node set and swapped in one assignment."""

    __slots__ = ("by_rank", "generic", "groups", "nodes", "rank_bits", "rank_mask")

    def __init__(self, nodes: Tuple[str, ...], seed: int, fast: bool) -> None:
        self.nodes = nodes
        self.generic = not fast
        names = sorted(set(nodes), key=str)
        self.by_rank: Tuple[str, ...] = tuple(names)
        self.rank_bits = max(1, (len(names) - 1).bit_length())
        self.rank_mask = (1 << self.rank_bits) - 1
        buckets: Dict[int, List[Tuple[int, bytes]]] = {}
        if fast:
            for rank, node in enumerate(names):
                prefix = _low_bytes(f"{node}-")
                buckets.setdefault(len(prefix) & 3, []).append((rank, prefix))
        self.groups: Tuple[_Lanes, ...] = tuple(
            _Lanes(rem, entries, self.rank_bits, seed & _MASK32)
            for rem, entries in sorted(buckets.items())
        )


class RendezvousHash:
    """Rendezvous (highest random weight) hashing with pymemcache 4.0's placement.

    ``RendezvousHash(nodes=None, seed=0, hash_function=murmur3_32)`` takes the same arguments as
    ``pymemcache.client.rendezvous.RendezvousHash`` and ``get_node(key)`` returns the same node
    for every key: the node with the highest ``hash_function(f"{node}-{key}", seed)``, ties going
    to the larger ``str(node)``. As in pymemcache, a ``bytes`` key is placed by its ``repr``
    (``f"{node}-{key}"`` renders ``b'...'``), so ``"k"`` and ``b"k"`` may live on different nodes.

    The instance is meant to be used as an immutable value: :meth:`with_node` and
    :meth:`without_node` return new locators. :meth:`add_node` and :meth:`remove_node` mutate
    in place, for pymemcache compatibility only.
    """

    __slots__ = ("__weakref__", "_hash_function", "_seed", "_state")

    def __init__(
        self,
        nodes: Optional[Iterable[str]] = None,
        seed: int = 0,
        hash_function: Callable[[str, int], int] = murmur3_32,
    ) -> None:
        self._seed = seed
        self._hash_function = hash_function
        self._state = self._build(tuple(dict.fromkeys(nodes or ())))

    @classmethod
    def from_nodes(
        cls,
        nodes: Iterable[str],
        seed: int = 0,
        hash_function: Callable[[str, int], int] = murmur3_32,
    ) -> RendezvousHash:
        """A locator over all of ``nodes``, built in one step (see :func:`build_locator`)."""
        return cls(nodes, seed, hash_function)

    def _build(self, nodes: Tuple[str, ...]) -> _RendezvousState:
        return _RendezvousState(nodes, self._seed, _is_default_murmur(self._hash_function))

    # -- read-only view -------------------------------------------------------------------------
    @property
    def nodes(self) -> Tuple[str, ...]:
        """The nodes, in the order they were added."""
        return self._state.nodes

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def hash_function(self) -> Callable[[str], int]:
        """``text -> score`` with the seed applied, like pymemcache's attribute."""
        func, seed = self._hash_function, self._seed
        return lambda text: func(text, seed)

    def __len__(self) -> int:
        return len(self._state.nodes)

    def __contains__(self, node: object) -> bool:
        return node in self._state.nodes

    def __repr__(self) -> str:
        return f"RendezvousHash({list(self._state.nodes)!r}, seed={self._seed!r})"

    # -- immutable API --------------------------------------------------------------------------
    def _derive(self, nodes: Tuple[str, ...]) -> RendezvousHash:
        other = RendezvousHash.__new__(RendezvousHash)
        other._seed = self._seed
        other._hash_function = self._hash_function
        other._state = other._build(nodes)
        return other

    def with_node(self, node: str) -> RendezvousHash:
        """A new locator with ``node`` added (an equal copy if it is already present)."""
        nodes = self._state.nodes
        return self._derive(nodes if node in nodes else (*nodes, node))

    def without_node(self, node: str) -> RendezvousHash:
        """A new locator without ``node``; ``ValueError`` if it is not present."""
        nodes = self._state.nodes
        if node not in nodes:
            raise ValueError(f"No such node {node} to remove")
        return self._derive(tuple(n for n in nodes if n != node))

    def with_nodes(self, nodes: Iterable[str]) -> RendezvousHash:
        """A new locator over exactly ``nodes``, keeping this one's seed and hash function."""
        return self._derive(tuple(dict.fromkeys(nodes)))

    # -- pymemcache's mutating API --------------------------------------------------------------
    def add_node(self, node: str) -> None:
        """Add ``node`` in place (pymemcache API); a node already present is ignored."""
        state = self._state
        if node not in state.nodes:
            self._state = self._build((*state.nodes, node))

    def remove_node(self, node: str) -> None:
        """Remove ``node`` in place (pymemcache API); ``ValueError`` if it is not present."""
        state = self._state
        if node not in state.nodes:
            raise ValueError(f"No such node {node} to remove")
        self._state = self._build(tuple(n for n in state.nodes if n != node))

    # -- lookups --------------------------------------------------------------------------------
    def _generic_node(self, state: _RendezvousState, key: object) -> Optional[str]:
        # Any other hash function: evaluate it per node, with pymemcache's comparison rules
        # (scores start above -1; an equal score keeps the larger str() of the two).
        func, seed = self._hash_function, self._seed
        best_score = -1
        winner: Optional[str] = None
        text = _key_text(key)
        for node in state.nodes:
            score = func(f"{node}-{text}", seed)
            if score > best_score:
                best_score, winner = score, node
            elif score == best_score:
                winner = max(str(node), str(winner))
        return winner

    def get_node(self, key: object) -> Optional[str]:
        """The node for ``key`` (``str``, ``bytes`` or anything pymemcache would format), or
        ``None`` when there are no nodes."""
        state = self._state
        if state.generic:
            return self._generic_node(state, key)
        names = state.by_rank
        if len(names) < 2:
            return names[0] if names else None
        text = key if type(key) is str else _key_text(key)
        raw = text.encode("ascii") if text.isascii() else _low_bytes(text)
        return names[_rendezvous_best(state.groups, raw) & state.rank_mask]

    def get_nodes(self, keys: Iterable[K]) -> Dict[str, List[K]]:
        """Group ``keys`` by node: ``{node: [key, ...]}``, each list in input order.

        The same placement as :meth:`get_node`, with the per-call overhead paid once. With no
        nodes the result is empty (callers that must fail then should check ``len()`` first).
        """
        state = self._state
        out: Dict[str, List[K]] = {}
        names = state.by_rank
        if len(names) < 2 or state.generic:
            if state.generic:
                for key in keys:
                    node = self._generic_node(state, key)
                    if node is not None:
                        out.setdefault(node, []).append(key)
            elif names:
                out[names[0]] = list(keys)
            return out
        groups = state.groups
        keys = list(keys)
        winners = [0] * len(keys)
        # Keys of one length are hashed together (much faster per key once there are a few);
        # the rest one by one. ``winners`` keeps input order for the final grouping.
        by_length: Dict[int, Tuple[List[bytes], List[int]]] = {}
        for index, key in enumerate(keys):
            text = cast(str, key) if type(key) is str else _key_text(key)
            raw = text.encode("ascii") if text.isascii() else _low_bytes(text)
            same = by_length.get(len(raw))
            if same is None:
                by_length[len(raw)] = ([raw], [index])
            else:
                same[0].append(raw)
                same[1].append(index)
        for length, (raws, indexes) in by_length.items():
            if len(raws) < _BATCH_MIN:
                for raw, index in zip(raws, indexes):
                    winners[index] = _rendezvous_best(groups, raw)
                continue
            for lo in range(0, len(raws), _BATCH_MAX):
                tops = _rendezvous_best_many(groups, raws[lo : lo + _BATCH_MAX], length)
                for index, top in zip(indexes[lo : lo + _BATCH_MAX], tops):
                    winners[index] = top
        rank_mask = state.rank_mask
        lists: List[List[K]] = [[] for _ in names]
        for key, top in zip(keys, winners):
            lists[top & rank_mask].append(key)
        for name, found in zip(names, lists):
            if found:
                out[name] = found
        return out
