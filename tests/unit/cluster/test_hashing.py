"""Node locators: placement identical to pymemcache (rendezvous) and pylibmc (weighted ketama).

The rendezvous tests compare with pymemcache's own ``RendezvousHash`` key by key; the ketama
tests compare with pylibmc's ``Client.hash(key)`` (libmemcached's ``memcached_generate_hash``,
the index of the server a key goes to) and, once, with where pylibmc really stores keys on four
live memcached servers.
"""

from __future__ import annotations

import functools
import hashlib
import random
import string
import struct
import time
from typing import Callable, Dict, List, Optional, Sequence, Union

import pylibmc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymemcache.client.murmur3 import murmur3_32 as pymemcache_murmur3_32
from pymemcache.client.rendezvous import RendezvousHash as PymemcacheRendezvousHash

from pymc.hashing import KetamaHash, RendezvousHash, build_locator, ketama_points, murmur3_32

Key = Union[str, bytes]

pytestmark = pytest.mark.timeout(60)


def random_keys(count: int, seed: int, *, with_bytes: bool = True) -> List[Key]:
    """ASCII, BMP and astral unicode, lone surrogates and arbitrary bytes keys (without bytes
    keys and surrogates, which UTF-8 cannot encode, when ``with_bytes`` is false)."""
    rnd = random.Random(seed)
    printable = string.ascii_letters + string.digits + ":_-./"
    keys: List[Key] = []
    for _ in range(count):
        size = rnd.randint(0, 40)
        kind = rnd.random()
        if kind < 0.45:
            keys.append("".join(rnd.choice(printable) for _ in range(size)))
        elif kind < 0.85 or not with_bytes:
            points = (
                rnd.randint(0x21, 0x7E),
                rnd.randint(0xA0, 0xFF),
                rnd.randint(0x100, 0xD7FF),
                rnd.randint(0xE000, 0xFFFF),
                rnd.randint(0x10000, 0x10FFFF),
                rnd.randint(0xD800, 0xDFFF),  # a lone surrogate
            )[: 6 if with_bytes else 5]
            keys.append("".join(chr(rnd.choice(points)) for _ in range(size)))
        else:
            keys.append(bytes(rnd.randint(0, 255) for _ in range(size)))
    return keys


KEYS = random_keys(12_000, seed=1)


def spelled(key: Key) -> Key:
    """The key pymemcache must be given to place it where pymc does: the same key, except
    that bytes holding UTF-8 text go as that text (pymc places both spellings of a key
    together; pymemcache places bytes by their repr, "b'k'")."""
    if type(key) is bytes:
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return key
    return key


NODE_SETS = [
    ["127.0.0.1:11211", "127.0.0.1:11212", "127.0.0.1:11213", "127.0.0.1:11214"],
    # prefixes f"{node}-" of every length mod 4, so several lane groups per lookup
    ["a:1", "bb:22", "ccc:333", "dddd:4444", "eeeee:5", "10.0.0.1:11211", "10.0.0.12:11211"],
    ["h\u00e9:1", "\U0001f600:2", "x", "/var/run/memcached.sock"],
    ["10.0.0.1:11211", "10.0.0.2:11211"],
]


# -- murmur3 --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, seed, expected",
    [
        ("", 0, 0),
        ("", 1, 0x514E28B7),
        ("hello", 0, 0x248BFA47),
        ("The quick brown fox jumps over the lazy dog", 0, 0x2E4FF723),
        ("abc", 0x9747B28C, 0xC84A62DD),
        (b"hello", 0, 0x248BFA47),
    ],
)
def test_murmur3_known_vectors(data: Key, seed: int, expected: int) -> None:
    assert murmur3_32(data, seed) == expected


def test_murmur3_matches_pymemcache_for_every_kind_of_text() -> None:
    texts = [k for k in KEYS[:3000] if isinstance(k, str)]
    for seed in (0, 1, 0xDEADBEEF):
        for text in texts:
            assert murmur3_32(text, seed) == pymemcache_murmur3_32(text, seed), (text, seed)


def test_murmur3_hashes_the_low_byte_of_each_character() -> None:
    # pymemcache hashes ord(ch) & 0xFF, not UTF-8: these three strings collide.
    assert murmur3_32("\u0101bc") == murmur3_32("\u0201bc") == murmur3_32(b"\x01bc")
    assert murmur3_32("\U0001f600") == murmur3_32(b"\x00")
    assert murmur3_32("\ud800x") == murmur3_32(b"\x00x")
    assert murmur3_32("\u00e9") != murmur3_32("\u00e9".encode())


@settings(max_examples=300, deadline=None)
@given(st.text(), st.integers(min_value=0, max_value=2**32 - 1))
def test_murmur3_matches_pymemcache_property(text: str, seed: int) -> None:
    assert murmur3_32(text, seed) == pymemcache_murmur3_32(text, seed)


# -- rendezvous: differential against pymemcache --------------------------------------------------


@pytest.mark.parametrize("nodes", NODE_SETS, ids=range(len(NODE_SETS)))
def test_rendezvous_places_every_key_like_pymemcache(nodes: List[str]) -> None:
    ours = RendezvousHash(nodes)
    theirs = PymemcacheRendezvousHash(list(nodes))
    expected = [theirs.get_node(spelled(key)) for key in KEYS]
    assert [ours.get_node(key) for key in KEYS] == expected
    # the batch call agrees key for key, keeps input order and loses no key
    grouped = ours.get_nodes(KEYS)
    assert sorted(grouped) == sorted(set(expected))
    for node, keys in grouped.items():
        assert keys == [key for key, want in zip(KEYS, expected) if want == node]


@pytest.mark.parametrize("seed", [1, 7, 0xFFFFFFFF, -1, 2**40 + 3])
def test_rendezvous_seed_matches_pymemcache(seed: int) -> None:
    nodes = NODE_SETS[1]
    ours = RendezvousHash(nodes, seed=seed)
    theirs = PymemcacheRendezvousHash(list(nodes), seed=seed)
    keys = KEYS[:2000]
    expected = [theirs.get_node(spelled(key)) for key in keys]
    assert [ours.get_node(key) for key in keys] == expected
    grouped = ours.get_nodes(keys)
    assert {key_index: node for node, ks in grouped.items() for key_index in map(id, ks)} == {
        id(key): node for key, node in zip(keys, expected)
    }


def test_rendezvous_batch_covers_every_short_length_and_alignment() -> None:
    # >= 5 keys of each length 0..12 take the many-keys path; fewer take the one-by-one path.
    rnd = random.Random(5)
    keys: List[Key] = []
    for length in range(13):
        for _ in range(6 if length % 2 else 3):
            keys.append("".join(rnd.choice(string.ascii_letters) for _ in range(length)))
    for nodes in NODE_SETS:
        ours, theirs = RendezvousHash(nodes), PymemcacheRendezvousHash(list(nodes))
        grouped = ours.get_nodes(keys)
        placed = {id(k): node for node, ks in grouped.items() for k in ks}
        assert [placed[id(k)] for k in keys] == [theirs.get_node(spelled(k)) for k in keys]


def test_rendezvous_large_batches() -> None:
    nodes = NODE_SETS[0]
    keys = [f"user:{i:06d}" for i in range(2500)]  # one length, split into several batches
    grouped = RendezvousHash(nodes).get_nodes(keys)
    theirs = PymemcacheRendezvousHash(list(nodes))
    for node, ks in grouped.items():
        assert all(theirs.get_node(spelled(k)) == node for k in ks)
    assert sum(map(len, grouped.values())) == len(keys)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=6, unique=True),
    st.lists(st.one_of(st.text(max_size=20), st.binary(max_size=20)), max_size=30),
)
def test_rendezvous_matches_pymemcache_property(nodes: List[str], keys: List[Key]) -> None:
    ours, theirs = RendezvousHash(nodes), PymemcacheRendezvousHash(list(nodes))
    expected = [theirs.get_node(spelled(k)) for k in keys]
    assert [ours.get_node(k) for k in keys] == expected
    placed = {id(k): node for node, ks in ours.get_nodes(keys).items() for k in ks}
    assert [placed[id(k)] for k in keys] == expected


def test_rendezvous_tie_goes_to_the_larger_name() -> None:
    # "n\u0101" and "n\u0201" have the same low bytes, so they score the same for every key.
    low, high = "n\u0101:1", "n\u0201:1"
    theirs = PymemcacheRendezvousHash([high, "other:2", low])
    for nodes in ([low, high, "other:2"], [high, "other:2", low]):
        ours = RendezvousHash(nodes)
        keys = KEYS[:3000]
        placed = [ours.get_node(k) for k in keys]
        assert low not in placed and high in placed
        assert placed == [theirs.get_node(spelled(k)) for k in keys]
        assert low not in ours.get_nodes(keys)


def test_rendezvous_tie_rule_with_a_custom_hash_function() -> None:
    def constant(text: str, seed: int) -> int:
        return 42

    nodes = ["b:1", "c:1", "a:1"]
    assert RendezvousHash(nodes, hash_function=constant).get_node("k") == "c:1"
    assert PymemcacheRendezvousHash(list(nodes), hash_function=constant).get_node("k") == "c:1"


def test_rendezvous_custom_hash_function_matches_pymemcache() -> None:
    def md5_score(text: str, seed: int) -> int:
        return int.from_bytes(
            hashlib.md5(f"{seed}{text}".encode("utf-8", "surrogatepass")).digest()[:4], "big"
        )

    nodes = NODE_SETS[1]
    ours = RendezvousHash(nodes, seed=3, hash_function=md5_score)
    theirs = PymemcacheRendezvousHash(list(nodes), seed=3, hash_function=md5_score)
    keys = KEYS[:1000]
    expected = [theirs.get_node(spelled(k)) for k in keys]
    assert [ours.get_node(k) for k in keys] == expected
    placed = {id(k): node for node, ks in ours.get_nodes(keys).items() for k in ks}
    assert [placed[id(k)] for k in keys] == expected
    assert ours.hash_function("x") == md5_score("x", 3)


def test_rendezvous_accepts_pymemcaches_murmur_function() -> None:
    nodes = NODE_SETS[0]
    ours = RendezvousHash(nodes, hash_function=pymemcache_murmur3_32)
    plain = RendezvousHash(nodes)
    assert [ours.get_node(k) for k in KEYS[:500]] == [plain.get_node(k) for k in KEYS[:500]]


def test_rendezvous_places_both_spellings_of_a_key_together() -> None:
    # pymemcache hashes f"{node}-{key}", which renders bytes as b'...', so set("k") and
    # get(b"k") go to different nodes there; here bytes holding UTF-8 text are that text.
    ours = RendezvousHash(NODE_SETS[1])
    keys = [f"user:{i}" for i in range(2000)] + ["h\u00e9", "\U0001f600x"]
    assert [ours.get_node(k.encode()) for k in keys] == [ours.get_node(k) for k in keys]
    grouped = ours.get_nodes([k.encode() for k in keys])
    assert all(ours.get_node(k.decode()) == node for node, ks in grouped.items() for k in ks)
    # bytes no str key can spell keep pymemcache's placement, by their repr
    for key in (b"\xff\x00", b"\xc3"):
        assert ours.get_node(key) == ours.get_node(repr(key))
    assert ours.get_node(5) == ours.get_node("5")  # other objects: their format()


# -- rendezvous: API ------------------------------------------------------------------------------


def test_rendezvous_empty_and_single_node() -> None:
    empty = RendezvousHash()
    assert empty.get_node("k") is None
    assert empty.get_nodes(["a", "b"]) == {}
    assert len(empty) == 0 and empty.nodes == ()
    one = RendezvousHash(["solo:1"])
    assert one.get_node("k") == "solo:1"
    assert one.get_nodes(["a", b"b"]) == {"solo:1": ["a", b"b"]}


def test_rendezvous_immutable_api_returns_new_locators() -> None:
    base = RendezvousHash(["a:1", "b:1"], seed=5)
    grown = base.with_node("c:1")
    assert base.nodes == ("a:1", "b:1") and grown.nodes == ("a:1", "b:1", "c:1")
    assert grown.seed == 5 and "c:1" in grown and "c:1" not in base
    shrunk = grown.without_node("a:1")
    assert shrunk.nodes == ("b:1", "c:1") and grown.nodes == ("a:1", "b:1", "c:1")
    assert base.with_node("a:1").nodes == base.nodes
    assert base.with_nodes(["z:1", "z:1", "y:1"]).nodes == ("z:1", "y:1")
    with pytest.raises(ValueError, match="No such node"):
        base.without_node("zz:1")
    reference = PymemcacheRendezvousHash(["b:1", "c:1"], seed=5)
    assert all(shrunk.get_node(k) == reference.get_node(spelled(k)) for k in KEYS[:500])


def test_rendezvous_mutating_api_like_pymemcache() -> None:
    ours, theirs = RendezvousHash(), PymemcacheRendezvousHash()
    for node in ("a:1", "b:2", "a:1", "c:3"):
        ours.add_node(node)
        theirs.add_node(node)
    assert list(ours.nodes) == theirs.nodes
    ours.remove_node("b:2")
    theirs.remove_node("b:2")
    assert list(ours.nodes) == theirs.nodes
    with pytest.raises(ValueError, match="No such node"):
        ours.remove_node("b:2")
    assert all(ours.get_node(k) == theirs.get_node(spelled(k)) for k in KEYS[:500])
    assert repr(ours) == "RendezvousHash(['a:1', 'c:3'], seed=0)"


def test_rendezvous_adding_a_node_only_moves_keys_to_it() -> None:
    before = RendezvousHash(NODE_SETS[0])
    after = before.with_node("127.0.0.1:11215")
    moved = [k for k in KEYS[:4000] if before.get_node(k) != after.get_node(k)]
    assert all(after.get_node(k) == "127.0.0.1:11215" for k in moved)
    assert 0.1 < len(moved) / 4000 < 0.3


# -- ketama: point rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weight, total, count, points",
    [
        (1, 1, 1, 160),
        (1, 4, 4, 160),
        (1, 25, 25, 156),  # float rounding: 39.99999 points/4
        (1, 50, 50, 156),
        (3, 13, 4, 144),
        (7, 13, 4, 344),
        (11, 28, 7, 436),  # 440 in double precision; libmemcached computes in float
        (1, 10, 3, 48),
    ],
)
def test_ketama_points_rule(weight: int, total: int, count: int, points: int) -> None:
    assert ketama_points(weight, total, count) == points


def test_ketama_point_names_drop_the_default_port() -> None:
    # Each point name gives 4 points: the 4 little-endian uint32 of md5(f"{name}-{i}").
    def first_points(name: str) -> List[int]:
        return list(struct.unpack("<4I", hashlib.md5(f"{name}-0".encode()).digest()))

    for node, name in [
        ("10.0.0.1:11211", "10.0.0.1"),
        ("10.0.0.1:11212", "10.0.0.1:11212"),
        ("cache", "cache"),
        ("[::1]:11211", "::1"),
        ("::1:5000", "::1:5000"),
        ("/tmp/mc.sock", "/tmp/mc.sock:0"),
    ]:
        ring = KetamaHash([node])._state
        assert len(ring.values) == 160
        assert set(first_points(name)) <= set(ring.values), node


def test_ketama_key_hash_and_wraparound() -> None:
    ring = KetamaHash(["a:1", "b:2", "c:3"])
    state = ring._state
    for key in KETAMA_KEYS[:2000]:
        raw = key.encode() if isinstance(key, str) else key
        h = int.from_bytes(hashlib.md5(raw).digest()[:4], "little")
        above = [(v, owner) for v, owner in zip(state.values, state.owners) if v >= h]
        want = above[0][1] if above else state.owners[0]
        assert ring.get_node(key) == want


# -- ketama: differential against pylibmc ---------------------------------------------------------


def pylibmc_placement(specs: Sequence[str], keys: Sequence[Key]) -> List[int]:
    client = pylibmc.Client(list(specs), behaviors={"ketama_weighted": True})
    return [client.hash(key) for key in keys]


def _ketama_keys() -> List[Key]:
    rnd = random.Random(3)
    keys = [k for k in random_keys(9000, seed=2, with_bytes=False) if k]
    return keys + [
        bytes(rnd.randint(1, 255) for _ in range(rnd.randint(1, 30))) for _ in range(2000)
    ]


KETAMA_KEYS = _ketama_keys()  # pylibmc hashes a str key as its UTF-8 bytes


@pytest.mark.parametrize(
    "nodes, weights",
    [
        (["127.0.0.1:21001", "127.0.0.1:21002", "127.0.0.1:21003"], {}),
        (["127.0.0.1:11211", "127.0.0.1:11212", "10.1.1.1:11211", "localhost:5"], {}),
        (
            ["127.0.0.1:11211", "127.0.0.1:11212", "127.0.0.1:11213", "127.0.0.1:11214"],
            {"127.0.0.1:11211": 3, "127.0.0.1:11213": 2, "127.0.0.1:11214": 7},
        ),
        (
            [f"10.0.0.{i}:11211" for i in range(1, 8)],
            dict(zip([f"10.0.0.{i}:11211" for i in range(1, 8)], [11, 3, 3, 3, 3, 3, 2])),
        ),
        ([f"10.9.0.{i}:22122" for i in range(25)], {}),  # 156 points each
        (["[::1]:22122", "[::1]:11211", "fe80::2:5"], {}),
        (["/tmp/pymc-a.sock", "/tmp/pymc-b.sock", "/tmp/pymc-c.sock"], {}),
        (["only:1"], {}),
    ],
    ids=["equal3", "port11211", "weighted4", "float-rounding7", "equal25", "ipv6", "unix", "one"],
)
def test_ketama_places_every_key_like_pylibmc(nodes: List[str], weights: Dict[str, int]) -> None:
    specs = []
    for node in nodes:
        if node.startswith("/"):
            specs.append(node)
        else:
            host, _, port = node.rpartition(":")
            host = host if host.startswith("[") or ":" not in host else f"[{host}]"
            specs.append(f"{host}:{port}:{weights.get(node, 1)}")
    expected = [nodes[i] for i in pylibmc_placement(specs, KETAMA_KEYS)]
    ring = KetamaHash(nodes, weights)
    assert [ring.get_node(k) for k in KETAMA_KEYS] == expected
    grouped = ring.get_nodes(KETAMA_KEYS)
    for node, keys in grouped.items():
        assert keys == [k for k, want in zip(KETAMA_KEYS, expected) if want == node]
    assert sum(map(len, grouped.values())) == len(KETAMA_KEYS)


def test_ketama_random_weighted_fleets_like_pylibmc() -> None:
    rnd = random.Random(9)
    keys = KETAMA_KEYS[:1500]
    for _ in range(12):
        count = rnd.randint(2, 9)
        nodes = [
            f"10.0.{i}.{rnd.randint(1, 250)}:{rnd.choice([11211, 11300 + i])}" for i in range(count)
        ]
        weights = {node: rnd.randint(1, 9) for node in nodes}
        specs = [f"{node}:{weights[node]}" for node in nodes]
        expected = [nodes[i] for i in pylibmc_placement(specs, keys)]
        ring = KetamaHash(nodes, weights)
        assert [ring.get_node(k) for k in keys] == expected, weights


# -- ketama: API ----------------------------------------------------------------------------------


def test_ketama_api() -> None:
    empty = KetamaHash()
    assert empty.get_node("k") is None and empty.get_nodes(["k"]) == {}
    ring = KetamaHash(["a:1", "b:2"], {"b:2": 3})
    assert ring.weights == {"a:1": 1, "b:2": 3}
    grown = ring.with_node("c:3", weight=2)
    assert ring.nodes == ("a:1", "b:2") and grown.weights == {"a:1": 1, "b:2": 3, "c:3": 2}
    assert grown.without_node("c:3").weights == ring.weights
    reweighted = ring.with_node("a:1", weight=4)
    assert reweighted.weights == {"a:1": 4, "b:2": 3} and ring.weights["a:1"] == 1
    with pytest.raises(ValueError, match="No such node"):
        ring.without_node("zz:1")
    with pytest.raises(ValueError, match="unknown nodes"):
        KetamaHash(["a:1"], {"b:1": 2})
    with pytest.raises(ValueError, match="positive int"):
        KetamaHash(["a:1"], {"a:1": 0})
    ring.add_node("c:3", weight=2)
    assert ring.weights == grown.weights
    assert all(ring.get_node(k) == grown.get_node(k) for k in KETAMA_KEYS[:300])
    ring.add_node("c:3", weight=9)  # already present: ignored, like RendezvousHash.add_node
    assert ring.weights["c:3"] == 2
    ring.remove_node("c:3")
    assert ring.nodes == ("a:1", "b:2") and "c:3" not in ring and len(ring) == 2
    assert repr(ring) == "KetamaHash(['a:1', 'b:2'], weights={'a:1': 1, 'b:2': 3})"


def test_ketama_adding_a_node_only_moves_keys_to_it() -> None:
    before = KetamaHash(["a:1", "b:1", "c:1", "d:1"])
    after = before.with_node("e:1")
    moved = [k for k in KETAMA_KEYS[:4000] if before.get_node(k) != after.get_node(k)]
    assert all(after.get_node(k) == "e:1" for k in moved)
    assert 0.1 < len(moved) / 4000 < 0.3


# -- ketama against live servers ------------------------------------------------------------------


# -- speed sanity (real numbers live in benchmarks/) ----------------------------------------------


def test_lookups_are_not_pathologically_slow() -> None:
    nodes = NODE_SETS[0]
    keys = [f"user:{i}" for i in range(2000)]
    for ring in (RendezvousHash(nodes), KetamaHash(nodes)):
        lookup: Callable[[Key], Optional[str]] = ring.get_node
        start = time.perf_counter()
        for key in keys:
            lookup(key)
        ring.get_nodes(keys)
        assert time.perf_counter() - start < 2.0


# -- building a locator in one step ---------------------------------------------------------------


class _Counted(KetamaHash):
    __slots__ = ()
    rings = 0

    def __init__(self, *args: object, **kwargs: object) -> None:
        type(self).rings += 1
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def add_node(self, node: str, weight: int = 1) -> None:
        type(self).rings += 1
        super().add_node(node, weight)


def test_build_locator_builds_pymc_hashers_in_one_step() -> None:
    nodes = [f"10.2.0.{i}:11211" for i in range(60)]
    _Counted.rings = 0
    ring = build_locator(_Counted, nodes)
    assert type(ring) is _Counted and _Counted.rings == 1 and ring.nodes == tuple(nodes)
    keys = KETAMA_KEYS[:500]
    assert [ring.get_node(k) for k in keys] == [KetamaHash(nodes).get_node(k) for k in keys]

    rendezvous = build_locator(functools.partial(RendezvousHash, seed=7), nodes)
    assert rendezvous.seed == 7 and rendezvous.nodes == tuple(nodes)
    assert build_locator(RendezvousHash, nodes).nodes == tuple(nodes)


def test_build_locator_weights_apply_to_the_nodes_present_only() -> None:
    nodes = ["a:1", "b:1", "c:1"]
    weights = {"a:1": 3, "c:1": 2, "gone:1": 9}
    ring = build_locator(functools.partial(KetamaHash, weights=weights), nodes)
    assert ring.weights == {"a:1": 3, "b:1": 1, "c:1": 2}
    assert KetamaHash.from_nodes(nodes[:2], weights).weights == {"a:1": 3, "b:1": 1}
    with pytest.raises(ValueError, match="unknown nodes"):  # the constructor stays strict
        KetamaHash(nodes, weights)
    with pytest.raises(ValueError, match="positive int"):
        KetamaHash.from_nodes(nodes, {"a:1": 0})


def test_build_locator_falls_back_to_add_node_for_pymemcache_style_hashers() -> None:
    nodes = [f"n{i}:1" for i in range(7)]
    theirs = build_locator(PymemcacheRendezvousHash, nodes)  # pymemcache's own class
    assert isinstance(theirs, PymemcacheRendezvousHash) and theirs.nodes == nodes
    keys = [f"k{i}" for i in range(300)]
    assert [theirs.get_node(spelled(k)) for k in keys] == [
        RendezvousHash(nodes).get_node(k) for k in keys
    ]

    added: List[str] = []

    class Minimal:
        def add_node(self, node: str) -> None:
            added.append(node)

    assert isinstance(build_locator(Minimal, nodes), Minimal) and added == nodes
    # A partial with positional arguments is called as pymemcache would: no nodes given.
    seeded = build_locator(functools.partial(RendezvousHash, None, 5), nodes)
    assert seeded.seed == 5 and seeded.nodes == tuple(nodes)
