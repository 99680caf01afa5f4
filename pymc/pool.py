"""`ObjectPool`, a bounded LIFO pool with blocking checkout, and `PooledClient`.

Rules the pool keeps:

* at most ``max_size`` objects exist at once (checked out plus idle); a caller that finds the
  pool full waits up to ``timeout`` seconds for a slot, then gets
  :class:`~pymc.exceptions.MemcachePoolTimeoutError`;
* reuse is last-in first-out, so under light load the same few connections stay warm and
  the surplus goes idle long enough to be reaped (``idle_timeout``), measured with
  ``time.monotonic``;
* an object whose use ended in *any* exception is destroyed, never reused, and its slot is
  freed at once (the ``finally`` of :meth:`ObjectPool.get_and_release`);
* state changes happen under the lock, closing happens outside it;
* after ``os.fork()`` the child starts with an empty pool and a new lock: it never touches
  the parent's sockets.

Locks and conditions are made when a pool is made, from ``threading`` as it is then (or from
``lock_generator``), so ``gevent.monkey.patch_all()`` before or after ``import pymc`` works.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import os
import threading
import time
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Deque,
    Dict,
    Generic,
    Iterator,
    List,
    Optional,
    Tuple,
    TypeVar,
)

from .client import COMMANDS, Client, ClientOptions, ServerSpec, normalize_server_spec, server_name
from .exceptions import MemcachePoolTimeoutError
from .protocol import validate_key
from .retry import RetryPolicy, call_with_retry

__all__ = ["DEFAULT_POOL_TIMEOUT", "ObjectPool", "PooledClient"]

T = TypeVar("T")
_MISSING: Any = object()

#: Seconds a PooledClient call waits for a free connection before it raises
#: :class:`MemcachePoolTimeoutError`.
DEFAULT_POOL_TIMEOUT = 10.0

# Bumped in every child after os.fork(): a pool made in another generation is reset.
_fork_generation = [0]


def _after_fork_in_child() -> None:
    _fork_generation[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _Condition:
    """The pool's condition when a ``lock_generator`` is given: the lock *and* the waiters
    come from the generator.

    ``threading.Condition`` makes its waiters with the OS lock of ``threading`` as it is,
    so with ``gevent.lock`` locks and no monkey-patching a greenlet waiting for a slot
    would block the whole hub (and so the greenlet that would free the slot) until it
    timed out. Here a waiter is a fresh product of the generator, held once and waited on
    with a second ``acquire`` -- which needs a lock that is not re-entrant; for re-entrant
    generators (``RLock``) the waiters are ``threading.Lock`` as it is when the pool is made.
    """

    def __init__(self, lock_generator: Callable[[], Any]) -> None:
        self._lock = lock_generator()
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
        self._new_waiter: Callable[[], Any] = threading.Lock if reentrant else lock_generator
        self._waiters: Deque[Any] = collections.deque()

    def __enter__(self) -> bool:
        return bool(self._lock.acquire())

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    def wait(self, timeout: float) -> bool:
        """Release the lock, wait up to ``timeout`` s for a notify, take the lock again."""
        waiter = self._new_waiter()
        waiter.acquire()
        self._waiters.append(waiter)
        self._lock.release()
        got = False
        try:
            got = bool(waiter.acquire(True, timeout))
        finally:
            self._lock.acquire()
            if not got:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    got = True  # notified between the timeout and taking the lock
        return got

    def notify(self, n: int = 1) -> None:
        waiters = self._waiters
        while waiters and n > 0:
            waiters.popleft().release()
            n -= 1


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
        self._lock_generator = lock_generator
        self._reset()

    def _reset(self) -> None:
        if self._lock_generator is None:
            self._lock: Any = threading.Lock()
            self._cond: Any = threading.Condition(self._lock)
        else:
            self._cond = _Condition(self._lock_generator)
            self._lock = self._cond
        self._generation = _fork_generation[0]
        # Idle objects, oldest first: (object, released at, created at).
        self._idle: Deque[Tuple[T, float, float]] = collections.deque()
        self._born: Dict[int, float] = {}  # id(obj) -> creation time, for objects in use
        self._in_use = 0
        self._waiting = 0
        self._created = 0
        self._destroyed = 0
        self._timeouts = 0
        self._retired = False

    # ------------------------------------------------------------------ checkout

    def get(self, timeout: Any = ...) -> T:
        """Check an object out, waiting up to ``timeout`` seconds (default: the pool's)
        for a slot when the pool is full."""
        if self._generation != _fork_generation[0]:
            self._reset()  # a forked child: forget (never close) the parent's objects
        if timeout is ...:
            timeout = self.timeout
        validate = self._validate
        while True:
            taken = self._take(timeout)
            if taken is None:
                return self._create()
            obj, idle_seconds = taken
            # Checked outside the lock: it may cost a system call.
            if validate is None or validate(obj, idle_seconds):
                return obj
            self._give_back(obj, destroy=True)

    def try_get(self) -> Optional[T]:
        """An object if one can be had without waiting, else None."""
        try:
            return self.get(timeout=0)
        except MemcachePoolTimeoutError:
            return None

    def _take(self, timeout: Optional[float]) -> Optional[Tuple[T, float]]:
        """Reserve a slot: an idle object and its idle time, or None (create one)."""
        doomed: List[T] = []
        try:
            with self._lock:
                deadline = None
                while True:
                    now = time.monotonic()
                    idle = self._idle
                    if idle:
                        if self.idle_timeout or self.max_lifetime is not None:
                            self._reap(now, doomed)
                        if idle:
                            obj, released, born = idle.pop()
                            self._born[id(obj)] = born
                            self._in_use += 1
                            return obj, now - released
                    if self.max_size is None or self._in_use < self.max_size:
                        self._in_use += 1
                        self._created += 1
                        return None
                    if deadline is None:
                        deadline = now + (timeout if timeout is not None else 1e9)
                    remaining = deadline - now
                    if remaining <= 0:
                        self._timeouts += 1
                        raise MemcachePoolTimeoutError(
                            f"no free object in the pool within {timeout} s "
                            f"({self._in_use} in use, max_size={self.max_size})"
                        )
                    self._waiting += 1
                    try:
                        self._cond.wait(remaining)
                    finally:
                        self._waiting -= 1
        finally:
            if doomed:
                self._drop(doomed)

    def _create(self) -> T:
        """Make an object for a slot already reserved; free the slot if that fails."""
        try:
            obj = self._creator()
        except BaseException:
            with self._lock:
                self._in_use -= 1
                self._created -= 1
                if self._waiting:
                    self._cond.notify()
            raise
        with self._lock:
            self._born[id(obj)] = time.monotonic()
        return obj

    def release(self, obj: T, silent: bool = True) -> None:
        """Give ``obj`` back for reuse (destroyed instead when past ``max_lifetime``)."""
        self._give_back(obj, destroy=False)

    def destroy(self, obj: T, silent: bool = True) -> None:
        """Drop ``obj`` for good (it saw an error) and free its slot."""
        self._give_back(obj, destroy=True)

    def _give_back(self, obj: T, destroy: bool) -> None:
        if self._generation != _fork_generation[0]:
            return  # checked out before a fork: the parent's, not ours
        with self._lock:
            born = self._born.pop(id(obj), None)
            if born is None:
                return  # not ours, or already given back
            self._in_use -= 1
            now = time.monotonic()
            if (
                not destroy
                and not self._retired
                and (self.max_lifetime is None or now - born < self.max_lifetime)
            ):
                self._idle.append((obj, now, born))
                obj = None  # type: ignore[assignment]
            else:
                self._destroyed += 1
            if self._waiting:
                self._cond.notify()
        if obj is not None:
            self._drop([obj])

    @contextlib.contextmanager
    def get_and_release(self, destroy_on_fail: bool = True) -> Iterator[T]:
        """``with pool.get_and_release() as obj:`` -- the object is destroyed if the block
        raises anything at all (``destroy_on_fail`` is kept for pymemcache; pymc always
        destroys, since an interrupted connection is in an unknown state)."""
        obj = self.get()
        clean = False
        try:
            yield obj
            clean = True
        finally:
            self._give_back(obj, destroy=not clean)

    # ------------------------------------------------------------------ upkeep

    def _reap(self, now: float, doomed: List[T]) -> None:
        """Move idle objects past idle_timeout or max_lifetime to ``doomed`` (lock held)."""
        idle = self._idle
        if self.idle_timeout:
            while idle and now - idle[0][1] > self.idle_timeout:
                doomed.append(idle.popleft()[0])
                self._destroyed += 1
        if self.max_lifetime is not None and idle:
            keep = [entry for entry in idle if now - entry[2] < self.max_lifetime]
            if len(keep) != len(idle):
                doomed.extend(entry[0] for entry in idle if now - entry[2] >= self.max_lifetime)
                self._destroyed += len(idle) - len(keep)
                idle.clear()
                idle.extend(keep)

    def _drop(self, objs: List[T]) -> None:
        if self._after_remove is not None:
            for obj in objs:
                try:
                    self._after_remove(obj)
                except Exception:
                    pass

    def reap(self) -> int:
        """Drop idle objects past their time now; return how many."""
        doomed: List[T] = []
        with self._lock:
            self._reap(time.monotonic(), doomed)
        self._drop(doomed)
        return len(doomed)

    def retire(self) -> None:
        """Wind the pool down without disturbing work in progress: idle objects are dropped
        now, objects in use when they come back. (For a node that left the cluster: the
        operations that already chose it finish normally.)"""
        with self._lock:
            self._retired = True
        self.clear()

    def clear(self) -> None:
        """Drop every idle object (objects in use are dropped when given back)."""
        with self._lock:
            doomed = [entry[0] for entry in self._idle]
            self._idle.clear()
            self._destroyed += len(doomed)
        self._drop(doomed)

    # ------------------------------------------------------------------ introspection

    @property
    def used(self) -> int:
        return self._in_use

    @property
    def free(self) -> int:
        return len(self._idle)

    def stats(self) -> Dict[str, Any]:
        with self._lock:
            return {
                "in_use": self._in_use,
                "idle": len(self._idle),
                "waiting": self._waiting,
                "created": self._created,
                "destroyed": self._destroyed,
                "timeouts": self._timeouts,
                "max_size": self.max_size,
            }

    def __repr__(self) -> str:
        s = self.stats()
        return (
            f"<{type(self).__name__} in_use={s['in_use']} idle={s['idle']} "
            f"waiting={s['waiting']} created={s['created']} destroyed={s['destroyed']} "
            f"timeouts={s['timeouts']} max_size={s['max_size']}>"
        )


# --------------------------------------------------------------------------- PooledClient

#: A connection idle longer than this is checked for a server-side close before reuse.
CHECK_IDLE_AFTER = 0.05


def _client_is_reusable(client: Client, idle_seconds: float) -> bool:
    if idle_seconds < CHECK_IDLE_AFTER and not client.owes_sync:
        return True
    return bool(client.is_clean())


def _pool_call(name: str) -> Callable[..., Any]:
    method = getattr(Client, name)

    @functools.wraps(method)
    def call(self: PooledClient, *args: Any, **kwargs: Any) -> Any:
        return self.run(name, args, kwargs)

    return call


if TYPE_CHECKING:  # to type checkers a PooledClient has every Client method
    _Commands = Client
else:
    _Commands = object


class PooledClient(_Commands):
    """A thread-safe client: a pool of :class:`Client` connections to one server.

    Accepts every argument of :class:`Client` (by keyword) and pymemcache's pool arguments,
    plus ``pool_timeout`` (seconds to wait for a free connection, default
    :data:`DEFAULT_POOL_TIMEOUT`), ``retry`` (a :class:`RetryPolicy`) and ``max_lifetime``.
    Each call checks a connection out, runs, and checks it back in; a connection that saw
    any error is destroyed instead.
    """

    client_class = Client

    def __init__(
        self,
        server: ServerSpec,
        serde: Any = None,
        *,
        max_pool_size: Optional[int] = None,
        pool_idle_timeout: float = 0,
        lock_generator: Optional[Callable[[], Any]] = None,
        pool_timeout: Optional[float] = DEFAULT_POOL_TIMEOUT,
        retry: Optional[RetryPolicy] = None,
        max_lifetime: Optional[float] = None,
        tls_hostname: Optional[str] = None,
        options: Optional[ClientOptions] = None,
        **client_options: Any,
    ) -> None:
        self.server = normalize_server_spec(server)
        self.tls_hostname = tls_hostname
        if options is None:
            options = ClientOptions.create(serde, **client_options)
        elif serde is not None or client_options:
            raise TypeError("pass either options= or client arguments, not both")
        self.options = options
        self.retry = retry
        self.pool_timeout = pool_timeout
        self.client_pool: ObjectPool[Client] = ObjectPool(
            self._create_client,
            after_remove=Client.close,
            max_size=max_pool_size,
            idle_timeout=pool_idle_timeout,
            lock_generator=lock_generator,
            max_lifetime=max_lifetime,
            timeout=pool_timeout,
            validate=_client_is_reusable,
        )

    def _create_client(self) -> Client:
        client = self.client_class.from_options(self.server, self.options)
        client.tls_hostname = self.tls_hostname
        return client

    @property
    def key_prefix(self) -> bytes:
        return self.options.key_prefix

    def check_key(self, key: Any, key_prefix: Optional[bytes] = None) -> bytes:
        prefix = self.options.key_prefix if key_prefix is None else key_prefix
        return validate_key(key, prefix, self.options.allow_unicode_keys)

    def run(self, name: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        """Run the Client command ``name`` with ``args``/``kwargs`` on a pooled connection
        (the explicit tuple and dict let any keyword pass through untouched)."""
        if self.retry is not None:
            return call_with_retry(self.retry, name, self._once, name, args, kwargs)
        pool = self.client_pool  # _once, inlined: this is every call's path
        client = pool.get()
        clean = False
        try:
            result = getattr(client, name)(*args, **kwargs)
            clean = True
            return result
        finally:
            pool._give_back(client, destroy=not clean)

    def _once(self, name: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        pool = self.client_pool
        client = pool.get()
        clean = False
        try:
            result = getattr(client, name)(*args, **kwargs)
            clean = True
            return result
        finally:
            pool._give_back(client, destroy=not clean)

    def close(self) -> None:
        """Close every idle connection (busy ones are closed when they come back)."""
        self.client_pool.clear()

    disconnect_all = close

    def __enter__(self) -> PooledClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.client_pool.stats()
        counts = " ".join(f"{k}={v}" for k, v in s.items())
        return f"<{type(self).__name__} {server_name(self.server)} {counts}>"

    def __getitem__(self, key: Any) -> Any:
        # A miss raises KeyError here, outside the pool: it says nothing against the
        # connection, which goes back for reuse.
        value = self.run("get", (key, _MISSING), {})
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        self.run("__setitem__", (key, value), {})

    def __delitem__(self, key: Any) -> None:
        self.run("__delitem__", (key,), {})


for _name in COMMANDS:
    setattr(PooledClient, _name, _pool_call(_name))
del _name


def _pooled_signature() -> inspect.Signature:
    """PooledClient's real signature, for help() and IDEs: Client's options + the pool's."""
    kind = inspect.Parameter
    client = list(inspect.signature(ClientOptions.create).parameters.values())
    own = inspect.signature(PooledClient.__init__).parameters
    params = [own["self"], own["server"], client[0]]  # server, serde: positional as before
    params += [p.replace(kind=kind.KEYWORD_ONLY) for p in client[1:]]
    params += [p for p in own.values() if p.kind is kind.KEYWORD_ONLY]
    return inspect.Signature(params)


PooledClient.__init__.__signature__ = _pooled_signature()  # type: ignore[attr-defined]
