"""The compiled reader and encoder of a quiet meta pipeline against the pure ones: pure
logic, no server.

``pymc/speedups.c``'s ``scan_meta_quiet`` takes the common replies of an
:class:`~pymc.meta.ExpectMetaQuiet` in one call, and leaves every other reply to the pure
loop, which is the reference (``mr._scan_quiet = None`` runs the loop alone). Hypothesis
feeds both the same pipelines (every reply code, every flag, opaques of other requests,
out of order and twice, keys that match and keys that do not, base64 keys, error lines
mid-pipeline, MN with flags and bytes after it, data blocks over the cap and without their
CRLF, and random mutations of all of these), whole, byte by byte and in random pieces,
and both must give the same results (the same values of the same types), the same errors,
or the same exception with the same message and the reader left in the same state.

``encode_meta_quiet`` (behind :func:`pymc.meta.encode_quiet_gets`) must give the bytes
:func:`pymc.meta.encode_meta_get` gives for each request, and refuse what it refuses.

These tests reach the meta module's private hooks on purpose. The compiled halves are
skipped when the compiled module is not in use.
"""

from __future__ import annotations

import base64
import gc
import random
import tracemalloc
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymc import protocol
from pymc.exceptions import MemcacheIllegalInputError
from pymc.meta import (
    OPAQUE_MASK,
    ExpectMetaQuiet,
    MetaResult,
    encode_meta_get,
    encode_meta_noop,
    encode_quiet_gets,
)
from pymc.protocol import NEED_DATA, ErrorReply, PyReader
from pymc.protocol import metareplies as mr

SCAN = mr._scan_quiet if mr._scan_quiet is not mr._scan_quiet_py else None
compiled = pytest.mark.skipif(SCAN is None, reason="the compiled quiet reader is not in use")
#: Every reader of many replies at once in use here: the compiled one, and the pure twin.
SCANNERS = [scan for scan in (SCAN, mr._scan_quiet_py) if scan is not None]
MANY = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))

Sent = List[Tuple[bytes, ...]]


def _describe(value: Any) -> Any:
    """A value with the types of everything in it, for comparisons that see types."""
    if type(value) is MetaResult:
        return ("MetaResult", tuple((type(v).__name__, v) for v in value))
    if type(value) is ErrorReply:
        return ("ErrorReply", value.kind, value.message)
    if type(value) is dict:
        return ("dict", [(type(k).__name__, k, _describe(v)) for k, v in value.items()])
    return (type(value).__name__, value)


def _run(
    make: Any, data: bytes, pieces: Sequence[int], scan: Any, cap: Optional[int]
) -> Tuple[Any, ...]:
    """Feed ``data`` in ``pieces`` to a fresh ExpectMetaQuiet with ``scan`` as its
    compiled reader; the outcome with everything a caller can see."""
    saved = mr._scan_quiet
    mr._scan_quiet = scan
    try:
        expect = make()
        reader = PyReader(max_block=cap)
        result: Any = NEED_DATA
        at = 0
        try:
            for size in [*pieces, len(data)]:
                chunk = data[at : at + max(size, 1)]
                at += len(chunk)
                if chunk:
                    reader.feed(chunk)
                result = expect.step(reader)
                if result is not NEED_DATA or at >= len(data):
                    break
        except Exception as exc:
            try:
                reader.next_line()
            except Exception as later:
                after: Any = (type(later).__name__, str(later))
            else:
                after = "not poisoned"
            return (
                "raised",
                at,  # (as soon as the pure loop: after the same bytes)
                type(exc).__name__,
                str(exc),
                reader.broken,
                after,
                _describe(expect.results),
                [_describe(e) for e in expect.errors],
            )
        return (
            "returned",
            at,
            _describe(result),
            _describe(expect.results),
            [_describe(e) for e in expect.errors],
            reader.broken,
            # (Waiting for a block, the pure loop holds its head line, the compiled reader
            # leaves it buffered: the bytes unread are compared once the reply is whole.)
            None if result is NEED_DATA else reader.buffered,
        )
    finally:
        mr._scan_quiet = saved


def _pieces(data: bytes, rng: random.Random) -> List[List[int]]:
    """Ways to cut ``data``: whole, byte by byte, and random pieces."""
    cuts = []
    left = len(data)
    while left > 0:
        size = rng.randint(1, 40)
        cuts.append(size)
        left -= size
    return [[], [1] * len(data), cuts]


def _same(sent: Sent, data: bytes, cap: Optional[int] = None, seed: int = 0) -> Any:
    """Every way of feeding: the compiled reader gives what the pure loop gives."""
    make = lambda: ExpectMetaQuiet(sent)  # noqa: E731
    outcome = None
    for pieces in _pieces(data, random.Random(seed)):
        pure = _run(make, data, pieces, None, cap)
        for scan in SCANNERS:
            fast = _run(make, data, pieces, scan, cap)
            assert fast == pure, (scan, sent, data, pieces)
        if outcome is None:
            outcome = pure
    return outcome


# --------------------------------------------------------------------------- the choice


def test_the_compiled_quiet_reader_is_chosen_with_the_compiled_module() -> None:
    if protocol.SPEEDUPS:
        assert mr._scan_quiet is not mr._scan_quiet_py and mr._encode_quiet is not None
    else:
        assert mr._scan_quiet is mr._scan_quiet_py and mr._encode_quiet is None


# --------------------------------------------------------------------------- named cases

SENT: Sent = [(b"1", b"mg"), (b"2", b"mg"), (b"3", b"ms"), (b"4", b"md"), (b"5", b"ma")]


@pytest.mark.parametrize(
    "data",
    [
        b"MN\r\n",
        b"VA 1 f5 O1\r\nx\r\nVA 2 O2 c9 t-1 s2 l3 h1\r\nyz\r\nMN\r\n",
        b"HD O1 f0\r\nMN\r\n",
        b"EN O2\r\nMN\r\n",
        b"NS O3\r\nEX O4\r\nNF O5\r\nMN\r\n",
        b"OK O3\r\nMN\r\n",  # memcached 1.6.6's HD
        b"EX O3\r\nNF O4\r\nVA 2 O5\r\n42\r\nMN\r\n",
        b"VA 0 O1 Z\r\n\r\nVA 0 O2 W\r\n\r\nMN\r\n",  # a placeholder; a recache win
        b"VA 0 O1 Z X\r\n\r\nVA 0 O2 Z f3\r\n\r\nMN\r\n",
        b"VA 3 O1 W Z X q9 Qx\r\nabc\r\nMN\r\n",  # unknown flags skipped
        b"VA 1 O1\r\nx\r\nMN\r\nVA 1 O2\r\n",  # bytes after MN
        b"VA 1 O2\r\nx\r\nVA 1 O1\r\nx\r\nMN\r\n",  # out of order
        b"VA 1 O1\r\nx\r\nVA 1 O1\r\nx\r\nMN\r\n",  # twice
        b"VA 1 O9\r\nx\r\nMN\r\n",  # an opaque not sent
        b"VA 1\r\nx\r\nMN\r\n",  # no opaque
        b"EN\r\nMN\r\n",  # bare
        b"VA 1 O1 O1\r\nx\r\nMN\r\n",
        b"VA 1 O1\r\nxy\r\nMN\r\n",  # the block is not followed by CRLF
        b"VA 1 O1\r\nx",  # incomplete
        b"VA 5 O1\r\nx\r\n",
        b"VA 99999999999999999999 O1\r\nx\r\nMN\r\n",
        b"VA 123456789012345678901 O1\r\n",
        b"HD O3\r\nMN\r\n",
        b"NS O1\r\nMN\r\n",  # not an answer to mg
        b"MN\r\nMN\r\n",
        b"MN x\r\n",
        b"VA 2 O5\r\nab\r\nMN\r\n",  # ma: not a number
        b"VA 20 O5\r\n18446744073709551616\r\nMN\r\n",
        b"VA 20 O5\r\n18446744073709551615\r\nMN\r\n",
        b"VA 1 O1\r\nx\r\nSERVER_ERROR out of memory\r\nEX O3\r\nMN\r\n",
        b"CLIENT_ERROR bad data chunk\r\nVA 1 O2\r\nx\r\nMN\r\n",
        b"VA 1 O1\r\nx\r\nERROR\r\nVA 1 O2\r\nx\r\nMN\r\n",
        b"ERROR Too many open connections\r\nVA 1 O2\r\nx\r\nMN\r\n",
        b"ERRORS\r\nMN\r\n",
        b"VA 1 O1 c\r\nx\r\nMN\r\n",
        b"VA 1 O1 f4294967296\r\nx\r\nMN\r\n",
        b"VA 1 O1 l99999999999999999999\r\nx\r\nMN\r\n",
        b"VA 1 O1 t-2\r\nx\r\nMN\r\n",
        b"VA 1 O1 h2\r\nx\r\nMN\r\n",
        b"VA 1 O1  f1\r\nx\r\nMN\r\n",
        b"VA 1 O1 k\r\nx\r\nMN\r\n",
        b"VA 1 O1 kZm9v b\r\nx\r\nMN\r\n",
        b"VA 1 O1 kZm9 b\r\nx\r\nMN\r\n",
        b"VA 1 O1 \r\nx\r\nMN\r\n",
        b"VA 1 O1\rx\r\nx\r\nMN\r\n",
        b"X" * 9000 + b"\r\nMN\r\n",
        b"VA 1 O1 " + b"q" * 8200 + b"\r\nx\r\nMN\r\n",
        b"va 1 O1\r\nx\r\nMN\r\n",
        # A quiet get's hits (the shape the pure twin reads), out of order, twice, etc.
        b"VA 1 f0 O2\r\nx\r\nVA 1 f0 O1\r\nx\r\nMN\r\n",
        b"VA 1 f0 O1\r\nx\r\nVA 1 f0 O1\r\nx\r\nMN\r\n",
        b"VA 1 f0 O1\r\nx\r\nVA 1 f7 O2\r\ny\r\nVA 1 f0 O1\r\nx\r\nMN\r\n",
        b"VA 1 f0 O3\r\nx\r\nMN\r\n",  # a hit to ms
        b"VA 1 f0 O5\r\nx\r\nMN\r\n",  # ma
        b"VA 1 f0 O1 \r\nx\r\nMN\r\n",
        b"VA 1 f0 O1\r\nx\nMN\r\n",
        b"VA 01 f00 O1\r\nx\r\nMN\r\n",
        b"VA 1 O1\n\r\nx\r\nMN\r\n",
    ],
)
def test_every_reply_kind_reads_the_same(data: bytes) -> None:
    _same(SENT, data)


def test_a_hit_line_longer_than_a_line_may_be_is_refused() -> None:
    long = b"o" * 8190
    for opaque in (long[:8180], long):  # (the line: 8192 bytes, then 8202)
        outcome = _same([(opaque, b"mg")], b"VA 1 f0 O%s\r\nx\r\nMN\r\n" % opaque)
        assert outcome[0] == ("returned" if len(opaque) < 8190 else "raised")


@pytest.mark.parametrize("cap", [0, 1, 2, None])
def test_the_value_size_cap_is_the_pure_readers(cap: Optional[int]) -> None:
    outcome = _same(SENT, b"VA 1 O1\r\nx\r\nVA 2 O2\r\nxy\r\nMN\r\n", cap)
    assert outcome[0] == ("returned" if cap is None or cap >= 2 else "raised")


def test_keys_asked_back_must_match() -> None:
    sent: Sent = [(b"1", b"mg", b"foo"), (b"2", b"mg", b"Zm9v", b"b"), (b"3", b"ms", b"bar")]
    _same(sent, b"VA 1 O1 kfoo\r\nx\r\nVA 1 O2 kZm9v b\r\ny\r\nNS O3 kbar\r\nMN\r\n")
    assert _same(sent, b"VA 1 O1 kfoo\r\nx\r\nVA 1 O2 kZm9v\r\ny\r\nMN\r\n")[0] == "raised"
    assert _same(sent, b"VA 1 O1 kbar\r\nx\r\nMN\r\n")[0] == "raised"
    assert _same(sent, b"VA 1 O1\r\nx\r\nMN\r\n")[0] == "raised"
    assert _same(sent, b"NS O3 kfoo\r\nMN\r\n")[0] == "raised"
    # A key sent back that was not asked for is kept, as the pure reader keeps it.
    _same([(b"1",)], b"VA 1 O1 kfoo\r\nx\r\nMN\r\n")


def test_a_hundred_hits_are_read_in_one_scan() -> None:
    opaques = [b"%x" % n for n in range(100)]
    data = b"".join(b"VA 3 f%d O%s\r\nv%02d\r\n" % (n, o, n) for n, o in enumerate(opaques))
    outcome = _same([(o, b"mg") for o in opaques], data + b"MN\r\n")
    assert outcome[0] == "returned" and len(outcome[2][1]) == 100
    for scan in SCANNERS:
        reader = PyReader()
        reader.feed(data + b"MN\r\n")
        expect = ExpectMetaQuiet.gets(opaques)
        calls: List[int] = []

        def counted(*args: Any, scan: Any = scan, calls: List[int] = calls) -> Any:
            calls.append(1)
            return scan(*args)

        mr._scan_quiet, saved = counted, mr._scan_quiet
        try:
            found = expect.step(reader)
        finally:
            mr._scan_quiet = saved
        assert len(calls) == 1  # (no reply went through the pure loop)
        assert isinstance(found, dict)
        assert [(k, r.value, r.client_flags) for k, r in found.items()] == [
            (o, b"v%02d" % n, n) for n, o in enumerate(opaques)
        ]


def test_gets_is_the_long_form() -> None:
    opaques = [b"a", b"b", b"c"]
    data = b"VA 1 O1\r\nx\r\nVA 1 Ob f2\r\ny\r\nSERVER_ERROR no\r\nHD Oc\r\nMN\r\n"
    for tail in (b"", b"VA 1 Oa\r\nx\r\nMN\r\n"):
        for scan in (None, *SCANNERS):
            long = _run(
                lambda: ExpectMetaQuiet([(o, b"mg") for o in opaques]), data + tail, [], scan, None
            )
            short = _run(lambda: ExpectMetaQuiet.gets(opaques), data + tail, [], scan, None)
            assert long == short
    with pytest.raises(ValueError):
        ExpectMetaQuiet.gets([b"a", b"a"])
    with pytest.raises(ValueError):
        ExpectMetaQuiet.gets([b"a", "b"])  # type: ignore[list-item]


# --------------------------------------------------------------------------- hypothesis

_FLAGS = st.sampled_from(
    [b"c7", b"c18446744073709551615", b"c18446744073709551616", b"f0", b"f3", b"f4294967295",
     b"f4294967296", b"s5", b"l9", b"l99999999999999999999", b"t-1", b"t0", b"t99", b"t-2",
     b"h0", b"h1", b"h2", b"W", b"X", b"Z", b"Wx", b"b", b"kfoo", b"kZm9v", b"k", b"q",
     b"Qz", b"", b"c", b"O"]
)  # fmt: skip
_CODES = st.sampled_from([b"VA", b"HD", b"EN", b"NS", b"EX", b"NF", b"OK", b"MN", b"XX"])
_ERRORS = st.sampled_from(
    [b"ERROR", b"CLIENT_ERROR bad command line format", b"SERVER_ERROR out of memory",
     b"ERROR Too many open connections", b"SERVER_ERROR", b"CLIENT_ERROR"]
)  # fmt: skip


@st.composite
def pipelines(draw: Any) -> Tuple[Sent, bytes, Optional[int]]:
    count = draw(st.integers(0, 6))
    sent: Sent = []
    for n in range(count):
        opaque = draw(st.sampled_from([b"%x" % n, b"%d" % (n + 10), b"o%d" % n]))
        command = draw(st.sampled_from([b"mg", b"mg", b"ms", b"md", b"ma"]))
        key = draw(st.sampled_from([None, b"foo", b"Zm9v"]))
        entry: Tuple[bytes, ...] = (opaque, command)
        if key is not None:
            entry += (key, b"b") if key == b"Zm9v" and draw(st.booleans()) else (key,)
        sent.append(entry)
    opaques = [e[0] for e in sent] + [b"zz", b""]
    replies = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            replies.append(draw(_ERRORS) + b"\r\n")
            continue
        code = draw(_CODES)
        tokens = [code]
        data = None
        if code == b"VA":
            data = draw(st.sampled_from([b"", b"x", b"42", b"18446744073709551616", b"ab cd"]))
            tokens.append(b"%d" % len(data) if draw(st.integers(0, 9)) else b"3")
        if code != b"MN" or draw(st.integers(0, 5)) == 0:
            if draw(st.integers(0, 7)):
                tokens.append(b"O" + draw(st.sampled_from(opaques)))
            tokens += draw(st.lists(_FLAGS, max_size=4))
        line = b" ".join(tokens)
        if draw(st.integers(0, 15)) == 0:
            line = line.replace(b" ", b"  ", 1)
        replies.append(line + b"\r\n" + (b"" if data is None else data + b"\r\n"))
    # Mostly the answers in the order sent, with MN at the end.
    if draw(st.booleans()):
        ordered = []
        for entry in sent:
            if draw(st.booleans()):
                shape = draw(
                    st.sampled_from(
                        [
                            b"VA 2 O%s\r\n",
                            b"VA 2 O%s f1\r\n",
                            b"VA 2 f1 O%s\r\n",
                            b"VA 0 f0 O%s\r\n",
                            b"VA 2 f4294967296 O%s\r\n",
                        ]
                    )
                )
                ordered.append(
                    shape % entry[0] + (b"\r\n" if shape.startswith(b"VA 0") else b"hi\r\n")
                )
        replies = ordered + replies
    data = b"".join(replies)
    if draw(st.integers(0, 3)):
        data += b"MN\r\n"
    if draw(st.integers(0, 5)) == 0:
        data += draw(st.sampled_from([b"VA 1 O0\r\nx\r\n", b"junk", b"MN\r\n"]))
    if data and draw(st.integers(0, 4)) == 0:  # a random mutation
        at = draw(st.integers(0, len(data) - 1))
        data = (
            data[:at]
            + draw(st.sampled_from([b"", b" ", b"\r", b"\n", b"0", b"\xff"]))
            + data[at + 1 :]
        )
    cap = draw(st.sampled_from([None, None, 0, 1, 2, 20]))
    return sent, data, cap


@MANY
@given(pipelines(), st.integers(0, 1000))
def test_the_compiled_reader_and_the_pure_twin_agree_with_the_pure_loop(
    case: Any, seed: int
) -> None:
    sent, data, cap = case
    _same(sent, data, cap, seed)


@pytest.mark.parametrize("scan", SCANNERS)
@MANY
@given(
    st.one_of(st.binary(max_size=200), pipelines().map(lambda case: case[1])),
    st.integers(-1, 6),
    st.integers(0, 300),
)
def test_the_scanner_never_takes_what_the_pure_loop_would_not(
    scan: Any, data: bytes, last: int, pos: int
) -> None:
    """Any bytes, any start: what the scanner takes, the pure loop takes the same way."""
    sent: Sent = [(b"%x" % n, b"mg") for n in range(7)]
    pos = min(pos, len(data))
    results: Dict[bytes, Any] = {}
    end, need, got_last, done = scan(
        data, pos, None, [e[0] for e in sent], last, [(b"mg", None)] * 7, results, MetaResult
    )
    assert pos <= end <= len(data) and got_last >= last
    assert need == 0 or (need > len(data) - end and not done)
    # The pure loop over exactly the bytes taken gives the same results.
    expect = ExpectMetaQuiet(sent)
    expect._last = last
    reader = PyReader()
    saved = mr._scan_quiet
    mr._scan_quiet = None
    try:
        reader.feed(data[pos:end] + (b"" if done else b"MN\r\n"))
        assert expect.step(reader) is expect.results
    finally:
        mr._scan_quiet = saved
    assert reader.buffered == 0
    assert _describe(expect.results) == _describe(results)


# --------------------------------------------------------------------------- the encoder


def _reference(wires: Sequence[bytes], first: int) -> Tuple[bytes, List[bytes]]:
    opaques = [b"%x" % ((first + n) & OPAQUE_MASK) for n in range(len(wires))]
    lines = [
        encode_meta_get(w, return_client_flags=True, opaque=o, quiet=True)
        for w, o in zip(wires, opaques)
    ]
    return b"".join(lines) + encode_meta_noop(), opaques


_WIRE = st.binary(min_size=1, max_size=12).filter(lambda b: all(0x20 < c != 0x7F for c in b))


@MANY
@given(
    st.lists(_WIRE, max_size=20),
    st.sampled_from([0, 1, 255, OPAQUE_MASK - 3, OPAQUE_MASK, OPAQUE_MASK + 1, 2**40]),
)
def test_quiet_gets_encode_as_encode_meta_get(wires: List[bytes], first: int) -> None:
    assert encode_quiet_gets(wires, first) == _reference(wires, first)
    saved = mr._encode_quiet
    mr._encode_quiet = None
    try:
        assert encode_quiet_gets(wires, first) == _reference(wires, first)
    finally:
        mr._encode_quiet = saved


@pytest.mark.parametrize(
    "bad", [b"", b"a b", b"a\r\nmn", b"\x00", b"x" * 251, b"a\x7f", "text", bytearray(b"ab")]
)
def test_quiet_gets_refuse_what_encode_meta_get_refuses(bad: Any) -> None:
    with pytest.raises(MemcacheIllegalInputError) as reference:
        encode_meta_get(bad, opaque=b"1", quiet=True)
    for encoder in (mr._encode_quiet, None):
        saved = mr._encode_quiet
        mr._encode_quiet = encoder
        try:
            with pytest.raises(MemcacheIllegalInputError) as got:
                encode_quiet_gets([b"ok", bad], 1)
        finally:
            mr._encode_quiet = saved
        assert str(got.value) == str(reference.value)


def test_quiet_gets_take_a_base64_wire_as_plain_text_only() -> None:
    wire = base64.b64encode(b"a b")
    assert encode_quiet_gets([wire], 1)[0] == _reference([wire], 1)[0]  # (no b flag)


@compiled
def test_the_compiled_reader_and_encoder_leak_nothing() -> None:
    """Every path (taken replies of each kind, each reason to stop, the encoder's refusal)
    run many times: a leaked reference per call would grow the heap by megabytes."""
    opaques = [b"%x" % n for n in range(8)]
    sent = [(b"mg", None), (b"mg", b"foo"), (b"ms", None), (b"ma", None)] * 2
    pipelines = [
        b"VA 2 O0 f1 c2 t3 s4 l5 h1 W X Z\r\nab\r\nVA 1 O1 kfoo\r\nx\r\n"
        b"NS O2\r\nVA 2 O3\r\n42\r\nMN\r\n",
        b"VA 1 O1 kZm9v b\r\nx\r\nMN\r\n",  # a key that does not match
        b"VA 0 O0 Z\r\n\r\nHD O1 kbar\r\n",  # a placeholder; a key that does not match
        b"VA 2 O3\r\nab\r\n",  # ma: not a number
        b"VA 1 O9\r\nx\r\n",  # an opaque not sent
        b"SERVER_ERROR x\r\n",
        b"VA 9 O0\r\nx",  # incomplete
        b"VA 1 O0 c1 c2\r\nx\r\n",  # malformed
    ]
    scan: Any = SCAN

    def run() -> None:
        for _ in range(300):
            for data in pipelines:
                scan(data, 0, 1 << 30, opaques, -1, sent, {}, MetaResult)
            encode_quiet_gets([b"a", b"bb", b"ccc"], 7)
            try:
                encode_quiet_gets([b"a", b"b c"], 7)
            except MemcacheIllegalInputError:
                pass

    run()  # (warm-up)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, grown
