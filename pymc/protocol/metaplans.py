"""Meta command plans (memcached 1.6's ``mg``/``ms``/``md``/``ma``/``mn``), written once
without I/O: see :mod:`pymc.protocol.plans` for what a plan is. Every request carries an
opaque token its reply must echo; quiet pipelines (``q`` on each request, one ``mn`` at the
end) come back with only the hits of a get or the failures of the rest.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Sequence, Tuple

from ..exceptions import MemcacheUnknownCommandError
from . import ErrorReply
from .meta import (
    ExpectMeta,
    ExpectMetaEach,
    ExpectMetaQuiet,
    encode_meta_delete,
    encode_meta_get,
    encode_meta_noop,
    encode_quiet_gets,
)
from .plans import Plan

__all__ = [
    "QUIET_BATCH_BYTES",
    "NoMetaCommands",
    "QuietBatch",
    "meta_batches",
    "meta_check",
    "meta_each_plan",
    "meta_plan",
    "meta_reply",
    "quiet_deletes",
    "quiet_get_plan",
    "quiet_gets",
    "quiet_plan",
    "quiet_set_plan",
    "text_quiet_get_plan",
]

#: A quiet meta pipeline sends at most about this many bytes of request lines per batch.
QUIET_BATCH_BYTES = 65536


class NoMetaCommands(MemcacheUnknownCommandError):
    """A bare ``ERROR`` in answer to a meta command: the server has no meta commands
    (memcached before 1.6). How many more error lines the request draws is unknown, so a
    transport closes the connection, and says which version a fresh one reports."""

    def __init__(self, command: str) -> None:
        super().__init__(f"ERROR (to {command}): meta commands need memcached 1.6 or later")
        self.command = command


def meta_reply(result: Any, command: str) -> Any:
    """``result`` (a reply to a meta request), or the error it is raised."""
    if type(result) is ErrorReply:
        if result.kind == b"ERROR" and not result.message:
            raise NoMetaCommands(command)
        raise result.exception(command)
    return result


def _finish(command: str) -> Callable[[Any], Any]:
    return lambda result: meta_reply(result, command)


_FINISH = {name: _finish(name) for name in ("mg", "ms", "md", "ma", "mn")}


def meta_plan(command: str, request: bytes, opaque: bytes, vivify: bool = False) -> Plan:
    """One meta request (``command``: ``"mg"``, ``"ms"``, ...) whose reply carries
    ``opaque``: its :class:`MetaResult`, or its error raised."""
    expect = functools.partial(
        ExpectMeta, opaque, None, False, command=command.encode(), vivify=vivify
    )
    return Plan(command, request, expect, _FINISH[command])


def meta_check(command: str = "mn") -> Plan:
    """``mn``: a round trip that does nothing; the check, once per connection, that the
    server knows meta commands before a value goes out in an ``ms`` (``command``)."""
    return Plan(
        command, encode_meta_noop(), functools.partial(ExpectMeta, command=b"mn"), _finish(command)
    )


def _each(result: Any) -> Any:
    return result


def meta_each_plan(request: bytes, each: Sequence[Tuple[bytes, str]]) -> Plan:
    """Several meta requests in one round trip, one reply each: ``each`` is their
    ``(opaque, command)`` in order; the result is the list of replies (each judged by the
    caller through :func:`meta_reply`, as what the next step does depends on them)."""
    readers = [(opaque, command.encode()) for opaque, command in each]

    def expect() -> ExpectMetaEach:
        return ExpectMetaEach([ExpectMeta(opaque, command=name) for opaque, name in readers])

    return Plan("+".join(command for _, command in each), request, expect, _each)


def quiet_plan(command: str, request: bytes, sent: List[Tuple[bytes, ...]]) -> Plan:
    """A quiet pipeline ending in ``mn``: ``{opaque: MetaResult}`` of what came back."""
    return Plan(command, request, functools.partial(ExpectMetaQuiet, sent), _FINISH[command])


def quiet_set_plan(request: bytes, sent: List[Tuple[bytes, ...]]) -> Plan:
    """A quiet ``ms`` pipeline: ``{opaque: MetaResult}`` of the failures, or the first
    error line as it is (the caller asks again, one reply each, to tell whose it was)."""
    return Plan("ms", request, functools.partial(ExpectMetaQuiet, sent), _each)


def text_quiet_get_plan(text: List[bytes], first: int) -> Tuple[Plan, List[bytes]]:
    """A quiet ``mg`` pipeline of keys that go as they are, with the opaques ``first``,
    ``first + 1``, ...: the plan and the opaques (encoded, read and matched without a
    Python turn per key where the compiled module is in use)."""
    request, opaques = encode_quiet_gets(text, first)
    return Plan(
        "mg", request, functools.partial(ExpectMetaQuiet.gets, opaques), _FINISH["mg"]
    ), opaques


def quiet_get_plan(
    batch: List[Tuple[bytes, Tuple[Any, bool]]], opaque: Callable[[], bytes]
) -> Tuple[Plan, Dict[bytes, Any]]:
    """A quiet ``mg`` pipeline of one batch: the plan and the caller's key by opaque."""
    request, sent, key_of = quiet_gets(batch, opaque)
    return quiet_plan("mg", request, sent), key_of


QuietBatch = Tuple[bytes, List[Tuple[bytes, ...]], Dict[bytes, Any]]


def quiet_gets(
    batch: List[Tuple[bytes, Tuple[Any, bool]]], opaque: Callable[[], bytes]
) -> QuietBatch:
    """``(request, sent, key by opaque)`` of a quiet ``mg`` pipeline ending in ``mn``."""
    requests: List[bytes] = []
    sent: List[Tuple[bytes, ...]] = []
    key_of: Dict[bytes, Any] = {}
    for wire, (key, b64) in batch:
        token = opaque()
        requests.append(
            encode_meta_get(wire, base64=b64, return_client_flags=True, opaque=token, quiet=True)
        )
        sent.append((token, b"mg"))
        key_of[token] = key
    requests.append(encode_meta_noop())
    return b"".join(requests), sent, key_of


def quiet_deletes(
    batch: List[Tuple[bytes, Tuple[Any, bool]]], opaque: Callable[[], bytes], invalidate: bool
) -> QuietBatch:
    """``(request, sent, key by opaque)`` of a quiet ``md`` pipeline ending in ``mn``."""
    requests: List[bytes] = []
    sent: List[Tuple[bytes, ...]] = []
    key_of: Dict[bytes, Any] = {}
    for wire, (key, b64) in batch:
        token = opaque()
        requests.append(
            encode_meta_delete(wire, base64=b64, invalidate=invalidate, opaque=token, quiet=True)
        )
        sent.append((token, b"md"))
        key_of[token] = key
    requests.append(encode_meta_noop())
    return b"".join(requests), sent, key_of


def meta_batches(items: List[Tuple[bytes, Any]]) -> List[List[Tuple[bytes, Any]]]:
    """Split ``(wire key, ...)`` items of a meta pipeline into batches of about
    QUIET_BATCH_BYTES of request lines, so that neither side's socket buffer fills while
    the other waits (a quiet pipeline's answers are small: only misses and failures, or
    the hits of a get)."""
    batches: List[List[Tuple[bytes, Any]]] = [[]]
    size = 0
    for item in items:
        if size >= QUIET_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += len(item[0]) + 40
    return batches if batches[0] else []
