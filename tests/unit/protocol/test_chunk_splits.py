"""Every reply split into two chunks at every point parses the same (sans-IO)."""

from __future__ import annotations

from typing import Any, Callable, List, Tuple

import pytest

from pymc.protocol import (
    NEED_DATA,
    RULES,
    ExpectConfig,
    ExpectRaw,
    ExpectReplies,
    ExpectStats,
    ExpectSync,
    ExpectValues,
    Reader,
)

_CASES: List[Tuple[str, bytes, Callable[[], Any], Any]] = [
    (
        "get",
        b"VALUE k 5 3\r\nabc\r\nVALUE k2 0 7\r\n\r\nEND\r\n\r\nEND\r\n",
        lambda: ExpectValues({b"k", b"k2"}),
        {b"k": (5, b"abc", None), b"k2": (0, b"\r\nEND\r\n", None)},
    ),
    (
        "gets",
        b"VALUE k 0 4 99\r\nMN\r\n\r\nEND\r\n",
        lambda: ExpectValues({b"k"}, cas=True),
        {b"k": (0, b"MN\r\n", b"99")},
    ),
    ("miss", b"END\r\n", lambda: ExpectValues({b"k"}), {}),
    ("set", b"STORED\r\nNOT_STORED\r\n", lambda: ExpectReplies(RULES["set"], 2), None),
    ("incr", b"42\r\n", lambda: ExpectReplies(RULES["incr"]), [42]),
    ("stats", b"STAT pid 1\r\nSTAT x y z\r\nEND\r\n", ExpectStats, {b"pid": b"1", b"x": b"y z"}),
    ("raw", b"VALUE a\r\nEND\r\n", lambda: ExpectRaw(b"END\r\n"), b"VALUE a\r\n"),
    ("sync-version", b"CLIENT_ERROR x\r\nVERSION 1.6.9\r\n", ExpectSync, None),
    (
        "config",
        b"CONFIG cluster 0 19\r\n7\nh|10.0.0.1|11211\n\r\nEND\r\n",
        ExpectConfig,
        None,
    ),
]


def _drive(reply: bytes, cuts: List[int], factory: Callable[[], Any]) -> Any:
    reader = Reader()
    expect = factory()
    result: Any = NEED_DATA
    start = 0
    for stop in [*cuts, len(reply)]:
        if stop > start:
            reader.feed(reply[start:stop])
        start = stop
        result = expect.step(reader)
    assert reader.buffered == 0, (cuts, reader.buffered)
    return result


@pytest.mark.parametrize("name,reply,factory,want", _CASES, ids=[c[0] for c in _CASES])
def test_every_two_chunk_split_parses_the_same(
    name: str, reply: bytes, factory: Callable[[], Any], want: Any
) -> None:
    whole = _drive(reply, [], factory)
    if want is not None:
        assert whole == want
    for cut in range(1, len(reply)):
        assert _drive(reply, [cut], factory) == whole, cut
    assert _drive(reply, list(range(1, len(reply))), factory) == whole
    for a in range(1, len(reply)):
        for b in range(a + 1, len(reply)):
            assert _drive(reply, [a, b], factory) == whole, (a, b)
