"""How a request goes out and a reply comes in on one blocking socket: the senders (with
the gevent yield), kernel timeouts, the compiled exchange, and the command's deadline.

Layer: transport. Decides nothing about what a reply means.
"""

from __future__ import annotations

import _socket
import errno
import socket
import ssl
import struct
import sys
import time
import types
from typing import Any, Callable, Final, Optional, Tuple

from ..exceptions import MemcacheTimeoutError
from ..options import server_name
from ..protocol import SPEEDUPS

__all__ = [
    "COMPILED_EXCHANGE",
    "DEADLINE_SLACK",
    "RECV_SIZE",
    "Exchange",
    "Sender",
    "command_deadline",
    "exchange",
    "is_tls",
    "kernel_timed",
    "recv_now_for",
    "send_plain",
    "send_tls",
    "sender_for",
    "set_timeout",
    "set_wait",
    "time_left",
]

#: Bytes asked of the kernel per recv().
RECV_SIZE = 65536

#: ``time.monotonic``, bound once: the hot paths read the clock before each send (a vDSO
#: call, no system call) so that the slow path can hold the command to its deadline.
monotonic: Final = time.monotonic


def send_plain(sock: Any, request: bytes, started: float) -> bool:
    """``sendall``, but one plain ``send()`` when that takes it all, as it nearly always
    does for a request: under gevent that skips a layer of Python per command. The rest of
    a request one send did not take goes out by the command's deadline (``started``, a
    ``time.monotonic()`` value taken before the send, plus the socket's timeout: see
    :func:`_send_rest`). Returns whether it had to: then the reply too is read by that
    deadline from its first ``recv`` (the send may have used most of it)."""
    sent = sock.send(request)
    if sent < len(request):
        _send_rest(sock, memoryview(request)[sent:], started)
        return True
    return False


#: A TLS request longer than this may have waited for the peer to read it (a TLS socket's
#: ``send`` writes the whole request or fails, so a slow one does not show otherwise): its
#: reply is read by the command's deadline from its first ``recv``.
_TLS_QUICK_SEND: Final = 65536


def send_tls(sock: Any, request: bytes, started: float) -> bool:
    """:func:`send_plain` for a TLS socket, whose ``send`` takes the whole request (or fails
    after the socket's timeout)."""
    sent = sock.send(request)
    if sent < len(request):  # (not with CPython's ssl; kept for other TLS sockets)
        _send_rest(sock, memoryview(request)[sent:], started)
        return True
    return bool(sent > _TLS_QUICK_SEND)


#: Where the cooperative socket classes live (checked along the socket class's MRO, so a
#: subclass counts too): their ``recv`` switches greenlets only when it has to wait.
COOPERATIVE_SOCKET_MODULES = ("gevent.", "eventlet.")


def _yielding_sender(send: Sender, sleep: Callable[[float], Any]) -> Sender:
    """:func:`send_plain`, then ``sleep(0)``: one turn for the other greenlets. A cooperative
    socket's ``recv`` returns at once when the reply is already buffered, without yielding,
    so a greenlet sending command after command (or ``noreply`` commands, which read
    nothing) would starve the rest. Yielding between the send and the read costs one switch
    per command and, as the reply has usually arrived when the turn comes back, spares the
    wait on the socket that would often follow."""

    def send_then_yield(sock: Any, request: bytes, started: float) -> bool:
        slow = send(sock, request, started)
        sleep(0)
        return slow

    return send_then_yield


# A plain socket with a timeout costs a poll() before every send and recv: CPython waits
# for readiness first, then calls. A kernel timeout (SO_RCVTIMEO/SO_SNDTIMEO) on a blocking
# socket bounds the same calls with no extra system call: about 8% of a get. On its
# expiry the call fails with EAGAIN, which is a MemcacheTimeoutError like socket.timeout.
_KERNEL_TIMEOUTS: Final = sys.platform.startswith("linux") and hasattr(socket, "SO_RCVTIMEO")
KERNEL_TIMEOUT_ERRNOS: Final = frozenset((errno.EAGAIN, errno.EWOULDBLOCK))


def kernel_timed(sock: Any) -> bool:
    """Whether ``sock``'s timeouts are the kernel's (SO_RCVTIMEO/SO_SNDTIMEO on a blocking
    socket: the stdlib's own socket class on Linux) rather than ``settimeout``'s (TLS,
    gevent and other sockets keep their own timeout machinery; under gevent's patch_all
    socket.socket is gevent's: non-blocking underneath, waiting in the hub)."""
    cls = type(sock)
    return _KERNEL_TIMEOUTS and cls.__module__ == "socket" and cls.__qualname__ == "socket"


#: How a connection does a whole round trip in one call where it can: ``(sock, request,
#: started) -> bytes`` (see :func:`_compiled_exchange`).
Exchange = Callable[[Any, bytes, float], bytes]


def _no_exchange(sock: Any, request: bytes, started: float) -> bytes:
    raise RuntimeError("pymc's compiled round trip is not in use")


def _compiled_exchange() -> Optional[Exchange]:
    """``pymc.speedups.exchange``, when the compiled module is in use and has it: a send of
    the whole request and one recv of up to :data:`RECV_SIZE` bytes with the GIL released
    once, where Python's socket releases it for each (under many threads each release is a
    hand-off of the GIL to another thread, and the command waits to get it back). It
    returns what the recv returned (b"" at EOF) and raises what the socket's own calls
    raise; a send that took only part of the request, or a signal, bounds every later wait
    in it by the command's deadline (``started`` plus the socket's timeout), as
    :func:`_send_rest` does. Only for a plain blocking socket with kernel timeouts (see
    :func:`kernel_timed`); TLS, gevent and other sockets keep the Python calls."""
    if not (SPEEDUPS and _KERNEL_TIMEOUTS):
        return None
    from ..protocol import speedups

    if getattr(speedups, "EXCHANGE_RECV_SIZE", None) != RECV_SIZE:
        return None  # (a build older than this file, or another platform)
    return speedups.exchange


COMPILED_EXCHANGE: Final = _compiled_exchange()
exchange: Final[Exchange] = COMPILED_EXCHANGE or _no_exchange


def _timeval(timeout: Optional[float]) -> bytes:
    """A ``struct timeval`` for SO_RCVTIMEO/SO_SNDTIMEO (None: zero, which waits forever)."""
    if timeout is None:
        return struct.pack("@ll", 0, 0)
    seconds = int(timeout)
    micros = round((timeout - seconds) * 1_000_000)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, 0
    if seconds == 0 and micros == 0:  # (a zero timeval would mean no timeout at all)
        micros = 1
    return struct.pack("@ll", seconds, micros)


def set_timeout(sock: Any, timeout: Optional[float]) -> None:
    """Bound every later send and recv of a connected ``sock`` by ``timeout`` seconds
    (None: wait forever): in the kernel on a plain stdlib socket, else ``settimeout``."""
    if timeout is None or not kernel_timed(sock):
        sock.settimeout(timeout)
        return
    timeval = _timeval(timeout)
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def set_wait(sock: Any, seconds: Optional[float], option: int) -> None:
    """Bound the next waits of ``sock`` by ``seconds`` (None: forever): its recv
    (``option`` SO_RCVTIMEO) or its send (SO_SNDTIMEO) in the kernel on a plain socket,
    both through ``settimeout`` on any other. For a command's deadline: only on the slow
    path, after one recv or send did not finish the work."""
    if kernel_timed(sock):
        sock.setsockopt(socket.SOL_SOCKET, option, _timeval(seconds))
    else:
        sock.settimeout(seconds)


#: A socket whose wait was cut to a deadline's remaining time is cut again only once the
#: deadline came this much closer, so a reply arriving in many chunks costs few system
#: calls; a command can overrun its deadline by at most this.
DEADLINE_SLACK: Final = 0.002


def command_deadline(timeout: Optional[float]) -> Optional[float]:
    """The ``time.monotonic()`` value by which a command that starts now, with
    ``timeout``, must be done; None when ``timeout`` is None (no deadline).

    ``timeout`` bounds a whole command, from its start, not each wait on the socket: a
    :class:`Client` reads the clock before it sends, and looks at the deadline only once
    one recv did not finish a reply (or one send a request), so the common case pays one
    vDSO clock read. A command of several requests takes one with this before the first
    and passes it to each :meth:`Client.request`; a fan-out over many connections
    (``HashClient``) takes one for each round, before its first send, and passes it to
    :meth:`Client.send` and :meth:`Client.receive`, or waits on its sockets itself for at
    most :func:`time_left` seconds."""
    return None if timeout is None else time.monotonic() + timeout


def time_left(deadline: Optional[float], server: Any = None) -> Optional[float]:
    """Seconds left before ``deadline`` (from :func:`command_deadline`; None: no
    deadline, None is returned). When none is left, raise :class:`MemcacheTimeoutError`
    (naming ``server``, if given)."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        where = f" talking to {server_name(server)}" if server is not None else ""
        raise MemcacheTimeoutError(
            errno.ETIMEDOUT, f"timed out{where}: the command did not finish within its timeout"
        )
    return left


def _send_timeout(sock: Any) -> Optional[float]:
    if kernel_timed(sock):
        size = struct.calcsize("@ll")
        seconds, micros = struct.unpack(
            "@ll", sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, size)
        )
        return (seconds + micros / 1_000_000) or None
    return sock.gettimeout()  # type: ignore[no-any-return]


def _send_rest(sock: Any, rest: memoryview, started: float) -> None:
    """Send ``rest`` (what one send() did not take) by the command's deadline: the socket's
    timeout from ``started`` (see :func:`send_plain`), however slowly the peer reads (a kernel
    timeout, as a sendall over it, would bound each send() alone). The slow path of a
    large request."""
    timeout = _send_timeout(sock)
    if timeout is None:
        sock.sendall(rest)
        return
    deadline = started + timeout
    wait = timeout
    while rest:
        left = deadline - monotonic()
        if left <= 0:
            raise socket.timeout("timed out sending a request")
        if wait - left > DEADLINE_SLACK:
            set_wait(sock, left, socket.SO_SNDTIMEO)
            wait = left
        rest = rest[sock.send(rest) :]
    if wait != timeout:  # (after a failure the connection is closed instead)
        set_wait(sock, timeout, socket.SO_SNDTIMEO)


#: How a connection sends a request: ``(sock, request, started) -> slow`` (see :func:`send_plain`).
Sender = Callable[[Any, bytes, float], bool]


def is_tls(sock: Any) -> bool:
    """Whether ``sock`` is a TLS socket (the stdlib's, or gevent's, which is not one)."""
    return isinstance(sock, ssl.SSLSocket) or callable(getattr(sock, "cipher", None))


def sender_for(sock: Any) -> Sender:
    """How a connection sends: :func:`send_plain` on a blocking socket, so threads pay nothing
    (:func:`send_tls` on TLS); on a gevent or eventlet socket, a sender that yields once
    per command, with ``time.sleep`` when it is patched, else with the ``sleep`` of the
    library that made the socket (already loaded: pymc imports neither library, it only
    looks at where the socket's class comes from)."""
    plain: Sender = send_tls if is_tls(sock) else send_plain
    for cls in type(sock).__mro__:
        module = getattr(cls, "__module__", None) or ""
        if module.startswith(COOPERATIVE_SOCKET_MODULES):
            break
    else:
        return plain
    sleep: Any = time.sleep
    if isinstance(sleep, types.BuiltinFunctionType):  # time is not patched
        sleep = getattr(sys.modules.get(module.partition(".")[0]), "sleep", None)
        if not callable(sleep):
            return plain
    if plain is send_plain:
        raw = _wrapped_socket(sock)
        if raw is not None:
            return _raw_yielding_sender(sock, raw.send, sleep)
    return _yielding_sender(plain, sleep)


def recv_now_for(sock: Any) -> Optional[Tuple[Any, Callable[[int], bytes]]]:
    """For a gevent socket (not TLS) whose sender yields once per command, ``(sock, the
    recv of the stdlib socket it wraps)``: after that turn the reply has usually arrived,
    and the wrapped socket's own ``recv`` takes it without gevent's layer of Python (when
    it has not, it fails with BlockingIOError at once, and gevent's ``recv`` waits for it,
    in the hub). Else None."""
    if is_tls(sock):
        return None
    raw = _wrapped_socket(sock)
    return None if raw is None else (sock, raw.recv)


def _wrapped_socket(sock: Any) -> Any:
    """The stdlib socket a gevent socket wraps (gevent keeps it as ``_sock``, for code that
    needs the socket not tied to the hub), when it is a plain non-blocking one on the same
    descriptor and the gevent socket's ``send`` and ``recv`` are gevent's own (a subclass
    that changes them is used as it is); else None."""
    cls = type(sock)
    for name in ("send", "recv"):
        if not (getattr(getattr(cls, name, None), "__module__", None) or "").startswith("gevent."):
            return None
    raw = getattr(sock, "_sock", None)
    if (
        isinstance(raw, _socket.socket)
        and raw.gettimeout() == 0.0
        and raw.fileno() == sock.fileno()
    ):
        return raw
    return None


def _raw_yielding_sender(
    own: Any, raw_send: Callable[[bytes], int], sleep: Callable[[float], Any]
) -> Sender:
    """:func:`_yielding_sender` for the gevent socket ``own``, which wraps a non-blocking
    stdlib socket: the first ``send()`` goes straight to that socket (``raw_send``, its
    bound method), skipping gevent's layer of Python. Only what it could not take goes
    through the gevent socket (:func:`_send_rest`: it waits in the hub, by the command's
    deadline). Then the same ``sleep(0)``. (Another socket in ``own``'s place -- a
    wrapper put there by a test -- is sent to as it is.)"""

    def send_then_yield(sock: Any, request: bytes, started: float) -> bool:
        if sock is not own:
            slow = send_plain(sock, request, started)
            sleep(0)
            return slow
        try:
            sent = raw_send(request)
        except BlockingIOError:  # (the socket's buffer is full: wait, in the hub)
            sent = 0
        if sent < len(request):
            _send_rest(sock, memoryview(request)[sent:], started)
            sleep(0)
            return True
        sleep(0)
        return False

    return send_then_yield
