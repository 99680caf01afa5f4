"""The quiet pipeline reader on a server without meta commands."""

from __future__ import annotations


def test_a_quiet_pipeline_reader_stops_at_a_bare_error() -> None:
    """Sans I/O: the first bare ERROR ends the quiet pipeline at once (no MN will come) and
    gives the connection up; an error with a message is a request's, and reading goes on."""
    from pymc.meta import ExpectMetaQuiet
    from pymc.protocol import NEED_DATA, ErrorReply, Reader

    reader = Reader()
    reader.feed(b"ERROR\r\n")
    expect = ExpectMetaQuiet([(b"1", b"mg"), (b"2", b"mg")])
    assert expect.step(reader) == ErrorReply(b"ERROR", "")
    assert reader.broken and reader.buffered == 0

    reader = Reader()
    reader.feed(b"CLIENT_ERROR bad data chunk\r\n")
    expect = ExpectMetaQuiet([(b"1", b"ms")])
    assert expect.step(reader) is NEED_DATA and not reader.broken
    reader.feed(b"MN\r\n")
    assert expect.step(reader) == ErrorReply(b"CLIENT_ERROR", "bad data chunk")
