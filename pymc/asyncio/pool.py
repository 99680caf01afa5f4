"""`PooledClient` for asyncio: every command on a client of a bounded pool, and the pool.

:class:`AsyncObjectPool` is LIFO (the connection used last is reused first, so the others
idle out), bounded (``max_size``; a caller waits ``timeout`` seconds at most for a free
one, then :class:`~pymc.exceptions.MemcachePoolTimeoutError`), reaps objects idle longer
than ``idle_timeout`` (or older than ``max_lifetime``), and never loses a slot: taking and
giving back are plain calls with no ``await`` in them, and the only wait (for a free
slot) holds none. A client whose command raised anything (an error, a timeout, a
cancellation) is destroyed, never given back.

Layer: asyncio.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import time
from typing import Any, Callable, Deque, Dict, Generic, List, Optional, Tuple, TypeVar

from ..client import Client as SyncClient
from ..exceptions import MemcachePoolTimeoutError
from ..options import Key, server_name
from ..pool import PooledClient as SyncPooledClient
from ..pool.objectpool import DEFAULT_POOL_TIMEOUT, connection_is_reusable
from ..protocol import validate_key
from ..retry import replayable
from .client import Client
from .commands import Commands
from .retry import retry_call

__all__ = ["AsyncObjectPool", "PooledClient"]

T = TypeVar("T")
_monotonic = time.monotonic


class AsyncObjectPool(Generic[T]):
    """A bounded LIFO pool of objects for tasks of one event loop (see the module's
    docstring). ``creator`` makes an object (a plain call); ``destroy`` gives one up;
    ``validate(obj, idle_seconds)`` says whether an idle one may be reused."""

    def __init__(
        self,
        creator: Callable[[], T],
        destroy: Callable[[T], Any],
        *,
        max_size: Optional[int] = None,
        timeout: Optional[float] = DEFAULT_POOL_TIMEOUT,
        idle_timeout: float = 0,
        max_lifetime: Optional[float] = None,
        validate: Optional[Callable[[T, float], bool]] = None,
    ) -> None:
        if max_size is not None and max_size < 1:
            raise ValueError(f"max_size must be None or >= 1, got {max_size!r}")
        self._creator = creator
        self._destroy = destroy
        self.max_size = max_size
        self.timeout = timeout
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        self._validate = validate
        self._idle: List[Tuple[T, float]] = []  # (object, idle since): the last is the newest
        self._born: Dict[int, Tuple[int, float]] = {}  # id: (generation, created at)
        self._generation = 0
        self._out = 0  # objects taken and not given back
        self._waiters: Deque[asyncio.Future[Optional[T]]] = collections.deque()
        # Each waiting task's deadline, and the one timer that enforces them all (armed for
        # the earliest: a timer per wait would cost every wait a heap entry).
        self._deadline_of: Dict[asyncio.Future[Optional[T]], float] = {}
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at = 0.0
        self._timer_loop: Optional[asyncio.AbstractEventLoop] = None
        self._retired = False

    def stats(self) -> Dict[str, int]:
        """How many objects are taken, idle, and tasks waiting for one."""
        return {"in_use": self._out, "idle": len(self._idle), "waiting": len(self._waiters)}

    def _discard(self, obj: T) -> None:
        self._born.pop(id(obj), None)
        try:
            self._destroy(obj)
        except Exception:  # (giving up an object never fails the caller)
            pass

    def _expired(self, obj: T, now: float) -> bool:
        born = self._born.get(id(obj))
        if born is None or born[0] != self._generation:
            return True
        return self.max_lifetime is not None and now - born[1] > self.max_lifetime

    def _take(self) -> Optional[T]:
        """An object and its slot, at once, or None when every slot is taken."""
        idle = self._idle
        while idle:
            obj, since = idle.pop()
            now = _monotonic()
            if (
                (self.idle_timeout and now - since > self.idle_timeout)
                or self._expired(obj, now)
                or (self._validate is not None and not self._validate(obj, now - since))
            ):
                self._discard(obj)
                continue
            self._out += 1
            return obj
        if self.max_size is None or self._out < self.max_size:
            self._out += 1
            try:
                obj = self._creator()
            except BaseException:
                self._out -= 1
                self._wake()
                raise
            self._born[id(obj)] = (self._generation, _monotonic())
            return obj
        return None

    def try_get(self) -> Optional[T]:
        """An object if one can be had without waiting (an idle one, or a new one below
        ``max_size``) and no task is queued for one, else None."""
        if self._waiters:
            return None  # (the queued tasks come first)
        return self._take()

    async def get(self) -> T:
        """Take an object, waiting up to ``timeout`` for a free slot. Tasks that wait are
        served in turn: an object given back goes straight to the oldest of them."""
        if not self._waiters:
            obj = self._take()
            if obj is not None:
                return obj
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout is None else loop.time() + self.timeout
        while True:
            waiter: asyncio.Future[Optional[T]] = loop.create_future()
            self._waiters.append(waiter)
            if deadline is not None:
                self._deadline_of[waiter] = deadline
                if self._timer is None or deadline < self._timer_at or self._timer_loop is not loop:
                    self._arm(loop, deadline)
            try:
                handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    # Served, then interrupted before it ran: what it got goes to the next.
                    handed = waiter.result()
                    if handed is None:  # (the slot reserved for it)
                        self._out -= 1
                        self._wake()
                    else:
                        self.put(handed, True)
                else:
                    try:
                        self._waiters.remove(waiter)
                    except ValueError:
                        pass
                raise
            finally:
                if deadline is not None:
                    self._deadline_of.pop(waiter, None)
            if handed is not None:
                return handed  # (its slot came with it)
            # A slot was freed (its object destroyed) and kept for this task by _wake, so
            # that no caller that did not wait takes it first: take it now.
            self._out -= 1
            obj = self._take()
            if obj is not None:
                return obj

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._expire, loop)
        self._timer_at = when
        self._timer_loop = loop

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """The pool's timer: each waiting task whose deadline came gets its
        :class:`~pymc.exceptions.MemcachePoolTimeoutError`; the timer is armed again for
        the earliest deadline left."""
        self._timer = None
        now = loop.time() + 0.0005  # (a timer may run a little before its time)
        later = None
        for waiter, deadline in list(self._deadline_of.items()):
            if deadline <= now:
                del self._deadline_of[waiter]
                _time_out(waiter)
            elif later is None or deadline < later:
                later = deadline
        if later is not None:
            self._arm(loop, later)

    def put(self, obj: T, reusable: bool = True) -> None:
        """Give ``obj``'s slot back: the object itself to the oldest waiting task, or to
        the idle ones, when ``reusable``; else destroyed."""
        self._out -= 1
        now = _monotonic()
        if reusable and not self._retired and not self._expired(obj, now):
            self._pass_on(obj)
            self._reap(now)
        else:
            self._discard(obj)
            self._wake()

    def release(self, obj: T) -> None:
        """Give ``obj`` back for reuse (see :meth:`put`)."""
        self.put(obj, True)

    def destroy(self, obj: T) -> None:
        """Drop ``obj`` for good (it saw an error) and free its slot."""
        self.put(obj, False)

    def _pass_on(self, obj: T) -> None:
        """A free, reusable ``obj`` (its slot not counted): to the oldest waiting task with
        its slot, or to the idle ones."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                self._out += 1
                waiter.set_result(obj)
                return
        self._idle.append((obj, _monotonic()))

    def _reap(self, now: float) -> None:
        """Give up the objects idle longer than ``idle_timeout`` (the oldest come first)."""
        idle = self._idle
        if self.idle_timeout:
            while idle and now - idle[0][1] > self.idle_timeout:
                self._discard(idle.pop(0)[0])

    def _wake(self) -> None:
        """A slot was freed with no object in it: the oldest waiting task takes it (it is
        counted as taken until that task runs, so no other caller gets it first)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._out += 1
                waiter.set_result(None)
                return

    def clear(self) -> None:
        """Destroy every idle object now, and every taken one when it comes back."""
        self._generation += 1
        idle, self._idle = self._idle, []
        for obj, _ in idle:
            self._discard(obj)

    def retire(self) -> None:
        """Wind the pool down (its node left the cluster): idle objects are dropped now,
        objects in use when they come back; later checkouts still get new ones."""
        self._retired = True
        self.clear()

    @property
    def retired(self) -> bool:
        """Whether :meth:`retire` was called."""
        return self._retired


def _time_out(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(
            MemcachePoolTimeoutError("no connection became free in the pool in time")
        )


class PooledClient(Commands):
    """A client for one memcached server shared by the tasks of one event loop: a pool
    of asyncio :class:`~pymc.asyncio.Client` connections. The arguments are
    :class:`pymc.PooledClient`'s. Each command takes a connection, runs, and gives it
    back; a connection that saw any error or interruption is destroyed instead."""

    client_class = Client

    def __init__(self, server: Any, *args: Any, **kwargs: Any) -> None:
        # The sync PooledClient's own argument handling (it connects nothing), so both
        # take exactly the same arguments and check them alike.
        probe = SyncPooledClient(server, *args, **kwargs)
        self.server = probe.server
        self.options = probe.options
        self.tls_hostname = probe.tls_hostname
        self.retry = probe.retry
        self.pool_timeout = probe.pool_timeout
        sync_pool = probe.client_pool
        self.client_pool: AsyncObjectPool[Client] = AsyncObjectPool(
            self._create_client,
            _destroy,
            max_size=sync_pool.max_size,
            timeout=probe.pool_timeout,
            idle_timeout=sync_pool.idle_timeout,
            max_lifetime=sync_pool.max_lifetime,
            validate=connection_is_reusable,
        )

    __init__.__signature__ = inspect.signature(SyncPooledClient.__init__)  # type: ignore[attr-defined]

    def _create_client(self) -> Client:
        client = self.client_class.from_options(self.server, self.options)
        client.tls_hostname = self.tls_hostname
        return client

    @property
    def key_prefix(self) -> bytes:
        return self.options.key_prefix

    def check_key(self, key: Key, key_prefix: Optional[bytes] = None) -> bytes:
        """Validate ``key`` and return it prefixed, as bytes (pymemcache's helper)."""
        prefix = self.options.key_prefix if key_prefix is None else key_prefix
        return validate_key(key, prefix, self.options.allow_unicode_keys)

    async def run(
        self,
        name: str,
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
        check: Optional[Callable[[], None]] = None,
        failed: Optional[Callable[[Exception], None]] = None,
    ) -> Any:
        """Run the Client command ``name`` on a pooled connection (with the retry policy,
        if any). ``check`` and ``failed`` are :meth:`pymc.PooledClient.run`'s: ``check``
        runs when the call had to wait for its connection (what it raises is raised),
        ``failed`` gets a failure (without a retry policy) before the connection is
        destroyed."""
        if self.retry is not None:
            args, kwargs = replayable(name, args, kwargs)
            return await retry_call(self.retry, name, self._once, name, args, kwargs, check)
        return await self._once(name, args, kwargs, check, failed)

    async def _once(
        self,
        name: str,
        args: Tuple[Any, ...],
        kwargs: Dict[str, Any],
        check: Optional[Callable[[], None]] = None,
        failed: Optional[Callable[[Exception], None]] = None,
    ) -> Any:
        pool = self.client_pool
        client = pool.try_get()
        if client is None:
            client = await pool.get()
            if check is not None:
                try:
                    check()
                except BaseException:
                    pool.put(client, True)  # (unused)
                    raise
        clean = False
        try:
            result = await getattr(client, name)(*args, **kwargs)
            clean = True
        except Exception as exc:
            if failed is not None:
                failed(exc)  # before the connection goes back
            raise
        finally:
            pool.put(client, clean)
        return result

    async def get(self, key: Key, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it is missing."""
        if self.retry is not None:
            return await self.run("get", (key, default), {})
        pool = self.client_pool
        client = await pool.get()
        clean = False
        try:
            result = await client.get(key, default)
            clean = True
        finally:
            pool.put(client, clean)
        return result

    get.__signature__ = inspect.signature(SyncClient.get)  # type: ignore[attr-defined]
    get.__doc__ = SyncClient.get.__doc__

    async def close(self) -> None:
        """Close every idle connection now, and every busy one when it comes back; the
        client stays usable (later calls open new connections)."""
        self.client_pool.clear()

    disconnect_all = close

    async def __aenter__(self) -> PooledClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.client_pool.clear()

    def __repr__(self) -> str:
        counts = " ".join(f"{k}={v}" for k, v in self.client_pool.stats().items())
        return f"<pymc.asyncio.{type(self).__name__} {server_name(self.server)} {counts}>"


def _destroy(client: Client) -> None:
    client.conn.close()
