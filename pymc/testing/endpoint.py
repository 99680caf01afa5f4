"""`ConfigEndpoint`, the emulated ElastiCache configuration endpoint (or node) that tests
drive: what users read and change, and its life cycle. It serves from a daemon thread
running an :class:`~pymc.testing.server.EndpointServer`.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Callable, Iterable, List, Optional, Tuple

from ..protocol import ClusterNode
from .replies import (
    CALL_TIMEOUT,
    DRIP_SECONDS,
    MODES,
    NodeSpec,
    State,
    check_drip,
    check_upstream,
    check_version,
    parse_nodes,
)
from .server import EndpointServer

__all__ = ["ConfigEndpoint"]


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
        state = State(check_version(version), parse_nodes(nodes), "normal")
        self._server = EndpointServer(
            host, port, state, check_upstream(upstream), check_drip(drip_seconds)
        )
        self._started = False
        self._thread = threading.Thread(
            target=self._server.run,
            name=f"pymc-ConfigEndpoint:{self._server.port}",
            daemon=True,
        )

    # -- what users read ---------------------------------------------------------------------
    @property
    def address(self) -> Tuple[str, int]:
        """``(host, port)`` the endpoint listens on."""
        return (self._server.host, self._server.port)

    @property
    def server(self) -> str:
        """``"host:port"``, what an ElastiCache client is given as its endpoint."""
        host = f"[{self._server.host}]" if ":" in self._server.host else self._server.host
        return f"{host}:{self._server.port}"

    @property
    def upstream(self) -> Optional[Tuple[str, int]]:
        """The memcached server other commands are relayed to, or None."""
        return self._server.upstream

    @property
    def version(self) -> int:
        """The cluster configuration version being served."""
        return self._server.state.version

    @property
    def nodes(self) -> Tuple[ClusterNode, ...]:
        """The nodes being served, as ``(hostname, ip, port)`` named tuples."""
        return self._server.state.nodes

    @property
    def mode(self) -> str:
        return self._server.state.mode

    @property
    def requests(self) -> int:
        """How many configuration requests (``config get cluster`` and the legacy
        ``get AmazonElastiCache:cluster``) were received, in any mode."""
        return self._server.requests

    @property
    def connections(self) -> int:
        """How many client connections are open now."""
        return len(self._server.conns)

    @property
    def buffered(self) -> int:
        """How many bytes the emulator holds for its connections now (read and not handled,
        to be sent to clients or to the upstream, replies waiting for their turn)."""
        total: List[int] = []
        self._call(lambda: total.append(self._server.buffered()))
        return total[0] if total else 0

    @property
    def drip_seconds(self) -> float:
        """The pause between two bytes in ``"slowloris"`` mode."""
        return self._server.drip_seconds

    @drip_seconds.setter
    def drip_seconds(self, seconds: float) -> None:
        self._server.drip_seconds = check_drip(seconds)

    def __repr__(self) -> str:
        state = self._server.state
        return (
            f"<ConfigEndpoint {self.server} mode={state.mode} version={state.version} "
            f"nodes={len(state.nodes)} requests={self._server.requests}>"
        )

    # -- what users change -------------------------------------------------------------------
    def set_nodes(self, nodes: Iterable[NodeSpec], version: Optional[int] = None) -> int:
        """Serve ``nodes`` from now on, under ``version`` (default: the current one plus one;
        an equal or lower version is allowed). Returns the new version."""
        new_nodes = parse_nodes(nodes)
        with self._lock:
            state = self._server.state
            new_version = state.version + 1 if version is None else check_version(version)
            self._server.state = replace(state, version=new_version, nodes=new_nodes)
        return new_version

    def set_mode(self, mode: str) -> None:
        """Switch to one of :data:`MODES`; it applies to every request read after the call.
        ``"down"`` returns once the port is closed, leaving it once it listens again."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        with self._lock:
            self._server.state = replace(self._server.state, mode=mode)
        self._call(self._server.go_down if mode == "down" else self._server.go_up)

    def close_connections(self) -> None:
        """Close every client connection now (a network blip); new ones are accepted."""
        self._call(self._server.drop_all)

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> ConfigEndpoint:
        """Serve from a daemon thread. Returns ``self``."""
        with self._lock:
            if self._server.closed:
                raise RuntimeError("this ConfigEndpoint was stopped; make a new one")
            if self._started:
                return self
            self._started = True
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving and close every socket (waits up to ``timeout`` for the thread)."""
        with self._lock:
            self._server.closed = True
        self._server.stopping.set()
        self._server.wake()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():  # else the (daemon) thread still owns the sockets
            self._server.shutdown()

    def __enter__(self) -> ConfigEndpoint:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- helpers for the caller's thread -----------------------------------------------------
    def _call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the server thread (or here if that thread is not running)."""
        if not self._thread.is_alive():
            with self._lock:
                if not self._thread.is_alive():
                    fn()
                    return
        done = threading.Event()
        errors: List[BaseException] = []
        self._server.calls.append((fn, done, errors))
        self._server.wake()
        if not done.wait(CALL_TIMEOUT):
            raise TimeoutError("ConfigEndpoint: the server thread did not answer")
        if errors:
            raise errors[0]
