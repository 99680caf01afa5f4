"""`ObjectPool`, a bounded LIFO pool with blocking checkout; `Lease`, one checkout held
across an exception; and `PooledCalls`, how a pooled client runs one call on a pooled object.

Rules the pool keeps:

* at most ``max_size`` objects exist at once (checked out plus idle); a caller that finds the
  pool full waits up to ``timeout`` seconds for a slot, then gets
  :class:`~pymc.exceptions.MemcachePoolTimeoutError`;
* reuse is last-in first-out, so under light load the same few connections stay warm and
  the surplus goes idle long enough to be reaped (``idle_timeout``), measured with
  ``time.monotonic``;
* an object whose use ended in *any* exception is destroyed, never reused, and its slot is
  freed at once -- whatever ``BaseException`` lands wherever in the pool's own bookkeeping
  (see the notes above ``_locked``);
* state changes happen under the lock, closing happens outside it;
* ``clear()`` closes idle objects now and objects checked out now when they come back;
  checkouts after it are served as usual;
* after ``os.fork()`` the child starts with an empty pool and a new lock, made once under a
  module lock that is itself made anew in the child: it never touches the parent's sockets.

Locks are made when a pool is made, from ``threading`` as it is then (or from
``lock_generator``), so ``gevent.monkey.patch_all()`` before or after ``import pymc`` works.

Everything that takes a slot and gives it back lives in this module (the pool's tickets,
its fork-safe state, the checkout written out in :meth:`PooledCalls.run`), so that the
tests which raise an exception at every line of it watch one file.

Layer: imports ``retry`` (the policy) and ``exceptions``; it never parses a reply and never
touches a socket (``CHECK_IDLE_AFTER``'s validator asks the connection, ``is_clean()``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
import types
from typing import (
    Any,
    Callable,
    Dict,
    Generic,
    Iterator,
    List,
    Optional,
    Tuple,
    TypeVar,
)

from ..exceptions import MemcachePoolTimeoutError
from ..retry import RetryPolicy, call_with_retry, replayable

__all__ = [
    "CHECK_IDLE_AFTER",
    "DEFAULT_POOL_TIMEOUT",
    "Lease",
    "ObjectPool",
    "PooledCalls",
    "connection_is_reusable",
]

T = TypeVar("T")
_monotonic = time.monotonic

#: Seconds a PooledClient call waits for a free connection before it raises
#: :class:`MemcachePoolTimeoutError`.
DEFAULT_POOL_TIMEOUT = 10.0

#: A connection idle longer than this is checked for a server-side close before reuse.
CHECK_IDLE_AFTER = 0.05


def connection_is_reusable(conn: Any, idle_seconds: float) -> bool:
    """The validator of a pool of connections (PooledClient's): a connection idle less than
    :data:`CHECK_IDLE_AFTER` is reused without a look (the pool itself skips this call
    then; the constant is read at each checkout), an older one if ``conn.is_clean()``."""
    if idle_seconds < CHECK_IDLE_AFTER:  # (error lines of noreply commands: see Client.send)
        return True
    return bool(conn.is_clean())


# Bumped in every child after os.fork(): a pool made in another generation is reset, once,
# under _fork_lock -- itself made anew in the child (a parent thread may have held it).
_fork_generation = [0]
_fork_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _fork_lock
    _fork_lock = threading.Lock()
    _fork_generation[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# How the bookkeeping survives an exception landing anywhere (KeyboardInterrupt, a signal
# handler's deadline, gevent.Timeout, ...):
#
# * every change of state is ONE statement, so it is done entirely or not at all: an object
#   moves from one container to another (idle <-> checked out -> doomed -> after_remove) in
#   a single expression (the counters of stats() follow in the next statement: they are
#   statistics, off by one at worst, while in_use and idle are exact);
# * what a caller holds is recorded in the pool against the caller's own ``_Ticket`` (made
#   before anything is taken), never only in a return value, so whoever handles an
#   exception can look up and give back what the ticket holds; giving back (``_settle``) is
#   idempotent and, if interrupted, finishes first and raises after;
# * the lock is taken by ``_locked``, or by a ``with`` whose body is the guarded call: one
#   line, so nothing can land between acquiring it and entering the guarded call, or
#   between leaving that call and letting go;
# * callers nest two handlers, so an exception landing in the first handler (while it
#   handles another) is caught by the second, which gives back what is still held.


def _state_lock() -> Any:
    """A new lock for a pool's state: ``threading.Lock()``, but when that is gevent's (under
    ``patch_all``), the operating system's lock it replaced (found through
    ``gevent.monkey.get_original``; pymc imports no gevent).
    Nothing done under it waits or switches greenlets (a checkout that must wait does so on
    its own waiter, made from ``threading.Lock`` as it is, after letting go), so greenlets
    of one thread never find it taken, and gevent's lock would only add its layer of Python
    to every checkout and return. Threads wait for it as for any lock."""
    make: Any = threading.Lock
    if (getattr(make, "__module__", None) or "").startswith("gevent."):
        get_original = getattr(sys.modules.get("gevent.monkey"), "get_original", None)
        try:
            original = get_original("_thread", "allocate_lock") if get_original else None
        except Exception:  # an unexpected gevent: keep what threading has
            original = None
        if isinstance(original, types.BuiltinFunctionType):
            make = original
    return make()


def _locked(lock: Any, fn: Callable[..., Any], *args: Any) -> Any:
    with lock: return fn(*args)  # noqa: E701  # fmt: skip


_EMPTY: Any = object()


class _Ticket:
    """One checkout: what it holds (``obj``; ``_EMPTY`` while a slot is only reserved), and
    when that object was made, went idle, and in which epoch (see ``clear``) it went out.

    The class holds the starting values (no ``__init__``, no ``__slots__``): a ticket is made
    for every checkout, and this way making one runs no Python code."""

    obj: Any = _EMPTY
    born = released = 0.0
    epoch = 0


_FULL: Any = object()  # _take_locked: no slot now, and the caller does not wait
#: Attempts at giving a checkout back when exceptions keep interrupting it.
_SETTLE_TRIES = 100


def _waiter_factory(lock_generator: Callable[[], Any]) -> Callable[[], Any]:
    """What a waiter for a slot is made of: a fresh product of ``lock_generator``, held once
    and waited on with a second ``acquire`` -- so with ``gevent.lock`` locks and no
    monkey-patching a waiting greenlet yields to the hub. That needs a lock that is not
    re-entrant and takes a timeout; otherwise ``threading.Lock`` as it is now."""
    probe = lock_generator()
    probe.acquire()
    try:
        reentrant = bool(probe.acquire(False))
    except TypeError:  # an acquire() without arguments: it cannot wait with a timeout
        reentrant = True
    else:
        if reentrant:
            probe.release()
    probe.release()
    return threading.Lock if reentrant else lock_generator


class _State:
    """Everything a pool knows, replaced whole after a fork."""

    __slots__ = (
        "created",
        "destroyed",
        "doomed",
        "epoch",
        "generation",
        "idle",
        "lock",
        "new_waiter",
        "out",
        "retired",
        "timeouts",
        "waiters",
    )

    def __init__(self, lock: Any, new_waiter: Callable[[], Any]) -> None:
        self.lock = lock
        self.new_waiter = new_waiter
        # Idle objects, oldest first: (object, released at, created at).
        self.idle: List[Tuple[Any, float, float]] = []
        # Checkouts: id(object) -> its ticket; a reserved slot not yet filled: id(ticket).
        self.out: Dict[int, _Ticket] = {}
        # Checkouts waiting for a slot, first come first: id(ticket) -> a held lock.
        self.waiters: Dict[int, Any] = {}
        # Objects dropped, to be handed to after_remove outside the lock.
        self.doomed: List[Any] = []
        self.epoch = 0  # bumped by clear(): what is out then is dropped when it comes back
        self.created = self.destroyed = self.timeouts = 0
        self.retired = False
        self.generation = _fork_generation[0]


class ObjectPool(Generic[T]):
    """A bounded, thread-safe, LIFO pool of objects made by ``obj_creator``.

    ``after_remove(obj)`` is called (outside the lock) for every object the pool drops.
    ``validate(obj, idle_seconds)`` may veto reuse of an idle object at checkout.
    """

    def __init__(
        self,
        obj_creator: Callable[[], T],
        after_remove: Optional[Callable[[T], Any]] = None,
        max_size: Optional[int] = None,
        idle_timeout: float = 0,
        lock_generator: Optional[Callable[[], Any]] = None,
        max_lifetime: Optional[float] = None,
        timeout: Optional[float] = DEFAULT_POOL_TIMEOUT,
        validate: Optional[Callable[[T, float], bool]] = None,
    ) -> None:
        if max_size is not None and max_size < 1:
            raise ValueError(f"max_size must be None or >= 1, got {max_size!r}")
        if idle_timeout < 0:
            raise ValueError("idle_timeout must be >= 0 (0: never reap idle objects)")
        if max_lifetime is not None and max_lifetime <= 0:
            raise ValueError("max_lifetime must be None or > 0")
        self._creator = obj_creator
        self._after_remove = after_remove
        self.max_size = max_size
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        self.timeout = timeout
        self._validate = validate
        # How long an idle object stays fresh: taken at a fast checkout without a validation
        # (see _take_fresh_locked). None: PooledClient's validator, whose CHECK_IDLE_AFTER is
        # read at each checkout; any other validator checks every one.
        self._fresh_for: Optional[float] = (
            float("inf")
            if validate is None
            else None
            if validate is connection_is_reusable
            else 0.0
        )
        self._lock_generator = lock_generator
        self._s = self._new_state()

    def _new_state(self) -> _State:
        if self._lock_generator is None:
            return _State(_state_lock(), threading.Lock)
        return _State(self._lock_generator(), _waiter_factory(self._lock_generator))

    def _state(self) -> _State:
        """The pool's state; in a forked child, a new empty one (made once, whichever
        thread comes first): the parent's objects are forgotten, never closed."""
        s = self._s
        if s.generation != _fork_generation[0]:
            s = _locked(_fork_lock, self._reset_if_forked)
        return s

    def _reset_if_forked(self) -> _State:
        if self._s.generation != _fork_generation[0]:
            self._s = self._new_state()
        return self._s

    # ------------------------------------------------------------------ checkout

    def get(self, timeout: Any = ...) -> T:
        """Check an object out, waiting up to ``timeout`` seconds (default: the pool's)
        for a slot when the pool is full."""
        t = _Ticket()
        s = self._state()
        try:
            try:
                self._get(s, t, self.timeout if timeout is ... else timeout, True)
                return t.obj  # type: ignore[no-any-return]
            except BaseException:
                self._settle(s, t, None, True)
                raise
        except BaseException:  # the first handler was itself interrupted
            self._settle(s, t, None, True)
            raise

    def try_get(self) -> Optional[T]:
        """An object if one can be had without waiting for a slot (an idle one, or a new
        one below ``max_size``), else None -- not counted as a timeout."""
        t = _Ticket()
        s = self._state()
        try:
            try:
                return t.obj if self._get(s, t, 0, False) else None
            except BaseException:
                self._settle(s, t, None, True)
                raise
        except BaseException:
            self._settle(s, t, None, True)
            raise

    def lease(self) -> Lease[T]:
        """A claim on one object, made before the object is taken (:meth:`Lease.take`), so
        that code which checks out many objects at once can always give back each one
        (:meth:`Lease.give_back`), whatever interrupts it."""
        return Lease(self)

    def _get(self, s: _State, t: _Ticket, timeout: Optional[float], wait: bool) -> bool:
        """Fill ticket ``t`` with a checked-out object; False if the pool is full and
        ``wait`` is false. On any exception ``t`` may hold a slot: the caller settles it."""
        validate = self._validate
        now = time.monotonic()
        deadline = now + (timeout if timeout is not None else 1e9)
        while True:
            # (_locked written out: this is every checkout. One line, as in _locked.)
            with s.lock: waiter = self._take_locked(s, t, now, deadline, wait)  # noqa: E701  # fmt: skip
            if waiter is None:  # t holds a slot
                if t.obj is _EMPTY:
                    t.obj = self._creator()  # one line: what is made is held by t at once
                    _locked(s.lock, self._adopt_locked, s, t)
                    return True
                # Checked outside the lock: it may cost a system call.
                # (PooledClient's validator passes a connection idle less than
                # CHECK_IDLE_AFTER without a look: that call is saved, as read now.)
                idle = now - t.released
                if (
                    validate is None
                    or (validate is connection_is_reusable and idle < CHECK_IDLE_AFTER)
                    or validate(t.obj, idle)
                ):
                    return True
                self._settle(s, t, None, True)
                t.obj = _EMPTY
            elif waiter is _FULL:
                if not wait:
                    return False
                raise MemcachePoolTimeoutError(
                    f"no free object in the pool within {timeout} s "
                    f"({len(s.out)} in use, max_size={self.max_size})"
                )
            else:
                waiter.acquire(True, deadline - now)  # released by _notify_locked
            now = time.monotonic()

    def _take_locked(self, s: _State, t: _Ticket, now: float, deadline: float, wait: bool) -> Any:
        """Give ``t`` an idle object or a reserved slot (None); else a lock to wait on (held:
        its release is the wake-up call), or _FULL (no waiting, or time is up)."""
        if s.waiters:
            s.waiters.pop(id(t), None)
        idle = s.idle
        if idle and (self.idle_timeout or self.max_lifetime is not None):
            self._reap_locked(s, now)
        if idle:
            t.obj, t.released, t.born = idle[-1]
            t.epoch = s.epoch
            s.out[id(idle.pop()[0])] = t
            return None
        if self.max_size is None or len(s.out) < self.max_size:
            t.obj, t.epoch = _EMPTY, s.epoch
            s.out[id(t)] = t
            return None
        if not wait:
            return _FULL
        if now >= deadline:
            s.timeouts += 1
            return _FULL
        waiter = s.new_waiter()
        waiter.acquire()
        s.waiters[id(t)] = waiter
        return waiter

    def _take_fresh_locked(self, s: _State, t: _Ticket, now: float) -> bool:
        """The fast checkout: give ``t`` the newest idle object if no one waits and it went
        idle less than ``_fresh_for`` seconds ago (so it needs no validation); else False,
        and ``t`` holds nothing (the caller takes the slow way, :meth:`_get`)."""
        idle = s.idle
        if not idle or s.waiters:  # (waiters: first come, first served)
            return False
        if self.idle_timeout or self.max_lifetime is not None:
            self._reap_locked(s, now)
            if not idle:
                return False
        fresh_for = self._fresh_for
        if now - idle[-1][1] >= (CHECK_IDLE_AFTER if fresh_for is None else fresh_for):
            return False
        t.obj, t.released, t.born = idle[-1]
        t.epoch = s.epoch
        s.out[id(idle.pop()[0])] = t
        return True

    def _adopt_locked(self, s: _State, t: _Ticket) -> None:
        """The object made for ``t``'s reserved slot is now checked out."""
        if s.out.get(id(t)) is t:
            t.born = time.monotonic()
            s.created, s.out[id(t.obj)] = s.created + 1, s.out.pop(id(t))

    # ------------------------------------------------------------------ checkin

    def release(self, obj: T, silent: bool = True) -> None:
        """Give ``obj`` back for reuse (destroyed instead when past ``max_lifetime``, or
        when it was out while :meth:`clear` ran)."""
        self._settle(self._state(), None, obj, False)

    def destroy(self, obj: T, silent: bool = True) -> None:
        """Drop ``obj`` for good (it saw an error) and free its slot."""
        self._settle(self._state(), None, obj, True)

    def _settle(self, s: _State, t: Optional[_Ticket], obj: Any, destroy: bool) -> None:
        """Give back what ticket ``t`` (or the checkout of ``obj``) holds, if anything.
        Idempotent; an exception that interrupts it (say, a timeout while it waits for the
        lock) is raised once the slot is free."""
        try:  # the first try written out: it nearly always succeeds
            with s.lock: self._settle_locked(s, t, obj, destroy)  # noqa: E701  # fmt: skip
            if s.doomed:
                self._drain(s)
            return
        except BaseException as exc:
            pending: BaseException = exc
        for _ in range(_SETTLE_TRIES - 1):
            try:
                _locked(s.lock, self._settle_locked, s, t, obj, destroy)
                if s.doomed:
                    self._drain(s)
                break
            except BaseException as exc:
                pending = exc
        raise pending

    def _settle_locked(self, s: _State, t: Optional[_Ticket], obj: Any, destroy: bool) -> None:
        if t is None:
            t = s.out.get(id(obj))
            if t is None or t.obj is not obj:
                return  # not ours (a parent's before a fork, or given back already)
        if s.waiters:
            s.waiters.pop(id(t), None)
            if s.waiters:  # first: waking one too many is harmless, a lost wake-up is not
                self._notify_locked(s)
        out = s.out
        key = id(t.obj)
        if out.get(key) is t:  # an object handed out (first: the common case)
            now = _monotonic()
            if (
                destroy
                or s.retired
                or t.epoch != s.epoch
                or (self.max_lifetime is not None and now - t.born >= self.max_lifetime)
            ):
                s.doomed.append(out.pop(key).obj)
                s.destroyed += 1
            else:
                s.idle.append((t.obj, now, out.pop(key).born))
        elif out.get(id(t)) is t:  # a reserved slot (never both: see _adopt_locked)
            if t.obj is _EMPTY:
                del out[id(t)]
            else:  # made, never handed out
                s.doomed.append(out.pop(id(t)).obj)
                s.created += 1
                s.destroyed += 1

    @staticmethod
    def _notify_locked(s: _State) -> None:
        first = next(iter(s.waiters))
        s.waiters.pop(first).release()

    @contextlib.contextmanager
    def get_and_release(self, destroy_on_fail: bool = True) -> Iterator[T]:
        """``with pool.get_and_release() as obj:`` -- the object is destroyed if the block
        raises anything at all (``destroy_on_fail`` is kept for pymemcache; pymc always
        destroys, since an interrupted connection is in an unknown state)."""
        t = _Ticket()
        s = self._state()
        clean = False
        try:
            try:
                self._get(s, t, self.timeout, True)
                yield t.obj
                clean = True
            finally:
                self._settle(s, t, None, not clean)
        except BaseException:
            self._settle(s, t, None, True)
            raise

    # ------------------------------------------------------------------ upkeep

    def _reap_locked(self, s: _State, now: float) -> None:
        """Doom idle objects past idle_timeout or max_lifetime."""
        idle = s.idle
        if self.idle_timeout:
            while idle and now - idle[0][1] > self.idle_timeout:
                s.doomed.append(idle.pop(0)[0])
                s.destroyed += 1
        if self.max_lifetime is not None:
            dead = [e[0] for e in idle if now - e[2] >= self.max_lifetime]
            if dead:
                keep = [e for e in idle if now - e[2] < self.max_lifetime]
                idle[:], s.doomed[len(s.doomed) :] = keep, dead  # both, or neither
                s.destroyed += len(dead)

    def _drain(self, s: _State) -> None:
        """Hand doomed objects to after_remove (outside the lock; any thread may)."""
        doomed, remove = s.doomed, self._after_remove
        for _ in range(len(doomed)):
            try:
                if remove is None:
                    doomed.pop()
                else:
                    remove(doomed.pop())
            except Exception:
                pass

    def reap(self) -> int:
        """Drop idle objects past their time now; return how many."""
        s = self._state()
        before = s.destroyed
        _locked(s.lock, self._reap_locked, s, time.monotonic())
        self._drain(s)
        return s.destroyed - before

    def retire(self) -> None:
        """Wind the pool down without disturbing work in progress: idle objects are dropped
        now, objects in use when they come back. (For a node that left the cluster: the
        operations that already chose it finish normally.)"""
        s = self._state()
        s.retired = True
        self.clear()

    def clear(self) -> None:
        """Drop every idle object now, and every object checked out now when it comes
        back. Checkouts after this call are served (with new objects) as usual."""
        s = self._state()
        _locked(s.lock, self._clear_locked, s)
        self._drain(s)

    @staticmethod
    def _clear_locked(s: _State) -> None:
        s.epoch += 1
        idle = s.idle
        dead = [e[0] for e in idle]
        idle[:], s.doomed[len(s.doomed) :] = [], dead  # both, or neither
        s.destroyed += len(dead)

    # ------------------------------------------------------------------ introspection

    @property
    def used(self) -> int:
        return len(self._state().out)

    @property
    def free(self) -> int:
        return len(self._state().idle)

    @property
    def retired(self) -> bool:
        """Whether :meth:`retire` was called: objects are dropped as they come back."""
        return bool(self._state().retired)

    def idle_objects(self) -> List[T]:
        """The idle objects, most recently used last (for inspection only)."""
        return [entry[0] for entry in list(self._state().idle)]

    def stats(self) -> Dict[str, Any]:
        s = self._state()
        return _locked(s.lock, self._stats_locked, s)  # type: ignore[no-any-return]

    def _stats_locked(self, s: _State) -> Dict[str, Any]:
        return {
            "in_use": len(s.out),
            "idle": len(s.idle),
            "waiting": len(s.waiters),
            "created": s.created,
            "destroyed": s.destroyed,
            "timeouts": s.timeouts,
            "max_size": self.max_size,
        }

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"<{type(self).__name__} in_use={s['in_use']} idle={s['idle']} "
            f"waiting={s['waiting']} created={s['created']} destroyed={s['destroyed']} "
            f"timeouts={s['timeouts']} max_size={s['max_size']}>"
        )


class Lease(Generic[T]):
    """One checkout of an :class:`ObjectPool`, held from before the object is taken to after
    it is given back. :meth:`give_back` is idempotent and a no-op when nothing was taken,
    so ``try: lease.take() ... finally: lease.give_back(destroy=...)`` never loses a slot,
    wherever an exception lands."""

    __slots__ = ("_pool", "_returned", "_state", "_ticket")

    def __init__(self, pool: ObjectPool[T]) -> None:
        self._pool = pool
        self._returned = False
        state = pool._s
        self._state = state if state.generation == _fork_generation[0] else pool._state()
        self._ticket = _Ticket()

    @property
    def obj(self) -> Optional[T]:
        """The object taken, or None."""
        obj = self._ticket.obj
        return None if obj is _EMPTY else obj

    def take(self, wait: bool = True, timeout: Any = ...) -> Optional[T]:
        """Take an object: wait up to ``timeout`` seconds (default: the pool's) for a free
        slot, or, with ``wait=False``, return None at once when there is none."""
        pool = self._pool
        if timeout is ...:
            timeout = pool.timeout
        ticket = self._ticket
        if pool._get(self._state, ticket, timeout if wait else 0, wait):
            return ticket.obj  # type: ignore[no-any-return]
        return None

    def give_back(self, destroy: bool = False) -> None:
        """Return the object (destroyed instead with ``destroy``), if one was taken; after a
        give-back that finished, a no-op (without a trip through the pool's lock)."""
        if self._returned:
            return
        self._pool._settle(self._state, self._ticket, None, destroy)
        self._returned = True


# --------------------------------------------------------------------------- PooledCalls


class PooledCalls:
    """Runs a method of a pooled object by name: a checkout, the call, a checkin, with the
    pool's guarantee (a slot is never lost; an object whose call raised anything is
    destroyed). The base of :class:`~pymc.pool.PooledClient`, which gives it
    ``client_pool`` (the pool of connections) and ``retry`` (a policy, or None)."""

    client_pool: ObjectPool[Any]
    retry: Optional[RetryPolicy]

    def run(
        self,
        name: str,
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
        check: Optional[Callable[[], None]] = None,
        failed: Optional[Callable[[Exception], None]] = None,
    ) -> Any:
        """Run the Client command ``name`` with ``args``/``kwargs`` on a pooled connection
        (the explicit tuple and dict let any keyword pass through untouched). ``check``,
        if given, runs once a connection is taken the slow way (the call waited for it,
        or a new one was made; a connection given back a moment ago is taken at once,
        without it), before the command: what it raises is raised (a hash client fails a
        request that waited for a node that failed meanwhile). ``failed``, if given and
        there is no retry policy, is called with the exception of a call that failed,
        before its connection goes back to the pool (a hash client counts the node's
        failure first, so that a request waiting for the connection finds the node
        failed); then the exception is raised."""
        if self.retry is not None:
            once = self._once if check is None else functools.partial(self._once, check=check)
            args, kwargs = replayable(name, args, kwargs)
            return call_with_retry(self.retry, name, once, name, args, kwargs)
        # _once, written out (this is every command of a PooledClient, and every keyed command
        # of a HashClient), with the fast checkout first: a connection used a moment ago is
        # taken under the lock in one step. ``check`` is for a caller that had to wait.
        pool = self.client_pool
        t = _Ticket()
        s = pool._s
        if s.generation != _fork_generation[0]:
            s = pool._state()
        clean = False
        try:
            try:
                with s.lock: fresh = pool._take_fresh_locked(s, t, _monotonic())  # noqa: E701  # fmt: skip
                if not fresh:
                    pool._get(s, t, pool.timeout, True)
                    if check is not None:
                        check()
                if kwargs:
                    result = getattr(t.obj, name)(*args, **kwargs)
                else:
                    result = getattr(t.obj, name)(*args)
                clean = True
            except Exception as exc:
                if failed is not None:
                    failed(exc)  # before the connection goes back
                raise
            finally:
                # _settle's first try, written out. If it is interrupted (say, while it
                # waits for the lock), the handler below gives the connection back
                # destroyed, retrying as _settle does.
                with s.lock: pool._settle_locked(s, t, None, not clean)  # noqa: E701  # fmt: skip
                if s.doomed:
                    pool._drain(s)
        except BaseException:
            pool._settle(s, t, None, True)
            raise
        return result

    def _once(
        self,
        name: str,
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
        *,
        check: Optional[Callable[[], None]] = None,
        failed: Optional[Callable[[Exception], None]] = None,
    ) -> Any:
        # The connection is taken inside the try, through a ticket the pool records it
        # against, and given back by two nested handlers: nothing can land where a slot is
        # held and no handler is there to free it (see ObjectPool._settle).
        pool = self.client_pool
        t = _Ticket()
        s = pool._s
        if s.generation != _fork_generation[0]:
            s = pool._state()
        clean = False
        try:
            try:
                pool._get(s, t, pool.timeout, True)
                if check is not None:
                    check()
                result = getattr(t.obj, name)(*args, **kwargs)
                clean = True
            except Exception as exc:
                if failed is not None:
                    failed(exc)  # before the connection goes back
                raise
            finally:
                pool._settle(s, t, None, not clean)
        except BaseException:
            pool._settle(s, t, None, True)
            raise
        return result
