"""The command plans (pymc.protocol.plans and metaplans), without a server: each plan's
request bytes, the reader its reply is read with, and what ``finish`` makes of it."""

from __future__ import annotations

from typing import Any, List

import pytest

from pymc.exceptions import (
    MemcacheClientError,
    MemcacheIllegalInputError,
    MemcacheServerError,
    MemcacheUnknownCommandError,
)
from pymc.protocol import SPEEDUPS, CReader, ErrorReply, PyReader, Reader, closes_after
from pymc.protocol.meta import MetaResult
from pymc.protocol.metaplans import (
    NoMetaCommands,
    meta_batches,
    meta_check,
    meta_each_plan,
    meta_plan,
    meta_reply,
    quiet_get_plan,
    text_quiet_get_plan,
)
from pymc.protocol.plans import (
    PIPELINE_BYTES,
    Plan,
    cache_memlimit_plan,
    cluster_config_plan,
    delete_many_plans,
    delete_plan,
    flush_all_plan,
    incr_decr_plan,
    many_result,
    node_retrieval_plan,
    raw_command_plan,
    raw_reply_error,
    request_chunks,
    resolve_noreply,
    retrieval_plans,
    set_many_plans,
    shutdown_plan,
    stats_plan,
    store_plan,
    sync_check_plan,
    touch_plan,
    verbosity_plan,
    version_plan,
)
from pymc.protocol.results import decode_values, typed_stats


def run(plan: Plan, reply: bytes) -> Any:
    """What a transport does with ``plan`` when the server answers ``reply``."""
    assert plan.expect is not None
    reader = Reader()
    reader.feed(reply)
    expect = plan.expect()
    result = expect.step(reader)
    assert not reader.buffered
    return plan.finish(result)


def test_store_plan_request_and_results() -> None:
    plan = store_plan("set", b"k", b"value", 3, 60, False)
    assert plan.command == "set"
    assert plan.request == b"set k 3 60 5\r\nvalue\r\n"
    assert run(plan, b"STORED\r\n") is True
    assert run(store_plan("add", b"k", b"v", 0, 0, False), b"NOT_STORED\r\n") is False
    cas = store_plan("cas", b"k", b"v", 0, 0, False, 42)
    assert cas.request == b"cas k 0 0 1 42\r\nv\r\n"
    assert run(cas, b"EXISTS\r\n") is False
    assert run(cas, b"NOT_FOUND\r\n") is None


def test_noreply_plans_expect_nothing() -> None:
    plan = store_plan("set", b"k", b"v", 0, 0, True)
    assert plan.expect is None
    assert plan.request.endswith(b" noreply\r\nv\r\n")
    assert plan.finish(None) is True
    assert delete_plan(b"k", True).finish(None) is True
    assert incr_decr_plan("incr", b"k", 1, True).finish(None) is None
    assert verbosity_plan(1, True).finish(None) is True


def test_error_replies_raise() -> None:
    plan = store_plan("set", b"k", b"v", 0, 0, False)
    with pytest.raises(MemcacheServerError, match="too large"):
        run(plan, b"SERVER_ERROR object too large for cache\r\n")
    with pytest.raises(MemcacheClientError):
        run(delete_plan(b"k", False), b"CLIENT_ERROR bad command line format\r\n")
    with pytest.raises(MemcacheUnknownCommandError):
        run(version_plan(), b"ERROR\r\n")


def test_one_reply_commands() -> None:
    assert run(delete_plan(b"k", False), b"DELETED\r\n") is True
    assert run(delete_plan(b"k", False), b"NOT_FOUND\r\n") is False
    assert run(touch_plan(b"k", 5, False), b"TOUCHED\r\n") is True
    assert touch_plan(b"k", 5, False).request == b"touch k 5\r\n"
    assert run(incr_decr_plan("incr", b"n", 2, False), b"12\r\n") == 12
    assert run(incr_decr_plan("decr", b"n", 2, False), b"NOT_FOUND\r\n") is None
    assert run(version_plan(), b"VERSION 1.6.21\r\n") == b"1.6.21"
    assert run(cache_memlimit_plan(64), b"OK\r\n") is True
    assert run(flush_all_plan(0, False), b"OK\r\n") is True
    assert run(verbosity_plan(1, False), b"OK\r\n") is True
    assert shutdown_plan(True).request == b"shutdown graceful\r\n"


def test_retrieval_plans_one_pass_and_several() -> None:
    wanted = {b"a": "a", b"b": "b"}
    plans, found = retrieval_plans(b"get", wanted, list(wanted), None, False)
    assert [p.request for p in plans] == [b"get a b\r\n"]
    reply = b"VALUE a 0 1\r\nx\r\nEND\r\n"
    assert run(plans[0], reply) is found
    assert found == {b"a": (0, b"x", None)}
    assert decode_values(found, wanted, _Options(), False) == {"a": b"x"}
    raws = [b"k%04d" % i for i in range(200)]
    plans, _ = retrieval_plans(b"gets", set(raws), raws, None, True, 512)
    assert len(plans) > 1
    assert all(len(p.request) <= 512 for p in plans)
    assert [k for p in plans for k in p.request[5:-2].split()] == raws
    gat = retrieval_plans(b"gat", {b"a"}, [b"a"], 30, False)[0][0]
    assert gat.request == b"gat 30 a\r\n"


def test_retrieval_error_raises() -> None:
    plans, _ = retrieval_plans(b"get", {b"a"}, [b"a"], None, False)
    with pytest.raises(MemcacheClientError):
        run(plans[0], b"CLIENT_ERROR bad data chunk\r\n")


_READERS = [
    PyReader,
    pytest.param(
        CReader if SPEEDUPS else PyReader,
        marks=pytest.mark.skipif(not SPEEDUPS, reason="the compiled reader is not in use"),
    ),
]


@pytest.mark.parametrize("reader_class", _READERS)
@pytest.mark.parametrize("command", [b"get", b"gets", b"gat", b"gats"])
def test_a_server_error_to_a_multi_key_retrieval_leaves_the_connection_unusable(
    reader_class: Any, command: bytes
) -> None:
    """twemproxy closes the connection after a SERVER_ERROR to a retrieval of more than one
    key (one of its per-backend fragments failed): the reply says so (``in_step`` False,
    what makes every transport close the connection), with either reader; one key, or
    another error kind, leaves the connection in step."""
    expire = 5 if command in (b"gat", b"gats") else None

    def reply_to(raws: List[bytes], answer: bytes, max_line: int = 16384) -> List[Any]:
        plans, _ = retrieval_plans(command, set(raws), raws, expire, False, max_line)
        replies = []
        for plan in plans:
            assert plan.expect is not None
            reader = reader_class()
            reader.feed(answer)
            replies.append(plan.expect().step(reader))
            assert not reader.buffered and not reader.broken
            with pytest.raises((MemcacheServerError, MemcacheClientError)):
                plan.finish(replies[-1])
        return replies

    refused = b"SERVER_ERROR Connection refused\r\n"
    (one,) = reply_to([b"a"], refused)
    assert one == ErrorReply(b"SERVER_ERROR", "Connection refused") and one.in_step
    (two,) = reply_to([b"a", b"b"], refused)
    assert two == ErrorReply(b"SERVER_ERROR", "Connection refused", closes=True)
    assert not two.in_step
    raws = [b"k%03d" % i for i in range(60)]
    passes = reply_to(raws, refused, 256)  # (each pass a request of many keys)
    assert len(passes) > 1 and not any(r.in_step for r in passes)
    (client,) = reply_to([b"a", b"b"], b"CLIENT_ERROR bad command line format\r\n")
    assert client.in_step
    node = node_retrieval_plan(b"get", {b"a": "a", b"b": "b"}, False)
    with pytest.raises(MemcacheServerError, match="Connection refused"):
        run(node, refused)
    assert node.expect is not None
    reader = reader_class()
    reader.feed(refused)
    got = node.expect().step(reader)
    assert type(got) is ErrorReply and not got.in_step


def test_closes_after_is_the_one_rule() -> None:
    server = ErrorReply(b"SERVER_ERROR", "Connection timed out")
    assert closes_after(server, 2) and not closes_after(server, 1)
    assert not closes_after(ErrorReply(b"CLIENT_ERROR", "x"), 2)
    assert not closes_after(ErrorReply(b"ERROR", ""), 2)
    assert server.in_step and not ErrorReply(server.kind, server.message, True).in_step
    assert not ErrorReply(b"ERROR", "Too many open connections").in_step


def test_pipelines_split_and_judge() -> None:
    items = [(b"k%d" % i, b"v" * 1000, 0) for i in range(100)]
    plans = set_many_plans(items, 0, False)
    assert len(plans) > 1
    assert all(len(p.request) <= PIPELINE_BYTES + 1100 for p in plans)
    keys = ["a", "b", "c"]
    plans = set_many_plans([(k.encode(), b"v", 0) for k in keys], 0, False)
    assert len(plans) == 1
    replies = run(plans[0], b"STORED\r\nNOT_STORED\r\nSTORED\r\n")
    assert many_result("set", keys, replies) == ["b"]
    replies = run(plans[0], b"STORED\r\nSERVER_ERROR object too large for cache\r\nSTORED\r\n")
    with pytest.raises(MemcacheServerError, match="'b'"):
        many_result("set", keys, replies)
    deletes = delete_many_plans([b"a", b"b"], False)
    assert many_result("delete", ["a", "b"], run(deletes[0], b"DELETED\r\nNOT_FOUND\r\n")) == ["b"]
    assert all(p.expect is None for p in delete_many_plans([b"a"], True))


def test_stats_config_raw() -> None:
    stats = run(
        stats_plan(), b"STAT pid 12\r\nSTAT version 1.6.21\r\nSTAT rusage_user 0:5\r\nEND\r\n"
    )
    assert stats == {b"pid": 12, b"version": b"1.6.21", b"rusage_user": 0.5}
    assert typed_stats({b"cas_enabled": b"1", b"odd": b"x"}) == {b"cas_enabled": True, b"odd": b"x"}
    assert stats_plan("slabs").request == b"stats slabs\r\n"
    assert cluster_config_plan().request == b"config get cluster\r\n"
    with pytest.raises(MemcacheUnknownCommandError):
        run(cluster_config_plan(), b"ERROR\r\n")
    raw = raw_command_plan("version", "\r\n", "ascii")
    assert raw.command == "version" and raw.request == b"version\r\n"
    assert run(raw, b"VERSION 1.6.21\r\n") == b"VERSION 1.6.21"
    with pytest.raises(MemcacheIllegalInputError):
        raw_command_plan("get a\r\nget b", "\r\n", "ascii")
    with pytest.raises(MemcacheIllegalInputError):
        raw_command_plan("version", "", "ascii")
    assert raw_reply_error(b"CLIENT_ERROR nope") == ErrorReply(b"CLIENT_ERROR", "nope")
    assert raw_reply_error(b"VERSION 1") is None
    marker = sync_check_plan()
    assert marker.request == b"" and marker.expect is not None


def test_small_helpers() -> None:
    assert resolve_noreply(None, True) is True
    assert resolve_noreply(False, True) is False
    assert request_chunks([b"a", b"b"]) == [[b"a", b"b"]]
    assert meta_batches([]) == []
    assert len(meta_batches([(b"k" * 200, None)] * 1000)) > 1


def test_meta_plans() -> None:
    plan = meta_plan("mg", b"mg k v f O1\r\n", b"1")
    result = run(plan, b"VA 1 f0 O1\r\nx\r\n")
    assert isinstance(result, MetaResult) and result.status == "hit" and result.value == b"x"
    assert run(plan, b"EN\r\n").status == "miss"
    with pytest.raises(NoMetaCommands) as caught:
        run(plan, b"ERROR\r\n")
    assert caught.value.command == "mg"
    assert isinstance(caught.value, MemcacheUnknownCommandError)
    with pytest.raises(MemcacheServerError):
        meta_reply(ErrorReply(b"SERVER_ERROR", "out of memory"), "ms")
    assert run(meta_check(), b"MN\r\n").status == "noop"
    each = meta_each_plan(b"ms k 1 O1\r\nx\r\nmd k O2\r\n", [(b"1", "ms"), (b"2", "md")])
    replies: List[Any] = run(each, b"HD O1\r\nNF O2\r\n")
    assert [r.status for r in replies] == ["stored", "not_found"]


def test_quiet_get_plans() -> None:
    plan, opaques = text_quiet_get_plan([b"a", b"b"], 7)
    assert opaques == [b"7", b"8"]
    found = run(plan, b"VA 1 f0 O8\r\ny\r\nMN\r\n")
    assert list(found) == [b"8"] and found[b"8"].value == b"y"
    counter = iter(range(1, 100))
    plan, key_of = quiet_get_plan([(b"a", ("a", False))], lambda: b"%x" % next(counter))
    assert key_of == {b"1": "a"}
    assert run(plan, b"MN\r\n") == {}


class _Options:
    from pymc.serde import DefaultSerde

    serde = DefaultSerde()
    ignore_exc = False
