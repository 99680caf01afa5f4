"""Pure tests of the ElastiCache cluster-config parsing in :mod:`pymc.protocol`: no server.

The payload is parsed as tolerantly as the AWS clients parse it (``\\r\\n`` or ``\\n`` line
ends, extra whitespace, IPv6 and empty ip fields) but a malformed one is rejected whole;
hypothesis checks that no input, random or a mutation of a valid config, gets anything but
a fully well-formed :class:`ClusterConfig` or a :class:`MemcacheProtocolError`. Then the two
ways of asking (``config get cluster`` and the legacy ``get AmazonElastiCache:cluster``)
are read through a :class:`Reader`, and the reader's ``max_block`` cap is checked.
"""

from __future__ import annotations

import ipaddress
from typing import Callable, Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymc.exceptions import MemcacheProtocolError
from pymc.protocol import (
    END,
    LEGACY_CONFIG_KEY,
    MAX_CONFIG_BYTES,
    NEED_DATA,
    ClusterConfig,
    ClusterNode,
    ErrorReply,
    Expect,
    ExpectConfig,
    ExpectLegacyConfig,
    Reader,
    Value,
    encode_legacy_config_get,
    parse_cluster_config,
)

CRLF = b"\r\n"
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

N1 = ClusterNode("n1.cache.amazonaws.com", "10.0.0.1", 11211)
N2 = ClusterNode("n2.cache.amazonaws.com", "10.0.0.2", 11211)
TWO = ClusterConfig(7, (N1, N2))
TWO_BLOCK = b"7\nn1.cache.amazonaws.com|10.0.0.1|11211 n2.cache.amazonaws.com|10.0.0.2|11211\n"


def config_wire(block: bytes, flags: int = 0) -> bytes:
    return b"CONFIG cluster %d %d\r\n" % (flags, len(block)) + block + b"\r\nEND\r\n"


def legacy_wire(block: bytes, flags: int = 0, key: bytes = LEGACY_CONFIG_KEY) -> bytes:
    return b"VALUE %s %d %d\r\n" % (key, flags, len(block)) + block + b"\r\nEND\r\n"


# --------------------------------------------------------------------------- tolerant forms

N = "n1.cache.amazonaws.com|10.0.0.1|11211"
M = "n2.cache.amazonaws.com|10.0.0.2|11211"
TOLERATED: Dict[str, Tuple[bytes, ClusterConfig]] = {
    "canonical": (TWO_BLOCK, TWO),
    "crlf-lines": (f"7\r\n{N} {M}\r\n".encode(), TWO),
    "crlf-version-only": (f"7\r\n{N} {M}\n".encode(), TWO),
    "leading-spaces": (f"  7\n   {N} {M}\n".encode(), TWO),
    "trailing-spaces": (f"7  \n{N} {M}   \n".encode(), TWO),
    "trailing-separator": (f"7\n{N} {M} \n".encode(), TWO),
    "several-spaces-between": (f"7\n{N}     {M}\n".encode(), TWO),
    "tab-between": (f"7\n{N}\t{M}\n".encode(), TWO),
    "blank-trailing-lines": (f"7\n{N} {M}\n\n\n".encode(), TWO),
    "blank-trailing-crlf-lines": (f"7\r\n{N} {M}\r\n\r\n \r\n".encode(), TWO),
    "blank-lines-between": (f"7\n\n{N} {M}\n".encode(), TWO),
    "blank-leading-line": (f"\n7\n{N} {M}\n".encode(), TWO),
    "whitespace-everywhere": (f" \r\n 7 \r\n \t {N}  \t {M} \t\r\n \r\n".encode(), TWO),
    "version-zero": (b"0\nh|10.0.0.1|1\n", ClusterConfig(0, (ClusterNode("h", "10.0.0.1", 1),))),
    "version-u64": (
        b"18446744073709551615\nh||65535\n",
        ClusterConfig(2**64 - 1, (ClusterNode("h", "", 65535),)),
    ),
    "empty-ip": (
        b"3\nh.example||11211\n",
        ClusterConfig(3, (ClusterNode("h.example", "", 11211),)),
    ),
    "ipv6": (
        b"3\nh.example|2001:db8::1|11211\n",
        ClusterConfig(3, (ClusterNode("h.example", "2001:db8::1", 11211),)),
    ),
    "ipv6-loopback": (b"3\nh|::1|11211\n", ClusterConfig(3, (ClusterNode("h", "::1", 11211),))),
    "ipv6-full": (
        b"3\nh|2001:0db8:0000:0000:0000:ff00:0042:8329|1\n",
        ClusterConfig(3, (ClusterNode("h", "2001:0db8:0000:0000:0000:ff00:0042:8329", 1),)),
    ),
    "ipv6-scope-id": (
        b"3\nh|fe80::1%eth0|1\n",
        ClusterConfig(3, (ClusterNode("h", "fe80::1%eth0", 1),)),
    ),
    "ipv6-mapped-ipv4": (
        b"3\nh|::ffff:10.0.0.1|1\n",
        ClusterConfig(3, (ClusterNode("h", "::ffff:10.0.0.1", 1),)),
    ),
    "mixed-ip-kinds": (
        b"4\na|10.0.0.1|11211 b||11212 c|fe80::1|11213\n",
        ClusterConfig(
            4,
            (
                ClusterNode("a", "10.0.0.1", 11211),
                ClusterNode("b", "", 11212),
                ClusterNode("c", "fe80::1", 11213),
            ),
        ),
    ),
    "same-host-other-port": (
        b"1\nh|10.0.0.1|11211 h|10.0.0.1|11212\n",
        ClusterConfig(
            1, (ClusterNode("h", "10.0.0.1", 11211), ClusterNode("h", "10.0.0.1", 11212))
        ),
    ),
    "digit-first-host": (
        b"0\n1a.example|1.2.3.4|1\n",
        ClusterConfig(0, (ClusterNode("1a.example", "1.2.3.4", 1),)),
    ),
}


@pytest.mark.parametrize("block,expected", list(TOLERATED.values()), ids=list(TOLERATED))
def test_tolerated_forms(block: bytes, expected: ClusterConfig) -> None:
    config = parse_cluster_config(block)
    assert config == expected
    assert type(config) is ClusterConfig
    assert all(type(node) is ClusterNode for node in config.nodes)
    assert type(config.nodes) is tuple
    # The same payload through both ways of asking.
    assert read_all(config_wire(block), ExpectConfig) == expected
    assert read_all(legacy_wire(block), ExpectLegacyConfig) == expected


# --------------------------------------------------------------------------- rejections

REJECTED: Dict[str, bytes] = {
    "empty": b"",
    "only-whitespace": b" \r\n\n\t\n",
    "only-version": b"1\n",
    "only-version-and-blank": b"1\n\n  \n",
    "no-final-newline": b"1\nh|1.2.3.4|11211",  # a truncated payload must not pass
    "no-final-newline-crlf": b"1\r\nh|1.2.3.4|11211",
    "extra-line": b"1\nh|1.2.3.4|11211\nh2|1.2.3.5|11211\n",
    "version-not-digits": b"v1\nh|1.2.3.4|11211\n",
    "version-negative": b"-1\nh|1.2.3.4|11211\n",
    "version-plus": b"+1\nh|1.2.3.4|11211\n",
    "version-float": b"1.5\nh|1.2.3.4|11211\n",
    "version-two-numbers": b"1 2\nh|1.2.3.4|11211\n",
    "version-21-digits": b"123456789012345678901\nh|1.2.3.4|11211\n",
    "version-unicode-digits": "\u0661\nh|1.2.3.4|11211\n".encode(),
    "no-version-line": b"h|1.2.3.4|11211\n",
    "missing-field": b"1\nh|11211\n",
    "only-host": b"1\nh\n",
    "extra-field": b"1\nh|1.2.3.4|11211|x\n",
    "trailing-pipe": b"1\nh|1.2.3.4|11211|\n",
    "empty-host": b"1\n|1.2.3.4|11211\n",
    "all-empty": b"1\n||\n",
    "port-zero": b"1\nh|1.2.3.4|0\n",
    "port-too-big": b"1\nh|1.2.3.4|65536\n",
    "port-huge": b"1\nh|1.2.3.4|99999999999999999999\n",
    "port-longer-than-20-digits": b"1\nh|1.2.3.4|999999999999999999999999\n",
    "port-empty": b"1\nh|1.2.3.4|\n",
    "port-negative": b"1\nh|1.2.3.4|-1\n",
    "port-plus": b"1\nh|1.2.3.4|+80\n",
    "port-letters": b"1\nh|1.2.3.4|http\n",
    "port-hex": b"1\nh|1.2.3.4|0x50\n",
    "port-float": b"1\nh|1.2.3.4|80.0\n",
    "good-then-bad-node": b"1\nh|1.2.3.4|11211 h2|1.2.3.5|0\n",
    "bad-then-good-node": b"1\nh|1.2.3.4|0 h2|1.2.3.5|11211\n",
    "tab-in-host": b"1\nh\tx|1.2.3.4|11211\n",
    "space-in-host": b"1\nh x|1.2.3.4|11211\n",
    "control-in-host": b"1\nh\x01x|1.2.3.4|11211\n",
    "del-in-host": b"1\nh\x7f|1.2.3.4|11211\n",
    "control-in-ip": b"1\nh|1.2.3.4\x00|11211\n",
    "non-ascii-host": "1\nhöst|1.2.3.4|11211\n".encode(),
    "invalid-utf8-host": b"1\nh\xff|1.2.3.4|11211\n",
    "ip-not-an-address": b"1\nh|not-an-ip|11211\n",
    "ip-hostname": b"1\nh|h.example|11211\n",
    "ipv4-out-of-range": b"1\nh|256.0.0.1|11211\n",
    "ipv4-short": b"1\nh|10.0.1|11211\n",
    "ipv4-leading-zero": b"1\nh|010.0.0.1|11211\n",
    "ipv6-bad": b"1\nh|2001:db8:::1|11211\n",
    "ipv6-scope-id-control-char": b"1\nh|fe80::1%\x01|11211\n",  # ipaddress takes it
    "ipv6-scope-id-empty": b"1\nh|fe80::1%|11211\n",
    "ipv6-bracketed": b"1\nh|[::1]|11211\n",
    "ip-with-port": b"1\nh|10.0.0.1:11211|11211\n",
    "ip-cidr": b"1\nh|10.0.0.0/8|11211\n",
    "ip-non-ascii": "1\nh|10.0.0.\u0661|11211\n".encode(),
    "duplicate-node": b"1\nh|1.2.3.4|11211 h|1.2.3.4|11211\n",
    "duplicate-host-port-other-ip": b"1\nh|1.2.3.4|11211 h|1.2.3.5|11211\n",
    "duplicate-host-port-other-case": b"1\nH.example|1.2.3.4|11211 h.EXAMPLE||11211\n",
    "nul-block": b"\x00",
    "bare-cr-lines": b"1\rh|1.2.3.4|11211\r",
}


@pytest.mark.parametrize("block", list(REJECTED.values()), ids=list(REJECTED))
def test_rejected_forms(block: bytes) -> None:
    with pytest.raises(MemcacheProtocolError):
        parse_cluster_config(block)
    # Through the reader, both ways of asking: the reader is poisoned.
    for wire, expect in (
        (config_wire(block), ExpectConfig),
        (legacy_wire(block), ExpectLegacyConfig),
    ):
        reader = Reader()
        reader.feed(wire)
        with pytest.raises(MemcacheProtocolError):
            expect().step(reader)
        assert reader.broken
        with pytest.raises(MemcacheProtocolError):
            reader.next_reply()


def test_many_nodes() -> None:
    nodes = [ClusterNode(f"n{i}.example", f"10.0.{i // 256}.{i % 256}", 11211) for i in range(500)]
    block = (
        b"9\n"
        + b" ".join(b"%s|%s|%d" % (n.hostname.encode(), n.ip.encode(), n.port) for n in nodes)
        + b"\n"
    )
    assert parse_cluster_config(block) == ClusterConfig(9, tuple(nodes))
    assert len(block) < MAX_CONFIG_BYTES


# --------------------------------------------------------------------------- fuzzing


def check_outcome(block: bytes) -> Optional[ClusterConfig]:
    """``parse_cluster_config(block)`` either raises MemcacheProtocolError or returns a
    config whose every node is well-formed and which lists *every* node the payload names
    (re-derived here independently): never a partial list, never another exception."""
    try:
        config = parse_cluster_config(block)
    except MemcacheProtocolError:
        return None
    assert type(config) is ClusterConfig
    assert type(config.version) is int and config.version >= 0
    assert type(config.nodes) is tuple and config.nodes
    seen = set()
    for node in config.nodes:
        assert type(node) is ClusterNode
        assert type(node.hostname) is str and node.hostname
        assert node.hostname.isascii() and node.hostname.isprintable() and " " not in node.hostname
        assert "|" not in node.hostname
        assert type(node.ip) is str
        if node.ip:
            ipaddress.ip_address(node.ip)  # raises if not an address
        assert type(node.port) is int and 1 <= node.port <= 65535
        assert (node.hostname.lower(), node.port) not in seen
        seen.add((node.hostname.lower(), node.port))
    # Independently: the non-blank lines are the version and one line of node tokens.
    lines = [line.strip() for line in block.split(b"\n") if line.strip()]
    assert len(lines) == 2
    assert int(lines[0]) == config.version
    tokens = lines[1].split()
    assert len(tokens) == len(config.nodes), "a partial node list"
    for token, node in zip(tokens, config.nodes):
        host, ip, port = token.split(b"|")
        assert (host.decode(), ip.decode(), int(port)) == node
    return config


@FAST
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(block: bytes) -> None:
    check_outcome(block)


_host = st.from_regex(rb"\A[a-z0-9][a-z0-9.-]{0,20}\Z")
_ip = st.one_of(
    st.just(b""),
    st.ip_addresses(v=4).map(lambda a: str(a).encode()),
    st.ip_addresses(v=6).map(lambda a: str(a).encode()),
)
_ws = st.sampled_from([b" ", b"  ", b"\t", b" \t "])
_eol = st.sampled_from([b"\n", b"\r\n", b" \n", b"\r\n\r\n", b"\n\n"])


@st.composite
def valid_config(draw: st.DrawFn) -> Tuple[bytes, ClusterConfig]:
    version = draw(st.integers(0, 2**64 - 1))
    raw = draw(
        st.lists(
            st.tuples(_host, _ip, st.integers(1, 65535)),
            min_size=1,
            max_size=6,
            unique_by=lambda n: (n[0], n[2]),
        )
    )
    body = b""
    for i, node in enumerate(raw):
        if i:
            body += draw(_ws)
        body += b"%s|%s|%d" % node
    lead = draw(st.sampled_from([b"", b" ", b"\n"]))
    block = lead + b"%d" % version + draw(_eol) + body + draw(_eol)
    expected = ClusterConfig(
        version, tuple(ClusterNode(h.decode(), i.decode(), p) for h, i, p in raw)
    )
    return block, expected


@FAST
@given(valid_config())
def test_fuzz_valid_configs_parse(case: Tuple[bytes, ClusterConfig]) -> None:
    block, expected = case
    assert check_outcome(block) == expected


_fragment = st.one_of(
    st.binary(min_size=1, max_size=4),
    st.sampled_from(
        [
            b"|",
            b"||",
            b" ",
            b"\n",
            b"\r\n",
            b"\r",
            b"\t",
            b":",
            b".",
            b"0",
            b"9",
            b"-",
            b"\x00",
            b"\xff",
            b"65536",
            b"::",
            b"1.2.3.4",
            b"h|1.2.3.4|11211",
            b"\x7f",
        ]
    ),
)


@FAST
@given(valid_config(), st.data())
def test_fuzz_mutated_configs(case: Tuple[bytes, ClusterConfig], data: st.DataObject) -> None:
    block = bytearray(case[0])
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]), label="op")
        at = data.draw(st.integers(0, len(block)), label="at")
        if op == "insert":
            block[at:at] = data.draw(_fragment, label="fragment")
        elif op == "delete":
            block[at : at + data.draw(st.integers(1, 5), label="n")] = b""
        else:
            block[at : at + 1] = data.draw(_fragment, label="fragment")
    check_outcome(bytes(block))


# --------------------------------------------------------------------------- through a reader


def read_all(
    wire: bytes,
    expect_type: Callable[[], Expect],
    chunker: Callable[[bytes], List[bytes]] = lambda b: [b],
    reader: Optional[Reader] = None,
) -> object:
    """Feed ``wire`` in the chunker's pieces, stepping after each until there is a result
    (what follows is only fed); the result."""
    reader = Reader() if reader is None else reader
    expect = expect_type()
    result: object = NEED_DATA
    for chunk in chunker(wire):
        reader.feed(chunk)
        if result is NEED_DATA:
            result = expect.step(reader)
    return result


def bytewise(data: bytes) -> List[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


FEEDERS = {"whole": lambda b: [b], "bytewise": bytewise}
CRLF_BLOCK = TWO_BLOCK.replace(b"\n", b"\r\n")


@pytest.mark.parametrize("feeder", list(FEEDERS.values()), ids=list(FEEDERS))
@pytest.mark.parametrize("block", [TWO_BLOCK, CRLF_BLOCK, b"  7 \n" + TWO_BLOCK[2:] + b"\n\n"])
def test_config_reply_through_reader(feeder: Callable[[bytes], List[bytes]], block: bytes) -> None:
    assert read_all(config_wire(block), ExpectConfig, feeder) == TWO
    assert read_all(legacy_wire(block, flags=5), ExpectLegacyConfig, feeder) == TWO


@pytest.mark.parametrize("feeder", list(FEEDERS.values()), ids=list(FEEDERS))
@pytest.mark.parametrize("expect", [ExpectConfig, ExpectLegacyConfig])
def test_trailing_bytes_stay_buffered(
    feeder: Callable[[bytes], List[bytes]], expect: Callable[[], Expect]
) -> None:
    wire = config_wire(TWO_BLOCK) if expect is ExpectConfig else legacy_wire(TWO_BLOCK)
    trailing = b"STORED\r\nVALUE k 0 1\r\nx\r\nEND\r\n"
    reader = Reader()
    assert read_all(wire + trailing, expect, feeder, reader) == TWO
    assert reader.buffered == len(trailing)
    assert reader.next_reply() == b"STORED"
    assert reader.next_reply() == Value(b"k", 0, b"x", None)
    assert reader.next_reply() is END
    assert reader.next_reply() is NEED_DATA
    assert not reader.broken


def test_encode_legacy_config_get() -> None:
    assert LEGACY_CONFIG_KEY == b"AmazonElastiCache:cluster"
    assert encode_legacy_config_get() == b"get AmazonElastiCache:cluster\r\n"


@pytest.mark.parametrize("feeder", list(FEEDERS.values()), ids=list(FEEDERS))
def test_legacy_miss_is_none(feeder: Callable[[bytes], List[bytes]]) -> None:
    reader = Reader()
    assert read_all(b"END\r\nEND\r\n", ExpectLegacyConfig, feeder, reader) is None
    assert reader.buffered == 5 and not reader.broken


@pytest.mark.parametrize(
    "line,kind",
    [
        (b"ERROR\r\n", b"ERROR"),
        (b"CLIENT_ERROR bad command line format\r\n", b"CLIENT_ERROR"),
        (b"SERVER_ERROR out of memory\r\n", b"SERVER_ERROR"),
    ],
)
@pytest.mark.parametrize("expect", [ExpectConfig, ExpectLegacyConfig])
def test_error_replies_are_results(line: bytes, kind: bytes, expect: Callable[[], Expect]) -> None:
    reader = Reader()
    result = read_all(line, expect, reader=reader)
    assert type(result) is ErrorReply and result.kind == kind
    assert not reader.broken and reader.buffered == 0


LEGACY_BAD: Dict[str, bytes] = {
    "other-key": legacy_wire(TWO_BLOCK, key=b"other"),
    "key-prefix": legacy_wire(TWO_BLOCK, key=b"AmazonElastiCache:clusterx"),
    "key-case": legacy_wire(TWO_BLOCK, key=b"amazonelasticache:cluster"),
    "two-values": legacy_wire(TWO_BLOCK)[:-5] + legacy_wire(TWO_BLOCK),
    "malformed-payload": legacy_wire(b"1\nh|1.2.3.4|0\n"),
    "empty-payload": legacy_wire(b""),
    "no-end": legacy_wire(TWO_BLOCK)[:-5] + b"STORED\r\n",
    "error-after-value": legacy_wire(TWO_BLOCK)[:-5] + b"SERVER_ERROR oops\r\n",
    "stored": b"STORED\r\n",
    "number": b"42\r\n",
    "config-reply": config_wire(TWO_BLOCK),
    "value-bad-length": b"VALUE AmazonElastiCache:cluster 0 3\r\n" + TWO_BLOCK + b"\r\nEND\r\n",
}


@pytest.mark.parametrize("feeder", list(FEEDERS.values()), ids=list(FEEDERS))
@pytest.mark.parametrize("wire", list(LEGACY_BAD.values()), ids=list(LEGACY_BAD))
def test_legacy_protocol_errors(feeder: Callable[[bytes], List[bytes]], wire: bytes) -> None:
    reader = Reader()
    expect = ExpectLegacyConfig()
    with pytest.raises(MemcacheProtocolError):
        for chunk in feeder(wire):
            reader.feed(chunk)
            assert expect.step(reader) is NEED_DATA
    assert reader.broken
    with pytest.raises(MemcacheProtocolError):
        reader.next_reply()


def test_config_not_followed_by_end() -> None:
    reader = Reader()
    reader.feed(config_wire(TWO_BLOCK)[:-5] + b"STORED\r\n")
    with pytest.raises(MemcacheProtocolError):
        ExpectConfig().step(reader)
    assert reader.broken


# --------------------------------------------------------------------------- max_block


def test_max_config_bytes() -> None:
    assert MAX_CONFIG_BYTES == 1 << 20


def test_max_block_default_is_no_cap() -> None:
    reader = Reader()
    big = b"x" * (MAX_CONFIG_BYTES + 1)
    reader.feed(b"VALUE k 0 %d\r\n" % len(big) + big + b"\r\n")
    assert reader.next_reply() == Value(b"k", 0, big, None)


CAP = 128
HEADERS: Dict[str, Callable[[int], bytes]] = {
    "config": lambda n: b"CONFIG cluster 0 %d\r\n" % n,
    "value": lambda n: b"VALUE k 0 %d\r\n" % n,
    "value-cas": lambda n: b"VALUE k 0 %d 99\r\n" % n,
    "legacy": lambda n: b"VALUE AmazonElastiCache:cluster 0 %d\r\n" % n,
}


def _read(reader: Reader, how: str) -> object:
    if how == "next_reply":
        return reader.next_reply()
    if how == "read_values":
        return reader.read_values({b"k", LEGACY_CONFIG_KEY}, {})
    if how == "config":
        return ExpectConfig().step(reader)
    return ExpectLegacyConfig().step(reader)


READS = ["next_reply", "read_values", "config", "legacy"]


def _applies(header: str, how: str) -> bool:
    if how == "read_values":
        return header != "config"
    if how == "config":
        return header == "config"
    if how == "legacy":
        return header == "legacy"
    return True


CAP_CASES = [(h, r) for h in HEADERS for r in READS if _applies(h, r)]


@pytest.mark.parametrize("header,how", CAP_CASES, ids=[f"{h}-{r}" for h, r in CAP_CASES])
@pytest.mark.parametrize("bytewise_feed", [False, True], ids=["whole", "bytewise"])
def test_max_block_refuses_a_larger_header(header: str, how: str, bytewise_feed: bool) -> None:
    reader = Reader(max_block=CAP)
    line = HEADERS[header](CAP + 1)
    with pytest.raises(MemcacheProtocolError, match="128"):
        # Only the header line: the refusal comes before any of the block arrives.
        for chunk in bytewise(line) if bytewise_feed else [line]:
            reader.feed(chunk)
            assert _read(reader, how) is NEED_DATA
    assert reader.broken and reader.buffered == 0
    with pytest.raises(MemcacheProtocolError):
        reader.feed(b"x" * 10)


@pytest.mark.parametrize("header,how", CAP_CASES, ids=[f"{h}-{r}" for h, r in CAP_CASES])
def test_max_block_refuses_a_huge_header(header: str, how: str) -> None:
    reader = Reader(max_block=MAX_CONFIG_BYTES)
    with pytest.raises(MemcacheProtocolError):
        reader.feed(HEADERS[header](10**12))  # an endpoint announcing a 1 TB block
        _read(reader, how)
    assert reader.broken


def _exact_block(header: str) -> bytes:
    if header in ("config", "legacy"):
        pad = CAP - len(TWO_BLOCK)
        return TWO_BLOCK[:-1] + b" " * pad + b"\n"
    return b"y" * CAP


@pytest.mark.parametrize("header,how", CAP_CASES, ids=[f"{h}-{r}" for h, r in CAP_CASES])
@pytest.mark.parametrize("bytewise_feed", [False, True], ids=["whole", "bytewise"])
def test_max_block_accepts_exactly_max_block(header: str, how: str, bytewise_feed: bool) -> None:
    block = _exact_block(header)
    assert len(block) == CAP
    wire = HEADERS[header](CAP) + block + b"\r\nEND\r\n"
    reader = Reader(max_block=CAP)
    result: object = NEED_DATA
    if how == "config":
        result = read_all(
            wire, ExpectConfig, bytewise if bytewise_feed else FEEDERS["whole"], reader
        )
        assert result == TWO
    elif how == "legacy":
        result = read_all(
            wire, ExpectLegacyConfig, bytewise if bytewise_feed else FEEDERS["whole"], reader
        )
        assert result == TWO
    elif how == "read_values":
        found: Dict[bytes, Tuple[int, bytes, Optional[bytes]]] = {}
        for chunk in bytewise(wire) if bytewise_feed else [wire]:
            reader.feed(chunk)
            result = reader.read_values({b"k", LEGACY_CONFIG_KEY}, found)
        assert result is END
        assert [item[1] for item in found.values()] == [block]
    else:
        replies: List[object] = []
        for chunk in bytewise(wire) if bytewise_feed else [wire]:
            reader.feed(chunk)
            while (reply := reader.next_reply()) is not NEED_DATA:
                replies.append(reply)
        assert replies[-1] is END and len(replies) == 2
        first = replies[0]
        if header == "config":
            assert first == TWO
        else:
            assert isinstance(first, Value) and first.data == block
    assert not reader.broken and reader.buffered == 0


def test_max_block_zero() -> None:
    reader = Reader(max_block=0)
    reader.feed(b"VALUE k 0 0\r\n\r\nEND\r\n")
    assert reader.next_reply() == Value(b"k", 0, b"", None)
    assert reader.next_reply() is END
    reader.feed(b"VALUE k 0 1\r\n")
    with pytest.raises(MemcacheProtocolError):
        reader.next_reply()


@pytest.mark.parametrize("bad", [-1, 1.5, "10", True])
def test_max_block_must_be_a_non_negative_int(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        Reader(max_block=bad)  # type: ignore[arg-type]
