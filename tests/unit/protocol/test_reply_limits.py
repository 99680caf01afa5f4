"""The readers' value-size cap (max_value_size), without a server."""

from __future__ import annotations

from typing import Any, Dict, Type

import pytest

from pymc import MemcacheProtocolError, protocol
from pymc.protocol import MAX_VALUE_BYTES, NEED_DATA, CReader, PyReader

HUGE = b"999999999999999999"  # 18 digits: the widest size the text reader parses


READERS = [
    PyReader,
    pytest.param(
        CReader,
        marks=pytest.mark.skipif(not protocol.SPEEDUPS, reason="the compiled reader is not in use"),
    ),
]


@pytest.mark.parametrize("cls", READERS)
@pytest.mark.parametrize("size", [HUGE, b"%d" % (MAX_VALUE_BYTES + 1)])
def test_reader_refuses_a_value_over_the_cap_at_the_header(
    cls: Type[PyReader], size: bytes
) -> None:
    reader = cls()
    found: Dict[bytes, Any] = {}
    with pytest.raises(MemcacheProtocolError, match=f"larger than the {MAX_VALUE_BYTES} bytes"):
        reader.feed_values(b"VALUE k 0 " + size + b"\r\nabc", {b"k"}, found)
    assert reader.broken and found == {}


@pytest.mark.parametrize("cls", READERS)
def test_reader_waits_for_a_value_at_the_cap(cls: Type[PyReader]) -> None:
    reader = cls()
    assert reader.feed_values(b"VALUE k 0 %d\r\nab" % MAX_VALUE_BYTES, {b"k"}, {}) is NEED_DATA
    assert not reader.broken


@pytest.mark.parametrize("cls", READERS)
@pytest.mark.parametrize("size", [b"-1", b"-0", b"x", b"1e3", b"0x10", b"+3", b""])
def test_reader_refuses_a_negative_or_non_numeric_size(cls: Type[PyReader], size: bytes) -> None:
    reader = cls()
    with pytest.raises(MemcacheProtocolError, match="malformed VALUE line"):
        reader.feed_values(b"VALUE k 0 " + size + b"\r\nabc\r\nEND\r\n", {b"k"}, {})
    assert reader.broken


@pytest.mark.parametrize("size", [HUGE, b"%d" % (MAX_VALUE_BYTES + 1)])
def test_meta_reader_refuses_a_va_over_the_cap(size: bytes) -> None:
    from pymc.meta import ExpectMeta

    reader = protocol.Reader()
    reader.feed(b"VA " + size + b" f0 Oa1\r\nabc")
    with pytest.raises(MemcacheProtocolError, match=f"more than the {MAX_VALUE_BYTES} allowed"):
        ExpectMeta(opaque=b"a1", command=b"mg").step(reader)
    assert reader.broken


@pytest.mark.parametrize("size", [b"-1", b"x", b"3x", b""])
def test_meta_reader_refuses_a_negative_or_non_numeric_va(size: bytes) -> None:
    from pymc.meta import ExpectMeta

    reader = protocol.Reader()
    reader.feed(b"VA " + size + b" f0 Oa1\r\nabc\r\n")
    with pytest.raises(MemcacheProtocolError, match="malformed VA line"):
        ExpectMeta(opaque=b"a1", command=b"mg").step(reader)


def test_explicit_none_still_means_no_cap() -> None:
    reader = protocol.Reader(max_block=None)
    assert reader.feed_values(b"VALUE k 0 " + HUGE + b"\r\nab", {b"k"}, {}) is NEED_DATA
