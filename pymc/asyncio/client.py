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
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..client import Client as SyncClient
from ..commands import LeaseCommands, MetaCommands, TextCommands, observe
from ..options import ClientOptions, Key, ServerSpec, normalize_server_spec, server_name
from ..protocol.plans import Plan
from .bridge import run_sync
from .commands import Commands
from .connection import AsyncConnection
from .core import BridgedTransport

__all__ = ["Client", "Core"]


class Core(BridgedTransport, TextCommands, MetaCommands, LeaseCommands):
    """The sync command set over the bridged transport of one asyncio connection: what
    the asyncio :class:`Client` runs its commands on, inside ``run_sync``."""

    def __init__(self, conn: AsyncConnection) -> None:
        BridgedTransport.__init__(self, conn)
        self._observing = False
        if self.options.on_command is not None:
            observe(self)  # (the hook runs in the bridge, around the sync command)


class Client(Commands):
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
        if options.on_command is None:  # (else observed, in the bridge: see get)
            self.get = self.conn.get  # type: ignore[method-assign] # (the native hot path)
        self.execute = self.conn.execute  # type: ignore[method-assign]
        self.execute_all = self.conn.execute_all  # type: ignore[method-assign]

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

    async def run(self, name: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        """Run the sync command ``name`` on this client's :class:`Core`, in the bridge
        (the core's own class: with an ``on_command`` hook, its observed twin)."""
        return await run_sync(getattr(type(self.core), name), self.core, *args, **kwargs)

    async def execute(self, plan: Plan, deadline: Optional[float] = None) -> Any:
        """Run one protocol :class:`~pymc.protocol.plans.Plan` on the connection (see
        :meth:`AsyncConnection.execute`): what the cluster clients' fan-out sends."""
        return await self.conn.execute(plan, deadline)

    async def execute_all(self, plans: Sequence[Plan]) -> List[Any]:
        """Run ``plans`` in order on the connection, under one deadline."""
        return await self.conn.execute_all(plans)

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
        native coroutine: see :meth:`AsyncConnection.get`; with an ``on_command`` hook,
        the observed sync command in the bridge)."""
        if self.options.on_command is not None:
            return await self.run("get", (key, default), {})
        return await self.conn.get(key, default)

    get.__signature__ = inspect.signature(SyncClient.get)  # type: ignore[attr-defined]
    get.__doc__ = SyncClient.get.__doc__
