"""pymc and pymemcache 4.0 share a real memcached: what one stores, the other reads.

For each serde pymc offers, a value written by ``pymc.Client`` is read back identically by
``pymemcache.client.base.Client`` configured with pymemcache's matching serde, and the other
way round; both store the same bytes and flags on the server.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
from pymemcache import serde as pmc_serde
from pymemcache.client.base import Client as PmcClient
from support.servers import MemcachedProcess, request

from pymc import Client
from pymc import serde as pymc_serde

LONG_TEXT = "the same phrase again and again, " * 200  # compresses well, > 400 bytes

VALUES: Dict[str, Any] = {
    "bytes": b"\x00\x01binary\r\nEND\r\n\xff",
    "str": "plain text",
    "unicode-str": "naïve café ☕",
    "int": 42,
    "negative-int": -7,
    "big-int": 2**100 + 1,
    "dict": {"a": 1, "b": [1, 2, 3], "c": {"nested": "yes"}},
    "list": [1, "two", 3.0, None, b"five"],
    "long-str": LONG_TEXT,
    "long-bytes": LONG_TEXT.encode(),
}

# What a client without a serde stores: bytes, ASCII str and int only, read back as bytes.
DEFAULT_VALUES: Dict[str, Tuple[Any, bytes]] = {
    "bytes": (VALUES["bytes"], VALUES["bytes"]),
    "str": ("plain text", b"plain text"),
    "int": (42, b"42"),
    "negative-int": (-7, b"-7"),
    "big-int": (2**100 + 1, str(2**100 + 1).encode()),
    "long-str": (LONG_TEXT, LONG_TEXT.encode()),
}

# name -> (pymc Client keyword arguments, pymemcache Client keyword arguments)
SerdePair = Tuple[Callable[[], Dict[str, Any]], Callable[[], Dict[str, Any]]]
SERDES: Dict[str, SerdePair] = {
    "pickle_serde": (
        lambda: {"serde": pymc_serde.pickle_serde},
        lambda: {"serde": pmc_serde.pickle_serde},
    ),
    "compressed_serde": (
        lambda: {"serde": pymc_serde.compressed_serde},
        lambda: {"serde": pmc_serde.compressed_serde},
    ),
    "python_memcache_functions": (
        lambda: {
            "serializer": pymc_serde.python_memcache_serializer,
            "deserializer": pymc_serde.python_memcache_deserializer,
        },
        lambda: {
            "serializer": pmc_serde.python_memcache_serializer,
            "deserializer": pmc_serde.python_memcache_deserializer,
        },
    ),
    "LegacyWrappingSerde": (
        lambda: {
            "serde": pymc_serde.LegacyWrappingSerde(
                pymc_serde.python_memcache_serializer, pymc_serde.python_memcache_deserializer
            )
        },
        lambda: {
            "serde": pmc_serde.LegacyWrappingSerde(
                pmc_serde.python_memcache_serializer, pmc_serde.python_memcache_deserializer
            )
        },
    ),
    "pickle_version_2": (
        lambda: {
            "serializer": pymc_serde.get_python_memcache_serializer(pickle_version=2),
            "deserializer": pymc_serde.python_memcache_deserializer,
        },
        lambda: {
            "serializer": pmc_serde.get_python_memcache_serializer(pickle_version=2),
            "deserializer": pmc_serde.python_memcache_deserializer,
        },
    ),
    "CompressedSerde-custom": (
        lambda: {
            "serde": pymc_serde.CompressedSerde(
                zlib.compress, zlib.decompress, pymc_serde.pickle_serde, 40
            )
        },
        lambda: {
            "serde": pmc_serde.CompressedSerde(
                zlib.compress, zlib.decompress, pmc_serde.pickle_serde, 40
            )
        },
    ),
}


@pytest.fixture
def address(memcached: MemcachedProcess) -> Tuple[str, int]:
    assert isinstance(memcached.address, tuple)
    return memcached.address


@pytest.fixture
def clients(request: pytest.FixtureRequest, address: Tuple[str, int]) -> Iterator[Tuple[Any, Any]]:
    ours_kw, theirs_kw = SERDES[request.param]
    ours = Client(address, timeout=2.0, **ours_kw())
    theirs = PmcClient(address, timeout=2.0, default_noreply=False, **theirs_kw())
    yield ours, theirs
    ours.close()
    theirs.close()


def stored(server: MemcachedProcess, keys: List[str]) -> Dict[bytes, Tuple[int, bytes]]:
    """``{key: (flags, data)}`` as the server holds them, read over a raw socket."""
    with server.connect() as sock:
        reply = request(sock, ("get " + " ".join(keys) + "\r\n").encode(), b"END\r\n")
    out: Dict[bytes, Tuple[int, bytes]] = {}
    while reply != b"END\r\n":
        line, _, reply = reply.partition(b"\r\n")
        _, key, flags, size = line.split(b" ")
        out[key] = (int(flags), reply[: int(size)])
        reply = reply[int(size) + 2 :]
    return out


def same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("clients", list(SERDES), indirect=True)
@pytest.mark.parametrize("name", list(VALUES))
def test_pymc_writes_pymemcache_reads(
    clients: Tuple[Client, Any], memcached: MemcachedProcess, name: str
) -> None:
    ours, theirs = clients
    value = VALUES[name]
    assert ours.set("by-pymc", value) is True
    assert same(theirs.get("by-pymc"), value)
    assert same(theirs.get_many(["by-pymc"])["by-pymc"], value)
    assert same(theirs.gets("by-pymc")[0], value)
    assert same(ours.get("by-pymc"), value)


@pytest.mark.parametrize("clients", list(SERDES), indirect=True)
@pytest.mark.parametrize("name", list(VALUES))
def test_pymemcache_writes_pymc_reads(
    clients: Tuple[Client, Any], memcached: MemcachedProcess, name: str
) -> None:
    ours, theirs = clients
    value = VALUES[name]
    assert theirs.set("by-pmc", value) is True
    assert same(ours.get("by-pmc"), value)
    assert same(ours.get_many(["by-pmc", "missing"])["by-pmc"], value)
    assert same(ours.gets("by-pmc")[0], value)
    assert same(ours.gat("by-pmc", 100), value)


@pytest.mark.parametrize("clients", list(SERDES), indirect=True)
def test_both_store_the_same_bytes_and_flags(
    clients: Tuple[Client, Any], memcached: MemcachedProcess
) -> None:
    ours, theirs = clients
    assert ours.set_many({f"a-{name}": value for name, value in VALUES.items()}) == []
    assert theirs.set_many({f"b-{name}": value for name, value in VALUES.items()}) == []
    raw = stored(memcached, [f"{p}-{name}" for p in "ab" for name in VALUES])
    assert len(raw) == 2 * len(VALUES)
    for name in VALUES:
        assert raw[f"a-{name}".encode()] == raw[f"b-{name}".encode()], name
    everything = {f"{p}-{name}": value for p in "ab" for name, value in VALUES.items()}
    got = ours.get_many(list(everything))
    assert got.keys() == everything.keys()
    assert all(same(got[k], v) for k, v in everything.items())


def test_compressed_values_are_really_compressed(memcached: MemcachedProcess) -> None:
    address = memcached.address
    with Client(address, serde=pymc_serde.compressed_serde) as c:
        c.set("long", LONG_TEXT)
        c.set("short", "short")
    raw = stored(memcached, ["long", "short"])
    flags, data = raw[b"long"]
    assert flags & pymc_serde.FLAG_COMPRESSED and len(data) < len(LONG_TEXT) // 10
    assert raw[b"short"] == (pymc_serde.FLAG_TEXT, b"short")


@pytest.mark.parametrize("name", list(DEFAULT_VALUES))
def test_default_serde_interop(
    address: Tuple[str, int], memcached: MemcachedProcess, name: str
) -> None:
    value, expected = DEFAULT_VALUES[name]
    ours = Client(address, timeout=2.0)
    theirs = PmcClient(address, timeout=2.0, default_noreply=False)
    try:
        assert ours.set("by-pymc", value) is True
        assert theirs.set("by-pmc", value) is True
        for key in ("by-pymc", "by-pmc"):
            assert same(ours.get(key), expected)
            assert same(theirs.get(key), expected)
        assert ours.get_many(["by-pymc", "by-pmc"]) == theirs.get_many(["by-pymc", "by-pmc"])
        raw = stored(memcached, ["by-pymc", "by-pmc"])
        assert raw[b"by-pymc"] == raw[b"by-pmc"] == (0, expected)
    finally:
        ours.close()
        theirs.close()


def test_pymc_reads_what_a_python_memcache_serde_client_wrote_without_one(
    address: Tuple[str, int],
) -> None:
    # A pymc client without a serde sees the raw bytes of any value, whatever its flags.
    theirs = PmcClient(address, serde=pmc_serde.pickle_serde, default_noreply=False)
    try:
        theirs.set_many({"text": "é", "number": 7, "obj": {"a": 1}})
        with Client(address) as ours:
            got = ours.get_many(["text", "number", "obj"])
        assert got["text"] == "é".encode() and got["number"] == b"7"
        assert isinstance(got["obj"], bytes) and got["obj"].startswith(b"\x80")
    finally:
        theirs.close()
