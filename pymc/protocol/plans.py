"""Command plans: each text command written once, without I/O.

A :class:`Plan` is one request on one connection and how its reply is read and judged:
its bytes, a factory of the reader (``Expect``) of its reply (None: ``noreply``, nothing is
read) and ``finish``, which turns the reply into the command's result or raises the error
it means. Whoever holds the connection executes it: the blocking
:class:`~pymc.transport.Connection` (``execute``), the cluster's fan-out on many
connections at once, the asyncio transport to come. A transport closes the connection
first when an error reply leaves it out of step (``not reply.in_step``).

A command of several requests is a list of plans (a multi-get over ``max_get_line``, a
pipeline over :data:`PIPELINE_BYTES`), executed in order under one deadline. The hot
one-reply path (``get``, the stores, ``delete``, ``touch``, ``incr``) runs in the transport
with the same encoders and the same :class:`~pymc.protocol.Rule`, which is what its reply
means.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..exceptions import MemcacheIllegalInputError
from . import (
    RULES,
    ErrorReply,
    Expect,
    ExpectConfig,
    ExpectRaw,
    ExpectReplies,
    ExpectStats,
    ExpectValues,
    Reply,
    Rule,
    encode_cache_memlimit,
    encode_config_get,
    encode_delete,
    encode_flush_all,
    encode_incr_decr,
    encode_retrieval,
    encode_shutdown,
    encode_stats,
    encode_storage,
    encode_touch,
    encode_verbosity,
)
from .results import Item, per_key_results, typed_stats

__all__ = [
    "MAX_GET_LINE",
    "PIPELINE_BYTES",
    "Plan",
    "cache_memlimit_plan",
    "cluster_config_plan",
    "delete_many_plans",
    "delete_plan",
    "flush_all_plan",
    "incr_decr_plan",
    "many_result",
    "node_retrieval_plan",
    "one_reply_plan",
    "pipeline_plans",
    "raw_command_plan",
    "raw_reply_error",
    "request_chunks",
    "resolve_noreply",
    "retrieval_plans",
    "set_many_plans",
    "shutdown_plan",
    "stats_plan",
    "store_plan",
    "sync_check_plan",
    "touch_plan",
    "verbosity_plan",
    "version_plan",
]

#: The longest ``get``/``gets`` line a multi-get sends by default: ElastiCache Serverless
#: refuses longer ones. Longer key lists go in several requests (``max_get_line``).
MAX_GET_LINE = 16384
#: A pipelined pass sends at most this many request bytes before it reads the replies, so
#: neither side can fill both socket buffers and wait for the other forever.
PIPELINE_BYTES = 32768
#: Room a retrieval line keeps for its command, expiry and CRLF around the keys.
GET_LINE_OVERHEAD = 32


class Plan:
    """One request and what its reply means (see the module's docstring)."""

    __slots__ = ("command", "expect", "finish", "request")

    def __init__(
        self,
        command: str,
        request: bytes,
        expect: Optional[Callable[[], Expect]],
        finish: Callable[[Any], Any],
    ) -> None:
        self.command = command
        self.request = request
        self.expect = expect
        self.finish = finish

    def __repr__(self) -> str:
        noreply = " noreply" if self.expect is None else ""
        return f"<Plan {self.command}{noreply} {self.request[:60]!r}>"


def resolve_noreply(noreply: Optional[bool], default: bool) -> bool:
    """The one rule for ``noreply``: the argument when given, else ``default_noreply``."""
    return default if noreply is None else bool(noreply)


# ---------------------------------------------------------------------- one reply each


def _judged(rule: Rule) -> Callable[[List[Reply]], Any]:
    """The finish of a one-reply command: its rule's result, or its error raised."""
    command, result = rule.command, rule.result

    def finish(replies: List[Reply]) -> Any:
        reply = replies[0]
        if type(reply) is ErrorReply:
            raise reply.exception(command)
        return result(reply)

    return finish


#: Per command name: (the reader factory, the finish) of a one-reply command.
_ONE: Dict[str, Tuple[Callable[[], Expect], Callable[[Any], Any]]] = {
    name: (functools.partial(ExpectReplies, rule), _judged(rule)) for name, rule in RULES.items()
}


def _constant(value: Any) -> Callable[[Any], Any]:
    return lambda _: value


_TRUE = _constant(True)
_NONE = _constant(None)


def one_reply_plan(
    command: str, request: bytes, noreply: bool, noreply_result: Any = True, ok: Any = None
) -> Plan:
    """A command answered by one reply judged by ``RULES[command]``; with ``noreply``,
    nothing is read and the result is ``noreply_result``. ``ok`` (when not None) is the
    result of any reply the rule accepts (``verbosity`` and ``flush_all`` return True)."""
    if noreply:
        return Plan(command, request, None, _TRUE if noreply_result is True else _NONE)
    expect, finish = _ONE[command]
    if ok is not None:
        judged = finish

        def finish(replies: List[Reply]) -> Any:
            judged(replies)
            return ok

    return Plan(command, request, expect, finish)


def store_plan(
    command: str,
    raw: bytes,
    data: bytes,
    flags: int,
    expire: int,
    noreply: bool,
    cas: object = None,
) -> Plan:
    """``set``/``add``/``replace``/``append``/``prepend``/``cas`` of one raw key."""
    request = encode_storage(command.encode(), raw, data, flags, expire, noreply, cas)
    return one_reply_plan(command, request, noreply)


def delete_plan(raw: bytes, noreply: bool) -> Plan:
    return one_reply_plan("delete", encode_delete(raw, noreply), noreply)


def touch_plan(raw: bytes, expire: int, noreply: bool) -> Plan:
    return one_reply_plan("touch", encode_touch(raw, expire, noreply), noreply)


def incr_decr_plan(command: str, raw: bytes, value: int, noreply: bool) -> Plan:
    """``incr``/``decr``: the new value, None when missing (or with ``noreply``)."""
    request = encode_incr_decr(command.encode(), raw, value, noreply)
    return one_reply_plan(command, request, noreply, None)


def cache_memlimit_plan(memlimit: int) -> Plan:
    return one_reply_plan("cache_memlimit", encode_cache_memlimit(memlimit), False, ok=True)


def verbosity_plan(level: int, noreply: bool) -> Plan:
    return one_reply_plan("verbosity", encode_verbosity(level, noreply), noreply, ok=True)


def flush_all_plan(delay: int, noreply: bool) -> Plan:
    return one_reply_plan("flush_all", encode_flush_all(delay, noreply), noreply, ok=True)


def version_plan() -> Plan:
    """``version``: the server's version, as bytes."""
    return one_reply_plan("version", b"version\r\n", False)


def shutdown_plan(graceful: bool) -> Plan:
    return one_reply_plan("shutdown", encode_shutdown(graceful), False)


def sync_check_plan() -> Plan:
    """Nothing but the sync marker (``raw_command``'s check that nothing follows its
    reply): the request is empty, the transport puts the marker in front of it."""
    return Plan("version", b"", functools.partial(ExpectReplies, RULES["version"], 0), _NONE)


# ---------------------------------------------------------------------- other readers


def _raise_or(command: str, convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def finish(reply: Any) -> Any:
        if type(reply) is ErrorReply:
            raise reply.exception(command)
        return convert(reply)

    return finish


def _same(reply: Any) -> Any:
    return reply


def stats_plan(*args: Union[str, bytes]) -> Plan:
    """``stats`` (with optional sub-command), values typed like pymemcache's."""
    return Plan("stats", encode_stats(*args), ExpectStats, _raise_or("stats", typed_stats))


def cluster_config_plan() -> Plan:
    """ElastiCache's ``config get cluster``."""
    command = "config get cluster"
    return Plan(command, encode_config_get(b"cluster"), ExpectConfig, _raise_or(command, _same))


def raw_command_plan(
    command: Union[str, bytes], end_tokens: Union[str, bytes], encoding: str
) -> Plan:
    """One command line sent as is; the result is its reply up to ``end_tokens`` (an error
    line in it is judged by :func:`raw_reply_error`, after the sync check)."""
    raw = command.encode(encoding) if isinstance(command, str) else command
    token = end_tokens.encode(encoding) if isinstance(end_tokens, str) else end_tokens
    if b"\r" in raw or b"\n" in raw:
        raise MemcacheIllegalInputError("raw_command takes one line, without CRLF")
    if not token:
        raise MemcacheIllegalInputError("raw_command needs non-empty end_tokens")
    name = raw.split(b" ", 1)[0].decode("ascii", "replace")
    return Plan(name, raw + b"\r\n", functools.partial(ExpectRaw, token), _same)


def raw_reply_error(reply: bytes) -> Optional[ErrorReply]:
    """The error a ``raw_command`` reply is, if it is one."""
    for kind in (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"):
        if reply == kind or reply.startswith(kind + b" ") or reply.startswith(kind + b":"):
            return ErrorReply(kind, reply.partition(b" ")[2].decode("utf-8", "replace"))
    return None


# ---------------------------------------------------------------------- many keys


def request_chunks(raws: List[bytes], max_line: int = MAX_GET_LINE) -> List[List[bytes]]:
    """Split the keys of a multi-get into requests whose lines are at most ``max_line``
    bytes long (command, expiry and CRLF included)."""
    budget = max_line - GET_LINE_OVERHEAD
    if sum(map(len, raws)) + len(raws) <= budget:
        return [raws]
    chunks: List[List[bytes]] = [[]]
    size = 0
    for raw in raws:
        if size + len(raw) + 1 > budget and chunks[-1]:
            chunks.append([])
            size = 0
        chunks[-1].append(raw)
        size += len(raw) + 1
    return chunks


def retrieval_plans(
    command: bytes,
    wanted: Collection[bytes],
    raws: List[bytes],
    expire: Optional[int],
    with_cas: bool,
    max_line: int = MAX_GET_LINE,
) -> Tuple[List[Plan], Dict[bytes, Item]]:
    """``get``/``gets``/``gat``/``gats`` of the raw keys ``raws`` (all in ``wanted``), in
    requests of at most ``max_line`` bytes: the plans, and the dict their items go into
    (each plan's result; a key answered twice over all the passes is a protocol error).
    For one node's keys of a fan-out, as for a Client's."""
    found: Dict[bytes, Item] = {}
    chunks = request_chunks(raws, max_line)
    name, finish = _RETRIEVALS.get(command) or (
        command.decode(),
        _raise_or(command.decode(), _same),
    )
    plans = []
    for chunk in chunks:
        keys: Collection[bytes] = wanted if len(chunks) == 1 else set(chunk)
        expect = functools.partial(ExpectValues, keys, found, with_cas)
        plans.append(Plan(name, encode_retrieval(command, chunk, expire), expect, finish))
    return plans, found


def node_retrieval_plan(command: bytes, wanted: Mapping[bytes, Any], with_cas: bool) -> Plan:
    """One node's part of a fan-out's ``get_many``/``gets_many``: one request for every raw
    key in ``wanted`` (the caller checked it fits in one line), whose result is the node's
    own ``{raw key: item}``; an error reply raises as a Client's ``get_many`` raises it."""
    expect = functools.partial(ExpectValues, wanted, None, with_cas)
    return Plan(_MANY[command], encode_retrieval(command, list(wanted)), expect, _MANY_FINISH)


#: The name and the finish of each retrieval command (made once).
_RETRIEVALS = {
    command: (command.decode(), _raise_or(command.decode(), _same))
    for command in (b"get", b"gets", b"gat", b"gats")
}


_MANY = {b"get": "get_many", b"gets": "gets_many"}
_MANY_FINISH = _raise_or("get_many", _same)


def pipeline_plans(command: str, requests: Sequence[bytes], noreply: bool) -> List[Plan]:
    """Many one-reply requests of ``command``, in passes of about :data:`PIPELINE_BYTES`;
    each pass's result is its list of replies (judged together by :func:`many_result`)."""
    rule = RULES[command]
    plans = []
    start = 0
    while start < len(requests):
        stop, size = start, 0
        while stop < len(requests) and (size < PIPELINE_BYTES or stop == start):
            size += len(requests[stop])
            stop += 1
        expect = None if noreply else functools.partial(ExpectReplies, rule, stop - start)
        plans.append(Plan(command, b"".join(requests[start:stop]), expect, _same))
        start = stop
    return plans


def many_result(command: str, keys: Sequence[Any], replies: Sequence[Reply]) -> List[Any]:
    """The keys whose reply was a failure (not stored, not found) of a pipeline of one
    ``command`` per key; an error reply raises once every reply was read (naming up to
    five keys)."""
    rule = RULES[command]
    results, error = per_key_results(keys, replies, rule)
    if error is not None:
        raise error
    return [k for k, ok in results if not ok]


def set_many_plans(
    items: Sequence[Tuple[bytes, bytes, int]], expire: int, noreply: bool
) -> List[Plan]:
    """``set`` of many ``(raw key, data, flags)``, pipelined."""
    requests = [
        encode_storage(b"set", raw, data, flags, expire, noreply) for raw, data, flags in items
    ]
    return pipeline_plans("set", requests, noreply)


def delete_many_plans(raws: Sequence[bytes], noreply: bool) -> List[Plan]:
    """``delete`` of many raw keys, pipelined."""
    return pipeline_plans("delete", [encode_delete(raw, noreply) for raw in raws], noreply)
