"""What the emulated configuration endpoint says: its modes and limits, the configuration
replies byte for byte (``config_reply``; each mode's answer, ``config_answer``), and the
checks of what a test gives it (nodes, versions). No I/O.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

from ..protocol import ClusterNode

__all__ = ["MODES", "NodeSpec", "config_reply"]

#: ``(host, port)`` (the host is both the hostname and the IP address) or
#: ``(hostname, ip, port)``; ``ip`` may be ``""``.
NodeSpec = Union[Tuple[str, int], Tuple[str, str, int]]

#: What :meth:`ConfigEndpoint.set_mode` accepts.
MODES = (
    "normal",
    "error",
    "garbage",
    "malformed",
    "stall",
    "down",
    "legacy",
    "plain",
    "too_many",
    "lf",
    "slowloris",
    "huge",
)

VERSION_REPLY = b"VERSION 1.6.18-emulator\r\n"
ERROR_REPLY = b"ERROR\r\n"
MISS_REPLY = b"END\r\n"
TOO_MANY_REPLY = b"ERROR Too many open connections\r\n"
LEGACY_KEY = b"AmazonElastiCache:cluster"
HUGE_SIZE = 1 << 40  # what "huge" mode announces: a terabyte
HUGE_CHUNK = 1 << 16  # "huge" mode adds this much filler once the previous chunk is sent
FILLER = b"x" * HUGE_CHUNK  # what "huge" mode streams
MAX_LINE = 8192  # a request line longer than this is refused and the connection closed
MAX_PENDING_OUTPUT = 1 << 20  # stop reading from a client that does not read its replies
MAX_CONNECTIONS = 256  # further connections are accepted and closed at once
CALL_TIMEOUT = 5.0  # how long set_mode() waits for the server thread
TICK = 0.1  # the server thread's longest sleep
LINGER = 2.0  # "too_many": how long a refused connection is drained before it is closed
DRIP_SECONDS = 0.3  # "slowloris": the default pause between two bytes

_STORAGE = frozenset((b"set", b"add", b"replace", b"append", b"prepend", b"cas"))

# What a connection's reply queue holds: (kind, bytes). "relay" is an open stretch of relayed
# commands; "sealed" one whose end the upstream will mark with the reply to our own "mn";
# the other kinds are local replies, emitted in order once every relayed reply before them
# has been passed on.
Item = Tuple[str, bytes]


@dataclass(frozen=True)
class State:
    """What the endpoint answers; replaced whole, never changed in place."""

    version: int
    nodes: Tuple[ClusterNode, ...]
    mode: str


def parse_node(spec: Any) -> ClusterNode:
    if isinstance(spec, (str, bytes)) or not isinstance(spec, (tuple, list)):
        raise TypeError(f"a node is (host, port) or (hostname, ip, port), not {spec!r}")
    if len(spec) == 2:
        hostname, ip, port = spec[0], spec[0], spec[1]
    elif len(spec) == 3:
        hostname, ip, port = spec
    else:
        raise TypeError(f"a node is (host, port) or (hostname, ip, port), not {spec!r}")
    if not isinstance(hostname, str) or not isinstance(ip, str):
        raise TypeError(f"hostname and ip must be str in {spec!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"bad port in {spec!r}")
    for name, text in (("hostname", hostname), ("ip", ip)):
        if not text.isascii() or any(c <= " " or c in "|\x7f" for c in text):
            raise ValueError(f"bad {name} in {spec!r}: ASCII without spaces or '|' please")
    if not hostname:
        raise ValueError(f"empty hostname in {spec!r}")
    return ClusterNode(hostname, ip, port)


def node_entries(nodes: Sequence[ClusterNode]) -> List[str]:
    return [f"{n.hostname}|{n.ip}|{n.port}" for n in nodes]


def config_payload(version: int, nodes: Sequence[ClusterNode], drop_port: bool = False) -> bytes:
    entries = node_entries(nodes)
    if drop_port and entries:  # the first node loses its port
        entries[0] = f"{nodes[0].hostname}|{nodes[0].ip}|"
    return f"{version}\n{' '.join(entries)}\n".encode("ascii")


def lf_config_payload(version: int, nodes: Sequence[ClusterNode]) -> bytes:
    """A valid payload a tolerant parser must accept: a trailing space after the version,
    two spaces between nodes, and a trailing space after the last one."""
    return f"{version} \n{'  '.join(node_entries(nodes))} \n".encode("ascii")


def config_header(legacy: bool, length: int) -> bytes:
    if legacy:
        return b"VALUE %s 0 %d\r\n" % (LEGACY_KEY, length)
    return b"CONFIG cluster 0 %d\r\n" % length


def config_block(legacy: bool, payload: bytes, length: Optional[int] = None) -> bytes:
    announced = len(payload) if length is None else length
    return config_header(legacy, announced) + payload + b"\r\nEND\r\n"


def data_length(words: List[bytes]) -> Optional[int]:
    """The data-block size a storage command announces (text or meta), else None."""
    if not words:
        return None
    if words[0] in _STORAGE and len(words) >= 5:
        field = words[4]
    elif words[0] == b"ms" and len(words) >= 3:
        field = words[2]
    else:
        return None
    return int(field) if field.isdigit() else None


def parse_nodes(nodes: Iterable[Any]) -> Tuple[ClusterNode, ...]:
    if isinstance(nodes, (str, bytes)):
        raise TypeError("nodes is a list of (host, port) or (hostname, ip, port) tuples")
    return tuple(parse_node(spec) for spec in nodes)


def check_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"version must be an int >= 0, not {version!r}")
    return version


def check_drip(seconds: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise ValueError(f"drip_seconds must be a number > 0, not {seconds!r}")
    return float(seconds)


def check_upstream(upstream: Optional[Tuple[str, int]]) -> Optional[Tuple[str, int]]:
    if upstream is None:
        return None
    if (
        not isinstance(upstream, (tuple, list))
        or len(upstream) != 2
        or not isinstance(upstream[0], str)
        or isinstance(upstream[1], bool)
        or not isinstance(upstream[1], int)
        or not 0 < upstream[1] < 65536
    ):
        raise ValueError(f"upstream must be (host, port), not {upstream!r}")
    return (upstream[0], upstream[1])


def config_reply(version: int, nodes: Iterable[NodeSpec], legacy: bool = False) -> bytes:
    """The exact bytes an ElastiCache configuration endpoint sends for ``config get cluster``
    (or, with ``legacy=True``, for ``get AmazonElastiCache:cluster``)."""
    return config_block(legacy, config_payload(version, parse_nodes(nodes)))


def config_answer(state: State, legacy: bool, requests: int, rng: random.Random) -> Item:
    """What the endpoint sends for a configuration request (the legacy get with ``legacy``)
    in ``state``'s mode; ``requests`` (the count so far) alternates "malformed" answers."""
    mode = state.mode
    if mode == "error" or (mode in ("legacy", "plain") and not legacy):
        return ("bytes", ERROR_REPLY)
    if mode == "plain":
        return ("bytes", MISS_REPLY)
    if mode == "garbage":
        size = rng.randrange(8, 64)
        noise = bytes(rng.getrandbits(8) for _ in range(size))
        return ("bytes", b"\x00\xff" + noise + b"\r\n")
    if mode == "malformed":
        if requests % 2:  # the announced length is one byte short
            body = config_payload(state.version, state.nodes)
            return ("bytes", config_block(legacy, body, len(body) - 1))
        body = config_payload(state.version, state.nodes or (ClusterNode("x", "", 1),), True)
        return ("bytes", config_block(legacy, body))
    if mode == "huge":
        return ("huge", config_header(legacy, HUGE_SIZE))
    if mode == "lf":
        return ("bytes", config_block(legacy, lf_config_payload(state.version, state.nodes)))
    reply = config_block(legacy, config_payload(state.version, state.nodes))
    return ("drip" if mode == "slowloris" else "bytes", reply)
