"""Test helpers that ship with pymc: an emulated ElastiCache configuration endpoint (and node).

:class:`ConfigEndpoint` is a small TCP server that speaks the part of the memcached protocol
an ElastiCache (memcached) *configuration endpoint* adds: ``config get cluster`` and, for
engines older than 1.4.14, the legacy ``get AmazonElastiCache:cluster``. Put it in front of
your own memcached servers (a local ``memcached`` process, a container, ...) and your
application's :class:`pymc.ElastiCacheClient` discovers them exactly as it would discover the
nodes of a real cluster. Then change the cluster under the running application (add nodes,
remove nodes, break the endpoint) and check that it behaves::

    import pymc
    from pymc.testing import ConfigEndpoint

    def test_app_follows_scale_out():
        with ConfigEndpoint([("127.0.0.1", 11211)]) as endpoint:
            with pymc.ElastiCacheClient(endpoint.server, poll_interval=0.5) as client:
                client.set("greeting", "hello")
                endpoint.set_nodes([("127.0.0.1", 11211), ("127.0.0.1", 11212)])
                ...  # within a poll interval or two, client.nodes lists both servers
                endpoint.set_mode("down")  # the endpoint disappears: the last nodes stay
                ...

Real ElastiCache *nodes* answer ``config get cluster`` too. ``ConfigEndpoint(nodes,
upstream=(host, port))`` emulates such a node: it answers the configuration requests itself
and relays every other command to the memcached server at ``upstream``, so a client that
polls the nodes when the configuration endpoint is down can be tested: put one emulator with
an ``upstream`` in front of each memcached server and list the emulators as the nodes.

Broken and unusual endpoints are one :meth:`ConfigEndpoint.set_mode` call away (see
:data:`MODES`): errors, garbage, malformed or tolerant-but-odd configurations, a hung server,
a server that drips its reply, one that announces a terabyte, one that is full, and one that
is gone. The module needs nothing but the standard library and pymc itself; without an
``upstream`` it never touches the memcached servers it lists.
"""

from __future__ import annotations

import collections
import errno
import heapq
import itertools
import random
import selectors
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ..protocol import ClusterNode

__all__ = ["MODES", "ConfigEndpoint", "NodeSpec", "config_reply"]

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
_FILLER = b"x" * HUGE_CHUNK
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
_Item = Tuple[str, bytes]


@dataclass(frozen=True)
class _State:
    """What the endpoint answers; replaced whole, never changed in place."""

    version: int
    nodes: Tuple[ClusterNode, ...]
    mode: str


class _Conn:
    __slots__ = (
        "binary",
        "closing",
        "drip_timer",
        "ending",
        "forward",
        "huge_left",
        "inbuf",
        "linger",
        "long_line",
        "mn_ours",
        "outbuf",
        "queue",
        "queued",
        "shut",
        "skip",
        "slow",
        "sock",
        "started",
        "up",
        "up_connected",
        "up_skip",
        "upbuf",
        "upin",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closing = False  # close once outbuf is sent (after ``quit`` or a refused line)
        self.ending = False  # take no more requests: a quit or refusal waits in the queue
        self.linger = False  # "too_many": once outbuf is sent, shut writes, drain, close
        self.shut = False
        self.slow = False  # "slowloris": outbuf drips, one byte per timer
        self.drip_timer = False
        self.huge_left = 0  # "huge": filler bytes still to stream
        self.started = False
        # -- relaying to the upstream (only with ``upstream``) --
        self.up: Optional[socket.socket] = None
        self.up_connected = False
        self.upbuf = bytearray()  # for the upstream, not sent yet
        self.upin = bytearray()  # from the upstream, not scanned yet
        self.up_skip = 0  # upstream data-block bytes to pass on unscanned
        self.mn_ours: Deque[bool] = collections.deque()  # each "mn" sent upstream: ours?
        self.queue: Deque[_Item] = collections.deque()
        self.queued = 0  # bytes of local replies waiting in the queue
        self.skip = 0  # client data-block bytes still to pass on (or drop)
        self.forward = True  # whether those bytes (or the rest of a long line) are relayed
        self.long_line = False  # relaying the rest of an overlong line
        self.binary = False  # binary protocol: the whole connection is relayed as is


def _node(spec: Any) -> ClusterNode:
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


def _entries(nodes: Sequence[ClusterNode]) -> List[str]:
    return [f"{n.hostname}|{n.ip}|{n.port}" for n in nodes]


def _body(version: int, nodes: Sequence[ClusterNode], drop_port: bool = False) -> bytes:
    entries = _entries(nodes)
    if drop_port and entries:  # the first node loses its port
        entries[0] = f"{nodes[0].hostname}|{nodes[0].ip}|"
    return f"{version}\n{' '.join(entries)}\n".encode("ascii")


def _lf_body(version: int, nodes: Sequence[ClusterNode]) -> bytes:
    """A valid payload a tolerant parser must accept: a trailing space after the version,
    two spaces between nodes, and a trailing space after the last one."""
    return f"{version} \n{'  '.join(_entries(nodes))} \n".encode("ascii")


def _header(legacy: bool, length: int) -> bytes:
    if legacy:
        return b"VALUE %s 0 %d\r\n" % (LEGACY_KEY, length)
    return b"CONFIG cluster 0 %d\r\n" % length


def _block(legacy: bool, payload: bytes, length: Optional[int] = None) -> bytes:
    announced = len(payload) if length is None else length
    return _header(legacy, announced) + payload + b"\r\nEND\r\n"


def _data_length(words: List[bytes]) -> Optional[int]:
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


def config_reply(version: int, nodes: Iterable[NodeSpec], legacy: bool = False) -> bytes:
    """The exact bytes an ElastiCache configuration endpoint sends for ``config get cluster``
    (or, with ``legacy=True``, for ``get AmazonElastiCache:cluster``)."""
    return _block(legacy, _body(version, ConfigEndpoint._nodes(nodes)))


class ConfigEndpoint:
    """An emulated ElastiCache configuration endpoint (or node), for tests.

    ``ConfigEndpoint(nodes, version=1, host="127.0.0.1", port=0, upstream=None,
    drip_seconds=0.3)`` binds at once (``port=0`` picks a free port; see :attr:`address` and
    :attr:`server`); :meth:`start` serves it from a daemon thread, :meth:`stop` ends it. As a
    context manager it starts and stops itself. ``nodes`` are ``(host, port)`` pairs (the host
    is then both the node's hostname and its IP address) or ``(hostname, ip, port)`` triples;
    ``ip`` may be ``""``, as on a real cluster whose nodes are not in a VPC, or an IPv6
    address.

    It answers ``config get cluster`` with::

        CONFIG cluster 0 <length>\\r\\n<version>\\n<hostname>|<ip>|<port> ...\\n\\r\\nEND\\r\\n

    and the legacy ``get AmazonElastiCache:cluster`` with the same payload as
    ``VALUE AmazonElastiCache:cluster 0 <length>\\r\\n<payload>\\r\\nEND\\r\\n``. Without an
    ``upstream`` it answers ``version`` with ``VERSION 1.6.18-emulator``, closes the
    connection on ``quit``, and answers every other line with ``ERROR``. Pipelined requests
    and requests split across packets are handled like memcached handles them.

    With ``upstream=(host, port)`` it is a cache *node*: the two configuration requests and
    ``quit`` are answered here, every other command (with the data block of a storage command,
    ``set`` ... ``cas`` and ``ms``) is relayed to the memcached server at ``upstream``, over
    one upstream connection per client connection, opened at its first relayed command.
    Replies stay in request order: when a configuration request follows relayed commands,
    the emulator sends the upstream a meta no-op (``mn``) after them and holds its own reply
    until the upstream's ``MN`` to that no-op has come back (it scans the upstream's replies
    line by line, skipping ``VALUE`` and ``VA`` data blocks, so it never mistakes a value for
    that ``MN``; the client's own ``mn`` are passed on). A connection whose first byte is the
    binary protocol's magic ``0x80`` is relayed as is for its lifetime. When the upstream
    closes or cannot be reached, the client's connection is closed.

    Change the cluster with :meth:`set_nodes` (the version goes up by one unless you give
    one, so an equal or older version can be tested too) and break the endpoint with
    :meth:`set_mode`; the modes change the answers to the configuration requests only
    (relayed commands are relayed), except ``"stall"``, ``"too_many"`` and ``"down"``:

    ``"normal"``
        correct answers;
    ``"error"``
        ``ERROR`` to both configuration requests (a broken endpoint);
    ``"legacy"``
        ``ERROR`` to ``config get cluster`` (an engine older than 1.4.14) but the
        configuration in reply to ``get AmazonElastiCache:cluster``;
    ``"plain"``
        ``ERROR`` to ``config get cluster`` and ``END`` (a miss) to the legacy get, as a plain
        memcached or ElastiCache Serverless answer;
    ``"garbage"``
        random bytes that are no memcached reply;
    ``"malformed"``
        a reply that does not parse; the requests alternate between a block whose announced
        length is one byte short and a node without its port;
    ``"lf"``
        a valid configuration that only a tolerant parser reads: ``\\n`` line ends (as
        always inside the payload) with a trailing space after the version, two spaces
        between nodes and a trailing space after the last one; the announced length is the
        payload's and the framing is the usual ``\\r\\n``;
    ``"slowloris"``
        correct answers, but the connection's output then drips one byte every
        :attr:`drip_seconds` (the first at once) until it is all sent;
    ``"huge"``
        a header announcing a block of 1 TB (``CONFIG cluster 0 1099511627776``), then filler
        bytes as fast as the client reads them, in chunks of 64 KiB (never more is buffered);
        the connection takes no further requests;
    ``"stall"``
        the endpoint reads requests but never answers anything, nor relays anything (a hung
        server);
    ``"too_many"``
        ``ERROR Too many open connections`` to any request, and to a new connection at once
        (as a full memcached does), then the connection is closed: writes are shut down, the
        client's further bytes are read and dropped until it closes (or for 2 s), so it reads
        the error rather than a reset;
    ``"down"``
        the endpoint stops listening and closes every connection, so clients see
        "connection refused"; any other mode listens again, on the same port.

    :attr:`requests` counts the configuration requests received (``config get cluster`` and
    the legacy get), in every mode (the ones dropped in ``"stall"`` mode included), so a test
    can wait for a client's next poll. :attr:`buffered` tells how many bytes the emulator
    holds. Everything here is safe to call from any thread.
    """

    def __init__(
        self,
        nodes: Iterable[NodeSpec] = (),
        version: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
        upstream: Optional[Tuple[str, int]] = None,
        drip_seconds: float = DRIP_SECONDS,
    ) -> None:
        self._lock = threading.Lock()
        self._state = _State(self._check_version(version), self._nodes(nodes), "normal")
        self._upstream = self._check_upstream(upstream)
        self._drip_seconds = self._check_drip(drip_seconds)
        self._requests = 0
        self._rng = random.Random()
        self._conns: Dict[socket.socket, _Conn] = {}
        self._ups: Dict[socket.socket, _Conn] = {}
        self._timers: List[Tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = itertools.count()
        self._calls: Deque[Tuple[Callable[[], None], threading.Event, List[BaseException]]] = (
            collections.deque()
        )
        self._stopping = threading.Event()
        self._closed = False
        self._started = False
        self._host = host
        self._listener: Optional[socket.socket] = self._listen(host, port)
        self._port = int(self._listener.getsockname()[1])
        self._sel = selectors.DefaultSelector()
        self._waker_r, self._waker_w = socket.socketpair()
        self._waker_r.setblocking(False)
        self._waker_w.setblocking(False)
        self._sel.register(self._waker_r, selectors.EVENT_READ, None)
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._thread = threading.Thread(
            target=self._run, name=f"pymc-ConfigEndpoint:{self._port}", daemon=True
        )

    # -- what users read ---------------------------------------------------------------------
    @property
    def address(self) -> Tuple[str, int]:
        """``(host, port)`` the endpoint listens on."""
        return (self._host, self._port)

    @property
    def server(self) -> str:
        """``"host:port"``, what an ElastiCache client is given as its endpoint."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self._port}"

    @property
    def upstream(self) -> Optional[Tuple[str, int]]:
        """The memcached server other commands are relayed to, or None."""
        return self._upstream

    @property
    def version(self) -> int:
        """The cluster configuration version being served."""
        return self._state.version

    @property
    def nodes(self) -> Tuple[ClusterNode, ...]:
        """The nodes being served, as ``(hostname, ip, port)`` named tuples."""
        return self._state.nodes

    @property
    def mode(self) -> str:
        return self._state.mode

    @property
    def requests(self) -> int:
        """How many configuration requests (``config get cluster`` and the legacy
        ``get AmazonElastiCache:cluster``) were received, in any mode."""
        return self._requests

    @property
    def connections(self) -> int:
        """How many client connections are open now."""
        return len(self._conns)

    @property
    def buffered(self) -> int:
        """How many bytes the emulator holds for its connections now (read and not handled,
        to be sent to clients or to the upstream, replies waiting for their turn)."""
        total: List[int] = []

        def count() -> None:
            total.append(
                sum(
                    len(c.inbuf) + len(c.outbuf) + len(c.upbuf) + len(c.upin) + c.queued
                    for c in self._conns.values()
                )
            )

        self._call(count)
        return total[0] if total else 0

    @property
    def drip_seconds(self) -> float:
        """The pause between two bytes in ``"slowloris"`` mode."""
        return self._drip_seconds

    @drip_seconds.setter
    def drip_seconds(self, seconds: float) -> None:
        self._drip_seconds = self._check_drip(seconds)

    def __repr__(self) -> str:
        state = self._state
        return (
            f"<ConfigEndpoint {self.server} mode={state.mode} version={state.version} "
            f"nodes={len(state.nodes)} requests={self._requests}>"
        )

    # -- what users change -------------------------------------------------------------------
    def set_nodes(self, nodes: Iterable[NodeSpec], version: Optional[int] = None) -> int:
        """Serve ``nodes`` from now on, under ``version`` (default: the current one plus one;
        an equal or lower version is allowed). Returns the new version."""
        new_nodes = self._nodes(nodes)
        with self._lock:
            state = self._state
            new_version = state.version + 1 if version is None else self._check_version(version)
            self._state = replace(state, version=new_version, nodes=new_nodes)
        return new_version

    def set_mode(self, mode: str) -> None:
        """Switch to one of :data:`MODES`; it applies to every request read after the call.
        ``"down"`` returns once the port is closed, leaving it once it listens again."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        with self._lock:
            self._state = replace(self._state, mode=mode)
        self._call(self._go_down if mode == "down" else self._go_up)

    def close_connections(self) -> None:
        """Close every client connection now (a network blip); new ones are accepted."""
        self._call(self._drop_all)

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> ConfigEndpoint:
        """Serve from a daemon thread. Returns ``self``."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this ConfigEndpoint was stopped; make a new one")
            if self._started:
                return self
            self._started = True
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving and close every socket (waits up to ``timeout`` for the thread)."""
        with self._lock:
            self._closed = True
        self._stopping.set()
        self._wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():  # else the (daemon) thread still owns the sockets
            self._shutdown()

    def __enter__(self) -> ConfigEndpoint:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- helpers for the caller's thread -----------------------------------------------------
    @staticmethod
    def _nodes(nodes: Iterable[Any]) -> Tuple[ClusterNode, ...]:
        if isinstance(nodes, (str, bytes)):
            raise TypeError("nodes is a list of (host, port) or (hostname, ip, port) tuples")
        return tuple(_node(spec) for spec in nodes)

    @staticmethod
    def _check_version(version: int) -> int:
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValueError(f"version must be an int >= 0, not {version!r}")
        return version

    @staticmethod
    def _check_drip(seconds: float) -> float:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            raise ValueError(f"drip_seconds must be a number > 0, not {seconds!r}")
        return float(seconds)

    @staticmethod
    def _check_upstream(upstream: Optional[Tuple[str, int]]) -> Optional[Tuple[str, int]]:
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

    @staticmethod
    def _listen(host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=128)
        sock.setblocking(False)
        return sock

    def _wake(self) -> None:
        try:
            self._waker_w.send(b"x")
        except OSError:  # closed, or its buffer is full: either way the loop will look
            pass

    def _call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the server thread (or here if that thread is not running)."""
        if not self._thread.is_alive():
            with self._lock:
                if not self._thread.is_alive():
                    fn()
                    return
        done = threading.Event()
        errors: List[BaseException] = []
        self._calls.append((fn, done, errors))
        self._wake()
        if not done.wait(CALL_TIMEOUT):
            raise TimeoutError("ConfigEndpoint: the server thread did not answer")
        if errors:
            raise errors[0]

    # -- the server thread (or the caller's, when that one is not running) --------------------
    def _go_down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            self._sel.unregister(listener)
            listener.close()
        self._drop_all()

    def _go_up(self) -> None:
        if self._listener is None and not self._closed:
            self._listener = self._listen(self._host, self._port)
            self._sel.register(self._listener, selectors.EVENT_READ, None)

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                timeout = TICK
                if self._timers:
                    timeout = min(TICK, max(0.0, self._timers[0][0] - time.monotonic()))
                for key, events in self._sel.select(timeout):
                    sock = key.fileobj
                    if sock is self._waker_r:
                        self._drain_waker()
                    elif sock is self._listener:
                        self._accept()
                    else:
                        conn = self._conns.get(sock)  # type: ignore[call-overload]
                        if conn is not None:
                            self._io(conn, events)
                            continue
                        conn = self._ups.get(sock)  # type: ignore[call-overload]
                        if conn is not None:
                            self._up_io(conn, events)
                self._run_timers()
                self._run_calls()
        finally:
            self._shutdown()
            self._run_calls()

    def _drain_waker(self) -> None:
        try:
            while self._waker_r.recv(4096):
                pass
        except OSError:
            pass

    def _run_calls(self) -> None:
        while self._calls:
            fn, done, errors = self._calls.popleft()
            try:
                fn()
            except Exception as exc:
                errors.append(exc)
            finally:
                done.set()

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_seq), fn))

    def _run_timers(self) -> None:
        now = time.monotonic()
        for _ in range(1024):
            if not self._timers or self._timers[0][0] > now:
                return
            heapq.heappop(self._timers)[2]()

    def _accept(self) -> None:
        for _ in range(64):
            if self._listener is None:
                return
            try:
                sock, _ = self._listener.accept()
            except OSError:  # nothing more to accept (or ECONNABORTED, EMFILE)
                return
            if len(self._conns) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            conn = _Conn(sock)
            self._conns[sock] = conn
            if self._state.mode == "too_many":  # a full memcached says so at once
                conn.outbuf += TOO_MANY_REPLY
                conn.linger = True
            self._pump(conn)

    # -- client connections ------------------------------------------------------------------
    def _io(self, conn: _Conn, events: int) -> None:
        if events & selectors.EVENT_READ:
            try:
                data = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":  # the client left: its unsent replies go with it
                self._drop(conn)
                return
            if data and not conn.linger:
                conn.inbuf += data
        self._pump(conn)

    def _can_take(self, conn: _Conn) -> bool:
        return not (
            conn.closing
            or conn.ending
            or conn.linger
            or conn.huge_left
            or len(conn.outbuf) >= MAX_PENDING_OUTPUT
            or len(conn.upbuf) >= MAX_PENDING_OUTPUT
            or conn.queued >= MAX_PENDING_OUTPUT
        )

    def _process(self, conn: _Conn) -> None:
        buf = conn.inbuf
        if self._upstream is not None and not conn.started and buf:
            conn.started = True
            conn.binary = buf[0] == 0x80
        while buf and self._can_take(conn):
            if conn.binary:
                self._relay(conn, bytes(buf))
                buf.clear()
                return
            if conn.skip:  # the data block of a storage command
                size = min(conn.skip, len(buf))
                if conn.forward:
                    self._relay(conn, bytes(buf[:size]))
                del buf[:size]
                conn.skip -= size
                continue
            end = buf.find(b"\n")
            if end < 0:
                if conn.long_line or (self._upstream is not None and len(buf) > MAX_LINE):
                    if not conn.long_line:  # no configuration request is this long
                        conn.long_line = True
                        conn.forward = self._state.mode != "stall"
                        self._open_relay(conn)
                    if conn.forward:
                        self._relay(conn, bytes(buf))
                    buf.clear()
                elif len(buf) > MAX_LINE:
                    conn.outbuf += b"CLIENT_ERROR line too long\r\n"
                    conn.closing = True
                    buf.clear()
                return
            raw = bytes(buf[: end + 1])
            del buf[: end + 1]
            if conn.long_line:
                conn.long_line = False
                if conn.forward:
                    self._relay(conn, raw)
                continue
            line = raw[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
            self._request(conn, line, raw)

    def _request(self, conn: _Conn, line: bytes, raw: bytes) -> None:
        state = self._state
        words = line.split()
        is_config = words == [b"config", b"get", b"cluster"]
        is_legacy = words == [b"get", LEGACY_KEY]
        if is_config or is_legacy:
            self._requests += 1
        mode = state.mode
        if mode == "too_many":
            conn.ending = True
            self._reply(conn, ("too_many", TOO_MANY_REPLY))
            return
        if mode == "stall":
            size = _data_length(words) if self._upstream is not None else None
            if size is not None:
                conn.skip, conn.forward = size + 2, False
            return
        if is_config or is_legacy:
            item = self._config_item(state, is_legacy)
            self._reply(conn, item)
            if item[0] == "huge":
                conn.ending = True
            return
        if words == [b"quit"]:
            if conn.queue:
                conn.ending = True
                self._reply(conn, ("close", b""))
            else:
                conn.closing = True
            return
        if self._upstream is None:
            self._reply(conn, ("bytes", VERSION_REPLY if words == [b"version"] else ERROR_REPLY))
            return
        self._open_relay(conn)
        if words[:1] == [b"mn"]:
            conn.mn_ours.append(False)
        self._relay(conn, raw)
        size = _data_length(words)
        if size is not None:
            conn.skip, conn.forward = size + 2, True

    def _config_item(self, state: _State, legacy: bool) -> _Item:
        mode = state.mode
        if mode == "error" or (mode in ("legacy", "plain") and not legacy):
            return ("bytes", ERROR_REPLY)
        if mode == "plain":
            return ("bytes", MISS_REPLY)
        if mode == "garbage":
            size = self._rng.randrange(8, 64)
            noise = bytes(self._rng.getrandbits(8) for _ in range(size))
            return ("bytes", b"\x00\xff" + noise + b"\r\n")
        if mode == "malformed":
            if self._requests % 2:  # the announced length is one byte short
                body = _body(state.version, state.nodes)
                return ("bytes", _block(legacy, body, len(body) - 1))
            body = _body(state.version, state.nodes or (ClusterNode("x", "", 1),), True)
            return ("bytes", _block(legacy, body))
        if mode == "huge":
            return ("huge", _header(legacy, HUGE_SIZE))
        if mode == "lf":
            return ("bytes", _block(legacy, _lf_body(state.version, state.nodes)))
        reply = _block(legacy, _body(state.version, state.nodes))
        return ("drip" if mode == "slowloris" else "bytes", reply)

    def _reply(self, conn: _Conn, item: _Item) -> None:
        """A local reply: out now, or after the relayed replies it must follow."""
        if not conn.queue:
            self._emit(conn, item)
            return
        if conn.queue[-1][0] == "relay":  # mark where the relayed replies before it end
            conn.queue[-1] = ("sealed", b"")
            conn.upbuf += b"mn\r\n"
            conn.mn_ours.append(True)
        conn.queue.append(item)
        conn.queued += len(item[1])

    def _emit(self, conn: _Conn, item: _Item) -> None:
        kind, data = item
        conn.outbuf += data
        if kind == "drip":
            conn.slow = True
        elif kind == "huge":
            conn.huge_left = HUGE_SIZE
        elif kind == "close":
            conn.closing = True
        elif kind == "too_many":
            conn.linger = True

    def _pump(self, conn: _Conn) -> None:
        """Move what can move for ``conn``, then wait for the right events (or drop it)."""
        if conn.inbuf and self._can_take(conn):
            self._process(conn)
        if conn.up is not None and conn.up_connected and conn.upbuf:
            try:
                del conn.upbuf[: conn.up.send(conn.upbuf)]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._upstream_gone(conn)
        if conn.huge_left and len(conn.outbuf) < HUGE_CHUNK:
            size = min(HUGE_CHUNK, conn.huge_left)
            conn.outbuf += _FILLER[:size]
            conn.huge_left -= size
            if not conn.huge_left:
                conn.outbuf += b"\r\nEND\r\n"
        if conn.slow:
            if conn.outbuf and not conn.drip_timer:
                self._drip(conn)
                return  # _drip pumps again
        elif conn.outbuf:
            try:
                del conn.outbuf[: conn.sock.send(conn.outbuf)]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._drop(conn)
                return
        if conn.closing and not conn.outbuf:
            self._drop(conn)
            return
        if conn.linger and not conn.outbuf and not conn.shut:
            conn.shut = True
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._drop(conn)
                return
            self._later(LINGER, lambda: self._drop(conn))
        if conn.inbuf and self._can_take(conn):
            self._process(conn)  # lines held back while the client was not reading
        reading = conn.linger or self._can_take(conn)
        writing = (bool(conn.outbuf) or conn.huge_left > 0) and not conn.slow
        self._want(
            conn.sock,
            (selectors.EVENT_READ if reading else 0) | (selectors.EVENT_WRITE if writing else 0),
        )
        if conn.up is not None:
            up_reading = len(conn.outbuf) < MAX_PENDING_OUTPUT
            up_writing = not conn.up_connected or bool(conn.upbuf)
            self._want(
                conn.up,
                (selectors.EVENT_READ if up_reading else 0)
                | (selectors.EVENT_WRITE if up_writing else 0),
            )

    def _want(self, sock: socket.socket, events: int) -> None:
        try:
            key: Optional[selectors.SelectorKey] = self._sel.get_key(sock)
        except KeyError:
            key = None
        if not events:
            if key is not None:
                self._sel.unregister(sock)
        elif key is None:
            self._sel.register(sock, events, None)
        elif key.events != events:
            self._sel.modify(sock, events, None)

    def _drip(self, conn: _Conn) -> None:
        conn.drip_timer = False
        if self._conns.get(conn.sock) is not conn:
            return
        if conn.outbuf:
            try:
                del conn.outbuf[: conn.sock.send(conn.outbuf[:1])]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._drop(conn)
                return
        if conn.outbuf:
            conn.drip_timer = True
            self._later(self._drip_seconds, lambda: self._drip(conn))
        else:
            conn.slow = False
        self._pump(conn)

    def _drop(self, conn: _Conn) -> None:
        if self._conns.pop(conn.sock, None) is None:
            return
        for sock in (conn.sock, conn.up):
            if sock is None:
                continue
            self._ups.pop(sock, None)
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
        conn.up = None

    def _drop_all(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn)

    # -- the upstream side of a client connection ----------------------------------------------
    def _open_relay(self, conn: _Conn) -> None:
        """Relayed commands follow: make sure the queue ends with an open relay stretch."""
        if not conn.queue or conn.queue[-1][0] != "relay":
            conn.queue.append(("relay", b""))

    def _relay(self, conn: _Conn, data: bytes) -> None:
        if conn.up is None and self._upstream is not None and not conn.closing:
            self._connect_up(conn)
        if conn.up is not None:
            conn.upbuf += data

    def _connect_up(self, conn: _Conn) -> None:
        assert self._upstream is not None
        host, port = self._upstream
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            sock.close()
            self._upstream_gone(conn)
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        conn.up = sock
        conn.up_connected = err == 0
        self._ups[sock] = conn

    def _upstream_gone(self, conn: _Conn) -> None:
        """The upstream closed or failed: what it sent is passed on, then the client's
        connection is closed (a node that went away)."""
        up, conn.up = conn.up, None
        if up is not None:
            self._ups.pop(up, None)
            try:
                self._sel.unregister(up)
            except (KeyError, ValueError):
                pass
            up.close()
        conn.queue.clear()
        conn.queued = 0
        conn.upbuf.clear()
        conn.inbuf.clear()
        conn.closing = True

    def _up_io(self, conn: _Conn, events: int) -> None:
        up = conn.up
        assert up is not None
        if not conn.up_connected and events & (selectors.EVENT_WRITE | selectors.EVENT_READ):
            if up.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._upstream_gone(conn)
                self._pump(conn)
                return
            conn.up_connected = True
        if events & selectors.EVENT_READ:
            try:
                data = up.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._upstream_gone(conn)
            elif data and conn.binary:
                conn.outbuf += data
            elif data:
                conn.upin += data
                self._scan_up(conn)
        self._pump(conn)

    def _scan_up(self, conn: _Conn) -> None:
        """Pass the upstream's replies on, swallowing the ``MN`` to each ``mn`` of ours and
        emitting the local replies that waited for it."""
        buf = conn.upin
        while buf:
            if conn.up_skip:
                size = min(conn.up_skip, len(buf))
                conn.outbuf += buf[:size]
                del buf[:size]
                conn.up_skip -= size
                continue
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > MAX_LINE:  # no reply line is this long: pass it on unscanned
                    conn.outbuf += buf
                    buf.clear()
                return
            line = bytes(buf[: end + 1])
            del buf[: end + 1]
            if line == b"MN\r\n" and conn.mn_ours:
                if conn.mn_ours.popleft():
                    self._relay_done(conn)
                    continue
            elif line.startswith((b"VALUE ", b"VA ")):
                words = line.split()
                field = words[3] if words[0] == b"VALUE" and len(words) > 3 else words[1]
                if field.isdigit():
                    conn.up_skip = int(field) + 2
            conn.outbuf += line

    def _relay_done(self, conn: _Conn) -> None:
        if conn.queue and conn.queue[0][0] == "sealed":
            conn.queue.popleft()
        while conn.queue and conn.queue[0][0] not in ("relay", "sealed"):
            if conn.huge_left or conn.closing or conn.linger:
                return
            item = conn.queue.popleft()
            conn.queued -= len(item[1])
            self._emit(conn, item)

    def _shutdown(self) -> None:
        if self._waker_r.fileno() == -1:
            return
        self._drop_all()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self._sel.close()
        self._waker_r.close()
        self._waker_w.close()
