"""The compiled meta reply-line parser against the pure one: pure logic, no server.

``pymc/speedups.c``'s ``parse_meta_head`` is the twin of :func:`pymc.metareplies._parse_head`; the
pure function (kept as ``_parse_head_py``) is the reference. Hypothesis feeds both the same
lines (valid ones with every flag, duplicates, empty tokens, numbers at the 2**32 and 2**64
edges and of 20 and 21 digits, odd ttls, bad base64 keys, unknown flags, MN with flags,
non-ASCII bytes, and random mutations of all of these), and both must give the same code,
size and fields (the same values of the same types, in the same order), or the same
exception with the same message and the reader poisoned the same way.

These tests reach the meta module's private parser on purpose: it has no public entry that
takes a bare line. They are skipped when the compiled module is not in use.
"""

from __future__ import annotations

import base64
import gc
import tracemalloc
from typing import Any, Callable, List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymc import protocol
from pymc.exceptions import MemcacheProtocolError
from pymc.protocol import PyReader, metareplies

SPEEDUPS_META = protocol.SPEEDUPS and metareplies._parse_head is not metareplies._parse_head_py
compiled = pytest.mark.skipif(not SPEEDUPS_META, reason="the compiled meta parser is not in use")
MANY = settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))

Outcome = Tuple[Any, ...]


def _outcome(parse: Callable[..., Any], line: bytes) -> Outcome:
    reader = PyReader()
    reader.feed(b"more\r\n")
    try:
        head = parse(reader, line)
    except Exception as exc:
        try:
            reader.next_line()
        except Exception as later:
            after: Outcome = (type(later), str(later))
        else:  # pragma: no cover - the pure parser always poisons
            after = ("not poisoned",)
        return ("error", type(exc), str(exc), reader.broken, after)
    items = list(head.fields.items())
    return (
        "ok",
        type(head).__name__,
        type(head.code),
        head.code,
        type(head.size),
        head.size,
        [(k, type(k), type(v), v) for k, v in items],
        reader.next_line(),
    )


def _same(line: bytes) -> Outcome:
    pure = _outcome(metareplies._parse_head_py, line)
    fast = _outcome(metareplies._parse_head, line)
    assert fast == pure, line
    return pure


# --------------------------------------------------------------------------- the choice


def test_compiled_parser_is_chosen_with_the_compiled_reader() -> None:
    if protocol.SPEEDUPS:
        assert metareplies._parse_head is not metareplies._parse_head_py
    else:
        assert metareplies._parse_head is metareplies._parse_head_py


# --------------------------------------------------------------------------- edge cases

EDGE_NUMBERS = [
    b"0",
    b"00",
    b"1",
    b"4294967295",
    b"4294967296",
    b"04294967295",
    b"18446744073709551615",
    b"18446744073709551616",
    b"99999999999999999999",
    b"00000000000000000001",
    b"000000000000000000001",
    b"100000000000000000000",
    b"9223372036854775807",
    b"9223372036854775808",
    b"999999999999999999",
    b"1000000000000000000",
    b"",
    b"-1",
    b"+1",
    b"1a",
    b" 1",
    b"\xd9\xa1",  # an Arabic-Indic digit: no ASCII digit
    b"\xb2",
]
EDGE_TTLS = [
    b"-1",
    b"-0",
    b"-2",
    b"-00000000001",
    b"-000000000001",
    b"-99999999999",
    b"99999999999",
    b"999999999999",
    b"00000000000",
    b"0",
    b"",
    b"-",
    b"--1",
    b"1-",
    b"+5",
    b"2147483648",
]
EDGE_KEYS_B64 = [
    b"",
    b"=",
    b"==",
    b"===",
    b"====",
    b"A",
    b"AA",
    b"AAA",
    b"AAAA",
    b"AA==",
    b"AB==",
    b"AAA=",
    b"AAB=",
    b"A===",
    b"AA=A",
    b"A=AA",
    b"YWJj",
    b"YWJjZA==",
    b"YWJjZGU=",
    b"YWJjZGU=YWJj",
    b"YW Jj",
    b"YW-j",
    b"YW_j",
    b"YW\xffj",
    b"+/+/",
    b"////////",
    b"AAAAA===",
]

EDGE_LINES = [
    b"",
    b" ",
    b"  ",
    b"VA",
    b"VA ",
    b"VA  ",
    b"VA 1",
    b"VA 1 ",
    b"VA -1",
    b"VA 1x",
    b"VA x",
    b"VA 1 c1 c2",
    b"VA 99999999999999999999",
    b"VA 100000000000000000000",
    b"VA 18446744073709551616 s1",
    b"va 1",
    b"VAL 1",
    b"V",
    b"HD",
    b"HD ",
    b"HD  c1",
    b"HD c1 ",
    b"HD\x00",
    b"HD\r",
    b"OK",
    b"OK c1",
    b"OK MN",
    b"ok",
    b"MN",
    b"MN ",
    b"MN c1",
    b"MN zz",
    b"MN c1 c1",
    b"MN k",
    b"MN 1",
    b"EN",
    b"NS",
    b"EX",
    b"NF",
    b"EN c1 f2 s3 l4 t5 W X Z h0 Oop kkey",
    b"HD b",
    b"HD b b",
    b"HD k kx",
    b"HD kx b",
    b"HD b kx",
    b"HD k",
    b"HD k b",
    b"HD b k",
    b"HD Oabc",
    b"HD O",
    b"HD O\xff\x00",
    b"HD W1",
    b"HD X ",
    b"HD Z Z",
    b"HD h",
    b"HD h2",
    b"HD h01",
    b"HD h0 h1",
    b"HD \xff",
    b"HD \xffc1",
    b"HD C1",
    b"HD cc",
    b"HD zzz yyy",
    b"HD ERROR",
    b"ERROR",
    b"CLIENT_ERROR bad",
    b"VA 5 c1 f2 s5 l0 t-1 W X Z h1 Oop kkey",
    b"VA 5 kYWJj b c18446744073709551615 f4294967295 s0 t99999999999",
    b"HD " + b"c1 " * 3000,
    b"HD z" * 2000,
    b"VA 1 " + b"\xff" * 400,
    b"\xff" * 400,
]
for _n in EDGE_NUMBERS:
    EDGE_LINES += [b"VA " + _n] + [b"HD " + f + _n for f in (b"c", b"f", b"s", b"l")]
for _t in EDGE_TTLS:
    EDGE_LINES.append(b"HD t" + _t)
for _k in EDGE_KEYS_B64:
    EDGE_LINES += [b"HD b k" + _k, b"HD k" + _k + b" b", b"EN k" + _k]


@compiled
@pytest.mark.parametrize("line", EDGE_LINES)
def test_compiled_meta_parser_matches_on_edge_cases(line: bytes) -> None:
    _same(line)


@compiled
def test_compiled_meta_parser_results_on_a_hit() -> None:
    """Not only equal to the pure parser: the values a hit reply is known to give."""
    head = metareplies._parse_head(PyReader(), b"VA 5 c7 f4294967295 s5 t-1 h1 W Oop kYWJj b zz")
    assert (head.code, head.size) == (b"VA", 5)
    assert head.fields == {
        "c": 7,
        "f": 4294967295,
        "s": 5,
        "t": -1,
        "h": True,
        "W": True,
        "O": b"op",
        "k": b"abc",
        "b": True,
    }
    assert metareplies._parse_head(PyReader(), b"OK").code == b"HD"


# --------------------------------------------------------------------------- hypothesis

_DIGITS = st.text("0123456789", min_size=1, max_size=22).map(str.encode)
_NUMBER = st.one_of(
    st.sampled_from(EDGE_NUMBERS),
    _DIGITS,
    st.integers(0, 2**70).map(lambda n: str(n).encode()),
)
_B64 = st.one_of(
    st.sampled_from(EDGE_KEYS_B64),
    st.binary(max_size=40).map(base64.b64encode),
    st.text("ABCxyz019+/=", max_size=12).map(str.encode),
    st.tuples(st.text("Az9+/", min_size=1, max_size=9), st.integers(0, 3)).map(
        lambda t: t[0].encode() + b"=" * t[1]
    ),
)
_JUNK = st.binary(max_size=6).filter(lambda b: b" " not in b)


@st.composite
def _token(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["cfsl", "t", "WXZb", "h", "Ok", "unknown", "empty", "junk"]))
    if kind in ("c", "f", "s", "l"):
        return draw(st.sampled_from("cfsl")).encode() + draw(st.one_of(_NUMBER, _JUNK))
    if kind == "t":
        return b"t" + draw(st.one_of(st.sampled_from(EDGE_TTLS), _NUMBER, _JUNK))
    if kind == "WXZb":
        return draw(st.sampled_from("WXZb")).encode() + draw(
            st.sampled_from([b"", b"", b"", b"1", b"x"])
        )
    if kind == "h":
        return b"h" + draw(st.sampled_from([b"0", b"1", b"", b"2", b"00", b"10"]))
    if kind == "Ok":
        return draw(st.sampled_from("Ok")).encode() + draw(st.one_of(_B64, _JUNK))
    if kind == "unknown":
        first = draw(st.sampled_from(b"aAzCEFNqT\x00\x7f\x80\xff=+-1"))
        return bytes([first]) + draw(_JUNK)
    if kind == "empty":
        return b""
    return draw(_JUNK)


@st.composite
def _line(draw: st.DrawFn) -> bytes:
    code = draw(
        st.sampled_from(
            [b"VA", b"HD", b"EN", b"NS", b"EX", b"NF", b"MN", b"OK", b"", b"XX", b"V", b"\xff"]
        )
    )
    parts = [code]
    if code == b"VA" and draw(st.integers(0, 9)):
        parts.append(draw(st.one_of(_NUMBER, _JUNK)))
    parts += draw(st.lists(_token(), max_size=10))
    return b" ".join(parts)


def _around(*edges: int) -> st.SearchStrategy[bytes]:
    """Numbers at and next to ``edges``, as digits (a leading zero now and then)."""
    near = st.sampled_from(edges).flatmap(lambda e: st.integers(max(e - 2, 0), e + 2))
    return st.tuples(near, st.sampled_from([b"", b"", b"", b"0"])).map(
        lambda t: t[1] + str(t[0]).encode()
    )


_NEAR_LIMITS = _around(0, 2**32, 2**63, 2**64, 10**18, 10**19, 10**20)
# One strategy per flag, mostly valid: a line made of them fails (if at all) at an edge.
_VALID_ARG = {
    "c": _NEAR_LIMITS,
    "f": _NEAR_LIMITS,
    "s": _NEAR_LIMITS,
    "l": _NEAR_LIMITS,
    "t": st.one_of(
        _around(0, 10**11, 2**31),
        _around(0, 2, 10**10).map(lambda b: b"-" + b),
        st.sampled_from([b"-0", b"-1", b"-00000000001", b"-000000000001"]),
    ),
    "W": st.just(b""),
    "X": st.just(b""),
    "Z": st.just(b""),
    "b": st.just(b""),
    "h": st.sampled_from([b"0", b"1"]),
    "O": st.binary(min_size=1, max_size=8).filter(lambda b: b" " not in b),
    "k": st.one_of(_B64, st.binary(min_size=1, max_size=8).filter(lambda b: b" " not in b)),
}


@st.composite
def _edge_line(draw: st.DrawFn) -> bytes:
    """A line of distinct flags, each valid or next to a limit of what is valid."""
    code = draw(st.sampled_from([b"VA", b"HD", b"EN", b"NS", b"EX", b"NF", b"OK", b"MN"]))
    parts = [code]
    if code == b"VA":
        parts.append(draw(_NEAR_LIMITS))
    if code != b"MN" or draw(st.integers(0, 3)) == 0:
        flags = draw(st.permutations(list(_VALID_ARG)))[: draw(st.integers(0, 12))]
        parts += [flag.encode() + draw(_VALID_ARG[flag]) for flag in flags]
    return b" ".join(parts)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    line = bytearray(draw(_line() | _edge_line()))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(line)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        byte = draw(st.sampled_from(b" 09-=AbkcOhW\x00\xff\r\n") | st.integers(0, 255))
        if op == "insert":
            line.insert(at, byte)
        elif line and at < len(line):
            if op == "delete":
                del line[at]
            else:
                line[at] = byte
    return bytes(line)


@compiled
@MANY
@given(line=_line())
def test_compiled_meta_parser_matches_on_generated_lines(line: bytes) -> None:
    _same(line)


@compiled
@MANY
@given(line=_edge_line())
def test_compiled_meta_parser_matches_at_the_limits(line: bytes) -> None:
    _same(line)


@compiled
@MANY
@given(line=_mutated())
def test_compiled_meta_parser_matches_on_mutated_lines(line: bytes) -> None:
    _same(line)


@compiled
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(line=st.binary(max_size=60))
def test_compiled_meta_parser_matches_on_random_bytes(line: bytes) -> None:
    _same(line)


# --------------------------------------------------------------------------- the edges of C


@compiled
def test_compiled_meta_parser_refuses_what_is_not_bytes() -> None:
    from pymc.protocol import speedups

    with pytest.raises(TypeError):
        speedups.parse_meta_head(bytearray(b"HD"), metareplies._Head)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        speedups.parse_meta_head(b"HD")  # type: ignore[call-arg]


@compiled
def test_compiled_meta_parser_passes_on_an_error_of_make() -> None:
    from pymc.protocol import speedups

    def make(*args: object) -> object:
        raise KeyError("from make")

    with pytest.raises(KeyError, match="from make"):
        speedups.parse_meta_head(b"VA 1 c1", make)
    # A malformed line never reaches make.
    assert speedups.parse_meta_head(b"VA x", make) == "malformed VA line b'VA x'"


@compiled
@pytest.mark.timeout(60)
def test_compiled_meta_parser_leaks_nothing() -> None:
    """Every path (each result and each failure) run many times holds no memory after."""
    lines: List[bytes] = [
        b"VA 5 c1 f2 s5 l99999999999999999999 t-1 W X Z h1 Oop kYWJj b zz",
        b"VA 99999999999999999999",
        b"HD kkey Oop",
        *[line for line in EDGE_LINES if len(line) < 200],
    ]

    def run() -> None:
        for _ in range(200):
            for line in lines:
                try:
                    metareplies._parse_head(PyReader(), line)
                except MemcacheProtocolError:
                    pass

    run()  # (warm-up: caches, interned strings)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run()
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 200 rounds of ~300 lines: a leak of one object per call would be megabytes.
    assert grown < 64 * 1024, grown
