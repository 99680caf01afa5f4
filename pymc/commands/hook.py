"""The ``on_command`` hook: :func:`begin_command`/:func:`end_command`, and the observed
twin of a client class, whose commands (:data:`COMMANDS`) run observed.

Layer: commands.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from ..options import CommandEnd, CommandHook, ServerSpec

__all__ = ["COMMANDS", "begin_command", "end_command", "observe"]

logger = logging.getLogger("pymc")

_MISSING: Any = object()

#: The commands of a Client that the pooled, retrying and hashing layers pass through.
COMMANDS: Tuple[str, ...] = tuple(
    [
        "set",
        "set_many",
        "set_multi",
        "add",
        "replace",
        "append",
        "prepend",
        "cas",
        "get",
        "get_many",
        "get_multi",
        "gets",
        "gets_many",
        "gets_multi",
        "gat",
        "gats",
        "delete",
        "delete_many",
        "delete_multi",
        "incr",
        "decr",
        "touch",
        "stats",
        "cache_memlimit",
        "version",
        "verbosity",
        "flush_all",
        "quit",
        "shutdown",
        "raw_command",
        "cluster_config",
        "meta_get",
        "lease_get",
        "lease_set",
        "lease_release",
        "meta_set",
        "meta_delete",
        "meta_arithmetic",
        "meta_noop",
        "meta_get_many",
        "meta_set_many",
        "meta_delete_many",
        "get_cas",
        "set_cas",
        "invalidate",
    ]
)


# ---------------------------------------------------------------------- the command hook
#
# ``on_command`` (a Client option, so PooledClient, HashClient and ElastiCacheClient pass it
# to every connection they make) observes each command: it is called as the command starts
# and what it returns is told how it ended. A Client made with it binds, once, observed
# versions of its command methods on itself; a Client made without it runs the class's
# methods untouched, so an unset hook costs nothing on any path.

#: Where each command's keys are: ``(parameter, many)``, the parameter being the first one
#: (``many``: an iterable of keys, or a mapping whose keys they are). Other commands have no
#: keys.
_ONE_KEY: Tuple[str, ...] = (
    "set",
    "add",
    "replace",
    "append",
    "prepend",
    "cas",
    "get",
    "gets",
    "gat",
    "gats",
)
_ONE_KEY += ("delete", "incr", "decr", "touch", "meta_get", "lease_get", "meta_set", "meta_delete")
_ONE_KEY += ("meta_arithmetic", "get_cas", "set_cas", "invalidate", "lease_set", "lease_release")
_MANY_KEYS: Tuple[str, ...] = (
    "get_many",
    "get_multi",
    "gets_many",
    "gets_multi",
    "delete_many",
    "delete_multi",
)
_MANY_KEYS += ("meta_get_many", "meta_delete_many")
_KEYS_OF: Dict[str, Tuple[str, bool]] = {
    **{name: ("key", False) for name in _ONE_KEY},
    **{name: ("values", True) for name in ("set_many", "set_multi", "meta_set_many")},
    **{name: ("keys", True) for name in _MANY_KEYS},
}


def begin_command(
    hook: CommandHook, command: str, keys: Tuple[Any, ...], server: ServerSpec
) -> Optional[CommandEnd]:
    """Call ``hook(command, keys, server)`` as a command starts, and return what it returns:
    None, or a callable that :func:`end_command` calls once when the command ends.

    ``command`` is the name of the method called (``"get"``, ``"set_many"``, ...), ``keys``
    the caller's keys as given (without the key prefix; for ``stats``, its arguments, such
    as ``("slabs",)``; empty for the other commands without keys),
    ``server`` the node's ``(host, port)`` or UNIX socket path. The hook runs in the
    caller's thread (or greenlet), in its context, so a tracer's span started there nests
    under the caller's span. A fan-out over several nodes starts one observation per node
    before it ends any, so observations may overlap: a hook must not assume they nest.

    A hook that raises an ``Exception`` is logged and ignored: the command runs as if
    there were no hook. A hook must not use the client it observes: the caller holds the
    node's connection, so on a client with one connection per node (a HashClient without
    pooling) the hook's own command waits ``pool_timeout`` for it, then fails."""
    try:
        return hook(command, keys, server)
    except Exception:
        logger.exception("pymc: the on_command hook failed at the start of %s", command)
        return None


def end_command(end: Optional[CommandEnd], error: Optional[BaseException]) -> None:
    """Tell ``end`` (what :func:`begin_command` returned) how the command ended: None on
    success, else the exception it raised (any ``BaseException``). An ``Exception`` from
    ``end`` is logged and ignored."""
    if end is None:
        return
    try:
        end(error)
    except Exception:
        logger.exception("pymc: the on_command hook failed at the end of a command")


def observe(client: Any) -> None:
    """Make ``client`` run its commands observed by its ``options.on_command``: its class
    becomes the observed twin of its class. A command that another one runs
    (``get_cas`` runs ``meta_get``) is observed once, as the outer one.

    A class, not methods bound on the instance: those would hold the client (a reference
    cycle, so a dropped client kept its socket until the cycle collector ran), and a
    ``copy.copy()`` of the client would run them on the original."""
    client.__class__ = _observed_class(type(client))


# The observed twin of each Client class (``type(client)``, a subclass a user made too).
_observed_classes: Dict[type, type] = {}


def _observed_class(cls: type) -> type:
    found = _observed_classes.get(cls)
    if found is None:
        if cls.__dict__.get("_observed_twin"):  # already one (a twin of a twin is itself)
            return cls
        namespace: Dict[str, Any] = {name: _observed(name, getattr(cls, name)) for name in COMMANDS}
        namespace.update(
            __slots__=(),  # the instance's layout stays its class's: __class__ can change
            __module__=cls.__module__,
            __qualname__=cls.__qualname__,
            __doc__=cls.__doc__,
            _observed_twin=True,
        )
        # setdefault: two threads making the first hooked client of a class agree on one.
        found = _observed_classes.setdefault(cls, type(cls.__name__, (cls,), namespace))
    return found


#: Commands without keys whose arguments the hook is given as ``keys``, so that a tracer
#: can tell ``stats("slabs")`` from ``stats()``.
_ARGS_AS_KEYS = frozenset({"stats"})


def _observed(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    where = _KEYS_OF.get(name)
    args_as_keys = name in _ARGS_AS_KEYS

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        hook = self.options.on_command
        if self._observing or hook is None:
            return method(self, *args, **kwargs)
        keys: Tuple[Any, ...] = args if args_as_keys else ()
        if where is not None:
            param, many = where
            by_name = not args
            arg = kwargs.get(param, _MISSING) if by_name else args[0]
            if arg is not _MISSING:
                if not many:
                    keys = (arg,)
                elif isinstance(arg, (list, tuple, Mapping)):
                    keys = tuple(arg)
                else:  # an iterator is read once, here, and passed on as a tuple (what
                    keys = tuple(arg)  # cannot be read raises as the command would)
                    if by_name:
                        kwargs[param] = keys
                    else:
                        args = (keys, *args[1:])
        end = begin_command(hook, name, keys, self.server)
        try:
            self._observing = True
            result = method(self, *args, **kwargs)
        except BaseException as exc:
            self._observing = False
            end_command(end, exc)
            raise
        self._observing = False
        end_command(end, None)
        return result

    return call
