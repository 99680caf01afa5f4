"""`HashClient`: keys spread over many servers, as a composition of the cluster's layers.

* the node set (:mod:`.nodeset`): every operation reads ``self._nodes`` once and uses that
  immutable :class:`NodeSet` to the end; a change builds a new one and swaps it in with one
  assignment, so the read path takes no lock;
* the health books (:mod:`.health`): failure counts, ejection, revival, the probe;
* the keyed dispatch (:mod:`.keyed` and :meth:`HashClient._run`): one key, its node's pooled
  client;
* the fan-out (:mod:`.fanout`) that the many-key commands (:mod:`.many`) run their plans on.

Layer: imports ``client``, ``pool``, ``protocol``, ``retry``, ``exceptions`` and the modules of
this package; no private name of any of them.
"""

from __future__ import annotations

import dataclasses
import logging
from functools import partial
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from ..client import (
    Client,
    ClientOptions,
    ServerSpec,
    normalize_server_spec,
    read_through,
    server_name,
    warn_if_config_endpoint,
)
from ..exceptions import (
    AllNodesDownError,
    MemcacheError,
    MemcacheIllegalInputError,
)
from ..pool import DEFAULT_POOL_TIMEOUT, PooledClient
from ..protocol import validate_key
from ..protocol.meta import meta_key
from ..retry import RetryPolicy
from .fanout import FanOut
from .health import PROBE_TIMEOUT, Health, is_connection_failure
from .keyed import ANY_KEY, NODE_CHECKS_KEY, keyed, went_noreply
from .many import ManyKeys
from .nodeset import AnyKey, Key, NodeSet
from .rendezvous import RendezvousHash

__all__ = ["EventHook", "HashClient"]

logger = logging.getLogger("pymc")

EventHook = Callable[[str, str, Dict[str, Any]], Any]

_MISSING: Any = object()


def _health_setting(name: str, doc: str) -> Any:
    """A HashClient attribute that is its health books' setting (read and written there)."""

    def get(self: HashClient) -> Any:
        return getattr(self._health, name)

    def put(self: HashClient, value: Any) -> None:
        setattr(self._health, name, value)

    return property(get, put, doc=doc)


class HashClient(ManyKeys):
    """A client for a cluster of memcached servers, thread-safe.

    pymemcache 4.0's arguments: ``servers``, ``hasher`` (``RendezvousHash`` places keys as
    pymemcache does; ``KetamaHash`` as libmemcached/pylibmc do), ``use_pooling``,
    ``max_pool_size``, ``pool_idle_timeout``, ``lock_generator``, ``retry_attempts``,
    ``retry_timeout``, ``dead_timeout``, ``ignore_exc`` and every :class:`Client` option;
    plus ``pool_timeout``, ``retry`` (a :class:`RetryPolicy`) and ``on_event(event,
    node, info)``, called on ``node_failed``, ``node_ejected``, ``node_revived`` and
    ``snapshot_swapped``. Without ``use_pooling`` each node gets one connection, shared
    safely (callers take turns). An ``on_command`` hook (a Client option) observes each
    command on its node, and a multi-key command once per node it goes to.
    """

    #: The class of each node's connections (pymemcache compatibility: a subclass of
    #: :class:`Client` may be put here).
    client_class = Client

    retry_attempts = _health_setting("retry_attempts", "Failures that eject a node.")
    retry_timeout = _health_setting(
        "retry_timeout", "Seconds a node that failed is not tried again."
    )
    dead_timeout = _health_setting("dead_timeout", "Seconds before an ejected node is probed.")

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
        on_event: Optional[EventHook] = None,
        options: Optional[ClientOptions] = None,
        **client_options: Any,
    ) -> None:
        if options is None:
            options = ClientOptions.create(serde, **client_options)
        elif serde is not None or client_options:
            raise TypeError("pass either options= or client arguments, not both")
        self.options = options
        self.ignore_exc = options.ignore_exc
        self._prefix = options.key_prefix
        self._unicode = options.allow_unicode_keys
        self._hooked = options.on_command is not None
        # The nodes always raise; this client decides what ignore_exc hides.
        self._node_options = dataclasses.replace(options, ignore_exc=False)
        # A probe of a dead node must end even when the client has no timeouts.
        # (and, being no caller's command, is not shown to the on_command hook).
        probe_options = dataclasses.replace(
            self._node_options,
            connect_timeout=options.connect_timeout or PROBE_TIMEOUT,
            timeout=options.timeout or PROBE_TIMEOUT,
            on_command=None,
        )
        self.hasher = hasher
        self.use_pooling = use_pooling
        self._pool_args: Dict[str, Any] = {
            "max_pool_size": max_pool_size if use_pooling else 1,
            "pool_idle_timeout": pool_idle_timeout,
            "lock_generator": lock_generator,
            "pool_timeout": pool_timeout,
            "retry": retry,
        }
        self.retry = retry
        self.on_event = on_event
        # The health books, and the changes of the node set they make (ejection, revival).
        self._health = Health(
            retry_attempts=retry_attempts,
            retry_timeout=retry_timeout,
            dead_timeout=dead_timeout,
            probe_options=probe_options,
            current=lambda: self._nodes,
            rebuild=self._next_snapshot,
            publish=self._swap,
            emit=self._emit,
        )
        # Kept at hand for the read paths (one attribute each): changed in place only.
        self._failures = self._health.failures  # node -> (count, last failure)
        self._dead = self._health.dead  # node -> (spec, pool, when it last failed)
        # Requests take _lock briefly (health books, the swap); a change of the node set holds
        # _change_lock while it builds the new snapshot, and _lock only to publish it. Both
        # are free again in a forked child.
        self._lock = self._health.lock
        self._change_lock = self._health.change_lock
        self._fanout = FanOut(self, self._health)
        # Nodes that answered a meta command: a quiet ms pipeline goes to the others through
        # their own client, which checks before any value goes out (see Client.meta_set).
        self._meta_nodes: Set[str] = set()
        # node -> (health.still_usable(node), health.count_failure(node)), for PooledClient.run
        self._usable_checks: Dict[str, Tuple[Callable[[], None], Callable[[Exception], None]]] = {}
        self._tls_hostnames: Dict[str, str] = {}  # node -> name its certificate carries
        specs = [normalize_server_spec(s) for s in servers]
        for spec in specs:
            warn_if_config_endpoint(spec, type(self).__name__)
        self._nodes = NodeSet(
            0,
            {server_name(s): s for s in specs},
            {server_name(s): self._make_pool(s) for s in specs},
            hasher,
        )

    # ------------------------------------------------------------------ the node set

    @property
    def snapshot(self) -> NodeSet:
        """The current immutable snapshot of the node set."""
        return self._nodes

    @property
    def nodes(self) -> List[ServerSpec]:
        """The live nodes now: ``[(host, port), ...]`` (a path for UNIX sockets)."""
        return list(self._nodes.servers.values())

    @property
    def clients(self) -> Dict[str, PooledClient]:
        """``{node name: its pooled client}`` of the current snapshot."""
        return dict(self._nodes.clients)

    def _no_nodes(self) -> AllNodesDownError:
        """The error for a request that finds no node to go to."""
        return AllNodesDownError("all memcached nodes are down (every one was ejected)")

    def _make_pool(self, server: ServerSpec) -> PooledClient:
        hostname = self._tls_hostnames.get(server_name(server))
        pool = PooledClient(
            server, options=self._node_options, tls_hostname=hostname, **self._pool_args
        )
        pool.client_class = self.client_class
        return pool

    def _emit(self, event: str, node: str, **info: Any) -> None:
        level = logging.INFO if event in ("snapshot_swapped", "node_revived") else logging.WARNING
        logger.log(level, "pymc %s: %s %s", event, node, info or "")
        if self.on_event is not None:
            try:
                self.on_event(event, node, info)
            except Exception:
                logger.exception("pymc on_event hook failed")

    def _next_snapshot(
        self, servers: Dict[str, ServerSpec], clients: Dict[str, PooledClient]
    ) -> NodeSet:
        """Build (not publish) the snapshot after the current one. Called with _change_lock
        held and _lock free: building a locator takes milliseconds, and requests take _lock."""
        return NodeSet(self._nodes.version + 1, servers, clients, self.hasher)

    def _swap(self, new: NodeSet) -> NodeSet:
        """Publish ``new`` with one assignment (_change_lock and _lock held). Returns the old
        snapshot."""
        old = self._nodes
        self._nodes = new
        return old

    def set_servers(self, servers: Iterable[Any]) -> bool:
        """Make the node set exactly ``servers``: pools of nodes that stay are kept, new
        nodes get new pools, removed nodes' pools close once their operations finish.
        Returns whether anything changed."""
        specs = {server_name(s): s for s in map(normalize_server_spec, servers)}
        with self._change_lock:
            # Which nodes are dead changes only under _change_lock (a probe that fails
            # updates an entry's time, not the set), so it holds still while we build.
            old = self._nodes
            dead = set(self._dead)
            live = {n: s for n, s in specs.items() if n not in dead}
            if set(live) == set(old.names) and dead <= set(specs):
                return False
            clients = {}
            for name, spec in live.items():
                clients[name] = old.clients.get(name) or self._make_pool(spec)
            new = self._next_snapshot(live, clients)  # outside _lock
            retired = [c for n, c in old.clients.items() if n not in live]
            with self._lock:
                retired.extend(self._health.forget(specs))
                self._swap(new)
        for pool in retired:
            pool.client_pool.retire()
        self._emit("snapshot_swapped", ",".join(new.names), version=new.version)
        return True

    def add_server(self, server: Any, port: Optional[int] = None) -> None:
        """Add a node (``server`` may be a host with ``port``)."""
        spec = normalize_server_spec((server, port) if port is not None else server)
        with self._change_lock:  # read and replace the node set as one step
            self.set_servers([*self._nodes.servers.values(), spec, *self._health.dead_specs()])

    def remove_server(self, server: Any, port: Optional[int] = None) -> None:
        """Remove a node for good; its keys move to the others."""
        name = server_name(normalize_server_spec((server, port) if port is not None else server))
        with self._change_lock:  # read and replace the node set as one step
            rest = [s for n, s in self._nodes.servers.items() if n != name]
            self.set_servers(rest + [s for n, s in self._health.dead_items() if n != name])

    # ------------------------------------------------------------------ single keys

    def _run(
        self,
        command: str,
        key: AnyKey,
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
        on_failure: Any,
    ) -> Any:
        """Run ``command`` on ``key``'s node: ``args`` are the command's arguments, ``key``
        first (passed on as they are, but for a tuple key, whose server key is dropped)."""
        nodes = self._nodes
        routing_key: Any = key
        real_key: Any = key
        if type(key) is tuple:
            routing_key, real_key = key
        # A bad key raises before routing, whatever ignore_exc says: checked here, or, for
        # the commands whose client checks it first, by the node's client (and here if
        # anything fails before: see below). An on_command hook never sees a bad key.
        if command not in NODE_CHECKS_KEY or self._hooked:
            self._check_key(command, real_key)
        if self._dead:
            self._health.maybe_probe()
        name: Optional[str] = None
        pool: Optional[PooledClient] = None
        try:
            name = nodes.cache.get(routing_key) or nodes.node_for(routing_key)
            if name is None:
                raise self._no_nodes()
            if self._failures and self._health.fail_fast(name):
                raise self._health.resting(
                    name, f"failed less than {self._health.retry_timeout} s ago"
                )
            checks = self._usable_checks.get(name)
            if checks is None:  # (one pair per node name, made once: this is every keyed call)
                checks = self._usable_checks[name] = (
                    partial(self._health.still_usable, name),
                    partial(self._health.count_failure, name),
                )
            if real_key is not key:  # a (server_key, key) tuple: the node gets the key
                args = (real_key, *args[1:])
            pool = nodes.clients[name]
            result = pool.run(command, args, kwargs, checks[0], checks[1])
        except MemcacheIllegalInputError:
            raise  # bad input is the caller's to fix: never hidden by ignore_exc
        except Exception as exc:
            self._check_key(command, real_key)  # a bad key is the error, whatever failed
            if name is None and not isinstance(exc, MemcacheError):
                raise  # the key could not be routed (an unhashable server key): no node failed
            # (Without a retry policy the pool counted it, before the connection went back.)
            if name is not None and (pool is None or pool.retry is not None):
                self._health.count_failure(name, exc)
            if self.ignore_exc:
                return on_failure(args[1:], kwargs) if callable(on_failure) else on_failure
            raise
        if (
            self._failures
            and name in self._failures
            and not went_noreply(command, args, kwargs, self.options.default_noreply)
        ):
            self._health.succeeded(name)  # (a noreply command read nothing: no proof of health)
        return result

    def _check_key(self, command: str, key: Any) -> None:
        """Raise MemcacheIllegalInputError if ``key`` is no key ``command`` takes."""
        if command in ANY_KEY:
            meta_key(key, self._prefix, True)  # any str/bytes key (base64 on the wire)
        else:
            validate_key(key, self._prefix, self._unicode)

    # ------------------------------------------------------------------ every node

    def _each(self, command: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        if not self._nodes.clients:  # no node: nothing was done, which is no success
            if self.ignore_exc:
                return {}
            raise self._no_nodes()
        out: Dict[str, Any] = {}
        for name, client in self._nodes.clients.items():
            try:
                out[name] = client.run(command, args, kwargs)
            except Exception as exc:
                if is_connection_failure(exc):
                    self._health.failed(name, exc)
                if not self.ignore_exc:
                    raise
        return out

    def stats(self, *args: Any) -> Dict[str, Dict[bytes, Any]]:
        """``{node: its stats}`` for every live node."""
        return self._each("stats", *args)

    def version(self) -> Dict[str, bytes]:
        """``{node: its version}``."""
        return self._each("version")

    def flush_all(self, delay: int = 0, noreply: Optional[bool] = None) -> bool:
        """Flush every node. True when all answered OK."""
        return all(self._each("flush_all", delay, noreply).values())

    def cache_memlimit(self, memlimit: int) -> bool:
        return all(self._each("cache_memlimit", memlimit).values())

    def verbosity(self, level: int, noreply: Optional[bool] = None) -> bool:
        return all(self._each("verbosity", level, noreply).values())

    def quit(self) -> None:
        if self._nodes.clients:  # no node: nothing to quit
            self._each("quit")

    def close(self) -> None:
        """Close every idle connection of every node (live or dead)."""
        for client in list(self._nodes.clients.values()):
            client.close()
        for _, pool, _ in list(self._dead.values()):
            pool.close()

    disconnect_all = close

    def __enter__(self) -> HashClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        nodes = self._nodes
        return (
            f"<{type(self).__name__} v{nodes.version} nodes={list(nodes.names)} "
            f"dead={list(self._dead)}>"
        )

    set = keyed(Client.set)
    add = keyed(Client.add)
    replace = keyed(Client.replace)
    append = keyed(Client.append)
    prepend = keyed(Client.prepend)
    cas = keyed(Client.cas)
    get = keyed(Client.get)
    gets = keyed(Client.gets)
    gat = keyed(Client.gat)
    gats = keyed(Client.gats)
    delete = keyed(Client.delete)
    touch = keyed(Client.touch)
    incr = keyed(Client.incr)
    decr = keyed(Client.decr)
    meta_get = keyed(Client.meta_get)
    lease_get = keyed(Client.lease_get)
    lease_set = keyed(Client.lease_set)
    lease_release = keyed(Client.lease_release)
    meta_set = keyed(Client.meta_set)
    meta_delete = keyed(Client.meta_delete)
    meta_arithmetic = keyed(Client.meta_arithmetic)
    get_cas = keyed(Client.get_cas)
    set_cas = keyed(Client.set_cas)
    invalidate = keyed(Client.invalidate)

    def fetch(
        self,
        key: AnyKey,
        compute: Callable[[], Any],
        ttl: int = 0,
        *,
        lease_ttl: int = 30,
        recache_ttl: Optional[int] = None,
        wait: Optional[float] = None,
    ) -> Any:
        """As :meth:`Client.fetch`, on the key's node. With ``ignore_exc`` a failing node
        makes it ``compute()`` and return the value, uncached."""
        if not self.ignore_exc:
            return read_through(self, key, compute, ttl, lease_ttl, recache_ttl, wait)
        computed: List[Any] = []  # [] not called; [value]; [None, error] it raised

        def once() -> Any:
            try:
                computed.append(compute())
            except BaseException as exc:
                computed[:] = [None, exc]
                raise
            return computed[0]

        try:
            return read_through(self, key, once, ttl, lease_ttl, recache_ttl, wait)
        except MemcacheError as exc:
            # compute()'s own error is raised as it was; a cache error costs no second
            # compute() once a value was computed
            if len(computed) == 2 or isinstance(exc, MemcacheIllegalInputError):
                raise
            return computed[0] if computed else compute()

    @property
    def key_prefix(self) -> bytes:
        return self.options.key_prefix

    def check_key(self, key: Key, key_prefix: Optional[bytes] = None) -> bytes:
        """Validate ``key`` and return it prefixed, as bytes (as Client.check_key)."""
        prefix = self._prefix if key_prefix is None else key_prefix
        return validate_key(key, prefix, self._unicode)

    def __getitem__(self, key: AnyKey) -> Any:
        value = self._run("get", key, (key, _MISSING), {}, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: AnyKey, value: Any) -> None:
        self._run("set", key, (key, value), {}, False)

    def __delitem__(self, key: AnyKey) -> None:
        self._run("delete", key, (key,), {}, False)
