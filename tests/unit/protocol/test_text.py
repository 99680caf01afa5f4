"""Pure-logic tests of :mod:`pymc.protocol`: no sockets, no server.

Every reply is fed whole, one byte at a time, and followed by trailing bytes that must stay
buffered for the next reply; hypothesis then checks that *any* chunking of a stream of
well-formed replies parses the same, and that garbage never hangs the reader, never yields a
reply the bytes did not spell, and otherwise poisons it.
"""

from __future__ import annotations

import enum
import re
import time
from typing import Callable, List, Literal, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymc import protocol
from pymc.exceptions import (
    MemcacheClientError,
    MemcacheIllegalInputError,
    MemcacheProtocolError,
    MemcacheServerError,
    MemcacheUnknownCommandError,
)
from pymc.protocol import (
    END,
    MAX_KEY_LENGTH,
    MAX_LINE_LENGTH,
    NEED_DATA,
    ClusterConfig,
    ClusterNode,
    ErrorReply,
    Reader,
    Stat,
    Value,
    Version,
    encode_auth,
    encode_cache_memlimit,
    encode_config_get,
    encode_delete,
    encode_flush_all,
    encode_incr_decr,
    encode_quit,
    encode_retrieval,
    encode_shutdown,
    encode_stats,
    encode_storage,
    encode_touch,
    encode_verbosity,
    encode_version,
    parse_cluster_config,
    validate_key,
)

CRLF = b"\r\n"
WORD_NAMES = ("END", "STORED", "NOT_STORED", "EXISTS", "NOT_FOUND", "DELETED", "TOUCHED", "OK")
WORDS = {getattr(protocol, name) for name in (*WORD_NAMES, "RESET", "MN")}
REPLY_TYPES = (bytes, int, Value, Stat, Version, ClusterConfig, ErrorReply)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- helpers


def drain(reader: Reader, limit: int = 10_000) -> List[object]:
    """Every complete reply the reader holds, stopping at NEED_DATA (bounded)."""
    out: List[object] = []
    for _ in range(limit):
        reply = reader.next_reply()
        if reply is NEED_DATA:
            return out
        out.append(reply)
    raise AssertionError("the reader never returned NEED_DATA")


def parse_chunks(chunks: Sequence[bytes], drain_each: bool = True) -> Tuple[List[object], Reader]:
    reader = Reader()
    out: List[object] = []
    for chunk in chunks:
        reader.feed(chunk)
        if drain_each:
            out += drain(reader)
    out += drain(reader)
    return out, reader


def whole(data: bytes) -> List[bytes]:
    return [data]


def bytewise(data: bytes) -> List[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_at(data: bytes, cuts: Sequence[int]) -> List[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


FEEDERS: List[Callable[[bytes], List[bytes]]] = [whole, bytewise]


def value_wire(key: bytes, flags: int, data: bytes, cas: object = None) -> bytes:
    head = b"VALUE %s %d %d" % (key, flags, len(data))
    if cas is not None:
        head += b" %s" % cas
    return head + CRLF + data + CRLF


def config_wire(block: bytes, flags: int = 0) -> bytes:
    return b"CONFIG cluster %d %d\r\n" % (flags, len(block)) + block + b"\r\nEND\r\n"


def same(got: Sequence[object], expected: Sequence[object]) -> None:
    """Equal, of the same types (True == 1 and b"" == ... must not pass), words by identity."""
    assert got == expected
    assert [type(r) for r in got] == [type(r) for r in expected]
    for reply in got:
        if isinstance(reply, bytes):
            assert reply in WORDS
            assert any(reply is word for word in WORDS), "a fixed reply must be the constant"


# --------------------------------------------------------------------------- replies

BINARY = bytes(range(256))
TRICKY = b"a\r\nEND\r\nVALUE k 0 1\r\nx\r\n\r\n"
CLUSTER_BLOCK = (
    b"12\n"
    b"my.0001.cache.amazonaws.com|10.82.235.120|11211 "
    b"my.0002.cache.amazonaws.com||11212 "
    b"1st-host.example|::1|65535\n"
)
CLUSTER = ClusterConfig(
    12,
    (
        ClusterNode("my.0001.cache.amazonaws.com", "10.82.235.120", 11211),
        ClusterNode("my.0002.cache.amazonaws.com", "", 11212),
        ClusterNode("1st-host.example", "::1", 65535),
    ),
)

CASES = {
    "value": (value_wire(b"k", 0, b"hello"), [Value(b"k", 0, b"hello", None)]),
    "value-cas": (value_wire(b"k", 7, b"hello", b"42"), [Value(b"k", 7, b"hello", b"42")]),
    "value-empty": (b"VALUE k 0 0\r\n\r\n", [Value(b"k", 0, b"", None)]),
    "value-empty-cas": (b"VALUE k 0 0 1\r\n\r\n", [Value(b"k", 0, b"", b"1")]),
    "value-crlf-inside": (value_wire(b"k", 1, TRICKY), [Value(b"k", 1, TRICKY, None)]),
    "value-only-crlf": (value_wire(b"k", 1, CRLF), [Value(b"k", 1, CRLF, None)]),
    "value-binary": (
        value_wire(b"\xc3\xa9t\xc3\xa9", 4294967295, BINARY, b"18446744073709551615"),
        [Value(b"\xc3\xa9t\xc3\xa9", 4294967295, BINARY, b"18446744073709551615")],
    ),
    "get-many": (
        value_wire(b"a", 0, b"1") + value_wire(b"b", 2, b"22", b"9") + b"END\r\n",
        [Value(b"a", 0, b"1", None), Value(b"b", 2, b"22", b"9"), END],
    ),
    **{w.lower(): (w.encode() + CRLF, [getattr(protocol, w)]) for w in WORD_NAMES},
    "reset": (b"RESET\r\n", [protocol.RESET]),
    "zero": (b"0\r\n", [0]),
    "number": (b"42\r\n", [42]),
    "number-20-digits": (b"18446744073709551615\r\n", [18446744073709551615]),
    "error": (b"ERROR\r\n", [ErrorReply(b"ERROR", "")]),
    "error-msg": (b"ERROR: unknown command\r\n", [ErrorReply(b"ERROR", "unknown command")]),
    "client-error": (
        b"CLIENT_ERROR bad data chunk\r\n",
        [ErrorReply(b"CLIENT_ERROR", "bad data chunk")],
    ),
    "server-error": (
        b"SERVER_ERROR out of memory storing object\r\n",
        [ErrorReply(b"SERVER_ERROR", "out of memory storing object")],
    ),
    "server-error-utf8": (
        "SERVER_ERROR été\r\n".encode(),
        [ErrorReply(b"SERVER_ERROR", "été")],
    ),
    "stats": (
        b"STAT pid 1234\r\nSTAT version 1.6.21\r\nSTAT libevent 2.1.12-stable\r\n"
        b"STAT items:1:number 5\r\nSTAT spaced a b  c \r\nSTAT empty\r\nEND\r\n",
        [
            Stat(b"pid", b"1234"),
            Stat(b"version", b"1.6.21"),
            Stat(b"libevent", b"2.1.12-stable"),
            Stat(b"items:1:number", b"5"),
            Stat(b"spaced", b"a b  c "),
            Stat(b"empty", b""),
            END,
        ],
    ),
    "cachedump": (
        b"ITEM foo [5 b; 0 s]\r\nITEM bar [0 b; 1700000000 s]\r\nEND\r\n",
        [Stat(b"foo", b"[5 b; 0 s]"), Stat(b"bar", b"[0 b; 1700000000 s]"), END],
    ),
    "version": (b"VERSION 1.6.21\r\n", [Version(b"1.6.21")]),
    "version-spaces": (b"VERSION 1.4.5 (Ubuntu)\r\n", [Version(b"1.4.5 (Ubuntu)")]),
    "config": (config_wire(CLUSTER_BLOCK), [CLUSTER, END]),
    "config-one-node": (
        config_wire(b"1\n10.0.0.1||11211\n", flags=3),
        [ClusterConfig(1, (ClusterNode("10.0.0.1", "", 11211),)), END],
    ),
}


@pytest.mark.parametrize("feeder", FEEDERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("wire,expected", list(CASES.values()), ids=list(CASES))
def test_reply(wire: bytes, expected: List[object], feeder: Callable[[bytes], List[bytes]]) -> None:
    got, reader = parse_chunks(feeder(wire))
    same(got, expected)
    assert reader.buffered == 0
    assert reader.next_reply() is NEED_DATA
    assert not reader.broken


@pytest.mark.parametrize("wire,expected", list(CASES.values()), ids=list(CASES))
def test_reply_fed_whole_before_reading(wire: bytes, expected: List[object]) -> None:
    got, _ = parse_chunks(bytewise(wire), drain_each=False)
    same(got, expected)


@pytest.mark.parametrize(
    "trailer,trailer_replies",
    [
        (b"STORED\r\n", [protocol.STORED]),
        (value_wire(b"next", 1, b"x\r\n"), [Value(b"next", 1, b"x\r\n", None)]),
        (b"STAT x y\r\n", [Stat(b"x", b"y")]),
    ],
    ids=["word", "value", "stat"],
)
@pytest.mark.parametrize("wire,expected", list(CASES.values()), ids=list(CASES))
def test_reply_with_trailing_bytes(
    wire: bytes, expected: List[object], trailer: bytes, trailer_replies: List[object]
) -> None:
    reader = Reader()
    reader.feed(wire + trailer)
    got = [reader.next_reply() for _ in expected]
    same(got, expected)
    # The trailer is still buffered, untouched, and parses as the next reply.
    assert reader.buffered == len(trailer)
    same(drain(reader), trailer_replies)
    assert reader.buffered == 0

    # A partial trailer stays buffered until it is complete.
    for cut in range(1, len(trailer)):
        reader = Reader()
        reader.feed(wire + trailer[:cut])
        same(drain(reader), expected)
        assert reader.buffered == cut
        reader.feed(trailer[cut:])
        same(drain(reader), trailer_replies)
        assert reader.buffered == 0


def test_fixed_replies_are_the_module_constants() -> None:
    reader = Reader()
    reader.feed(b"".join(w.encode() + CRLF for w in WORD_NAMES))
    for name in WORD_NAMES:
        assert reader.next_reply() is getattr(protocol, name)


def test_empty_reader_and_empty_feed() -> None:
    reader = Reader()
    assert reader.next_reply() is NEED_DATA
    reader.feed(b"")
    assert reader.next_reply() is NEED_DATA
    reader.feed(b"STO")
    reader.feed(b"")
    assert reader.next_reply() is NEED_DATA
    assert reader.buffered == 3
    reader.feed(b"RED\r")
    assert reader.next_reply() is NEED_DATA
    reader.feed(b"\n")
    assert reader.next_reply() is protocol.STORED
    assert reader.buffered == 0
    assert repr(NEED_DATA) == "NEED_DATA"


def test_partial_value_waits_for_its_whole_block() -> None:
    wire = value_wire(b"k", 0, b"0123456789")
    reader = Reader()
    for i in range(len(wire) - 1):
        reader.feed(wire[i : i + 1])
        assert reader.next_reply() is NEED_DATA
        assert reader.buffered == i + 1
    reader.feed(wire[-1:])
    assert reader.next_reply() == Value(b"k", 0, b"0123456789", None)


def test_error_reply_exceptions() -> None:
    client = ErrorReply(b"CLIENT_ERROR", "bad data chunk").exception("set")
    assert type(client) is MemcacheClientError
    assert "bad data chunk" in str(client) and "set" in str(client)
    server = ErrorReply(b"SERVER_ERROR", "out of memory").exception()
    assert type(server) is MemcacheServerError
    assert str(server) == "out of memory"
    unknown = ErrorReply(b"ERROR", "").exception("frobnicate")
    assert type(unknown) is MemcacheUnknownCommandError
    assert "ERROR" in str(unknown) and "frobnicate" in str(unknown)


# --------------------------------------------------------------------------- malformed replies

MALFORMED = {
    "unknown-word": b"BOGUS\r\n",
    "lowercase-word": b"stored\r\n",
    "word-trailing-space": b"STORED \r\n",
    "word-leading-space": b" STORED\r\n",
    "empty-line": b"\r\n",
    "bare-lf-word": b"STORED\nEND\r\n",
    "negative-number": b"-1\r\n",
    "21-digit-number": b"123456789012345678901\r\n",
    "number-with-space": b"12 \r\n",
    "value-too-few-fields": b"VALUE k 0\r\n",
    "value-too-many-fields": b"VALUE k 0 1 2 3\r\nx\r\n",
    "value-trailing-space": b"VALUE k 0 1 \r\nx\r\n",
    "value-empty-key": b"VALUE  0 1\r\nx\r\n",
    "value-bad-flags": b"VALUE k x 1\r\nx\r\n",
    "value-negative-flags": b"VALUE k -1 1\r\nx\r\n",
    "value-bad-length": b"VALUE k 0 one\r\nx\r\n",
    "value-bad-cas": b"VALUE k 0 1 abc\r\nx\r\n",
    "value-block-too-long": b"VALUE k 0 3\r\nabcd\r\nEND\r\n",
    "value-block-too-short": b"VALUE k 0 5\r\nabc\r\nEND\r\n",
    "value-block-no-crlf": b"VALUE k 0 3\r\nabcXY",
    "value-no-space": b"VALUEk 0 1\r\nx\r\n",
    "stat-no-name": b"STAT \r\n",
    "stat-empty-name": b"STAT  x\r\n",
    "item-no-name": b"ITEM \r\n",
    "version-no-space": b"VERSION\r\n",
    "errors": b"ERRORS\r\n",
    "error-double-colon": b"ERROR:: x\r\n",
    "error-glued": b"ERROR:x\r\n",
    "client-errorx": b"CLIENT_ERRORx bad\r\n",
    "config-no-length": b"CONFIG cluster 0\r\n",
    "config-bad-flags": b"CONFIG cluster x 3\r\n1\n\n\r\n",
    "config-extra-field": b"CONFIG cluster 0 3 4\r\n",
    # The block below is 18 bytes long.
    "config-length-short": b"CONFIG cluster 0 17\r\n1\nh|1.2.3.4|11211\n\r\nEND\r\n",
    "config-length-long": b"CONFIG cluster 0 19\r\n1\nh|1.2.3.4|11211\n\r\nEND\r\n",
    "config-bad-block": config_wire(b"1\nh|1.2.3.4|0\n"),
}


@pytest.mark.parametrize("feeder", FEEDERS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("wire", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_reply_raises_and_poisons(
    wire: bytes, feeder: Callable[[bytes], List[bytes]]
) -> None:
    reader = Reader()
    with pytest.raises(MemcacheProtocolError):
        for chunk in feeder(wire):
            reader.feed(chunk)
            drain(reader)
    assert_poisoned(reader)


def assert_poisoned(reader: Reader) -> None:
    assert reader.broken
    assert reader.buffered == 0
    for _ in range(3):
        with pytest.raises(MemcacheProtocolError):
            reader.next_reply()
        with pytest.raises(MemcacheProtocolError):
            reader.feed(b"STORED\r\n")
        with pytest.raises(MemcacheProtocolError):
            reader.feed(b"")
        with pytest.raises(MemcacheProtocolError):
            reader.read_until(b"\r\n")


def test_poisoned_after_good_replies_and_with_pending_bytes() -> None:
    reader = Reader()
    reader.feed(b"STORED\r\nBOGUS\r\nSTORED\r\nVALUE k 0 100\r\npartial")
    assert reader.next_reply() is protocol.STORED
    with pytest.raises(MemcacheProtocolError):
        reader.next_reply()
    assert_poisoned(reader)


def test_poisoned_while_waiting_for_a_block() -> None:
    reader = Reader()
    reader.feed(b"VALUE k 0 3\r\nab")
    assert reader.next_reply() is NEED_DATA
    reader.feed(b"cXX")
    with pytest.raises(MemcacheProtocolError):
        reader.next_reply()
    assert_poisoned(reader)


# --------------------------------------------------------------------------- line length


def test_overlong_line_without_crlf_raises() -> None:
    reader = Reader()
    fed = 0
    with pytest.raises(MemcacheProtocolError, match="longer than"):
        while True:
            reader.feed(b"x" * 1000)
            fed += 1000
            assert fed <= MAX_LINE_LENGTH + 1000, "the reader kept buffering an endless line"
            assert reader.next_reply() is NEED_DATA
    assert_poisoned(reader)


def test_overlong_line_fed_whole_raises() -> None:
    reader = Reader()
    reader.feed(b"STAT x " + b"y" * MAX_LINE_LENGTH)
    with pytest.raises(MemcacheProtocolError, match="longer than"):
        reader.next_reply()
    assert_poisoned(reader)


@pytest.mark.parametrize("feeder", FEEDERS, ids=lambda f: f.__name__)
def test_longest_line_is_accepted(feeder: Callable[[bytes], List[bytes]]) -> None:
    line = b"STAT x " + b"y" * (MAX_LINE_LENGTH - 7)
    assert len(line) == MAX_LINE_LENGTH
    got, _ = parse_chunks(feeder(line + CRLF + b"END\r\n"))
    same(got, [Stat(b"x", b"y" * (MAX_LINE_LENGTH - 7)), END])
    # The final b"\r" of the longest line may arrive on its own.
    got, _ = parse_chunks([line + b"\r", b"\n"])
    assert got == [Stat(b"x", b"y" * (MAX_LINE_LENGTH - 7))]


@pytest.mark.parametrize("feeder", [whole, lambda d: [d[:-2], d[-2:-1], d[-1:]]])
def test_line_one_byte_too_long_is_refused_however_it_arrives(
    feeder: Callable[[bytes], List[bytes]],
) -> None:
    line = b"STAT x " + b"y" * (MAX_LINE_LENGTH - 6)
    with pytest.raises(MemcacheProtocolError, match="longer than"):
        parse_chunks(feeder(line + CRLF))


# --------------------------------------------------------------------------- large values


def _large() -> Tuple[bytes, bytes]:
    data = BINARY * (5 * 1024 * 1024 // 256)
    return data, value_wire(b"big", 3, data, b"77") + b"END\r\n"


@pytest.mark.parametrize("drain_each", [True, False], ids=["read-each-chunk", "read-at-end"])
def test_large_value_in_4k_chunks_is_fast(drain_each: bool) -> None:
    data, wire = _large()
    chunks = [wire[i : i + 4096] for i in range(0, len(wire), 4096)]
    start = time.perf_counter()
    got, reader = parse_chunks(chunks, drain_each=drain_each)
    elapsed = time.perf_counter() - start
    assert got == [Value(b"big", 3, data, b"77"), END]
    assert reader.buffered == 0
    assert elapsed < 0.5, f"5 MB in 4 KB chunks took {elapsed:.2f}s: quadratic buffering?"


def test_large_value_in_small_chunks_fed_before_reading_is_linear() -> None:
    # 20480 feed() calls with no next_reply() between them: feed() must only store each
    # chunk (re-joining the buffer on every call costs about a second here).
    data, wire = _large()
    reader = Reader()
    start = time.perf_counter()
    for i in range(0, len(wire), 256):
        reader.feed(wire[i : i + 256])
    assert reader.buffered == len(wire)
    got = drain(reader)
    elapsed = time.perf_counter() - start
    assert got == [Value(b"big", 3, data, b"77"), END]
    assert elapsed < 0.25, f"5 MB fed in 256-byte chunks took {elapsed:.2f}s: quadratic feed()?"


def test_value_fed_byte_by_byte_is_linear() -> None:
    data = BINARY * 256  # 64 KiB, one feed() per byte
    wire = value_wire(b"k", 0, data)
    start = time.perf_counter()
    got, _ = parse_chunks(bytewise(wire))
    assert got == [Value(b"k", 0, data, None)]
    assert time.perf_counter() - start < 1.0


# --------------------------------------------------------------------------- read_until


@pytest.mark.parametrize("feeder", FEEDERS, ids=lambda f: f.__name__)
def test_read_until(feeder: Callable[[bytes], List[bytes]]) -> None:
    raw = b"STAT a 1\r\nSTAT b 2\r\nEND\r\n"
    reader = Reader()
    got: object = NEED_DATA
    for chunk in feeder(raw):
        assert got is NEED_DATA
        reader.feed(chunk)
        got = reader.read_until(b"END\r\n")
    assert got == b"STAT a 1\r\nSTAT b 2\r\n"
    reader.feed(b"STORED\r\n")
    # What follows the token stays buffered, for read_until or next_reply alike.
    assert reader.buffered == len(b"STORED\r\n")
    assert reader.next_reply() is protocol.STORED
    assert reader.read_until(b"\r\n") is NEED_DATA


def test_read_until_token_split_across_chunks_and_repeated() -> None:
    reader = Reader()
    reader.feed(b"one\r")
    assert reader.read_until(b"\r\n") is NEED_DATA
    reader.feed(b"\ntwo\r\n\r\nthree")
    assert reader.read_until(b"\r\n") == b"one"
    assert reader.read_until(b"\r\n") == b"two"
    assert reader.read_until(b"\r\n") == b""
    assert reader.read_until(b"\r\n") is NEED_DATA
    assert reader.buffered == len(b"three")
    reader.feed(b"\r\n")
    assert reader.read_until(b"\r\n") == b"three"
    assert reader.buffered == 0


def test_read_until_after_a_partial_reply_sees_every_byte() -> None:
    reader = Reader()
    reader.feed(b"VALUE k 0 10\r\nab")
    assert reader.next_reply() is NEED_DATA
    reader.feed(b"cd")
    assert reader.read_until(b"d") == b"VALUE k 0 10\r\nabc"


def test_read_until_large_raw_reply() -> None:
    body = b"ITEM k [1 b; 0 s]\r\n" * 20_000
    wire = body + b"END\r\n"
    reader = Reader()
    got: object = NEED_DATA
    for i in range(0, len(wire), 4096):
        reader.feed(wire[i : i + 4096])
        got = reader.read_until(b"END\r\n")
    assert got == body


def test_read_until_needs_a_token() -> None:
    with pytest.raises(ValueError):
        Reader().read_until(b"")


# --------------------------------------------------------------------------- cluster config


def test_parse_cluster_config() -> None:
    assert parse_cluster_config(CLUSTER_BLOCK) == CLUSTER
    digit_host = parse_cluster_config(b"0\n1a.example|1.2.3.4|1\n")
    assert digit_host == ClusterConfig(0, (ClusterNode("1a.example", "1.2.3.4", 1),))
    assert parse_cluster_config(b"18446744073709551615\nh||11211\n").version == 2**64 - 1


BAD_CLUSTER_BLOCKS = {
    "empty": b"",
    "only-version": b"1\n",
    "no-final-newline": b"1\nh|1.2.3.4|11211",
    "extra-line": b"1\nh|1.2.3.4|11211\nh2|1.2.3.5|11211\n",
    "no-nodes": b"1\n\n",
    "version-not-digits": b"v1\nh|1.2.3.4|11211\n",
    "version-negative": b"-1\nh|1.2.3.4|11211\n",
    "version-empty": b"\nh|1.2.3.4|11211\n",
    "version-21-digits": b"123456789012345678901\nh|1.2.3.4|11211\n",
    "missing-field": b"1\nh|11211\n",
    "only-host": b"1\nh\n",
    "extra-field": b"1\nh|1.2.3.4|11211|x\n",
    "empty-host": b"1\n|1.2.3.4|11211\n",
    "port-zero": b"1\nh|1.2.3.4|0\n",
    "port-too-big": b"1\nh|1.2.3.4|65536\n",
    "port-huge": b"1\nh|1.2.3.4|99999999999999999999\n",
    "port-longer-than-20-digits": b"1\nh|1.2.3.4|999999999999999999999999\n",
    "port-empty": b"1\nh|1.2.3.4|\n",
    "port-negative": b"1\nh|1.2.3.4|-1\n",
    "port-plus": b"1\nh|1.2.3.4|+80\n",
    "port-letters": b"1\nh|1.2.3.4|http\n",
    "port-padded": b"1\nh|1.2.3.4| 80\n",
    "good-then-bad-node": b"1\nh|1.2.3.4|11211 h2|1.2.3.5|0\n",
    "tab-in-host": b"1\nh\tx|1.2.3.4|11211\n",
    "control-in-ip": b"1\nh|1.2.3.4\x00|11211\n",
    "non-ascii-host": "1\nhöst|1.2.3.4|11211\n".encode(),
}


@pytest.mark.parametrize("block", list(BAD_CLUSTER_BLOCKS.values()), ids=list(BAD_CLUSTER_BLOCKS))
def test_parse_cluster_config_is_strict(block: bytes) -> None:
    with pytest.raises(MemcacheProtocolError):
        parse_cluster_config(block)
    # Through the reader, a bad block poisons it.
    reader = Reader()
    reader.feed(config_wire(block))
    with pytest.raises(MemcacheProtocolError):
        drain(reader)
    assert_poisoned(reader)


# --------------------------------------------------------------------------- any chunking

# Typed as the Literal hypothesis expects: a bare ("Cs",) reaches it as tuple[str].
_SURROGATES: Tuple[Literal["Cs"]] = ("Cs",)
_msg = st.text(
    st.characters(blacklist_characters="\r\n", blacklist_categories=_SURROGATES), max_size=20
)
_token = st.binary(min_size=1, max_size=12).map(
    lambda b: bytes(0x21 + c % 0x5E for c in b)  # printable ASCII, no space
)
_key = st.lists(st.integers(0x21, 0xFF).filter(lambda c: c != 0x7F), min_size=1, max_size=30).map(
    bytes
)
_line_bytes = st.binary(max_size=30).filter(lambda b: CRLF not in b)
_nasty = st.sampled_from(
    [CRLF, b"END\r\n", b"\r", b"\n", b"VALUE k 0 1\r\n", b"STORED\r\n", b"\x00", b" ", b"|"]
)
_data = st.one_of(st.binary(max_size=60), st.lists(_nasty, max_size=6).map(b"".join))
_u64 = st.integers(0, 2**64 - 1)

ReplyCase = Tuple[bytes, List[object]]


@st.composite
def _value_case(draw: st.DrawFn) -> ReplyCase:
    key, flags, data = draw(_key), draw(st.integers(0, 2**32 - 1)), draw(_data)
    cas = draw(st.none() | _u64.map(lambda n: b"%d" % n))
    return value_wire(key, flags, data, cas), [Value(key, flags, data, cas)]


@st.composite
def _error_case(draw: st.DrawFn) -> ReplyCase:
    kind = draw(st.sampled_from([b"ERROR", b"ERROR:", b"CLIENT_ERROR", b"SERVER_ERROR"]))
    message = draw(_msg)
    if kind == b"ERROR" and draw(st.booleans()):
        return b"ERROR\r\n", [ErrorReply(b"ERROR", "")]
    return kind + b" " + message.encode() + CRLF, [ErrorReply(kind.rstrip(b":"), message)]


@st.composite
def _stat_case(draw: st.DrawFn) -> ReplyCase:
    kind = draw(st.sampled_from([b"STAT", b"ITEM"]))
    name, value = draw(_token), draw(_line_bytes)
    if not value and draw(st.booleans()):
        return kind + b" " + name + CRLF, [Stat(name, b"")]
    return kind + b" " + name + b" " + value + CRLF, [Stat(name, value)]


_host = st.from_regex(rb"\A[a-z0-9][a-z0-9.-]{0,20}\Z")
_ip = st.sampled_from([b"", b"10.0.0.1", b"::1", b"192.168.100.200"])


@st.composite
def _config_case(draw: st.DrawFn) -> ReplyCase:
    version = draw(_u64)
    nodes = draw(
        st.lists(
            st.tuples(_host, _ip, st.integers(1, 65535)),
            min_size=1,
            max_size=4,
            unique_by=lambda n: (n[0], n[2]),  # a host:port listed twice is refused
        )
    )
    block = b"%d\n%s\n" % (version, b" ".join(b"%s|%s|%d" % n for n in nodes))
    expected = ClusterConfig(
        version, tuple(ClusterNode(h.decode(), i.decode(), p) for h, i, p in nodes)
    )
    return config_wire(block, draw(st.integers(0, 2**32 - 1))), [expected, END]


reply_cases = st.one_of(
    _value_case(),
    st.sampled_from(sorted(WORDS)).map(lambda w: (w + CRLF, [getattr(protocol, w.decode())])),
    _u64.map(lambda n: (b"%d\r\n" % n, [n])),
    _error_case(),
    _stat_case(),
    _line_bytes.map(lambda v: (b"VERSION " + v + CRLF, [Version(v)])),
    _config_case(),
)


@FAST
@given(cases=st.lists(reply_cases, min_size=1, max_size=8), data=st.data())
def test_any_chunking_parses_the_same(cases: List[ReplyCase], data: st.DataObject) -> None:
    wire = b"".join(w for w, _ in cases)
    expected = [r for _, replies in cases for r in replies]

    got_whole, _ = parse_chunks([wire])
    same(got_whole, expected)

    if data.draw(st.booleans(), label="byte by byte"):
        chunks = bytewise(wire)
    else:
        cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=25), label="cuts")
        chunks = split_at(wire, cuts)
    assert b"".join(chunks) == wire
    got, reader = parse_chunks(chunks, drain_each=data.draw(st.booleans(), label="drain"))
    same(got, expected)
    assert reader.buffered == 0
    assert not reader.broken


# --------------------------------------------------------------------------- garbage

_VALUE_SPAN = re.compile(
    rb"VALUE ([^ ]+) ([0-9]{1,20}) ([0-9]{1,20})(?: ([0-9]{1,20}))?\r\n", re.DOTALL
)
_CONFIG_SPAN = re.compile(rb"CONFIG cluster ([0-9]{1,20}) ([0-9]{1,20})\r\n")
_STAT_SPAN = re.compile(rb"(?:STAT|ITEM) ([^ ]+)(?: (.*))?\r\n", re.DOTALL)
_ERROR_SPAN = re.compile(rb"(ERROR|CLIENT_ERROR|SERVER_ERROR):?(?: (.*))?\r\n", re.DOTALL)


def check_span(reply: object, span: bytes) -> None:
    """``span`` (the bytes the reader consumed for ``reply``) really spells ``reply``."""
    assert isinstance(reply, REPLY_TYPES), reply
    line_end = span.find(CRLF) + 2
    assert line_end >= 2, span
    line = span[:line_end]
    assert len(line) - 2 <= MAX_LINE_LENGTH
    if isinstance(reply, Value):
        m = _VALUE_SPAN.fullmatch(line)
        assert m is not None, span
        size = int(m[3])
        assert span == line + reply.data + CRLF
        assert (reply.key, reply.flags, len(reply.data), reply.cas) == (m[1], int(m[2]), size, m[4])
        return
    if isinstance(reply, ClusterConfig):
        m = _CONFIG_SPAN.fullmatch(line)
        assert m is not None, span
        block = span[line_end:-2]
        assert len(block) == int(m[2]) and span.endswith(CRLF)
        assert parse_cluster_config(block) == reply
        return
    assert line == span, "a one-line reply consumed more than its line"
    if isinstance(reply, bytes):
        assert reply in WORDS and span == reply + CRLF
    elif isinstance(reply, int):
        assert not isinstance(reply, bool)
        assert re.fullmatch(rb"[0-9]{1,20}\r\n", span) and int(span) == reply
    elif isinstance(reply, Stat):
        m = _STAT_SPAN.fullmatch(span)
        assert m is not None and (m[1], m[2] or b"") == reply, span
    elif isinstance(reply, Version):
        assert span == b"VERSION " + reply.version + CRLF
    else:
        assert isinstance(reply, ErrorReply)
        m = _ERROR_SPAN.fullmatch(span)
        assert m is not None and m[1] == reply.kind, span
        assert reply.message == (m[2] or b"").decode("utf-8", "replace")


def run_garbage(chunks: Sequence[bytes]) -> Tuple[List[object], object]:
    """Feed ``chunks``, reading after each; every reply is checked against the bytes it
    consumed. Returns the replies and how it ended: NEED_DATA, or the protocol error."""
    stream = b"".join(chunks)
    reader = Reader()
    fed = 0
    replies: List[object] = []
    for chunk in chunks:
        reader.feed(chunk)
        fed += len(chunk)
        for _ in range(len(stream) + 2):  # every reply consumes at least one byte
            before = fed - reader.buffered
            try:
                reply = reader.next_reply()
            except MemcacheProtocolError as exc:
                assert_poisoned(reader)
                return replies, exc
            if reply is NEED_DATA:
                break
            after = fed - reader.buffered
            assert after > before, "a reply that consumed nothing"
            check_span(reply, stream[before:after])
            replies.append(reply)
        else:
            raise AssertionError("next_reply() never returned NEED_DATA")
    assert fed - reader.buffered <= len(stream)
    return replies, NEED_DATA


_garbage_fragment = st.one_of(
    st.sampled_from(
        [
            b"VALUE ",
            b"VALUE k 0 ",
            b"VALUE k 0 3\r\n",
            b"STAT ",
            b"ITEM ",
            b"CONFIG cluster 0 ",
            b"VERSION ",
            b"ERROR",
            b"ERROR: ",
            b"CLIENT_ERROR ",
            b"SERVER_ERROR ",
            b"END",
            b"STORED",
            b"RESET",
            b"\r\n",
            b"\r",
            b"\n",
            b" ",
            b"0",
            b"1",
            b"3",
            b"12",
            b"18446744073709551616",
            b"999999999999",
            b"1\nh|1.2.3.4|11211\n",
            b"|",
            b"k",
            b"\x00",
            b"\xff",
        ]
    ),
    reply_cases.map(lambda case: case[0]),
    st.binary(max_size=12),
)


@FAST
@given(fragments=st.lists(_garbage_fragment, max_size=30), data=st.data())
def test_garbage_never_hangs_and_never_invents_replies(
    fragments: List[bytes], data: st.DataObject
) -> None:
    stream = b"".join(fragments)
    replies, outcome = run_garbage([stream])
    # Any chunking ends the same way, with the same replies.
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts")
    replies_chunked, outcome_chunked = run_garbage(split_at(stream, cuts))
    assert replies_chunked == replies
    assert type(outcome_chunked) is type(outcome)


@FAST
@given(stream=st.binary(max_size=300))
def test_random_bytes_never_hang(stream: bytes) -> None:
    replies, _ = run_garbage([stream])
    replies_bytewise, _ = run_garbage(bytewise(stream))
    assert replies_bytewise == replies


def test_garbage_checker_catches_invented_values() -> None:
    """The span check of the garbage tests is not vacuous."""
    check_span(Value(b"k", 0, b"abc", None), b"VALUE k 0 3\r\nabc\r\n")
    for reply, span in [
        (Value(b"k", 0, b"abc", None), b"VALUE k 0 3 \r\nabc\r\n"),
        (Value(b"k", 0, b"abc", None), b"VALUE k 1 3\r\nabc\r\n"),
        (Value(b"k", 0, b"ab", None), b"VALUE k 0 3\r\nabc\r\n"),
        (protocol.STORED, b"STORED \r\n"),
        (5, b"05 \r\n"),
        (Stat(b"a", b""), b"STAT  a\r\n"),
    ]:
        with pytest.raises(AssertionError):
            check_span(reply, span)


# --------------------------------------------------------------------------- keys

PREFIXES = [b"", b"p:", b"x" * 200]


def expected_key(key: object, prefix: bytes, allow_unicode: bool) -> object:
    """An independent statement of the key rules: the legal bytes, or None."""
    if isinstance(key, str):
        if key.isascii():
            raw = key.encode("ascii")
        elif not allow_unicode:
            return None
        else:
            try:
                raw = key.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates
                return None
    elif type(key) is bytes:
        raw = key
    else:
        return None
    full = prefix + raw
    if not 1 <= len(full) <= 250:
        return None
    if any(b <= 0x20 or b == 0x7F for b in full):
        return None
    return full


_key_chars = st.one_of(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E),
    st.sampled_from(" \t\r\n\x00\x7f\x1f\x0b\x0c\x85\xa0é€\U0001f600\ud800"),
    st.characters(),
)
_key_bytes = st.one_of(st.integers(0x21, 0x7E), st.sampled_from([0, 9, 10, 13, 32, 127, 128, 255]))
_any_key = st.one_of(
    st.text(_key_chars, max_size=12),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=240, max_size=260),
    st.lists(_key_bytes, max_size=12).map(bytes),
    st.lists(_key_bytes, min_size=245, max_size=255).map(bytes),
    st.text(st.sampled_from("aé€"), min_size=80, max_size=130),  # UTF-8 length near 250
)
_prefix = st.one_of(
    st.sampled_from(PREFIXES), st.lists(_key_bytes, max_size=8).map(bytes), st.just(b"p" * 250)
)


@settings(max_examples=400, deadline=None)
@given(key=_any_key, prefix=_prefix, allow_unicode=st.booleans())
def test_validate_key_fuzz(key: object, prefix: bytes, allow_unicode: bool) -> None:
    expected = expected_key(key, prefix, allow_unicode)
    if expected is None:
        with pytest.raises(MemcacheIllegalInputError):
            validate_key(key, prefix, allow_unicode)  # type: ignore[arg-type]
    else:
        got = validate_key(key, prefix, allow_unicode)  # type: ignore[arg-type]
        assert type(got) is bytes
        assert got == expected


@pytest.mark.parametrize(
    "key",
    [
        "a\r\nflush_all",
        b"a\r\nflush_all",
        "a\r\nset x 0 0 1",
        "a b",
        b"a b",
        "a\x00",
        b"a\x00",
        "a\tb",
        "a\nb",
        "a\rb",
        "a\x7f",
        b"a\x7f",
        "a\x0bb",
        "\x1f",
        " ",
        "",
        b"",
        "k" * 251,
        b"k" * 251,
    ],
)
@pytest.mark.parametrize("allow_unicode", [False, True])
def test_validate_key_refuses_injection(key: object, allow_unicode: bool) -> None:
    with pytest.raises(MemcacheIllegalInputError):
        validate_key(key, allow_unicode=allow_unicode)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", [1, 1.5, None, True, bytearray(b"k"), memoryview(b"k"), [b"k"]])
def test_validate_key_refuses_other_types(key: object) -> None:
    with pytest.raises(MemcacheIllegalInputError):
        validate_key(key)  # type: ignore[arg-type]
    with pytest.raises(MemcacheIllegalInputError):
        validate_key(key, b"p:", allow_unicode=True)  # type: ignore[arg-type]


def test_validate_key_limits() -> None:
    assert MAX_KEY_LENGTH == 250
    assert validate_key("k" * 250) == b"k" * 250
    assert validate_key(b"k" * 250) == b"k" * 250
    assert validate_key("k" * 248, b"p:") == b"p:" + b"k" * 248
    with pytest.raises(MemcacheIllegalInputError):
        validate_key("k" * 249, b"p:")  # 251 with its prefix
    with pytest.raises(MemcacheIllegalInputError):
        validate_key("k", b"p ")  # the prefix is checked too
    assert validate_key("", b"p:") == b"p:"  # 1..250 bytes counts the prefix
    assert validate_key("~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./") == (
        b"~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./"
    )


def test_validate_key_unicode() -> None:
    with pytest.raises(MemcacheIllegalInputError, match="allow_unicode"):
        validate_key("clé")
    assert validate_key("clé", allow_unicode=True) == "clé".encode()
    assert validate_key("€", b"p:", allow_unicode=True) == b"p:\xe2\x82\xac"
    # Non-ASCII bytes keys are the caller's business: they are only length/byte checked.
    assert validate_key(b"cl\xc3\xa9") == b"cl\xc3\xa9"
    assert validate_key("é" * 125, allow_unicode=True) == "é".encode() * 125  # 250 bytes
    with pytest.raises(MemcacheIllegalInputError):
        validate_key("é" * 125 + "a", allow_unicode=True)
    with pytest.raises(MemcacheIllegalInputError):
        validate_key("\ud800", allow_unicode=True)
    # Only ASCII separators matter to memcached: a UTF-8 NBSP or NEL is ordinary key data.
    assert validate_key("a\u00a0b\u0085", allow_unicode=True) == b"a\xc2\xa0b\xc2\x85"


# --------------------------------------------------------------------------- encoders


@pytest.mark.parametrize("command", [b"set", b"add", b"replace", b"append", b"prepend"])
def test_encode_storage(command: bytes) -> None:
    assert encode_storage(command, b"k", b"hello") == command + b" k 0 0 5\r\nhello\r\n"
    assert encode_storage(command, b"k", b"hello", 3, 60, noreply=True) == (
        command + b" k 3 60 5 noreply\r\nhello\r\n"
    )
    assert encode_storage(command, b"k", b"", 2**32 - 1, -1) == (
        command + b" k 4294967295 -1 0\r\n\r\n"
    )
    assert encode_storage(command, b"k", b"a\r\nb") == command + b" k 0 0 4\r\na\r\nb\r\n"


def test_encode_cas() -> None:
    assert encode_storage(b"cas", b"k", b"v", cas=123) == b"cas k 0 0 1 123\r\nv\r\n"
    assert encode_storage(b"cas", b"k", b"v", 1, 2, noreply=True, cas=b"99") == (
        b"cas k 1 2 1 99 noreply\r\nv\r\n"
    )
    assert encode_storage(b"cas", b"k", b"v", cas="18446744073709551615") == (
        b"cas k 0 0 1 18446744073709551615\r\nv\r\n"
    )
    assert encode_storage(b"cas", b"k", b"v", cas=0) == b"cas k 0 0 1 0\r\nv\r\n"


@pytest.mark.parametrize(
    "cas",
    [
        -1,
        2**64,
        True,
        False,
        1.0,
        "",
        b"",
        "12a",
        b"0x10",
        "-1",
        " 1",
        "1 ",
        "1\r\n",
        b"1 noreply",
        "١٢",  # Arabic-Indic digits: str.isdigit() is True, memcached disagrees
        "18446744073709551616",
        b"123456789012345678901",
        bytearray(b"1"),
        [1],
    ],
)
def test_encode_cas_refuses(cas: object) -> None:
    with pytest.raises(MemcacheIllegalInputError):
        encode_storage(b"cas", b"k", b"v", cas=cas)


def test_encode_retrieval() -> None:
    assert encode_retrieval(b"get", [b"a"]) == b"get a\r\n"
    assert encode_retrieval(b"get", [b"a", b"b", b"c"]) == b"get a b c\r\n"
    assert encode_retrieval(b"gets", (b"a", b"b")) == b"gets a b\r\n"
    assert encode_retrieval(b"gat", [b"a", b"b"], expire=10) == b"gat 10 a b\r\n"
    assert encode_retrieval(b"gats", [b"a"], expire=0) == b"gats 0 a\r\n"
    assert encode_retrieval(b"gat", [b"a"], expire=-1) == b"gat -1 a\r\n"


def test_encode_simple_commands() -> None:
    assert encode_delete(b"k") == b"delete k\r\n"
    assert encode_delete(b"k", noreply=True) == b"delete k noreply\r\n"
    assert encode_incr_decr(b"incr", b"k", 5) == b"incr k 5\r\n"
    assert encode_incr_decr(b"decr", b"k", 0, noreply=True) == b"decr k 0 noreply\r\n"
    assert encode_incr_decr(b"incr", b"k", 2**64 - 1) == b"incr k 18446744073709551615\r\n"
    assert encode_touch(b"k", 30) == b"touch k 30\r\n"
    assert encode_touch(b"k", 0, noreply=True) == b"touch k 0 noreply\r\n"
    assert encode_version() == b"version\r\n"
    assert encode_verbosity(1) == b"verbosity 1\r\n"
    assert encode_verbosity(0, noreply=True) == b"verbosity 0 noreply\r\n"
    assert encode_cache_memlimit(64) == b"cache_memlimit 64\r\n"
    assert encode_cache_memlimit(100, noreply=True) == b"cache_memlimit 100 noreply\r\n"
    assert encode_flush_all() == b"flush_all 0\r\n"
    assert encode_flush_all(10, noreply=True) == b"flush_all 10 noreply\r\n"
    assert encode_quit() == b"quit\r\n"
    assert encode_shutdown() == b"shutdown\r\n"
    assert encode_shutdown(graceful=True) == b"shutdown graceful\r\n"
    assert encode_config_get() == b"config get cluster\r\n"
    assert encode_config_get("cluster") == b"config get cluster\r\n"


def test_encode_stats() -> None:
    assert encode_stats() == b"stats\r\n"
    assert encode_stats("slabs") == b"stats slabs\r\n"
    assert encode_stats(b"cachedump", "1", b"10") == b"stats cachedump 1 10\r\n"
    assert encode_stats("detail", "on") == b"stats detail on\r\n"


@pytest.mark.parametrize(
    "arg",
    ["", b"", "a b", "slabs\r\nflush_all", b"x\x00", "\t", "é", "détail", 1, None, bytearray(b"x")],
)
def test_encode_stats_and_config_refuse_bad_tokens(arg: object) -> None:
    with pytest.raises(MemcacheIllegalInputError):
        encode_stats(arg)  # type: ignore[arg-type]
    with pytest.raises(MemcacheIllegalInputError):
        encode_stats("items", arg)  # type: ignore[arg-type]
    with pytest.raises(MemcacheIllegalInputError):
        encode_config_get(arg)  # type: ignore[arg-type]


def test_encode_auth() -> None:
    assert encode_auth("user", "pass") == b"set auth 0 0 9\r\nuser pass\r\n"
    assert encode_auth(b"user", b"pa ss") == b"set auth 0 0 10\r\nuser pa ss\r\n"
    assert encode_auth("u", "pässwörd") == b"set auth 0 0 12\r\nu p\xc3\xa4ssw\xc3\xb6rd\r\n"


@pytest.mark.parametrize(
    "username,password",
    [
        ("", "pass"),
        ("us er", "pass"),
        ("user\r\n", "pass"),
        ("üser", "pass"),
        (None, "pass"),
        (1, "pass"),
        ("user", ""),
        ("user", b""),
        ("user", "pa\r\nss"),
        ("user", None),
        ("user", 1234),
        ("user", "\ud800"),
    ],
)
def test_encode_auth_refuses(username: object, password: object) -> None:
    with pytest.raises(MemcacheIllegalInputError):
        encode_auth(username, password)  # type: ignore[arg-type]


class Small(enum.IntEnum):
    TEN = 10


_BAD_INTS = [True, False, 1.0, 1.5, "1", b"1", None, [1]]

# (call taking one integer, expected bytes with {} for it, legal low, legal high exclusive,
#  other values that mean something else and so are not "bad" here)
INT_ARGS = {
    "flags": (
        lambda n: encode_storage(b"set", b"k", b"v", flags=n),
        b"set k {} 0 1\r\nv\r\n",
        0,
        2**32,
        (),
    ),
    "expire": (
        lambda n: encode_storage(b"set", b"k", b"v", expire=n),
        b"set k 0 {} 1\r\nv\r\n",
        -(2**31),
        2**31,
        (),
    ),
    "gat-expire": (
        lambda n: encode_retrieval(b"gat", [b"k"], expire=n),
        b"gat {} k\r\n",
        -(2**31),
        2**31,
        (None,),  # no expire: a plain get
    ),
    "touch-expire": (lambda n: encode_touch(b"k", n), b"touch k {}\r\n", -(2**31), 2**31, ()),
    "delta": (
        lambda n: encode_incr_decr(b"incr", b"k", n),
        b"incr k {}\r\n",
        0,
        2**64,
        (),
    ),
    "cas": (
        lambda n: encode_storage(b"cas", b"k", b"v", cas=n),
        b"cas k 0 0 1 {}\r\nv\r\n",
        0,
        2**64,
        ("1", b"1", None),  # digit strings are cas values; None is no cas
    ),
    "verbosity": (encode_verbosity, b"verbosity {}\r\n", 0, 2**32, ()),
    "memlimit": (encode_cache_memlimit, b"cache_memlimit {}\r\n", 0, 2**32, ()),
    "delay": (encode_flush_all, b"flush_all {}\r\n", 0, 2**31, ()),
}


@pytest.mark.parametrize(
    "call,template,low,high,other", list(INT_ARGS.values()), ids=list(INT_ARGS)
)
def test_integer_arguments(
    call: Callable[[object], bytes], template: bytes, low: int, high: int, other: Tuple[object, ...]
) -> None:
    for good in (low, high - 1, 0 if low < 0 else low + 1):
        assert call(good) == template.replace(b"{}", b"%d" % good)
    # An int subclass is an int, and is written as a number.
    assert call(Small.TEN) == template.replace(b"{}", b"10")
    for bad in (low - 1, high, high * 2**64, *_BAD_INTS):
        if bad in other and type(bad) in map(type, other):
            continue
        with pytest.raises(MemcacheIllegalInputError):
            call(bad)
