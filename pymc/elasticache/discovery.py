"""ElastiCache discovery: one exchange with a configuration endpoint (``fetch_config``),
``discover``, and one discovery as a whole (``Discovery``): the endpoint, then the known
nodes, all within one deadline and a size cap, on fresh connections (so DNS is resolved
again). Parsing the answers is the protocol's (``ExpectConfig``, ``ExpectLegacyConfig``);
this module reads them off a socket and decides what a bare ``ERROR`` means.

Layer: imports ``client`` (server specs), ``protocol`` and ``exceptions`` only.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from typing import Any, Callable, Dict, Generator, List, Optional, Tuple, Union

from ..client import ServerSpec, normalize_server_spec, server_name
from ..exceptions import (
    MemcacheError,
    MemcacheNetworkError,
    MemcacheProtocolError,
    MemcacheTimeoutError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    network_error,
)
from ..protocol import (
    MAX_CONFIG_BYTES,
    NEED_DATA,
    ClusterConfig,
    ErrorReply,
    Expect,
    ExpectConfig,
    ExpectLegacyConfig,
    Reader,
    encode_config_get,
    encode_legacy_config_get,
)

__all__ = [
    "DISCOVERY_TIMEOUT",
    "Ask",
    "Attempt",
    "Discovery",
    "config_exchange",
    "cut_off",
    "discover",
    "fetch_config",
    "is_bare_error",
    "stop_discoveries",
]

logger = logging.getLogger("pymc")

#: The overall deadline of one discovery (connect, ask, read), when the client sets none.
DISCOVERY_TIMEOUT = 5.0


def is_bare_error(reply: object) -> bool:
    """Whether ``reply`` is a bare ``ERROR`` (the server knows no such command)."""
    return type(reply) is ErrorReply and reply.kind == b"ERROR" and not reply.message


#: One step of a discovery exchange: the request to send and the reader of its answer.
Ask = Tuple[bytes, Expect]


def config_exchange() -> Generator[Ask, Any, Optional[ClusterConfig]]:
    """The discovery exchange without I/O, for any transport: yields ``(request, reader)``
    and is sent each answer; returns the cluster's config, or None when the server has none
    (a bare ``ERROR`` to ``config get cluster`` and then a miss or a bare ``ERROR`` to
    ``get AmazonElastiCache:cluster``); raises the error any other answer means."""
    reply = yield encode_config_get(), ExpectConfig()
    if type(reply) is ClusterConfig:
        return reply
    if not is_bare_error(reply):
        raise reply.exception("config get cluster")
    # An engine before 1.4.14, or no cluster at all: ask the legacy way.
    legacy = yield encode_legacy_config_get(), ExpectLegacyConfig()
    if type(legacy) is ClusterConfig:
        return legacy
    if legacy is None or is_bare_error(legacy):
        return None
    raise legacy.exception("get AmazonElastiCache:cluster")


def fetch_config(
    address: ServerSpec,
    timeout: float = DISCOVERY_TIMEOUT,
    tls_context: Optional[ssl.SSLContext] = None,
    server_hostname: Optional[str] = None,
    max_bytes: int = MAX_CONFIG_BYTES,
    on_socket: Optional[Callable[[socket.socket], Any]] = None,
) -> Optional[ClusterConfig]:
    """One discovery exchange with ``address``, within ``timeout`` seconds overall: the
    cluster's config, or None when the server has none (a bare ``ERROR`` to ``config get
    cluster`` and then a miss or a bare ``ERROR`` to ``get AmazonElastiCache:cluster``:
    plain memcached or Serverless). Anything else raises a :class:`MemcacheError`.

    A fresh connection each time, so the name is resolved again. ``on_socket`` is given
    the socket as soon as it exists (so that another thread can shut it down).
    """
    if isinstance(address, str):
        raise ValueError(f"discovery needs a TCP address, not {address!r}")
    deadline = time.monotonic() + timeout
    name = server_name(address)
    sock: Optional[socket.socket] = None
    try:
        host, port = address
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, socket.IPPROTO_TCP
        )[0]
        sock = socket.socket(family, kind, proto)
        if on_socket is not None:
            on_socket(sock)
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.connect(sockaddr)
        if tls_context is not None:
            sock = tls_context.wrap_socket(sock, server_hostname=server_hostname or host)
            if on_socket is not None:
                on_socket(sock)
        reader = Reader(max_block=max_bytes)
        steps = config_exchange()
        request, expect = next(steps)
        while True:
            reply = _ask(sock, reader, request, expect, deadline, name)
            try:
                request, expect = steps.send(reply)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
    except MemcacheError:
        raise
    except socket.timeout as exc:
        raise MemcacheTimeoutError(exc.errno, f"discovery at {name} timed out") from exc
    except OSError as exc:
        raise network_error(
            MemcacheNetworkError, exc, f"discovery at {name} failed: {exc}"
        ) from exc
    finally:
        if sock is not None:
            sock.close()


def _ask(
    sock: socket.socket, reader: Reader, request: bytes, expect: Expect, deadline: float, name: str
) -> Any:
    """Send ``request`` and read its answer, all before ``deadline``."""
    sock.settimeout(max(deadline - time.monotonic(), 0.001))
    sock.sendall(request)
    result = expect.step(reader)
    while result is NEED_DATA:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MemcacheTimeoutError(None, f"discovery at {name} took longer than its deadline")
        sock.settimeout(remaining)
        data = sock.recv(65536)
        if not data:
            raise MemcacheUnexpectedCloseError(f"{name} closed the connection during discovery")
        reader.feed(data)
        result = expect.step(reader)
    if reader.buffered:
        raise MemcacheProtocolError(f"{name} sent more than the discovery answer")
    return result


def discover(
    endpoint: Any, timeout: float = DISCOVERY_TIMEOUT, tls_context: Any = None
) -> ClusterConfig:
    """Ask a configuration endpoint for the cluster's version and nodes (the current or
    the legacy command). A server with no configuration raises
    :class:`MemcacheUnknownCommandError`."""
    address = normalize_server_spec(endpoint)
    config = fetch_config(address, timeout, tls_context)
    if config is None:
        raise MemcacheUnknownCommandError(
            f"{server_name(address)} is not an ElastiCache configuration endpoint"
        )
    return config


#: One try of a discovery: the address to ask, its share of the time, its TLS hostname.
Attempt = Tuple[ServerSpec, float, Optional[str]]


class Discovery:
    """One discovery, described by plain data so that it runs without its client (a
    poller in the middle of one holds no client): the endpoint, then, when it fails, the
    known nodes, all before ``deadline``. With nodes to fall back on, the endpoint gets half
    of the time, and each node asked after it (in random order, so that a dead node is not
    always first) an equal share of what is left then. The sockets in flight are kept in
    ``sockets`` (by thread), so that ``close()`` can cut them off."""

    __slots__ = ("deadline", "endpoint", "known", "lock", "sockets", "stop", "tls_context")

    def __init__(
        self,
        endpoint: ServerSpec,
        known: List[Tuple[str, ServerSpec, Optional[str]]],
        tls_context: Optional[ssl.SSLContext],
        stop: Any,
        sockets: Dict[int, socket.socket],
        lock: Any,
        deadline: float,
    ) -> None:
        self.endpoint = endpoint
        self.known = known  # (name, address, TLS hostname)
        self.tls_context = tls_context
        self.stop = stop
        self.sockets = sockets
        self.lock = lock  # the client's refresh lock, held by whoever runs this
        self.deadline = deadline

    def outcome(self) -> Union[ClusterConfig, Exception, None]:
        """The config, None (no configuration here) or the error that ended the discovery.
        An unexpected exception releases the lock and propagates."""
        try:
            return self.run()
        except (MemcacheError, OSError) as exc:
            return exc
        except BaseException:
            self.lock.release()
            raise

    def run(self) -> Optional[ClusterConfig]:
        steps = self.attempts()
        address, timeout, hostname = next(steps)
        while True:
            failure: Optional[BaseException] = None
            try:
                config = self._fetch(address, timeout, hostname)
            except (MemcacheError, OSError) as exc:
                failure = exc  # (thrown in below, outside this handler: no chained context)
            try:
                if failure is None:
                    address, timeout, hostname = steps.send(config)
                else:
                    address, timeout, hostname = steps.throw(failure)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

    def attempts(self) -> Generator[Attempt, Optional[ClusterConfig], Optional[ClusterConfig]]:
        """The order and the time shares of a discovery, without I/O (for any transport):
        yields ``(address, timeout, TLS hostname)`` to ask, and is sent what that answered
        (or thrown the error it raised); returns the outcome, or raises the error that
        ended the discovery."""
        known = list(self.known)
        random.shuffle(known)
        remaining = self.deadline - time.monotonic()
        try:
            return (yield self.endpoint, remaining / 2 if known else remaining, None)
        except (MemcacheError, OSError) as exc:
            if self.stop.is_set() or not known:
                raise
            error = exc
        for asked, (name, spec, hostname) in enumerate(known):
            remaining = self.deadline - time.monotonic()
            if self.stop.is_set() or remaining <= 0:
                break
            try:
                config = yield spec, remaining / (len(known) - asked), hostname
            except (MemcacheError, OSError):
                continue
            if config is not None:
                logger.debug("pymc: ElastiCache node list read from node %s", name)
                return config
        raise error

    def _fetch(
        self, address: ServerSpec, timeout: float, hostname: Optional[str] = None
    ) -> Optional[ClusterConfig]:
        key = threading.get_ident()
        sockets, stop = self.sockets, self.stop

        def track(sock: socket.socket) -> None:
            sockets[key] = sock
            if stop.is_set():  # closed meanwhile: give up now
                cut_off(sock)

        try:
            return fetch_config(address, timeout, self.tls_context, hostname, on_socket=track)
        finally:
            sockets.pop(key, None)


def cut_off(sock: Union[socket.socket, Any]) -> None:
    """Cut a discovery off from another thread: its recv or connect fails at once."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def stop_discoveries(stop: threading.Event, sockets: Dict[int, socket.socket]) -> None:
    """Stop a poller and cut off its discovery in flight (for a client that is gone)."""
    stop.set()
    for sock in list(sockets.values()):
        cut_off(sock)
