"""Retries: an immutable `RetryPolicy`, and pymemcache's `RetryingClient` decorator.

Which failures are retried:

* the connect phase (:class:`~pymc.exceptions.MemcacheConnectError`: refused, connect
  timeout, TLS or DNS failure): the server never saw the request, so every command is
  retried;
* failures after the request may have reached the server (read timeouts, resets, unexpected
  closes, malformed replies): only for idempotent commands (:data:`IDEMPOTENT`). ``incr``,
  ``decr``, ``add``, ``cas``, ``append`` and ``prepend`` are never retried then, unless the
  caller adds them to ``idempotent=`` explicitly;
* bad input and ``CLIENT_ERROR`` replies: never; retrying cannot fix them.

A policy never changes: :meth:`RetryPolicy.increment` returns the policy for the next
attempt, so one instance is safely shared by every thread. Sleeps happen between attempts,
outside any lock, through ``time.sleep`` as it is at that moment (gevent-friendly).

Layer: imports ``client`` (``Commands``) and ``exceptions`` only; ``pool`` uses
:class:`RetryPolicy`, never :class:`RetryingClient`.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import (
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    Iterator,
    Optional,
    Tuple,
    TypeVar,
)

from .client import Commands
from .exceptions import (
    MemcacheClientError,
    MemcacheConnectError,
    MemcacheNetworkError,
    MemcacheProtocolError,
    MemcacheUnsupportedCommandError,
)

__all__ = ["IDEMPOTENT", "RetryPolicy", "RetryingClient", "call_with_retry"]

T = TypeVar("T")
ExcTypes = Tuple[type, ...]

#: Commands that may safely run twice: retried even after the server may have seen them.
IDEMPOTENT: FrozenSet[str] = frozenset(
    [
        "get",
        "gets",
        "gat",
        "gats",
        "get_many",
        "get_multi",
        "gets_many",
        "gets_multi",
        "set",
        "set_many",
        "set_multi",
        "delete",
        "delete_many",
        "delete_multi",
        "touch",
        "stats",
        "version",
        "__getitem__",
        "__setitem__",
        "__delitem__",
    ]
)


def _exception_types(name: str, value: Optional[Iterable[type]]) -> ExcTypes:
    if value is None:
        return ()
    if not isinstance(value, (tuple, list, set, frozenset)):
        raise ValueError(f"{name} must be a tuple, list or set of exception classes")
    types = tuple(value)
    for t in types:
        if not (isinstance(t, type) and issubclass(t, Exception)):
            raise ValueError(f"{name} may only hold subclasses of Exception, not {t!r}")
    return types


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a command.

    ``attempts`` counts every try, the first included. Between tries the policy sleeps
    ``backoff * 2**(n-1)`` seconds, capped at ``max_backoff``, less a random fraction of up
    to ``jitter`` of it. ``retry_for`` (when given) limits retries to those exception types;
    ``do_not_retry_for`` excludes types; ``idempotent`` names the commands that may be
    retried after the request may have reached the server.
    """

    attempts: int = 3
    backoff: float = 0.01
    max_backoff: float = 1.0
    jitter: float = 0.5
    retry_for: Optional[ExcTypes] = None
    do_not_retry_for: ExcTypes = ()
    idempotent: FrozenSet[str] = IDEMPOTENT
    attempt: int = 1  #: the attempt this policy is for (1 = the first try)

    def __post_init__(self) -> None:
        if not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError("attempts must be an int >= 1")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")
        retry_for = self.retry_for
        if retry_for is not None:
            object.__setattr__(self, "retry_for", _exception_types("retry_for", retry_for))
        no = _exception_types("do_not_retry_for", self.do_not_retry_for)
        object.__setattr__(self, "do_not_retry_for", no)
        object.__setattr__(self, "idempotent", frozenset(self.idempotent))
        for exc_type in self.retry_for or ():
            if exc_type in no:
                raise ValueError(f"{exc_type!r} is in both retry_for and do_not_retry_for")

    @property
    def exhausted(self) -> bool:
        """No attempt is left after this one."""
        return self.attempt >= self.attempts

    def increment(self) -> RetryPolicy:
        """The policy for the next attempt."""
        return dataclasses.replace(self, attempt=self.attempt + 1)

    def backoff_time(self) -> float:
        """Seconds to wait before the next attempt."""
        delay = float(min(self.max_backoff, self.backoff * 2 ** (self.attempt - 1)))
        if self.jitter and delay:
            delay *= 1 - self.jitter * random.random()
        return delay

    def is_retryable(self, command: str, exc: BaseException) -> bool:
        """Whether ``exc``, raised by ``command``, may be retried at all."""
        if not isinstance(exc, Exception) or isinstance(exc, self.do_not_retry_for):
            return False
        if isinstance(exc, MemcacheClientError) and not isinstance(
            exc, MemcacheUnsupportedCommandError
        ):
            return False  # bad input or CLIENT_ERROR: the same request fails the same way
        # (A close before any reply to a command not every proxy supports may also have been
        # a connection the server had just closed: retried as the close it was.)
        if self.retry_for is not None and not isinstance(exc, self.retry_for):
            return False
        if isinstance(exc, MemcacheConnectError):
            return True  # the server never saw the request
        if self.retry_for is not None or isinstance(
            exc, (MemcacheNetworkError, MemcacheProtocolError)
        ):
            return command in self.idempotent
        return False


def call_with_retry(
    policy: RetryPolicy, command: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any
) -> T:
    """Call ``fn(*args, **kwargs)`` and retry it as ``policy`` allows.

    ``policy``, ``command`` and ``fn`` are positional-only, so any keyword argument -- even
    one named ``command`` (``raw_command(command=...)``) or ``fn`` -- goes to ``fn``.
    """
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if policy.exhausted or not policy.is_retryable(command, exc):
                raise
            delay = policy.backoff_time()
            policy = policy.increment()
            if delay > 0:
                time.sleep(delay)


#: The commands whose keys are an iterable: the first argument, or ``keys=``.
_ITERABLE_KEYS: FrozenSet[str] = frozenset(
    [
        "get_many",
        "get_multi",
        "gets_many",
        "gets_multi",
        "delete_many",
        "delete_multi",
        "meta_get_many",
        "meta_delete_many",
    ]
)


def replayable(
    command: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]
) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
    """``args`` and ``kwargs`` that every attempt can be given: keys passed as an iterator
    (a generator, ``map``...) are read once, here, into a tuple. Otherwise the first
    attempt reads them and a retry gets none (and returns ``{}``)."""
    if command in _ITERABLE_KEYS:
        if args and isinstance(args[0], Iterator):
            args = (tuple(args[0]), *args[1:])
        elif not args and isinstance(kwargs.get("keys"), Iterator):
            kwargs = {**kwargs, "keys": tuple(kwargs["keys"])}
    return args, kwargs


class RetryingClient(Commands):
    """Wrap a Client, PooledClient or HashClient and retry its commands.

    pymemcache's signature and argument checks. Unlike pymemcache, failures after the
    request may have reached the server are retried only for idempotent commands
    (see :data:`IDEMPOTENT`); connect failures are retried for every command.
    """

    def __init__(
        self,
        client: Any,
        attempts: int = 2,
        retry_delay: float = 0,
        retry_for: Optional[Iterable[type]] = None,
        do_not_retry_for: Optional[Iterable[type]] = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1, or no attempt is ever made")
        self._client = client
        self._policy = RetryPolicy(
            attempts=attempts,
            backoff=retry_delay,
            max_backoff=retry_delay,
            jitter=0,
            retry_for=_exception_types("retry_for", retry_for) or None,
            do_not_retry_for=_exception_types("do_not_retry_for", do_not_retry_for),
        )

    @property
    def policy(self) -> RetryPolicy:
        return self._policy

    def run(self, name: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        """The wrapped client's command ``name``, retried as the policy allows."""
        args, kwargs = replayable(name, args, kwargs)
        return call_with_retry(self._policy, name, getattr(self._client, name), *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Anything that is not a command (add_server, server, ...) comes from the client.
        return getattr(self._client, name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} attempts={self._policy.attempts} {self._client!r}>"

    def __getitem__(self, key: Any) -> Any:
        return call_with_retry(self._policy, "__getitem__", self._client.__getitem__, key)

    def __setitem__(self, key: Any, value: Any) -> None:
        call_with_retry(self._policy, "__setitem__", self._client.__setitem__, key, value)

    def __delitem__(self, key: Any) -> None:
        call_with_retry(self._policy, "__delitem__", self._client.__delitem__, key)

    def __enter__(self) -> RetryingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._client.close()
