"""`ElastiCacheClient` for asyncio: an asyncio :class:`~pymc.asyncio.HashClient` whose nodes
come from an ElastiCache configuration endpoint, with the rules of the sync
:class:`pymc.elasticache.ElastiCacheClient` (see :mod:`pymc.elasticache`).

The same discovery: the exchange and its tolerant parser (:func:`config_exchange` over the
protocol's readers), the same order and time shares (the endpoint, then the known nodes,
:meth:`Discovery.attempts`), the same judgement of each outcome (:class:`FollowsConfig`:
only a bare ``ERROR`` twice makes the endpoint the one node; anything else keeps the last
good node set, or leaves the client not ready). Only the I/O differs: an asyncio connection
per try (DNS through the loop), within the try's share of one overall deadline.

The poller is an asyncio task, started with the client (or at its first use, when the
client is made outside a running loop). It holds the client weakly, so a client dropped
without ``close()`` is collected and its task cancelled. ``close()`` cancels it; after
``close()`` returns the node set never changes. Every command reads the node set once, so
its keys all go to the nodes of one version of the node list: never a misroute.

Until the first node list arrives, a command first waits for the first discovery (at most
its deadline: the sync client's constructor waits for it), then raises
:class:`~pymc.exceptions.ClusterNotReadyError` (or, with ``ignore_exc``, reads as a miss);
``await ec.wait_ready(timeout)`` waits for the node list. With ``ready_timeout``,
``async with`` raises ClusterNotReadyError (after closing) when no node list came in time.

Layer: imports ``client``, ``elasticache``, ``exceptions``, ``protocol`` and this package's
``cluster``.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import weakref
from typing import Any, Callable, Optional, Tuple, Union

from ..client import ServerSpec, normalize_server_spec, server_name
from ..elasticache.discovery import DISCOVERY_TIMEOUT, Discovery, config_exchange, logger
from ..elasticache.following import FollowsConfig
from ..elasticache.poller import STARTUP_SPACING, STARTUP_TRIES, Change, poll_delay, run_hook
from ..exceptions import (
    ClusterNotReadyError,
    MemcacheError,
    MemcacheNetworkError,
    MemcacheProtocolError,
    MemcacheTimeoutError,
    MemcacheUnexpectedCloseError,
    network_error,
)
from ..protocol import MAX_CONFIG_BYTES, NEED_DATA, ClusterConfig, Reader
from .cluster import ClusterCore, HashClient

__all__ = ["ElastiCacheClient", "fetch_config"]

Outcome = Union[ClusterConfig, Exception, None]


async def fetch_config(
    address: ServerSpec,
    timeout: float = DISCOVERY_TIMEOUT,
    tls_context: Any = None,
    server_hostname: Optional[str] = None,
    max_bytes: int = MAX_CONFIG_BYTES,
) -> Optional[ClusterConfig]:
    """:func:`pymc.elasticache.fetch_config` on the loop: one discovery exchange with
    ``address`` on a fresh connection, within ``timeout`` seconds overall (connect, TLS,
    ask, read); the config, None when the server has none, or a :class:`MemcacheError`."""
    if isinstance(address, str):
        raise ValueError(f"discovery needs a TCP address, not {address!r}")
    name = server_name(address)
    try:
        return await asyncio.wait_for(
            _exchange(address, tls_context, server_hostname, max_bytes), timeout
        )
    except MemcacheError:
        raise
    except asyncio.TimeoutError as exc:
        raise MemcacheTimeoutError(None, f"discovery at {name} timed out") from exc
    except OSError as exc:
        raise network_error(
            MemcacheNetworkError, exc, f"discovery at {name} failed: {exc}"
        ) from exc


async def _exchange(
    address: Tuple[str, int], tls_context: Any, server_hostname: Optional[str], max_bytes: int
) -> Optional[ClusterConfig]:
    """The discovery exchange on a fresh asyncio connection (see :func:`fetch_config`)."""
    name = server_name(address)
    host, port = address
    hostname = (server_hostname or host) if tls_context is not None else None
    stream, writer = await asyncio.open_connection(
        host, port, ssl=tls_context, server_hostname=hostname
    )
    try:
        reader = Reader(max_block=max_bytes)
        steps = config_exchange()
        request, expect = next(steps)
        while True:
            writer.write(request)
            result = expect.step(reader)
            while result is NEED_DATA:
                data = await stream.read(65536)
                if not data:
                    raise MemcacheUnexpectedCloseError(
                        f"{name} closed the connection during discovery"
                    )
                reader.feed(data)
                result = expect.step(reader)
            if reader.buffered:
                raise MemcacheProtocolError(f"{name} sent more than the discovery answer")
            try:
                request, expect = steps.send(result)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
    finally:
        writer.close()


async def outcome_of(job: Discovery) -> Outcome:
    """Run discovery ``job`` on the loop (its tries in :meth:`Discovery.attempts`' order and
    shares): the config, None (no configuration here) or the error that ended it."""
    steps = job.attempts()
    try:
        address, timeout, hostname = next(steps)
        while True:
            failure: Optional[BaseException] = None
            config: Optional[ClusterConfig] = None
            try:
                config = await fetch_config(address, timeout, job.tls_context, hostname)
            except (MemcacheError, OSError) as exc:
                failure = exc
            if failure is None:
                address, timeout, hostname = steps.send(config)
            else:
                address, timeout, hostname = steps.throw(failure)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    except (MemcacheError, OSError) as exc:
        return exc


class ElastiCacheCore(FollowsConfig, ClusterCore):
    """The core of an asyncio ElastiCacheClient: the cluster core, and what discovery found
    (readiness, the version in use, a plain server), applied by :class:`FollowsConfig`."""

    def __init__(self, owner: Any, servers: Any, *args: Any, **kwargs: Any) -> None:
        self.endpoint = servers.endpoint  # (see ElastiCacheClient._core_for)
        self.use_vpc = servers.use_vpc
        #: The version of the node list in use (None: none yet, or a plain server).
        self.config_version: Optional[int] = None
        #: The endpoint has no cluster configuration: it is the one node, not polled.
        self.plain = False
        self._closed = False
        self._failing = False  # discovery is failing, and that was said once
        self._older_seen: Optional[int] = None  # the last older version logged
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._state_lock = threading.Lock()  # (held for no await: the node-set swap)
        super().__init__(owner, [], *args, **kwargs)

    def discovery(self, tls_context: Any, deadline: float) -> Discovery:
        """The next discovery: the endpoint, then the nodes in use, before ``deadline``."""
        known = self._known_nodes()
        return Discovery(self.endpoint, known, tls_context, self._stop, {}, None, deadline)

    def apply(self, outcome: Outcome) -> Tuple[bool, Optional[Change]]:
        """Apply a discovery's outcome: whether the node set changed, and the change."""
        return self._take_outcome(outcome)


class ElastiCacheClient(HashClient):
    """An asyncio :class:`HashClient` whose nodes come from an ElastiCache configuration
    endpoint: :class:`pymc.elasticache.ElastiCacheClient`'s arguments (see the module for
    ``ready_timeout``); ``on_change(old, new)`` is called from the poller task."""

    core_class = ElastiCacheCore

    def __init__(
        self,
        endpoint: Any,
        poll_interval: float = 60.0,
        use_vpc: bool = True,
        on_change: Optional[Callable[..., Any]] = None,
        discovery_timeout: Optional[float] = None,
        ready_timeout: Optional[float] = None,
        **options: Any,
    ) -> None:
        if not 0 < poll_interval < math.inf:
            raise ValueError(f"poll_interval must be a finite number > 0, got {poll_interval!r}")
        if discovery_timeout is not None and not 0 < discovery_timeout < math.inf:
            raise ValueError(
                f"discovery_timeout must be None or a finite number > 0, got {discovery_timeout!r}"
            )
        address = normalize_server_spec(endpoint)
        if isinstance(address, str):
            raise ValueError("an ElastiCache endpoint is host:port")
        self.endpoint = address
        self.poll_interval = poll_interval
        self.use_vpc = use_vpc
        self.on_change = on_change
        self.ready_timeout = ready_timeout
        self._ec: ElastiCacheCore = None  # type: ignore[assignment]
        super().__init__(self._core_for(address, use_vpc), **options)
        self._ec = self._core
        opts = self.options
        self._discovery_timeout = float(
            discovery_timeout
            or max(opts.connect_timeout or 0, opts.timeout or 0)
            or DISCOVERY_TIMEOUT
        )
        self._tls_context = opts.tls_context
        self._refresh_lock = asyncio.Lock()  # one discovery + apply at a time
        self._task: Optional[asyncio.Task[None]] = None
        self._first: Optional[asyncio.Future[None]] = None  # the first discovery, while it runs
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # started at first use, on the loop that uses it
        self._start()

    @staticmethod
    def _core_for(endpoint: ServerSpec, use_vpc: bool) -> Any:
        """The servers argument of HashClient.__init__, which hands it to the core: the
        core of this client takes the endpoint instead (and starts with no node)."""
        return _CoreArgs(endpoint, use_vpc)

    # ------------------------------------------------------------------ state

    @property
    def config_version(self) -> Optional[int]:
        """The version of the node list in use (None: none yet, or a plain server)."""
        return self._ec.config_version

    @property
    def plain(self) -> bool:
        """The endpoint has no cluster configuration: it is the one node, not polled."""
        return self._ec.plain

    @property
    def ready(self) -> bool:
        """Whether a node list (or a plain server) is known."""
        return self._ec.ready

    @property
    def polling(self) -> bool:
        """Whether the poller task is running."""
        return self._task is not None and not self._task.done()

    async def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Wait up to ``timeout`` seconds for the first node list; return whether it came."""
        self._started()
        try:
            await asyncio.wait_for(self._ec._ready.wait(), timeout)
        except asyncio.TimeoutError:
            return self.ready
        return True

    # ------------------------------------------------------------------ the poller

    def _started(self) -> None:
        """Start the poller at first use (a client made outside a running loop)."""
        if self._task is None and not self._ec._closed:
            self._start()

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()
        name = f"pymc-elasticache-{server_name(self.endpoint)}"
        self._task = task = loop.create_task(_poll(weakref.ref(self), self._first), name=name)
        weakref.finalize(self, task.cancel)

    async def _before_command(self) -> None:
        """A command issued while the first discovery runs waits for it (as the sync
        client's constructor does)."""
        if self._task is None:
            self._started()
        first = self._first
        if first is not None and not first.done():
            await asyncio.shield(first)

    async def _run(self, *args: Any, **kwargs: Any) -> Any:
        if self._first is None or not self._first.done():
            await self._before_command()
        return await super()._run(*args, **kwargs)

    async def _each(self, command: str, *args: Any, **kwargs: Any) -> Any:
        if self._first is None or not self._first.done():
            await self._before_command()
        return await super()._each(command, *args, **kwargs)

    async def _bridged(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._first is None or not self._first.done():
            await self._before_command()
        return await super()._bridged(method, *args, **kwargs)

    async def refresh(self) -> bool:
        """Poll now; return whether the node set changed (see
        :meth:`pymc.elasticache.ElastiCacheClient.refresh`)."""
        self._started()
        changed, change = await self._refresh(self._discovery_timeout)
        if change is not None and self.on_change is not None:
            run_hook(self.on_change, change)
        return changed

    async def _refresh(self, timeout: float) -> Tuple[bool, Optional[Change]]:
        """One discovery, applied: whether the node set changed, and the ``(old, new)``
        lists for ``on_change``."""
        core = self._ec
        if core.plain or core._closed:
            return False, None
        deadline = time.monotonic() + timeout
        lock = self._refresh_lock
        await lock.acquire()  # (a discovery in flight ends by its own deadline)
        try:
            if core._stop.is_set():  # closed while this call waited
                return False, None
            if time.monotonic() >= deadline:
                return False, None  # another discovery took the whole deadline
            job = core.discovery(self._tls_context, deadline)
            outcome = await outcome_of(job)
            if core._stop.is_set():
                return False, None
            return core.apply(outcome)
        finally:
            lock.release()

    # ------------------------------------------------------------------ life cycle

    async def close(self) -> None:
        """Cancel the poller task (a discovery in flight with it) and close every
        connection. After this returns the node set never changes."""
        core = self._ec
        with core._state_lock:
            core._closed = True
        core._stop.set()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task])  # (its cancellation is not this caller's)
        await super().close()

    async def __aenter__(self) -> ElastiCacheClient:
        self._started()
        if self.ready_timeout is not None and not await self.wait_ready(self.ready_timeout):
            await self.close()
            raise ClusterNotReadyError(
                f"no node list from {server_name(self.endpoint)} within {self.ready_timeout} s"
            )
        return self

    def __repr__(self) -> str:
        state = "plain" if self.plain else ("ready" if self.ready else "not ready")
        return (
            f"<{type(self).__name__} {server_name(self.endpoint)} {state} "
            f"config_version={self.config_version} nodes={[server_name(n) for n in self.nodes]}>"
        )


class _CoreArgs:
    """What an ElastiCacheClient hands HashClient.__init__ as its servers."""

    __slots__ = ("endpoint", "use_vpc")

    def __init__(self, endpoint: ServerSpec, use_vpc: bool) -> None:
        self.endpoint = endpoint
        self.use_vpc = use_vpc


async def _poll(client_ref: Callable[[], Optional[ElastiCacheClient]], first: Any) -> None:
    """The poller task: the first discovery at once, then ``STARTUP_TRIES`` quick tries
    while not ready, then one every ``poll_interval`` (jittered). It holds its client
    strongly only during a discovery; it ends when the client is closed or gone, or is a
    plain server."""
    client = client_ref()
    try:
        if client is None:
            return
        first_timeout = client._discovery_timeout
        if client.ready_timeout is not None:
            first_timeout = max(min(first_timeout, client.ready_timeout), 0.001)
        await _poll_once(client, first_timeout)
    finally:
        if not first.done():
            first.set_result(None)
    quick = STARTUP_TRIES - 1
    while client is not None and not client.plain:
        if quick > 0 and not client.ready:
            quick -= 1
            delay = STARTUP_SPACING
        else:
            delay = poll_delay(client.poll_interval)
        client = None
        await asyncio.sleep(delay)
        client = client_ref()
        if client is None or client._ec._closed:
            return
        await _poll_once(client, client._discovery_timeout)


async def _poll_once(client: ElastiCacheClient, timeout: float) -> None:
    """One poll; a failure is logged, never raised (the poller never dies)."""
    try:
        change = (await client._refresh(timeout))[1]
        if change is not None and client.on_change is not None:
            run_hook(client.on_change, change)
    except Exception:
        logger.exception("pymc: ElastiCache poll failed")
