"""Test helpers that ship with pymc: an emulated ElastiCache configuration endpoint.

:class:`ConfigEndpoint` is a small TCP server that speaks the part of the memcached protocol
an ElastiCache (memcached) *configuration endpoint* adds: ``config get cluster``. Put it in
front of your own memcached servers (a local ``memcached`` process, a container, ...) and your
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

The module needs nothing but the standard library and pymc itself, and it never touches the
memcached servers it lists: it only answers the configuration requests.
"""

from __future__ import annotations

import collections
import random
import selectors
import socket
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .protocol import ClusterNode

__all__ = ["MODES", "ConfigEndpoint", "NodeSpec", "config_reply"]

#: ``(host, port)`` (the host is both the hostname and the IP address) or
#: ``(hostname, ip, port)``; ``ip`` may be ``""``.
NodeSpec = Union[Tuple[str, int], Tuple[str, str, int]]

#: What :meth:`ConfigEndpoint.set_mode` accepts.
MODES = ("normal", "error", "garbage", "malformed", "stall", "down")

VERSION_REPLY = b"VERSION 1.6.18-emulator\r\n"
ERROR_REPLY = b"ERROR\r\n"
MAX_LINE = 8192  # a request line longer than this is refused and the connection closed
MAX_PENDING_OUTPUT = 1 << 20  # stop reading from a client that does not read its replies
MAX_CONNECTIONS = 256  # further connections are accepted and closed at once
CALL_TIMEOUT = 5.0  # how long set_mode() waits for the server thread
TICK = 0.1  # the server thread's longest sleep


@dataclass(frozen=True)
class _State:
    """What the endpoint answers; replaced whole, never changed in place."""

    version: int
    nodes: Tuple[ClusterNode, ...]
    mode: str


class _Conn:
    __slots__ = ("closing", "inbuf", "outbuf", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closing = False  # close once outbuf is sent (after ``quit`` or a refused line)


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


def _body(version: int, nodes: Sequence[ClusterNode], drop_port: bool = False) -> bytes:
    entries = [f"{n.hostname}|{n.ip}|{n.port}" for n in nodes]
    if drop_port and entries:  # the first node loses its port
        entries[0] = f"{nodes[0].hostname}|{nodes[0].ip}|"
    return f"{version}\n{' '.join(entries)}\n".encode("ascii")


def config_reply(version: int, nodes: Iterable[NodeSpec]) -> bytes:
    """The exact bytes an ElastiCache configuration endpoint sends for ``config get cluster``."""
    body = _body(version, ConfigEndpoint._nodes(nodes))
    return b"CONFIG cluster 0 %d\r\n%s\r\nEND\r\n" % (len(body), body)


class ConfigEndpoint:
    """An emulated ElastiCache configuration endpoint, for tests.

    ``ConfigEndpoint(nodes, version=1, host="127.0.0.1", port=0)`` binds at once (``port=0``
    picks a free port; see :attr:`address` and :attr:`server`); :meth:`start` serves it from a
    daemon thread, :meth:`stop` ends it. As a context manager it starts and stops itself.
    ``nodes`` are ``(host, port)`` pairs (the host is then both the node's hostname and its IP
    address) or ``(hostname, ip, port)`` triples; ``ip`` may be ``""``, as on a real cluster
    whose nodes are not in a VPC.

    It answers ``config get cluster`` with::

        CONFIG cluster 0 <length>\\r\\n<version>\\n<hostname>|<ip>|<port> ...\\n\\r\\nEND\\r\\n

    ``version`` with ``VERSION 1.6.18-emulator``, closes the connection on ``quit``, and
    answers every other line with ``ERROR``. Pipelined requests and requests split across
    packets are handled like memcached handles them.

    Change the cluster with :meth:`set_nodes` (the version goes up by one unless you give
    one, so an equal or older version can be tested too) and break the endpoint with
    :meth:`set_mode`:

    ``"normal"``
        correct answers;
    ``"error"``
        ``ERROR`` to ``config get cluster``, as plain memcached or ElastiCache Serverless do;
    ``"garbage"``
        random bytes that are no memcached reply;
    ``"malformed"``
        a ``CONFIG`` reply that does not parse; the requests alternate between a block whose
        announced length is one byte short and a node without its port;
    ``"stall"``
        the endpoint reads requests but never answers anything (a hung server);
    ``"down"``
        the endpoint stops listening and closes every connection, so clients see
        "connection refused"; any other mode listens again, on the same port.

    :attr:`requests` counts the ``config get cluster`` requests received, in every mode (the
    ones dropped in ``"stall"`` mode included), so a test can wait for a client's next poll.
    Everything here is safe to call from any thread.
    """

    def __init__(
        self,
        nodes: Iterable[NodeSpec] = (),
        version: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self._lock = threading.Lock()
        self._state = _State(self._check_version(version), self._nodes(nodes), "normal")
        self._requests = 0
        self._rng = random.Random()
        self._conns: Dict[socket.socket, _Conn] = {}
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
        """How many ``config get cluster`` requests were received (in any mode)."""
        return self._requests

    @property
    def connections(self) -> int:
        """How many client connections are open now."""
        return len(self._conns)

    def __repr__(self) -> str:
        state = self._state
        return (
            f"<ConfigEndpoint {self.server} mode={state.mode} version={state.version} "
            f"nodes={len(state.nodes)} requests={self._requests}>"
        )

    # -- what users change -------------------------------------------------------------------
    def set_nodes(self, nodes: Iterable[NodeSpec], version: Optional[int] = None) -> int:
        """Serve ``nodes`` from now on, under ``version`` (default: the current one plus one).
        Returns the new version."""
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
                for key, events in self._sel.select(TICK):
                    sock = key.fileobj
                    if sock is self._waker_r:
                        self._drain_waker()
                    elif sock is self._listener:
                        self._accept()
                    else:
                        conn = self._conns.get(sock)  # type: ignore[call-overload]
                        if conn is not None:
                            self._io(conn, events)
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
            self._conns[sock] = _Conn(sock)
            self._sel.register(sock, selectors.EVENT_READ, None)

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
            if data:
                conn.inbuf += data
        self._process(conn)
        self._flush(conn)

    def _process(self, conn: _Conn) -> None:
        buf = conn.inbuf
        while not conn.closing and len(conn.outbuf) < MAX_PENDING_OUTPUT:
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > MAX_LINE:
                    conn.outbuf += b"CLIENT_ERROR line too long\r\n"
                    conn.closing = True
                    buf.clear()
                return
            line = bytes(buf[:end])
            del buf[: end + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            reply = self._answer(conn, line)
            if reply:
                conn.outbuf += reply

    def _answer(self, conn: _Conn, line: bytes) -> Optional[bytes]:
        state = self._state
        words = line.split()
        is_config = words == [b"config", b"get", b"cluster"]
        if is_config:
            self._requests += 1
        if state.mode == "stall":
            return None
        if is_config:
            return self._config_answer(state)
        if words == [b"version"]:
            return VERSION_REPLY
        if words == [b"quit"]:
            conn.closing = True
            return None
        return ERROR_REPLY

    def _config_answer(self, state: _State) -> bytes:
        mode = state.mode
        if mode == "error":
            return ERROR_REPLY
        if mode == "garbage":
            size = self._rng.randrange(8, 64)
            return b"\x00\xff" + bytes(self._rng.getrandbits(8) for _ in range(size)) + b"\r\n"
        if mode == "malformed":
            if self._requests % 2:  # the announced length is one byte short
                body = _body(state.version, state.nodes)
                return b"CONFIG cluster 0 %d\r\n%s\r\nEND\r\n" % (len(body) - 1, body)
            body = _body(state.version, state.nodes or (ClusterNode("x", "", 1),), True)
            return b"CONFIG cluster 0 %d\r\n%s\r\nEND\r\n" % (len(body), body)
        body = _body(state.version, state.nodes)
        return b"CONFIG cluster 0 %d\r\n%s\r\nEND\r\n" % (len(body), body)

    def _flush(self, conn: _Conn) -> None:
        if conn.outbuf:
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
        if conn.inbuf and not conn.closing and len(conn.outbuf) < MAX_PENDING_OUTPUT:
            self._process(conn)  # lines held back while the client was not reading
        reading = not conn.closing and len(conn.outbuf) < MAX_PENDING_OUTPUT
        want = (selectors.EVENT_READ if reading else 0) | (
            selectors.EVENT_WRITE if conn.outbuf else 0
        )
        if not want:  # closing, and the reply is sent: nothing left to do
            self._drop(conn)
        elif self._sel.get_key(conn.sock).events != want:
            self._sel.modify(conn.sock, want, None)

    def _drop(self, conn: _Conn) -> None:
        if self._conns.pop(conn.sock, None) is None:
            return
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _drop_all(self) -> None:
        for conn in list(self._conns.values()):
            self._drop(conn)

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
