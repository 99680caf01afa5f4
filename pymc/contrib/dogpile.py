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

The distributed lock (``distributed_lock=True``) is the item ``"_lock" + key``, as in
dogpile's memcached backends; each attempt stores a new random token in it, with ``ms`` in
add mode where the server has meta commands, else with ``add``. Release deletes the item only
while it holds this holder's token (atomically, by cas, where the server has meta commands;
read, then deleted, where it has not), so a holder whose lock expired (after
``lock_timeout`` seconds) never frees the lock a later caller took;
and an interruption (``gevent.Timeout``, ``KeyboardInterrupt``) in ``acquire()`` or
``release()`` takes back what the server may have stored, so no lock stays that nobody holds.
Both kinds are adds on one item, so they exclude each other (and dogpile's own memcached
lock), and processes using either can share a cache. ``meta_lock``: ``None`` (default) uses
meta commands until a server refuses them, ``True`` or ``False`` forces one kind.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

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

__all__ = [
    "CLIENT_ARGUMENTS",
    "LOCK_PREFIX",
    "LOCK_TOKEN_PREFIX",
    "PROVISIONAL_TTL",
    "PymcBackend",
    "PymcLock",
]

#: The lock of ``key`` is the memcached item ``LOCK_PREFIX + key`` (dogpile's name for it).
LOCK_PREFIX = "_lock"
#: The value of a lock is this prefix and a random token, new for each attempt.
LOCK_TOKEN_PREFIX = "pymc-lock:"
#: memcached reads a larger ttl as a unix time.
MAX_RELATIVE_TTL = 30 * 24 * 3600
#: An attempt stores the lock for this many seconds (or ``lock_timeout + 1`` if shorter),
#: and for its full time only once the reply said it is the holder's: a lock whose store
#: reached the server but whose reply never came (the attempt was interrupted, and its
#: clean-up went first or failed) goes away by itself, even with ``lock_timeout=0``.
PROVISIONAL_TTL = 3
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

logger = logging.getLogger("pymc")


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
        """Whether locks use meta commands (False once a server refused them)."""
        return self.meta_lock is not False

    def meta_refused(self) -> None:
        """A server does not know meta commands: use add/delete locks from now on (unless
        ``meta_lock=True`` asked for meta commands only, in which case the error is raised)."""
        if self.meta_lock is None:
            self.meta_lock = False


class PymcLock(CacheMutex):
    """dogpile's distributed lock on ``LOCK_PREFIX + key`` (see the module's documentation).

    Each attempt stores a new random token as the lock's value, with ``ms`` in add mode
    where the server has meta commands, else with ``add``. ``release()`` deletes the lock
    only if it still holds this attempt's token (by cas with meta commands), so a holder whose
    lock expired never frees the next holder's. The item expires between ``lock_timeout``
    and ``lock_timeout + 1`` seconds after it was taken (0: never), so a crashed holder's
    lock goes away.

    An interruption (``gevent.Timeout``, ``KeyboardInterrupt``) in ``acquire()`` or
    ``release()`` may come after the server stored or before it deleted the token; the lock
    then deletes it if it is still there and its own, before it re-raises, so no lock stays
    that nobody holds. After a network error the same clean-up is tried, but the node may
    refuse it (``hashclient_retry_timeout``); and a store that reaches the server after its
    clean-up did is only provisional: the lock is stored for :data:`PROVISIONAL_TTL`
    seconds, and for ``lock_timeout`` once its reply has said the caller holds it.

    dogpile's region gives every caller of one key the same lock object, so the object's
    state is whoever holds the lock now; each call keeps its own token.
    """

    def __init__(self, backend: PymcBackend, key: KeyType) -> None:
        self.backend = backend
        self.key = LOCK_PREFIX + key
        self.timeout = backend.lock_timeout
        # memcached counts a ttl from its clock's last one-second tick, so a ttl of N lasts
        # between N - 1 and N seconds; N + 1 lasts at least N. (Past 30 days a ttl is a date.)
        self.ttl = self.timeout + 1 if 0 < self.timeout < MAX_RELATIVE_TTL else self.timeout
        self.provisional_ttl = self.ttl if 0 < self.ttl <= PROVISIONAL_TTL else PROVISIONAL_TTL
        # (token, cas) while this object holds the lock; cas is None for an add lock. One
        # assignment changes it (no threading.Lock: a signal landing inside "with lock:" can
        # leave that lock taken).
        self._held: Optional[Tuple[str, Optional[int]]] = None
        self._releasing: Optional[Tuple[str, Optional[int]]] = None  # during release()

    def __repr__(self) -> str:
        return f"<PymcLock {self.key!r} held={self._held is not None}>"

    def acquire(self, wait: bool = True) -> bool:
        attempt: List[str] = []  # this call's latest token (the object may be shared)
        try:
            return self._acquire(wait, attempt)
        except BaseException:
            if attempt:  # the server may have stored it: take it back if it did
                self._forget(attempt[0])
            raise

    def _acquire(self, wait: bool, attempt: List[str]) -> bool:
        tries = 0
        while True:
            attempt[:] = [LOCK_TOKEN_PREFIX + os.urandom(8).hex()]
            if self._store(attempt[0]):
                return True
            if not wait:
                return False
            pause = min(MAX_LOCK_BACKOFF, 0.002 * 2 ** min(tries, 16))
            time.sleep(pause * (0.5 + random.random() / 2))
            tries += 1

    def _store(self, token: str) -> bool:
        """Store ``token`` as the lock if it is free, for ``provisional_ttl`` seconds, then,
        once the reply said it is ours, for ``ttl``: True if this attempt holds the lock."""
        client = self.backend.client
        key, ttl, first_ttl = self.key, self.ttl, self.provisional_ttl
        if self.backend.uses_meta_lock():
            try:
                stored = client.meta_set(key, token, first_ttl, mode="add", return_cas=True)
            except pymc.MemcacheUnknownCommandError:
                if self.backend.meta_lock:
                    raise
                self.backend.meta_refused()
            else:
                if stored.status != "stored":
                    return False
                self._held = (token, stored.cas)  # an interruption from here on cleans up
                if first_ttl != ttl:
                    cas = stored.cas
                    stored = client.meta_set(key, token, ttl, compare_cas=cas, return_cas=True)
                    if stored.status != "stored":  # it expired before we extended it
                        self._drop(token)
                        return False
                    self._held = (token, stored.cas)
                return True
        # noreply=False: a noreply add "succeeds" whether or not the key was there.
        if not client.add(key, token, first_ttl, noreply=False):
            return False
        self._held = (token, None)  # an interruption from here on cleans up
        if first_ttl != ttl:
            value, cas = client.gets(key)
            if value != token or not client.cas(key, token, cas, ttl, noreply=False):
                self._drop(token)  # it expired before we extended it
                return False
        return True

    def release(self) -> None:
        try:
            # Cleared before the delete: once the server has deleted it, another caller
            # sharing this object (dogpile shares one per key) may take the lock and set it.
            held = self._releasing = self._held
            self._held = None
            if held is not None:
                self._delete_own(*held)
            self._releasing = None
        except BaseException:
            held = self._releasing or self._held  # the first if the line above it ran
            self._releasing = None
            if held is not None:
                self._forget(held[0])
            raise

    def _delete_own(self, token: str, cas: Optional[int]) -> None:
        """Delete the lock if it holds ``token`` (by ``cas`` when we have one)."""
        client = self.backend.client
        if cas is not None:
            client.meta_delete(self.key, compare_cas=cas)
            return
        if self.backend.uses_meta_lock():
            # Our own extension, sent before an interruption, may still change the cas
            # between the two commands (once): then read it again.
            for _ in range(3):
                found = client.meta_get(self.key, return_cas=True, no_bump=True)
                if not (found.hit and found.value == token):
                    return
                if client.meta_delete(self.key, compare_cas=found.cas).status != "exists":
                    return
            return
        # No meta commands: a check, then a delete (a lock that expires and is taken between
        # the two is deleted, as dogpile's add/delete lock always does).
        if client.get(self.key) == token:
            client.delete(self.key, noreply=False)

    def _drop(self, token: str) -> None:
        """Forget ``token``'s hold here (only it: the object may be shared)."""
        held = self._held
        if held is not None and held[0] == token:
            self._held = None

    def _forget(self, token: str) -> None:
        """After an interruption: drop ``token``'s hold, here and, best effort, on the server."""
        self._drop(token)
        try:
            self._delete_own(token, None)
        except Exception:  # the interruption is what the caller must see
            logger.debug("pymc: could not clean up the lock %r", self.key, exc_info=True)

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
