r"""memcached's meta commands, the replies (sans I/O): the parsing of meta reply lines (with
its compiled twin) and the ``Expect*`` readers that turn them into :class:`MetaResult`\s,
checking each reply's opaque and key against its request; the quiet pipeline's reader and
encoder.
"""

from __future__ import annotations

import base64 as _b64
import binascii
import re
from typing import Any, Dict, Final, List, Optional, Sequence, Tuple

from ..exceptions import MemcacheIllegalInputError
from .expect import (
    Expect,
)
from .keys import (
    MAX_KEY_LENGTH,
    MAX_LINE_LENGTH,
    UINT32,
    UINT64,
)
from .metarequests import (
    BAD_BYTE,
    BASE64,
    TTL,
    MetaResult,
    wire_key,
)
from .reader import (
    SPEEDUPS,
    Reader,
)
from .replies import (
    NEED_DATA,
    ErrorReply,
)

# --------------------------------------------------------------------------- replies

_COMMANDS: Final = (b"mg", b"ms", b"md", b"ma", b"mn")
# (command, return code) -> status; a code missing here is not an answer to that command.
_STATUS: Final = {
    (b"mg", b"VA"): "hit",
    (b"mg", b"HD"): "hit",
    (b"mg", b"EN"): "miss",
    (b"ms", b"HD"): "stored",
    (b"ms", b"NS"): "not_stored",
    (b"ms", b"EX"): "exists",
    (b"ms", b"NF"): "not_found",
    (b"md", b"HD"): "deleted",
    (b"md", b"EX"): "exists",
    (b"md", b"NF"): "not_found",
    (b"ma", b"VA"): "hit",
    (b"ma", b"HD"): "hit",
    (b"ma", b"NS"): "not_stored",
    (b"ma", b"EX"): "exists",
    (b"ma", b"NF"): "not_found",
    (b"mn", b"MN"): "noop",
}
_FAILURES: Final = frozenset((b"EN", b"NS", b"EX", b"NF"))
_ERROR_KINDS: Final = (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR")


class _Head:
    """A parsed reply line, waiting for its data block when ``size`` is not None."""

    __slots__ = ("code", "fields", "size")

    def __init__(self, code: bytes, size: Optional[int], fields: Dict[str, object]) -> None:
        self.code = code
        self.size = size
        self.fields = fields


def _error_reply(reader: Reader, line: bytes) -> Optional[ErrorReply]:
    """The ErrorReply an ``ERROR``/``CLIENT_ERROR``/``SERVER_ERROR`` line is, else None."""
    if not line.startswith(_ERROR_KINDS):  # (one C call for the replies that are no error)
        return None
    kind, _, message = line.partition(b" ")
    kind = kind.removesuffix(b":")
    if kind not in _ERROR_KINDS:
        return None
    reply = ErrorReply(kind, message.decode("utf-8", "replace"))
    if not reply.in_step:
        # The server refused the connection (memcached's "ERROR Too many open
        # connections"): nothing after it is trusted.
        reader.fail(f"the server refused the connection: {line[:100]!r}")
    return reply


def _digits(arg: bytes) -> bool:
    """Whether ``arg`` is 1 to 20 ASCII digits (``bytes.isdigit`` knows no others)."""
    return arg.isdigit() and len(arg) <= 20


# The reply flags this module reads, by their first byte; any other is a newer server's
# addition, skipped.
_KNOWN_FLAGS: Final = {bytes([c]): chr(c) for c in b"cfsltWXZbOkh"}
_HEAD_CODES: Final = frozenset((b"HD", b"EN", b"NS", b"EX", b"NF", b"MN"))


def _parse_head(reader: Reader, line: bytes) -> _Head:
    """The return code, data size and flags of a meta reply line; poisons when malformed."""
    tokens = line.split(b" ")
    code = tokens[0]
    size: Optional[int] = None
    if code == b"VA":
        if len(tokens) < 2 or not _digits(tokens[1]):
            raise reader.fail(f"malformed VA line {line[:300]!r}")
        size = int(tokens[1])
        del tokens[:2]
    elif code in _HEAD_CODES:
        del tokens[0]
    elif code == b"OK":  # memcached 1.6.6 (ElastiCache's engine among them)
        code = b"HD"
        del tokens[0]
    else:
        raise reader.fail(f"unexpected meta reply {line[:100]!r}")
    fields: Dict[str, object] = {}
    for token in tokens:
        flag = _KNOWN_FLAGS.get(token[:1])
        if flag is None:
            if not token:
                raise reader.fail(f"malformed meta reply {line[:300]!r}")
            continue  # a flag a newer server added
        if flag in fields:
            raise reader.fail(f"flag {flag!r} twice in meta reply {line[:300]!r}")
        arg = token[1:]
        if flag in "cfsl":
            if not (arg.isdigit() and len(arg) <= 20):  # _digits, inline: the hot loop
                raise reader.fail(f"bad {flag!r} flag in meta reply {line[:300]!r}")
            number = int(arg)
            if (flag in "cs" and number >= UINT64) or (flag == "f" and number >= UINT32):
                raise reader.fail(f"bad {flag!r} flag in meta reply {line[:300]!r}")
            fields[flag] = number
        elif flag in "Ok":
            fields[flag] = arg
        elif flag in "WXZb":
            if arg:
                raise reader.fail(f"bad {flag!r} flag in meta reply {line[:300]!r}")
            fields[flag] = True
        elif flag == "t":
            if TTL(arg) is None or int(arg) < -1:
                raise reader.fail(f"bad 't' flag in meta reply {line[:300]!r}")
            fields[flag] = int(arg)
        else:  # h
            if arg not in (b"0", b"1"):
                raise reader.fail(f"bad 'h' flag in meta reply {line[:300]!r}")
            fields[flag] = arg == b"1"
    if code == b"MN" and tokens:
        raise reader.fail(f"malformed MN line {line[:100]!r}")
    key = fields.get("k")
    if key is not None:
        if fields.get("b"):
            assert isinstance(key, bytes)
            try:
                if len(key) % 4 or BASE64(key) is None:
                    raise ValueError
                fields["k"] = _b64.b64decode(key, validate=True)
            except (binascii.Error, ValueError):
                raise reader.fail(f"a base64 key that is not base64 in {line[:300]!r}") from None
        elif not key:
            raise reader.fail(f"an empty key in meta reply {line[:300]!r}")
    return _Head(code, size, fields)


# pymc/protocol/speedups.c holds a compiled twin of _parse_head
# (tests/unit/protocol/test_speedups_meta.py checks it against the pure one, the
# reference, kept as _parse_head_py). It returns the message
# of a malformed line, which is raised here through reader.fail as the pure code does.
_parse_head_py = _parse_head
if SPEEDUPS:
    from . import speedups

    if hasattr(speedups, "parse_meta_head"):  # (else a build older than this file)
        _parse_meta_head = speedups.parse_meta_head

        def _parse_head_c(reader: Reader, line: bytes) -> _Head:
            """:func:`_parse_head`, compiled: the same results and failures."""
            head = _parse_meta_head(line, _Head)
            if type(head) is str:
                raise reader.fail(head)
            return head  # type: ignore[return-value]  # (a _Head: made by the make given)

        _parse_head = _parse_head_c


def _expected_key(key: Optional[bytes], base64: bool) -> Optional[bytes]:
    if key is None or not base64:
        return key
    try:
        return _b64.b64decode(key, validate=True)
    except binascii.Error:
        raise MemcacheIllegalInputError(f"a base64 key that is not base64: {key[:60]!r}") from None


def _check_command(command: bytes) -> bytes:
    if command not in _COMMANDS:
        raise ValueError(f"command must be one of {_COMMANDS}, not {command!r}")
    return command


_new_tuple: Final[Any] = tuple.__new__


def _placeholder(fields: Dict[str, object], vivify: bool) -> bool:
    """Whether an empty ``mg`` hit with these reply flags is memcached's vivify-on-miss
    placeholder (``mg ... N<ttl>`` on a miss makes an empty item with client flags 0, hands
    its maker ``W`` and everyone else ``Z`` until a value replaces it): a miss, never a
    value. So: empty, flags 0 (or not asked), not stale (``X``: a value, even an empty
    one, after ``md ... I``), and ``Z``, or ``W`` in reply to a request that carried
    ``N``. (Without ``N`` a ``W`` on a fresh item is ``R``'s recache win: a value.) An
    empty value stored with flags 0 while another caller holds its recache win is read as
    a miss too: the reply cannot tell the two apart.
    """
    return (
        not fields.get("f") and "X" not in fields and ("Z" in fields or (vivify and "W" in fields))
    )


def _result(
    reader: Reader,
    head: _Head,
    command: bytes,
    data: Optional[bytes],
    opaque: Optional[bytes],
    key: Optional[bytes],
    vivify: bool = False,
) -> MetaResult:
    """The MetaResult of a complete reply; poisons on a code or echo the request cannot get.
    ``vivify``: the request was an ``mg`` with ``N`` (see :func:`_placeholder`)."""
    status = _STATUS.get((command, head.code))
    if status is None:
        raise reader.fail(f"{head.code!r} is no answer to {command.decode()}")
    fields = head.fields
    # memcached before 1.6.10 sends its failure codes bare, even to a request with O or k.
    bare = not fields and head.code in _FAILURES
    got_opaque = fields.get("O")
    if got_opaque != opaque and not bare:
        raise reader.fail(f"the reply's opaque {got_opaque!r} is not the request's {opaque!r}")
    got_key = fields.get("k")
    if key is not None and got_key != key and not bare:
        raise reader.fail(f"the reply is for key {got_key!r}, not {key!r}"[:300])
    number = None
    if command == b"ma" and data is not None:
        if not _digits(data) or int(data) >= UINT64:
            raise reader.fail(f"ma answered a value that is not a number: {data[:40]!r}")
        number = int(data)
    if data == b"" and command == b"mg" and _placeholder(fields, vivify):
        status = "miss"
        data = None
    get = fields.get
    result: MetaResult = (
        _new_tuple(  # tuple.__new__ straight, not namedtuple's __new__: every reply
            MetaResult,
            (
                status,
                data,
                get("c"),
                get("t"),
                get("f"),
                get("s"),
                get("h"),
                get("l"),
                "W" in fields,
                "X" in fields,
                "Z" in fields,
                got_opaque,
                got_key,
                number,
            ),
        )
    )
    return result


class ExpectMeta(Expect):
    """Exactly one reply to one meta request: a :class:`MetaResult`, or an
    :class:`~pymc.protocol.ErrorReply` (the server refused the command, still in step).

    ``opaque``: the ``O`` token the request carried; the reply must echo it (and a reply
    with an opaque the request did not carry is refused too). ``key``: the wire key of a
    request that asked for its key back (``k``), base64 text when ``base64``; the reply's
    key (decoded when it carries ``b``) must be that key. ``command``: ``b"mg"``,
    ``b"ms"``, ``b"md"``, ``b"ma"`` or ``b"mn"``: which return codes are answers, and what
    ``HD`` means. ``vivify``: the request is an ``mg`` with ``N``, so an empty ``W`` reply
    is the placeholder it made. Anything else poisons the reader.

    memcached's vivify-on-miss placeholder is a ``"miss"`` (no value), with ``win`` for its
    maker and ``won_elsewhere`` for the others, never a hit of an empty value.
    """

    __slots__ = ("command", "expected_key", "head", "opaque", "vivify")

    def __init__(
        self,
        opaque: Optional[bytes] = None,
        key: Optional[bytes] = None,
        base64: bool = False,
        *,
        command: bytes = b"mg",
        vivify: bool = False,
    ) -> None:
        self.vivify = vivify
        self.opaque = opaque
        self.expected_key = None if key is None else _expected_key(key, base64)
        self.command = command if command in _COMMANDS else _check_command(command)
        self.head: Optional[_Head] = None

    def step(self, reader: Reader) -> object:
        head = self.head
        if head is None:
            if not reader.buffered:
                return NEED_DATA  # (the first call, before anything was received)
            line = reader.next_line()
            if line is NEED_DATA:
                return NEED_DATA
            assert isinstance(line, bytes)
            error = _error_reply(reader, line)
            if error is not None:
                return error
            head = self.head = _parse_head(reader, line)
        data = None
        if head.size is not None:
            block = reader.next_block(head.size)
            if block is NEED_DATA:
                return NEED_DATA
            assert isinstance(block, bytes)
            data = block
        return _result(
            reader, head, self.command, data, self.opaque, self.expected_key, self.vivify
        )


class ExpectMetaQuiet(Expect):
    """The replies to a quiet pipeline: meta requests each with ``q`` and a unique opaque,
    then ``mn`` (:func:`encode_meta_noop`). Reads up to ``MN``.

    ``sent`` lists the requests in the order sent: ``(opaque,)``, ``(opaque, command)``,
    ``(opaque, command, wire key)`` or ``(opaque, command, wire key, b"b")`` (the key was
    base64), where the key is given when the request asked for it back (``k``); the
    command defaults to ``b"mg"``. Every reply before ``MN`` must carry the opaque of one
    of them, later in the list than the one before it; anything else poisons the reader.

    The result is ``{opaque: MetaResult}`` for the requests the server answered (in quiet
    mode: the ``mg`` hits, and the failures of the others). An error line (which carries no
    opaque, so belongs to no request) is kept in ``errors`` and the reading goes on to
    ``MN``; the result is then the first :class:`~pymc.protocol.ErrorReply`, and
    ``results`` holds what was matched. A bare ``ERROR`` (an unknown command: a server
    without meta commands, which will not answer ``mn`` either) is returned at once, and
    the reader is poisoned: the connection must be closed.
    """

    __slots__ = ("_head", "_index", "_last", "_opaques", "_sent", "errors", "results")

    def __init__(self, sent: Sequence[Tuple[bytes, ...]]) -> None:
        index: Dict[bytes, int] = {}
        parsed: List[Tuple[bytes, Optional[bytes]]] = []
        for n, entry in enumerate(sent):
            if not 1 <= len(entry) <= 4 or (len(entry) == 4 and entry[3] not in (b"b", b"")):
                raise ValueError(
                    f"a quiet request is (opaque[, command[, key[, b'b']]]): {entry!r}"
                )
            opaque = entry[0]
            if type(opaque) is not bytes or opaque in index:
                raise ValueError(f"every quiet request needs its own bytes opaque: {opaque!r}")
            index[opaque] = n
            command = _check_command(entry[1]) if len(entry) > 1 else b"mg"
            key = _expected_key(entry[2], entry[3:] == (b"b",)) if len(entry) > 2 else None
            parsed.append((command, key))
        self._index = index
        self._opaques = list(index)
        self._sent = parsed
        self._last = -1
        self._head: Optional[_Head] = None
        self.results: Dict[bytes, MetaResult] = {}
        self.errors: List[ErrorReply] = []

    @classmethod
    def gets(cls, opaques: Sequence[bytes]) -> ExpectMetaQuiet:
        """``ExpectMetaQuiet([(opaque, b"mg") for opaque in opaques])``, built without a
        Python turn per request (the reader of :func:`encode_quiet_gets`)."""
        index = dict(zip(opaques, range(len(opaques))))
        if len(index) != len(opaques) or not set(map(type, index)) <= {bytes}:
            return cls([(opaque, b"mg") for opaque in opaques])  # (which says what is wrong)
        self = cls.__new__(cls)
        self._index = index
        self._opaques = list(index)
        self._sent = [_MG] * len(opaques)
        self._last = -1
        self._head = None
        self.results = {}
        self.errors = []
        return self

    def step(self, reader: Reader) -> object:
        scan = _scan_quiet
        while True:
            head = self._head
            if head is None:
                if scan is not None:
                    # The common replies in one go (see _scan_quiet), up to MN or to the
                    # first reply this loop must read: an error line, a malformed or
                    # unmatched reply, an incomplete one.
                    scanned = reader.scan(
                        scan, self._opaques, self._last, self._sent, self.results, MetaResult
                    )
                    if scanned is NEED_DATA:
                        return NEED_DATA
                    _, need, self._last, done = scanned
                    if done:
                        return self.errors[0] if self.errors else self.results
                    if need:  # (a reply not whole yet: the reader waits for it)
                        return NEED_DATA
                line = reader.next_line()
                if line is NEED_DATA:
                    return NEED_DATA
                assert isinstance(line, bytes)
                error = _error_reply(reader, line)
                if error is not None:
                    self.errors.append(error)
                    if not error.in_step:
                        return error
                    if error.kind == b"ERROR" and not error.message:
                        # A bare ERROR: a command the server does not know (memcached
                        # before 1.6, a proxy without meta commands). Its ``mn`` will draw
                        # no MN, and how many more lines come is unknown (an old server
                        # reads a data block as one more command): no waiting, and the
                        # connection is given up (poisoned here, so it is never reused).
                        reader.fail("the server does not know the meta commands")
                        return error
                    continue
                head = _parse_head(reader, line)
                if head.code == b"MN":
                    return self.errors[0] if self.errors else self.results
                self._head = head
            data = None
            if head.size is not None:
                block = reader.next_block(head.size)
                if block is NEED_DATA:
                    return NEED_DATA
                assert isinstance(block, bytes)
                data = block
            self._head = None
            opaque = head.fields.get("O")
            n = self._index.get(opaque) if isinstance(opaque, bytes) else None
            if n is None or n <= self._last:
                raise reader.fail(
                    f"a quiet reply with opaque {opaque!r}: not sent, answered already, "
                    f"or out of order"[:300]
                )
            self._last = n
            command, key = self._sent[n]
            assert isinstance(opaque, bytes)
            self.results[opaque] = _result(reader, head, command, data, opaque, key)


_MG: Final = (b"mg", None)
# The one reply shape of a quiet get's hit (``mg <key> v f O<opaque> q``), as _parse_head
# reads it: a size, the client flags, the opaque, and nothing else on the line.
_QUIET_HIT = re.compile(rb"VA ([0-9]{1,20}) f([0-9]{1,20}) O([^ \r\n]+)\r\n").match


def _scan_quiet_py(
    buf: bytes,
    pos: int,
    cap: Optional[int],
    opaques: List[bytes],
    last: int,
    sent: List[Tuple[bytes, Optional[bytes]]],
    results: Dict[bytes, MetaResult],
    make: Any,
) -> Tuple[int, int, int, bool]:
    """The pure twin of pymc/speedups.c's ``scan_meta_quiet`` (see there), for the hits of
    a quiet get only (``VA <size> f<flags> O<opaque>`` to an ``mg`` that asked for no key
    back): ``(pos, need, last, done)``. Any other reply is left to ExpectMetaQuiet's loop,
    which judges it; a reply not whole yet is waited for where the loop would wait."""
    count = len(opaques)
    while True:
        hit = _QUIET_HIT(buf, pos)
        if hit is None:
            if buf.startswith(b"MN\r\n", pos):
                return pos + 4, 0, last, True
            if buf.find(b"\r\n", pos) < 0:  # no whole line: wait, unless one is too long
                pending = len(buf) - pos
                if pending - buf.endswith(b"\r") <= MAX_LINE_LENGTH:
                    return pos, pending + 1, last, False
            return pos, 0, last, False
        start = hit.end()
        size = int(hit[1])
        flags = int(hit[2])
        if start - 2 - pos > MAX_LINE_LENGTH or flags >= UINT32:
            return pos, 0, last, False
        if cap is not None and size > cap:
            return pos, 0, last, False
        stop = start + size
        if len(buf) < stop + 2:
            return pos, stop + 2 - pos, last, False
        if buf[stop : stop + 2] != b"\r\n":
            return pos, 0, last, False
        opaque = hit[3]
        n = last + 1
        while n < count and opaques[n] != opaque:
            n += 1
        if n >= count or sent[n] != _MG:
            return pos, 0, last, False
        opaque = opaques[n]
        # (the fields of MetaResult, in order: status, value, cas, ttl, client_flags, size,
        # hit_before, last_access, win, stale, won_elsewhere, opaque, key, number)
        fields = ("hit", buf[start:stop], None, None, flags, None, None, None, False, False)
        results[opaque] = _new_tuple(make, (*fields, False, opaque, None, None))
        last = n
        pos = stop + 2


# The reader ExpectMetaQuiet's loop runs first: pymc/speedups.c's scan_meta_quiet, or
# its pure twin. Each takes the replies it can take whole (well-formed, complete,
# matched, answers their request can get), making of each the MetaResult _result makes,
# and stops before any other, which the loop reads (and judges). None: every reply goes
# through the loop (the reference; tests/unit/protocol/test_speedups_quiet.py checks that
# all agree).
_scan_quiet: Optional[Any] = _scan_quiet_py
#: pymc/protocol/speedups.c's encode_meta_quiet (see :func:`encode_quiet_gets`), or None.
_encode_quiet: Optional[Any] = None
if SPEEDUPS:
    from . import speedups

    _scan_quiet = getattr(speedups, "scan_meta_quiet", _scan_quiet_py)
    _encode_quiet = getattr(speedups, "encode_meta_quiet", None)

#: The opaques of :func:`encode_quiet_gets` count modulo this (+1).
OPAQUE_MASK: Final = 0xFFFFFFF


def encode_quiet_gets(wires: Sequence[bytes], first: int) -> Tuple[bytes, List[bytes]]:
    """``(request, opaques)``: a quiet ``mg`` pipeline of text keys (no base64 one), each
    ``mg <wire> v f O<opaque> q`` (the bytes of :func:`encode_meta_get` with ``value``,
    ``return_client_flags``, ``opaque`` and ``quiet``), then ``mn``. The opaques are
    ``first``, ``first + 1``, ... modulo 2**28 in lowercase hex (``b"%x"``), one per wire.
    Read its replies with :meth:`ExpectMetaQuiet.gets`."""
    if type(first) is not int or first < 0:
        raise ValueError(f"first must be a non-negative int, not {first!r}")
    wires = wires if type(wires) is list else list(wires)
    if _encode_quiet is not None:
        built = _encode_quiet(b"mg", wires, b" v f", first, OPAQUE_MASK)
        if built is not None:
            return built  # type: ignore[no-any-return]
    if wires and not (  # (all checked at once; else one by one, for the error)
        set(map(type, wires)) == {bytes}
        and min(map(len, wires)) > 0
        and max(map(len, wires)) <= MAX_KEY_LENGTH
        and BAD_BYTE(b"".join(wires)) is None
    ):
        for wire in wires:
            wire_key(wire, False)
    opaques = [b"%x" % ((first + n) & OPAQUE_MASK) for n in range(len(wires))]
    lines = [b"mg %s v f O%s q\r\n" % pair for pair in zip(wires, opaques)]
    lines.append(b"mn\r\n")
    return b"".join(lines), opaques


class ExpectMetaEach(Expect):
    """One reply to each of a pipeline of (non-quiet) meta requests, in order: a list of
    their results (:class:`MetaResult` or :class:`~pymc.protocol.ErrorReply`), so that
    even an error line, which carries no opaque, belongs to its request."""

    __slots__ = ("_each", "results")

    def __init__(self, each: Sequence[ExpectMeta]) -> None:
        self._each = list(each)
        self.results: List[object] = []

    def step(self, reader: Reader) -> object:
        results = self.results
        while len(results) < len(self._each):
            result = self._each[len(results)].step(reader)
            if result is NEED_DATA:
                return NEED_DATA
            results.append(result)
            if type(result) is ErrorReply and not result.in_step:
                results.extend([result] * (len(self._each) - len(results)))
        return results
