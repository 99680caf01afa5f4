"""The memcached text protocol, sans I/O: bytes in, replies out; no sockets, no clocks.

Two halves:

* encoders turn a validated command into the exact bytes to send (``encode_*``), and
  :func:`validate_key` refuses every key the server could misread before a byte is sent;
* :class:`Reader` is fed whatever chunks arrive and hands back complete replies one at a
  time from :meth:`Reader.next_reply`, or :data:`NEED_DATA`.

A reply that does not parse raises :class:`~pymc.exceptions.MemcacheProtocolError` and
poisons the reader: every later call raises too, so the connection that fed it must be
thrown away. Nothing here ever guesses.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Container,
    Dict,
    Final,
    Iterable,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
    Union,
)

from ..exceptions import (
    MemcacheClientError,
    MemcacheError,
    MemcacheIllegalInputError,
    MemcacheProtocolError,
    MemcacheServerError,
    MemcacheServerRefusedError,
    MemcacheUnknownCommandError,
)

__all__ = [
    "END",
    "LEGACY_CONFIG_KEY",
    "MAX_CONFIG_BYTES",
    "MAX_KEY_LENGTH",
    "MAX_VALUE_BYTES",
    "MN",
    "NEED_DATA",
    "RULES",
    "SPEEDUPS",
    "CReader",
    "ClusterConfig",
    "ClusterNode",
    "ErrorReply",
    "Expect",
    "ExpectConfig",
    "ExpectLegacyConfig",
    "ExpectRaw",
    "ExpectReplies",
    "ExpectStats",
    "ExpectSync",
    "ExpectValues",
    "PyReader",
    "Reader",
    "Reply",
    "Rule",
    "Stat",
    "Value",
    "Version",
    "asks_for_auth",
    "encode_auth",
    "encode_auth_probe",
    "encode_cache_memlimit",
    "encode_config_get",
    "encode_delete",
    "encode_flush_all",
    "encode_incr_decr",
    "encode_legacy_config_get",
    "encode_quit",
    "encode_retrieval",
    "encode_shutdown",
    "encode_stats",
    "encode_storage",
    "encode_sync",
    "encode_touch",
    "encode_verbosity",
    "encode_version",
    "expect_auth_probe",
    "key_bytes",
    "parse_cluster_config",
    "validate_key",
    "validate_keys",
    "validate_keys_c",
    "validate_keys_py",
]

Key = Union[str, bytes]

MAX_KEY_LENGTH: Final = 250
#: A reply line longer than this, with no ``\r\n`` in sight, is garbage, not a slow server.
MAX_LINE_LENGTH: Final = 8192
#: The largest data block (``VALUE``, ``CONFIG`` or meta ``VA``) a :class:`Reader` accepts by
#: default: memcached's largest item (``-I 1024m``) is 1 GiB, header included, so no real
#: value is longer. A header announcing more is a protocol error as soon as it is parsed,
#: instead of buffering whatever a broken server or proxy sends until the timeout.
MAX_VALUE_BYTES: Final = 1 << 30
#: A sane ``max_block`` for a :class:`Reader` reading cluster configs: a real one is a few
#: dozen bytes per node, so a block larger than this is an endpoint gone wrong.
MAX_CONFIG_BYTES: Final = 1 << 20
#: The key pre-1.4.14 ElastiCache engines answer a ``get`` of with the cluster config.
LEGACY_CONFIG_KEY: Final = b"AmazonElastiCache:cluster"
_UINT32: Final = 1 << 32
_UINT64: Final = 1 << 64

# Bytes the server treats as separators or terminators: control characters, space, DEL.
_BAD_KEY_BYTE = re.compile(rb"[\x00-\x20\x7f]").search
_CLEAN_PREFIXES: Set[bytes] = set()  # prefixes already seen to hold no bad byte
_DIGITS = re.compile(rb"[0-9]{1,20}").fullmatch


# --------------------------------------------------------------------------- keys


def key_bytes(key: Key, allow_unicode: bool = False) -> bytes:
    """``key`` as bytes: a ``str`` as ASCII, or as UTF-8 with ``allow_unicode``; else
    :class:`MemcacheIllegalInputError`. (Only the encoding: :func:`validate_key` checks the
    rest.)"""
    if isinstance(key, str):
        try:
            return key.encode("ascii")
        except UnicodeEncodeError:
            if not allow_unicode:
                raise MemcacheIllegalInputError(
                    f"non-ASCII key {key!r}: pass allow_unicode_keys=True to store it as UTF-8"
                ) from None
            try:
                return key.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise MemcacheIllegalInputError(f"key {key!r} is not valid Unicode") from exc
    if isinstance(key, bytes):
        return key
    raise MemcacheIllegalInputError(f"a key must be str or bytes, not {type(key).__name__}")


def validate_key(key: Key, prefix: bytes = b"", allow_unicode: bool = False) -> bytes:
    """Return ``prefix + key`` as bytes, or raise :class:`MemcacheIllegalInputError`.

    A key is ``str`` (ASCII, or UTF-8 with ``allow_unicode``) or ``bytes``; with its prefix
    it is 1 to 250 bytes long and holds no space, control character or DEL, so it can never
    split into two arguments or smuggle a second command into the request.
    """
    # Fast path: an ASCII str with no control character and no space (isprintable()
    # refuses 0x00-0x1f and 0x7f).
    if (
        type(key) is str
        and key.isascii()
        and key.isprintable()
        and " " not in key
        and (not prefix or prefix in _CLEAN_PREFIXES)
    ):
        raw = prefix + key.encode("ascii") if prefix else key.encode("ascii")
        if 0 < len(raw) <= MAX_KEY_LENGTH:
            return raw
    raw = key_bytes(key, allow_unicode)
    if prefix:
        raw = prefix + raw
    if not raw:
        raise MemcacheIllegalInputError("a key must not be empty")
    if len(raw) > MAX_KEY_LENGTH:
        raise MemcacheIllegalInputError(
            f"key is {len(raw)} bytes long (with its prefix); memcached allows at most "
            f"{MAX_KEY_LENGTH}: {raw[:40]!r}..."
        )
    if _BAD_KEY_BYTE(raw) is not None:
        raise MemcacheIllegalInputError(f"key {raw!r} contains whitespace or a control character")
    if prefix and len(_CLEAN_PREFIXES) < 256:
        _CLEAN_PREFIXES.add(prefix)  # it passed as part of raw: no bad byte in it
    return raw


def validate_keys_py(
    keys: Iterable[Key], prefix: bytes = b"", allow_unicode: bool = False
) -> Dict[bytes, Key]:
    """:func:`validate_key` for many keys at once: ``{prefix + key as bytes: key}``
    (the pure-Python :func:`validate_keys`, the reference).

    The common case (ASCII str or bytes keys of legal length) is checked with one scan of
    all the keys together; anything unusual takes the one-by-one path for its error.
    """
    if not isinstance(keys, (list, tuple)):
        keys = list(keys)
    out: Dict[bytes, Key] = {}
    limit = MAX_KEY_LENGTH - len(prefix)
    try:
        for key in keys:
            raw = key.encode("ascii") if type(key) is str else key
            if type(raw) is not bytes or not 0 < len(raw) <= limit:
                raise ValueError
            out[prefix + raw if prefix else raw] = key
        if _BAD_KEY_BYTE(b"".join(out)) is None:
            return out
    except (UnicodeEncodeError, ValueError):
        pass
    return {validate_key(key, prefix, allow_unicode): key for key in keys}


def _int_arg(value: object, name: str, low: int, high: int) -> bytes:
    if type(value) is not int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise MemcacheIllegalInputError(
                f"{name} must be an int, not {type(value).__name__}: {value!r}"
            )
        value = int(value)
    if not low <= value < high:
        raise MemcacheIllegalInputError(f"{name} must be in [{low}, {high}), got {value}")
    return b"%d" % value


def _cas_arg(cas: object) -> bytes:
    if isinstance(cas, (bytes, str)):
        raw = cas.encode("ascii", "replace") if isinstance(cas, str) else cas
        if _DIGITS(raw) is None or int(raw) >= _UINT64:
            raise MemcacheIllegalInputError(f"cas must be a 64-bit unsigned number: {cas!r}")
        return raw
    return _int_arg(cas, "cas", 0, _UINT64)


def _token(arg: Union[str, bytes], what: str) -> bytes:
    try:
        raw = arg.encode("ascii") if isinstance(arg, str) else arg
    except UnicodeEncodeError:
        raise MemcacheIllegalInputError(f"non-ASCII {what} argument: {arg!r}") from None
    if not isinstance(raw, bytes) or not raw or _BAD_KEY_BYTE(raw) is not None:
        raise MemcacheIllegalInputError(f"bad {what} argument: {arg!r}")
    return raw


# --------------------------------------------------------------------------- encoders

_NOREPLY: Final = b" noreply"
_EXPIRE_LOW: Final = -(1 << 31)
_EXPIRE_HIGH: Final = 1 << 31


def encode_storage(
    command: bytes,
    key: bytes,
    data: bytes,
    flags: int = 0,
    expire: int = 0,
    noreply: bool = False,
    cas: object = None,
) -> bytes:
    """``set|add|replace|append|prepend|cas`` of an already validated key."""
    if (
        type(flags) is int
        and type(expire) is int
        and 0 <= flags < _UINT32
        and _EXPIRE_LOW <= expire < _EXPIRE_HIGH
    ):
        head = b"%s %s %d %d %d" % (command, key, flags, expire, len(data))
    else:  # the slow path says what is wrong
        head = b"%s %s %s %s %d" % (
            command,
            key,
            _int_arg(flags, "flags", 0, _UINT32),
            _int_arg(expire, "expire", _EXPIRE_LOW, _EXPIRE_HIGH),
            len(data),
        )
    if cas is not None:
        head += b" " + _cas_arg(cas)
    if noreply:
        head += _NOREPLY
    return head + b"\r\n" + data + b"\r\n"


def encode_retrieval(command: bytes, keys: Sequence[bytes], expire: Optional[int] = None) -> bytes:
    """``get|gets`` of validated keys, or ``gat|gats`` with an ``expire``."""
    if expire is not None:
        command += b" " + _int_arg(expire, "expire", _EXPIRE_LOW, _EXPIRE_HIGH)
    return command + b" " + b" ".join(keys) + b"\r\n"


def encode_delete(key: bytes, noreply: bool = False) -> bytes:
    return b"delete " + key + (_NOREPLY if noreply else b"") + b"\r\n"


def encode_incr_decr(command: bytes, key: bytes, delta: int, noreply: bool = False) -> bytes:
    return b"%s %s %s%s\r\n" % (
        command,
        key,
        _int_arg(delta, "value", 0, _UINT64),
        _NOREPLY if noreply else b"",
    )


def encode_touch(key: bytes, expire: int, noreply: bool = False) -> bytes:
    return b"touch %s %s%s\r\n" % (
        key,
        _int_arg(expire, "expire", _EXPIRE_LOW, _EXPIRE_HIGH),
        _NOREPLY if noreply else b"",
    )


def encode_stats(*args: Union[str, bytes]) -> bytes:
    return b" ".join([b"stats", *(_token(a, "stats") for a in args)]) + b"\r\n"


def encode_version() -> bytes:
    return b"version\r\n"


def encode_verbosity(level: int, noreply: bool = False) -> bytes:
    return b"verbosity %s%s\r\n" % (
        _int_arg(level, "level", 0, _UINT32),
        _NOREPLY if noreply else b"",
    )


def encode_cache_memlimit(megabytes: int, noreply: bool = False) -> bytes:
    return b"cache_memlimit %s%s\r\n" % (
        _int_arg(megabytes, "memlimit", 0, _UINT32),
        _NOREPLY if noreply else b"",
    )


def encode_flush_all(delay: int = 0, noreply: bool = False) -> bytes:
    return b"flush_all %s%s\r\n" % (
        _int_arg(delay, "delay", 0, _EXPIRE_HIGH),
        _NOREPLY if noreply else b"",
    )


def encode_quit() -> bytes:
    return b"quit\r\n"


def encode_shutdown(graceful: bool = False) -> bytes:
    return b"shutdown graceful\r\n" if graceful else b"shutdown\r\n"


def encode_config_get(name: Union[str, bytes] = b"cluster") -> bytes:
    return b"config get " + _token(name, "config") + b"\r\n"


def encode_legacy_config_get() -> bytes:
    """The cluster config request of engines older than 1.4.14 (read by
    :class:`ExpectLegacyConfig`)."""
    return b"get " + LEGACY_CONFIG_KEY + b"\r\n"


#: The key of ASCII auth's ``set`` (ignored by a server with ``-Y``; see encode_auth_probe).
AUTH_KEY = b"auth"


def encode_auth(username: Union[str, bytes], password: Union[str, bytes]) -> bytes:
    """memcached's ASCII authentication (``memcached -Y``): a ``set`` whose data is
    ``"<username> <password>"``. The key is ignored by the server."""
    user = _token(username, "username")
    try:
        secret = password.encode("utf-8") if isinstance(password, str) else password
    except UnicodeEncodeError:
        raise MemcacheIllegalInputError("a password must be valid Unicode") from None
    if not isinstance(secret, bytes) or not secret or b"\r\n" in secret:
        raise MemcacheIllegalInputError("a password must be non-empty and hold no CRLF")
    return encode_storage(b"set", AUTH_KEY, user + b" " + secret)


def encode_auth_probe() -> bytes:
    """The request sent before the credentials, read with :func:`expect_auth_probe` and
    judged by :func:`asks_for_auth`: ``get auth``. memcached ``-Y`` answers every command
    of a connection not yet authenticated with ``CLIENT_ERROR unauthenticated`` (and drops
    whatever was pipelined behind it, so the credentials go out only after the answer). A
    server without ``-Y`` answers normally: sent to it, the credentials would be stored as
    an item named ``auth``. The probe names that key, so a proxy (twemproxy, mcrouter)
    routes it to the backend the credentials would go to, not to whichever backend it
    picks for a keyless command such as ``version``."""
    return b"get " + AUTH_KEY + b"\r\n"


def expect_auth_probe() -> Expect:
    """The reader of the reply to :func:`encode_auth_probe`: the items found (a dict), or
    an :class:`ErrorReply`."""
    return ExpectValues((AUTH_KEY,))


def asks_for_auth(reply: object) -> bool:
    """Whether the answer to :func:`encode_auth_probe` asks for the credentials: a
    ``CLIENT_ERROR`` to a ``get`` of a valid key can only refuse the client itself.
    Anything else (the items found, ``ERROR``, a ``SERVER_ERROR`` from a proxy) does not,
    and the credentials must not be sent."""
    return type(reply) is ErrorReply and reply.kind == b"CLIENT_ERROR"


# --------------------------------------------------------------------------- replies


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


#: :meth:`Reader.next_reply` returns this when the buffered bytes hold no complete reply.
NEED_DATA: Final = _NeedData()


class Value(NamedTuple):
    """``VALUE <key> <flags> <bytes> [<cas>]`` and its data block."""

    key: bytes
    flags: int
    data: bytes
    cas: Optional[bytes]


class Stat(NamedTuple):
    """One ``STAT <name> <value>`` (or ``ITEM ...``) line of a ``stats`` block."""

    name: bytes
    value: bytes


class Version(NamedTuple):
    version: bytes


class ClusterNode(NamedTuple):
    hostname: str
    ip: str
    port: int


class ClusterConfig(NamedTuple):
    """An ElastiCache ``config get cluster`` answer: its version and node list."""

    version: int
    nodes: Tuple[ClusterNode, ...]


class ErrorReply(NamedTuple):
    """``ERROR``, ``CLIENT_ERROR <msg>`` or ``SERVER_ERROR <msg>``: the server refused
    the command but the connection is still in step with it."""

    kind: bytes
    message: str

    @property
    def in_step(self) -> bool:
        """False when the server refused the connection itself (memcached's ``ERROR Too
        many open connections``, sent before it hangs up): nothing more can be read."""
        return self.kind != b"ERROR" or not self.message.startswith("Too many open connections")

    def exception(self, command: str = "") -> MemcacheError:
        where = f" (to {command})" if command else ""
        if self.kind == b"CLIENT_ERROR":
            return MemcacheClientError(f"{self.message}{where}")
        if self.kind == b"SERVER_ERROR":
            return MemcacheServerError(f"{self.message}{where}")
        if self.message:
            refused = MemcacheServerRefusedError(f"ERROR {self.message}{where}")
            if not self.in_step:
                refused.in_step = False
            return refused
        return MemcacheUnknownCommandError(f"ERROR{where}")


def _is_error_line(line: bytes) -> bool:
    return line[:5] == b"ERROR" or line[:12] in (b"CLIENT_ERROR", b"SERVER_ERROR")


# The fixed one-word replies; the reader hands back these very objects.
END: Final = b"END"
STORED: Final = b"STORED"
NOT_STORED: Final = b"NOT_STORED"
EXISTS: Final = b"EXISTS"
NOT_FOUND: Final = b"NOT_FOUND"
DELETED: Final = b"DELETED"
TOUCHED: Final = b"TOUCHED"
OK: Final = b"OK"
RESET: Final = b"RESET"
#: The meta no-op's answer (``mn``): the marker a connection syncs on after ``noreply``.
MN: Final = b"MN"
_WORDS = {
    w: w for w in (END, STORED, NOT_STORED, EXISTS, NOT_FOUND, DELETED, TOUCHED, OK, RESET, MN)
}

Reply = Union[bytes, int, Value, Stat, Version, ClusterConfig, ErrorReply]


def _bad_config(block: bytes, why: str) -> MemcacheProtocolError:
    return MemcacheProtocolError(f"malformed cluster config ({why}): {block[:200]!r}")


def _cluster_node(entry: bytes) -> ClusterNode:
    """One ``<host>|<ip>|<port>`` entry, or MemcacheProtocolError."""
    fields = entry.split(b"|")
    if len(fields) != 3:
        raise MemcacheProtocolError(f"malformed cluster node {entry[:100]!r}")
    host, ip, port = fields
    # (No whitespace can be left in an entry: the node line was split on it.)
    if not host or _BAD_KEY_BYTE(host) is not None or not host.isascii():
        raise MemcacheProtocolError(f"bad hostname in cluster node {entry[:100]!r}")
    if _DIGITS(port) is None or not 0 < int(port) < 65536:
        raise MemcacheProtocolError(f"bad port in cluster node {entry[:100]!r}")
    if ip:
        try:
            # (ipaddress takes any character in an IPv6 scope id: not a control one here.)
            if not ip.isascii() or _BAD_KEY_BYTE(ip) is not None:
                raise ValueError
            ipaddress.ip_address(ip.decode("ascii"))
        except ValueError:
            raise MemcacheProtocolError(f"bad ip in cluster node {entry[:100]!r}") from None
    return ClusterNode(host.decode("ascii"), ip.decode("ascii"), int(port))


def parse_cluster_config(block: bytes) -> ClusterConfig:
    """Parse the data block of ``CONFIG cluster`` (or of the legacy
    ``AmazonElastiCache:cluster`` value): ``<version>\\n<host>|<ip>|<port> ...\\n``.

    Tolerant as the AWS clients are: lines may end in ``\\r\\n`` or ``\\n``; blank lines,
    spaces and tabs around the lines and between the nodes are ignored. The ip may be an
    IPv4 or IPv6 literal, or empty (connect by hostname; kept as ``""``).

    Strict where it matters: exactly two non-blank lines, the last one ended by a newline
    (so a truncated payload never passes); the version a non-negative integer; every node
    exactly ``host|ip|port`` with a non-empty ASCII hostname, a valid or empty ip and a port
    in 1..65535; at least one node and no host:port twice. Anything off raises
    :class:`MemcacheProtocolError` for the whole config: a partial node list is never
    returned.
    """
    lines = block.split(b"\n")
    if lines[-1].strip():
        raise _bad_config(block, "not ended by a newline")
    content = [line for line in (raw.strip() for raw in lines) if line]
    if len(content) != 2:
        raise _bad_config(block, "not a version line and a node line")
    version, node_line = content
    if _DIGITS(version) is None:
        raise _bad_config(block, "bad version")
    nodes = [_cluster_node(entry) for entry in node_line.split()]
    seen = set()
    for node in nodes:
        where = (node.hostname.lower(), node.port)
        if where in seen:
            raise MemcacheProtocolError(f"cluster node {node.hostname}:{node.port} listed twice")
        seen.add(where)
    return ClusterConfig(int(version), tuple(nodes))


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

    def next_reply(self) -> Union[Reply, _NeedData]:
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
        word = _WORDS.get(line)
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
        if _DIGITS(line) is not None:
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
    ) -> Union[bytes, ErrorReply, _NeedData]:
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
    ) -> Union[bytes, ErrorReply, _NeedData]:
        """:meth:`feed` then :meth:`read_values`, in one call (the read loop's hot path)."""
        if not self._parts and self._pos >= len(self._buf) and not self._need:
            if self._broken is not None:
                raise self._poisoned()
            self._buf = data
            self._pos = 0
        else:
            self.feed(data)
        return self.read_values(wanted, found)

    def read_until(self, token: bytes) -> Union[bytes, _NeedData]:
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

    def next_line(self) -> Union[bytes, _NeedData]:
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

    def next_block(self, size: int) -> Union[bytes, _NeedData]:
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
            if not _is_error_line(line):
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

    def _wait_for_line(self) -> _NeedData:
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

    def _value(self, line: bytes, start: int) -> Union[Value, _NeedData]:
        parts = line.split(b" ")
        n = len(parts)
        if (
            n not in (4, 5)
            or not parts[1]
            or _DIGITS(parts[2]) is None
            or _DIGITS(parts[3]) is None
            or (n == 5 and _DIGITS(parts[4]) is None)
        ):
            raise self._fail(f"malformed VALUE line {line[:300]!r}")
        size = int(parts[3])
        if self._max_block is not None and size > self._max_block:
            raise self._fail(self._too_big(line, self._max_block))
        data = self._block(start, size)
        if data is None:
            return NEED_DATA
        return Value(parts[1], int(parts[2]), data, parts[4] if n == 5 else None)

    def _config(self, line: bytes, start: int) -> Union[ClusterConfig, _NeedData]:
        parts = line.split(b" ")
        if len(parts) != 4 or _DIGITS(parts[2]) is None or _DIGITS(parts[3]) is None:
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
# in the loop. tests/test_speedups.py checks them against the pure code, which is the
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
    ) -> Union[bytes, ErrorReply, _NeedData]:
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


# --------------------------------------------------------------------------- what replies mean
#
# One table says, for every command, which replies it may get and what each means. A reply
# outside that set is a protocol error (the reader is poisoned, so the connection is
# dropped); an ErrorReply is always accepted, since the server is still in step, and is
# turned into its exception by ``Rule.result``. Every client, and the cluster fan-out,
# reads replies through the ``Expect*`` readers below and interprets them through these
# rules, so the decision is made once.


class Rule:
    """What one command may get back, and what each reply means."""

    __slots__ = ("command", "kinds", "meanings")

    def __init__(
        self, command: str, meanings: Dict[bytes, object], kinds: Tuple[type, ...] = ()
    ) -> None:
        self.command = command
        self.meanings = meanings  # fixed word -> the command's result
        self.kinds = kinds  # reply types accepted as they are (an int, a Version)

    def accepts(self, reply: object) -> bool:
        return reply in self.meanings or type(reply) in self.kinds or type(reply) is ErrorReply

    def result(self, reply: object) -> object:
        """The command's result for an accepted reply; an ErrorReply raises."""
        if type(reply) is ErrorReply:
            raise reply.exception(self.command)
        if isinstance(reply, Version):
            return reply.version
        if type(reply) in self.kinds:
            return reply
        return self.meanings[reply]  # type: ignore[index]

    def __repr__(self) -> str:
        return f"<Rule {self.command}>"


def _stored(command: str) -> Rule:
    return Rule(command, {STORED: True, NOT_STORED: False})


#: command name -> its Rule (the storage commands, ``cas``, ``delete``, ``touch``, ``incr``,
#: ``decr`` and the administrative ones that answer ``OK``).
RULES: Dict[str, Rule] = {
    "set": _stored("set"),
    "add": _stored("add"),
    "replace": _stored("replace"),
    "append": _stored("append"),
    "prepend": _stored("prepend"),
    "cas": Rule("cas", {STORED: True, EXISTS: False, NOT_FOUND: None}),
    "delete": Rule("delete", {DELETED: True, NOT_FOUND: False}),
    "touch": Rule("touch", {TOUCHED: True, NOT_FOUND: False}),
    "incr": Rule("incr", {NOT_FOUND: None}, (int,)),
    "decr": Rule("decr", {NOT_FOUND: None}, (int,)),
    "flush_all": Rule("flush_all", {OK: True}),
    "verbosity": Rule("verbosity", {OK: True}),
    "cache_memlimit": Rule("cache_memlimit", {OK: True}),
    "version": Rule("version", {}, (Version,)),
    "auth": Rule("auth", {STORED: True}),
    "shutdown": Rule("shutdown", {OK: None}),
}


class Expect:
    """Reads the reply to one request from a :class:`Reader`: ``step(reader)`` returns the
    finished result, or :data:`NEED_DATA` (call it again after feeding more bytes). A
    reply the request cannot have is a protocol error that poisons the reader."""

    __slots__ = ()

    def step(self, reader: Reader) -> object:  # pragma: no cover - abstract
        raise NotImplementedError


class ExpectReplies(Expect):
    """``count`` one-line replies, each one ``rule`` accepts: a list of them."""

    __slots__ = ("count", "replies", "rule")

    def __init__(self, rule: Rule, count: int = 1) -> None:
        self.rule = rule
        self.count = count
        self.replies: List[Reply] = []

    def step(self, reader: Reader) -> object:
        replies = self.replies
        accepts = self.rule.accepts
        while len(replies) < self.count:
            reply = reader.next_reply()
            if reply is NEED_DATA:
                return NEED_DATA
            if not accepts(reply):
                raise reader._fail(f"unexpected reply to {self.rule.command}: {reply!r}"[:300])
            replies.append(reply)  # type: ignore[arg-type]
            if type(reply) is ErrorReply and not reply.in_step:
                # The server refused the connection: nothing more will come, and this is
                # the answer to every command still unanswered.
                replies.extend([reply] * (self.count - len(replies)))
        return replies


class ExpectValues(Expect):
    """The answer to one ``get``/``gets``/``gat``/``gats``: the items go into ``found``
    (``raw key: (flags, data, cas)``); the result is ``found``, or an :class:`ErrorReply`.

    ``wanted`` holds the keys of *this* request; ``found`` may be shared by the passes of a
    large multi-get, so a key answered twice, in any pass, is a protocol error. With
    ``cas`` every value must carry its cas token.
    """

    __slots__ = ("cas", "found", "wanted")

    def __init__(
        self,
        wanted: Container[bytes],
        found: Optional[Dict[bytes, Tuple[int, bytes, Optional[bytes]]]] = None,
        cas: bool = False,
    ) -> None:
        self.wanted = wanted
        self.found: Dict[bytes, Tuple[int, bytes, Optional[bytes]]] = {} if found is None else found
        self.cas = cas

    def step(self, reader: Reader) -> object:
        if not reader.buffered:
            return NEED_DATA  # (the common first call, before anything was received)
        before = len(self.found)
        status = reader.read_values(self.wanted, self.found)
        if status is NEED_DATA:
            return NEED_DATA
        if type(status) is ErrorReply:
            if len(self.found) != before:
                raise reader._fail(f"an error in the middle of a retrieval: {status!r}")
            return status
        if self.cas:
            for raw, item in self.found.items():
                if item[2] is None:
                    raise reader._fail(f"a value without its cas token: {raw!r}")
        return self.found


class ExpectStats(Expect):
    """A ``stats`` block: ``{name: value}`` up to ``END``; ``{}`` for the sub-commands that
    answer ``OK`` or ``RESET``; or an :class:`ErrorReply`."""

    __slots__ = ("stats",)

    def __init__(self) -> None:
        self.stats: Dict[bytes, bytes] = {}

    def step(self, reader: Reader) -> object:
        stats = self.stats
        while True:
            reply = reader.next_reply()
            if reply is NEED_DATA:
                return NEED_DATA
            if type(reply) is Stat:
                stats[reply.name] = reply.value
            elif reply is END or ((reply is OK or reply is RESET) and not stats):
                return stats
            elif type(reply) is ErrorReply and not stats:
                return reply
            else:
                raise reader._fail(f"unexpected reply to stats: {reply!r}"[:300])


class ExpectConfig(Expect):
    """``CONFIG cluster`` and its ``END``: a :class:`ClusterConfig`, or an ErrorReply."""

    __slots__ = ("config",)

    def __init__(self) -> None:
        self.config: Optional[ClusterConfig] = None

    def step(self, reader: Reader) -> object:
        if self.config is None:
            reply = reader.next_reply()
            if reply is NEED_DATA or type(reply) is ErrorReply:
                return reply
            if type(reply) is not ClusterConfig:
                raise reader._fail(f"unexpected reply to config get: {reply!r}"[:300])
            self.config = reply
        end = reader.next_reply()
        if end is NEED_DATA:
            return NEED_DATA
        if end is not END:
            raise reader._fail("a CONFIG block not followed by END")
        return self.config


class ExpectLegacyConfig(Expect):
    """The answer to :func:`encode_legacy_config_get` (engines older than 1.4.14): the
    ``AmazonElastiCache:cluster`` value parsed into a :class:`ClusterConfig`; None when the
    key is missing (a plain memcached: just ``END``); or an ErrorReply. A value for another
    key, a second value, or a payload that does not parse is a protocol error."""

    __slots__ = ("config",)

    def __init__(self) -> None:
        self.config: Optional[ClusterConfig] = None

    def step(self, reader: Reader) -> object:
        if self.config is None:
            reply = reader.next_reply()
            if reply is NEED_DATA or reply is END or type(reply) is ErrorReply:
                return None if reply is END else reply
            if type(reply) is not Value:
                raise reader._fail(f"unexpected reply to the config get: {reply!r}"[:300])
            if reply.key != LEGACY_CONFIG_KEY:
                raise reader._fail(f"the server answered {reply.key[:100]!r}, not the config")
            try:
                self.config = parse_cluster_config(reply.data)
            except MemcacheProtocolError as exc:
                raise reader._fail(str(exc)) from None
        end = reader.next_reply()
        if end is NEED_DATA:
            return NEED_DATA
        if end is not END:
            raise reader._fail(f"the config value not followed by END: {end!r}"[:300])
        return self.config


class ExpectRaw(Expect):
    """Everything up to ``token`` (consumed, not returned), for ``raw_command``."""

    __slots__ = ("token",)

    def __init__(self, token: bytes) -> None:
        self.token = token

    def step(self, reader: Reader) -> object:
        return reader.read_until(self.token)


#: How many error lines in a row the sync marker's reader looks through to find what follows.
_SYNC_LOOKAHEAD: Final = 64


class ExpectSync(Expect):
    """Everything up to and including the answer to the sync marker (:func:`encode_sync`,
    ``version``) that a connection sends ahead of its next request after ``noreply``
    commands. The result is that answer.

    Before the answer come only the error lines (if any) that the noreply commands drew:
    they are collected in ``errors``, never raised. The answer is a ``VERSION`` line from
    memcached and from proxies that answer ``version`` themselves (mcrouter). A proxy that
    relays ``version`` to one backend (twemproxy) answers it with an error line when that
    backend is down; such a proxy drops whatever its backends answer to noreply commands,
    so no error line of theirs comes before it. An error line is therefore told apart by
    what follows it (looked at, not consumed):

    * ``VERSION``: the error was a noreply command's; the marker's answer follows.
    * a reply that is no error line: that is the next request's reply, so the error was
      the marker's own answer (returned; the connection is in step).
    * another error line, then nothing decisive buffered (``follows``: a request was sent
      behind the marker): either both are noreply errors and ``VERSION`` is still to come,
      or the second is the next request's own error, as from a proxy whose backends are
      down. Waiting could be forever, so neither is assumed: ``unsure`` is set, the second
      line is consumed into ``taken`` (the caller raises it and closes the connection, so
      a late ``VERSION`` can never answer a later request).
    * nothing more, when no request follows the marker (``follows=False``): the same
      doubt, decided the same way (``unsure``; the caller closes the connection).

    A reply that is neither an error line nor ``VERSION`` before the answer is a protocol
    error. ``ERROR Too many open connections`` (not in step) is returned at once.
    """

    __slots__ = ("errors", "follows", "held", "taken", "unsure")

    def __init__(self, follows: bool = True) -> None:
        self.follows = follows
        self.errors: List[ErrorReply] = []
        self.held: Optional[ErrorReply] = None  # an error line not yet known to be whose
        self.taken: Optional[ErrorReply] = None
        self.unsure = False

    def step(self, reader: Reader) -> object:
        while True:
            held = self.held
            if held is None:
                # Nothing pending: the next reply is the answer or an error line, as the
                # reader parses it (no look ahead: the common case costs what it did).
                reply = reader.next_reply()
                if reply is NEED_DATA or type(reply) is Version:
                    return reply
                if type(reply) is not ErrorReply:
                    raise reader._fail(f"unexpected reply before the sync marker: {reply!r}"[:300])
                if not reply.in_step:
                    return reply
                if not self.follows and not reader.buffered:
                    self.unsure = True  # (nothing follows the marker, and nothing more came)
                    return reply
                self.held = reply
                continue
            lines, more = reader.peek_errors(_SYNC_LOOKAHEAD)
            if not lines:
                return NEED_DATA  # (something always follows: the answer, or the next reply)
            first = lines[0]
            if first[:8] == b"VERSION ":
                self.errors.append(held)  # a noreply command's; the answer is next
                self.held = None
                continue
            if not _is_error_line(first):
                return held  # the marker's own answer; ``first`` begins the next reply
            # Two error lines in a row: what follows them decides.
            after = next((line for line in lines if not _is_error_line(line)), None)
            if after is None:
                if more and len(lines) < _SYNC_LOOKAHEAD:
                    return NEED_DATA  # (an incomplete line: what it is comes next)
                # Nothing decisive buffered: see the class notes.
                self.unsure = True
                if self.follows:
                    taken = reader.next_reply()
                    assert type(taken) is ErrorReply
                    self.taken = taken
                return held
            if after[:8] == b"VERSION ":
                self.errors.append(held)  # noreply errors, all of them
                self.held = None
                continue
            return held  # the marker's answer; the next reply begins with an error


def encode_sync() -> bytes:
    """The sync marker's request. ``version`` rather than the meta no-op ``mn``: every
    server and proxy knows it (twemproxy closes the connection on ``mn``), and its answer
    cannot be mistaken for an error line of an earlier command (a server that claims 1.6
    but refuses ``mn`` answers a bare ``ERROR``, exactly what a refused noreply command
    would send). When a proxy answers it with an error line, :class:`ExpectSync` tells
    that line from a noreply command's by what follows it."""
    return b"version\r\n"
