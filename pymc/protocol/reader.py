"""The reply reader, sans I/O: fed whatever chunks arrive, it hands back complete replies one at
a time, or :data:`NEED_DATA`. A reply that does not parse raises
:class:`~pymc.exceptions.MemcacheProtocolError` and poisons the reader, so the connection
that fed it is thrown away. :class:`CReader` is the compiled twin of :class:`PyReader`.
"""

from __future__ import annotations

import os
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Container,
    Dict,
    Final,
    Iterable,
    List,
    Optional,
    Tuple,
    Union,
)

from ..exceptions import (
    MemcacheProtocolError,
)
from .keys import (
    DIGITS,
    MAX_KEY_LENGTH,
    MAX_LINE_LENGTH,
    MAX_VALUE_BYTES,
    Key,
    validate_key,
    validate_keys_py,
)
from .replies import (
    END,
    NEED_DATA,
    WORDS,
    ClusterConfig,
    ErrorReply,
    NeedData,
    Reply,
    Stat,
    Value,
    Version,
    is_error_line,
    parse_cluster_config,
)


class PyReader:
    """The pure-Python reader, the reference (:data:`Reader` is the one in use).

    Buffers what the server sent and parses it into replies, one per call.

    ``feed()`` only stores bytes; ``next_reply()`` returns the next complete reply, or
    :data:`NEED_DATA`. A data block of known size is gathered without re-copying the
    buffer on every chunk, so a large value costs one join, not one per chunk.

    A ``VALUE``, ``CONFIG`` or meta ``VA`` header announcing a data block of more than
    ``max_block`` bytes (by default :data:`MAX_VALUE_BYTES`; see also
    :data:`MAX_CONFIG_BYTES`) is a protocol error as soon as the header line is parsed,
    before any of the block is buffered. None: no cap.
    """

    __slots__ = (
        "_broken",
        "_buf",
        "_max_block",
        "_need",
        "_parts",
        "_parts_len",
        "_pos",
        "broken",
    )

    def __init__(self, max_block: Optional[int] = MAX_VALUE_BYTES) -> None:
        if max_block is not None:
            if type(max_block) is not int:
                raise TypeError(f"max_block must be an int or None, not {max_block!r}")
            if max_block < 0:
                raise ValueError(f"max_block must not be negative, got {max_block}")
        self._max_block = max_block
        self._buf = b""
        self._pos = 0
        self._parts: List[bytes] = []
        self._parts_len = 0
        self._need = 0  # do not look again before this many bytes are buffered
        self._broken: Optional[MemcacheProtocolError] = None
        #: A reply did not parse (or the server refused the connection): throw it away.
        self.broken = False

    # -- input

    def feed(self, data: bytes) -> None:
        if self._broken is not None:
            raise self._poisoned()
        if not data:
            return
        if self._pos >= len(self._buf) and not self._parts:
            self._buf = data
            self._pos = 0
        else:
            # Only stored: the parts are joined once, when a reply is asked for.
            self._parts.append(data)
            self._parts_len += len(data)
        if self._need and self.buffered >= self._need:
            self._need = 0

    @property
    def buffered(self) -> int:
        """How many received bytes no reply has consumed yet."""
        return len(self._buf) - self._pos + self._parts_len

    # -- output

    def next_reply(self) -> Union[Reply, NeedData]:
        """The next complete reply, or :data:`NEED_DATA`."""
        if self._need:
            if self._broken is not None:
                raise self._poisoned()
            return NEED_DATA
        if self._parts:
            buf = self._joined()
        else:
            buf = self._buf
            if self._pos >= len(buf):
                return NEED_DATA  # nothing buffered (the common case before a recv)
        pos = self._pos
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return self._wait_for_line()
        if end - pos > MAX_LINE_LENGTH:
            raise self._fail(f"reply line longer than {MAX_LINE_LENGTH} bytes")
        line = buf[pos:end]
        word = WORDS.get(line)
        if word is not None:
            self._pos = end + 2
            return word
        if line[:6] == b"VALUE ":
            return self._value(line, end + 2)
        if line[:5] == b"STAT " or line[:5] == b"ITEM ":
            parts = line.split(b" ", 2)
            if len(parts) < 2 or not parts[1]:
                raise self._fail(f"malformed stats line {line[:100]!r}")
            self._pos = end + 2
            return Stat(parts[1], parts[2] if len(parts) == 3 else b"")
        if DIGITS(line) is not None:
            self._pos = end + 2
            return int(line)
        if line[:8] == b"VERSION ":
            self._pos = end + 2
            return Version(line[8:])
        if line[:15] == b"CONFIG cluster ":
            return self._config(line, end + 2)
        if line[:5] == b"ERROR" or line[:12] == b"CLIENT_ERROR" or line[:12] == b"SERVER_ERROR":
            kind, _, message = line.partition(b" ")
            kind = kind.removesuffix(b":")
            if kind not in (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"):
                raise self._fail(f"unexpected reply {line[:100]!r}")
            self._pos = end + 2
            reply = ErrorReply(kind, message.decode("utf-8", "replace"))
            if not reply.in_step:
                # ``ERROR <message>`` (``Too many open connections``) is the server refusing
                # the connection, not an answer to a command: nothing after it is trusted.
                self._fail(f"the server refused the connection: {line[:100]!r}")
            return reply
        raise self._fail(f"unexpected reply {line[:100]!r}")

    def read_values(
        self, wanted: Container[bytes], found: Dict[bytes, Tuple[int, bytes, Optional[bytes]]]
    ) -> Union[bytes, ErrorReply, NeedData]:
        """Parse the answer to ``get``/``gets``/``gat``/``gats`` into ``found``.

        Each complete value goes into ``found`` as ``key: (flags, data, cas)``. Returns
        :data:`END` once the answer is complete, an :class:`ErrorReply` when the server
        refused the command, or :data:`NEED_DATA`. A key that is not in ``wanted``, or
        that is answered twice, is a protocol error: never a value. This is the hot path
        of every read, so it parses in one loop rather than a call per reply.
        """
        if self._need:
            if self._broken is not None:
                raise self._poisoned()
            return NEED_DATA
        buf = self._joined() if self._parts else self._buf
        pos = self._pos
        cap = self._max_block
        while True:
            if not buf.startswith(b"VALUE ", pos):
                if buf.startswith(b"END\r\n", pos):
                    self._pos = pos + 5
                    return END
                break
            end = buf.find(b"\r\n", pos)
            if end < 0 or end - pos > MAX_LINE_LENGTH:
                break
            parts = buf[pos + 6 : end].split(b" ")
            if len(parts) == 3:
                key, flags, size = parts
                cas = None
            elif len(parts) == 4:
                key, flags, size, cas = parts
                if not cas.isdigit() or len(cas) > 20:
                    raise self._fail(f"malformed VALUE line {buf[pos:end][:300]!r}")
            else:
                raise self._fail(f"malformed VALUE line {buf[pos:end][:300]!r}")
            if not flags.isdigit() or not size.isdigit() or len(flags) > 10 or len(size) > 18:
                raise self._fail(f"malformed VALUE line {buf[pos:end][:300]!r}")
            start = end + 2
            stop = start + int(size)
            if cap is not None and stop - start > cap:
                raise self._fail(self._too_big(buf[pos:end], cap))
            if len(buf) < stop + 2:
                self._pos = pos
                self._need = stop + 2 - pos
                return NEED_DATA
            if not buf.startswith(b"\r\n", stop):
                raise self._fail("data block is not followed by CRLF")
            if key not in wanted or key in found:
                raise self._fail(f"the server answered {key!r}, which was not asked for")
            found[key] = (0 if flags == b"0" else int(flags), buf[start:stop], cas)
            pos = stop + 2
        self._pos = pos
        reply = self.next_reply()
        if reply is END or reply is NEED_DATA or type(reply) is ErrorReply:
            return reply
        raise self._fail(f"unexpected reply to a retrieval: {reply!r}"[:200])

    def feed_values(
        self,
        data: bytes,
        wanted: Container[bytes],
        found: Dict[bytes, Tuple[int, bytes, Optional[bytes]]],
    ) -> Union[bytes, ErrorReply, NeedData]:
        """:meth:`feed` then :meth:`read_values`, in one call (the read loop's hot path)."""
        if not self._parts and self._pos >= len(self._buf) and not self._need:
            if self._broken is not None:
                raise self._poisoned()
            self._buf = data
            self._pos = 0
        else:
            self.feed(data)
        return self.read_values(wanted, found)

    def read_until(self, token: bytes) -> Union[bytes, NeedData]:
        """Everything up to ``token`` (which is consumed, not returned), for raw commands."""
        if self._broken is not None:
            raise self._poisoned()
        if not token:
            raise ValueError("read_until needs a non-empty token")
        buf = self._joined()
        end = buf.find(token, self._pos)
        if end < 0:
            return NEED_DATA
        out = buf[self._pos : end]
        self._pos = end + len(token)
        return out

    def next_line(self) -> Union[bytes, NeedData]:
        """The next ``\\r\\n``-terminated line, without its ``\\r\\n``, or :data:`NEED_DATA`.

        For readers of replies :meth:`next_reply` does not know (the meta commands). A line
        longer than ``MAX_LINE_LENGTH`` is a protocol error that poisons the reader.
        """
        if self._need:
            if self._broken is not None:
                raise self._poisoned()
            return NEED_DATA
        buf = self._joined() if self._parts else self._buf
        pos = self._pos
        end = buf.find(b"\r\n", pos)
        if end < 0:
            return self._wait_for_line()
        if end - pos > MAX_LINE_LENGTH:
            raise self._fail(f"reply line longer than {MAX_LINE_LENGTH} bytes")
        self._pos = end + 2
        return buf[pos:end]

    def next_block(self, size: int) -> Union[bytes, NeedData]:
        """Exactly ``size`` bytes followed by ``\\r\\n`` (consumed, not returned), or
        :data:`NEED_DATA`. A block larger than ``max_block``, or not followed by ``\\r\\n``,
        is a protocol error that poisons the reader."""
        if type(size) is not int or size < 0:
            raise ValueError(f"a block size must be a non-negative int, not {size!r}")
        if self._need:
            if self._broken is not None:
                raise self._poisoned()
            return NEED_DATA
        if self._max_block is not None and size > self._max_block:
            raise self._fail(
                f"a data block of {size} bytes, more than the {self._max_block} allowed"
            )
        if self._parts:
            self._joined()
        data = self._block(self._pos, size)
        return NEED_DATA if data is None else data

    def peek_errors(self, limit: int) -> Tuple[List[bytes], bool]:
        """``(lines, more)``: the complete lines buffered next, without their ``\\r\\n``,
        none of them consumed: a run of error lines (``ERROR``, ``CLIENT_ERROR``,
        ``SERVER_ERROR``; at most ``limit``) and the line after it, if complete. ``more``
        is whether bytes follow the last line returned. For the sync marker's reader,
        which looks at what follows error lines before it takes them."""
        if self._broken is not None:
            raise self._poisoned()
        buf = self._joined() if self._parts else self._buf
        pos = self._pos
        lines: List[bytes] = []
        while len(lines) < limit:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if len(buf) - pos - buf.endswith(b"\r") > MAX_LINE_LENGTH:
                    raise self._fail(f"reply line longer than {MAX_LINE_LENGTH} bytes")
                break
            if end - pos > MAX_LINE_LENGTH:
                raise self._fail(f"reply line longer than {MAX_LINE_LENGTH} bytes")
            line = buf[pos:end]
            lines.append(line)
            pos = end + 2
            if not is_error_line(line):
                break  # (what follows may be a data block: never looked at)
        return lines, pos < len(buf)

    def scan(self, scanner: Callable[..., Tuple[Any, ...]], *args: Any) -> Any:
        """Hand the unread bytes to a reader of many replies at once (meta.py's quiet
        pipeline): ``scanner(buf, pos, max_block, *args)`` consumes the complete replies it
        takes from offset ``pos`` of ``buf`` and returns a tuple ``(pos, need, ...)``: the
        offset after them, and how many bytes from there the next reply needs before it
        is worth looking again (0: none; it is left to :meth:`next_line` and
        :meth:`next_block`, which judge it). The reader moves to ``pos`` (and waits for
        ``need`` bytes) and returns the tuple; :data:`NEED_DATA`, without calling the
        scanner, while the reader waits."""
        if self._need:
            if self._broken is not None:
                raise self._poisoned()
            return NEED_DATA
        buf = self._joined() if self._parts else self._buf
        out = scanner(buf, self._pos, self._max_block, *args)
        pos, need = out[0], out[1]
        if not self._pos <= pos <= len(buf) or (need and need <= len(buf) - pos):
            raise ValueError(f"a scanner moved the reader to {pos!r} and asked for {need!r}")
        self._pos = pos
        self._need = need
        return out

    def fail(self, message: str) -> MemcacheProtocolError:
        """Poison the reader (every later call raises) and return the error to raise: for
        readers built on :meth:`next_line` / :meth:`next_block` that find a reply malformed."""
        return self._fail(message)

    # -- internals

    def _joined(self) -> bytes:
        if self._parts:
            self._buf = b"".join([self._buf[self._pos :], *self._parts])
            self._pos = 0
            self._parts = []
            self._parts_len = 0
        self._need = 0
        return self._buf

    def _wait_for_line(self) -> NeedData:
        pending = len(self._buf) - self._pos
        # A final b"\r" may still become the CRLF of a line of exactly MAX_LINE_LENGTH.
        if pending - self._buf.endswith(b"\r") > MAX_LINE_LENGTH:
            raise self._fail(f"reply line longer than {MAX_LINE_LENGTH} bytes")
        self._need = pending + 1
        return NEED_DATA

    def _block(self, start: int, size: int) -> Optional[bytes]:
        """The ``size`` bytes at ``start`` followed by ``\\r\\n``, or None (and _need set)."""
        buf = self._buf
        stop = start + size
        if len(buf) < stop + 2:
            self._need = stop + 2 - self._pos
            return None
        if buf[stop : stop + 2] != b"\r\n":
            raise self._fail("data block is not followed by CRLF")
        self._pos = stop + 2
        return buf[start:stop]

    def _value(self, line: bytes, start: int) -> Union[Value, NeedData]:
        parts = line.split(b" ")
        n = len(parts)
        if (
            n not in (4, 5)
            or not parts[1]
            or DIGITS(parts[2]) is None
            or DIGITS(parts[3]) is None
            or (n == 5 and DIGITS(parts[4]) is None)
        ):
            raise self._fail(f"malformed VALUE line {line[:300]!r}")
        size = int(parts[3])
        if self._max_block is not None and size > self._max_block:
            raise self._fail(self._too_big(line, self._max_block))
        data = self._block(start, size)
        if data is None:
            return NEED_DATA
        return Value(parts[1], int(parts[2]), data, parts[4] if n == 5 else None)

    def _config(self, line: bytes, start: int) -> Union[ClusterConfig, NeedData]:
        parts = line.split(b" ")
        if len(parts) != 4 or DIGITS(parts[2]) is None or DIGITS(parts[3]) is None:
            raise self._fail(f"malformed CONFIG line {line[:100]!r}")
        size = int(parts[3])
        if self._max_block is not None and size > self._max_block:
            raise self._fail(self._too_big(line, self._max_block))
        block = self._block(start, size)
        if block is None:
            return NEED_DATA
        try:
            return parse_cluster_config(block)
        except MemcacheProtocolError as exc:
            raise self._fail(str(exc)) from None

    @staticmethod
    def _too_big(line: bytes, cap: int) -> str:
        return f"a data block larger than the {cap} bytes allowed: {line[:300]!r}"

    def _fail(self, message: str) -> MemcacheProtocolError:
        self._broken = MemcacheProtocolError(message)
        self.broken = True
        self._buf = b""
        self._pos = 0
        self._parts = []
        self._parts_len = 0
        self._need = 1
        return self._broken

    def _poisoned(self) -> MemcacheProtocolError:
        return MemcacheProtocolError(f"connection state is unknown after: {self._broken}")


# --------------------------------------------------------------------------- compiled twins
#
# pymc/speedups.c compiles the value loop of ``read_values`` and the fast path of
# ``validate_keys`` (see setup.py). They keep no state: the reader's buffer, position and
# poisoning stay here, in the same code paths as PyReader's, so the two readers differ only
# in the loop. tests/unit/protocol/test_speedups.py checks them against the pure code, which is the
# reference. ``PYMC_NO_EXTENSIONS=1`` (any value but empty or "0") ignores a built module.


def _no_speedups(*args: object) -> Any:
    raise RuntimeError("pymc's compiled reader is not in use (see pymc.__speedups__)")


_scan_values: Callable[..., Any] = _no_speedups
_check_keys: Callable[..., Any] = _no_speedups
if os.environ.get("PYMC_NO_EXTENSIONS", "") in ("", "0"):
    try:
        from . import speedups
    except ImportError:  # not built (no compiler, or a pure wheel): the pure code runs
        pass
    else:
        if speedups.MAX_LINE_LENGTH == MAX_LINE_LENGTH:  # (else a build older than this file)
            _scan_values = speedups.scan_values
            _check_keys = speedups.check_keys

#: True when the compiled reader and key check are in use (``pymc.__speedups__``).
SPEEDUPS: Final[bool] = _scan_values is not _no_speedups

# What stopped _scan_values (the same numbers as in speedups.c).
_SCAN_END: Final = 0
_SCAN_OTHER: Final = 1
_SCAN_NEED: Final = 2
_SCAN_MALFORMED: Final = 3
_SCAN_TOO_BIG: Final = 4
_SCAN_NO_CRLF: Final = 5
_SCAN_UNWANTED: Final = 6
_SCAN_NOT_BYTES: Final = 7


class CReader(PyReader):
    """:class:`PyReader` with the value loop of :meth:`read_values` compiled: the same
    results, errors and state after every call. Usable only when :data:`SPEEDUPS`."""

    __slots__ = ()

    def read_values(
        self, wanted: Container[bytes], found: Dict[bytes, Tuple[int, bytes, Optional[bytes]]]
    ) -> Union[bytes, ErrorReply, NeedData]:
        if self._need:
            if self._broken is not None:
                raise self._poisoned()
            return NEED_DATA
        buf = self._joined() if self._parts else self._buf
        code, a, b = _scan_values(buf, self._pos, self._max_block, wanted, found)
        if code == _SCAN_END:
            self._pos = a
            return END
        if code == _SCAN_NEED:
            self._pos = a
            self._need = b
            return NEED_DATA
        if code == _SCAN_OTHER:
            self._pos = a
            reply = self.next_reply()
            if reply is END or reply is NEED_DATA or type(reply) is ErrorReply:
                return reply
            raise self._fail(f"unexpected reply to a retrieval: {reply!r}"[:200])
        if code == _SCAN_NOT_BYTES:  # fed a bytearray or a memoryview
            return PyReader.read_values(self, wanted, found)
        if code == _SCAN_UNWANTED:
            raise self._fail(f"the server answered {a!r}, which was not asked for")
        if code == _SCAN_NO_CRLF:
            raise self._fail("data block is not followed by CRLF")
        if code == _SCAN_TOO_BIG:
            raise self._fail(self._too_big(buf[a:b], self._max_block))  # type: ignore[arg-type]
        raise self._fail(f"malformed VALUE line {buf[a:b][:300]!r}")


def validate_keys_c(
    keys: Iterable[Key], prefix: bytes = b"", allow_unicode: bool = False
) -> Dict[bytes, Key]:
    """:func:`validate_keys_py` with its one-scan fast path compiled: the same results and
    errors. Usable only when :data:`SPEEDUPS`."""
    if not isinstance(keys, (list, tuple)):
        keys = list(keys)
    if type(prefix) is not bytes:
        return validate_keys_py(keys, prefix, allow_unicode)
    out: Optional[Dict[bytes, Key]] = _check_keys(keys, prefix, MAX_KEY_LENGTH - len(prefix))
    if out is not None:
        return out
    return {validate_key(key, prefix, allow_unicode): key for key in keys}


#: :func:`validate_key` for many keys at once: ``{prefix + key as bytes: key}``; the
#: compiled :func:`validate_keys_c` when :data:`SPEEDUPS`, else :func:`validate_keys_py`.
validate_keys = validate_keys_c if SPEEDUPS else validate_keys_py

#: The reader in use: :class:`CReader` when :data:`SPEEDUPS`, else :class:`PyReader`.
Reader = PyReader
if not TYPE_CHECKING and SPEEDUPS:
    Reader = CReader
