"""`HashClient`: keys spread over many servers through an immutable node-set snapshot.

Every operation reads ``self._nodes`` once and uses that :class:`NodeSet` to the end, so a
concurrent change (``add_server``, ``remove_server``, an ejection, a revival, an ElastiCache
poll) can never show it half a node set. A change builds a new NodeSet and swaps it in with
one assignment; the read path takes no lock.

Failover: a connection-level failure (network error, timeout, unexpected close, malformed
reply) counts against its node. After ``retry_attempts`` failures the node is ejected: a
new snapshot without it is swapped in and its keys move to the other nodes. After
``dead_timeout`` seconds a background probe (a thread, or a greenlet under gevent) asks it
for its version and re-admits it if it answers.

Multi-key commands group the keys by node, send every node its request, and only then read
the replies, in the order they arrive (one poll over the nodes' sockets), so they take the
slowest node's time, not the sum; each node's connection goes back to its pool as soon as
its own reply is read, so a slow node never holds a healthy node's connections, and
``timeout`` bounds the whole fan-out's reads.

Layer: imports ``client`` (``send``/``receive`` and ``decode_values``), ``protocol``,
``pool`` (``Lease``), ``hashing``, ``retry``, ``serde`` and ``exceptions``; no private name of
any of them.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import logging
import os
import select
import threading
import time
from errno import ETIMEDOUT
from functools import partial
from typing import (
    Any,
    Callable,
    Concatenate,
    Container,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    ParamSpec,
    Set,
    Tuple,
    TypeGuard,
    TypeVar,
    Union,
)

from ..client import (
    Client,
    ClientOptions,
    CommandEnd,
    Item,
    ServerSpec,
    begin_command,
    command_deadline,
    decode_parts,
    decode_values,
    end_command,
    meta_batches,
    normalize_server_spec,
    per_key_results,
    quiet_connections,
    quiet_deletes,
    quiet_gets,
    read_through,
    readiness_poll,
    refused_by_close,
    request_chunks,
    resolve_noreply,
    server_name,
    warn_if_config_endpoint,
)
from ..exceptions import (
    AllNodesDownError,
    MemcacheError,
    MemcacheIllegalInputError,
    MemcacheNetworkError,
    MemcacheProtocolError,
    MemcacheServerRefusedError,
    MemcacheTimeoutError,
    MemcacheUnsupportedCommandError,
    NodeRestingError,
    network_error,
)
from ..pool import DEFAULT_POOL_TIMEOUT, Lease, PooledClient
from ..protocol import (
    NEED_DATA,
    RULES,
    SPEEDUPS,
    ErrorReply,
    Expect,
    ExpectReplies,
    ExpectValues,
    Rule,
    encode_delete,
    encode_retrieval,
    encode_storage,
    encode_touch,
    validate_key,
    validate_keys,
)
from ..protocol.meta import ExpectMetaQuiet, MetaResult, encode_meta_noop, encode_meta_set, meta_key
from ..retry import RetryPolicy, call_with_retry
from ..serde import coerce_to_bytes
from .hashing import RendezvousHash, build_locator

__all__ = ["AllNodesDownError", "HashClient", "NodeSet"]

logger = logging.getLogger("pymc")

Key = Union[str, bytes]
AnyKey = Union[Key, Tuple[Any, Key]]
EventHook = Callable[[str, str, Dict[str, Any]], Any]
P = ParamSpec("P")
R = TypeVar("R")

_MISSING: Any = object()

#: Placement answers kept per snapshot (a snapshot is immutable, so they never go stale).
PLACEMENT_CACHE_SIZE = 65536
#: Seconds a probe of a dead node may take when the client sets no timeouts.
PROBE_TIMEOUT = 5.0
#: What a fan-out polls its connections for (a reply; EOF and errors come with it).
_POLLIN: int = getattr(select, "POLLIN", 1)
#: A fan-out sends at most this many commands to one node before reading its replies.
FANOUT_MAX_COMMANDS = 2048


def _is_connection_failure(exc: BaseException) -> bool:
    """A failure that counts against the node: its connection broke, its reply made no
    sense, or it refused connections (``ERROR Too many open connections``). A refusal of
    the command alone (an ``ERROR <message>`` that leaves the connection in step, or a
    proxy closing on a command it does not support) is that command's error, and a
    resting node's is no new failure."""
    if isinstance(exc, MemcacheServerRefusedError):
        return not exc.in_step
    return isinstance(exc, (MemcacheNetworkError, MemcacheProtocolError)) and not isinstance(
        exc, (NodeRestingError, MemcacheUnsupportedCommandError)
    )


def _retried_alone(
    policy: Optional[RetryPolicy], command: str, error: Exception
) -> TypeGuard[RetryPolicy]:
    """Whether a fan-out retries a node that failed with ``error`` alone (the one rule for
    its retry and for counting the failure before the connections go back)."""
    return policy is not None and not policy.exhausted and policy.is_retryable(command, error)


#: A node's part of a fan-out: its request, the reader of its reply (None: noreply) and
#: what turns that reply into the node's result.
Part = Tuple[bytes, Optional[Callable[[], Expect]], Callable[[Any], Any]]
#: A node's read in a fan-out: its name, connection, lease, reply reader and finish.
Reading = Tuple[str, Client, Lease[Client], Expect, Callable[[Any], Any]]
#: Starts the observation of one node's part of a fan-out (see ``HashClient._observer``).
Observe = Callable[[str], Optional[CommandEnd]]


#: What a meta pipeline's ``finish`` returns for a node to be asked again through its own
#: client, after the fan-out (which then raises that node's precise error).
_ASK_ALONE: Any = object()


def _no_meta(reply: ErrorReply) -> bool:
    """Whether a meta pipeline's error is a bare ``ERROR``: a server without meta commands
    (the connection was given up: its reader is poisoned)."""
    return reply.kind == b"ERROR" and not reply.message


def _items(reply: Any) -> Any:
    """A node's retrieval reply: its items, or its error raised as Client raises it."""
    if type(reply) is ErrorReply:
        raise reply.exception("get_many")
    return reply


def _all_true(group: List[AnyKey]) -> Callable[[Any], Dict[Any, bool]]:
    return lambda _: {k: True for k in group}


def _per_key(group: List[AnyKey], rule: Rule, where: str) -> Callable[[Any], _Answers]:
    def finish(replies: Any) -> _Answers:
        results, error = per_key_results(group, replies, rule, where)
        if error is not None and _is_connection_failure(error):
            # The server refused the connection (``ERROR Too many open connections``,
            # then a hang-up): the node's failure, counted and its connection destroyed,
            # not one command's error.
            raise error
        return _Answers(results, error)

    return finish


class _Answers(Dict[Any, Any]):
    """A node's answers to a pipeline, by key (False for a key whose reply was an error),
    and the exception for those error replies, if any."""

    def __init__(self, results: Iterable[Tuple[Any, Any]], error: Optional[Exception]) -> None:
        super().__init__(results)
        self.error = error


def _give_back(leases: List[Tuple[str, Lease[Client]]], done: Container[str]) -> None:
    """Return every leased connection: reused if its node is ``done`` (its reply was read
    to the end), destroyed otherwise. Every return is tried, even after one is interrupted
    (that exception is raised at the end); returning twice is harmless."""
    interrupted: Optional[BaseException] = None
    for name, lease in leases:
        try:
            lease.give_back(destroy=name not in done)
        except BaseException as exc:
            interrupted = interrupted or exc
    if interrupted is not None:
        raise interrupted


# Bumped in every child after os.fork(): a lock made in an earlier generation is replaced.
_fork_generation = [0]
# Lets one thread of a child replace a stale lock. Made anew in every child (when fork()
# runs, so a gevent-patched process gets a gevent lock); a parent never needs one.
_fork_guard: Any = None


def _after_fork_in_child() -> None:
    global _fork_guard
    _fork_guard = threading.Lock()
    _fork_generation[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _ForkSafeLock:
    """A lock that a forked child finds free.

    A child inherits every lock as it was at ``fork()`` but only the thread that forked: a
    lock that another thread (a probe, a request ejecting a node, a node-set change) held
    then would stay held for the life of the child. The first use in a child replaces it:
    check the generation, take the fork guard, check again, so two threads of the child never
    both replace it (one of them would then hold a lock the other just threw away).
    """

    __slots__ = ("_factory", "_generation", "_inner")

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._inner = factory()
        self._generation = _fork_generation[0]

    def _current(self) -> Any:
        if self._generation != _fork_generation[0]:
            with _fork_guard:
                if self._generation != _fork_generation[0]:
                    self._inner = self._factory()  # before the generation: see above
                    self._generation = _fork_generation[0]
        return self._inner

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return bool(self._current().acquire(blocking, timeout))

    def release(self) -> None:
        self._inner.release()

    def locked(self) -> bool:
        """Whether a thread holds it (a plain Lock only)."""
        return bool(self._current().locked())

    def __enter__(self) -> bool:
        return bool(self._current().acquire())

    def __exit__(self, *exc_info: object) -> None:
        self._inner.release()


class NodeSet:
    """One immutable view of the cluster: node names, locator, per-node clients, version.

    The locator is built in one step from all the names (see :func:`pymc.hashing.build_locator`:
    ``hasher.from_nodes(names, ...)`` for pymc's hashers, ``hasher()`` plus ``add_node`` per
    name for a pymemcache-style one).
    """

    __slots__ = ("_cache", "clients", "locator", "names", "servers", "version")

    def __init__(
        self,
        version: int,
        servers: Mapping[str, ServerSpec],
        clients: Mapping[str, PooledClient],
        hasher: Callable[[], Any],
    ) -> None:
        self.version = version
        self.servers = dict(servers)
        self.clients = dict(clients)
        self.names = tuple(servers)
        self.locator = build_locator(hasher, self.names)  # new, never changed later
        self._cache: Dict[Any, Optional[str]] = {}

    def node_for(self, key: Any) -> Optional[str]:
        """The node a key (str/bytes, or a tuple's server key) lives on; None if no node."""
        cache = self._cache
        name = cache.get(key)
        if name is None:
            if not self.names:
                return None
            name = self.locator.get_node(key)
            if len(cache) >= PLACEMENT_CACHE_SIZE:
                cache.clear()
            cache[key] = name
        return name

    def remember(self, keys: List[Any], name: str) -> None:
        """Cache the placement of ``keys`` (all on node ``name``)."""
        cache = self._cache
        if len(cache) + len(keys) > PLACEMENT_CACHE_SIZE:
            cache.clear()
        for key in keys:
            cache[key] = name

    def __repr__(self) -> str:
        return f"<NodeSet v{self.version} {list(self.names)}>"


def place_keys_py(
    checked: Dict[bytes, AnyKey], cache: Dict[Any, Optional[str]]
) -> Tuple[Dict[str, Dict[bytes, AnyKey]], Optional[Dict[AnyKey, bytes]]]:
    """``(placed, unseen)`` for checked keys (``{raw: key}``): each node's ``{raw: key}``
    for the keys whose node ``cache`` (a NodeSet's placement cache) knows, and ``{key: raw}``
    for the others (None when there are none). The reference of the compiled
    ``place_keys`` (pymc/speedups.c)."""
    placed: Dict[str, Dict[bytes, AnyKey]] = {}
    unseen: Optional[Dict[AnyKey, bytes]] = None
    for raw, key in checked.items():
        name = cache.get(key)
        if name is None:
            if unseen is None:
                unseen = {}
            unseen[key] = raw
        else:
            wanted = placed.get(name)
            if wanted is None:
                placed[name] = {raw: key}
            else:
                wanted[raw] = key
    return placed, unseen


place_keys: Callable[[Any, Any], Any] = place_keys_py
if SPEEDUPS:
    from ..protocol import speedups

    if hasattr(speedups, "place_keys"):  # (else a build older than this file)
        place_keys = speedups.place_keys


def _with_keys(
    finish: Callable[[Any, Dict[bytes, Any]], Any], key_of: Dict[bytes, Any]
) -> Callable[[Any], Any]:
    return lambda found: finish(found, key_of)


def _route(key: AnyKey) -> Any:
    """What a key is placed by: the server key of a ``(server_key, key)`` tuple."""
    return key[0] if type(key) is tuple else key


def _real(key: AnyKey) -> Key:
    """The key itself, without the routing part of a ``(server_key, key)`` tuple."""
    return key[1] if type(key) is tuple else key  # type: ignore[return-value]


def _default_arg(position: int, name: str, fallback: Any = None) -> Callable[..., Any]:
    """What ignore_exc returns: the caller's ``default`` argument (by position or name)."""

    def pick(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        if name in kwargs:
            return kwargs[name]
        return args[position] if len(args) > position else fallback

    return pick


def _both_defaults(args: Tuple[Any, ...], kwargs: Dict[str, Any], offset: int = 0) -> Any:
    return (
        _default_arg(offset, "default")(args, kwargs),
        _default_arg(offset + 1, "cas_default")(args, kwargs),
    )


# command -> what it returns with ignore_exc when its node fails
_ON_FAILURE: Dict[str, Any] = {
    "get": _default_arg(0, "default"),
    "gat": _default_arg(1, "default"),
    "gets": _both_defaults,
    "gats": lambda a, kw: _both_defaults(a, kw, 1),
    "set": False,
    "add": False,
    "replace": False,
    "append": False,
    "prepend": False,
    "cas": False,
    "delete": False,
    "touch": False,
    "incr": None,
    "decr": None,
    "meta_get": MetaResult("miss"),
    "lease_get": MetaResult("miss"),
    "lease_set": False,
    "lease_release": False,
    "meta_set": MetaResult("not_stored"),
    "meta_delete": MetaResult("not_found"),
    "meta_arithmetic": MetaResult("not_found"),
    "get_cas": lambda a, kw: (_default_arg(0, "default")(a, kw), None),
    "set_cas": False,
    "invalidate": False,
}


# The meta commands take any str or bytes key (one that is no text key goes base64).
_ANY_KEY = frozenset(
    [
        "meta_get",
        "lease_get",
        "lease_set",
        "lease_release",
        "meta_set",
        "meta_delete",
        "meta_arithmetic",
        "get_cas",
        "set_cas",
        "invalidate",
    ]
)


# command -> where its Client method takes ``noreply`` (None: it takes none), as found
_NOREPLY_POSITION: Dict[str, Optional[int]] = {}


# Commands whose Client method checks its key before anything else (before any I/O, and
# before serializing a value), with the same rule as this client: HashClient leaves the check
# to the node's client, and makes it itself only when something fails first (no node, a
# resting node, a connection that failed), so a bad key always raises as a bad key, once.
_NODE_CHECKS_KEY = frozenset(["get", "set", "add", "replace", "append", "prepend", "delete"])


def _keyed(
    method: Callable[Concatenate[Client, P], R],
) -> Callable[Concatenate[HashClient, P], R]:
    """A HashClient method that runs ``method`` on the node its key (the first argument)
    belongs to, with what the command returns on a hidden failure (ignore_exc)."""
    command = method.__name__
    on_failure = _ON_FAILURE[command]

    def call(self: HashClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if args:  # the key by position: the common case
            return self._run(command, args[0], args, kwargs, on_failure)  # type: ignore[arg-type,no-any-return]
        key, rest, kw = _split_key(args, kwargs)
        return self._run(command, key, (key, *rest), kw, on_failure)  # type: ignore[no-any-return]

    call.__name__ = call.__qualname__ = command
    call.__doc__ = method.__doc__
    call.__wrapped__ = method  # type: ignore[attr-defined]
    return call


def _split_key(
    args: Tuple[Any, ...], kwargs: Dict[str, Any]
) -> Tuple[Any, Tuple[Any, ...], Dict[str, Any]]:
    """The key (by position or as ``key=``) and the other arguments."""
    if args:
        return args[0], args[1:], kwargs
    if "key" not in kwargs:
        raise TypeError("missing the key argument")
    rest = dict(kwargs)
    return rest.pop("key"), (), rest


class HashClient:
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
        self._probe_options = dataclasses.replace(
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
        self.retry_attempts = retry_attempts
        self.retry_timeout = retry_timeout
        self.dead_timeout = dead_timeout
        self.on_event = on_event
        # Requests take _lock briefly (health books, the swap); a change of the node set holds
        # _change_lock while it builds the new snapshot, and _lock only to publish it. Both,
        # and _probe_lock, are free again in a forked child.
        self._lock = _ForkSafeLock(threading.Lock)
        self._change_lock = _ForkSafeLock(threading.RLock)  # one change (read + swap) at a time
        self._failures: Dict[str, Tuple[int, float]] = {}  # node -> (count, last failure)
        # node -> its last failure: the class a resting error also is (see _resting)
        self._last_failure: Dict[str, BaseException] = {}
        # Nodes that answered a meta command: a quiet ms pipeline goes to the others through
        # their own client, which checks before any value goes out (see Client.meta_set).
        self._meta_nodes: Set[str] = set()
        # node -> (_still_usable(node), _count_failure(node)), for PooledClient.run
        self._usable_checks: Dict[str, Tuple[Callable[[], None], Callable[[Exception], None]]] = {}
        self._dead: Dict[str, Tuple[ServerSpec, PooledClient, float]] = {}
        self._next_probe = 0.0
        self._probe_lock = _ForkSafeLock(threading.Lock)  # held while a probe thread runs
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
                for name in [n for n in self._dead if n not in specs]:
                    retired.append(self._dead.pop(name)[1])
                for name in [n for n in self._failures if n not in specs]:
                    del self._failures[name]
                self._swap(new)
        for pool in retired:
            pool.client_pool.retire()
        self._emit("snapshot_swapped", ",".join(new.names), version=new.version)
        return True

    def add_server(self, server: Any, port: Optional[int] = None) -> None:
        """Add a node (``server`` may be a host with ``port``)."""
        spec = normalize_server_spec((server, port) if port is not None else server)
        with self._change_lock:  # read and replace the node set as one step
            self.set_servers([*self._nodes.servers.values(), spec, *self._dead_specs()])

    def remove_server(self, server: Any, port: Optional[int] = None) -> None:
        """Remove a node for good; its keys move to the others."""
        name = server_name(normalize_server_spec((server, port) if port is not None else server))
        with self._change_lock:  # read and replace the node set as one step
            rest = [s for n, s in self._nodes.servers.items() if n != name]
            self.set_servers(rest + [s for n, s in self._dead_items() if n != name])

    def _dead_specs(self) -> List[ServerSpec]:
        return [spec for spec, _, _ in list(self._dead.values())]

    def _dead_items(self) -> List[Tuple[str, ServerSpec]]:
        return [(n, v[0]) for n, v in list(self._dead.items())]

    # ------------------------------------------------------------------ health

    def _failed(self, name: str, exc: BaseException) -> None:
        """Count a connection-level failure of ``name``; eject it after retry_attempts."""
        now = time.monotonic()
        with self._lock:
            if name not in self._nodes.clients:
                # Already ejected (or removed) by an earlier failure: a request that chose
                # it before then says nothing new, and must not count against it once it
                # is re-admitted.
                return
            count = self._failures.get(name, (0, 0.0))[0] + 1
            self._failures[name] = (count, now)
            self._last_failure[name] = exc
        ejected = self._eject(name) if count >= self.retry_attempts else None
        self._emit("node_failed", name, error=repr(exc), failures=count)
        if ejected is not None:
            ejected.client_pool.clear()
            self._emit("node_ejected", name, version=self._nodes.version)

    def _eject(self, name: str) -> Optional[PooledClient]:
        """Take ``name`` out of the node set; its pool, or None when another thread did it
        first (or the node was removed, or answered a request meanwhile)."""
        with self._change_lock:
            nodes = self._nodes
            pool = nodes.clients.get(name)
            if pool is None:
                return None
            servers = {n: s for n, s in nodes.servers.items() if n != name}
            clients = {n: c for n, c in nodes.clients.items() if n != name}
            new = self._next_snapshot(servers, clients)  # outside _lock
            with self._lock:
                record = self._failures.get(name)
                if record is None or record[0] < self.retry_attempts:
                    return None  # a request succeeded on it while we built
                now = time.monotonic()
                self._dead[name] = (nodes.servers[name], pool, now)
                del self._failures[name]
                self._swap(new)
                self._next_probe = min(
                    self._next_probe or now + self.dead_timeout, now + self.dead_timeout
                )
        return pool

    def _count_failure(self, name: str, exc: Exception) -> None:
        """:meth:`_failed` if ``exc`` is a connection failure."""
        if _is_connection_failure(exc):
            self._failed(name, exc)

    def _succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(name, None)
            self._last_failure.pop(name, None)

    def _still_usable(self, name: str) -> None:
        """Run once a request has its connection to ``name``: a request that waited for
        it while another found the node failing (or got it ejected) fails fast too,
        instead of spending its own timeout there (queued requests took one each)."""
        if self._failures and self._fail_fast(name):
            raise self._resting(name, f"failed less than {self.retry_timeout} s ago")
        if name in self._dead:
            raise self._resting(name, "was ejected")

    def _resting(self, name: str, why: str) -> NodeRestingError:
        """The error of a request not sent to resting node ``name``: also an instance of
        the class of the failure that made it rest (``ConnectionRefusedError``,
        ``TimeoutError``...), so that an ``except`` that caught that failure catches this
        one too (pymemcache's HashClient returns the default there instead)."""
        message = f"{name} {why}"
        cause = self._last_failure.get(name)
        if isinstance(cause, OSError):
            return network_error(NodeRestingError, cause, message)
        return NodeRestingError(message)

    def _still_usable_after_wait(self, name: str, lease: Lease[Client]) -> None:
        """:meth:`_still_usable` for a fan-out that waited for ``name``'s connection: the
        connection goes back unused when the node failed meanwhile."""
        try:
            self._still_usable(name)
        except NodeRestingError:
            lease.give_back()
            raise

    def _fail_fast(self, name: str) -> bool:
        """A node that failed less than retry_timeout ago is not tried again yet."""
        record = self._failures.get(name)
        return record is not None and time.monotonic() - record[1] < self.retry_timeout

    def _maybe_probe(self) -> None:
        if time.monotonic() < self._next_probe or not self._probe_lock.acquire(blocking=False):
            return
        try:
            threading.Thread(target=self._probe, name="pymc-probe", daemon=True).start()
        except BaseException:
            self._probe_lock.release()
            raise

    def _probe(self) -> None:
        """Ask every dead node past dead_timeout for its version; re-admit those that answer."""
        try:
            now = time.monotonic()
            due = [(n, v) for n, v in list(self._dead.items()) if now - v[2] >= self.dead_timeout]
            for name, (spec, pool, _) in due:
                probe = Client.from_options(spec, self._probe_options)
                try:
                    probe.version()
                except Exception:
                    with self._lock:
                        if name in self._dead:
                            self._dead[name] = (spec, pool, time.monotonic())
                    continue
                finally:
                    probe.close()
                with self._change_lock:
                    if name not in self._dead:  # removed meanwhile
                        continue
                    nodes = self._nodes
                    new = self._next_snapshot(
                        {**nodes.servers, name: spec}, {**nodes.clients, name: pool}
                    )  # outside _lock
                    with self._lock:
                        del self._dead[name]
                        self._swap(new)
                self._emit("node_revived", name, version=new.version)
        finally:
            with self._lock:
                deadlines = [v[2] + self.dead_timeout for v in self._dead.values()]
                self._next_probe = min(deadlines) if deadlines else 0.0
            self._probe_lock.release()

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
        if command not in _NODE_CHECKS_KEY or self._hooked:
            self._check_key(command, real_key)
        if self._dead:
            self._maybe_probe()
        name: Optional[str] = None
        pool: Optional[PooledClient] = None
        try:
            name = nodes._cache.get(routing_key) or nodes.node_for(routing_key)
            if name is None:
                raise self._no_nodes()
            if self._failures and self._fail_fast(name):
                raise self._resting(name, f"failed less than {self.retry_timeout} s ago")
            checks = self._usable_checks.get(name)
            if checks is None:  # (one pair per node name, made once: this is every keyed call)
                checks = self._usable_checks[name] = (
                    partial(self._still_usable, name),
                    partial(self._count_failure, name),
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
                self._count_failure(name, exc)
            if self.ignore_exc:
                return on_failure(args[1:], kwargs) if callable(on_failure) else on_failure
            raise
        if self._failures and name in self._failures and not self._noreply(command, args, kwargs):
            self._succeeded(name)  # (a noreply command read nothing: no proof of health)
        return result

    def _noreply(self, command: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> bool:
        """Whether keyed ``command``, called with ``args`` (the key first) and ``kwargs``,
        went out noreply."""
        position = _NOREPLY_POSITION.get(command, _MISSING)
        if position is _MISSING:
            names = list(inspect.signature(getattr(Client, command)).parameters)[1:]
            position = names.index("noreply") if "noreply" in names else None
            _NOREPLY_POSITION[command] = position
        if position is None:
            return False
        given = kwargs.get("noreply")
        if given is None and len(args) > position:
            given = args[position]
        return resolve_noreply(given, self.options.default_noreply)

    def _check_key(self, command: str, key: Any) -> None:
        """Raise MemcacheIllegalInputError if ``key`` is no key ``command`` takes."""
        if command in _ANY_KEY:
            meta_key(key, self._prefix, True)  # any str/bytes key (base64 on the wire)
        else:
            validate_key(key, self._prefix, self._unicode)

    # ------------------------------------------------------------------ fan-out

    def _groups(self, nodes: NodeSet, keys: Iterable[AnyKey]) -> Dict[str, List[AnyKey]]:
        """Keys grouped by node: placements come from the snapshot's cache, and the keys
        it has not seen are placed in one batch by the locator when it can."""
        if self._dead:
            self._maybe_probe()
        if not nodes.names:
            raise self._no_nodes()
        cache = nodes._cache
        groups: Dict[str, List[AnyKey]] = {}
        unseen: List[AnyKey] = []
        for key in keys:
            name = cache.get(key[0] if type(key) is tuple else key)
            if name is None:
                unseen.append(key)
            else:
                group = groups.get(name)
                if group is None:
                    groups[name] = [key]
                else:
                    group.append(key)
        if unseen:
            batch = getattr(nodes.locator, "get_nodes", None)
            if batch is not None and not any(type(k) is tuple for k in unseen):
                for name, placed in batch(unseen).items():
                    groups.setdefault(name, []).extend(placed)
                    nodes.remember(placed, name)
            else:
                for key in unseen:
                    name = nodes.node_for(key[0] if type(key) is tuple else key)
                    groups.setdefault(name, []).append(key)  # type: ignore[arg-type]
        return groups

    def _fan_out(
        self,
        command: str,
        nodes: NodeSet,
        parts: Dict[str, Optional[Part]],
        alone: Callable[[str], Any],
        observe: Optional[Observe] = None,
        noreply: bool = False,
    ) -> Dict[str, Any]:
        """Send each node its request, then read the replies as they arrive (see
        :meth:`_exchange`): ``{node: finished result}``.

        A part is ``(request, expect, finish)``: ``expect()`` makes the reader of the
        reply (None: a noreply request), ``finish`` turns what it read into the node's
        result, and raises as the node's own Client would. A node whose part is None (too
        big for one pass) goes through ``alone(node)`` instead.

        Connections are taken without waiting where one is free; when none is, the
        fan-out waits for one node's connection while it holds no other, so a slow node
        never keeps a healthy node's connections checked out, and two fan-outs cannot
        deadlock each other. A node that fails is retried alone (as the retry policy
        allows) or, with ignore_exc, left out of the result.

        ``observe`` (given when there is an ``on_command`` hook) starts the observation of
        each node's exchange, ended when its reply is read; ``alone`` observes its own.
        ``noreply``: the requests read no reply, so a node's part going out clears none of
        its failures.
        """
        results: Dict[str, Any] = {}
        failed: Dict[str, Exception] = {}
        noted: Set[str] = set()  # nodes whose failure is counted already
        pending: List[str] = []
        solo: List[str] = []
        for name, part in parts.items():
            (pending if part is not None else solo).append(name)
        pending.sort()
        while pending:
            # Every lease is in ``leases`` before its connection is taken, so the finally
            # below gives back every connection, wherever an exception lands.
            leases: List[Tuple[str, Lease[Client]]] = []
            busy: List[str] = []
            try:
                self._take_and_exchange(
                    command, nodes, pending, leases, busy, parts, results, failed, noted, observe
                )
                # Before the connections go back: a request waiting for one must find
                # its node failed, not spend a timeout of its own there.
                self._note_failures(command, failed, noted)
            finally:
                try:
                    _give_back(leases, results)
                except BaseException:
                    _give_back(leases, results)  # the first give-back was interrupted
                    raise
            pending = busy
        for name in solo:
            try:
                results[name] = alone(name)
            except Exception as exc:
                failed[name] = exc
        first: Optional[Exception] = None
        policy = self.retry
        for name, error in failed.items():
            if _retried_alone(policy, command, error):
                try:  # the node alone, with the attempts the policy has left
                    results[name] = call_with_retry(policy.increment(), command, alone, name)
                    continue
                except Exception as again:
                    error = again
            if _is_connection_failure(error) and name not in noted:
                self._failed(name, error)
            if first is None:
                first = error
        if first is not None and not self.ignore_exc:
            raise first
        if self._failures and not noreply:  # (noreply: nothing was read, nothing proven)
            for name in results:
                if name in self._failures:
                    self._succeeded(name)
        return results

    def _note_failures(
        self, command: str, failed: Mapping[str, Exception], noted: Set[str]
    ) -> None:
        """Count each connection failure in ``failed`` that will not be retried (and is not
        counted yet) against its node."""
        policy = self.retry
        for name, error in failed.items():
            if name in noted or not _is_connection_failure(error):
                continue
            if _retried_alone(policy, command, error):
                continue  # retried alone after this round: counted if that fails too
            noted.add(name)
            self._failed(name, error)

    def _take_and_exchange(
        self,
        command: str,
        nodes: NodeSet,
        pending: List[str],
        leases: List[Tuple[str, Lease[Client]]],
        busy: List[str],
        parts: Dict[str, Optional[Part]],
        results: Dict[str, Any],
        failed: Dict[str, Exception],
        noted: Set[str],
        observe: Optional[Observe],
    ) -> None:
        """One round of a fan-out: take a connection for each pending node that has one
        free (a node with none goes to ``busy``); when none was free, wait for the first
        busy node's alone; then exchange requests and replies on what was taken. Each
        lease is in ``leases`` before its connection is taken: the caller gives back what
        the exchange has not. A connection given back unused (its node failed while this
        fan-out waited for it) is never exchanged on: only the connections in ``taken``
        are."""
        taken: List[Tuple[str, Client, Lease[Client]]] = []
        clients = nodes.clients
        for name in pending:
            if self._failures and self._fail_fast(name):
                failed[name] = self._resting(name, "failed recently")
                continue
            lease = Lease(clients[name].client_pool)
            leases.append((name, lease))
            try:
                conn = lease.take(wait=False)
            except Exception as exc:
                failed[name] = exc
                continue
            if conn is None:
                busy.append(name)
            else:
                taken.append((name, conn, lease))
        if busy and not taken:
            name = busy.pop(0)  # wait for this node alone, holding no connection
            lease = clients[name].client_pool.lease()
            leases.append((name, lease))
            try:
                conn = lease.take()
                self._still_usable_after_wait(name, lease)
            except Exception as exc:  # no free connection in time: this node only
                failed[name] = exc
            else:
                taken.append((name, conn, lease))  # type: ignore[arg-type]
        if taken:
            self._exchange(command, taken, parts, results, failed, noted, observe)

    def _exchange(
        self,
        command: str,
        taken: List[Tuple[str, Client, Lease[Client]]],
        parts: Dict[str, Optional[Part]],
        results: Dict[str, Any],
        failed: Dict[str, Exception],
        noted: Set[str],
        observe: Optional[Observe],
    ) -> None:
        """Send every taken connection its node's request, then read the replies in the
        order they arrive; each connection goes back as soon as its own reply is read (or,
        on a failure, once the failure is counted against its node, destroyed). The reads
        end by the ``timeout`` deadline, counted from before the first send. Whatever an
        exception landing anywhere leaves unreturned, the caller's ``_give_back`` returns
        (destroyed unless the node's reply is in ``results``)."""
        ends: Optional[Dict[str, Optional[CommandEnd]]] = None if observe is None else {}
        try:
            deadline = command_deadline(self.options.timeout)  # (before the first send)
            # Everything the sends need is made first, so that the requests go out back to
            # back: on a machine where the servers share the client's CPU, each moment
            # between two sends is a chance for the server just woken to take the CPU.
            # One poll looks at every connection for stray bytes (see quiet_connections).
            sends: List[Tuple[str, Client, Lease[Client], bytes, Optional[Expect], Any]] = []
            for name, conn, lease in taken:
                request, expect, finish = parts[name]  # type: ignore[misc]
                sends.append((name, conn, lease, request, expect and expect(), finish))
            quiet = quiet_connections([conn for _, conn, _ in taken])
            if ends is not None:
                for name, _, _ in taken:
                    ends[name] = observe(name)  # type: ignore[misc]
            sent: List[Reading] = []
            for (name, conn, lease, request, reader, finish), looked in zip(sends, quiet):
                try:
                    conn.send(request, reader is None, deadline, looked)
                    if reader is None:  # noreply: nothing to read
                        results[name] = finish(None)
                    else:
                        sent.append((name, conn, lease, reader, finish))
                        continue
                except Exception as exc:
                    self._lost(command, name, lease, exc, failed, noted, ends, request)
                    continue
                lease.give_back()
                if ends is not None:
                    end_command(ends.pop(name), None)
            waiting: Dict[int, Reading] = {}  # socket's fd -> the node's read
            for reading in sent:
                waiting[reading[1].sock.fileno()] = reading  # type: ignore[union-attr]
            if len(waiting) > 1:
                self._read_as_they_come(
                    command, waiting, deadline, parts, results, failed, noted, ends
                )
            for name, conn, lease, reader, finish in waiting.values():
                # One reply to wait for (or no poll for these sockets): the connection's
                # own read.
                try:
                    results[name] = finish(conn.receive(reader, deadline))
                except Exception as exc:
                    request = parts[name][0]  # type: ignore[index]
                    self._lost(command, name, lease, exc, failed, noted, ends, request)
                    continue
                lease.give_back()
                if ends is not None:
                    end_command(ends.pop(name), None)
        except BaseException as exc:  # every observation still open ends with it
            if ends:
                for end in ends.values():
                    end_command(end, exc)
            raise

    def _read_as_they_come(
        self,
        command: str,
        waiting: Dict[int, Reading],
        deadline: Optional[float],
        parts: Dict[str, Optional[Part]],
        results: Dict[str, Any],
        failed: Dict[str, Exception],
        noted: Set[str],
        ends: Optional[Dict[str, Optional[CommandEnd]]],
    ) -> None:
        """Read the replies of the connections ``waiting`` (by socket fd) in the order they
        arrive, one ``poll`` over them all, feeding each node's reader what its socket
        has; each node leaves ``waiting`` once its reply is read or failed. Without a poll
        for these sockets (see :func:`readiness_poll`), leaves them all to the caller."""
        poll = readiness_poll(next(iter(waiting.values()))[1].sock)
        if poll is None:
            return
        poller = poll()
        for fd in waiting:
            poller.register(fd, _POLLIN)
        done: List[int] = []  # read or failed: unregistered before the next poll
        while waiting:
            for fd in done:
                poller.unregister(fd)
            done.clear()
            if deadline is None:
                ready = poller.poll()
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ready = poller.poll(left * 1000.0)
            for fd, _ in ready:
                name, conn, lease, reader, finish = waiting[fd]
                try:
                    reply = conn.receive_some(reader, deadline)
                    if reply is NEED_DATA:
                        continue
                    done.append(fd)
                    del waiting[fd]
                    results[name] = finish(reply)
                except Exception as exc:
                    if waiting.pop(fd, None) is not None:
                        done.append(fd)
                    request = parts[name][0]  # type: ignore[index]
                    self._lost(command, name, lease, exc, failed, noted, ends, request)
                    continue
                lease.give_back()
                if ends is not None:
                    end_command(ends.pop(name), None)
        for fd in list(waiting):  # past the deadline
            name, conn, lease, _, _ = waiting.pop(fd)
            conn.close()
            late = MemcacheTimeoutError(
                ETIMEDOUT, f"timed out talking to {name} (timeout {self.options.timeout} s)"
            )
            self._lost(command, name, lease, late, failed, noted, ends)

    def _lost(
        self,
        command: str,
        name: str,
        lease: Lease[Client],
        exc: Exception,
        failed: Dict[str, Exception],
        noted: Set[str],
        ends: Optional[Dict[str, Optional[CommandEnd]]],
        request: bytes = b"",
    ) -> None:
        """A node's part failed: counted against it (unless it will be retried alone, or
        the node refused the command alone: see ``refused_by_close``), then its connection
        destroyed, so a request waiting for one finds it failed."""
        if request:
            exc = refused_by_close(request, exc, name)  # type: ignore[assignment]
        failed[name] = exc
        self._note_failures(command, {name: exc}, noted)
        lease.give_back(destroy=True)
        if ends is not None:
            end_command(ends.pop(name), exc)

    def _observer(
        self, command: str, nodes: NodeSet, keys: Mapping[str, Iterable[Any]]
    ) -> Optional[Observe]:
        """What starts the observation of one node's part of a fan-out of ``command``
        (``keys``: each node's keys), or None without an ``on_command`` hook."""
        hook = self.options.on_command
        if hook is None:
            return None

        def observe(name: str) -> Optional[CommandEnd]:
            return begin_command(hook, command, tuple(keys.get(name, ())), nodes.servers[name])

        return observe

    def _retrieve(self, command: str, keys: Iterable[AnyKey], with_cas: bool) -> Dict[Any, Any]:
        if type(keys) is not list:
            keys = list(keys)
        if not keys:
            return {}
        nodes = self._nodes
        opts = self.options
        # Every key is checked before anything is routed or sent; spellings of one key
        # (str and bytes) are one key, answered under its last spelling, as by Client.
        # ``(server_key, key)`` tuples are routed by their server key: two tuples naming
        # one key on two nodes are two keys; on one node, one (the last). (A tuple is no
        # key validate_keys takes: it raises, and only then are the keys looked at.)
        checked: Optional[Dict[bytes, AnyKey]] = None
        try:
            checked = validate_keys(keys, opts.key_prefix, opts.allow_unicode_keys)  # type: ignore[arg-type,assignment]
        except MemcacheIllegalInputError:
            if not any(type(k) is tuple for k in keys):
                raise
        try:
            if checked is not None:
                wanted_by_node = self._placed(nodes, checked)
            else:
                raw_of: Dict[AnyKey, bytes] = {key: self._raw(key) for key in keys}
                wanted_by_node = {
                    name: {raw_of[key]: key for key in group}
                    for name, group in self._groups(nodes, raw_of).items()
                }
        except AllNodesDownError:
            if self.ignore_exc:
                return {}
            raise
        cmd = command.encode()
        parts: Dict[str, Optional[Part]] = {}
        for name, wanted in wanted_by_node.items():
            request = encode_retrieval(cmd, list(wanted))
            if len(request) > opts.max_get_line:
                parts[name] = None  # goes alone, in passes
            else:
                parts[name] = (request, partial(ExpectValues, wanted, None, with_cas), _items)

        command = "gets_many" if with_cas else "get_many"
        observe = None
        if opts.on_command is not None:
            by_node = {name: wanted.values() for name, wanted in wanted_by_node.items()}
            observe = self._observer(command, nodes, by_node)

        def alone(name: str) -> Any:
            end = None if observe is None else observe(name)
            try:
                found = in_passes(name)
            except BaseException as exc:
                end_command(end, exc)
                raise
            end_command(end, None)
            return found

        def in_passes(name: str) -> Any:
            raws = list(wanted_by_node[name])
            with nodes.clients[name].client_pool.get_and_release() as conn:
                found: Dict[bytes, Item] = {}
                chunks = request_chunks(raws, opts.max_get_line)
                # (The node's requests share one deadline, as a Client's get_many.)
                deadline = command_deadline(opts.timeout) if len(chunks) > 1 else None
                for chunk in chunks:
                    reply = conn.request(
                        encode_retrieval(cmd, chunk),
                        ExpectValues(set(chunk), found, with_cas),
                        deadline,
                    )
                    _items(reply)
                return found

        found = self._fan_out(command, nodes, parts, alone, observe)
        if checked is not None:  # each raw key on one node: decoded together, in one call
            return decode_parts(list(found.values()), checked, opts, with_cas)
        out: Dict[Any, Any] = {}
        for name, items in found.items():
            out.update(decode_values(items, wanted_by_node[name], opts, with_cas))
        return out

    def _placed(
        self, nodes: NodeSet, checked: Dict[bytes, AnyKey]
    ) -> Dict[str, Dict[bytes, AnyKey]]:
        """:meth:`_groups` for checked keys (``{raw: key}``, no tuple among them): each
        node's ``{raw: key}``, built in one pass over the placements already cached."""
        if self._dead:
            self._maybe_probe()
        if not nodes.names:
            raise self._no_nodes()
        placed: Dict[str, Dict[bytes, AnyKey]]
        unseen: Optional[Dict[AnyKey, bytes]]
        placed, unseen = place_keys(checked, nodes._cache)
        if unseen:  # placed by the locator (in one batch where it can), and cached
            for name, group in self._groups(nodes, list(unseen)).items():
                wanted = placed.setdefault(name, {})
                for key in group:
                    wanted[unseen[key]] = key
        return placed

    def get_many(self, keys: Iterable[AnyKey]) -> Dict[Any, Any]:
        """Values of the keys present over all nodes, fetched from the nodes in parallel."""
        return self._retrieve("get", keys, False)

    get_multi = get_many

    def gets_many(self, keys: Iterable[AnyKey]) -> Dict[Any, Tuple[Any, Any]]:
        """``{key: (value, cas)}`` over all nodes, fetched in parallel."""
        return self._retrieve("gets", keys, True)

    gets_multi = gets_many

    def _pipelined(
        self,
        command: str,
        items: List[Tuple[AnyKey, bytes]],
        rule: Rule,
        noreply: bool,
        plain_call: Callable[[str, List[AnyKey]], Any],
    ) -> Dict[Any, Any]:
        """Fan out one line per key (set/delete/touch): ``{key: what its reply means}``."""
        nodes = self._nodes
        try:
            groups = self._groups(nodes, [k for k, _ in items])
        except AllNodesDownError:
            if self.ignore_exc:
                return {k: False for k, _ in items}
            raise
        lines = dict(items)
        parts: Dict[str, Optional[Part]] = {}
        for name, group in groups.items():
            if len(group) > FANOUT_MAX_COMMANDS:
                parts[name] = None  # goes alone, in passes, through the node's pool
                continue
            request = b"".join(lines[k] for k in group)
            if noreply:
                parts[name] = (request, None, _all_true(group))
            else:
                where = f" on {name}"
                expect = partial(ExpectReplies, rule, len(group))
                parts[name] = (request, expect, _per_key(group, rule, where))

        def alone(name: str) -> Any:
            return plain_call(name, groups[name])  # (observed by the node's client)

        results = self._fan_out(
            command, nodes, parts, alone, self._observer(command, nodes, groups), noreply
        )
        out: Dict[Any, Any] = {}
        error: Optional[Exception] = None
        for name, group in groups.items():
            answers = results.get(name)
            if answers is None:  # the node failed (and ignore_exc hid it)
                out.update((k, False) for k in group)
            else:
                out.update(answers)
                error = error or getattr(answers, "error", None)
        if error is not None and not self.ignore_exc:
            raise error  # once every node's replies were read, as Client.set_many does
        return out

    def set_many(
        self,
        values: Mapping[Any, Any],
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> List[Any]:
        """Store many values over all nodes in parallel; return the keys not stored."""
        opts = self.options
        noreply = resolve_noreply(noreply, opts.default_noreply)
        items = []
        for key, value in values.items():
            real = _real(key)
            raw = self._raw(key)
            data, data_flags = opts.serde.serialize(real, value)
            if type(data) is not bytes:
                data = coerce_to_bytes(data, opts.encoding, real)
            line = encode_storage(
                b"set", raw, data, data_flags if flags is None else flags, expire, noreply
            )
            items.append((key, line))

        def plain(name: str, group: List[AnyKey]) -> Dict[Any, bool]:
            sub = {_real(k): values[k] for k in group}
            failed = set(
                self._nodes_client(name).run("set_many", (sub, expire, noreply, flags), {})
            )
            return {k: _real(k) not in failed for k in group}

        result = self._pipelined("set_many", items, RULES["set"], noreply, plain)
        return [k for k, stored in result.items() if not stored]

    set_multi = set_many

    def delete_many(self, keys: Iterable[AnyKey], noreply: Optional[bool] = None) -> bool:
        """Delete many keys over all nodes in parallel. True."""
        opts = self.options
        noreply = resolve_noreply(noreply, opts.default_noreply)
        items = [(key, encode_delete(self._raw(key), noreply)) for key in keys]

        def plain(name: str, group: List[AnyKey]) -> Dict[Any, bool]:
            reals = [_real(k) for k in group]
            self._nodes_client(name).run("delete_many", (reals, noreply), {})
            return {k: True for k in group}

        self._pipelined("delete_many", items, RULES["delete"], noreply, plain)
        return True

    delete_multi = delete_many

    # ------------------------------------------------------------------ meta pipelines

    def _meta_groups(
        self, keys: Iterable[AnyKey]
    ) -> Tuple[NodeSet, Dict[str, List[Tuple[bytes, Tuple[Any, bool]]]]]:
        """Each node's ``[(wire key, (caller key, base64?))]``; one entry per wire key."""
        opts = self.options
        wires: Dict[Any, Tuple[bytes, bool]] = {}
        for key in keys:
            wires[key] = meta_key(_real(key), opts.key_prefix, True)
        nodes = self._nodes
        groups = self._groups(nodes, list(wires))
        out: Dict[str, List[Tuple[bytes, Tuple[Any, bool]]]] = {}
        for name, group in groups.items():
            by_wire = {wires[k][0]: (k, wires[k][1]) for k in group}
            out[name] = list(by_wire.items())
        return nodes, out

    def _quiet_fan_out(
        self,
        command: str,
        keys: Iterable[AnyKey],
        build: Callable[[List[Tuple[bytes, Tuple[Any, bool]]], Callable[[], bytes]], Any],
        finish: Callable[[Any, Dict[bytes, Any]], Any],
        alone: Callable[[str, List[Any]], Any],
        known_only: bool = False,
    ) -> Dict[str, Any]:
        """A quiet meta pipeline to every node at once: ``{node: finish(found, key_of)}``
        (``alone(node, caller keys)`` for a node whose batch is too big for one pass, and
        with ``known_only`` for a node not yet known to have meta commands)."""
        try:
            nodes, groups = self._meta_groups(keys)
        except AllNodesDownError:
            if self.ignore_exc:
                return {}
            raise
        tokens = itertools.count()

        def opaque() -> bytes:
            return b"%x" % next(tokens)

        parts: Dict[str, Optional[Part]] = {}
        for name, batch in groups.items():
            if (known_only and name not in self._meta_nodes) or len(meta_batches(batch)) > 1:
                parts[name] = None
                continue
            request, sent, key_of = build(batch, opaque)
            parts[name] = (
                request,
                partial(ExpectMetaQuiet, sent),
                _with_keys(finish, key_of),
            )

        def solo(name: str) -> Any:
            return alone(name, [key for _, (key, _) in groups[name]])  # (observed there)

        by_node = {name: [key for _, (key, _) in batch] for name, batch in groups.items()}
        results = self._fan_out(
            command, nodes, parts, solo, self._observer(command, nodes, by_node)
        )
        # Each node that answered (or whose own client did) has meta commands.
        self._meta_nodes.update(name for name, got in results.items() if got is not _ASK_ALONE)
        return results

    def meta_get_many(self, keys: Iterable[AnyKey]) -> Dict[Any, Any]:
        """The values of the keys present, from every node at once: one quiet ``mg``
        pipeline per node (only the hits come back)."""
        opts = self.options

        def finish(found: Any, key_of: Dict[bytes, Any]) -> Any:
            if type(found) is ErrorReply:
                if _no_meta(found):
                    return _ASK_ALONE  # (its own client names the server's version)
                raise found.exception("mg")
            items = {t: (r.client_flags or 0, r.value, None) for t, r in found.items() if r.hit}
            return decode_values(items, key_of, opts, False)

        def alone(name: str, group: List[Any]) -> Dict[Any, Any]:
            got = self._nodes_client(name).run("meta_get_many", ([_real(k) for k in group],), {})
            return {k: got[_real(k)] for k in group if _real(k) in got}

        keys = list(keys)
        results = self._quiet_fan_out("meta_get_many", keys, quiet_gets, finish, alone)
        out: Dict[Any, Any] = {}
        for name, values in results.items():
            if values is _ASK_ALONE:
                values = alone(name, [k for k in keys if self._nodes.node_for(_route(k)) == name])
            out.update(values)
        return out

    def meta_delete_many(self, keys: Iterable[AnyKey], *, invalidate: bool = False) -> List[Any]:
        """Delete (or mark stale) many keys on every node at once; return those not found."""

        def build(batch: Any, opaque: Callable[[], bytes]) -> Any:
            return quiet_deletes(batch, opaque, invalidate)

        def finish(found: Any, key_of: Dict[bytes, Any]) -> Any:
            if type(found) is ErrorReply:
                if _no_meta(found):
                    return _ASK_ALONE  # (its own client names the server's version)
                raise found.exception("md")
            return [key_of[t] for t, r in found.items() if r.status == "not_found"]

        def alone(name: str, group: List[Any]) -> List[Any]:
            reals = [_real(k) for k in group]
            gone = set(
                self._nodes_client(name).run(
                    "meta_delete_many", (reals,), {"invalidate": invalidate}
                )
            )
            return [k for k in group if _real(k) in gone]

        keys = list(keys)
        results = self._quiet_fan_out("meta_delete_many", keys, build, finish, alone)
        out: List[Any] = []
        for name, missing in results.items():
            if missing is _ASK_ALONE:
                missing = alone(name, [k for k in keys if self._nodes.node_for(_route(k)) == name])
            out.extend(missing)
        return out

    def meta_set_many(self, values: Mapping[Any, Any], ttl: int = 0) -> List[Any]:
        """Store many values on every node at once (one quiet ``ms`` pipeline per node);
        return the keys not stored. A node whose pipeline drew an error line is asked
        again through its own client, which finds the key and raises its error."""
        opts = self.options
        retry_alone = _ASK_ALONE

        def build(batch: Any, opaque: Callable[[], bytes]) -> Any:
            requests: List[bytes] = []
            sent: List[Tuple[bytes, ...]] = []
            key_of: Dict[bytes, Any] = {}
            for wire, (key, b64) in batch:
                real = _real(key)
                data, client_flags = opts.serde.serialize(real, values[key])
                if type(data) is not bytes:
                    data = coerce_to_bytes(data, opts.encoding, real)
                token = opaque()
                requests.append(
                    encode_meta_set(
                        wire,
                        data,
                        base64=b64,
                        client_flags=client_flags,
                        ttl=ttl,
                        opaque=token,
                        quiet=True,
                    )
                )
                sent.append((token, b"ms"))
                key_of[token] = key
            requests.append(encode_meta_noop())
            return b"".join(requests), sent, key_of

        def finish(found: Any, key_of: Dict[bytes, Any]) -> Any:
            if type(found) is ErrorReply:
                if not found.in_step:
                    raise found.exception("ms")
                return retry_alone
            return [key_of[t] for t, r in found.items() if r.status != "stored"]

        def alone(name: str, group: List[Any]) -> List[Any]:
            sub = {_real(k): values[k] for k in group}
            failed = set(self._nodes_client(name).run("meta_set_many", (sub, ttl), {}))
            return [k for k in group if _real(k) in failed]

        results = self._quiet_fan_out("meta_set_many", values, build, finish, alone, True)
        failed: List[Any] = []
        for name, answer in results.items():
            if answer is retry_alone:
                group = [k for k in values if self._nodes.node_for(_route(k)) == name]
                answer = alone(name, group)
            failed.extend(answer)
        return failed

    def touch_many(
        self, keys: Iterable[AnyKey], expire: int = 0, noreply: Optional[bool] = None
    ) -> Dict[Any, bool]:
        """Touch many keys over all nodes in parallel: ``{key: whether it existed}``."""
        opts = self.options
        noreply = resolve_noreply(noreply, opts.default_noreply)
        items = [(key, encode_touch(self._raw(key), expire, noreply)) for key in keys]

        def plain(name: str, group: List[AnyKey]) -> Dict[Any, bool]:
            client = self._nodes_client(name)
            return {k: client.run("touch", (_real(k), expire, noreply), {}) for k in group}

        return self._pipelined("touch", items, RULES["touch"], noreply, plain)

    def _raw(self, key: AnyKey) -> bytes:
        opts = self.options
        return validate_keys((_real(key),), opts.key_prefix, opts.allow_unicode_keys).popitem()[0]

    def _nodes_client(self, name: str) -> PooledClient:
        nodes = self._nodes
        client = nodes.clients.get(name)
        if client is None:
            raise MemcacheNetworkError(f"{name} is no longer in the cluster")
        return client

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
                if _is_connection_failure(exc):
                    self._failed(name, exc)
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

    set = _keyed(Client.set)
    add = _keyed(Client.add)
    replace = _keyed(Client.replace)
    append = _keyed(Client.append)
    prepend = _keyed(Client.prepend)
    cas = _keyed(Client.cas)
    get = _keyed(Client.get)
    gets = _keyed(Client.gets)
    gat = _keyed(Client.gat)
    gats = _keyed(Client.gats)
    delete = _keyed(Client.delete)
    touch = _keyed(Client.touch)
    incr = _keyed(Client.incr)
    decr = _keyed(Client.decr)
    meta_get = _keyed(Client.meta_get)
    lease_get = _keyed(Client.lease_get)
    lease_set = _keyed(Client.lease_set)
    lease_release = _keyed(Client.lease_release)
    meta_set = _keyed(Client.meta_set)
    meta_delete = _keyed(Client.meta_delete)
    meta_arithmetic = _keyed(Client.meta_arithmetic)
    get_cas = _keyed(Client.get_cas)
    set_cas = _keyed(Client.set_cas)
    invalidate = _keyed(Client.invalidate)

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
