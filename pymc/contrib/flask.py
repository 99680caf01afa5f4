"""A Flask-Caching and cachelib backend over :class:`pymc.HashClient`.

Flask-Caching::

    app.config["CACHE_TYPE"] = "pymc.contrib.flask.PymcCache"
    app.config["CACHE_MEMCACHED_SERVERS"] = ["10.0.0.1:11211", "10.0.0.2:11211"]
    app.config["CACHE_OPTIONS"] = {"connect_timeout": 0.5, "timeout": 1.0}

cachelib (and what builds on it, such as Flask-Session's ``cachelib`` type)::

    cache = PymcCache(["10.0.0.1:11211"], default_timeout=300, key_prefix="myapp:")

Behaves as cachelib's ``MemcachedCache``: keys are ``key_prefix + key`` (unicode keys are
stored as UTF-8); a timeout of 0 never expires and any other is seconds from now, however large
(memcached reads an expiry over 30 days as a Unix time, so such timeouts are sent as one);
values are pickled unless they are exactly ``str``, ``bytes`` or ``int``; a key memcached cannot
hold is a miss for the readers. A backend failure (a dead server, a timeout, a full pool, a
value over the server's item size) is the documented failure return: ``None`` from ``get`` and
``inc``/``dec``, ``False`` from ``set``/``add``/``delete``/``has``/``clear``, the keys that did
succeed from ``set_many``/``delete_many`` (when the server refuses some values of a
``set_many``, say one over its item size, or one server of several is down, the others are
stored and returned; so for ``delete_many``). Pickling errors are raised.

Differences, all on the safe side: pooling is on (one pool of connections per server, safe to
share between threads and greenlets); ``inc``/``dec`` are a bounded compare-and-swap loop with
jittered backoff, so a concurrent increment is never overwritten (cachelib reads, then
writes; one that loses all :data:`CAS_ATTEMPTS` rounds returns None); timeouts up to 30 days are
sent as they are, not as a Unix time, so the client's clock does not matter for them; the
backend has connect and read timeouts by default (:data:`DEFAULT_CONNECT_TIMEOUT`,
:data:`DEFAULT_TIMEOUT`), so a dead server never hangs a request.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from typing import Any, Dict, List, Mapping, Optional, Union

from pymc import (
    HashClient,
    MemcacheAuthenticationError,
    MemcacheClientError,
    MemcacheError,
    MemcacheNetworkError,
    MemcacheServerError,
    MemcacheServerRefusedError,
)
from pymc.client import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT  # pymc's own: 2 s each
from pymc.protocol import validate_key
from pymc.serde import PickleSerde

try:  # Flask-Caching's base is cachelib's BaseCache plus the ``factory`` it looks for.
    from flask_caching.backends.base import BaseCache as _Base
except ImportError:  # pragma: no cover - cachelib without Flask-Caching
    try:
        from cachelib import BaseCache as _Base  # type: ignore[assignment]
    except ImportError as exc:  # say which extra brings them
        raise ImportError(
            "pymc.contrib.flask needs Flask-Caching (or cachelib): "
            f"pip install 'pymc-memcached[flask]' ({exc})"
        ) from exc

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "DEFAULT_TIMEOUT", "PymcCache"]


#: memcached reads an expiry above this many seconds as a Unix time.
THIRTY_DAYS = 60 * 60 * 24 * 30

#: How many times ``inc``/``dec`` retry when another writer changed the key in between.
CAS_ATTEMPTS = 16
#: Seconds: the first wait before a retry's compare-and-swap (a random part of it, doubled
#: each time up to 256 times): contenders spread out instead of colliding again in step.
CAS_BACKOFF = 0.0005

Timeout = Union[int, float, dt.timedelta, None]

# What a failed command may raise: pymc's errors (network errors are also OSErrors) and the
# socket module's own, which a custom socket_module may let through.
_FAILURES = (MemcacheError, OSError)


def _refused_some_keys(exc: BaseException) -> bool:
    """Whether a failed ``set_many`` was refused by the server for some keys, each refusal
    in step (``SERVER_ERROR object too large for cache``, a ``CLIENT_ERROR``): the other
    keys were stored. Not a failure of the connection or of the whole client."""
    return isinstance(exc, (MemcacheServerError, MemcacheClientError)) and not isinstance(
        exc, (MemcacheNetworkError, MemcacheServerRefusedError, MemcacheAuthenticationError)
    )


class PymcCache(_Base):
    """A cachelib ``BaseCache`` (and a Flask-Caching backend) storing in memcached via pymc.

    :param servers: ``"host:port"`` strings, ``(host, port)`` tuples or UNIX socket paths
        (``["127.0.0.1:11211"]`` when ``None``); or a ready pymc client (``HashClient``,
        ``PooledClient``, ``Client``...), which is used as it is: give it
        ``serde=pymc.serde.pickle_serde`` and ``allow_unicode_keys=True`` for cachelib's
        behaviour.
    :param default_timeout: seconds (or a ``timedelta``) when ``set`` is given none; 0 never
        expires.
    :param key_prefix: put before every key.
    :param pool_size: at most this many connections per server (``None``: pymc's default,
        unbounded); HashClient's name, ``max_pool_size``, is accepted too.
    :param pool_blocking: wait for a free connection when the pool is full (``False``: fail
        at once, which is the backend's failure return).
    :param ignore_delete_many_errors: when ``False``, ``delete_many`` raises ``RuntimeError``
        for keys it could not delete.
    :param check_connection: ask every server for its version now, and raise
        ``RuntimeError`` if one does not answer.
    :param client_options: any other :class:`pymc.HashClient` argument (``connect_timeout``,
        ``timeout``, ``hasher``, ``retry_attempts``, ``dead_timeout``, ``username``,
        ``password``, ``tls_context``, ``pool_timeout``, ...).
    """

    def __init__(
        self,
        servers: Any = None,
        default_timeout: Union[int, dt.timedelta] = 300,
        key_prefix: Optional[str] = None,
        pool_size: Optional[int] = None,
        pool_blocking: bool = True,
        ignore_delete_many_errors: bool = True,
        check_connection: bool = False,
        **client_options: Any,
    ) -> None:
        super().__init__(default_timeout, ignore_delete_many_errors)  # type: ignore[arg-type]
        self.key_prefix = key_prefix or ""
        if servers is None:
            servers = ["127.0.0.1:11211"]
        if isinstance(servers, str):
            servers = [servers]
        if isinstance(servers, (list, tuple)):
            # HashClient's own names for the pool's size (CACHE_OPTIONS may use them, as the
            # docstring invites) are pool_size's; given both ways is an error, not a guess.
            if "max_pool_size" in client_options:
                if pool_size is not None:
                    raise TypeError("give pool_size or max_pool_size, not both")
                pool_size = client_options.pop("max_pool_size")
            if not pool_blocking:
                if "pool_timeout" in client_options:
                    raise TypeError("give pool_blocking=False or pool_timeout, not both")
                client_options["pool_timeout"] = 0.0
            client_options.setdefault("use_pooling", True)
            client_options.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
            client_options.setdefault("timeout", DEFAULT_TIMEOUT)
            client_options.setdefault("serde", PickleSerde())
            client_options.setdefault("allow_unicode_keys", True)
            self.client: Any = HashClient(servers, max_pool_size=pool_size, **client_options)
        else:
            if client_options:
                raise TypeError("client options go to the client you pass, not to PymcCache")
            self.client = servers
        if check_connection:
            self._check_connection()

    @classmethod
    def factory(
        cls,
        app: Any,
        config: Dict[str, Any],
        args: List[Any],
        kwargs: Dict[str, Any],
    ) -> PymcCache:
        """Flask-Caching's hook: ``CACHE_MEMCACHED_SERVERS``, ``CACHE_KEY_PREFIX``,
        ``CACHE_MEMCACHED_USERNAME``/``PASSWORD`` (memcached's ASCII auth), then
        ``CACHE_ARGS``/``CACHE_OPTIONS`` (which Flask-Caching put in ``args``/``kwargs``)."""
        kwargs = dict(kwargs)
        kwargs.setdefault("key_prefix", config.get("CACHE_KEY_PREFIX"))
        username = config.get("CACHE_MEMCACHED_USERNAME")
        password = config.get("CACHE_MEMCACHED_PASSWORD")
        if username is not None or password is not None:
            kwargs.setdefault("username", username)
            kwargs.setdefault("password", password)
        args = list(args)
        if not args:
            args.append(config.get("CACHE_MEMCACHED_SERVERS"))
        return cls(*args, **kwargs)

    # ------------------------------------------------------------------ helpers

    def _check_connection(self) -> None:
        try:
            versions = self.client.version()
        except _FAILURES as exc:
            raise RuntimeError(f"could not connect to memcached server(s): {exc}") from exc
        if isinstance(versions, dict) and not versions:
            raise RuntimeError("could not connect to memcached server(s): no server answered")

    def _key(self, key: str) -> str:
        # Without a prefix the key goes as it is (a bytes key too, as with cachelib).
        return self.key_prefix + key if self.key_prefix else key

    @staticmethod
    def _storable(full_key: str) -> bool:
        """Whether memcached can hold this key (1 to 250 bytes of UTF-8, no space or
        control character)."""
        try:
            validate_key(full_key, allow_unicode=True)
        except MemcacheError:
            return False
        return True

    def _expire(self, timeout: Timeout) -> int:
        seconds: int = self._normalize_timeout(timeout)  # type: ignore[arg-type]
        if seconds > THIRTY_DAYS:
            return int(time.time()) + seconds
        if seconds < 0:  # already expired: memcached stores it as gone
            return -1
        return seconds

    # ------------------------------------------------------------------ readers

    def get(self, key: str) -> Any:
        full = self._key(key)
        if not self._storable(full):
            return None
        try:
            return self.client.get(full)
        except _FAILURES:
            return None

    def get_dict(self, *keys: str) -> Dict[str, Any]:
        wanted: Dict[str, str] = {}
        for key in keys:
            full = self._key(key)
            if self._storable(full):
                wanted[full] = key
        found: Mapping[str, Any] = {}
        if wanted:
            try:
                found = self.client.get_many(list(wanted))
            except _FAILURES:
                found = {}
        out: Dict[str, Any] = {key: None for key in keys}
        for full, value in found.items():
            if full in wanted:
                out[wanted[full]] = value
        return out

    def get_many(self, *keys: str) -> List[Any]:
        found = self.get_dict(*keys)
        return [found[key] for key in keys]

    def has(self, key: str) -> bool:
        full = self._key(key)
        if not self._storable(full):
            return False
        try:
            # Appending nothing stores only if the key exists, and changes no value.
            return bool(self.client.append(full, b"", noreply=False))
        except _FAILURES:
            return False

    # ------------------------------------------------------------------ writers

    def set(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        full = self._key(key)
        expire = self._expire(timeout)
        if not self._storable(full):
            return False
        try:
            return bool(self.client.set(full, value, expire, noreply=False))
        except _FAILURES:
            return False

    def add(self, key: str, value: Any, timeout: Timeout = None) -> bool:
        full = self._key(key)
        expire = self._expire(timeout)
        if not self._storable(full):
            return False
        try:
            return bool(self.client.add(full, value, expire, noreply=False))
        except _FAILURES:
            return False

    def set_many(self, mapping: Mapping[str, Any], timeout: Timeout = None) -> List[Any]:
        expire = self._expire(timeout)
        values: Dict[str, Any] = {}
        key_of: Dict[str, str] = {}
        for key, value in mapping.items():
            full = self._key(key)
            if self._storable(full):
                values[full] = value
                key_of[full] = key
        if not values:
            return []
        try:
            failed = set(self.client.set_many(values, expire, noreply=False))
        except _FAILURES as exc:
            if not (_refused_some_keys(exc) or isinstance(self.client, HashClient)):
                # The one server's connection failed: what was stored is unknown, and
                # every key sent again would cost the same failure.
                return []
            # The server refused some keys (a value over its item size) after storing the
            # others, or one node of a cluster failed while the others stored theirs (a
            # node that just failed is not tried again for retry_timeout, so its keys fail
            # at once): the error does not say which keys. Store key by key to find out.
            # Only on this failure path, and each write is the one just made again.
            return [key_of[full] for full in values if self._set_stored(full, values[full], expire)]
        return [key_of[full] for full in values if full not in failed]

    def _set_stored(self, full: str, value: Any, expire: int) -> bool:
        try:
            return bool(self.client.set(full, value, expire, noreply=False))
        except _FAILURES:
            return False

    def delete(self, key: str) -> bool:
        full = self._key(key)
        if not self._storable(full):
            return False
        try:
            return bool(self.client.delete(full, noreply=False))
        except _FAILURES:
            return False

    def delete_many(self, *keys: str) -> List[Any]:
        fulls: Dict[str, str] = {}
        for key in keys:
            full = self._key(key)
            if self._storable(full):
                fulls[full] = key
        deleted: List[str] = []
        if fulls:
            try:
                self.client.delete_many(list(fulls), noreply=False)
                # A key counts as deleted when it is gone afterwards (it may never have been).
                left = self.client.get_many(list(fulls))
            except _FAILURES:
                left = None
                if isinstance(self.client, HashClient):
                    # One node failed while the others deleted their keys, and the error
                    # does not say which: key by key (a node that just failed is not
                    # tried again for retry_timeout, so its keys fail at once).
                    deleted = [key for full, key in fulls.items() if self._gone(full)]
            if left is not None:
                deleted = [key for full, key in fulls.items() if full not in left]
        if not self.ignore_delete_many_errors and len(deleted) != len(fulls):
            failed = [key for key in fulls.values() if key not in deleted]
            raise RuntimeError(f"Failed to delete keys: {failed}")
        return deleted

    def _gone(self, full: str) -> bool:
        try:
            self.client.delete(full, noreply=False)  # False: it was not there
        except _FAILURES:
            return False
        return True

    def clear(self) -> bool:
        """memcached's ``flush_all``, as cachelib's ``MemcachedCache.clear``: every server
        this cache uses is emptied, for every application sharing it, not only the keys
        under this ``key_prefix``."""
        try:
            return bool(self.client.flush_all(noreply=False))
        except _FAILURES:
            return False

    def inc(self, key: str, delta: int = 1) -> Optional[int]:
        return self._add_to(key, delta)

    def dec(self, key: str, delta: int = 1) -> Optional[int]:
        return self._add_to(key, -delta)

    def _add_to(self, key: str, delta: int) -> Optional[int]:
        """``(value or 0) + delta`` stored with the default timeout, as cachelib does, but
        with compare-and-swap so that a concurrent change is never overwritten."""
        full = self._key(key)
        if not self._storable(full):
            return None
        expire = self._expire(None)
        try:
            for attempt in range(CAS_ATTEMPTS):
                if attempt:  # another writer won the last round: back off, jittered
                    time.sleep(random.uniform(0, CAS_BACKOFF * (1 << min(attempt, 8))))
                current, token = self.client.gets(full)
                value = (current or 0) + delta
                if token is None:
                    if self.client.add(full, value, expire, noreply=False):
                        return value
                elif self.client.cas(full, value, token, expire, noreply=False):
                    return value
        except _FAILURES:
            return None
        return None

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Close the idle pooled connections (the cache stays usable: it reconnects)."""
        try:
            self.client.close()
        except _FAILURES:
            pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.client!r}, key_prefix={self.key_prefix!r})"
