"""`PooledClient`: every :class:`Client` command, each run on a connection of a pool.

The pool, its checkout and the call itself are :mod:`pymc.pool.objectpool`'s
(:class:`PooledCalls`); this module makes the connections, from one
:class:`~pymc.client.ClientOptions`, and gives the client its signature.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

from ..client import (
    Client,
    ClientOptions,
    Commands,
    ServerSpec,
    normalize_server_spec,
    server_name,
    warn_if_config_endpoint,
)
from ..protocol import validate_key
from ..retry import RetryPolicy
from .objectpool import DEFAULT_POOL_TIMEOUT, ObjectPool, PooledCalls, connection_is_reusable

__all__ = ["PooledClient"]

_MISSING: Any = object()


class PooledClient(PooledCalls, Commands):
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
        if options is None:  # made by a user, not by a cluster client for one of its nodes
            warn_if_config_endpoint(self.server, type(self).__name__)
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
            validate=connection_is_reusable,
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

    def close(self) -> None:
        """Close every idle connection now, and every busy one when it comes back; the
        client stays usable (later calls open new connections)."""
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
