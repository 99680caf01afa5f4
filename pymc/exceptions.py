"""The pymc exception tree, rooted at :class:`MemcacheError`.

The names of pymemcache 4.0 are kept so that ``except`` clauses keep working after a
switch. Failures of the network are also :class:`OSError` (and timeouts also
:class:`TimeoutError` / ``socket.timeout``), so code written against raw sockets keeps
catching them too. What pymemcache lets through from the socket (``ConnectionRefusedError``,
``FileNotFoundError``, ``ConnectionResetError``, ``ssl.SSLError``, ...) is caught by an
``except`` for that class as well: see :func:`network_error`.
"""

from __future__ import annotations

import socket
from typing import Any, Dict, Tuple, Type, TypeVar

__all__ = [
    "AllNodesDownError",
    "ClusterNotReadyError",
    "MemcacheAuthNotRequiredError",
    "MemcacheAuthenticationError",
    "MemcacheClientError",
    "MemcacheConnectError",
    "MemcacheConnectTimeoutError",
    "MemcacheError",
    "MemcacheIllegalInputError",
    "MemcacheLeaseTimeoutError",
    "MemcacheNetworkError",
    "MemcachePoolTimeoutError",
    "MemcacheProtocolError",
    "MemcacheServerError",
    "MemcacheServerRefusedError",
    "MemcacheTimeoutError",
    "MemcacheUnexpectedCloseError",
    "MemcacheUnknownCommandError",
    "MemcacheUnknownError",
    "MemcacheUnsupportedCommandError",
    "NodeRestingError",
    "network_error",
]


class MemcacheError(Exception):
    """Base class of every error pymc raises."""


class MemcacheClientError(MemcacheError):
    """The server answered ``CLIENT_ERROR``, or the request was refused before sending."""


class MemcacheUnknownCommandError(MemcacheClientError):
    """The server answered ``ERROR``: it does not know the command."""


class MemcacheIllegalInputError(MemcacheClientError):
    """A key, value or argument is not legal for memcached. Nothing was sent."""


class MemcacheAuthenticationError(MemcacheClientError):
    """ASCII authentication (``memcached -Y``) failed: the server refused the username
    and password, or (:class:`MemcacheAuthNotRequiredError`) never asked for them."""


class MemcacheAuthNotRequiredError(MemcacheAuthenticationError):
    """A username and password were given, but the server does not require them: it
    answered a command sent without them. The credentials were not sent (a server without
    ``-Y`` would have stored them as an item named ``auth``) and the connection was
    closed. Start the server with ``-Y``, or drop the credentials."""


class MemcacheServerError(MemcacheError):
    """The server answered ``SERVER_ERROR`` (for example: object too large for cache)."""


class MemcacheServerRefusedError(MemcacheServerError, MemcacheUnknownCommandError):
    """The server answered ``ERROR <message>``: a server-side refusal, such as memcached's
    ``ERROR Too many open connections`` when it is full (it then hangs up, and the
    connection is closed) or ``ERROR shutdown not enabled``. A bare ``ERROR`` (an unknown
    command) is only a :class:`MemcacheUnknownCommandError`; this class is one too, since
    pymemcache raises that for every ``ERROR`` line."""

    #: False when the refusal was of the connection itself (``ERROR Too many open
    #: connections``): the server hangs up. True when only the command was refused and the
    #: connection stays in step (a cluster client then does not count it against the node).
    in_step: bool = True


class MemcacheUnknownError(MemcacheError):
    """The server sent a reply that pymc could not understand."""


class MemcacheProtocolError(MemcacheUnknownError):
    """A malformed or unexpected reply. The connection it came from has been closed."""


class MemcacheNetworkError(MemcacheError, OSError):
    """The connection failed. Also an :class:`OSError`; the connection has been closed."""


class MemcacheConnectError(MemcacheNetworkError):
    """Could not connect: the server never saw the request, so any command may be retried."""


_TIMEOUT_BASES: Tuple[Type[BaseException], ...] = (
    (TimeoutError,) if socket.timeout is TimeoutError else (socket.timeout, TimeoutError)
)


class MemcacheTimeoutError(MemcacheNetworkError, *_TIMEOUT_BASES):  # type: ignore[misc]
    """A send or receive timed out. Also :class:`TimeoutError` and ``socket.timeout``."""


class MemcacheConnectTimeoutError(MemcacheConnectError, MemcacheTimeoutError):
    """Connecting took longer than ``connect_timeout``."""


class MemcacheUnexpectedCloseError(MemcacheServerError, MemcacheNetworkError):
    """The server closed the connection in the middle of a command."""

    #: True when not a byte of the reply had been read (the close answered the command).
    before_reply: bool = False


class NodeRestingError(MemcacheNetworkError):
    """A :class:`~pymc.HashClient` did not send the command: the key's node failed less than
    ``retry_timeout`` seconds ago (or was ejected while the request waited for one of its
    connections). Nothing was sent and it does not count as a new failure of the node. A
    :class:`MemcacheNetworkError` (and so an ``OSError``), as the failure that made the node
    rest was."""


class MemcacheUnsupportedCommandError(MemcacheUnexpectedCloseError, MemcacheUnknownCommandError):
    """The server or proxy closed the connection, before any byte of reply, in answer to a
    command that not every server or proxy supports (``gat``, the meta commands,
    ``stats``, ``flush_all``, ...): it most likely does not support that command
    (twemproxy closes the connection on a command it does not know). A
    :class:`MemcacheUnknownCommandError`, as memcached's own ``ERROR`` would be, and still
    the :class:`MemcacheUnexpectedCloseError` it was; a cluster client does not count it
    against the node."""


class MemcachePoolTimeoutError(MemcacheError):
    """No connection became free in the pool within ``pool_timeout`` seconds."""


class AllNodesDownError(MemcacheError):
    """A cluster client has no node to send the key to: every server is ejected."""


class ClusterNotReadyError(AllNodesDownError):
    """An :class:`~pymc.ElastiCacheClient` has no node list yet: discovery has not
    succeeded since it was made. It keeps trying in the background; ``wait_ready()``
    waits for it."""


class MemcacheLeaseTimeoutError(MemcacheError):
    """``fetch()`` waited its whole ``wait`` (by default ``lease_ttl``) for the caller that
    holds the lease on a missing key to store its value, and none came."""


N = TypeVar("N", bound=MemcacheNetworkError)

# (pymc class, socket error class) -> the class that is both (or the pymc class alone, when
# the two cannot be combined). Bounded by the number of such pairs ever raised.
_combined: Dict[Tuple[type, type], type] = {}


def network_error(cls: Type[N], exc: OSError, message: str) -> N:
    """The ``cls`` error (a :class:`MemcacheNetworkError` class) to raise for the socket
    error ``exc``: ``cls(exc.errno, message)``, and also an instance of ``type(exc)``
    when that is a subclass of :class:`OSError` (``ConnectionRefusedError``,
    ``FileNotFoundError``, ``ConnectionResetError``, ``BrokenPipeError``,
    ``ssl.SSLError``...). So an ``except ConnectionRefusedError:`` written for pymemcache,
    which lets those through, still catches it. ``exc``'s own attributes (``ssl``'s
    ``reason``, ``library``, ``verify_code``...) are copied. The class is made once per
    pair, named ``MemcacheConnectError[ConnectionRefusedError]``, and pickles.

    ``exc`` may be one of pymc's own network errors (a cluster node resting after it): the
    result is then an instance of the class that error stands for too (the socket error's,
    or ``TimeoutError`` for a timeout)."""
    kind = _socket_class(exc)
    made = cls
    if kind is not OSError and not issubclass(cls, kind):
        made = _combined.get((cls, kind)) or _combine(cls, kind)
    if made is not cls:
        try:
            error: N = made(exc.errno, message)
        except Exception:  # a foreign subclass whose constructor wants other arguments
            return cls(exc.errno, message)
        for name, value in vars(exc).items():
            if name not in vars(error):
                setattr(error, name, value)
        return error
    return cls(exc.errno, message)


def _socket_class(exc: OSError) -> type:
    """The class an ``except`` written for pymemcache names for ``exc``."""
    kind = type(exc)
    if not issubclass(kind, MemcacheError):
        return kind
    carried = _carried.get(kind)
    if carried is not None:
        return carried
    return TimeoutError if isinstance(exc, TimeoutError) else OSError


# combined class -> the socket error class it stands for
_carried: Dict[type, type] = {}


def _combine(cls: type, kind: type) -> type:
    name = f"{cls.__name__}[{kind.__name__}]"
    try:
        made = type(
            name,
            (cls, kind),
            {"__module__": cls.__module__, "__qualname__": name, "__reduce__": _reduce},
        )
    except TypeError:  # layouts or metaclasses that do not mix: the pymc class alone
        made = cls
    made = _combined.setdefault((cls, kind), made)
    if made is not cls:
        _carried[made] = kind
    return made


def _reduce(self: BaseException) -> Tuple[Any, ...]:
    # Pickled as its two classes (the combined class has no importable name).
    pymc_class, kind = type(self).__bases__
    return (_rebuild, (pymc_class, kind, self.args), dict(vars(self)))


def _rebuild(pymc_class: type, kind: type, args: Tuple[Any, ...]) -> BaseException:
    made = _combined.get((pymc_class, kind)) or _combine(pymc_class, kind)
    return made(*args)  # type: ignore[no-any-return]
