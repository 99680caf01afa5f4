"""A dogpile.cache backend over :class:`pymc.HashClient`, registered as ``"pymc"``.

::

    from dogpile.cache import make_region

    region = make_region().configure(
        "pymc",
        expiration_time=3600,
        arguments={"url": ["10.0.0.1:11211", "10.0.0.2:11211"], "distributed_lock": True},
    )

The arguments are those of dogpile.cache's ``dogpile.cache.pymemcache`` backend (``url``,
``distributed_lock``, ``lock_timeout``, ``memcached_expire_time``, ``serde``,
``default_noreply``, ``tls_context``, ``socket_keepalive``, ``enable_retry_client``,
``retry_attempts``, ``retry_delay``, ``retry_for``, ``do_not_retry_for``,
``hashclient_retry_attempts``, ``hashclient_retry_timeout``, ``hashclient_dead_timeout``),
plus pymc's own connection and pool settings (:data:`CLIENT_ARGUMENTS`) and ``meta_lock``.

Unlike dogpile's memcached backends, which give every thread its own client
(``threading.local``), the backend holds one thread-safe :class:`pymc.HashClient` with
connection pooling on (``use_pooling=True`` unless the arguments say otherwise), so a
worker with many threads keeps a bounded number of connections.

The distributed lock (``distributed_lock=True``) is the key ``"_lock" + key``, as in
dogpile's memcached backends. Where the server has meta commands it is a lease: ``mg`` with
vivify-on-miss creates the lock item and hands the *win* flag to exactly one caller, which
holds it until it deletes the item by its cas value; so a holder whose lock expired (after
``lock_timeout`` seconds) never deletes the lock a later caller took. A server without meta
commands gets dogpile's ``add``/``delete`` lock. Both kinds exclude each other, so processes
using either can share a cache. ``meta_lock``: ``None`` (default) detects, ``True`` or
``False`` forces one kind.
"""

from __future__ import annotations

import random
import threading
import time
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from dogpile.cache import register_backend
from dogpile.cache.api import (
    NO_VALUE,
    BackendFormatted,
    BackendSetType,
    CacheBackend,
    CacheMutex,
    KeyType,
)

import pymc
import pymc.serde

__all__ = ["CLIENT_ARGUMENTS", "LOCK_PREFIX", "PymcBackend", "PymcLock"]

#: The lock of ``key`` is the memcached item ``LOCK_PREFIX + key`` (dogpile's name for it).
LOCK_PREFIX = "_lock"
#: Longest pause, in seconds, between two tries of a waiting :meth:`PymcLock.acquire`.
MAX_LOCK_BACKOFF = 0.1
#: pymc arguments passed as they are to :class:`pymc.HashClient` when present.
CLIENT_ARGUMENTS = (
    "connect_timeout",
    "timeout",
    "no_delay",
    "key_prefix",
    "allow_unicode_keys",
    "username",
    "password",
    "use_pooling",
    "max_pool_size",
    "pool_idle_timeout",
    "pool_timeout",
)
_RETRY_ARGUMENTS = ("retry_attempts", "retry_delay", "retry_for", "do_not_retry_for")

_MISSING: Any = object()


def _to_list(url: Any) -> List[Any]:
    if isinstance(url, (str, tuple)):
        return [url]
    return list(url)


def _keepalive(value: Any) -> Optional[pymc.KeepaliveOpts]:
    """pymc's KeepaliveOpts; pymemcache's (anything with ``idle``/``intvl``/``cnt``) too."""
    if value is None or isinstance(value, pymc.KeepaliveOpts):
        return value
    return pymc.KeepaliveOpts(idle=value.idle, intvl=value.intvl, cnt=value.cnt)


class PymcBackend(CacheBackend):
    """dogpile.cache backend over one shared, pooled :class:`pymc.HashClient`."""

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        args = dict(arguments)  # never change the caller's dictionary
        self.url = _to_list(args["url"])
        self.distributed_lock = bool(args.get("distributed_lock", False))
        self.lock_timeout = int(args.get("lock_timeout", 0))
        meta_lock = args.get("meta_lock")
        self.meta_lock: Optional[bool] = None if meta_lock is None else bool(meta_lock)
        self.serde = args.get("serde", pymc.serde.pickle_serde)
        self.default_noreply = bool(args.get("default_noreply", False))
        self.tls_context = args.get("tls_context")
        self.socket_keepalive = _keepalive(args.get("socket_keepalive"))
        self.enable_retry_client = bool(args.get("enable_retry_client", False))
        self.retry_attempts: Optional[int] = args.get("retry_attempts")
        self.retry_delay: Optional[float] = args.get("retry_delay")
        self.retry_for = args.get("retry_for")
        self.do_not_retry_for = args.get("do_not_retry_for")
        self.hashclient_retry_attempts = int(args.get("hashclient_retry_attempts", 2))
        self.hashclient_retry_timeout = float(args.get("hashclient_retry_timeout", 1))
        # dogpile's pymemcache backend reads "hashclient_dead_timeout"; "dead_timeout" is
        # HashClient's own name for it.
        self.dead_timeout = float(args.get("hashclient_dead_timeout", args.get("dead_timeout", 60)))
        if not self.enable_retry_client and any(args.get(n) is not None for n in _RETRY_ARGUMENTS):
            warnings.warn(
                "enable_retry_client is not set; retry options will be ignored", stacklevel=2
            )
        if self.enable_retry_client and self.retry_attempts is None:
            raise ValueError("enable_retry_client needs retry_attempts (1 or more)")
        self.set_arguments: Dict[str, Any] = {}
        if "memcached_expire_time" in args:
            self.set_arguments["expire"] = int(args["memcached_expire_time"])
        self.client_options: Dict[str, Any] = {"use_pooling": True}
        self.client_options.update((n, args[n]) for n in CLIENT_ARGUMENTS if n in args)
        self._client: Any = None
        self._client_lock = threading.Lock()

    # ------------------------------------------------------------------ the client

    def _create_client(self) -> Any:
        """A new client for these arguments (a HashClient, maybe in a RetryingClient)."""
        client: Any = pymc.HashClient(
            self.url,
            serde=self.serde,
            default_noreply=self.default_noreply,
            tls_context=self.tls_context,
            socket_keepalive=self.socket_keepalive,
            retry_attempts=self.hashclient_retry_attempts,
            retry_timeout=self.hashclient_retry_timeout,
            dead_timeout=self.dead_timeout,
            **self.client_options,
        )
        if self.enable_retry_client:
            client = pymc.RetryingClient(
                client,
                attempts=int(self.retry_attempts or 0),
                retry_delay=self.retry_delay or 0,
                retry_for=self.retry_for,
                do_not_retry_for=self.do_not_retry_for,
            )
        return client

    @property
    def client(self) -> Any:
        """The one client every thread shares, made on first use."""
        client = self._client
        if client is None:
            with self._client_lock:
                client = self._client
                if client is None:
                    client = self._client = self._create_client()
        return client

    def close(self) -> None:
        """Close the idle pooled connections (the backend stays usable)."""
        client = self._client
        if client is not None:
            client.close()

    # ------------------------------------------------------------------ the cache

    def get(self, key: KeyType) -> BackendFormatted:
        value = self.client.get(key, _MISSING)
        return NO_VALUE if value is _MISSING else value

    def get_multi(self, keys: Iterable[KeyType]) -> Sequence[BackendFormatted]:
        keys = list(keys)
        if not keys:
            return []
        found = self.client.get_many(keys)
        return [found.get(key, NO_VALUE) for key in keys]

    def set(self, key: KeyType, value: BackendSetType) -> None:
        self.client.set(key, value, **self.set_arguments)

    def set_multi(self, mapping: Mapping[KeyType, BackendSetType]) -> None:
        if mapping:
            self.client.set_many(dict(mapping), **self.set_arguments)

    def delete(self, key: KeyType) -> None:
        self.client.delete(key)

    def delete_multi(self, keys: Iterable[KeyType]) -> None:
        keys = list(keys)
        if keys:
            self.client.delete_many(keys)

    # ------------------------------------------------------------------ the lock

    def has_lock_timeout(self) -> bool:
        return self.lock_timeout != 0

    def get_mutex(self, key: KeyType) -> Optional[CacheMutex]:
        return PymcLock(self, key) if self.distributed_lock else None

    def uses_meta_lock(self) -> bool:
        """Whether locks try the meta lease first (False once a server refused ``mg``)."""
        return self.meta_lock is not False

    def meta_refused(self) -> None:
        """A server does not know meta commands: use add/delete locks from now on (unless
        ``meta_lock=True`` asked for leases only, in which case the error is raised)."""
        if self.meta_lock is None:
            self.meta_lock = False


class PymcLock(CacheMutex):
    """dogpile's distributed lock on ``LOCK_PREFIX + key``: a meta lease where the server
    has meta commands, else ``add``/``delete`` (see the module's documentation).

    ``release()`` frees only what this object acquired. The item expires after the
    backend's ``lock_timeout`` seconds (0: never), so a crashed holder's lock goes away.
    """

    def __init__(self, backend: PymcBackend, key: KeyType) -> None:
        self.backend = backend
        self.key = LOCK_PREFIX + key
        self.timeout = backend.lock_timeout
        self._state = threading.Lock()  # guards _held and _cas only; never held over I/O
        self._held = False
        self._cas: Optional[int] = None  # the lease's cas (None: an add lock)

    def __repr__(self) -> str:
        return f"<PymcLock {self.key!r} held={self._held}>"

    def acquire(self, wait: bool = True) -> bool:
        tries = 0
        while not self._try_acquire():
            if not wait:
                return False
            pause = min(MAX_LOCK_BACKOFF, 0.002 * 2 ** min(tries, 16))
            time.sleep(pause * (0.5 + random.random() / 2))
            tries += 1
        return True

    def _try_acquire(self) -> bool:
        client = self.backend.client
        if self.backend.uses_meta_lock():
            try:
                lease = client.meta_get(self.key, return_cas=True, vivify_on_miss=self.timeout)
            except pymc.MemcacheUnknownCommandError:
                if self.backend.meta_lock:
                    raise
                self.backend.meta_refused()
            else:
                if not lease.win:  # someone holds it (a lease, or an add lock: a plain hit)
                    return False
                with self._state:
                    self._held, self._cas = True, lease.cas
                return True
        # noreply=False: a noreply add "succeeds" whether or not the key was there.
        if client.add(self.key, 1, self.timeout, noreply=False):
            with self._state:
                self._held, self._cas = True, None
            return True
        return False

    def release(self) -> None:
        with self._state:
            held, cas = self._held, self._cas
            self._held, self._cas = False, None
        if not held:
            return
        client = self.backend.client
        if cas is not None:
            # Only our lease: if it expired and another caller took the lock, the cas differs
            # and the server keeps the other caller's lock.
            client.meta_delete(self.key, compare_cas=cas)
        else:
            client.delete(self.key, noreply=False)

    def locked(self) -> bool:
        client = self.backend.client
        if self.backend.uses_meta_lock():
            try:
                return bool(client.meta_get(self.key, no_bump=True).hit)
            except pymc.MemcacheUnknownCommandError:
                if self.backend.meta_lock:
                    raise
                self.backend.meta_refused()
        return client.get(self.key, _MISSING) is not _MISSING


# dogpile's PluginLoader.register carries no annotations.
register_backend("pymc", "pymc.contrib.dogpile", "PymcBackend")  # type: ignore[no-untyped-call]
