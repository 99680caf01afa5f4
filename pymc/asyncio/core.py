"""The sync-shaped transport over an :class:`~pymc.asyncio.connection.AsyncConnection`: the
methods the command set calls (``execute``, ``request``, ``send``, ``_one``, ``get``, ...:
see :class:`pymc.commands.base.CommandBase`) as blocking-looking calls that, inside
:func:`~pymc.asyncio.bridge.run_sync`, hand the connection's coroutine to the event loop
and switch back with its result. The command mixins composed over it
(:class:`pymc.asyncio.client.Core`) are the sync ones, unchanged.

It also carries the sync transport's own blocking-looking steps that the asyncio
connection runs through the bridge, so that they exist once: ASCII auth
(:meth:`authenticate`), the meta check (:meth:`check_meta`) and the error for a server
without meta commands (:meth:`no_meta`).

Layer: asyncio.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Dict, List, NoReturn, Optional, Sequence, Tuple

from ..exceptions import MemcacheUnknownCommandError
from ..options import Key
from ..protocol import ErrorReply, Expect, Rule
from ..protocol.plans import Plan
from ..transport.connect import Connector
from ..transport.sync import SyncMarker
from .bridge import await_

if TYPE_CHECKING:
    from .connection import AsyncConnection

__all__ = ["BridgedTransport"]


class BridgedTransport(SyncMarker, Connector):
    """The transport methods of the command set, each awaiting the asyncio connection
    ``conn`` (see the module's docstring). Only to be used inside ``run_sync``."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.server = conn.server
        self.options = options = conn.options
        self._serde = options.serde
        self._prefix = options.key_prefix
        self._unicode = options.allow_unicode_keys
        self._ignore_exc = options.ignore_exc
        self._raw_values = conn.raw_values
        self._noreply_default = options.default_noreply
        self._opaque_counter = 0
        self._lease_templates: Dict[Tuple[Any, int, Optional[int]], Tuple[bytes, bytes]] = {}

    # The connection's state, read and written by the command set, is the connection's.

    @property
    def sock(self) -> Any:
        return self.conn.sock

    @sock.setter
    def sock(self, value: Any) -> None:  # pragma: no cover (the commands never set it)
        raise AttributeError("sock is the connection's")

    @property
    def _meta_ok(self) -> bool:
        return self.conn.meta_ok

    @_meta_ok.setter
    def _meta_ok(self, value: bool) -> None:
        self.conn.meta_ok = value

    @property
    def _owes_sync(self) -> bool:
        return self.conn.owes_sync

    @_owes_sync.setter
    def _owes_sync(self, value: bool) -> None:
        self.conn.owes_sync = value

    # The transport methods: each awaits the connection's coroutine on the loop.

    def execute(self, plan: Plan, deadline: Optional[float] = None) -> Any:
        return await_(self.conn.execute(plan, deadline))

    def execute_all(self, plans: Sequence[Plan]) -> List[Any]:
        return await_(self.conn.execute_all(plans))

    def request(self, request: bytes, expect: Expect, deadline: Optional[float] = None) -> Any:
        return await_(self.conn.request(request, expect, deadline))

    def send(
        self,
        request: bytes,
        noreply: bool = False,
        deadline: Optional[float] = None,
        looked: bool = False,
    ) -> None:
        await_(self.conn.send(request, noreply, deadline, looked))

    def _one(self, rule: Rule, request: bytes, noreply: bool) -> Any:
        return await_(self.conn.one(rule, request, noreply))

    def get(self, key: Key, default: Any = None) -> Any:
        return await_(self.conn.get(key, default))

    def close(self) -> None:
        self.conn.close()

    def raise_error(self, reply: ErrorReply, command: str) -> NoReturn:
        self.conn.raise_error(reply, command)

    def _deadline_for(self, requests: int) -> Optional[float]:
        return self.conn.deadline_for(requests)

    @staticmethod
    def sleep(seconds: float) -> None:
        """Sleep on the loop (``fetch``'s wait for another caller's lease)."""
        await_(asyncio.sleep(seconds))

    # The sync transport's steps the asyncio connection runs through the bridge.

    def authenticate(self, username: str, password: str) -> None:
        """ASCII auth on the new connection (the sync transport's, unchanged)."""
        self._authenticate(username, password)

    def check_meta(self, command: str) -> None:
        """The meta check before the first ``ms`` of a connection."""
        self._meta_checked(command)

    def no_meta(self, command: str) -> MemcacheUnknownCommandError:
        """The error for a server without meta commands (the connection is closed)."""
        return self._no_meta(command)
