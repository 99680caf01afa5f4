"""Django cache backends whose sync methods run their async twins: Django's own cache tests
(all sync) then test ``aget``, ``aset``, ... of :mod:`pymc.contrib.django`.

``AsyncDrivenPymcCache.get(k)`` is ``aget(k)`` run on one event loop in a thread of its own
(the *driver*), and so on for every method Django's ``BaseCache`` has an ``a``-twin of. The
driver is one loop for every backend, as an ASGI server has: the asyncio clients are made in
it and kept between calls. Used by ``tests/integration/contrib/test_django_async.py``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Coroutine, List, Optional

from pymc.contrib.django import ElastiCacheCache, PymcCache, aclose_clients

#: The sync methods of Django's BaseCache that have an async twin (``a`` + the name).
TWINNED = (
    "add",
    "get",
    "set",
    "touch",
    "delete",
    "get_many",
    "get_or_set",
    "has_key",
    "incr",
    "decr",
    "set_many",
    "delete_many",
    "clear",
    "incr_version",
    "decr_version",
    "close",
)


class Driver:
    """An event loop running in a daemon thread; ``run(coro)`` waits for its result."""

    def __init__(self) -> None:
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.thread: Optional[threading.Thread] = None
        self.lock = threading.Lock()
        self.calls = 0

    def start(self) -> asyncio.AbstractEventLoop:
        with self.lock:
            if self.loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self.thread = threading.Thread(target=run, name="async-driver", daemon=True)
                self.thread.start()
                ready.wait(10)
                self.loop = loop
            return self.loop

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        loop = self.start()
        self.calls += 1
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    def stop(self) -> None:
        """Close the loop's clients, then the loop (its async generators finalized)."""
        with self.lock:
            loop, thread = self.loop, self.thread
            self.loop = self.thread = None
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(aclose_clients(), loop).result(30)
        asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


DRIVER = Driver()


def _twin(name: str) -> Callable[..., Any]:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return DRIVER.run(getattr(self, "a" + name)(*args, **kwargs))

    method.__name__ = name
    return method


def _driven(cls: type) -> type:
    for name in TWINNED:
        setattr(cls, name, _twin(name))
    return cls


@_driven
class AsyncDrivenPymcCache(PymcCache):
    """PymcCache whose sync methods are its async ones (run on :data:`DRIVER`)."""


@_driven
class AsyncDrivenElastiCacheCache(ElastiCacheCache):
    """ElastiCacheCache whose sync methods are its async ones (run on :data:`DRIVER`)."""


def async_client_of(backend: Any) -> Any:
    """The asyncio client ``backend`` uses in the driver's loop."""

    async def client() -> Any:
        return backend._acache()

    return DRIVER.run(client())


__all__: List[str] = [
    "DRIVER",
    "TWINNED",
    "AsyncDrivenElastiCacheCache",
    "AsyncDrivenPymcCache",
    "Driver",
    "async_client_of",
]
