"""Leases and read-through: ``lease_get``/``lease_set``/``lease_release`` (memcached's win
flag and the lease key of :func:`pymc.meta.lease_key`), ``invalidate`` and ``fetch``
(:func:`read_through`, for any client with the three lease commands), as a mixin. Each
round trip is a plan (:mod:`pymc.protocol.metaplans`) the transport executes; what the
next one is depends on the replies before it.

Layer: commands.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

from ..exceptions import MemcacheError, MemcacheLeaseTimeoutError
from ..options import Key
from ..protocol import ErrorReply
from ..protocol.meta import (
    ExpectMeta,
    MetaResult,
    encode_meta_delete,
    encode_meta_get,
    encode_meta_set,
    lease_get_template,
    lease_key,
    meta_key,
)
from ..protocol.metaplans import meta_each_plan, meta_plan
from .base import CommandBase

__all__ = ["LEASE_TEMPLATES", "LeaseCommands", "read_through"]

#: How many keys' lease_get requests a Client remembers (then it starts afresh).
LEASE_TEMPLATES = 1024


def read_through(
    client: Any,
    key: Any,
    compute: Callable[[], Any],
    ttl: int = 0,
    lease_ttl: int = 30,
    recache_ttl: Optional[int] = None,
    wait: Optional[float] = None,
    sleep: Optional[Callable[[float], Any]] = None,
) -> Any:
    """``fetch()`` for any client with ``lease_get``/``lease_set``/``lease_release`` (each
    call of which takes its own connection, so nothing is held while a caller waits).

    A hit returns the value: a fresh one, or a stale one (after ``invalidate()``) or one
    near expiry (within ``recache_ttl`` seconds) while another caller refreshes it. Exactly
    one caller refreshes (memcached's win flag on the existing item), or, on a miss, fills
    the key (the lease of :func:`pymc.meta.lease_key`, an item of its own that no read
    sees): it runs ``compute()``, stores the result for ``ttl`` seconds and returns it;
    the others wait (capped backoff through ``time.sleep``, cooperative under gevent) for
    at most ``lease_ttl`` (or ``wait``) seconds, then read it. If ``compute()`` raises, or
    its value cannot be stored, the current value stays as it was and the win or the lease
    is given back, so the next caller tries again.

    ``sleep``: how to wait between tries (default: ``time.sleep`` as it is then; the
    asyncio clients pass one that waits on the event loop).
    """
    patience = lease_ttl if wait is None else wait
    deadline = None
    delay = 0.001
    while True:
        result = client.lease_get(key, lease_ttl, recache_ttl)
        if result.win:
            return _recompute(client, key, compute, ttl, result)
        if result.status == "hit":
            return result.value  # fresh; or stale, or near expiry, while another refreshes
        if not result.won_elsewhere:  # no lease was offered: the cache is unavailable
            return compute()  # (a HashClient with ignore_exc and a failing node)
        # Someone else holds the lease of a missing value: wait for what it stores.
        now = time.monotonic()
        if deadline is None:  # (measured from the first wait: the hit path skips the clock)
            deadline = now + patience
        if now >= deadline:
            raise MemcacheLeaseTimeoutError(
                f"{key!r} was not stored by the lease holder within {patience} s"
            )
        (sleep or time.sleep)(min(delay, deadline - now))
        delay = min(delay * 2, 0.1)


def _recompute(client: Any, key: Any, compute: Callable[[], Any], ttl: int, lease: Any) -> Any:
    try:
        value = compute()
        client.lease_set(key, value, ttl, lease)
    except BaseException:
        # compute() raised, or its value could not be stored (too large, a network
        # error): give the win or the lease back, leaving the value as it was, so the
        # next caller tries again instead of waiting out the lease.
        try:
            client.lease_release(key, lease)
        except Exception:  # (what failed first is the error to raise)
            pass
        raise
    return value


class LeaseCommands(CommandBase):
    """Leases, ``invalidate`` and ``fetch`` (see the module's docstring)."""

    if TYPE_CHECKING:

        def _meta_result(self, result: Any, command: str) -> MetaResult: ...

    def lease_get(
        self, key: Key, lease_ttl: int = 30, recache_ttl: Optional[int] = None
    ) -> MetaResult:
        """The probe :meth:`fetch` makes: the value (``mg`` with ``return_cas`` and
        ``recache_ttl``), and on a miss a try for the key's lease (:func:`~pymc.meta.lease_key`,
        held ``lease_ttl`` seconds). A ``"hit"`` is the value; with ``win`` this caller is the
        one to refresh it (stale, or near expiry). A ``"miss"`` with ``win`` holds the lease
        (its ``cas``); with ``won_elsewhere`` another caller holds it. Give a win or a lease
        back through :meth:`lease_set` or :meth:`lease_release`."""
        # The request around its opaque is built and checked once per key (a read-through
        # probes its hot keys again and again); only exact str/bytes keys and int ttls are
        # remembered, so that 30.0 or True never passes for what was checked as 30 or 1.
        memo: Any = None
        template = None
        if (
            (type(key) is str or type(key) is bytes)
            and type(lease_ttl) is int
            and (recache_ttl is None or type(recache_ttl) is int)
        ):
            memo = (key, lease_ttl, recache_ttl)
            template = self._lease_templates.get(memo)
        if template is None:
            wire, b64 = meta_key(key, self._prefix, True)
            template = lease_get_template(wire, lease_ttl, recache_ttl, base64=b64)
            if memo is not None:
                if len(self._lease_templates) >= LEASE_TEMPLATES:
                    self._lease_templates.clear()
                self._lease_templates[memo] = template
        opaque = self._opaque()
        # (meta_plan("mg", ...) run without making the plan: the probe of every fetch)
        result = self.request(template[0] + opaque + template[1], ExpectMeta(opaque))
        if type(result) is ErrorReply:
            self._meta_result(result, "mg")  # (raises)
        if result.status == "miss" and not result.won_elsewhere:
            result = self._take_lease(key, lease_ttl, template)
        return self._decoded(key, result)

    def _take_lease(self, key: Key, lease_ttl: int, template: Tuple[bytes, bytes]) -> MetaResult:
        """On a miss: add the key's lease and probe the key again, in one round trip (a
        holder stores the value before it frees its lease, so a lease won after that finds
        the value)."""
        wire = lease_key(key, self._prefix)
        first, then = self._opaque(), self._opaque()
        add = encode_meta_set(
            wire, b"", base64=True, ttl=lease_ttl, mode="add", return_cas=True, opaque=first
        )
        each = [(first, "ms"), (then, "mg")]
        replies = self.execute(meta_each_plan(add + template[0] + then + template[1], each))
        lease = self._meta_result(replies[0], "ms")
        found = self._meta_result(replies[1], "mg")
        if lease.status == "stored":
            if found.status == "miss":
                return MetaResult("miss", cas=lease.cas, win=True)
            self._free_lease(key, lease.cas)  # filled meanwhile: the value, and no lease
            return found
        if found.status == "miss":
            return MetaResult("miss", won_elsewhere=True)
        return found

    def _free_lease(self, key: Key, cas: Optional[int]) -> bool:
        opaque = self._opaque()
        wire = lease_key(key, self._prefix)
        request = encode_meta_delete(wire, base64=True, compare_cas=cas, opaque=opaque)
        return self.execute(meta_plan("md", request, opaque)).status == "deleted"  # type: ignore[no-any-return]

    def lease_set(self, key: Key, value: Any, ttl: int, lease: MetaResult) -> bool:
        """Store ``value`` as what this caller's win or lease (``lease``, from
        :meth:`lease_get`) computed, and give the lease back; False if it was not stored
        (another value came meanwhile, or the lease was lost).

        A lease on a missing key stores in add mode, then frees the lease; had the lease
        gone meanwhile (``invalidate()``, or it expired and another caller took it), the
        value just stored is taken back. A refresh stores only over the value it won
        (``cas``); if the server refuses the new value (too large: memcached then drops the
        key), the old value is put back as it was (stale if it was), unless another write
        replaced it meanwhile, and the error raised."""
        data, client_flags = self._serialize(key, value, None)
        wire, b64 = meta_key(key, self._prefix, True)
        first, then = self._opaque(), self._opaque()
        if lease.status != "hit":  # a lease on a missing key
            store = encode_meta_set(
                wire,
                data,
                base64=b64,
                client_flags=client_flags,
                ttl=ttl,
                mode="add",
                return_cas=True,
                opaque=first,
            )
            free = encode_meta_delete(
                lease_key(key, self._prefix), base64=True, compare_cas=lease.cas, opaque=then
            )
            unsure = True  # the value may be stored, and whether the lease held is not known
            try:
                each = [(first, "ms"), (then, "md")]
                replies = self.execute(meta_each_plan(store + free, each))
                if type(replies[0]) is ErrorReply or replies[0].status != "stored":
                    unsure = False  # nothing was stored
                stored = self._meta_result(replies[0], "ms")
                freed = self._meta_result(replies[1], "md")
                if stored.status == "stored" and freed.status != "deleted":
                    # The lease went while this caller computed: what it computed may
                    # predate the write that invalidated it.
                    opaque = self._opaque()
                    undo = encode_meta_delete(
                        wire, base64=b64, compare_cas=stored.cas, opaque=opaque
                    )
                    self.execute(meta_plan("md", undo, opaque))
                    unsure = False
                    return False
                unsure = False
                return stored.status == "stored"
            except BaseException:
                # Interrupted (gevent.Timeout, KeyboardInterrupt) or cut off between the
                # store and knowing that the lease held (or during the undo): take the value
                # back, whatever is there now. A miss is never a wrong value; a value
                # computed before a write would be served until its ttl ends.
                if unsure:
                    self._take_back(wire, b64)
                raise
        ask = encode_meta_get(
            wire, base64=b64, value=False, return_cas=True, return_ttl=True, opaque=first
        )
        store = encode_meta_set(
            wire,
            data,
            base64=b64,
            client_flags=client_flags,
            ttl=ttl,
            compare_cas=lease.cas,
            opaque=then,
        )
        replies = self.execute(meta_each_plan(ask + store, [(first, "mg"), (then, "ms")]))
        before = self._meta_result(replies[0], "mg")
        # memcached drops the key when it refuses a value (too large), whatever the cas:
        # put the won value back only if it was still there just before the store, so that
        # a newer write it dropped is never replaced by the older value.
        if (
            type(replies[1]) is ErrorReply
            and replies[1].in_step
            and before.hit
            and before.cas == lease.cas
        ):
            try:
                self._put_back(key, wire, b64, lease, before.ttl)
            except MemcacheError:
                pass  # (the error that dropped it is the one to raise)
        return self._meta_result(replies[1], "ms").status == "stored"

    def _take_back(self, wire: bytes, b64: bool) -> None:
        """Delete the key (best effort, on a fresh connection if need be): the way out
        of a fill whose outcome is unknown."""
        try:
            opaque = self._opaque()
            self.execute(
                meta_plan("md", encode_meta_delete(wire, base64=b64, opaque=opaque), opaque)
            )
        except Exception:  # (the error that got here is the one to raise)
            pass

    def _put_back(
        self,
        key: Key,
        wire: bytes,
        b64: bool,
        lease: MetaResult,
        ttl: Optional[int],
        compare_cas: Optional[int] = None,
    ) -> bool:
        """Store again the value a refresh won, for the time it had left (``ttl``, from
        ``mg ... t``), stale if it was: over itself (``compare_cas``: a fresh item, whose
        win the next caller gets again), or in add mode (memcached dropped it when it
        refused the new value). False if it was not stored."""
        data, client_flags = self._serialize(key, lease.value, None)
        opaque = self._opaque()
        request = encode_meta_set(
            wire,
            data,
            base64=b64,
            client_flags=client_flags,
            ttl=0 if ttl is None or ttl < 0 else max(ttl, 1),
            mode="add" if compare_cas is None else None,
            compare_cas=compare_cas,
            return_cas=True,
            opaque=opaque,
        )
        if not lease.stale:
            return self.execute(meta_plan("ms", request, opaque)).status == "stored"  # type: ignore[no-any-return]
        # A stale value goes back stale: the mark goes in the same request, so that no
        # reader (nor an interruption between two round trips) finds it fresh. Whatever is
        # there then is marked (a newer value that won the add is served stale while one
        # caller refreshes it: never older than what was written).
        then = self._opaque()
        stale = encode_meta_delete(wire, base64=b64, invalidate=True, opaque=then)
        replies = self.execute(meta_each_plan(request + stale, [(opaque, "ms"), (then, "md")]))
        self._meta_result(replies[1], "md")
        return self._meta_result(replies[0], "ms").status == "stored"

    def lease_release(self, key: Key, lease: MetaResult) -> bool:
        """Give back a win or a lease (from :meth:`lease_get`) without storing anything: the
        lease of a missing key is freed; a won refresh leaves the value as it was, and the
        next caller wins it again (a stale value is marked stale again; a value near expiry
        is stored again as it was, for the time it had left). False if there was nothing
        left to give back (the value changed meanwhile)."""
        if lease.status != "hit":
            return self._free_lease(key, lease.cas)
        wire, b64 = meta_key(key, self._prefix, True)
        opaque = self._opaque()
        if lease.stale:
            request = encode_meta_delete(
                wire, base64=b64, compare_cas=lease.cas, invalidate=True, opaque=opaque
            )
            return self.execute(meta_plan("md", request, opaque)).status == "deleted"  # type: ignore[no-any-return]
        request = encode_meta_get(wire, base64=b64, value=False, return_ttl=True, opaque=opaque)
        before = self.execute(meta_plan("mg", request, opaque))
        if not before.hit:
            return False
        return self._put_back(key, wire, b64, lease, before.ttl, lease.cas)

    def invalidate(self, key: Key, ttl: int = 30) -> bool:
        """Mark ``key`` stale instead of deleting it: the next :meth:`fetch` gets the stale
        value at once while one caller recomputes it. A :meth:`fetch` filling the missing
        key loses its lease, so that what it computed before the write is not stored. True
        if the key existed."""
        wire, b64 = meta_key(key, self._prefix, True)  # any key: binary ones go base64
        first, then = self._opaque(), self._opaque()
        request = encode_meta_delete(
            wire, base64=b64, invalidate=True, ttl=ttl, opaque=first
        ) + encode_meta_delete(lease_key(key, self._prefix), base64=True, opaque=then)
        replies = self.execute(meta_each_plan(request, [(first, "md"), (then, "md")]))
        self._meta_result(replies[1], "md")
        return self._meta_result(replies[0], "md").status == "deleted"

    def fetch(
        self,
        key: Key,
        compute: Callable[[], Any],
        ttl: int = 0,
        *,
        lease_ttl: int = 30,
        recache_ttl: Optional[int] = None,
        wait: Optional[float] = None,
    ) -> Any:
        """Read-through with herd protection and stale-while-revalidate: see
        :func:`read_through`."""
        return read_through(self, key, compute, ttl, lease_ttl, recache_ttl, wait)
