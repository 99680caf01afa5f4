"""Django cache backends over pymc: ``PymcCache`` and ``ElastiCacheCache``.

``PymcCache`` takes what Django's ``PyMemcacheCache`` takes (``LOCATION`` is one server or
several, as a list or separated by ``;`` or ``,``; ``OPTIONS`` are :class:`pymc.HashClient`
arguments) and stores values the same way (pickled, with python-memcached flags), so a site
switches by changing ``BACKEND`` and keeps what is already cached. What differs:

* **Pooling is on** (``use_pooling=True``) and Django's per-request ``close()`` keeps the
  pooled connections: a request reuses a connection instead of opening one.
* **One client per configuration, per process.** Django makes a backend object per thread
  (per greenlet under gevent, per request context under ASGI); they all share one
  thread-safe :class:`pymc.HashClient` (chosen by the backend class, the servers and the
  ``OPTIONS``), so the connections a process holds are bounded by its concurrency, not by
  the number of threads or requests it ever saw. :func:`close_clients` closes them (tests,
  or a process about to exit).
* **Timeouts by default**: ``connect_timeout`` and ``timeout`` are
  :data:`DEFAULT_CONNECT_TIMEOUT` and :data:`DEFAULT_TIMEOUT` unless ``OPTIONS`` says
  otherwise (``None`` waits forever, as pymemcache does), so a dead server cannot hang a
  request thread.
* A key longer than 250 **bytes** once encoded (with the client's ``key_prefix``) raises
  Django's ``InvalidCacheKey``, like a key longer than 250 characters does.

``ElastiCacheCache`` is the same over :class:`pymc.ElastiCacheClient`: ``LOCATION`` is the
cluster's configuration endpoint (``host:port``), and the ``OPTIONS`` names of
django-elastipymemcache are accepted (see :data:`ELASTIPYMEMCACHE_OPTIONS`).

**Native async methods.** ``aget``, ``aset``, ``aadd``, ``aget_many``, ``aset_many``,
``adelete``, ``adelete_many``, ``aincr``, ``adecr``, ``atouch``, ``ahas_key``,
``aget_or_set``, ``aclear`` (and Django's ``aincr_version``/``adecr_version``) run on a
:mod:`pymc.asyncio` client in the caller's event loop, with no thread hop: the same keys,
timeouts, serde and results as the sync methods, so a value written by one is read by the
other. An asyncio client is never shared by two loops: each loop gets its own (one per
configuration, shared by the backends used in it), made at its first async call and closed
when the loop shuts down (``asyncio.run``'s end; or :func:`aclose_clients`). Django's
``close()``/``aclose()`` after a request keep its pooled connections, as for the sync
client. These need the ``asyncio`` extra (greenlet); the sync methods never import it.

This module imports Django; nothing in pymc's core imports it.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import threading
import weakref
from typing import (
    Any,
    AsyncGenerator,
    Dict,
    Hashable,
    Iterable,
    List,
    Mapping,
    Sequence,
    Set,
    Tuple,
    Union,
)

try:
    from django.core.cache.backends.base import (
        DEFAULT_TIMEOUT as DJANGO_DEFAULT_TIMEOUT,
    )
    from django.core.cache.backends.base import InvalidCacheBackendError, InvalidCacheKey
    from django.core.cache.backends.memcached import BaseMemcachedCache
except ImportError as exc:  # say which extra brings it
    raise ImportError(
        f"pymc.contrib.django needs Django: pip install 'pymc-memcached[django]' ({exc})"
    ) from exc

import pymc
import pymc.client
import pymc.serde

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "ELASTIPYMEMCACHE_OPTIONS",
    "ElastiCacheCache",
    "PymcCache",
    "aclose_clients",
    "close_clients",
]

# Seconds to connect to a node and to wait for its reply, unless ``OPTIONS`` say otherwise:
# pymc's own defaults (2 s each), named here too for settings that refer to them.
DEFAULT_CONNECT_TIMEOUT = pymc.client.DEFAULT_CONNECT_TIMEOUT
DEFAULT_TIMEOUT = pymc.client.DEFAULT_TIMEOUT

#: memcached's longest key, in bytes.
MAX_KEY_BYTES = 250

#: django-elastipymemcache's own option names and what becomes of them here.
ELASTIPYMEMCACHE_OPTIONS: Mapping[str, str] = {
    "discovery_interval": "poll_interval (0, its 'no periodic discovery', polls every 60 s)",
    "use_vpc_ip_address": "use_vpc",
    "discovery_retry_delay": "accepted and ignored: discovery retries in the background",
    "ignore_cluster_errors": "accepted and ignored: a plain memcached is used as the one node",
    "cluster_timeout": "discovery_timeout (1.x/2.x: seconds for the cluster query)",
}

# --------------------------------------------------------------------------- shared clients

_clients_lock = threading.Lock()
# key -> (client, the options it was made from: kept so that the ids in the key stay valid)
_clients: Dict[Hashable, Tuple[Any, Dict[str, Any]]] = {}
# Bumped by close_clients(): a backend holding a client of an older generation asks again.
_generation = [0]


def _freeze(value: Any) -> Hashable:
    """``value`` if it is hashable, else its identity (the registry keeps it alive)."""
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return value  # type: ignore[no-any-return]


def _shared_client(kind: type, where: Any, options: Dict[str, Any]) -> Any:
    """The process's ``kind(where, **options)``, made on first use."""
    key = _client_key(kind, where, options)
    with _clients_lock:
        found = _clients.get(key)
    if found is not None:
        return found[0]
    # Made outside the lock: an ElastiCacheClient's first discovery may take a while, and
    # another configuration's first request must not wait for it.
    client = kind(where, **options)
    with _clients_lock:
        found = _clients.setdefault(key, (client, options))
    if found[0] is not client:  # another thread made it first
        client.close()
    return found[0]


def _client_key(kind: Any, where: Any, options: Dict[str, Any]) -> Hashable:
    frozen = tuple(_freeze(s) for s in where) if isinstance(where, list) else where
    return (
        kind,
        frozen,
        tuple(sorted((name, _freeze(value)) for name, value in options.items())),
    )


def close_clients() -> None:
    """Close and forget every client the backends of this process share.

    Every backend, made before or after, then uses a new one. For tests, and for a process
    that wants its connections (and ElastiCache pollers) gone before it exits. The asyncio
    clients are closed on their own loops (a task scheduled there: to wait for it, use
    :func:`aclose_clients` in the loop); those of a closed loop are dropped.
    """
    with _clients_lock:
        clients = [client for client, _ in _clients.values()]
        _clients.clear()
        _generation[0] += 1
        loops = list(_loops.items())
    for client in clients:
        client.close()
    for loop, books in loops:
        books.retire()
        if loop.is_closed():
            continue
        try:
            loop.call_soon_threadsafe(books.close_retired_soon)
        except RuntimeError:  # closed meanwhile: its clients go with it
            pass


async def aclose_clients() -> None:
    """:func:`close_clients`, awaiting the closing of the running loop's asyncio clients
    (the sync clients and other loops' clients are closed as :func:`close_clients` does).

    For an ASGI app's shutdown (a lifespan handler), or a test, whose loop does not end in
    ``asyncio.run`` (which closes them by itself)."""
    books = _loops.get(asyncio.get_running_loop())
    close_clients()
    if books is not None:
        await books.close_retired()


# --------------------------------------------------------------------------- asyncio clients


class _LoopClients:
    """The asyncio clients of one event loop, by configuration; closed when the loop shuts
    down (an async generator of the loop's: ``shutdown_asyncgens`` finalizes it)."""

    def __init__(self) -> None:
        self.clients: Dict[Hashable, Any] = {}
        self.retired: List[Any] = []
        self.tasks: Set[Any] = set()
        self.shutdown = self._until_shutdown()
        # Started now (it yields at once, without waiting): the loop's firstiter hook now
        # knows it, and its finally runs at shutdown.
        try:
            self.shutdown.__anext__().send(None)
        except StopIteration:
            pass

    async def _until_shutdown(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            self.retire()
            await self.close_retired()

    def retire(self) -> None:
        with _clients_lock:
            self.retired.extend(self.clients.values())
            self.clients.clear()

    def close_retired_soon(self) -> None:
        """In the loop: close the retired clients in a task."""
        task = asyncio.get_running_loop().create_task(self.close_retired())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def close_retired(self) -> None:
        with _clients_lock:
            clients, self.retired = self.retired, []
        if clients:  # (a cancelled caller leaves them closing)
            await asyncio.shield(asyncio.gather(*(client.close() for client in clients)))


# event loop -> its clients. A closed loop's entry is dropped at the next new loop's first
# use (or when the loop is collected).
_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = (
    weakref.WeakKeyDictionary()
)


def _loop_client(loop: asyncio.AbstractEventLoop, kind: Any, where: Any, options: Any) -> Any:
    """The asyncio ``kind(where, **options)`` of ``loop`` (in it), made on first use."""
    key = _client_key(kind, where, options)
    books = _loops.get(loop)
    if books is None:
        with _clients_lock:
            # A loop closed without shutdown_asyncgens (not by asyncio.run): its clients
            # cannot be closed any more; dropped (their loop's hook ignores a closed loop).
            for old in [old for old in _loops if old.is_closed()]:
                del _loops[old]
        books = _LoopClients()
        with _clients_lock:
            books = _loops.setdefault(loop, books)
    client = books.clients.get(key)
    if client is None:
        # Made in this loop's thread only: no other caller can make it meanwhile.
        client = kind(where, **options)
        with _clients_lock:
            books.clients[key] = client
    return client


def _asyncio_class(name: str) -> Any:
    """``pymc.asyncio.<name>``, imported at the first async call (it needs greenlet)."""
    try:
        module = importlib.import_module("pymc.asyncio")
    except ImportError as exc:  # say which extra brings it
        raise ImportError(
            "the async methods of pymc.contrib.django need pymc.asyncio: "
            f"pip install 'pymc-memcached[asyncio]' ({exc})"
        ) from exc
    return getattr(module, name)


# --------------------------------------------------------------------------- PymcCache


class PymcCache(BaseMemcachedCache):  # type: ignore[misc]  # Django ships no type hints
    """A Django cache backend over :class:`pymc.HashClient` (see the module's docstring)."""

    client_class: type = pymc.HashClient

    def __init__(self, server: Union[str, Sequence[str]], params: Dict[str, Any]) -> None:
        super().__init__(server, params, library=pymc, value_not_found_exception=KeyError)
        self._class = self.client_class
        self._options: Dict[str, Any] = {
            "allow_unicode_keys": True,
            "default_noreply": False,
            "serde": pymc.serde.pickle_serde,
            "use_pooling": True,
            "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
            "timeout": DEFAULT_TIMEOUT,
            **self._options,
        }
        prefix = self._options.get("key_prefix") or b""
        self._prefix_bytes = len(prefix.encode() if isinstance(prefix, str) else prefix)

    @property
    def _cache(self) -> Any:
        held = self._held
        if held is None or held[0] != _generation[0]:
            held = self._held = (_generation[0], self._make_client())
        return held[1]

    _held: Any = None

    def _make_client(self) -> Any:
        return _shared_client(self._class, list(self.client_servers), self._options)

    #: The :mod:`pymc.asyncio` class the async methods use (imported at the first).
    async_client_name = "HashClient"

    # (a weak reference to the loop, the generation, the loop's client): the last one used
    _aheld: Any = (None, None, None)

    def _acache(self) -> Any:
        """The asyncio client of the running loop (made at the first call in that loop)."""
        loop = asyncio.get_running_loop()
        ref, generation, client = self._aheld
        if ref is not None and ref() is loop and generation == _generation[0]:
            return client
        generation = _generation[0]
        client = self._make_async_client(loop)
        self._aheld = (weakref.ref(loop), generation, client)
        return client

    def _make_async_client(self, loop: asyncio.AbstractEventLoop) -> Any:
        kind = _asyncio_class(self.async_client_name)
        return _loop_client(loop, kind, list(self.client_servers), self._options)

    def close(self, **kwargs: Any) -> None:
        """Django calls this when a request ends: the pooled connections stay open for the
        next request (they are checked back into the pool after every command already).
        Under ASGI it runs in a worker thread, never on the loop: the loop's asyncio client
        keeps its connections too (they are closed when the loop shuts down)."""

    async def aclose(self, **kwargs: Any) -> None:
        """As :meth:`close`: the pooled connections stay open for the next request."""

    # The async methods: Django's memcached backend's sync methods, on the asyncio client.
    # Django's own ahas_key, aget_or_set, adecr, aincr_version and adecr_version call these
    # (and no thread).

    async def aadd(
        self, key: Any, value: Any, timeout: Any = DJANGO_DEFAULT_TIMEOUT, version: Any = None
    ) -> Any:
        key = self.make_and_validate_key(key, version=version)
        return await self._acache().add(key, value, self.get_backend_timeout(timeout))

    async def aget(self, key: Any, default: Any = None, version: Any = None) -> Any:
        key = self.make_and_validate_key(key, version=version)
        return await self._acache().get(key, default)

    async def aset(
        self, key: Any, value: Any, timeout: Any = DJANGO_DEFAULT_TIMEOUT, version: Any = None
    ) -> None:
        key = self.make_and_validate_key(key, version=version)
        client = self._acache()
        if not await client.set(key, value, self.get_backend_timeout(timeout)):
            # As set(): the key must not keep its old value (a value over the item size).
            await client.delete(key)

    async def atouch(
        self, key: Any, timeout: Any = DJANGO_DEFAULT_TIMEOUT, version: Any = None
    ) -> bool:
        key = self.make_and_validate_key(key, version=version)
        return bool(await self._acache().touch(key, self.get_backend_timeout(timeout)))

    async def adelete(self, key: Any, version: Any = None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        return bool(await self._acache().delete(key))

    async def aget_many(self, keys: Iterable[Any], version: Any = None) -> Dict[Any, Any]:
        key_map = {self.make_and_validate_key(key, version=version): key for key in keys}
        found = await self._acache().get_many(key_map.keys())
        return {key_map[k]: v for k, v in found.items()}

    async def aincr(self, key: Any, delta: int = 1, version: Any = None) -> Any:
        key = self.make_and_validate_key(key, version=version)
        client = self._acache()
        try:
            # memcached takes no negative delta.
            if delta < 0:
                value = await client.decr(key, -delta)
            else:
                value = await client.incr(key, delta)
        except self.LibraryValueNotFoundException:
            value = None
        if value is None:
            raise ValueError(f"Key '{key}' not found")
        return value

    async def aset_many(
        self,
        data: Mapping[Any, Any],
        timeout: Any = DJANGO_DEFAULT_TIMEOUT,
        version: Any = None,
    ) -> List[Any]:
        safe_data = {}
        original_keys = {}
        for key, value in data.items():
            safe_key = self.make_and_validate_key(key, version=version)
            safe_data[safe_key] = value
            original_keys[safe_key] = key
        failed = await self._acache().set_many(safe_data, self.get_backend_timeout(timeout))
        return [original_keys[k] for k in failed]

    async def adelete_many(self, keys: Iterable[Any], version: Any = None) -> None:
        safe_keys = [self.make_and_validate_key(key, version=version) for key in keys]
        await self._acache().delete_many(safe_keys)

    async def aclear(self) -> None:
        await self._acache().flush_all()

    def validate_key(self, key: Union[str, bytes]) -> None:
        super().validate_key(key)
        size = len(key.encode("utf-8") if isinstance(key, str) else key) + self._prefix_bytes
        if size > MAX_KEY_BYTES:
            raise InvalidCacheKey(
                f"Cache key will cause errors if used with memcached: {key!r} "
                f"({size} bytes encoded, longer than {MAX_KEY_BYTES})"
            )


# --------------------------------------------------------------------------- ElastiCacheCache

_ENDPOINT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):(\d{1,5})$")


def _elasticache_options(options: Dict[str, Any]) -> Dict[str, Any]:
    """django-elastipymemcache's option names, as ElastiCacheClient's."""
    options = dict(options)
    options.pop("discovery_retry_delay", None)
    options.pop("ignore_cluster_errors", None)
    if "use_vpc_ip_address" in options:
        if "use_vpc" in options:
            raise InvalidCacheBackendError(
                "give use_vpc_ip_address (django-elastipymemcache's name) or use_vpc, not both"
            )
        options["use_vpc"] = bool(options.pop("use_vpc_ip_address"))
    if "cluster_timeout" in options:  # 1.x/2.x
        if "discovery_timeout" in options:
            raise InvalidCacheBackendError(
                "give cluster_timeout (django-elastipymemcache's name) or discovery_timeout, "
                "not both"
            )
        options["discovery_timeout"] = options.pop("cluster_timeout")
    if "discovery_interval" in options:
        if "poll_interval" in options:
            raise InvalidCacheBackendError(
                "give discovery_interval (django-elastipymemcache's name) or poll_interval, "
                "not both"
            )
        interval = options.pop("discovery_interval")
        try:
            interval = float(interval or 0)
        except (TypeError, ValueError):
            raise InvalidCacheBackendError(
                f"discovery_interval must be a number of seconds, got {interval!r}"
            ) from None
        if interval < 0:
            raise InvalidCacheBackendError(f"discovery_interval must be >= 0, got {interval!r}")
        if interval > 0:
            options["poll_interval"] = interval
        # 0 (django-elastipymemcache's default) turns its periodic discovery off; ours always
        # runs, in the background, at the client's default interval: a cluster that scales
        # must be followed, and a poll costs one small request per interval per process.
    return options


class ElastiCacheCache(PymcCache):
    """A Django cache backend over :class:`pymc.ElastiCacheClient`: ``LOCATION`` is the
    cluster's configuration endpoint, ``"host:port"``; ``OPTIONS`` are ElastiCacheClient's
    and HashClient's, and django-elastipymemcache's names (:data:`ELASTIPYMEMCACHE_OPTIONS`)."""

    client_class = pymc.ElastiCacheClient

    def __init__(self, server: Union[str, Sequence[str]], params: Dict[str, Any]) -> None:
        super().__init__(server, params)
        servers: List[Any] = [
            s.strip() if isinstance(s, str) else s for s in self._servers if s and str(s).strip()
        ]
        if len(servers) != 1:
            raise InvalidCacheBackendError(
                "ElastiCacheCache takes exactly one LOCATION, the cluster's configuration "
                f"endpoint (host:port), not {self._servers!r}"
            )
        if not isinstance(servers[0], str) or not _ENDPOINT.match(servers[0]):
            raise InvalidCacheBackendError(
                f"ElastiCacheCache's LOCATION must be host:port, not {servers[0]!r}"
            )
        self._endpoint = servers[0]
        self._options = _elasticache_options(self._options)

    async_client_name = "ElastiCacheClient"

    def _make_client(self) -> Any:
        return _shared_client(self._class, self._endpoint, self._options)

    def _make_async_client(self, loop: asyncio.AbstractEventLoop) -> Any:
        kind = _asyncio_class(self.async_client_name)
        return _loop_client(loop, kind, self._endpoint, self._options)
