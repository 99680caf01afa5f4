"""The keyed dispatch of a cluster client: one key, one node, the node's own Client method.

:func:`keyed` makes a :class:`~pymc.cluster.HashClient` method of a :class:`~pymc.client.Client`
one: it finds the node the key (the first argument) lives on and runs the method there, through
``HashClient._run``. The tables say what each command returns when its node fails and
``ignore_exc`` hides it, which keys it takes, and which commands check their key first.

Layer: imports ``client`` (``Client``, ``resolve_noreply``) and ``protocol.meta``
(``MetaResult``).
"""

from __future__ import annotations

import inspect
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Concatenate,
    Dict,
    Optional,
    ParamSpec,
    Tuple,
    TypeVar,
)

from ..client import Client, resolve_noreply
from ..protocol.meta import MetaResult

if TYPE_CHECKING:
    from .client import HashClient

__all__ = ["ANY_KEY", "NODE_CHECKS_KEY", "ON_FAILURE", "keyed", "split_key", "went_noreply"]

P = ParamSpec("P")
R = TypeVar("R")

_MISSING: Any = object()


def _default_arg(position: int, name: str, fallback: Any = None) -> Callable[..., Any]:
    """What ignore_exc returns: the caller's ``default`` argument (by position or name)."""

    def pick(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        if name in kwargs:
            return kwargs[name]
        return args[position] if len(args) > position else fallback

    return pick


def _both_defaults(args: Tuple[Any, ...], kwargs: Dict[str, Any], offset: int = 0) -> Any:
    return (
        _default_arg(offset, "default")(args, kwargs),
        _default_arg(offset + 1, "cas_default")(args, kwargs),
    )


#: command -> what it returns with ignore_exc when its node fails
ON_FAILURE: Dict[str, Any] = {
    "get": _default_arg(0, "default"),
    "gat": _default_arg(1, "default"),
    "gets": _both_defaults,
    "gats": lambda a, kw: _both_defaults(a, kw, 1),
    "set": False,
    "add": False,
    "replace": False,
    "append": False,
    "prepend": False,
    "cas": False,
    "delete": False,
    "touch": False,
    "incr": None,
    "decr": None,
    "meta_get": MetaResult("miss"),
    "lease_get": MetaResult("miss"),
    "lease_set": False,
    "lease_release": False,
    "meta_set": MetaResult("not_stored"),
    "meta_delete": MetaResult("not_found"),
    "meta_arithmetic": MetaResult("not_found"),
    "get_cas": lambda a, kw: (_default_arg(0, "default")(a, kw), None),
    "set_cas": False,
    "invalidate": False,
}


# The meta commands take any str or bytes key (one that is no text key goes base64).
ANY_KEY = frozenset(
    [
        "meta_get",
        "lease_get",
        "lease_set",
        "lease_release",
        "meta_set",
        "meta_delete",
        "meta_arithmetic",
        "get_cas",
        "set_cas",
        "invalidate",
    ]
)


# Commands whose Client method checks its key before anything else (before any I/O, and
# before serializing a value), with the same rule as this client: HashClient leaves the check
# to the node's client, and makes it itself only when something fails first (no node, a
# resting node, a connection that failed), so a bad key always raises as a bad key, once.
NODE_CHECKS_KEY = frozenset(["get", "set", "add", "replace", "append", "prepend", "delete"])


# command -> where its Client method takes ``noreply`` (None: it takes none), as found
_NOREPLY_POSITION: Dict[str, Optional[int]] = {}


def went_noreply(
    command: str, args: Tuple[Any, ...], kwargs: Dict[str, Any], default_noreply: bool
) -> bool:
    """Whether keyed ``command``, called with ``args`` (the key first) and ``kwargs``,
    went out noreply."""
    position = _NOREPLY_POSITION.get(command, _MISSING)
    if position is _MISSING:
        names = list(inspect.signature(getattr(Client, command)).parameters)[1:]
        position = names.index("noreply") if "noreply" in names else None
        _NOREPLY_POSITION[command] = position
    if position is None:
        return False
    given = kwargs.get("noreply")
    if given is None and len(args) > position:
        given = args[position]
    return resolve_noreply(given, default_noreply)


def keyed(
    method: Callable[Concatenate[Client, P], R],
) -> Callable[Concatenate[HashClient, P], R]:
    """A HashClient method that runs ``method`` on the node its key (the first argument)
    belongs to, with what the command returns on a hidden failure (ignore_exc)."""
    command = method.__name__
    on_failure = ON_FAILURE[command]

    def call(self: HashClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if args:  # the key by position: the common case
            return self._run(command, args[0], args, kwargs, on_failure)  # type: ignore[arg-type,no-any-return]
        key, rest, kw = split_key(args, kwargs)
        return self._run(command, key, (key, *rest), kw, on_failure)  # type: ignore[no-any-return]

    call.__name__ = call.__qualname__ = command
    call.__doc__ = method.__doc__
    call.__wrapped__ = method  # type: ignore[attr-defined]
    return call


def split_key(
    args: Tuple[Any, ...], kwargs: Dict[str, Any]
) -> Tuple[Any, Tuple[Any, ...], Dict[str, Any]]:
    """The key (by position or as ``key=``) and the other arguments."""
    if args:
        return args[0], args[1:], kwargs
    if "key" not in kwargs:
        raise TypeError("missing the key argument")
    rest = dict(kwargs)
    return rest.pop("key"), (), rest
