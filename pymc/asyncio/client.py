"""`Client` for asyncio: one connection to one memcached server, and every command of
:class:`pymc.Client` as a coroutine with the same signature and the same result.

The commands are the sync ones (:mod:`pymc.commands`), unchanged: each runs inside
:func:`~pymc.asyncio.bridge.run_sync` on :class:`Core`, the command mixins composed over
:class:`~pymc.asyncio.core.BridgedTransport`, whose transport methods await the
:class:`~pymc.asyncio.connection.AsyncConnection` on the loop. The hot path ``get`` is the
connection's native coroutine, with no greenlet.

Layer: asyncio.
"""

from __future__ import annotations

import inspect
from typing import (
    Any,
    Callable,
    Concatenate,
    Coroutine,
    Optional,
    ParamSpec,
    Tuple,
    TypeVar,
)

from ..client import Client as SyncClient
from ..client import Commands as SyncCommands
from ..commands import LeaseCommands, MetaCommands, TextCommands, observe, read_through
from ..options import ClientOptions, Key, ServerSpec, normalize_server_spec, server_name
from .bridge import await_, run_sync
from .connection import AsyncConnection
from .core import BridgedTransport

__all__ = ["COMMAND_NAMES", "Client", "Core", "SyncFacade", "fetch_through"]

P = ParamSpec("P")
R = TypeVar("R")

#: The public commands of :class:`pymc.Client` (those every client runs: see
#: :class:`pymc.client.Commands`); each asyncio client has each as a coroutine.
COMMAND_NAMES: Tuple[str, ...] = tuple(
    name
    for name, value in vars(SyncCommands).items()
    if not name.startswith("_") and name != "run" and callable(value)
)


class Core(BridgedTransport, TextCommands, MetaCommands, LeaseCommands):
    """The sync command set over the bridged transport of one asyncio connection: what
    the asyncio :class:`Client` runs its commands on, inside ``run_sync``."""

    def __init__(self, conn: AsyncConnection) -> None:
        BridgedTransport.__init__(self, conn)
        self._observing = False
        if self.options.on_command is not None:
            observe(self)  # (the hook runs in the bridge, around the sync command)


def _bridged(
    method: Callable[Concatenate[Core, P], R],
) -> Callable[Concatenate[Client, P], Coroutine[Any, Any, R]]:
    """The coroutine that runs the sync command ``method`` on the client's core."""
    name = method.__name__
    sync = getattr(SyncClient, name)

    async def command(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await run_sync(method, self.core, *args, **kwargs)

    command.__name__ = name
    command.__qualname__ = f"Client.{name}"
    command.__doc__ = sync.__doc__
    command.__signature__ = inspect.signature(sync)  # type: ignore[attr-defined]
    return command


def _sync_compute(compute: Callable[[], Any]) -> Callable[[], Any]:
    """``compute`` as the sync read-through calls it: a coroutine function's result is
    awaited (on the loop, through the bridge)."""

    def call() -> Any:
        value = compute()
        if inspect.isawaitable(value):
            value = await_(value)
        return value

    return call


class SyncFacade:
    """An asyncio client seen from inside the bridge as a sync one: each method call
    awaits the client's coroutine (what the sync read-through calls)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return await_(method(*args, **kwargs))

        return call


async def fetch_through(
    client: Any,
    key: Key,
    compute: Callable[[], Any],
    ttl: int,
    lease_ttl: int,
    recache_ttl: Optional[int],
    wait: Optional[float],
) -> Any:
    """``fetch`` for an asyncio client: the sync read-through (:func:`read_through`) on
    ``client`` (its lease commands awaited through the bridge), waiting on the loop;
    ``compute`` may be a coroutine function."""
    sleep = BridgedTransport.sleep
    return await run_sync(
        read_through,
        SyncFacade(client),
        key,
        _sync_compute(compute),
        ttl,
        lease_ttl,
        recache_ttl,
        wait,
        sleep,
    )


class Client:
    """An asyncio client for one memcached server over one connection (see the module's
    docstring). The arguments are :class:`pymc.Client`'s. Not shared by concurrent tasks:
    share a :class:`~pymc.asyncio.PooledClient`. Nothing connects until the first
    command."""

    def __init__(self, server: ServerSpec, *args: Any, **kwargs: Any) -> None:
        # The sync Client's own argument handling (nothing connects), so the two take
        # exactly the same arguments.
        options = SyncClient(server, *args, **kwargs).options
        self._setup(normalize_server_spec(server), options)

    __init__.__signature__ = inspect.signature(SyncClient.__init__)  # type: ignore[attr-defined]

    @classmethod
    def from_options(cls, server: ServerSpec, options: ClientOptions) -> Client:
        """A Client for ``server`` sharing an already checked :class:`ClientOptions`."""
        client = cls.__new__(cls)
        client._setup(normalize_server_spec(server), options)
        return client

    def _setup(self, server: ServerSpec, options: ClientOptions) -> None:
        self.server = server
        self.options = options
        self.conn = AsyncConnection(server, options)
        self.core = Core(self.conn)
        self.get = self.conn.get  # type: ignore[method-assign] # (the native hot path)

    def __repr__(self) -> str:
        return f"<pymc.asyncio.Client {server_name(self.server)}>"

    @property
    def tls_hostname(self) -> Optional[str]:
        """The name TLS checks the certificate against, when not the host connected to."""
        return self.conn.tls_hostname

    @tls_hostname.setter
    def tls_hostname(self, value: Optional[str]) -> None:
        self.conn.tls_hostname = value

    key_prefix = property(lambda self: self.options.key_prefix)
    timeout = property(lambda self: self.options.timeout)
    connect_timeout = property(lambda self: self.options.connect_timeout)

    @property
    def noreply_errors(self) -> int:
        """Error lines that noreply commands drew from the server (logged, not raised)."""
        return self.conn.noreply_errors

    def check_key(self, key: Key, key_prefix: Optional[bytes] = None) -> bytes:
        """Validate ``key`` and return it prefixed, as bytes (pymemcache's helper)."""
        return self.core.check_key(key, key_prefix)

    def is_clean(self) -> bool:
        """Whether the connection can take a command as it is (see the connection's)."""
        return self.conn.is_clean()

    async def close(self) -> None:
        """Close the connection, if open. The next command reconnects."""
        self.conn.close()

    disconnect_all = close

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.conn.close()

    async def get(self, key: Key, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it is missing (the connection's
        native coroutine: see :meth:`AsyncConnection.get`)."""
        return await self.conn.get(key, default)

    get.__signature__ = inspect.signature(SyncClient.get)  # type: ignore[attr-defined]

    async def fetch(
        self,
        key: Key,
        compute: Callable[[], Any],
        ttl: int = 0,
        *,
        lease_ttl: int = 30,
        recache_ttl: Optional[int] = None,
        wait: Optional[float] = None,
    ) -> Any:
        """As :meth:`pymc.Client.fetch`; ``compute`` may be a coroutine function."""
        return await fetch_through(self, key, compute, ttl, lease_ttl, recache_ttl, wait)

    set = _bridged(Core.set)
    set_many = _bridged(Core.set_many)
    set_multi = set_many
    add = _bridged(Core.add)
    replace = _bridged(Core.replace)
    append = _bridged(Core.append)
    prepend = _bridged(Core.prepend)
    cas = _bridged(Core.cas)
    get_many = _bridged(Core.get_many)
    get_multi = get_many
    gets = _bridged(Core.gets)
    gets_many = _bridged(Core.gets_many)
    gets_multi = gets_many
    gat = _bridged(Core.gat)
    gats = _bridged(Core.gats)
    delete = _bridged(Core.delete)
    delete_many = _bridged(Core.delete_many)
    delete_multi = delete_many
    incr = _bridged(Core.incr)
    decr = _bridged(Core.decr)
    touch = _bridged(Core.touch)
    stats = _bridged(Core.stats)
    cache_memlimit = _bridged(Core.cache_memlimit)
    version = _bridged(Core.version)
    verbosity = _bridged(Core.verbosity)
    flush_all = _bridged(Core.flush_all)
    quit = _bridged(Core.quit)
    shutdown = _bridged(Core.shutdown)
    raw_command = _bridged(Core.raw_command)
    cluster_config = _bridged(Core.cluster_config)
    meta_get = _bridged(Core.meta_get)
    lease_get = _bridged(Core.lease_get)
    lease_set = _bridged(Core.lease_set)
    lease_release = _bridged(Core.lease_release)
    meta_set = _bridged(Core.meta_set)
    meta_delete = _bridged(Core.meta_delete)
    meta_arithmetic = _bridged(Core.meta_arithmetic)
    meta_noop = _bridged(Core.meta_noop)
    meta_get_many = _bridged(Core.meta_get_many)
    meta_set_many = _bridged(Core.meta_set_many)
    meta_delete_many = _bridged(Core.meta_delete_many)
    get_cas = _bridged(Core.get_cas)
    set_cas = _bridged(Core.set_cas)
    invalidate = _bridged(Core.invalidate)
