"""What every command mixin stands on: the transport's methods it calls (declared for the
type checker only, so that at run time they are the composition's own: see
:class:`pymc.client.Client`), and the key and value helpers the commands share.

Layer: commands (above ``options`` and ``protocol``; never imports ``transport``).
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Dict, List, NoReturn, Optional, Sequence, Tuple

from ..exceptions import MemcacheUnknownCommandError
from ..options import ClientOptions, Key, ServerSpec
from ..protocol import ErrorReply, Expect, Rule, validate_key
from ..protocol.meta import MetaResult
from ..protocol.plans import Plan
from ..serde import Serde, coerce_to_bytes

__all__ = ["CommandBase"]


class CommandBase:
    """The base of the command mixins (see the module's docstring)."""

    if TYPE_CHECKING:
        # What the transport (pymc.transport.Connection) gives the composition.
        server: ServerSpec
        options: ClientOptions
        sock: Optional[socket.socket]
        _serde: Serde
        _prefix: bytes
        _unicode: bool
        _ignore_exc: bool
        _raw_values: bool
        _noreply_default: bool
        _meta_ok: bool
        _owes_sync: bool
        _opaque_counter: int
        _lease_templates: Dict[Tuple[Any, int, Optional[int]], Tuple[bytes, bytes]]

        def execute(self, plan: Plan, deadline: Optional[float] = None) -> Any: ...

        def execute_all(self, plans: Sequence[Plan]) -> List[Any]: ...

        def request(
            self, request: bytes, expect: Expect, deadline: Optional[float] = None
        ) -> Any: ...

        def send(
            self,
            request: bytes,
            noreply: bool = False,
            deadline: Optional[float] = None,
            looked: bool = False,
        ) -> None: ...

        def close(self) -> None: ...

        def raise_error(self, reply: ErrorReply, command: str) -> NoReturn: ...

        def get(self, key: Key, default: Any = None) -> Any: ...

        def _one(self, rule: Rule, request: bytes, noreply: bool) -> Any: ...

        def _meta_checked(self, command: str) -> None: ...

        def _no_meta(self, command: str) -> MemcacheUnknownCommandError: ...

        def _deadline_for(self, requests: int) -> Optional[float]: ...

        def meta_arithmetic(
            self,
            key: Key,
            delta: int = 1,
            *,
            decrement: bool = False,
            initial: Optional[int] = None,
            vivify_on_miss: Optional[int] = None,
            ttl: Optional[int] = None,
            compare_cas: Optional[int] = None,
            return_cas: bool = False,
            flags: str = "",
        ) -> MetaResult: ...

    def _key(self, key: Key) -> bytes:
        return validate_key(key, self._prefix, self._unicode)

    def check_key(self, key: Key, key_prefix: Optional[bytes] = None) -> bytes:
        """Validate ``key`` and return it prefixed, as bytes (pymemcache's helper)."""
        prefix = self._prefix if key_prefix is None else key_prefix
        return validate_key(key, prefix, self._unicode)

    def _serialize(self, key: Key, value: Any, flags: Optional[int]) -> Tuple[bytes, int]:
        if self._raw_values and type(value) is bytes:  # what the default serde would do
            return value, 0 if flags is None else flags
        data, data_flags = self._serde.serialize(key, value)
        if type(data) is not bytes:
            data = coerce_to_bytes(data, self.options.encoding, key)
        return data, data_flags if flags is None else flags

    #: ``_serialize`` by a public name: the asyncio client's native stores call it.
    serialize = _serialize

    def _opaque(self) -> bytes:
        self._opaque_counter = (self._opaque_counter + 1) & 0xFFFFFFF
        return b"%x" % self._opaque_counter

    def _decoded(self, key: Key, result: MetaResult) -> MetaResult:
        """``result`` with its value deserialized, as a text get would return it."""
        if result.value is None or (self._raw_values and not result.client_flags):
            return result  # (a vivify placeholder is a miss: meta.ExpectMeta)
        value = self._serde.deserialize(key, result.value, result.client_flags or 0)
        return result.with_value(value)
