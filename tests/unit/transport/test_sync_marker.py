"""The sync marker's reader (``ExpectSync``), sans I/O: which line answers the marker.

memcached (and mcrouter, which answers ``version`` itself) sends noreply commands' error
lines, then ``VERSION``. twemproxy sends no such lines, but answers the marker itself with
``SERVER_ERROR`` when the backend it relays ``version`` to is down.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import pytest

from pymc.protocol import (
    NEED_DATA,
    RULES,
    STORED,
    ErrorReply,
    ExpectReplies,
    ExpectSync,
    ExpectValues,
    Reader,
    Version,
)

V = b"VERSION 1.6.18\r\n"
REFUSED = b"SERVER_ERROR Connection refused\r\n"


def run(
    stream: bytes, follows: bool = True, cuts: Optional[List[int]] = None
) -> Tuple[object, ExpectSync, Reader]:
    """Feed ``stream`` (in pieces cut at ``cuts``) until the marker is answered, then the
    rest of it."""
    reader = Reader()
    sync = ExpectSync(follows)
    points = [0, *(cuts or []), len(stream)]
    result: object = NEED_DATA
    for a, b in zip(points, points[1:]):
        reader.feed(stream[a:b])
        if result is NEED_DATA:
            result = sync.step(reader)
    return result, sync, reader


def every_split(stream: bytes) -> List[List[int]]:
    return [[]] + [[n] for n in range(1, len(stream))]


STRAYS = b"ERROR\r\nSERVER_ERROR x\r\n"


@pytest.mark.parametrize("cuts", every_split(STRAYS + V + b"STORED\r\n"))
def test_noreply_errors_then_version(cuts: List[int]) -> None:
    result, sync, reader = run(STRAYS + V + b"STORED\r\n", cuts=cuts)
    if cuts == [len(STRAYS)]:
        # Two error lines and nothing else yet: whether VERSION is still to come cannot
        # be told, so no guess: the second is taken, and the caller closes the connection.
        assert result == ErrorReply(b"ERROR", "") and sync.unsure
        assert sync.taken == ErrorReply(b"SERVER_ERROR", "x")
        return
    assert result == Version(b"1.6.18")
    assert [e.kind for e in sync.errors] == [b"ERROR", b"SERVER_ERROR"]
    assert not sync.unsure
    assert ExpectReplies(RULES["set"]).step(reader) == [STORED]


@pytest.mark.parametrize("cuts", every_split(REFUSED + b"STORED\r\n"))
def test_a_refused_marker_then_the_next_reply(cuts: List[int]) -> None:
    """twemproxy: the marker's own error, then the next request's reply (left unread)."""
    result, sync, reader = run(REFUSED + b"STORED\r\n", cuts=cuts)
    assert result == ErrorReply(b"SERVER_ERROR", "Connection refused")
    assert sync.errors == [] and not sync.unsure
    assert ExpectReplies(RULES["set"]).step(reader) == [STORED]


def test_a_refused_marker_then_a_value() -> None:
    """The next reply is a value whose data holds what looks like error lines and a line
    longer than any reply line: never read as lines."""
    data = b"ERROR\r\nVERSION 9\r\n" + b"x" * 20000
    stream = REFUSED + b"VALUE k 0 %d\r\n%s\r\nEND\r\n" % (len(data), data)
    result, sync, reader = run(stream)
    assert type(result) is ErrorReply and not sync.unsure
    assert ExpectValues((b"k",)).step(reader) == {b"k": (0, data, None)}


def test_two_errors_and_nothing_more_is_unsure() -> None:
    """Marker and next request both refused (every backend down), or two noreply errors
    with VERSION still to come: no waiting; the second line is taken as the request's."""
    result, sync, reader = run(REFUSED + REFUSED)
    assert result == ErrorReply(b"SERVER_ERROR", "Connection refused")
    assert sync.unsure and sync.taken == ErrorReply(b"SERVER_ERROR", "Connection refused")
    assert reader.buffered == 0


def test_two_errors_then_a_reply_the_first_is_the_markers() -> None:
    result, sync, reader = run(REFUSED + b"SERVER_ERROR too large\r\nSTORED\r\n")
    assert result == ErrorReply(b"SERVER_ERROR", "Connection refused")
    assert not sync.unsure and sync.errors == []
    replies = ExpectReplies(RULES["set"], 2).step(reader)
    assert replies == [ErrorReply(b"SERVER_ERROR", "too large"), STORED]


def test_two_errors_waits_for_a_partial_line() -> None:
    result, sync, reader = run(b"ERROR\r\nERROR\r\nVERS")
    assert result is NEED_DATA
    reader.feed(b"ION 1.6.18\r\n")
    assert sync.step(reader) == Version(b"1.6.18")
    assert len(sync.errors) == 2


def test_one_error_waits_for_what_follows() -> None:
    """One error line alone could be a noreply command's (VERSION to come) or the marker's
    (the next reply to come): something always follows it, so it waits."""
    result, sync, reader = run(b"ERROR\r\n")
    assert result is NEED_DATA
    reader.feed(V)
    assert sync.step(reader) == Version(b"1.6.18") and len(sync.errors) == 1


def test_nothing_follows_the_marker() -> None:
    """raw_command's check sends the marker alone: an error with nothing after it."""
    result, sync, _ = run(REFUSED, follows=False)
    assert type(result) is ErrorReply and sync.unsure and sync.taken is None
    result, sync, _ = run(b"ERROR\r\n" + V, follows=False)
    assert result == Version(b"1.6.18") and len(sync.errors) == 1 and not sync.unsure


def test_other_replies_before_the_marker_are_protocol_errors() -> None:
    from pymc.exceptions import MemcacheProtocolError

    with pytest.raises(MemcacheProtocolError, match="before the sync marker"):
        run(b"STORED\r\n" + V)
