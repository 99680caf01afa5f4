"""Looks at sockets without waiting (stray bytes, the server's close, readiness for a
fan-out), and what a close in answer to a request means.

Layer: transport.
"""

from __future__ import annotations

import importlib
import select
import selectors
import ssl
import sys
import types
from typing import Any, Callable, Dict, Final, List, Sequence

from ..exceptions import MemcacheUnexpectedCloseError, MemcacheUnsupportedCommandError
from .io import COOPERATIVE_SOCKET_MODULES

__all__ = [
    "never",
    "quiet_connections",
    "readiness_poll",
    "refused_by_close",
    "stray_check",
    "unpatched_poll",
]

#: Patched ``select.poll`` -> the original it replaced (see :func:`unpatched_poll`).
_ORIGINAL_POLLS: Dict[Any, Any] = {}


def unpatched_poll() -> Any:
    """``select.poll`` as the operating system gives it, or None where there is none.

    :meth:`Client.is_clean` polls with a zero timeout: it never waits, so it needs no
    cooperation from an event loop. gevent's patched ``poll`` makes even that a trip
    through the hub (a timer and a switch: about 20 us, and every other ready greenlet runs
    before the check returns), paid on each checkout of a connection that sat idle. Under
    gevent's monkey-patching the original is found through ``gevent.monkey.get_original``
    (pymc imports no gevent: it is already loaded when ``select`` is patched), looked up
    on each call as the patching may come after ``import pymc``."""
    poll = getattr(select, "poll", None)
    if poll is None or isinstance(poll, types.BuiltinFunctionType):
        return poll
    original = _ORIGINAL_POLLS.get(poll)
    if original is None:
        original = poll
        get_original = getattr(sys.modules.get("gevent.monkey"), "get_original", None)
        if callable(get_original):
            try:
                found = get_original("select", "poll")
            except Exception:  # an unexpected gevent: keep what select has
                found = None
            if isinstance(found, types.BuiltinFunctionType):
                original = found
        _ORIGINAL_POLLS[poll] = original
    return original


def never(wait: int) -> bool:
    return False


def stray_check(sock: Any) -> Callable[[int], Any]:
    """A call, made once per connection, that says (called with 0: without waiting)
    whether ``sock`` has bytes nobody asked for or was closed by the server (truthy),
    through the operating system's ``poll`` (see :func:`unpatched_poll`) registered once:
    one system call per use. Where there is no ``poll`` (Windows), a selector each time."""
    poll = unpatched_poll()
    if poll is None:

        def select_check(wait: int) -> bool:
            with selectors.DefaultSelector() as selector:
                selector.register(sock, selectors.EVENT_READ)
                return bool(selector.select(wait))

        return select_check
    poller = poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    if isinstance(sock, ssl.SSLSocket):  # decrypted bytes inside the TLS layer count too
        return lambda wait: sock.pending() or poller.poll(wait)
    return poller.poll  # type: ignore[no-any-return]


def quiet_connections(conns: Sequence[Any]) -> List[bool]:
    """For each connection, whether its socket is open with nothing unread and no close from
    the server, seen in one ``poll`` over them all, without waiting: what
    :meth:`Client.send` looks for on its own, one system call per connection, before each
    request (bytes nobody asked for, a proxy's late duplicate, the server's close). A
    connection found quiet is sent to with ``looked=True``; any other (closed, not
    connected, where there is no ``poll``) makes its own look in ``send``, as alone.
    Under gevent, the operating system's poll (see :func:`unpatched_poll`): a look that
    never waits needs no trip through the hub."""
    quiet = [False] * len(conns)
    poll = unpatched_poll()
    if poll is None:
        return quiet
    poller = poll()
    index: Dict[int, int] = {}
    try:
        for i, conn in enumerate(conns):
            sock = conn.sock
            if sock is None or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                continue  # (decrypted bytes already inside the TLS layer: unread)
            fd = sock.fileno()
            if fd < 0:
                continue
            poller.register(fd, select.POLLIN | select.POLLPRI)
            index[fd] = i
            quiet[i] = True
        if index:
            # POLLIN/POLLPRI: unread bytes, or EOF; POLLHUP/POLLERR/POLLNVAL come anyway.
            for fd, _ in poller.poll(0):
                quiet[index[fd]] = False
    except (OSError, ValueError):
        return [False] * len(conns)  # each connection looks on its own
    return quiet


#: Socket class -> what makes a poll object for it (see :func:`readiness_poll`).
_READINESS_POLLS: Dict[type, Any] = {}


def readiness_poll(sock: Any) -> Any:
    """What makes a ``poll`` object that waits for ``sock`` as its own ``recv`` would, or
    None where there is none (eventlet, Windows: then wait in each socket's own ``recv``).

    For a blocking socket, the operating system's ``poll`` (even under gevent's
    ``patch_all``: a blocking socket blocks its thread anyway); for a gevent socket,
    gevent's cooperative ``poll``, whether or not ``select`` is patched (``socket_module=
    gevent.socket`` without patching), so a waiting greenlet yields to the hub. Never
    ``select``, which fails on descriptors of 1024 and up. Kept per socket class."""
    cls = type(sock)
    found = _READINESS_POLLS.get(cls, _MISSING_POLL)
    if found is not _MISSING_POLL:
        return found
    found = None
    for klass in cls.__mro__:
        module = getattr(klass, "__module__", None) or ""
        if module.startswith(COOPERATIVE_SOCKET_MODULES):
            if module.startswith("gevent."):  # (gevent is loaded: the socket is its own)
                try:
                    found = getattr(importlib.import_module("gevent.select"), "poll", None)
                except ImportError:
                    found = None
            break
    else:
        found = unpatched_poll()
    _READINESS_POLLS[cls] = found
    return found


_MISSING_POLL: Any = object()


#: The commands every memcached server and proxy (twemproxy, mcrouter) takes: a close in
#: answer to one of them is a failure of the connection, whatever came before.
_COMMON_COMMANDS: Final = frozenset(
    [
        *(b"get", b"gets", b"set", b"add", b"replace", b"append", b"prepend", b"cas"),
        *(b"delete", b"incr", b"decr", b"touch", b"quit", b"version"),
    ]
)


def refused_by_close(request: bytes, error: BaseException, server: str) -> BaseException:
    """``error`` as the caller should see it. A connection closed before a byte of reply
    came, in answer to a ``request`` whose command not every server or proxy supports, is
    most likely that command refused (twemproxy closes the connection on a command it does
    not know): a :class:`MemcacheUnsupportedCommandError` naming it. Anything else is
    ``error`` itself."""
    if type(error) is not MemcacheUnexpectedCloseError or not error.before_reply:
        return error
    end = len(request)
    for stop in (b" ", b"\r\n"):
        found = request.find(stop, 0, end)
        if found >= 0:
            end = found
    command = request[:end]
    if command in _COMMON_COMMANDS:
        return error
    name = command.decode("ascii", "replace")
    refused = MemcacheUnsupportedCommandError(
        f"{server} closed the connection in answer to {name}, before any reply: the server "
        f"or proxy most likely does not support {name} (twemproxy, for one, closes the "
        "connection on a command it does not know)"
    )
    refused.before_reply = True
    return refused
