"""`HashClient` for asyncio: keys spread over many memcached servers, every command a
coroutine with the sync :class:`pymc.HashClient`'s signature and result.

The cluster's rules are the sync client's, reused as they are: the node set
(:class:`~pymc.cluster.NodeSet`, the locators), the health books (failure counts,
ejection, revival, ``retry_attempts``/``retry_timeout``/``dead_timeout``), the plans and
results of the many-key commands (:class:`~pymc.cluster.many.ManyKeys`). They live in a
*core*: a sync :class:`pymc.cluster.HashClient` whose nodes are asyncio pools and whose
blocking-looking calls hand their I/O to the loop (the bridge). What runs natively, with no
greenlet:

* the keyed commands (``get``, ``set``, ... one key, its node's pooled client): the node is
  chosen from one snapshot, the command runs on the node's asyncio pool;
* the fan-out of the many-key commands (:mod:`pymc.asyncio.fanout`): each node's plan
  (``node_retrieval_plan`` for ``get_many``) is executed by the connection itself, the
  replies are read as they arrive, and each connection goes back at once;
* the commands sent to every node (``stats``, ``version``, ``flush_all``, ...);
* the probe of the ejected nodes (:func:`~pymc.asyncio.nodes.probe_dead`): a task of the
  loop, one at a time, each dead node asked for its version on a connection of its own
  under the probe's timeouts; ``close()`` cancels it.

The many-key commands' own logic (checking and placing keys, building each node's plan,
decoding) runs in the bridge, as the sync code it is.

Layer: imports ``client``, ``cluster``, ``exceptions``, ``protocol``, ``retry`` and this
package's ``bridge``, ``client``, ``pool``, ``fanout`` and ``nodes``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Tuple

from ..client import ServerSpec, server_name
from ..cluster import HashClient as SyncHashClient
from ..cluster import NodeSet, RendezvousHash
from ..cluster.health import is_connection_failure
from ..cluster.keyed import NODE_CHECKS_KEY, ON_FAILURE, split_key, went_noreply
from ..cluster.nodeset import AnyKey, Key
from ..exceptions import AllNodesDownError, MemcacheError, MemcacheIllegalInputError
from ..pool import DEFAULT_POOL_TIMEOUT
from ..protocol import validate_keys
from ..protocol.plans import Plan, node_retrieval_plan
from ..protocol.results import decode_parts
from ..retry import RetryPolicy
from .bridge import await_, run_sync
from .client import Client
from .fanout import AsyncFanOut
from .nodes import bridged_fetch, execute_alone, probe_dead
from .pool import PooledClient

__all__ = ["HashClient"]

logger = logging.getLogger("pymc")

_MISSING: Any = object()


class _BridgedFanOut:
    """The core's fan-out, for the sync many-key commands running in the bridge: hands
    each fan-out to the native :class:`AsyncFanOut`."""

    def __init__(self, fanout: AsyncFanOut) -> None:
        self._fanout = fanout

    def execute(self, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        return await_(self._fanout.execute(*args, **kwargs))


class _BridgedNode:
    """A node's asyncio pool as the sync many-key commands call it (``run``)."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def run(self, command: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        return await_(getattr(self._pool, command)(*args, **kwargs))


class ClusterCore(SyncHashClient):
    """The sync cluster client an asyncio :class:`HashClient` keeps its state and rules in:
    nodes are asyncio pools; what would block hands its I/O to the loop (see the module).
    ``owner`` is the asyncio client; the other arguments are HashClient's."""

    _nodes: NodeSet
    _health: Any

    def __init__(self, owner: Any, servers: Iterable[Any], *args: Any, **kwargs: Any) -> None:
        self._owner = owner  # (first: the node pools are made by super().__init__)
        super().__init__(servers, *args, **kwargs)
        self.fanout = AsyncFanOut(self, self._health)
        self._fanout = _BridgedFanOut(self.fanout)  # type: ignore[assignment]
        #: The probe of the dead nodes while it runs: a task of the loop (no thread).
        self.probe_task: Optional[asyncio.Task[None]] = None
        self._health.start_probe = self._start_probe

    def _start_probe(self) -> None:
        """Start the probe of the dead nodes as a task of the running loop (called, with
        the probe's turn taken, by ``maybe_probe`` on the loop or in the bridge)."""
        task = asyncio.get_running_loop().create_task(probe_dead(self._health), name="pymc-probe")
        task.add_done_callback(self._probe_ended)
        self.probe_task = task

    def _probe_ended(self, task: asyncio.Task[None]) -> None:
        self._health.probe_ended()
        if not task.cancelled() and task.exception() is not None:
            logger.error("pymc: the probe of the dead nodes failed", exc_info=task.exception())

    async def stop_probe(self) -> None:
        """Cancel the probe in flight, if any, and wait for its end."""
        task = self.probe_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task])  # (its cancellation is not this caller's)

    def _make_pool(self, server: ServerSpec) -> Any:
        hostname = self._tls_hostnames.get(server_name(server))
        args = dict(self._pool_args)
        args.pop("lock_generator", None)  # (threads' locks: nothing to an asyncio pool)
        pool = self._owner.pool_class(
            server, options=self._node_options, tls_hostname=hostname, **args
        )
        pool.client_class = self._owner.client_class
        return pool

    # In the bridge: the sync code's calls of a node, or of the client, go to the loop.

    def _run(
        self,
        command: str,
        key: AnyKey,
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
        on_failure: Any,
    ) -> Any:
        return await_(self._owner._run(command, key, args, kwargs, on_failure))

    def _each(self, command: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        return await_(self._owner._each(command, *args, **kwargs))

    def _nodes_client(self, name: str) -> Any:
        return _BridgedNode(super()._nodes_client(name))

    def _execute_alone(self, client: Any, passes: List[Plan]) -> None:
        await_(execute_alone(client, passes))

    def placed(self, nodes: NodeSet, checked: Dict[bytes, Any]) -> Dict[str, Dict[bytes, Any]]:
        """Checked keys (``{raw: key}``) by node: the sync get_many's placement."""
        return self._placed(nodes, checked)


def _health_setting(name: str, doc: str) -> Any:
    """An attribute of the core (its health books' setting), read and written there."""

    def get(self: HashClient) -> Any:
        return getattr(self._core, name)

    def put(self: HashClient, value: Any) -> None:
        setattr(self._core, name, value)

    return property(get, put, doc=doc)


class HashClient:
    """An asyncio client for a cluster of memcached servers: :class:`pymc.HashClient`'s
    arguments and rules, every command a coroutine (see :mod:`pymc.asyncio.cluster`).
    Without ``use_pooling`` each node gets one connection, which the node's commands take
    in turn. ``set_servers``, ``add_server`` and ``remove_server`` do no I/O: plain
    methods, as ``check_key``."""

    #: The class of each node's connections (a subclass of the asyncio Client may be put here).
    client_class: Any = Client
    #: The class of each node's pool.
    pool_class: Any = PooledClient
    core_class: Any = ClusterCore

    retry_attempts = _health_setting("retry_attempts", "Failures that eject a node.")
    retry_timeout = _health_setting(
        "retry_timeout", "Seconds a node that failed is not tried again."
    )
    dead_timeout = _health_setting("dead_timeout", "Seconds before an ejected node is probed.")

    if TYPE_CHECKING:  # the commands are installed below, from the sync client's list

        def __getattr__(self, name: str) -> Any: ...

    def __init__(
        self,
        servers: Iterable[Any],
        hasher: Callable[[], Any] = RendezvousHash,
        serde: Any = None,
        *,
        max_pool_size: Optional[int] = None,
        pool_idle_timeout: float = 0,
        lock_generator: Optional[Callable[[], Any]] = None,
        retry_attempts: int = 2,
        retry_timeout: float = 1,
        dead_timeout: float = 60,
        use_pooling: bool = False,
        pool_timeout: Optional[float] = DEFAULT_POOL_TIMEOUT,
        retry: Optional[RetryPolicy] = None,
        on_event: Optional[Callable[[str, str, Dict[str, Any]], Any]] = None,
        options: Any = None,
        **client_options: Any,
    ) -> None:
        self._core = core = self.core_class(
            self,
            servers,
            hasher,
            serde,
            max_pool_size=max_pool_size,
            pool_idle_timeout=pool_idle_timeout,
            lock_generator=lock_generator,
            retry_attempts=retry_attempts,
            retry_timeout=retry_timeout,
            dead_timeout=dead_timeout,
            use_pooling=use_pooling,
            pool_timeout=pool_timeout,
            retry=retry,
            on_event=on_event,
            options=options,
            **client_options,
        )
        self.options = core.options
        self._health = core._health
        self._failures = self._health.failures  # (changed in place only)
        self._dead = self._health.dead
        self._hooked = core.options.on_command is not None
        self._fanout: AsyncFanOut = core.fanout
        # node -> (health.still_usable(node), health.count_failure(node)), for the node pool
        self._usable_checks: Dict[str, Tuple[Callable[[], None], Callable[[Exception], None]]] = {}

    # ------------------------------------------------------------------ the node set

    @property
    def ignore_exc(self) -> bool:
        return self._core.ignore_exc  # type: ignore[no-any-return]

    @ignore_exc.setter
    def ignore_exc(self, value: bool) -> None:
        self._core.ignore_exc = value

    @property
    def hasher(self) -> Callable[[], Any]:
        return self._core.hasher  # type: ignore[no-any-return]

    @property
    def use_pooling(self) -> bool:
        return self._core.use_pooling  # type: ignore[no-any-return]

    @property
    def retry(self) -> Optional[RetryPolicy]:
        return self._core.retry  # type: ignore[no-any-return]

    @property
    def on_event(self) -> Any:
        return self._core.on_event

    @on_event.setter
    def on_event(self, hook: Any) -> None:
        self._core.on_event = hook

    @property
    def snapshot(self) -> NodeSet:
        """The current immutable snapshot of the node set."""
        return self._core.snapshot  # type: ignore[no-any-return]

    @property
    def nodes(self) -> List[ServerSpec]:
        """The live nodes now: ``[(host, port), ...]`` (a path for UNIX sockets)."""
        return self._core.nodes  # type: ignore[no-any-return]

    @property
    def clients(self) -> Dict[str, Any]:
        """``{node name: its asyncio pooled client}`` of the current snapshot."""
        return self._core.clients  # type: ignore[no-any-return]

    def set_servers(self, servers: Iterable[Any]) -> bool:
        """As :meth:`pymc.HashClient.set_servers` (no I/O: the connections of a removed node
        close as they come back)."""
        return self._core.set_servers(servers)  # type: ignore[no-any-return]

    def add_server(self, server: Any, port: Optional[int] = None) -> None:
        """Add a node (``server`` may be a host with ``port``)."""
        self._core.add_server(server, port)

    def remove_server(self, server: Any, port: Optional[int] = None) -> None:
        """Remove a node for good; its keys move to the others."""
        self._core.remove_server(server, port)

    @property
    def key_prefix(self) -> bytes:
        return self.options.key_prefix  # type: ignore[no-any-return]

    def check_key(self, key: Key, key_prefix: Optional[bytes] = None) -> bytes:
        """Validate ``key`` and return it prefixed, as bytes (as Client.check_key)."""
        return self._core.check_key(key, key_prefix)  # type: ignore[no-any-return]

    def _check_key(self, command: str, key: Any) -> None:
        self._core._check_key(command, key)

    def _no_nodes(self) -> Exception:
        return self._core._no_nodes()  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ single keys

    async def _run(
        self,
        command: str,
        key: AnyKey,
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
        on_failure: Any,
    ) -> Any:
        """Run ``command`` on ``key``'s node (see :meth:`pymc.HashClient._run`, whose rules
        these are): ``args`` are the command's arguments, ``key`` first."""
        nodes: NodeSet = self._core._nodes
        routing_key: Any = key
        real_key: Any = key
        if type(key) is tuple:
            routing_key, real_key = key
        if command not in NODE_CHECKS_KEY or self._hooked:
            self._check_key(command, real_key)
        health = self._health
        if self._dead:
            health.maybe_probe()
        name: Optional[str] = None
        pool: Any = None
        try:
            name = nodes.cache.get(routing_key) or nodes.node_for(routing_key)
            if name is None:
                raise self._no_nodes()
            if self._failures and health.fail_fast(name):
                raise health.resting(name, f"failed less than {health.retry_timeout} s ago")
            checks = self._usable_checks.get(name)
            if checks is None:  # (one pair per node name, made once: this is every keyed call)
                checks = self._usable_checks[name] = (
                    partial(health.still_usable, name),
                    partial(health.count_failure, name),
                )
            if real_key is not key:  # a (server_key, key) tuple: the node gets the key
                args = (real_key, *args[1:])
            pool = nodes.clients[name]
            result = await pool.run(command, args, kwargs, checks[0], checks[1])
        except MemcacheIllegalInputError:
            raise  # bad input is the caller's to fix: never hidden by ignore_exc
        except Exception as exc:
            self._check_key(command, real_key)  # a bad key is the error, whatever failed
            if name is None and not isinstance(exc, MemcacheError):
                raise  # the key could not be routed (an unhashable server key): no node failed
            # (Without a retry policy the pool counted it, before the connection went back.)
            if name is not None and (pool is None or pool.retry is not None):
                health.count_failure(name, exc)
            if self.ignore_exc:
                return on_failure(args[1:], kwargs) if callable(on_failure) else on_failure
            raise
        if (
            self._failures
            and name in self._failures
            and not went_noreply(command, args, kwargs, self.options.default_noreply)
        ):
            health.succeeded(name)  # (a noreply command read nothing: no proof of health)
        return result

    async def _bridged(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``method(core, *args, **kwargs)`` (the sync client's command) in the bridge."""
        return await run_sync(method, self._core, *args, **kwargs)

    # ------------------------------------------------------------------ every node

    async def _each(self, command: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        clients = self._core.snapshot.clients
        if not clients:  # no node: nothing was done, which is no success
            if self.ignore_exc:
                return {}
            raise self._no_nodes()
        out: Dict[str, Any] = {}
        for name, client in clients.items():
            try:
                out[name] = await getattr(client, command)(*args, **kwargs)
            except Exception as exc:
                if is_connection_failure(exc):
                    self._health.failed(name, exc)
                if not self.ignore_exc:
                    raise
        return out

    async def stats(self, *args: Any) -> Dict[str, Dict[bytes, Any]]:
        """``{node: its stats}`` for every live node."""
        return await self._each("stats", *args)

    async def version(self) -> Dict[str, bytes]:
        """``{node: its version}``."""
        return await self._each("version")

    async def flush_all(self, delay: int = 0, noreply: Optional[bool] = None) -> bool:
        """Flush every node. True when all answered OK."""
        return all((await self._each("flush_all", delay, noreply)).values())

    async def cache_memlimit(self, memlimit: int) -> bool:
        return all((await self._each("cache_memlimit", memlimit)).values())

    async def verbosity(self, level: int, noreply: Optional[bool] = None) -> bool:
        return all((await self._each("verbosity", level, noreply)).values())

    async def quit(self) -> None:
        if self._core.snapshot.clients:  # no node: nothing to quit
            await self._each("quit")

    async def close(self) -> None:
        """Cancel the probe of the dead nodes in flight, if any, and close every idle
        connection of every node (live or dead)."""
        await self._core.stop_probe()
        pools = list(self._core.snapshot.clients.values())
        pools += [pool for _, pool, _ in list(self._dead.values())]
        for pool in pools:
            await pool.close()

    disconnect_all = close

    async def __aenter__(self) -> HashClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        nodes = self._core.snapshot
        return (
            f"<{type(self).__name__} v{nodes.version} nodes={list(nodes.names)} "
            f"dead={list(self._dead)}>"
        )

    # ------------------------------------------------------------------ read-through

    async def fetch(
        self,
        key: AnyKey,
        compute: Callable[[], Any],
        ttl: int = 0,
        *,
        lease_ttl: int = 30,
        recache_ttl: Optional[int] = None,
        wait: Optional[float] = None,
    ) -> Any:
        """As :meth:`pymc.HashClient.fetch`; ``compute`` may be a coroutine function."""
        return await bridged_fetch(
            SyncHashClient.fetch,
            self._core,
            key,
            compute,
            ttl,
            lease_ttl=lease_ttl,
            recache_ttl=recache_ttl,
            wait=wait,
        )


def _keyed(command: str) -> Callable[..., Any]:
    """The coroutine method of keyed ``command``: runs on the key's node."""
    on_failure = ON_FAILURE[command]

    async def call(self: HashClient, /, *args: Any, **kwargs: Any) -> Any:
        if args:  # the key by position: the common case
            return await self._run(command, args[0], args, kwargs, on_failure)
        key, rest, kw = split_key(args, kwargs)
        return await self._run(command, key, (key, *rest), kw, on_failure)

    return call


def _many(command: str) -> Callable[..., Any]:
    """The coroutine method of many-key ``command``: the sync command's logic in the bridge,
    its fan-out native."""
    method = getattr(SyncHashClient, command)

    async def call(self: HashClient, /, *args: Any, **kwargs: Any) -> Any:
        return await self._bridged(method, *args, **kwargs)

    return call


async def _get(self: HashClient, key: Key, default: Any = None) -> Any:
    return await self._run("get", key, (key, default), {}, ON_FAILURE["get"])


def _no_alone(name: str) -> Any:  # pragma: no cover (every node has its plan, no retry)
    raise AssertionError(f"{name} has no plan")


async def _get_many(self: HashClient, keys: Iterable[AnyKey]) -> Dict[Any, Any]:
    """The sync get_many's steps with no bridge, in the common case (plain keys that are
    all valid, each node's keys in one request, no retry policy, no hook): the keys placed
    as the sync client places them, each node's ``node_retrieval_plan`` fanned out, the
    parts decoded by ``decode_parts``. Any other case is the sync command, in the bridge."""
    core = self._core
    if type(keys) is not list:
        keys = list(keys)
    if self._hooked or core.retry is not None or not keys:
        return await self._bridged(SyncHashClient.get_many, keys)  # type: ignore[no-any-return]
    opts = self.options
    try:
        checked = validate_keys(keys, opts.key_prefix, opts.allow_unicode_keys)  # type: ignore[arg-type]
    except MemcacheIllegalInputError:  # (or (server_key, key) tuples: the sync rules)
        return await self._bridged(SyncHashClient.get_many, keys)  # type: ignore[no-any-return]
    nodes: NodeSet = core._nodes
    if not nodes.names:  # no node yet (an ElastiCacheClient's first discovery) or none left
        return await self._bridged(SyncHashClient.get_many, keys)  # type: ignore[no-any-return]
    try:
        wanted_by_node = core.placed(nodes, checked)
    except AllNodesDownError:
        if core.ignore_exc:
            return {}
        raise
    plans: Dict[str, Optional[Plan]] = {}
    for name, wanted in wanted_by_node.items():
        plan = plans[name] = node_retrieval_plan(b"get", wanted, False)
        if len(plan.request) > opts.max_get_line:  # (goes alone, in passes: the sync way)
            return await self._bridged(SyncHashClient.get_many, keys)  # type: ignore[no-any-return]
    found = await self._fanout.execute("get_many", nodes, plans, _no_alone)
    return decode_parts(list(found.values()), checked, opts, False)


#: The keyed commands (the sync HashClient's, one key each) and the many-key ones.
KEYED = [name for name in ON_FAILURE if name != "get"]
MANY = [
    "gets_many",
    "set_many",
    "delete_many",
    "touch_many",
    "meta_get_many",
    "meta_set_many",
    "meta_delete_many",
]
ALIASES = {
    "get_multi": "get_many",  # (get_many: native, see _get_many)
    "gets_multi": "gets_many",
    "set_multi": "set_many",
    "delete_multi": "delete_many",
}


def _install(name: str, fn: Callable[..., Any]) -> None:
    sync = getattr(SyncHashClient, name)
    fn.__name__ = name
    fn.__qualname__ = f"HashClient.{name}"
    fn.__doc__ = sync.__doc__
    fn.__signature__ = inspect.signature(sync)  # type: ignore[attr-defined]
    setattr(HashClient, name, fn)


_install("get", _get)
_install("get_many", _get_many)
for _name in KEYED:
    _install(_name, _keyed(_name))
for _name in MANY:
    _install(_name, _many(_name))
for _alias, _name in ALIASES.items():
    setattr(HashClient, _alias, getattr(HashClient, _name))
del _name, _alias
