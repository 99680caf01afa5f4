"""The meta commands (``meta_get``, ``meta_set``, ``meta_delete``, ``meta_arithmetic``,
``meta_noop``, the quiet pipelines ``meta_get_many``/``meta_set_many``/``meta_delete_many``,
``get_cas``/``set_cas``) as a mixin: each builds its plans (:mod:`pymc.protocol.metaplans`)
and has the transport execute them. Keys that are not valid text keys travel base64.

Layer: commands.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from ..exceptions import MemcacheIllegalInputError
from ..options import Key
from ..protocol import MAX_KEY_LENGTH, ErrorReply, validate_keys
from ..protocol.meta import (
    OPAQUE_MASK,
    ExpectMetaQuiet,
    MetaResult,
    encode_meta_arithmetic,
    encode_meta_delete,
    encode_meta_get,
    encode_meta_noop,
    encode_meta_set,
    encode_quiet_gets,
    flags_vivify,
    meta_key,
)
from ..protocol.metaplans import (
    QUIET_BATCH_BYTES,
    NoMetaCommands,
    meta_batches,
    meta_check,
    meta_each_plan,
    meta_plan,
    meta_reply,
    quiet_deletes,
    quiet_get_plan,
    quiet_plan,
    quiet_set_plan,
)
from .base import CommandBase

__all__ = ["MetaCommands"]


class MetaCommands(CommandBase):
    """The meta commands (see the module's docstring)."""

    def _meta_result(self, result: Any, command: str) -> MetaResult:
        """``result`` (one reply of a meta pipeline), or its error raised (a server
        without meta commands: see :class:`~pymc.protocol.metaplans.NoMetaCommands`)."""
        if type(result) is ErrorReply and not result.in_step:
            self.close()  # (ERROR Too many open connections: nothing more comes)
        try:
            meta_reply(result, command)
        except NoMetaCommands:
            raise self._no_meta(command) from None
        self._meta_ok = True
        return result  # type: ignore[no-any-return]

    def meta_get(
        self,
        key: Key,
        *,
        return_cas: bool = False,
        return_ttl: bool = False,
        return_size: bool = False,
        return_hit: bool = False,
        return_last_access: bool = False,
        touch_ttl: Optional[int] = None,
        vivify_on_miss: Optional[int] = None,
        recache_ttl: Optional[int] = None,
        no_bump: bool = False,
        flags: str = "",
    ) -> MetaResult:
        """``mg``: the value (deserialized) and what was asked for, as a :class:`MetaResult`
        (``status`` ``"hit"`` or ``"miss"``; ``win``/``stale``/``won_elsewhere`` with
        ``vivify_on_miss`` or ``recache_ttl``). memcached's vivify placeholder (an empty
        item made by ``vivify_on_miss``, until a value replaces it) is a ``"miss"``: ``win``
        for its maker, ``won_elsewhere`` for the others."""
        wire, b64 = meta_key(key, self._prefix, True)  # any key: binary ones go base64
        opaque = self._opaque()
        request = encode_meta_get(
            wire,
            base64=b64,
            return_cas=return_cas,
            return_ttl=return_ttl,
            return_client_flags=True,
            return_size=return_size,
            return_hit=return_hit,
            return_last_access=return_last_access,
            opaque=opaque,
            touch_ttl=touch_ttl,
            vivify_on_miss=vivify_on_miss,
            recache_ttl=recache_ttl,
            no_bump=no_bump,
            flags=flags,
        )
        vivify = vivify_on_miss is not None or (flags != "" and flags_vivify(flags))
        return self._decoded(key, self.execute(meta_plan("mg", request, opaque, vivify)))

    def meta_set(
        self,
        key: Key,
        value: Any,
        ttl: int = 0,
        *,
        mode: Optional[str] = None,
        compare_cas: Optional[int] = None,
        invalidate: bool = False,
        return_cas: bool = False,
        flags: str = "",
    ) -> MetaResult:
        """``ms``: store ``value`` (through the serde); ``mode`` is ``"set"`` (default),
        ``"add"``, ``"replace"``, ``"append"`` or ``"prepend"``. ``status`` is ``"stored"``,
        ``"not_stored"``, ``"exists"`` (stale ``compare_cas``) or ``"not_found"``."""
        wire, b64 = meta_key(key, self._prefix, True)  # any key: binary ones go base64
        data, client_flags = self._serialize(key, value, None)
        if not self._meta_ok or self.sock is None:
            self._meta_checked("ms")
        opaque = self._opaque()
        request = encode_meta_set(
            wire,
            data,
            base64=b64,
            client_flags=client_flags,
            ttl=ttl,
            mode=mode,
            compare_cas=compare_cas,
            invalidate=invalidate,
            return_cas=return_cas,
            opaque=opaque,
            flags=flags,
        )
        return self.execute(meta_plan("ms", request, opaque))  # type: ignore[no-any-return]

    def meta_delete(
        self,
        key: Key,
        *,
        compare_cas: Optional[int] = None,
        invalidate: bool = False,
        ttl: Optional[int] = None,
        flags: str = "",
    ) -> MetaResult:
        """``md``: delete, or with ``invalidate`` mark the value stale (served while one
        caller refreshes it). ``status`` is ``"deleted"`` (done), ``"not_found"`` or
        ``"exists"`` (stale ``compare_cas``)."""
        wire, b64 = meta_key(key, self._prefix, True)  # any key: binary ones go base64
        opaque = self._opaque()
        request = encode_meta_delete(
            wire,
            base64=b64,
            compare_cas=compare_cas,
            invalidate=invalidate,
            ttl=ttl,
            opaque=opaque,
            flags=flags,
        )
        return self.execute(meta_plan("md", request, opaque))  # type: ignore[no-any-return]

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
    ) -> MetaResult:
        """``ma``: add (or subtract) ``delta``; ``number`` is the new value. With
        ``vivify_on_miss`` a missing counter is created as ``initial`` (default 0) with
        that ttl."""
        wire, b64 = meta_key(key, self._prefix, True)  # any key: binary ones go base64
        opaque = self._opaque()
        request = encode_meta_arithmetic(
            wire,
            base64=b64,
            decrement=decrement,
            delta=delta,
            initial=initial,
            vivify_on_miss=vivify_on_miss,
            ttl=ttl,
            compare_cas=compare_cas,
            return_cas=return_cas,
            opaque=opaque,
            flags=flags,
        )
        return self.execute(meta_plan("ma", request, opaque))  # type: ignore[no-any-return]

    def meta_noop(self) -> MetaResult:
        """``mn``: a round trip that does nothing (``status`` ``"noop"``)."""
        result = self.execute(meta_check())
        self._meta_ok = True
        return result  # type: ignore[no-any-return]

    def get_cas(self, key: Key, default: Any = None) -> Tuple[Any, Optional[int]]:
        """``(value, cas)`` through ``mg``, or ``(default, None)`` on a miss."""
        result = self.meta_get(key, return_cas=True)
        return (result.value, result.cas) if result.status == "hit" else (default, None)

    def set_cas(self, key: Key, value: Any, cas: int, ttl: int = 0) -> bool:
        """Store ``value`` only if the item's cas is still ``cas``; False if it changed or
        the key is gone."""
        return self.meta_set(key, value, ttl, compare_cas=cas).status == "stored"

    def meta_wires(self, keys: Iterable[Any]) -> Dict[bytes, Tuple[Any, bool]]:
        """``{wire key: (key, base64?)}``; spellings of one key are one key (the last)."""
        out: Dict[bytes, Tuple[Any, bool]] = {}
        for key in keys:
            wire, b64 = meta_key(key, self._prefix, True)
            out[wire] = (key, b64)
        return out

    def meta_get_many(self, keys: Iterable[Key]) -> Dict[Key, Any]:
        """The values (deserialized) of the keys present, in one quiet pipeline per
        batch: ``mg ... q`` for each key, then ``mn``; the server sends only the hits."""
        keys = keys if type(keys) is list else list(keys)
        try:
            text = validate_keys(keys, self._prefix, True)  # (what meta_key sends as it is)
        except MemcacheIllegalInputError:
            text = None  # a key that goes base64 (or a bad one: meta_wires says which)
        if text is not None and (
            len(text) * (MAX_KEY_LENGTH + 40) < QUIET_BATCH_BYTES  # (no need to add up)
            or sum(map(len, text)) + 40 * len(text) < QUIET_BATCH_BYTES
        ):
            # One batch of text keys (meta_batches would make one): encoded, read and
            # matched without a Python turn per key where the compiled module is in use.
            if not text:
                return {}
            first = self._opaque_counter + 1  # (the opaques _opaque would give, in turn)
            self._opaque_counter = (self._opaque_counter + len(text)) & OPAQUE_MASK
            # (text_quiet_get_plan's request and reader, without making the plan)
            request, opaques = encode_quiet_gets(list(text), first)
            found = self.request(request, ExpectMetaQuiet.gets(opaques))
            if type(found) is ErrorReply:
                self._meta_result(found, "mg")  # (raises)
            self._meta_ok = True
            return self.meta_values(found, dict(zip(opaques, text.values())))
        out: Dict[Key, Any] = {}
        batches = meta_batches(list(self.meta_wires(keys).items()))
        deadline = self._deadline_for(len(batches))
        for batch in batches:
            plan, key_of = quiet_get_plan(batch, self._opaque)
            found = self.execute(plan, deadline)
            self._meta_ok = True
            out.update(self.meta_values(found, key_of))
        return out

    def meta_values(
        self, found: Dict[bytes, MetaResult], key_of: Dict[bytes, Any]
    ) -> Dict[Any, Any]:
        """``{key: value}`` (deserialized) of the hits of a quiet ``mg`` pipeline."""
        if self._raw_values:  # (the default serde returns the bytes, whatever the flags)
            # (r[0], r[1]: status and value, read without the named tuple's descriptors)
            return {key_of[token]: r[1] for token, r in found.items() if r[0] == "hit"}
        out: Dict[Any, Any] = {}
        for token, result in found.items():
            if result.status == "hit":
                key = key_of[token]
                out[key] = self._decoded(key, result).value
        return out

    def meta_set_many(self, values: Mapping[Any, Any], ttl: int = 0) -> List[Any]:
        """Store many values in one quiet pipeline per batch; return the keys that were not
        stored. An error line (a value over the item size limit) names no request, so that
        batch is sent again with a reply for each (a set may run twice), and the error is
        raised once every reply was read, as :meth:`set_many` does."""
        failed: List[Any] = []
        errors: List[Tuple[Any, ErrorReply]] = []
        wires = self.meta_wires(values)
        if wires and (not self._meta_ok or self.sock is None):
            self._meta_checked("ms")
        batches = meta_batches(list(wires.items()))
        deadline = self._deadline_for(len(batches))
        for batch in batches:
            lines: List[Tuple[bytes, bytes, Any]] = []  # (opaque, request without q, key)
            for wire, (key, b64) in batch:
                data, client_flags = self._serialize(key, values[key], None)
                opaque = self._opaque()
                options = dict(base64=b64, client_flags=client_flags, ttl=ttl, opaque=opaque)
                lines.append((opaque, encode_meta_set(wire, data, quiet=True, **options), key))
            sent: List[Tuple[bytes, ...]] = [(opaque, b"ms") for opaque, _, _ in lines]
            request = b"".join(line for _, line, _ in lines) + encode_meta_noop()
            found = self.execute(quiet_set_plan(request, sent), deadline)
            if type(found) is not ErrorReply:
                key_of = {opaque: key for opaque, _, key in lines}
                failed.extend(key_of[o] for o, r in found.items() if r.status != "stored")
                continue
            if not found.in_step or (found.kind == b"ERROR" and not found.message):
                self._meta_result(found, "ms")
            # Which request drew the error? Ask again, one reply each, in order.
            loud = []
            for wire, (key, b64) in batch:
                data, client_flags = self._serialize(key, values[key], None)
                opaque = self._opaque()
                options = dict(base64=b64, client_flags=client_flags, ttl=ttl, opaque=opaque)
                loud.append((opaque, encode_meta_set(wire, data, **options), key))
            each = [(opaque, "ms") for opaque, _, _ in loud]
            request = b"".join(line for _, line, _ in loud)
            replies = self.execute(meta_each_plan(request, each), deadline)
            for (_, _, key), reply in zip(loud, replies):
                if type(reply) is ErrorReply:
                    errors.append((key, reply))
                elif reply.status != "stored":
                    failed.append(key)
        if errors:
            names = ", ".join(repr(k) for k, _ in errors[:5])
            self.raise_error(errors[0][1], f"meta_set_many of {len(errors)} key(s): {names}")
        return failed

    def meta_delete_many(self, keys: Iterable[Key], *, invalidate: bool = False) -> List[Key]:
        """Delete (or with ``invalidate`` mark stale) many keys in one quiet pipeline per
        batch; return the keys that were not found."""
        missing: List[Key] = []
        batches = meta_batches(list(self.meta_wires(keys).items()))
        deadline = self._deadline_for(len(batches))
        for batch in batches:
            request, sent, key_of = quiet_deletes(batch, self._opaque, invalidate)
            found = self.execute(quiet_plan("md", request, sent), deadline)
            self._meta_ok = True
            missing.extend(key_of[t] for t, r in found.items() if r.status == "not_found")
        return missing

    # ------------------------------------------------------------------ mapping sugar
