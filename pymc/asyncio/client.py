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
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..client import Client as SyncClient
from ..commands import LeaseCommands, MetaCommands, TextCommands, observe
from ..options import ClientOptions, Key, ServerSpec, normalize_server_spec, server_name
from ..protocol import validate_key, validate_keys
from ..protocol.plans import (
    Plan,
    delete_plan,
    incr_decr_plan,
    many_result,
    resolve_noreply,
    retrieval_plans,
    store_plan,
    touch_plan,
)
from ..protocol.results import decode_values
from .bridge import run_sync
from .commands import Commands
from .connection import AsyncConnection
from .core import BridgedTransport

__all__ = ["NATIVE", "Client", "Core"]

#: The commands the asyncio Client runs natively (no bridge): the plan the sync command
#: builds (from the protocol's plan builders: ``store_plan``, ``retrieval_plans``,
#: ``delete_plan``, ...), executed by the connection. The others run the sync command in the
#: bridge (so do these when an ``on_command`` hook observes the commands).
NATIVE = (
    "get",
    "set",
    "add",
    "replace",
    "append",
    "prepend",
    "set_many",
    "set_multi",
    "get_many",
    "get_multi",
    "gets",
    "gets_many",
    "gets_multi",
    "gat",
    "gats",
    "delete",
    "incr",
    "decr",
    "touch",
)


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
        if options.on_command is not None:
            # The hook observes the sync commands (see Core): those of the native paths
            # run in the bridge, observed.
            for name in NATIVE:
                setattr(self, name, getattr(Commands, name).__get__(self))

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

    # ------------------------------------------------------------------ the native paths

    async def _store(
        self,
        command: str,
        key: Key,
        value: Any,
        expire: int,
        noreply: Optional[bool],
        flags: Optional[int],
    ) -> bool:
        # The sync command's steps (pymc.commands.TextCommands._store), on its plan.
        opts = self.options
        raw = validate_key(key, opts.key_prefix, opts.allow_unicode_keys)
        data, data_flags = self.core.serialize(key, value, flags)
        noreply = resolve_noreply(noreply, opts.default_noreply)
        plan = store_plan(command, raw, data, data_flags, expire, noreply)
        return bool(await self.conn.execute(plan))

    async def set(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        return await self._store("set", key, value, expire, noreply, flags)

    async def add(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        return await self._store("add", key, value, expire, noreply, flags)

    async def replace(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        return await self._store("replace", key, value, expire, noreply, flags)

    async def append(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        return await self._store("append", key, value, expire, noreply, flags)

    async def prepend(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        return await self._store("prepend", key, value, expire, noreply, flags)

    async def set_many(
        self,
        values: Mapping[Any, Any],
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> List[Key]:
        keys, plans = self.core.set_many_plans_for(values, expire, noreply, flags)
        if not plans:
            return []
        passes = await self.conn.execute_all(plans)
        if plans[0].expect is None:  # noreply
            return []
        return many_result("set", keys, [reply for replies in passes for reply in replies])

    set_multi = set_many

    async def _fetch(
        self, command: bytes, keys: Iterable[Key], expire: Optional[int], with_cas: bool
    ) -> Dict[Key, Any]:
        """The retrieval commands: the protocol's retrieval plans, executed here."""
        opts = self.options
        wanted = validate_keys(keys, opts.key_prefix, opts.allow_unicode_keys)
        if not wanted:
            return {}
        plans, found = retrieval_plans(
            command, wanted, list(wanted), expire, with_cas, opts.max_get_line
        )
        try:
            if len(plans) == 1:
                await self.conn.execute(plans[0])
            else:
                await self.conn.execute_all(plans)
        except Exception:
            if opts.ignore_exc:
                return {}
            raise
        return decode_values(found, wanted, opts, with_cas)

    async def get_many(self, keys: Iterable[Key]) -> Dict[Key, Any]:
        return await self._fetch(b"get", keys, None, False)

    get_multi = get_many

    async def gets(self, key: Key, default: Any = None, cas_default: Any = None) -> Tuple[Any, Any]:
        found = await self._fetch(b"gets", (key,), None, True)
        return found[key] if found else (default, cas_default)

    async def gets_many(self, keys: Iterable[Key]) -> Dict[Key, Tuple[Any, Any]]:
        return await self._fetch(b"gets", keys, None, True)

    gets_multi = gets_many

    async def gat(self, key: Key, expire: int = 0, default: Any = None) -> Any:
        found = await self._fetch(b"gat", (key,), expire, False)
        return found[key] if found else default

    async def gats(
        self, key: Key, expire: int = 0, default: Any = None, cas_default: Any = None
    ) -> Tuple[Any, Any]:
        found = await self._fetch(b"gats", (key,), expire, True)
        return found[key] if found else (default, cas_default)

    async def delete(self, key: Key, noreply: Optional[bool] = None) -> bool:
        opts = self.options
        noreply = resolve_noreply(noreply, opts.default_noreply)
        plan = delete_plan(validate_key(key, opts.key_prefix, opts.allow_unicode_keys), noreply)
        return bool(await self.conn.execute(plan))

    async def _arith(
        self,
        command: str,
        key: Key,
        value: int,
        noreply: Optional[bool],
        initial: Optional[int],
        ttl: Optional[int],
    ) -> Any:
        if initial is not None or ttl is not None:  # (meta arithmetic: the sync command)
            return await self.run(command, (key, value, noreply), {"initial": initial, "ttl": ttl})
        raw = validate_key(key, self.options.key_prefix, self.options.allow_unicode_keys)
        # (pymemcache: incr/decr are noreply only when asked)
        return await self.conn.execute(incr_decr_plan(command, raw, value, bool(noreply)))

    async def incr(
        self,
        key: Key,
        value: int,
        noreply: Optional[bool] = False,
        *,
        initial: Optional[int] = None,
        ttl: Optional[int] = None,
    ) -> Optional[int]:
        result: Optional[int] = await self._arith("incr", key, value, noreply, initial, ttl)
        return result

    async def decr(
        self,
        key: Key,
        value: int,
        noreply: Optional[bool] = False,
        *,
        initial: Optional[int] = None,
        ttl: Optional[int] = None,
    ) -> Optional[int]:
        result: Optional[int] = await self._arith("decr", key, value, noreply, initial, ttl)
        return result

    async def touch(self, key: Key, expire: int = 0, noreply: Optional[bool] = None) -> bool:
        opts = self.options
        noreply = resolve_noreply(noreply, opts.default_noreply)
        raw = validate_key(key, opts.key_prefix, opts.allow_unicode_keys)
        return bool(await self.conn.execute(touch_plan(raw, expire, noreply)))


def _same_face(name: str) -> None:
    """Client's native ``name``: the sync command's signature and docstring."""
    native: Callable[..., Any] = getattr(Client, name)
    sync = getattr(SyncClient, name)
    native.__signature__ = inspect.signature(sync)  # type: ignore[attr-defined]
    native.__doc__ = sync.__doc__


for _name in NATIVE:
    if _name != "get":
        _same_face(_name)
del _name
