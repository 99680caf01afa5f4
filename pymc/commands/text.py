"""The text protocol's commands (``set`` ... ``cas``, ``get_many``/``gets``/``gat``,
``delete``, ``incr``/``decr``, ``touch``, ``stats``, ``version``, ``raw_command``, ...) as
a mixin: each builds its plan (:mod:`pymc.protocol.plans`) and has the transport execute
it. ``get`` itself is the transport's fast path; the one-reply commands go through its
``_one`` fast path with the same request and rule as their plan.

Layer: commands.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from ..exceptions import MemcacheIllegalInputError, MemcacheUnexpectedCloseError
from ..options import Key
from ..protocol import RULES, ClusterConfig, encode_storage, validate_keys
from ..protocol.plans import (
    Plan,
    cache_memlimit_plan,
    cluster_config_plan,
    delete_many_plans,
    delete_plan,
    flush_all_plan,
    incr_decr_plan,
    many_result,
    raw_command_plan,
    raw_reply_error,
    resolve_noreply,
    retrieval_plans,
    set_many_plans,
    shutdown_plan,
    stats_plan,
    sync_check_plan,
    touch_plan,
    verbosity_plan,
    version_plan,
)
from ..protocol.results import decode_values
from .base import CommandBase

__all__ = ["TextCommands"]

_MISSING: Any = object()


class TextCommands(CommandBase):
    """The text protocol's commands (see the module's docstring)."""

    # ------------------------------------------------------------------ storage

    def _store(
        self,
        command: str,
        key: Key,
        value: Any,
        expire: int,
        noreply: Optional[bool],
        flags: Optional[int],
        cas: object = None,
    ) -> Optional[bool]:
        # store_plan's request and rule, through the transport's one-reply fast path.
        raw = self._key(key)
        data, data_flags = self._serialize(key, value, flags)
        noreply = resolve_noreply(noreply, self._noreply_default)
        request = encode_storage(command.encode(), raw, data, data_flags, expire, noreply, cas)
        if noreply:
            self.send(request, True)
            return True
        return self._one(RULES[command], request, False)  # type: ignore[no-any-return]

    def set(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        """Store ``value``. True when stored (always True with ``noreply``)."""
        return bool(self._store("set", key, value, expire, noreply, flags))

    def add(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        """Store only if the key is absent. False when it already existed."""
        return bool(self._store("add", key, value, expire, noreply, flags))

    def replace(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        """Store only if the key exists. False when it did not."""
        return bool(self._store("replace", key, value, expire, noreply, flags))

    def append(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        """Append to an existing value. False when the key did not exist."""
        return bool(self._store("append", key, value, expire, noreply, flags))

    def prepend(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        """Prepend to an existing value. False when the key did not exist."""
        return bool(self._store("prepend", key, value, expire, noreply, flags))

    def cas(
        self,
        key: Key,
        value: Any,
        cas: Union[int, str, bytes],
        expire: int = 0,
        noreply: bool = False,
        flags: Optional[int] = None,
    ) -> Optional[bool]:
        """Compare and swap: True if stored, False if the cas token was stale, None if the
        key does not exist."""
        if cas is None:
            # Sent without a token, the server would answer ERROR twice (to the line and to
            # the data block read as a command), shifting every later reply by one.
            raise MemcacheIllegalInputError("cas needs the token returned by gets")
        return self._store("cas", key, value, expire, noreply, flags, cas)

    def set_many(
        self,
        values: Mapping[Any, Any],
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> List[Key]:
        """Store many values in one pipelined pass; return the keys that were not stored.

        A server error for one key (a value over the item size limit) raises
        :class:`MemcacheServerError` after every reply was read; the others were stored.
        """
        keys, plans = self.set_many_plans_for(values, expire, noreply, flags)
        if not plans:
            return []
        passes = self.execute_all(plans)
        if plans[0].expect is None:  # noreply
            return []
        return many_result("set", keys, [reply for replies in passes for reply in replies])

    def set_many_plans_for(
        self,
        values: Mapping[Any, Any],
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> Tuple[List[Key], List[Plan]]:
        """The keys of ``set_many(values, ...)`` in order, and its pipelined plans (none
        when ``values`` is empty): every key checked and value serialized, no I/O. What
        their replies mean is ``many_result("set", keys, replies)``."""
        noreply = resolve_noreply(noreply, self._noreply_default)
        keys: List[Key] = []
        items: List[Tuple[bytes, bytes, int]] = []
        for key, value in values.items():
            raw = self._key(key)
            data, data_flags = self._serialize(key, value, flags)
            items.append((raw, data, data_flags))
            keys.append(key)
        if not items:
            return [], []
        return keys, set_many_plans(items, expire, noreply)

    set_multi = set_many

    # ------------------------------------------------------------------ retrieval

    def _fetch_values(
        self, command: bytes, keys: Iterable[Key], expire: Optional[int], with_cas: bool
    ) -> Dict[Key, Any]:
        wanted = validate_keys(keys, self._prefix, self._unicode)
        if not wanted:
            return {}
        plans, found = retrieval_plans(
            command, wanted, list(wanted), expire, with_cas, self.options.max_get_line
        )
        try:
            if len(plans) == 1:
                self.execute(plans[0])
            else:
                self.execute_all(plans)
        except Exception:
            if self._ignore_exc:
                return {}
            raise
        return decode_values(found, wanted, self.options, with_cas)

    def get_many(self, keys: Iterable[Key]) -> Dict[Key, Any]:
        """The values of the keys present, in one round trip: ``{key: value}``."""
        return self._fetch_values(b"get", keys, None, False)

    get_multi = get_many

    def gets(self, key: Key, default: Any = None, cas_default: Any = None) -> Tuple[Any, Any]:
        """``(value, cas)`` for ``key``, or ``(default, cas_default)`` when missing."""
        found = self._fetch_values(b"gets", (key,), None, True)
        return found[key] if found else (default, cas_default)

    def gets_many(self, keys: Iterable[Key]) -> Dict[Key, Tuple[Any, Any]]:
        """``{key: (value, cas)}`` for the keys present, in one round trip."""
        return self._fetch_values(b"gets", keys, None, True)

    gets_multi = gets_many

    def gat(self, key: Key, expire: int = 0, default: Any = None) -> Any:
        """Get ``key`` and set its expiry to ``expire`` in one command."""
        found = self._fetch_values(b"gat", (key,), expire, False)
        return found[key] if found else default

    def gats(
        self, key: Key, expire: int = 0, default: Any = None, cas_default: Any = None
    ) -> Tuple[Any, Any]:
        """Like :meth:`gets`, and set the expiry of ``key`` to ``expire``."""
        found = self._fetch_values(b"gats", (key,), expire, True)
        return found[key] if found else (default, cas_default)

    # ------------------------------------------------------------------ other commands

    def delete(self, key: Key, noreply: Optional[bool] = None) -> bool:
        """Delete ``key``. False when it did not exist (always True with ``noreply``)."""
        noreply = resolve_noreply(noreply, self._noreply_default)
        plan = delete_plan(self._key(key), noreply)
        result = self._one(RULES["delete"], plan.request, noreply)
        return True if noreply else bool(result)

    def delete_many(self, keys: Iterable[Key], noreply: Optional[bool] = None) -> bool:
        """Delete many keys in one pipelined pass. True (missing keys are not an error)."""
        noreply = resolve_noreply(noreply, self._noreply_default)
        keys = list(keys)
        passes = self.execute_all(delete_many_plans([self._key(key) for key in keys], noreply))
        if not noreply:
            many_result("delete", keys, [reply for replies in passes for reply in replies])
        return True

    delete_multi = delete_many

    def _arith(self, command: str, key: Key, value: int, noreply: Optional[bool]) -> Optional[int]:
        noreply = bool(noreply)  # pymemcache: incr/decr are noreply only when asked
        plan = incr_decr_plan(command, self._key(key), value, noreply)
        return self._one(RULES[command], plan.request, noreply)  # type: ignore[no-any-return]

    def incr(
        self,
        key: Key,
        value: int,
        noreply: Optional[bool] = False,
        *,
        initial: Optional[int] = None,
        ttl: Optional[int] = None,
    ) -> Optional[int]:
        """Add ``value`` to a decimal counter; the new value, or None if it is missing.
        With ``initial`` (and ``ttl``) a missing counter is created as ``initial`` in the
        same round trip (``ma`` with ``N``/``J``: memcached 1.6)."""
        if initial is not None or ttl is not None:
            return self._counter(key, value, False, initial, ttl)
        return self._arith("incr", key, value, noreply)

    def decr(
        self,
        key: Key,
        value: int,
        noreply: Optional[bool] = False,
        *,
        initial: Optional[int] = None,
        ttl: Optional[int] = None,
    ) -> Optional[int]:
        """Subtract ``value`` (memcached stops at 0); the new value, or None if missing.
        ``initial`` and ``ttl`` as for :meth:`incr`."""
        if initial is not None or ttl is not None:
            return self._counter(key, value, True, initial, ttl)
        return self._arith("decr", key, value, noreply)

    def _counter(
        self, key: Key, delta: int, decrement: bool, initial: Optional[int], ttl: Optional[int]
    ) -> Optional[int]:
        result = self.meta_arithmetic(
            key,
            delta,
            decrement=decrement,
            initial=initial or 0,
            vivify_on_miss=ttl or 0,
        )
        return result.number

    def touch(self, key: Key, expire: int = 0, noreply: Optional[bool] = None) -> bool:
        """Set a new expiry. False when the key did not exist."""
        noreply = resolve_noreply(noreply, self._noreply_default)
        plan = touch_plan(self._key(key), expire, noreply)
        result = self._one(RULES["touch"], plan.request, noreply)
        return True if noreply else bool(result)

    def stats(self, *args: Union[str, bytes]) -> Dict[bytes, Any]:
        """The server's ``stats`` (with optional sub-command), values typed like pymemcache."""
        return self.execute(stats_plan(*args))  # type: ignore[no-any-return]

    def cache_memlimit(self, memlimit: int) -> bool:
        """Set the server's memory limit, in megabytes."""
        return self.execute(cache_memlimit_plan(memlimit))  # type: ignore[no-any-return]

    def verbosity(self, level: int, noreply: Optional[bool] = None) -> bool:
        """Set the server's logging verbosity."""
        noreply = resolve_noreply(noreply, self._noreply_default)
        return self.execute(verbosity_plan(level, noreply))  # type: ignore[no-any-return]

    def flush_all(self, delay: int = 0, noreply: Optional[bool] = None) -> bool:
        """Invalidate every item, now or in ``delay`` seconds."""
        noreply = resolve_noreply(noreply, self._noreply_default)
        return self.execute(flush_all_plan(delay, noreply))  # type: ignore[no-any-return]

    def version(self) -> bytes:
        """The server's version, e.g. ``b"1.6.18"``."""
        return self.execute(version_plan())  # type: ignore[no-any-return]

    def cluster_config(self) -> ClusterConfig:
        """AWS ElastiCache's ``config get cluster``: the cluster's version and nodes.
        A server that is not an ElastiCache configuration endpoint answers ``ERROR``:
        :class:`MemcacheUnknownCommandError`."""
        return self.execute(cluster_config_plan())  # type: ignore[no-any-return]

    def quit(self) -> None:
        """Tell the server to close the connection, and close it."""
        if self.sock is not None:
            try:
                self.sock.sendall(b"quit\r\n")
            except OSError:
                pass
        self.close()

    def shutdown(self, graceful: bool = False) -> None:
        """Ask the server to shut down (it needs ``--enable-shutdown``)."""
        try:
            self.execute(shutdown_plan(graceful))
        except MemcacheUnexpectedCloseError:
            return
        self.close()

    def raw_command(
        self, command: Union[str, bytes], end_tokens: Union[str, bytes] = "\r\n"
    ) -> bytes:
        """Send one command line as is; return the reply up to ``end_tokens``.

        pymc cannot know where the reply of an arbitrary command ends, so it makes sure
        nothing follows: a second request (the sync marker) must be answered next. A reply
        longer than ``end_tokens`` says is a protocol error that closes the connection."""
        plan = raw_command_plan(command, end_tokens, "utf-8" if self._unicode else "ascii")
        reply: bytes = self.execute(plan)
        # Anything the server still sends for this command comes before the answer to a
        # sync marker: read up to it now (an error line is logged; anything else is a
        # protocol error), or, if interrupted, before the next command's reply.
        self._owes_sync = True
        self.execute(sync_check_plan())
        error = raw_reply_error(reply)
        if error is not None:
            self.raise_error(error, plan.command)
        return reply

    # ------------------------------------------------------------------ mapping sugar

    def __getitem__(self, key: Key) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Key, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: Key) -> None:
        self.delete(key)
