"""The compiled reader against the pure one: pure logic, no server.

``pymc/speedups.c`` compiles the value loop of :meth:`Reader.read_values` and the fast path
of :func:`validate_keys`; the pure-Python :class:`PyReader` and :func:`validate_keys_py` are
the reference. Hypothesis feeds both readers the same replies (valid, truncated, garbage,
keys not asked for, sizes of 18 digits and more, lines at the length limit) in the same
chunks, and every call must give the same result, or the same exception with the same
message, leave the same values found, and leave the same bytes behind (or the same poison).
Key validation is compared over every byte value and over random key lists.

The differential tests are skipped when the compiled module is not in use (not built, or
``PYMC_NO_EXTENSIONS=1``); the tests of the switch itself always run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pymc
from pymc import protocol
from pymc.protocol import (
    END,
    MAX_KEY_LENGTH,
    MAX_LINE_LENGTH,
    MAX_VALUE_BYTES,
    NEED_DATA,
    CReader,
    ErrorReply,
    PyReader,
    validate_keys_c,
    validate_keys_py,
)

compiled = pytest.mark.skipif(not protocol.SPEEDUPS, reason="the compiled reader is not in use")

Found = Dict[bytes, Tuple[int, bytes, Optional[bytes]]]
Trace = List[Tuple[Any, ...]]

SENTINEL = b"\x00<end of test stream>\x00"
WANTED_POOL = [b"a", b"k1", b"key:2", b"\xff\x01", b"x" * 250, b"k" * (MAX_LINE_LENGTH - 10)]
FEW = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
MANY = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


# --------------------------------------------------------------------------- the switch


def test_speedups_flag_is_the_protocol_choice() -> None:
    assert pymc.__speedups__ is protocol.SPEEDUPS
    assert protocol.Reader is (CReader if protocol.SPEEDUPS else PyReader)
    assert protocol.validate_keys is (validate_keys_c if protocol.SPEEDUPS else validate_keys_py)


def test_built_module_is_used_unless_disabled() -> None:
    """A compiled module next to the package is loaded (unless PYMC_NO_EXTENSIONS says no)."""
    package = Path(protocol.__file__).parent
    built = [p for s in EXTENSION_SUFFIXES for p in package.glob(f"speedups{s}")]
    disabled = os.environ.get("PYMC_NO_EXTENSIONS", "") not in ("", "0")
    if disabled:
        assert pymc.__speedups__ is False
    elif built:
        assert pymc.__speedups__ is True
    else:
        pytest.skip("the compiled module is not built here")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value", ["1", "yes"])
def test_no_extensions_forces_pure_python_at_run_time(value: str) -> None:
    env = {**os.environ, "PYMC_NO_EXTENSIONS": value}
    code = (
        "import sys, pymc, pymc.protocol as p; "
        "print(pymc.__speedups__, p.Reader.__name__, p.validate_keys.__name__, "
        "'pymc.protocol.speedups' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=50
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "PyReader", "validate_keys_py", "False"]


def test_compiled_helpers_refuse_use_without_the_module() -> None:
    if protocol.SPEEDUPS:
        pytest.skip("the compiled reader is in use")
    with pytest.raises(RuntimeError, match="not in use"):
        CReader().feed_values(b"END\r\n", (), {})


# --------------------------------------------------------------------------- the reader

_digits = st.text("0123456789", min_size=1, max_size=22).map(str.encode)
_flags = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda n: b"%d" % n),
    _digits,
    st.sampled_from([b"", b"-1", b"1x", b"\xd9\xa3", b"+1", b" 1"]),
)
_key = st.one_of(
    st.sampled_from(WANTED_POOL),
    st.binary(min_size=0, max_size=4).map(lambda b: b.replace(b" ", b"").replace(b"\r\n", b"")),
)


@st.composite
def _value(draw: st.DrawFn) -> bytes:
    key = draw(_key)
    data = draw(st.binary(max_size=40))
    size = draw(
        st.one_of(
            st.just(b"%d" % len(data)),
            st.just(b"%d" % len(data)),
            st.integers(0, 60).map(lambda n: b"%d" % n),
            st.just(b"0" * 5 + b"%d" % len(data)),  # leading zeros
            st.sampled_from(
                [b"9" * 17, b"9" * 18, b"1" + b"0" * 17, b"9" * 19, b"9" * 20, b"9" * 40, b"-1"]
            ),
            _digits,
        )
    )
    flags: bytes = draw(_flags)
    line = b"VALUE " + key + b" " + flags + b" " + size
    cas = draw(st.one_of(st.none(), _digits, st.sampled_from([b"", b"1a", b"9" * 21])))
    if cas is not None:
        line += b" " + cas
    if draw(st.integers(0, 9)) == 0:  # one field too many, or a double space
        line += draw(st.sampled_from([b" 1", b"  ", b" "]))
    tail = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"xx", b"\r", b""]))
    out: bytes = line + b"\r\n" + data + tail
    return out


_other = st.sampled_from(
    [
        b"END\r\n",
        b"END\r\n",
        b"END\n",
        b"EN",
        b"ERROR\r\n",
        b"CLIENT_ERROR bad data chunk\r\n",
        b"SERVER_ERROR out of memory storing object\r\n",
        b"ERROR Too many open connections\r\n",
        b"STORED\r\n",
        b"STAT pid 1\r\n",
        b"12\r\n",
        b"VALUE \r\n",
        b"VALUE\r\n",
        b"VALUE a 0\r\n",
        b"VALUE a 0 1 2 3\r\n",
        b"VALUE  0 1\r\nx\r\n",
        b"VALUE a b c\r\n",
        b"\r\n",
        b"garbage\r\n",
    ]
)


@st.composite
def _long_line(draw: st.DrawFn) -> bytes:
    # VALUE lines around MAX_LINE_LENGTH, with and without their CRLF in reach.
    n = MAX_LINE_LENGTH - 10 + draw(st.integers(-2, 2))  # b"VALUE " + key + b" 0 1" is n + 10
    return b"VALUE " + b"k" * n + b" 0 1\r\nz\r\n"


_segment = st.one_of(_value(), _value(), _value(), _other, _long_line(), st.binary(max_size=12))


def _container(keys: List[bytes], kind: str) -> Any:
    if kind == "dict":
        return dict.fromkeys(keys)
    return {"set": set, "frozenset": frozenset, "tuple": tuple}[kind](keys)


def _run(
    cls: type,
    chunks: Sequence[Union[bytes, bytearray]],
    wanted: Any,
    prefound: Found,
    max_block: Optional[int],
    mode: str,
) -> Tuple[Trace, Found]:
    """Feed ``chunks`` to a ``cls`` reader as a client would; record everything visible."""
    reader = cls(max_block=max_block)
    found: Found = dict(prefound)
    trace: Trace = []

    def call(what: str, fn: Callable[..., object], *args: object) -> object:
        try:
            result = fn(*args)
        except Exception as exc:
            trace.append((what, "raised", type(exc), str(exc), reader.broken))
            return exc
        trace.append((what, repr(result), reader.buffered, reader.broken, dict(found)))
        return result

    for chunk in chunks:
        if mode == "feed_values":
            status = call("feed_values", reader.feed_values, chunk, wanted, found)
        else:
            if isinstance(call("feed", reader.feed, chunk), Exception):
                continue
            status = call("read_values", reader.read_values, wanted, found)
        # A finished answer with bytes left over: read them as the next pass would.
        for _ in range(20):
            if not (status is END or type(status) is ErrorReply) or not reader.buffered:
                break
            status = call("again", reader.read_values, wanted, found)
    # Whatever is left: the same bytes, or the same poison.
    call("next_reply", reader.next_reply)
    call("feed", reader.feed, SENTINEL)
    call("read_until", reader.read_until, SENTINEL)
    return trace, found


@st.composite
def _chunks(draw: st.DrawFn, stream: bytes) -> List[Union[bytes, bytearray]]:
    how = draw(st.sampled_from(["whole", "bytewise", "cuts", "cuts"]))
    if how == "whole" or not stream:
        chunks: List[Union[bytes, bytearray]] = [stream]
    elif how == "bytewise" and len(stream) < 400:
        chunks = [stream[i : i + 1] for i in range(len(stream))]
    else:
        cuts = draw(st.lists(st.integers(0, len(stream)), max_size=12))
        bounds = [0, *sorted(set(cuts)), len(stream)]
        chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    if chunks and draw(st.integers(0, 19)) == 0:  # a bytearray now and then
        i = draw(st.integers(0, len(chunks) - 1))
        chunks[i] = bytearray(chunks[i])
    return chunks


def _assert_same(
    stream: bytes,
    chunks: Sequence[Union[bytes, bytearray]],
    wanted: Any,
    prefound: Found,
    max_block: Optional[int],
    mode: str,
) -> None:
    expected = _run(PyReader, chunks, wanted, prefound, max_block, mode)
    got = _run(CReader, chunks, wanted, prefound, max_block, mode)
    assert got == expected, (stream[:500], [len(c) for c in chunks])


@compiled
@MANY
@given(
    segments=st.lists(_segment, max_size=8),
    wanted_keys=st.lists(st.sampled_from(WANTED_POOL), max_size=6),
    kind=st.sampled_from(["set", "frozenset", "tuple", "dict"]),
    answered=st.sampled_from([None, b"a", b"k1"]),
    max_block=st.sampled_from([None, None, 0, 5, 40, 2**70, MAX_VALUE_BYTES]),
    mode=st.sampled_from(["feed_values", "feed+read"]),
    data=st.data(),
)
def test_compiled_reader_matches_pure_reader(
    segments: List[bytes],
    wanted_keys: List[bytes],
    kind: str,
    answered: Optional[bytes],
    max_block: Optional[int],
    mode: str,
    data: st.DataObject,
) -> None:
    stream = b"".join(segments)
    chunks = data.draw(_chunks(stream))
    prefound: Found = {} if answered is None else {answered: (0, b"earlier", None)}
    _assert_same(stream, chunks, _container(wanted_keys, kind), prefound, max_block, mode)


@compiled
@MANY
@given(
    values=st.lists(st.tuples(st.sampled_from(WANTED_POOL), st.binary(max_size=300)), max_size=6),
    flags=st.integers(0, 2**32 - 1),
    cas=st.one_of(st.none(), st.integers(0, 2**64 - 1)),
    cut=st.sampled_from(["end", "truncated", "error"]),
    data=st.data(),
)
def test_compiled_reader_matches_on_well_formed_answers(
    values: List[Tuple[bytes, bytes]],
    flags: int,
    cas: Optional[int],
    cut: str,
    data: st.DataObject,
) -> None:
    """Mostly-valid answers, as a server sends them, whole or cut anywhere."""
    stream = b""
    seen = set()
    for key, value in values:
        if key in seen:
            continue
        seen.add(key)
        stream += b"VALUE %s %d %d" % (key, flags, len(value))
        stream += b"" if cas is None else b" %d" % cas
        stream += b"\r\n" + value + b"\r\n"
    stream += b"SERVER_ERROR object too large for cache\r\n" if cut == "error" else b"END\r\n"
    if cut == "truncated":
        stream = stream[: data.draw(st.integers(0, len(stream)))]
    chunks = data.draw(_chunks(stream))
    _assert_same(stream, chunks, set(WANTED_POOL), {}, None, "feed_values")


@compiled
@pytest.mark.parametrize(
    "stream",
    [
        b"VALUE a 0 " + b"9" * 18 + b"\r\nabc",  # waits for a block of 10**18 bytes
        b"VALUE a 0 " + b"9" * 19 + b"\r\nabc",  # 19 digits: malformed
        b"VALUE a 0 %d\r\nabc" % MAX_VALUE_BYTES,  # at the default cap: waits
        b"VALUE a 0 %d\r\nabc" % (MAX_VALUE_BYTES + 1),  # over it: refused at once
        b"VALUE a 0 -1\r\nabc\r\nEND\r\n",  # negative: malformed
        b"VALUE a 0 1x\r\nabc\r\nEND\r\n",  # not a number: malformed
        b"VALUE a 4294967296 " + b"1" * 18 + b"\r\n",
        b"VALUE a 99999999999 1\r\nx\r\nEND\r\n",  # 11-digit flags: malformed
        b"VALUE a 9999999999 1 " + b"9" * 20 + b"\r\nx\r\nEND\r\n",  # the widest that parse
        b"VALUE a 0 1 " + b"9" * 21 + b"\r\nx\r\nEND\r\n",
        b"VALUE a 0 3\r\nab\r\nEND\r\n",  # the block is not followed by CRLF
        b"VALUE b 0 1\r\nx\r\nEND\r\n",  # not asked for
        b"VALUE a 0 1\r\nx\r\nVALUE a 0 1\r\nx\r\nEND\r\n",  # answered twice
        b"VALUE a 0 1\r\nx\r\nSTORED\r\n",
        b"VALUE a 0 1\r\nx\r\n" + b"VALUE " + b"k" * 9000,
    ],
)
@pytest.mark.parametrize("max_block", [None, 0, 10**18, 2**64, MAX_VALUE_BYTES])
def test_compiled_reader_matches_on_edge_cases(stream: bytes, max_block: Optional[int]) -> None:
    for chunks in (
        [stream],
        [stream[:7], stream[7:]],
        [stream[i : i + 1] for i in range(len(stream))],
    ):
        for mode in ("feed_values", "feed+read"):
            _assert_same(stream, chunks, {b"a"}, {}, max_block, mode)


@compiled
def test_compiled_reader_waits_for_a_huge_block_without_reading_past_the_buffer() -> None:
    reader = CReader(max_block=None)
    found: Found = {}
    size = 10**18 - 1
    assert reader.feed_values(b"VALUE a 0 %d\r\nabc" % size, {b"a"}, found) is NEED_DATA
    assert reader.feed_values(b"more", {b"a"}, found) is NEED_DATA  # no look before it is all
    assert reader.buffered == len(b"VALUE a 0 %d\r\nabcmore" % size)
    assert found == {} and not reader.broken


# --------------------------------------------------------------------------- key validation


def _outcome(fn: Callable[..., Dict[bytes, Any]], *args: Any) -> Tuple[Any, ...]:
    try:
        out = fn(*args)
    except Exception as exc:
        return ("raised", type(exc), str(exc))
    return ("ok", list(out.items()), [(type(k), type(v)) for k, v in out.items()])


def _same_keys(keys: Any, prefix: Any = b"", allow_unicode: bool = False) -> None:
    expected = _outcome(validate_keys_py, keys, prefix, allow_unicode)
    assert _outcome(validate_keys_c, keys, prefix, allow_unicode) == expected, (keys, prefix)


@compiled
@pytest.mark.parametrize("prefix", [b"", b"p:", b"p q", b"\x7f", b"x" * 249, b"x" * 250])
@pytest.mark.parametrize("allow_unicode", [False, True])
def test_validate_keys_matches_over_every_byte_value(prefix: bytes, allow_unicode: bool) -> None:
    for byte in range(256):
        one = bytes([byte])
        char = chr(byte)
        for keys in (
            [one],
            [b"a" + one + b"z"],
            [b"ok", one],
            [char],
            ["a" + char + "z"],
            ("ok", char, b"ok"),
            [one * MAX_KEY_LENGTH],
            [char * (MAX_KEY_LENGTH - len(prefix))],
            [char * (MAX_KEY_LENGTH - len(prefix) + 1)],
        ):
            _same_keys(keys, prefix, allow_unicode)


class _BytesKey(bytes):
    pass


class _StrKey(str):
    pass


_any_key = st.one_of(
    st.text(max_size=8),
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=8),
    st.binary(max_size=8),
    st.sampled_from(["", b"", "k" * 250, b"k" * 251, "é", "\ud800", 7, None, 1.5]),
    st.binary(max_size=4).map(_BytesKey),
    st.text(max_size=4).map(_StrKey),
)


@compiled
@MANY
@given(
    keys=st.lists(_any_key, max_size=8),
    prefix=st.one_of(st.binary(max_size=6), st.sampled_from([b"x" * 250, b"x" * 251])),
    allow_unicode=st.booleans(),
    container=st.sampled_from([list, tuple, iter]),
)
def test_validate_keys_matches_on_random_key_lists(
    keys: List[Any], prefix: bytes, allow_unicode: bool, container: Callable[..., Any]
) -> None:
    expected = _outcome(validate_keys_py, container(keys), prefix, allow_unicode)
    got = _outcome(validate_keys_c, container(keys), prefix, allow_unicode)
    assert got == expected


@compiled
@pytest.mark.parametrize("prefix", ["p:", bytearray(b"p:"), _BytesKey(b"p:")])
def test_validate_keys_matches_with_an_odd_prefix(prefix: Any) -> None:
    _same_keys(["a", b"b"], prefix)
    _same_keys([], prefix)


# --------------------------------------------------------------------------- the build


@compiled
@pytest.mark.parametrize("size", [b"9" * 18, b"%d" % (MAX_VALUE_BYTES + 1)])
def test_both_readers_refuse_a_huge_declared_length_by_default(size: bytes) -> None:
    """A reader made without arguments caps a block at MAX_VALUE_BYTES: both readers refuse
    a larger declared length at the header, with the same error."""
    stream = b"VALUE a 0 " + size + b"\r\nabc"
    outcomes = []
    for cls in (PyReader, CReader):
        reader = cls()
        with pytest.raises(pymc.MemcacheProtocolError) as info:
            reader.feed_values(stream, {b"a"}, {})
        outcomes.append((str(info.value), reader.broken))
    assert outcomes[0] == outcomes[1]
    assert f"larger than the {MAX_VALUE_BYTES} bytes allowed" in outcomes[0][0]
