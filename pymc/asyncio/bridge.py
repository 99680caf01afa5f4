"""The greenlet bridge: the sync command set runs unchanged under asyncio.

:func:`run_sync` (a coroutine) runs a plain function in a new greenlet whose parent is the
greenlet of the running task; inside it, :func:`await_` hands an awaitable to that parent,
which awaits it on the event loop and switches back with its result, or throws its
exception in. A cancellation of the parent's await (``task.cancel()``, ``asyncio.timeout``,
``wait_for``) is thrown into the function at its ``await_`` too, so whatever it holds is
given up as for any other exception, and then leaves :func:`run_sync`.

Layer: asyncio.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, TypeVar

try:
    from greenlet import getcurrent, greenlet
except ImportError as exc:  # pragma: no cover (the extra is not installed)
    raise ImportError(
        "pymc.asyncio needs greenlet: install pymc with its asyncio extra "
        "(pip install 'pymc-memcached[asyncio]')"
    ) from exc

__all__ = ["BridgeError", "await_", "in_bridge", "run_sync"]

T = TypeVar("T")


class BridgeError(RuntimeError):
    """:func:`await_` was called outside :func:`run_sync`."""


class _Bridged(greenlet):  # type: ignore[misc]
    """The greenlet :func:`run_sync` runs its function in (its type marks it)."""


async def run_sync(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` in a greenlet whose :func:`await_` calls are awaited
    here, on the running loop; return its result (or raise its exception)."""
    parent = getcurrent()
    child = _Bridged(fn, parent)
    # The task's context (contextvars) is the function's too, as in a plain call.
    child.gr_context = parent.gr_context
    result: Any = child.switch(*args, **kwargs)
    while not child.dead:
        try:
            value = await result
        except BaseException as exc:  # (CancelledError too: given to fn at its await_)
            result = child.throw(exc)
        else:
            result = child.switch(value)
    return result  # type: ignore[no-any-return]


def await_(awaitable: Awaitable[T]) -> T:
    """Inside :func:`run_sync`: wait for ``awaitable`` on the event loop and return its
    result (or raise its exception, a cancellation included)."""
    current = getcurrent()
    if type(current) is not _Bridged:
        close = getattr(awaitable, "close", None)
        if close is not None:
            close()  # (no "coroutine was never awaited" warning on top of the error)
        raise BridgeError(
            "await_() was called outside pymc.asyncio's bridge (run_sync): a sync command "
            "of pymc.asyncio can only run inside it"
        )
    return current.parent.switch(awaitable)  # type: ignore[no-any-return]


def in_bridge() -> bool:
    """Whether the caller runs inside :func:`run_sync` (so :func:`await_` may be used)."""
    return type(getcurrent()) is _Bridged
