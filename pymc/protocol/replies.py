"""The text protocol's replies, sans I/O: the reply types a reader hands back, the reply words,
and the parsing of an ElastiCache cluster configuration.
"""

from __future__ import annotations

import ipaddress
from typing import (
    Final,
    NamedTuple,
    Optional,
    Tuple,
    Union,
)

from ..exceptions import (
    MemcacheClientError,
    MemcacheError,
    MemcacheProtocolError,
    MemcacheServerError,
    MemcacheServerRefusedError,
    MemcacheUnknownCommandError,
)
from .keys import (
    BAD_KEY_BYTE,
    DIGITS,
)

# --------------------------------------------------------------------------- replies


class NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


#: :meth:`Reader.next_reply` returns this when the buffered bytes hold no complete reply.
NEED_DATA: Final = NeedData()


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
    the command but the connection is still in step with it (unless ``in_step`` says
    otherwise). ``closes``: what the reply answered makes the server close the connection
    after it (set by the reader of that reply, :mod:`pymc.protocol.expect`, which knows the
    request; see :func:`~pymc.protocol.expect.closes_after`)."""

    kind: bytes
    message: str
    closes: bool = False

    @property
    def in_step(self) -> bool:
        """False when the connection is unusable after this reply: the server refused the
        connection itself (memcached's ``ERROR Too many open connections``, sent before it
        hangs up), or closes it after this answer (``closes``). The transports then close
        it before the error leaves, so the next command goes out on a new connection."""
        if self.closes:
            return False
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


def is_error_line(line: bytes) -> bool:
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
WORDS = {
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
    if not host or BAD_KEY_BYTE(host) is not None or not host.isascii():
        raise MemcacheProtocolError(f"bad hostname in cluster node {entry[:100]!r}")
    if DIGITS(port) is None or not 0 < int(port) < 65536:
        raise MemcacheProtocolError(f"bad port in cluster node {entry[:100]!r}")
    if ip:
        try:
            # (ipaddress takes any character in an IPv6 scope id: not a control one here.)
            if not ip.isascii() or BAD_KEY_BYTE(ip) is not None:
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
    if DIGITS(version) is None:
        raise _bad_config(block, "bad version")
    nodes = [_cluster_node(entry) for entry in node_line.split()]
    seen = set()
    for node in nodes:
        where = (node.hostname.lower(), node.port)
        if where in seen:
            raise MemcacheProtocolError(f"cluster node {node.hostname}:{node.port} listed twice")
        seen.add(where)
    return ClusterConfig(int(version), tuple(nodes))
