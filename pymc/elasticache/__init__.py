"""AWS ElastiCache (memcached) auto-discovery: a HashClient that follows the cluster.

:class:`ElastiCacheClient` asks the cluster's configuration endpoint for the node list and a
daemon thread (a greenlet under ``gevent.monkey.patch_all()``) keeps asking every
``poll_interval`` seconds (jittered by ±10%, so a fleet of workers does not poll in step).
A node list is applied only when its version is strictly greater than the current one; the
new snapshot is built off the request path and swapped in with one assignment (see
:mod:`pymc.cluster`).

The rule that keeps keys where every other client looks for them: the configuration
endpoint is never used as a cache node because discovery *failed*. Its name points at one
node of the cluster, so every key would land there while other clients spread keys by
hash. Instead:

* until the first node list arrives the client is *not ready*: requests raise
  :class:`~pymc.exceptions.ClusterNotReadyError` (or, with ``ignore_exc``, read as misses
  and write nothing) while discovery retries in the background, 3 tries 500 ms apart, then
  every ``poll_interval``; ``wait_ready()`` waits for it;
* only a real "no configuration here" answer -- a bare ``ERROR`` to ``config get cluster``
  and then no config from the legacy ``get AmazonElastiCache:cluster`` either -- means a
  plain memcached or ElastiCache Serverless: then the endpoint is the one node;
* ``ERROR <message>``, ``SERVER_ERROR``, a timeout, a reset or a malformed answer is a
  transient failure: the last good nodes stay, and the poller asks the known nodes in turn
  (each node of a cluster answers ``config get cluster``).

Each discovery has one overall deadline and a size cap, and opens a fresh connection (so
DNS is resolved again). The deadline covers the whole discovery: the endpoint, then the
known nodes it falls back on (so 30 dead nodes cost one deadline, not 31), and a
``refresh()``'s wait for a discovery another thread has in flight. ``close()`` stops the
poller at once, and after it returns nothing changes. The poller holds the client weakly
(strongly only during a poll), so a client dropped without ``close()`` -- as code written
for pymemcache's thread-less client does -- is collected, and its poller then ends. A
forked child (``gunicorn --preload``, multiprocessing) starts its own poller on first use.

Layer: imports ``client``, ``cluster``, ``protocol`` and ``exceptions`` only.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import ssl
import threading
import time
import traceback
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ..client import ServerSpec, normalize_server_spec, server_name
from ..cluster import HashClient
from ..exceptions import (
    AllNodesDownError,
    ClusterNotReadyError,
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
    "AWSElastiCacheHashClient",
    "ElastiCacheClient",
    "discover",
    "fetch_config",
    "poll_delay",
]

logger = logging.getLogger("pymc")

#: The overall deadline of one discovery (connect, ask, read), when the client sets none.
DISCOVERY_TIMEOUT = 5.0
#: Start-up: this many quick tries, this many seconds apart, before the normal interval.
STARTUP_TRIES = 3
STARTUP_SPACING = 0.5
#: The poll interval varies by this fraction either way.
JITTER = 0.1

ChangeHook = Callable[[List[ServerSpec], List[ServerSpec]], Any]
Change = Tuple[List[ServerSpec], List[ServerSpec]]  # (old, new) node lists

# Bumped in every child after os.fork(): a client made in an earlier generation has no
# poller thread in this process. _FORK_GUARD lets one thread of the child do the restart.
_fork_generation = [0]
_FORK_GUARD = threading.Lock()


def _after_fork_in_child() -> None:
    global _FORK_GUARD
    _FORK_GUARD = threading.Lock()  # a parent thread may have held it at fork time
    _fork_generation[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def poll_delay(interval: float) -> float:
    """The seconds until the next poll: ``interval``, give or take ``JITTER`` (at most
    what a wait takes: a very long interval is one very long sleep)."""
    return min(interval * random.uniform(1 - JITTER, 1 + JITTER), threading.TIMEOUT_MAX)


def _is_bare_error(reply: object) -> bool:
    return type(reply) is ErrorReply and reply.kind == b"ERROR" and not reply.message


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
        reply = _ask(sock, reader, encode_config_get(), ExpectConfig(), deadline, name)
        if type(reply) is ClusterConfig:
            return reply
        if not _is_bare_error(reply):
            raise reply.exception("config get cluster")
        # An engine before 1.4.14, or no cluster at all: ask the legacy way.
        legacy = _ask(
            sock, reader, encode_legacy_config_get(), ExpectLegacyConfig(), deadline, name
        )
        if type(legacy) is ClusterConfig:
            return legacy
        if legacy is None or _is_bare_error(legacy):
            return None
        raise legacy.exception("get AmazonElastiCache:cluster")
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


class _Discovery:
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
        stop: threading.Event,
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
        known = list(self.known)
        random.shuffle(known)
        remaining = self.deadline - time.monotonic()
        try:
            return self._fetch(self.endpoint, remaining / 2 if known else remaining)
        except (MemcacheError, OSError) as exc:
            if self.stop.is_set() or not known:
                raise
            error = exc
        for asked, (name, spec, hostname) in enumerate(known):
            remaining = self.deadline - time.monotonic()
            if self.stop.is_set() or remaining <= 0:
                break
            try:
                config = self._fetch(spec, remaining / (len(known) - asked), hostname)
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
                _shut(sock)

        try:
            return fetch_config(address, timeout, self.tls_context, hostname, on_socket=track)
        finally:
            sockets.pop(key, None)


class ElastiCacheClient(HashClient):
    """A :class:`HashClient` whose nodes come from an ElastiCache configuration endpoint.

    ``endpoint`` is ``"host:port"`` (the ``.cfg.`` name). ``use_vpc=True`` connects to
    each node's IP address, ``False`` to its hostname; with ``tls_context`` the certificate
    is checked against the node's hostname either way. ``on_change(old, new)`` is called
    (from the poller) with the node lists after each change. ``discovery_timeout`` bounds
    each discovery as a whole, the fallback to the known nodes included. ``ready_timeout``:
    wait up to that many seconds in the constructor for the first node list, and raise
    :class:`ClusterNotReadyError` (after closing) if none came. Every other keyword is a
    :class:`HashClient` option.
    """

    def __init__(
        self,
        endpoint: Any,
        poll_interval: float = 60.0,
        use_vpc: bool = True,
        on_change: Optional[ChangeHook] = None,
        discovery_timeout: Optional[float] = None,
        ready_timeout: Optional[float] = None,
        **options: Any,
    ) -> None:
        # (a NaN or infinite one would kill the poller, or make every discovery fail)
        if not 0 < poll_interval < math.inf:
            raise ValueError(f"poll_interval must be a finite number > 0, got {poll_interval!r}")
        if discovery_timeout is not None and not 0 < discovery_timeout < math.inf:
            raise ValueError(
                f"discovery_timeout must be None or a finite number > 0, got {discovery_timeout!r}"
            )
        self.endpoint = normalize_server_spec(endpoint)
        if isinstance(self.endpoint, str):
            raise ValueError("an ElastiCache endpoint is host:port")
        self.poll_interval = poll_interval
        self.use_vpc = use_vpc
        self.on_change = on_change
        #: The version of the node list in use (None: none yet, or a plain server).
        self.config_version: Optional[int] = None
        #: The endpoint has no cluster configuration: it is the one node, not polled.
        self.plain = False
        self._closed = False
        self._failing = False  # discovery is failing, and that was said once
        self._older_seen: Optional[int] = None  # the last older version logged
        self._sockets: Dict[int, socket.socket] = {}  # discoveries in flight
        self._make_sync_objects()
        super().__init__([], **options)
        opts = self.options
        self._discovery_timeout = float(
            discovery_timeout
            or max(opts.connect_timeout or 0, opts.timeout or 0)
            or DISCOVERY_TIMEOUT
        )
        self._tls_context = opts.tls_context
        # The first try, here (within ready_timeout when one is given); the poller retries.
        started = time.monotonic()
        first = self._discovery_timeout
        if ready_timeout is not None:
            first = max(min(first, ready_timeout), 0.001)
        self._refresh(first)
        if not self.plain:
            self._start_poller()
        if ready_timeout is not None and not self.wait_ready(
            max(ready_timeout - (time.monotonic() - started), 0)
        ):
            self.close()
            raise ClusterNotReadyError(
                f"no node list from {server_name(self.endpoint)} within {ready_timeout} s"
            )

    def _make_sync_objects(self) -> None:
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._refresh_lock = threading.Lock()  # one discovery + apply at a time
        self._state_lock = threading.Lock()  # guards _closed and the node-set swap
        self._poller: Optional[threading.Thread] = None
        self._generation = _fork_generation[0]  # last: other threads test it unlocked

    # ------------------------------------------------------------------ readiness

    @property
    def ready(self) -> bool:
        """Whether a node list (or a plain server) is known."""
        return self._ready.is_set()

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Wait up to ``timeout`` seconds for the first node list; return whether it came."""
        self._check_fork()
        return self._ready.wait(timeout)

    def _no_nodes(self) -> AllNodesDownError:
        if not self._ready.is_set():
            return ClusterNotReadyError(
                f"no node list from {server_name(self.endpoint)} yet (discovery is retrying "
                "in the background; wait_ready() waits for it)"
            )
        return super()._no_nodes()

    # ------------------------------------------------------------------ discovery

    def refresh(self) -> bool:
        """Poll now; return whether the node set changed. A failure keeps the last good
        node set (or leaves the client not ready) and is logged once, until it recovers.
        Returns within ``discovery_timeout``, a wait for a discovery already in flight
        included (when that wait uses it all, this call returns False)."""
        changed, change = self._refresh(self._discovery_timeout)
        # The hook runs with no lock held: it may call refresh() or close().
        if change is not None and self.on_change is not None:
            _run_hook(self.on_change, change)
        return changed

    def _refresh(self, timeout: float) -> Tuple[bool, Optional[Change]]:
        """One discovery, applied: whether the node set changed, and the ``(old, new)``
        lists for ``on_change`` (which the caller runs, with no lock held)."""
        job = self._begin(timeout)
        if job is None:
            return False, None
        return self._end(job, job.outcome())

    def _begin(self, timeout: float) -> Optional[_Discovery]:
        """Take the refresh lock (within ``timeout``) and describe the discovery to run,
        with nothing in it that references this client; None when there is none to run.
        The lock stays held: :meth:`_end` releases it."""
        self._check_fork()
        if self.plain or self._closed:
            return None
        deadline = time.monotonic() + timeout
        lock = self._refresh_lock
        if not lock.acquire(timeout=max(timeout, 0.001)):
            return None  # another discovery took the whole deadline
        try:
            if self._stop.is_set():  # closed while this call waited for the lock
                lock.release()
                return None
            logger.debug("pymc: ElastiCache poll of %s", server_name(self.endpoint))
            known = []
            if self.config_version is not None:  # nodes to ask when the endpoint fails
                known = [
                    (name, spec, self._tls_hostnames.get(name))
                    for name, spec in self.snapshot.servers.items()
                ]
            return _Discovery(
                self.endpoint, known, self._tls_context, self._stop, self._sockets, lock, deadline
            )
        except BaseException:
            lock.release()
            raise

    def _end(
        self, job: _Discovery, outcome: Union[ClusterConfig, Exception, None]
    ) -> Tuple[bool, Optional[Change]]:
        """Apply a discovery's outcome and release the refresh lock."""
        try:
            if isinstance(outcome, Exception):
                if not self._stop.is_set():
                    self._discovery_failed(repr(outcome))
                return False, None
            if outcome is None:
                if self.config_version is not None:  # it had a config: this is news, not truth
                    self._discovery_failed("the endpoint now says it has no cluster configuration")
                    return False, None
                return self._become_plain(), None
            change = self._apply(outcome)
            return change is not None, change
        finally:
            job.lock.release()

    def _discovery_failed(self, why: str) -> None:
        if not self._failing:
            self._failing = True
            state = "keeping the last good node set" if self.ready else "not ready yet, retrying"
            logger.warning(
                "pymc: ElastiCache discovery at %s is failing (%s); %s",
                server_name(self.endpoint),
                why,
                state,
            )

    def _discovery_recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.info("pymc: ElastiCache discovery at %s works again", server_name(self.endpoint))

    def _become_plain(self) -> bool:
        with self._state_lock:
            if self._closed:
                return False
            logger.info(
                "pymc: %s has no ElastiCache cluster configuration (plain memcached or "
                "Serverless): using it as the only node",
                server_name(self.endpoint),
            )
            self.plain = True
            self.set_servers([self.endpoint])
            self._ready.set()
        self._discovery_recovered()
        return True

    def _servers_of(self, config: ClusterConfig) -> List[Tuple[str, int]]:
        servers = []
        for node in config.nodes:
            host = node.ip if self.use_vpc and node.ip else node.hostname
            servers.append((host, node.port))
            if host != node.hostname:
                self._tls_hostnames[server_name((host, node.port))] = node.hostname
        return servers

    def _apply(self, config: ClusterConfig) -> Optional[Change]:
        """Use ``config`` if it is newer than what we have. Returns ``(old, new)`` node
        lists when the node set changed after the first, for ``on_change``; else None."""
        self._discovery_recovered()
        current = self.config_version
        if current is not None and config.version <= current:
            if config.version < current and self._older_seen != config.version:
                self._older_seen = config.version
                logger.info(
                    "pymc: ElastiCache %s reported version %d, older than %d; keeping %d",
                    server_name(self.endpoint),
                    config.version,
                    current,
                    current,
                )
            return None
        with self._state_lock:
            if self._closed:
                return None
            old = self.nodes
            changed = self.set_servers(self._servers_of(config))
            self.config_version = config.version
            first = not self._ready.is_set()
            self._ready.set()
        if changed and not first:
            return old, self.nodes
        return None

    # ------------------------------------------------------------------ the poller

    def _start_poller(self) -> None:
        # The thread gets a weak reference and objects that do not reference the client,
        # so a client dropped without close() is still collected; its finalizer then sets
        # the stop event, which wakes the poller from its sleep.
        stop, ready = self._stop, self._ready
        weakref.finalize(self, _stop_discoveries, stop, self._sockets)
        self._poller = threading.Thread(
            target=_poll,
            args=(weakref.ref(self), stop, ready),
            name=f"pymc-elasticache-{server_name(self.endpoint)}",
            daemon=True,
        )
        self._poller.start()

    def _check_fork(self) -> None:
        """In a forked child, on first use: fresh locks and a poller of its own."""
        if self._generation == _fork_generation[0]:
            return
        with _FORK_GUARD:
            if self._generation == _fork_generation[0]:
                return
            for sock in list(self._sockets.values()):
                try:
                    sock.close()  # the child's copy of a discovery the parent had in flight
                except OSError:
                    pass
            self._sockets = {}
            self._make_sync_objects()
            if self.config_version is not None or self.plain:
                self._ready.set()
            if not self._closed and not self.plain:
                self._start_poller()

    # The request paths, with the fork check first.

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        if self._generation != _fork_generation[0]:
            self._check_fork()
        return super()._run(*args, **kwargs)

    def _groups(self, *args: Any, **kwargs: Any) -> Any:
        if self._generation != _fork_generation[0]:
            self._check_fork()
        return super()._groups(*args, **kwargs)

    def _each(self, *args: Any, **kwargs: Any) -> Any:
        if self._generation != _fork_generation[0]:
            self._check_fork()
        return super()._each(*args, **kwargs)

    # ------------------------------------------------------------------ life cycle

    @property
    def polling(self) -> bool:
        """Whether the poller thread is running."""
        return self._poller is not None and self._poller.is_alive()

    def close(self) -> None:
        """Stop the poller (a discovery in flight is cut off) and close every connection.
        After this returns no thread of the client runs and the node set never changes."""
        with self._state_lock:
            self._closed = True
        self._stop.set()
        for sock in list(self._sockets.values()):
            _shut(sock)
        poller = self._poller
        if poller is not None and poller is not threading.current_thread():
            poller.join(timeout=self._discovery_timeout + 1.0)
        super().close()

    def __enter__(self) -> ElastiCacheClient:
        return self

    def __repr__(self) -> str:
        state = "plain" if self.plain else ("ready" if self.ready else "not ready")
        return (
            f"<{type(self).__name__} {server_name(self.endpoint)} {state} "
            f"config_version={self.config_version} nodes={[server_name(n) for n in self.nodes]}>"
        )


def _shut(sock: Union[socket.socket, Any]) -> None:
    """Cut a discovery off from another thread: its recv or connect fails at once."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _poll(
    client_ref: Callable[[], Optional[ElastiCacheClient]],
    stop: threading.Event,
    ready: threading.Event,
) -> None:
    """The poller's loop. It holds its client strongly only to start a discovery and to
    apply its outcome, never across the discovery's I/O nor the sleep, and ends when
    ``stop`` is set (by ``close()``, or by the finalizer of a client that was dropped) or
    the client is gone."""
    client = client_ref()
    quick = 0 if ready.is_set() else STARTUP_TRIES - 1
    while client is not None:
        if quick > 0 and not ready.is_set():
            quick -= 1
            delay = STARTUP_SPACING
        else:
            delay = poll_delay(client.poll_interval)
        client = None
        if stop.wait(delay):
            return
        client = client_ref()
        if client is None:
            return
        change = None
        try:
            job = client._begin(client._discovery_timeout)
            if job is not None:
                client = None
                outcome = job.outcome()
                client = client_ref()
                if client is None:  # dropped meanwhile
                    job.lock.release()
                    return
                change = client._end(job, outcome)[1]
        except Exception as exc:  # never let the poller die
            logger.exception("pymc: ElastiCache poll failed")
            # A log handler may keep the traceback: its frames must not keep the client.
            traceback.clear_frames(exc.__traceback__)
            client = client_ref()
            if client is None:
                return
        if change is not None and client.on_change is not None:
            # Called from this frame, whose client variable is cleared before the sleep:
            # a traceback a log handler keeps then holds no client.
            _run_hook(client.on_change, change)
        if client.plain:
            return


def _stop_discoveries(stop: threading.Event, sockets: Dict[int, socket.socket]) -> None:
    """Stop a poller and cut off its discovery in flight (for a client that is gone)."""
    stop.set()
    for sock in list(sockets.values()):
        _shut(sock)


def _run_hook(hook: ChangeHook, change: Change) -> None:
    """Call ``on_change``; a failure is logged."""
    try:
        hook(*change)
    except Exception:
        logger.exception("pymc: on_change hook failed")


class AWSElastiCacheHashClient(ElastiCacheClient):
    """For code written against pymemcache's ElastiCache extension: ``cfg_node`` is the
    configuration endpoint and :meth:`reconfigure_nodes` polls it now."""

    def __init__(self, cfg_node: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(cfg_node, *args, **kwargs)

    def reconfigure_nodes(self) -> None:
        self.refresh()
