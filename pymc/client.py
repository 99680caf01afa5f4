"""`Client`: one blocking socket to one memcached server, and the whole command set.

A Client is not thread-safe: share a :class:`~pymc.pool.PooledClient` instead.

Safety rule: whatever goes wrong in the middle of a command (a socket error, a timeout, a
malformed reply, ``gevent.Timeout``, ``KeyboardInterrupt``) closes the socket before the
exception leaves the Client. The next call reconnects, so no caller ever reads the reply
meant for another command.

Layer: imports ``exceptions``, ``protocol`` and ``serde`` only. Every command goes out
through :meth:`Client.send` and its reply comes back through :meth:`Client.receive`, read
and judged by ``protocol``'s ``Expect*`` readers and ``RULES``.
"""

from __future__ import annotations

import _socket
import dataclasses
import errno
import functools
import importlib
import logging
import select
import selectors
import socket
import ssl
import struct
import sys
import time
import types
from typing import (
    Any,
    Callable,
    Concatenate,
    Container,
    Dict,
    Final,
    Iterable,
    List,
    Mapping,
    NoReturn,
    Optional,
    ParamSpec,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

from .exceptions import (
    MemcacheAuthenticationError,
    MemcacheAuthNotRequiredError,
    MemcacheConnectError,
    MemcacheConnectTimeoutError,
    MemcacheError,
    MemcacheIllegalInputError,
    MemcacheLeaseTimeoutError,
    MemcacheNetworkError,
    MemcacheProtocolError,
    MemcacheTimeoutError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    MemcacheUnsupportedCommandError,
    network_error,
)
from .protocol import (
    END,
    MAX_KEY_LENGTH,
    NEED_DATA,
    RULES,
    SPEEDUPS,
    STORED,
    ClusterConfig,
    ErrorReply,
    Expect,
    ExpectConfig,
    ExpectRaw,
    ExpectReplies,
    ExpectStats,
    ExpectSync,
    ExpectValues,
    Reader,
    Reply,
    Rule,
    asks_for_auth,
    encode_auth,
    encode_auth_probe,
    encode_cache_memlimit,
    encode_config_get,
    encode_delete,
    encode_flush_all,
    encode_incr_decr,
    encode_retrieval,
    encode_shutdown,
    encode_stats,
    encode_storage,
    encode_sync,
    encode_touch,
    encode_verbosity,
    expect_auth_probe,
    validate_key,
    validate_keys,
)
from .protocol.meta import (
    OPAQUE_MASK,
    ExpectMeta,
    ExpectMetaEach,
    ExpectMetaQuiet,
    MetaResult,
    encode_meta_arithmetic,
    encode_meta_delete,
    encode_meta_get,
    encode_meta_noop,
    encode_meta_set,
    encode_quiet_gets,
    flags_vivify,
    lease_get_template,
    lease_key,
    meta_key,
)
from .serde import DefaultSerde, LegacyWrappingSerde, Serde, coerce_to_bytes

__all__ = [
    "DEADLINE_SLACK",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "Client",
    "ClientOptions",
    "CommandEnd",
    "CommandHook",
    "Commands",
    "KeepaliveOpts",
    "begin_command",
    "command_deadline",
    "decode_values",
    "end_command",
    "meta_batches",
    "normalize_server_spec",
    "per_key_results",
    "quiet_deletes",
    "quiet_gets",
    "read_through",
    "readiness_poll",
    "refused_by_close",
    "request_chunks",
    "resolve_noreply",
    "time_left",
    "warn_if_config_endpoint",
]

logger = logging.getLogger("pymc")

Key = Union[str, bytes]
ServerSpec = Union[Tuple[str, int], str]
Item = Tuple[int, bytes, Optional[bytes]]  # flags, data, cas of one retrieved value
T = TypeVar("T")
A = TypeVar("A")

#: Bytes asked of the kernel per recv().
RECV_SIZE = 65536
#: A pipelined pass sends at most this many request bytes before it reads the replies, so
#: neither side can fill both socket buffers and wait for the other forever.
PIPELINE_BYTES = 32768
#: A quiet meta pipeline sends at most about this many bytes of request lines per batch.
QUIET_BATCH_BYTES = 65536
#: The longest ``get``/``gets`` line a multi-get sends by default: ElastiCache Serverless
#: refuses longer ones. Longer key lists go in several requests (``max_get_line``).
MAX_GET_LINE = 16384
#: How many keys' lease_get requests a Client remembers (then it starts afresh).
LEASE_TEMPLATES = 1024
#: Room a retrieval line keeps for its command, expiry and CRLF around the keys.
_GET_LINE_OVERHEAD = 32
_MISSING: Any = object()

#: Told how a command ended: None on success, else the exception it raised.
CommandEnd = Callable[[Optional[BaseException]], None]
#: ``on_command(command, keys, server)``, called as a command starts: see
#: :func:`begin_command`. What it returns (a :data:`CommandEnd`, or None) is called once
#: when the command ends.
CommandHook = Callable[[str, Tuple[Any, ...], ServerSpec], Optional[CommandEnd]]


#: The default seconds to connect, and to wait on a socket within a command. pymemcache
#: waits forever by default; pymc does not, so that a dead or black-holed server costs a
#: request thread two seconds, never the thread. Two seconds leave room for one lost SYN
#: (Linux resends after one second) and for a multi-megabyte reply; pass None to wait
#: forever as pymemcache does.
DEFAULT_CONNECT_TIMEOUT: Final = 2.0
DEFAULT_TIMEOUT: Final = 2.0


class KeepaliveOpts:
    """TCP keepalive settings (Linux): idle seconds, probe interval, probe count."""

    __slots__ = ("cnt", "idle", "intvl")

    def __init__(self, idle: int = 1, intvl: int = 1, cnt: int = 5) -> None:
        for name, value in (("idle", idle), ("intvl", intvl), ("cnt", cnt)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"KeepaliveOpts {name} must be an int >= 1, got {value!r}")
        self.idle = idle
        self.intvl = intvl
        self.cnt = cnt

    def __repr__(self) -> str:
        return f"KeepaliveOpts(idle={self.idle}, intvl={self.intvl}, cnt={self.cnt})"


def normalize_server_spec(server: Union[ServerSpec, Sequence[Any]]) -> ServerSpec:
    """``(host, port)``, ``"host:port"``, ``"[v6]:port"``, ``"host"`` (port 11211), or a
    UNIX socket path (``"/path"`` or ``"unix:/path"``)."""
    if isinstance(server, (tuple, list)):
        if len(server) != 2:
            raise ValueError(f"a server is (host, port), got {server!r}")
        return (str(server[0]), int(server[1]))
    if not isinstance(server, str):
        raise ValueError(f"unsupported server specification: {server!r}")
    if server.startswith("unix:"):
        return server[5:]
    if server.startswith("/"):
        return server
    host, port = server, 11211
    if server.startswith("["):
        host, sep, rest = server[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad server specification: {server!r}")
        if rest:
            port = int(rest[1:])
    elif server.count(":") == 1:
        host, _, port_text = server.partition(":")
        port = int(port_text)
    return (host, port)


def warn_if_config_endpoint(server: ServerSpec, client: str) -> None:
    """Log a warning when ``server`` looks like an ElastiCache configuration endpoint
    (``*.cfg.*``): used as a cache node, it sends every key to one node of the cluster."""
    host = server if isinstance(server, str) else server[0]
    if ".cfg." in host.lower():
        logger.warning(
            "pymc: %s looks like an ElastiCache configuration endpoint; %s uses it as a "
            "cache node, so every key goes to the one node its name points at. Use "
            "pymc.ElastiCacheClient(%r) to follow the cluster's nodes.",
            server_name(server),
            client,
            server_name(server),
        )


def server_name(server: ServerSpec) -> str:
    """``"host:port"`` for TCP, the path for UNIX sockets."""
    if isinstance(server, str):
        return server
    host, port = server
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclasses.dataclass(frozen=True)
class ClientOptions:
    """Everything a Client is configured with except its server.

    Frozen and shared: a pool hands the same object to every connection it makes, and the
    hash client to every node's pool, so options are checked once and never copied about.
    """

    serde: Serde
    connect_timeout: Optional[float] = DEFAULT_CONNECT_TIMEOUT
    timeout: Optional[float] = DEFAULT_TIMEOUT
    no_delay: bool = True
    ignore_exc: bool = False
    socket_module: Any = socket
    socket_keepalive: Optional[KeepaliveOpts] = None
    key_prefix: bytes = b""
    default_noreply: bool = False
    allow_unicode_keys: bool = False
    encoding: str = "ascii"
    tls_context: Optional[ssl.SSLContext] = None
    username: Optional[str] = None
    password: Optional[str] = dataclasses.field(default=None, repr=False)
    max_get_line: int = MAX_GET_LINE
    on_command: Optional[CommandHook] = None

    @classmethod
    def create(
        cls,
        serde: Optional[Serde] = None,
        serializer: Optional[Callable[[Any, Any], Tuple[bytes, int]]] = None,
        deserializer: Optional[Callable[[Any, bytes, int], Any]] = None,
        connect_timeout: Optional[float] = DEFAULT_CONNECT_TIMEOUT,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        no_delay: bool = True,
        ignore_exc: bool = False,
        socket_module: Any = socket,
        socket_keepalive: Optional[KeepaliveOpts] = None,
        key_prefix: Union[bytes, str] = b"",
        default_noreply: bool = False,
        allow_unicode_keys: bool = False,
        encoding: str = "ascii",
        tls_context: Optional[ssl.SSLContext] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        max_get_line: int = MAX_GET_LINE,
        on_command: Optional[CommandHook] = None,
    ) -> ClientOptions:
        """Check the pymemcache-style arguments once and freeze them."""
        if serde is None:
            if serializer is not None or deserializer is not None:
                serde = LegacyWrappingSerde(serializer, deserializer, encoding=encoding)
            else:
                serde = DefaultSerde(encoding)
        # The prefix follows the key rules (a str is ASCII, or UTF-8 with allow_unicode_keys;
        # no space or control byte; at most 250 bytes) and breaking them is the same
        # MemcacheIllegalInputError. Only a prefix of the wrong type is a TypeError, as in
        # pymemcache.
        if not isinstance(key_prefix, (str, bytes)):
            raise TypeError(f"key_prefix must be bytes or str, not {type(key_prefix).__name__}")
        if key_prefix:
            try:
                key_prefix = validate_key(key_prefix, allow_unicode=allow_unicode_keys)
            except MemcacheIllegalInputError as exc:
                raise MemcacheIllegalInputError(f"bad key_prefix {key_prefix!r}: {exc}") from None
        else:
            key_prefix = b""
        if socket_keepalive is not None and not isinstance(socket_keepalive, KeepaliveOpts):
            raise ValueError("socket_keepalive must be a KeepaliveOpts")
        if type(max_get_line) is not int or max_get_line < 512:
            raise ValueError(f"max_get_line must be an int >= 512, got {max_get_line!r}")
        for name, value in (("connect_timeout", connect_timeout), ("timeout", timeout)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be None or > 0, got {value!r}")
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        if on_command is not None and not callable(on_command):
            raise TypeError("on_command must be a callable (or None)")
        return cls(
            serde=serde,
            connect_timeout=connect_timeout,
            timeout=timeout,
            no_delay=no_delay,
            ignore_exc=ignore_exc,
            socket_module=socket_module,
            socket_keepalive=socket_keepalive,
            key_prefix=key_prefix,
            default_noreply=default_noreply,
            allow_unicode_keys=allow_unicode_keys,
            encoding=encoding,
            tls_context=tls_context,
            username=username,
            password=password,
            max_get_line=max_get_line,
            on_command=on_command,
        )


#: ``time.monotonic``, bound once: the hot paths read the clock before each send (a vDSO
#: call, no system call) so that the slow path can hold the command to its deadline.
_monotonic: Final = time.monotonic


def _send(sock: Any, request: bytes, started: float) -> bool:
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


def _send_tls(sock: Any, request: bytes, started: float) -> bool:
    """:func:`_send` for a TLS socket, whose ``send`` takes the whole request (or fails
    after the socket's timeout)."""
    sent = sock.send(request)
    if sent < len(request):  # (not with CPython's ssl; kept for other TLS sockets)
        _send_rest(sock, memoryview(request)[sent:], started)
        return True
    return bool(sent > _TLS_QUICK_SEND)


#: Where the cooperative socket classes live (checked along the socket class's MRO, so a
#: subclass counts too): their ``recv`` switches greenlets only when it has to wait.
_COOPERATIVE_SOCKET_MODULES = ("gevent.", "eventlet.")


def _yielding_sender(send: Sender, sleep: Callable[[float], Any]) -> Sender:
    """:func:`_send`, then ``sleep(0)``: one turn for the other greenlets. A cooperative
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
_KERNEL_TIMEOUT_ERRNOS: Final = frozenset((errno.EAGAIN, errno.EWOULDBLOCK))


def _kernel_timed(sock: Any) -> bool:
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
    :func:`_kernel_timed`); TLS, gevent and other sockets keep the Python calls."""
    if not (SPEEDUPS and _KERNEL_TIMEOUTS):
        return None
    from .protocol import speedups

    if getattr(speedups, "EXCHANGE_RECV_SIZE", None) != RECV_SIZE:
        return None  # (a build older than this file, or another platform)
    return speedups.exchange


_COMPILED_EXCHANGE: Final = _compiled_exchange()
_exchange: Final[Exchange] = _COMPILED_EXCHANGE or _no_exchange


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


def _set_timeout(sock: Any, timeout: Optional[float]) -> None:
    """Bound every later send and recv of a connected ``sock`` by ``timeout`` seconds
    (None: wait forever): in the kernel on a plain stdlib socket, else ``settimeout``."""
    if timeout is None or not _kernel_timed(sock):
        sock.settimeout(timeout)
        return
    timeval = _timeval(timeout)
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _set_wait(sock: Any, seconds: Optional[float], option: int) -> None:
    """Bound the next waits of ``sock`` by ``seconds`` (None: forever): its recv
    (``option`` SO_RCVTIMEO) or its send (SO_SNDTIMEO) in the kernel on a plain socket,
    both through ``settimeout`` on any other. For a command's deadline: only on the slow
    path, after one recv or send did not finish the work."""
    if _kernel_timed(sock):
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
    if _kernel_timed(sock):
        size = struct.calcsize("@ll")
        seconds, micros = struct.unpack(
            "@ll", sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, size)
        )
        return (seconds + micros / 1_000_000) or None
    return sock.gettimeout()  # type: ignore[no-any-return]


def _send_rest(sock: Any, rest: memoryview, started: float) -> None:
    """Send ``rest`` (what one send() did not take) by the command's deadline: the socket's
    timeout from ``started`` (see :func:`_send`), however slowly the peer reads (a kernel
    timeout, as a sendall over it, would bound each send() alone). The slow path of a
    large request."""
    timeout = _send_timeout(sock)
    if timeout is None:
        sock.sendall(rest)
        return
    deadline = started + timeout
    wait = timeout
    while rest:
        left = deadline - _monotonic()
        if left <= 0:
            raise socket.timeout("timed out sending a request")
        if wait - left > DEADLINE_SLACK:
            _set_wait(sock, left, socket.SO_SNDTIMEO)
            wait = left
        rest = rest[sock.send(rest) :]
    if wait != timeout:  # (after a failure the connection is closed instead)
        _set_wait(sock, timeout, socket.SO_SNDTIMEO)


#: How a connection sends a request: ``(sock, request, started) -> slow`` (see :func:`_send`).
Sender = Callable[[Any, bytes, float], bool]


def _is_tls(sock: Any) -> bool:
    """Whether ``sock`` is a TLS socket (the stdlib's, or gevent's, which is not one)."""
    return isinstance(sock, ssl.SSLSocket) or callable(getattr(sock, "cipher", None))


def _sender_for(sock: Any) -> Sender:
    """How a connection sends: :func:`_send` on a blocking socket, so threads pay nothing
    (:func:`_send_tls` on TLS); on a gevent or eventlet socket, a sender that yields once
    per command, with ``time.sleep`` when it is patched, else with the ``sleep`` of the
    library that made the socket (already loaded: pymc imports neither library, it only
    looks at where the socket's class comes from)."""
    plain: Sender = _send_tls if _is_tls(sock) else _send
    for cls in type(sock).__mro__:
        module = getattr(cls, "__module__", None) or ""
        if module.startswith(_COOPERATIVE_SOCKET_MODULES):
            break
    else:
        return plain
    sleep: Any = time.sleep
    if isinstance(sleep, types.BuiltinFunctionType):  # time is not patched
        sleep = getattr(sys.modules.get(module.partition(".")[0]), "sleep", None)
        if not callable(sleep):
            return plain
    if plain is _send:
        raw = _wrapped_socket(sock)
        if raw is not None:
            return _raw_yielding_sender(sock, raw.send, sleep)
    return _yielding_sender(plain, sleep)


def _recv_now_for(sock: Any) -> Optional[Tuple[Any, Callable[[int], bytes]]]:
    """For a gevent socket (not TLS) whose sender yields once per command, ``(sock, the
    recv of the stdlib socket it wraps)``: after that turn the reply has usually arrived,
    and the wrapped socket's own ``recv`` takes it without gevent's layer of Python (when
    it has not, it fails with BlockingIOError at once, and gevent's ``recv`` waits for it,
    in the hub). Else None."""
    if _is_tls(sock):
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
            slow = _send(sock, request, started)
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


#: Patched ``select.poll`` -> the original it replaced (see :func:`_unpatched_poll`).
_ORIGINAL_POLLS: Dict[Any, Any] = {}


def _unpatched_poll() -> Any:
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


def _never(wait: int) -> bool:
    return False


def _stray_check(sock: Any) -> Callable[[int], Any]:
    """A call, made once per connection, that says (called with 0: without waiting)
    whether ``sock`` has bytes nobody asked for or was closed by the server (truthy),
    through the operating system's ``poll`` (see :func:`_unpatched_poll`) registered once:
    one system call per use. Where there is no ``poll`` (Windows), a selector each time."""
    poll = _unpatched_poll()
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


def quiet_connections(conns: Sequence[Client]) -> List[bool]:
    """For each connection, whether its socket is open with nothing unread and no close from
    the server, seen in one ``poll`` over them all, without waiting: what
    :meth:`Client.send` looks for on its own, one system call per connection, before each
    request (bytes nobody asked for, a proxy's late duplicate, the server's close). A
    connection found quiet is sent to with ``looked=True``; any other (closed, not
    connected, where there is no ``poll``) makes its own look in ``send``, as alone.
    Under gevent, the operating system's poll (see :func:`_unpatched_poll`): a look that
    never waits needs no trip through the hub."""
    quiet = [False] * len(conns)
    poll = _unpatched_poll()
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
        if module.startswith(_COOPERATIVE_SOCKET_MODULES):
            if module.startswith("gevent."):  # (gevent is loaded: the socket is its own)
                try:
                    found = getattr(importlib.import_module("gevent.select"), "poll", None)
                except ImportError:
                    found = None
            break
    else:
        found = _unpatched_poll()
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


def resolve_noreply(noreply: Optional[bool], default: bool) -> bool:
    """The one rule for ``noreply``: the argument when given, else ``default_noreply``."""
    return default if noreply is None else bool(noreply)


def request_chunks(raws: List[bytes], max_line: int = MAX_GET_LINE) -> List[List[bytes]]:
    """Split the keys of a multi-get into requests whose lines are at most ``max_line``
    bytes long (command, expiry and CRLF included)."""
    budget = max_line - _GET_LINE_OVERHEAD
    if sum(map(len, raws)) + len(raws) <= budget:
        return [raws]
    chunks: List[List[bytes]] = [[]]
    size = 0
    for raw in raws:
        if size + len(raw) + 1 > budget and chunks[-1]:
            chunks.append([])
            size = 0
        chunks[-1].append(raw)
        size += len(raw) + 1
    return chunks


def per_key_results(
    keys: Sequence[A], replies: Sequence[Reply], rule: Rule, where: str = ""
) -> Tuple[List[Tuple[A, Any]], Optional[MemcacheError]]:
    """``([(key, result)], error)`` for the replies of a pipeline of one command per key.
    A key whose reply was an error reply gets False, and ``error`` is the exception for the
    first of them (naming up to five keys), else None: the caller raises it, or (with
    ``ignore_exc``) does not, once every reply was read and the others took effect."""
    out: List[Tuple[A, Any]] = []
    errors: List[Tuple[A, ErrorReply]] = []
    result = rule.result
    for key, reply in zip(keys, replies):
        if type(reply) is ErrorReply:
            errors.append((key, reply))
            out.append((key, False))
        else:
            out.append((key, result(reply)))
    if not errors:
        return out, None
    names = ", ".join(repr(k) for k, _ in errors[:5])
    return out, errors[0][1].exception(f"{rule.command} of {len(errors)} key(s){where}: {names}")


def decode_values(
    found: Mapping[bytes, Item],
    wanted: Mapping[bytes, Any],
    options: ClientOptions,
    with_cas: bool,
) -> Dict[Any, Any]:
    """Turn retrieved items into the caller's values: ``{key: value}``, or ``{key: (value,
    cas)}`` with ``with_cas``. ``wanted`` maps each raw key to the caller's key (a
    ``(server_key, key)`` tuple is deserialized as ``key``). With ``ignore_exc`` a value
    the serde cannot decode is a miss; without, its error is raised. Every client decodes
    through here."""
    serde = options.serde
    if not with_cas and type(serde) is DefaultSerde:  # the default serde returns the bytes
        return {wanted[raw]: item[1] for raw, item in found.items()}
    deserialize = serde.deserialize
    out: Dict[Any, Any] = {}
    for raw, (flags, data, cas) in found.items():
        key = wanted[raw]
        try:
            value = deserialize(key[1] if type(key) is tuple else key, data, flags)
        except Exception:
            if options.ignore_exc:
                continue
            raise
        out[key] = (value, cas) if with_cas else value
    return out


def merge_values_py(
    parts: Sequence[Mapping[bytes, Item]], wanted: Mapping[bytes, Any]
) -> Dict[Any, Any]:
    """``{wanted[raw]: data}`` over the items of every part (each node's), in order: the
    values as the default serde returns them (the bytes). The reference of the compiled
    ``merge_values`` (pymc/speedups.c)."""
    out: Dict[Any, Any] = {}
    for part in parts:
        for raw, item in part.items():
            out[wanted[raw]] = item[1]
    return out


merge_values: Callable[[Any, Any], Dict[Any, Any]] = merge_values_py
if SPEEDUPS:
    from .protocol import speedups

    if hasattr(speedups, "merge_values"):  # (else a build older than this file)
        merge_values = speedups.merge_values


def decode_parts(
    parts: List[Dict[bytes, Item]],
    wanted: Mapping[bytes, Any],
    options: ClientOptions,
    with_cas: bool,
) -> Dict[Any, Any]:
    """:func:`decode_values` of the items of many requests (a cluster fan-out's nodes),
    merged in order: ``wanted`` maps every raw key of them all to the caller's key."""
    if not with_cas and type(options.serde) is DefaultSerde and type(wanted) is dict:
        return merge_values(parts, wanted)  # (the default serde returns the bytes)
    if len(parts) == 1:
        items = parts[0]
    else:
        items = {}
        for part in parts:
            items.update(part)
    return decode_values(items, wanted, options, with_cas)


# How pymemcache types the values of ``stats``: int unless listed here; a value that does
# not convert is left as bytes.
def _seconds(value: bytes) -> float:
    return float(value.replace(b":", b"."))


def _flag(value: bytes) -> bool:
    return int(value) != 0


def _octal(value: bytes) -> int:
    return int(value, 8)


_STAT_TYPES: Dict[bytes, Callable[[bytes], Any]] = {
    b"version": bytes,
    b"rusage_user": _seconds,
    b"rusage_system": _seconds,
    b"hash_is_expanding": _flag,
    b"slab_reassign_running": _flag,
    b"inter": bytes,
    b"growth_factor": float,
    b"stat_key_prefix": bytes,
    b"umask": _octal,
    b"detail_enabled": _flag,
    b"cas_enabled": _flag,
    b"auth_enabled_sasl": lambda v: v == b"yes",
    b"maxconns_fast": _flag,
    b"slab_reassign": _flag,
    b"slab_automove": _flag,
}


def _typed_stats(raw: Dict[bytes, bytes]) -> Dict[bytes, Any]:
    out: Dict[bytes, Any] = {}
    for name, value in raw.items():
        try:
            out[name] = _STAT_TYPES.get(name, int)(value)
        except ValueError:
            out[name] = value
    return out


QuietBatch = Tuple[bytes, List[Tuple[bytes, ...]], Dict[bytes, Any]]


def quiet_gets(
    batch: List[Tuple[bytes, Tuple[Any, bool]]], opaque: Callable[[], bytes]
) -> QuietBatch:
    """``(request, sent, key by opaque)`` of a quiet ``mg`` pipeline ending in ``mn``."""
    requests: List[bytes] = []
    sent: List[Tuple[bytes, ...]] = []
    key_of: Dict[bytes, Any] = {}
    for wire, (key, b64) in batch:
        token = opaque()
        requests.append(
            encode_meta_get(wire, base64=b64, return_client_flags=True, opaque=token, quiet=True)
        )
        sent.append((token, b"mg"))
        key_of[token] = key
    requests.append(encode_meta_noop())
    return b"".join(requests), sent, key_of


def quiet_deletes(
    batch: List[Tuple[bytes, Tuple[Any, bool]]], opaque: Callable[[], bytes], invalidate: bool
) -> QuietBatch:
    """``(request, sent, key by opaque)`` of a quiet ``md`` pipeline ending in ``mn``."""
    requests: List[bytes] = []
    sent: List[Tuple[bytes, ...]] = []
    key_of: Dict[bytes, Any] = {}
    for wire, (key, b64) in batch:
        token = opaque()
        requests.append(
            encode_meta_delete(wire, base64=b64, invalidate=invalidate, opaque=token, quiet=True)
        )
        sent.append((token, b"md"))
        key_of[token] = key
    requests.append(encode_meta_noop())
    return b"".join(requests), sent, key_of


def meta_batches(items: List[Tuple[bytes, Any]]) -> List[List[Tuple[bytes, Any]]]:
    """Split ``(wire key, ...)`` items of a meta pipeline into batches of about
    QUIET_BATCH_BYTES of request lines, so that neither side's socket buffer fills while
    the other waits (a quiet pipeline's answers are small: only misses and failures, or
    the hits of a get)."""
    batches: List[List[Tuple[bytes, Any]]] = [[]]
    size = 0
    for item in items:
        if size >= QUIET_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(item)
        size += len(item[0]) + 40
    return batches if batches[0] else []


def read_through(
    client: Any,
    key: Any,
    compute: Callable[[], Any],
    ttl: int = 0,
    lease_ttl: int = 30,
    recache_ttl: Optional[int] = None,
    wait: Optional[float] = None,
) -> Any:
    """``fetch()`` for any client with ``lease_get``/``lease_set``/``lease_release`` (each
    call of which takes its own connection, so nothing is held while a caller waits).

    A hit returns the value: a fresh one, or a stale one (after ``invalidate()``) or one
    near expiry (within ``recache_ttl`` seconds) while another caller refreshes it. Exactly
    one caller refreshes (memcached's win flag on the existing item), or, on a miss, fills
    the key (the lease of :func:`pymc.meta.lease_key`, an item of its own that no read
    sees): it runs ``compute()``, stores the result for ``ttl`` seconds and returns it;
    the others wait (capped backoff through ``time.sleep``, cooperative under gevent) for
    at most ``lease_ttl`` (or ``wait``) seconds, then read it. If ``compute()`` raises, or
    its value cannot be stored, the current value stays as it was and the win or the lease
    is given back, so the next caller tries again.
    """
    patience = lease_ttl if wait is None else wait
    deadline = None
    delay = 0.001
    while True:
        result = client.lease_get(key, lease_ttl, recache_ttl)
        if result.win:
            return _recompute(client, key, compute, ttl, result)
        if result.status == "hit":
            return result.value  # fresh; or stale, or near expiry, while another refreshes
        if not result.won_elsewhere:  # no lease was offered: the cache is unavailable
            return compute()  # (a HashClient with ignore_exc and a failing node)
        # Someone else holds the lease of a missing value: wait for what it stores.
        now = time.monotonic()
        if deadline is None:  # (measured from the first wait: the hit path skips the clock)
            deadline = now + patience
        if now >= deadline:
            raise MemcacheLeaseTimeoutError(
                f"{key!r} was not stored by the lease holder within {patience} s"
            )
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.1)


def _recompute(client: Any, key: Any, compute: Callable[[], Any], ttl: int, lease: Any) -> Any:
    try:
        value = compute()
        client.lease_set(key, value, ttl, lease)
    except BaseException:
        # compute() raised, or its value could not be stored (too large, a network
        # error): give the win or the lease back, leaving the value as it was, so the
        # next caller tries again instead of waiting out the lease.
        try:
            client.lease_release(key, lease)
        except Exception:  # (what failed first is the error to raise)
            pass
        raise
    return value


class Client:
    """A client for one memcached server over one blocking socket.

    The arguments are pymemcache 4.0's, with safer defaults for ``no_delay`` (True) and
    ``default_noreply`` (False), plus ``username``/``password`` for ASCII auth and
    ``on_command`` (a hook that observes each command, for tracing: see
    :func:`begin_command`). Nothing connects until the first command.
    """

    def __init__(
        self,
        server: ServerSpec,
        serde: Optional[Serde] = None,
        serializer: Optional[Callable[[Any, Any], Tuple[bytes, int]]] = None,
        deserializer: Optional[Callable[[Any, bytes, int], Any]] = None,
        connect_timeout: Optional[float] = DEFAULT_CONNECT_TIMEOUT,
        timeout: Optional[float] = DEFAULT_TIMEOUT,
        no_delay: bool = True,
        ignore_exc: bool = False,
        socket_module: Any = socket,
        socket_keepalive: Optional[KeepaliveOpts] = None,
        key_prefix: Union[bytes, str] = b"",
        default_noreply: bool = False,
        allow_unicode_keys: bool = False,
        encoding: str = "ascii",
        tls_context: Optional[ssl.SSLContext] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        max_get_line: int = MAX_GET_LINE,
        on_command: Optional[CommandHook] = None,
    ) -> None:
        options = ClientOptions.create(
            serde=serde,
            serializer=serializer,
            deserializer=deserializer,
            connect_timeout=connect_timeout,
            timeout=timeout,
            no_delay=no_delay,
            ignore_exc=ignore_exc,
            socket_module=socket_module,
            socket_keepalive=socket_keepalive,
            key_prefix=key_prefix,
            default_noreply=default_noreply,
            allow_unicode_keys=allow_unicode_keys,
            encoding=encoding,
            tls_context=tls_context,
            username=username,
            password=password,
            max_get_line=max_get_line,
            on_command=on_command,
        )
        self._setup(normalize_server_spec(server), options)

    @classmethod
    def from_options(cls, server: ServerSpec, options: ClientOptions) -> Client:
        """A Client for ``server`` sharing an already checked :class:`ClientOptions`."""
        client = cls.__new__(cls)
        client._setup(normalize_server_spec(server), options)
        return client

    def _setup(self, server: ServerSpec, options: ClientOptions) -> None:
        self.server = server
        self.options = options
        self.sock: Optional[socket.socket] = None
        self._reader: Optional[Reader] = None
        # How requests go out on this connection (chosen again at each connect): on a
        # cooperative socket, one turn for the other greenlets after each send.
        self._send: Sender = _send
        # The socket whose send and first recv go in one compiled call (_exchange, see
        # _compiled_exchange): this connection's, when it is a plain one, else None. (A
        # command compares it with the socket it is about to use, which may be another
        # object standing in for it.)
        self._exchange_sock: Optional[socket.socket] = None
        # On a gevent socket: (the socket, the recv of the stdlib socket it wraps), for the
        # first recv of a get, whose reply has usually arrived by then (see _recv_now_for).
        self._recv_now: Optional[Tuple[Any, Callable[[int], bytes]]] = None
        # When the last request went out (a time.monotonic() value; the deadline of a
        # reply read by receive() counts from it), and whether that send was slow.
        self._sent_at = 0.0
        self._sent_slowly = False
        self._tls = False  # the connection is TLS (see receive_some)
        #: The name TLS checks the certificate against, when it is not the host connected
        #: to (a node reached by IP whose certificate names its DNS name).
        self.tls_hostname: Optional[str] = None
        # Hot-path copies of options (attribute reads on self are the cheapest).
        self._serde = options.serde
        self._prefix = options.key_prefix
        self._unicode = options.allow_unicode_keys
        self._ignore_exc = options.ignore_exc
        self._raw_values = type(options.serde) is DefaultSerde  # values are the bytes read
        self._noreply_default = options.default_noreply
        # noreply commands were sent and nothing has read past their possible error lines
        # yet: the next request goes out behind a sync marker (see send()).
        self._owes_sync = False
        self._syncing = False  # a sync marker was sent; receive() reads up to it first
        self._sync_alone = False  # ... and no request behind it (raw_command's check)
        self._marker: Optional[ExpectSync] = None  # the marker's reader, mid-read
        self._meta_ok = False  # this connection's server answered a meta no-op
        self._pending = False  # a request was sent whose reply is not read to its end yet
        # Whether the connection has bytes nobody asked for (see send()).
        self._stray: Callable[[int], Any] = _never
        #: Error lines that noreply commands drew from the server (logged, never raised).
        self.noreply_errors = 0
        self._opaque_counter = 0
        self._lease_templates: Dict[Tuple[Any, int, Optional[int]], Tuple[bytes, bytes]] = {}
        self._observing = False  # a command is being observed (see _observed)
        if options.on_command is not None:
            # Only a client made with the hook runs its commands through it: one without
            # it runs the class's methods as they are, at no cost (see _observe).
            _observe(self)

    # pymemcache exposes its settings as attributes; so do we, read-only.
    serde = property(lambda self: self.options.serde)
    key_prefix = property(lambda self: self.options.key_prefix)
    timeout = property(lambda self: self.options.timeout)
    connect_timeout = property(lambda self: self.options.connect_timeout)
    no_delay = property(lambda self: self.options.no_delay)
    ignore_exc = property(lambda self: self.options.ignore_exc)
    default_noreply = property(lambda self: self.options.default_noreply)
    allow_unicode_keys = property(lambda self: self.options.allow_unicode_keys)
    encoding = property(lambda self: self.options.encoding)
    tls_context = property(lambda self: self.options.tls_context)
    socket_module = property(lambda self: self.options.socket_module)
    socket_keepalive = property(lambda self: self.options.socket_keepalive)

    def __repr__(self) -> str:
        state = "connected" if self.sock is not None else "idle"
        return f"<{type(self).__name__} {server_name(self.server)} {state}>"

    # ------------------------------------------------------------------ connection

    def _connect(self) -> socket.socket:
        opts = self.options
        mod = opts.socket_module
        server = self.server
        sock: Optional[socket.socket] = None
        try:
            if isinstance(server, str):
                sock = mod.socket(mod.AF_UNIX, mod.SOCK_STREAM)
                assert sock is not None
                sock.settimeout(opts.connect_timeout)
                sock.connect(server)
            else:
                sock = self._connect_tcp(mod, server, opts)
            if opts.tls_context is not None:
                hostname = self.tls_hostname or (None if isinstance(server, str) else server[0])
                sock = opts.tls_context.wrap_socket(sock, server_hostname=hostname)
            _set_timeout(sock, opts.timeout)
            self._send = _sender_for(sock)
            plain = _COMPILED_EXCHANGE is not None and self._send is _send and _kernel_timed(sock)
            self._exchange_sock = sock if plain else None
            self._recv_now = _recv_now_for(sock)
            self._tls = _is_tls(sock)
            self.sock = sock
            self._reader = Reader()
            self._stray = _stray_check(sock)
            if opts.username is not None:
                self._authenticate(opts.username, opts.password or "")
            return sock
        except BaseException as exc:
            # No connection, so nothing pending or owed: an interruption inside the auth
            # requests may have left their flags set, and the next connect's auth would
            # then start over on a connection already authenticated.
            self.sock = self._exchange_sock = None
            self._reader = None
            self._owes_sync = self._syncing = self._pending = False
            if sock is not None:
                sock.close()
            if isinstance(exc, MemcacheError) or not isinstance(exc, OSError):
                raise
            if isinstance(exc, socket.timeout):
                raise MemcacheConnectTimeoutError(
                    exc.errno, f"timed out connecting to {server_name(server)}"
                ) from exc
            raise network_error(
                MemcacheConnectError, exc, f"cannot connect to {server_name(server)}: {exc}"
            ) from exc

    @staticmethod
    def _connect_tcp(mod: Any, server: Tuple[str, int], opts: ClientOptions) -> socket.socket:
        host, port = server
        error: Optional[OSError] = None
        for family, kind, proto, _, address in mod.getaddrinfo(
            host, port, mod.AF_UNSPEC, mod.SOCK_STREAM, mod.IPPROTO_TCP
        ):
            sock = mod.socket(family, kind, proto)
            try:
                sock.settimeout(opts.connect_timeout)
                if opts.no_delay:
                    sock.setsockopt(mod.IPPROTO_TCP, mod.TCP_NODELAY, 1)
                keepalive = opts.socket_keepalive
                if keepalive is not None:
                    sock.setsockopt(mod.SOL_SOCKET, mod.SO_KEEPALIVE, 1)
                    sock.setsockopt(mod.IPPROTO_TCP, mod.TCP_KEEPIDLE, keepalive.idle)
                    sock.setsockopt(mod.IPPROTO_TCP, mod.TCP_KEEPINTVL, keepalive.intvl)
                    sock.setsockopt(mod.IPPROTO_TCP, mod.TCP_KEEPCNT, keepalive.cnt)
                sock.connect(address)
                return sock  # type: ignore[no-any-return]
            except OSError as exc:
                sock.close()
                error = exc
            except BaseException:
                sock.close()
                raise
        raise error or OSError(f"no address found for {host}")

    def _authenticate(self, username: str, password: str) -> None:
        """ASCII auth, only on a server that asks for it: the credentials are a ``set``
        that a server without ``-Y`` would store (see ``encode_auth_probe``)."""
        credentials = encode_auth(username, password)  # refused before anything is sent
        probe = self.request(encode_auth_probe(), expect_auth_probe())
        if not asks_for_auth(probe):
            self.close()
            name = server_name(self.server)
            if type(probe) is ErrorReply:
                raise probe.exception("get auth, sent before the credentials, which were not sent")
            raise MemcacheAuthNotRequiredError(
                f"{name} does not require authentication (it answered a command sent "
                "without credentials), so the username and password were not sent: "
                "start memcached with -Y, or connect without credentials"
            )
        reply = self.request(credentials, ExpectReplies(RULES["auth"]))[0]
        if reply is STORED:
            return
        self.close()
        if type(reply) is ErrorReply:
            raise MemcacheAuthenticationError(
                f"{server_name(self.server)} refused the credentials: {reply.message}"
            )
        raise MemcacheProtocolError(f"unexpected reply to authentication: {reply!r}")

    def is_clean(self) -> bool:
        """Whether the connection can take a command: nothing unread, not closed by the
        server (True when not connected). Pools ask before reusing an idle connection.

        An idle connection is dirty in two ways, both answered ``False``: the server sent
        bytes nobody asked for (unread replies, an error line), or the server closed its
        end (EOF, a reset). Either shows as "readable", checked without waiting through
        ``poll`` -- never ``select``, which fails on descriptors of 1024 and up.
        """
        sock = self.sock
        if sock is None:
            return True
        reader = self._reader
        if reader is None or reader.buffered or reader.broken or self._pending:
            return False
        try:
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return False  # decrypted bytes already inside the TLS layer: unread
            # The operating system's poll, even under gevent's patch_all (see
            # _unpatched_poll); where there is no poll at all (Windows), selectors picks
            # what the platform has.
            poll = _unpatched_poll()
            if poll is not None:
                poller = poll()
                poller.register(sock, select.POLLIN | select.POLLPRI)
                # POLLIN/POLLPRI: unread bytes, or EOF from the server's close;
                # POLLHUP/POLLERR/POLLNVAL (always reported): the connection is gone.
                return not poller.poll(0)
            with selectors.DefaultSelector() as selector:
                selector.register(sock, selectors.EVENT_READ)
                return not selector.select(0)
        except (OSError, ValueError):
            return False  # a closed or broken socket

    def close(self) -> None:
        """Close the socket, if open. The next command reconnects."""
        sock = self.sock
        self.sock = None
        self._reader = None
        self._stray = _never
        self._exchange_sock = None
        self._owes_sync = self._syncing = self._pending = False
        self._marker = None
        self._meta_ok = False
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    disconnect_all = close

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the engine
    #
    # Every command goes out through send() and comes back through receive(); the cluster
    # fan-out uses the same two halves on many connections at once. What a reply means is
    # decided by protocol's Expect readers and RULES, never here.

    def send(
        self,
        request: bytes,
        noreply: bool = False,
        deadline: Optional[float] = None,
        looked: bool = False,
    ) -> None:
        """Send ``request`` (one or more complete commands), connecting first if needed.

        ``noreply``: every command in it says ``noreply``, so nothing will be read. The
        connection then owes a sync: the next request that expects replies is preceded by a
        marker (``version``), and :meth:`receive` reads up to that marker first, so an
        error line a noreply command caused is logged and counted (:attr:`noreply_errors`),
        never taken as the reply of an unrelated command. One request is in flight at a
        time: ``receive`` it before the next ``send``. On any failure the connection is
        closed.

        The command's deadline (``timeout``: see :meth:`receive`) counts from here, or is
        ``deadline`` when given (a fan-out gives all its connections one): the part of a
        request that one ``send()`` did not take goes out by it.

        ``looked``: the caller has just found the socket quiet, as :func:`quiet_connections`
        does for many connections in one ``poll``; the look for stray bytes is not made again.
        """
        sock = self.sock
        if (
            sock is None
            or self._pending
            or self._reader.broken  # type: ignore[union-attr]
            or (
                not looked
                and self._stray(0)
                and (not self._owes_sync or self._closed_after_noreply(sock))
            )
        ):
            # A reply that was never read to its end (the caller was interrupted between
            # send and receive), a reader that gave up, or bytes that came after the last
            # reply was complete (a proxy's late duplicate) or the server's close: start
            # over on a new connection, before anything is sent on this one. (After a
            # noreply command, bytes are the error lines the sync marker reads; only the
            # server's close, its refusal of a noreply command, means a new connection.)
            if sock is not None:
                self.close()
            sock = self._connect()
        if not self._meta_ok and request[:3] == b"ms ":
            # A value goes out only on a connection whose server is known to take meta
            # commands (an older one runs the data block as a command line): this one
            # may be new, made just now, and the server at the address another than the
            # one checked before (a rollback, a failover behind one name).
            self._meta_checked("ms")
            sock = self.sock
        # Each flag is set before the bytes go out, so an interruption at any point leaves
        # the connection over-cautious (a marker more, a reconnect), never out of step.
        if noreply:
            self._owes_sync = True
        else:
            if self._owes_sync:
                self._sync_alone = not request  # (raw_command's check: nothing follows)
                request = encode_sync() + request
                self._syncing = True
                self._owes_sync = False
            self._pending = True
        started = self._sent_at = self._start_of(deadline)
        try:
            self._sent_slowly = self._send(sock, request, started)
        except BaseException as exc:
            self._abort(exc)

    def _start_of(self, deadline: Optional[float]) -> float:
        """When the command whose deadline is ``deadline`` started (now, for None): the
        socket's own timeout from then is that deadline."""
        timeout = self.options.timeout
        if deadline is None or timeout is None:
            return _monotonic()
        return deadline - timeout

    def _deadline_from(self, started: float) -> Optional[float]:
        """The deadline of a command that started at ``started`` (None: no timeout)."""
        timeout = self.options.timeout
        return None if timeout is None else started + timeout

    def receive(self, expect: Expect, deadline: Optional[float] = None) -> Any:
        """Read the reply to the request just sent, as ``expect`` (a reader from
        :mod:`pymc.protocol`) describes it, and return what it returns. Bytes left over
        after the reply are a protocol error. On any failure the connection is closed.

        The whole command must be done within ``timeout`` of its :meth:`send`: if one
        recv does not finish the reply, the rest must come by that deadline.
        ``deadline`` (a ``time.monotonic()`` value, see :func:`command_deadline`) sets
        another one, for every recv: a fan-out gives all its connections the same one.
        Past it, :class:`MemcacheTimeoutError`."""
        sock = self.sock
        reader = self._reader
        if sock is None or reader is None:
            raise MemcacheProtocolError("receive() without a request sent on this connection")
        try:
            started = self._sent_at
            if deadline is None and self._sent_slowly:  # the send used part of the time
                deadline = self._deadline_from(started)
            if self._syncing:
                deadline = self._sync(sock, reader, deadline, started)
            result = self._read_to_end(sock, reader, expect, expect.step(reader), deadline, started)
        except BaseException as exc:
            self._abort(exc)
        self._pending = False
        if type(expect) is ExpectMetaQuiet and type(result) is not ErrorReply:
            self._meta_ok = True  # (a fan-out's quiet pipeline: see send)
        return result

    def receive_some(self, expect: Expect, deadline: Optional[float] = None) -> Any:
        """:meth:`receive` in steps, for a caller that waits for many connections at once
        (a cluster fan-out polls them, see :func:`readiness_poll`): one ``recv`` -- call it
        when the socket is readable, or it waits, up to the timeout -- fed to the reader,
        and ``expect`` stepped over what the reader holds. Returns the reply as
        :meth:`receive` does, or ``NEED_DATA`` while it is incomplete. A connection that
        owes a sync marker (see :meth:`send`) is read to the end of its reply here, as
        :meth:`receive` reads it, by ``deadline``. On any failure the connection is
        closed."""
        sock = self.sock
        reader = self._reader
        if sock is None or reader is None:
            raise MemcacheProtocolError("receive() without a request sent on this connection")
        try:
            if deadline is not None and self._tls:
                # A TLS recv that has a piece of a record waits for the rest of it: by the
                # deadline, not for a timeout of its own.
                _set_wait(sock, time_left(deadline, self.server), socket.SO_RCVTIMEO)
                data = sock.recv(RECV_SIZE)
                _set_wait(sock, self.options.timeout, socket.SO_RCVTIMEO)
            else:
                data = sock.recv(RECV_SIZE)
            if not data:  # (before the marker's answer: a close after noreply commands)
                raise self._noreply_refused() if self._syncing else self._closed_mid_reply()
            reader.feed(data)
            while True:
                # The marker's answer first (in steps too: never a wait of its own, which
                # would hold the caller's other connections past their deadline).
                if not self._syncing or self._sync_some(reader) is not NEED_DATA:
                    result = expect.step(reader)
                    if result is not NEED_DATA:
                        break
                # Bytes TLS has decrypted already show in no poll: read them now.
                if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                    return NEED_DATA
                reader.feed(sock.recv(RECV_SIZE))
            if reader.buffered:
                raise MemcacheProtocolError(self._leftover(reader))
        except BaseException as exc:
            self._abort(exc)
        self._pending = False
        if type(expect) is ExpectMetaQuiet and type(result) is not ErrorReply:
            self._meta_ok = True  # (a fan-out's quiet pipeline: see send)
        return result

    def _read_to_end(
        self,
        sock: Any,
        reader: Reader,
        expect: Expect,
        result: Any,
        deadline: Optional[float],
        started: float,
    ) -> Any:
        """Receive until ``expect`` has its reply (``result`` is its last step), by
        ``deadline``, or when None, by ``timeout`` from ``started`` (the first recv waits
        the socket's own timeout); bytes after the reply are a protocol error. Inside the
        callers' safety net."""
        if result is NEED_DATA:
            if deadline is None:
                data = sock.recv(RECV_SIZE)
                if not data:
                    raise self._closed_mid_reply()
                reader.feed(data)
                result = expect.step(reader)
                if result is NEED_DATA:
                    deadline = self._deadline_from(started)
            if result is NEED_DATA:  # one recv did not finish it: the rest by the deadline
                parse = functools.partial(expect.step, reader)
                result = self._read_rest(sock, reader, parse, deadline)
        if reader.buffered:
            raise MemcacheProtocolError(self._leftover(reader))
        return result

    def _read_rest(
        self,
        sock: Any,
        reader: Reader,
        parse: Callable[[], Any],
        deadline: Optional[float],
    ) -> Any:
        """Receive, feeding ``reader``, until ``parse()`` returns a result, by ``deadline``
        (None: no deadline, each recv waits the socket's own timeout, which is then None):
        the slow path of every read, taken once one recv did not finish a reply or the
        send was slow. Inside the callers' safety net (a failure leaves the socket's wait
        cut short, but the connection is closed)."""
        if deadline is None:  # no timeout: wait as long as it takes
            while True:
                data = sock.recv(RECV_SIZE)
                if not data:
                    raise self._closed_mid_reply()
                reader.feed(data)
                result = parse()
                if result is not NEED_DATA:
                    return result
        timeout = self.options.timeout
        wait = timeout  # what the socket's recv waits at most now
        while True:
            left = time_left(deadline, self.server)
            assert left is not None
            if wait is None or wait - left > DEADLINE_SLACK:
                _set_wait(sock, left, socket.SO_RCVTIMEO)
                wait = left
            data = sock.recv(RECV_SIZE)
            if not data:
                raise self._closed_mid_reply()
            reader.feed(data)
            result = parse()
            if result is not NEED_DATA:
                break
        if wait != timeout:
            _set_wait(sock, timeout, socket.SO_RCVTIMEO)
        return result

    def request(self, request: bytes, expect: Expect, deadline: Optional[float] = None) -> Any:
        """:meth:`send` then :meth:`receive` (``deadline``: see there; a command of many
        requests gives them all one)."""
        sock = self.sock
        reader = self._reader
        if (
            sock is None
            or reader is None
            or self._pending
            or self._owes_sync
            or self._syncing
            or reader.broken
            or self._stray(0)
        ):
            self.send(request, False, deadline)
            try:
                return self.receive(expect, deadline)
            except MemcacheUnexpectedCloseError as exc:  # (closed by receive already)
                refused = refused_by_close(request, exc, server_name(self.server))
                if refused is exc:
                    raise
                raise refused from exc
        # The two written out for a connection in step with nothing owed (the reader is
        # empty: receive() refuses leftovers, and no byte came after the last reply), as
        # every command but get finds it.
        started = _monotonic() if deadline is None else self._start_of(deadline)
        self._pending = True
        try:
            result: Any = NEED_DATA
            if deadline is None and sock is self._exchange_sock:
                # The send and the first recv in one call (see _compiled_exchange).
                data = _exchange(sock, request, started)
                if not data:
                    raise self._closed_mid_reply()
                reader.feed(data)
                result = expect.step(reader)
                if result is NEED_DATA:  # one recv did not finish it: see _read_rest
                    deadline = self._deadline_from(started)
            elif self._send(sock, request, started) and deadline is None:
                deadline = self._deadline_from(started)  # (the send used part of the time)
            result = self._read_to_end(sock, reader, expect, result, deadline, started)
        except BaseException as exc:
            self._abort(exc, request)
        self._pending = False
        return result

    def _closed_after_noreply(self, sock: Any) -> bool:
        """The socket became readable while noreply commands are unanswered (see
        :meth:`send`): read what came into the reader (their error lines, which the sync
        marker's reader takes) and say whether the server closed the connection. A close
        is the server's answer to a noreply command, most likely one it does not support
        (twemproxy closes the connection on ``flush_all``): logged and counted in
        :attr:`noreply_errors` like an error line, and never the next command's failure.
        Over TLS, a readable socket need not hold a byte of reply (a session ticket), so
        nothing is read there: a close then shows when the next reply is read."""
        if isinstance(sock, ssl.SSLSocket):
            return False
        try:
            data = sock.recv(RECV_SIZE)
        except OSError:  # (ECONNRESET: closed as well)
            data = b""
        if data:
            self._reader.feed(data)  # type: ignore[union-attr]
            return False
        self._noreply_refused()
        return True

    def _noreply_refused(self) -> MemcacheUnsupportedCommandError:
        """Count and log a close in answer to noreply commands; the error that says so."""
        self.noreply_errors += 1
        name = server_name(self.server)
        message = (
            f"{name} closed the connection after noreply command(s), before any reply to "
            "the next: the server or proxy most likely does not support one of them "
            "(twemproxy, for one, closes the connection on flush_all and other commands "
            "it does not know)"
        )
        logger.warning("pymc: %s", message)
        error = MemcacheUnsupportedCommandError(message)
        error.before_reply = True
        return error

    @property
    def owes_sync(self) -> bool:
        """Whether a ``noreply`` command was sent whose error line (if any) is unread."""
        return self._owes_sync

    def _sync(
        self, sock: Any, reader: Reader, deadline: Optional[float], started: float
    ) -> Optional[float]:
        """Read up to and including the sync marker's answer (inside receive's safety
        net), by ``deadline`` (None: ``timeout`` from ``started``, when the marker went
        out with the request). Returns the deadline, which the reply after the marker
        shares. See :class:`~pymc.protocol.ExpectSync` for which
        replies answer the marker."""
        sync = self._marker or ExpectSync(follows=not self._sync_alone)
        marker = sync.step(reader) if reader.buffered else NEED_DATA  # (nothing read yet)
        if marker is NEED_DATA:
            if deadline is None:
                deadline = self._deadline_from(started)
            try:
                marker = self._read_rest(
                    sock, reader, functools.partial(sync.step, reader), deadline
                )
            except (MemcacheUnexpectedCloseError, ConnectionResetError) as exc:
                # Closed before the marker (``version``, which every server answers) was
                # answered: in answer to a noreply command before it (see
                # _closed_after_noreply; here the close crossed this request).
                raise self._noreply_refused() from exc
        self._synced(sync, marker)
        return deadline

    def _sync_some(self, reader: Reader) -> object:
        """:meth:`_sync` over what ``reader`` holds, for :meth:`receive_some`: NEED_DATA
        while the marker's answer is incomplete (its reader kept for the next call)."""
        sync = self._marker
        if sync is None:
            sync = self._marker = ExpectSync(follows=not self._sync_alone)
        marker = sync.step(reader)
        if marker is not NEED_DATA:
            self._synced(sync, marker)
        return marker

    def _synced(self, sync: ExpectSync, marker: Any) -> None:
        """The marker's answer ``marker`` was read by ``sync``: log the noreply commands'
        error lines, and raise (or give up the connection) as the answer says."""
        self._syncing = False
        self._marker = None
        for error in sync.errors:
            self.noreply_errors += 1
            logger.warning(
                "pymc: %s answered an earlier noreply command with %s %s",
                server_name(self.server),
                error.kind.decode(),
                error.message,
            )
        if type(marker) is ErrorReply:
            if not marker.in_step:  # ERROR <message>: the server refused us
                raise marker.exception("a noreply command")
            # A proxy that relays the marker (twemproxy's ``version`` goes to one backend)
            # answered it with an error: not a noreply command's, and not the next one's.
            logger.debug(
                "pymc: %s answered the sync marker with %s %s",
                server_name(self.server),
                marker.kind.decode(),
                marker.message,
            )
            if sync.unsure:
                # Whose error lines these are cannot be told from what came: the
                # connection goes, so that no late answer is taken for a later reply.
                if sync.taken is not None:
                    raise sync.taken.exception()  # the next request's (closes, in _abort)
                self.close()

    def _leftover(self, reader: Reader) -> str:
        return (
            f"{server_name(self.server)} sent {reader.buffered} byte(s) more than the "
            "reply; the connection is out of step and was closed"
        )

    def _abort(self, exc: BaseException, request: bytes = b"") -> NoReturn:
        """Close the connection (its state is unknown) and raise ``exc`` as pymc's (a close
        in answer to ``request`` as :func:`refused_by_close` says)."""
        self.close()
        if request and type(exc) is MemcacheUnexpectedCloseError:
            refused = refused_by_close(request, exc, server_name(self.server))
            if refused is not exc:
                raise refused from exc
        if isinstance(exc, OSError) and not isinstance(exc, MemcacheError):
            raise self._network_error(exc) from exc
        raise exc

    def _network_error(self, exc: OSError) -> MemcacheNetworkError:
        name = server_name(self.server)
        if isinstance(exc, socket.timeout) or exc.errno in _KERNEL_TIMEOUT_ERRNOS:
            return MemcacheTimeoutError(exc.errno, f"timed out talking to {name}")
        return network_error(MemcacheNetworkError, exc, f"connection to {name} failed: {exc}")

    def _closed_mid_reply(self) -> MemcacheUnexpectedCloseError:
        error = MemcacheUnexpectedCloseError(
            f"{server_name(self.server)} closed the connection mid-reply"
        )
        reader = self._reader
        if reader is not None and not reader.buffered:
            error.before_reply = True  # (see refused_by_close)
        return error

    def raise_error(self, reply: ErrorReply, command: str) -> NoReturn:
        """Raise the exception for an error reply, closing the connection first when the
        reply leaves it unusable (``ERROR <message>``)."""
        if not reply.in_step:
            self.close()
        raise reply.exception(command)

    def _one(self, rule: Rule, request: bytes, noreply: bool) -> Any:
        """Send a one-reply command and return what its reply means (per ``rule``)."""
        if noreply:
            self.send(request, True)
            return None
        sock = self.sock
        reader = self._reader
        if sock is None or reader is None or self._pending or self._owes_sync or self._stray(0):
            reply = self.request(request, ExpectReplies(rule))[0]
        else:
            # send() and receive() with ExpectReplies(rule), written out for the hot path
            # of every store, delete, touch and incr; the rule decides, as there. (A reply
            # such as STORED names no command: bytes that came after the last reply, a
            # proxy's late duplicate, would answer this one; _stray() saw none.)
            started = _monotonic()  # (the command's deadline counts from here)
            self._pending = True
            try:
                if sock is self._exchange_sock:  # the send and the first recv in one call
                    data = _exchange(sock, request, started)
                elif self._send(sock, request, started):
                    data = None  # (a slow send: the whole reply by the deadline)
                else:
                    data = sock.recv(RECV_SIZE)
                reply = NEED_DATA
                if data is not None:
                    if not data:
                        raise self._closed_mid_reply()
                    reader.feed(data)
                    reply = reader.next_reply()
                if reply is NEED_DATA:  # one recv did not finish it: see _read_rest
                    deadline = self._deadline_from(started)
                    reply = self._read_rest(sock, reader, reader.next_reply, deadline)
                if not rule.accepts(reply):
                    raise MemcacheProtocolError(
                        f"unexpected reply to {rule.command}: {reply!r}"[:300]
                    )
                if reader.buffered:
                    raise MemcacheProtocolError(self._leftover(reader))
            except BaseException as exc:
                self._abort(exc, request)
            self._pending = False
        if type(reply) is ErrorReply:
            self.raise_error(reply, rule.command)
        return rule.result(reply)

    def _pipeline(self, requests: List[bytes], rule: Rule, noreply: bool) -> List[Reply]:
        """Send many one-reply commands and read their replies, in passes of bounded size."""
        replies: List[Reply] = []
        start = 0
        deadline = None  # one for all the passes, when there are several
        while start < len(requests):
            stop, size = start, 0
            while stop < len(requests) and (size < PIPELINE_BYTES or stop == start):
                size += len(requests[stop])
                stop += 1
            if stop < len(requests) and deadline is None:
                deadline = command_deadline(self.options.timeout)
            batch = b"".join(requests[start:stop])
            if noreply:
                self.send(batch, True, deadline)
            else:
                expect = ExpectReplies(rule, stop - start)
                replies.extend(self.request(batch, expect, deadline))
            start = stop
        return replies

    def _key(self, key: Key) -> bytes:
        return validate_key(key, self._prefix, self._unicode)

    def check_key(self, key: Key, key_prefix: Optional[bytes] = None) -> bytes:
        """Validate ``key`` and return it prefixed, as bytes (pymemcache's helper)."""
        prefix = self._prefix if key_prefix is None else key_prefix
        return validate_key(key, prefix, self._unicode)

    def _serialize(self, key: Key, value: Any, flags: Optional[int]) -> Tuple[bytes, int]:
        if self._raw_values and type(value) is bytes:  # what the default serde would do
            return value, 0 if flags is None else flags
        data, data_flags = self._serde.serialize(key, value)
        if type(data) is not bytes:
            data = coerce_to_bytes(data, self.options.encoding, key)
        return data, data_flags if flags is None else flags

    # ------------------------------------------------------------------ storage

    def _store(
        self,
        command: str,
        key: Key,
        value: Any,
        expire: int,
        noreply: Optional[bool],
        flags: Optional[int],
        cas: object = None,
    ) -> Optional[bool]:
        raw = self._key(key)
        data, data_flags = self._serialize(key, value, flags)
        noreply = resolve_noreply(noreply, self._noreply_default)
        request = encode_storage(command.encode(), raw, data, data_flags, expire, noreply, cas)
        if noreply:
            self.send(request, True)
            return True
        return self._one(RULES[command], request, False)  # type: ignore[no-any-return]

    def set(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        """Store ``value``. True when stored (always True with ``noreply``)."""
        return bool(self._store("set", key, value, expire, noreply, flags))

    def add(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        """Store only if the key is absent. False when it already existed."""
        return bool(self._store("add", key, value, expire, noreply, flags))

    def replace(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        """Store only if the key exists. False when it did not."""
        return bool(self._store("replace", key, value, expire, noreply, flags))

    def append(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        """Append to an existing value. False when the key did not exist."""
        return bool(self._store("append", key, value, expire, noreply, flags))

    def prepend(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        """Prepend to an existing value. False when the key did not exist."""
        return bool(self._store("prepend", key, value, expire, noreply, flags))

    def cas(
        self,
        key: Key,
        value: Any,
        cas: Union[int, str, bytes],
        expire: int = 0,
        noreply: bool = False,
        flags: Optional[int] = None,
    ) -> Optional[bool]:
        """Compare and swap: True if stored, False if the cas token was stale, None if the
        key does not exist."""
        if cas is None:
            # Sent without a token, the server would answer ERROR twice (to the line and to
            # the data block read as a command), shifting every later reply by one.
            raise MemcacheIllegalInputError("cas needs the token returned by gets")
        return self._store("cas", key, value, expire, noreply, flags, cas)

    def set_many(
        self,
        values: Mapping[Any, Any],
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> List[Key]:
        """Store many values in one pipelined pass; return the keys that were not stored.

        A server error for one key (a value over the item size limit) raises
        :class:`MemcacheServerError` after every reply was read; the others were stored.
        """
        noreply = resolve_noreply(noreply, self._noreply_default)
        keys: List[Key] = []
        requests: List[bytes] = []
        for key, value in values.items():
            raw = self._key(key)
            data, data_flags = self._serialize(key, value, flags)
            requests.append(encode_storage(b"set", raw, data, data_flags, expire, noreply))
            keys.append(key)
        if not requests:
            return []
        replies = self._pipeline(requests, RULES["set"], noreply)
        if noreply:
            return []
        results, error = per_key_results(keys, replies, RULES["set"])
        if error is not None:
            raise error
        return [k for k, stored in results if not stored]

    set_multi = set_many

    # ------------------------------------------------------------------ retrieval

    def _fetch(
        self, command: bytes, wanted: Dict[bytes, Key], expire: Optional[int], cas: bool
    ) -> Dict[bytes, Item]:
        """Retrieve ``wanted`` in requests of at most ``max_get_line`` bytes; a key
        answered twice over all the passes is a protocol error."""
        found: Dict[bytes, Item] = {}
        chunks = request_chunks(list(wanted), self.options.max_get_line)
        # (Several requests share one deadline.)
        deadline = command_deadline(self.options.timeout) if len(chunks) > 1 else None
        for chunk in chunks:
            keys: Container[bytes] = wanted if len(chunks) == 1 else set(chunk)
            reply = self.request(
                encode_retrieval(command, chunk, expire), ExpectValues(keys, found, cas), deadline
            )
            if type(reply) is ErrorReply:
                self.raise_error(reply, command.decode())
        return found

    def _fetch_values(
        self, command: bytes, keys: Iterable[Key], expire: Optional[int], with_cas: bool
    ) -> Dict[Key, Any]:
        wanted = validate_keys(keys, self._prefix, self._unicode)
        if not wanted:
            return {}
        try:
            found = self._fetch(command, wanted, expire, with_cas)
        except Exception:
            if self._ignore_exc:
                return {}
            raise
        return decode_values(found, wanted, self.options, with_cas)

    def get(self, key: Key, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it is missing."""
        raw = validate_key(key, self._prefix, self._unicode)
        try:
            sock = self.sock
            reader = self._reader
            if sock is None or reader is None or self._pending or self._owes_sync:
                found = self.request(b"get " + raw + b"\r\n", ExpectValues((raw,)))
            else:
                # send() and receive(), written out: this is the hottest path of all.
                # (A reader that gave up raises at once below, and the socket is closed.)
                request = b"get " + raw + b"\r\n"
                started = _monotonic()  # (the command's deadline counts from here)
                self._pending = True
                try:
                    found = {}
                    status: object = NEED_DATA
                    if sock is self._exchange_sock:  # the send and the first recv in one call
                        data = _exchange(sock, request, started)
                    elif self._send(sock, request, started):
                        data = None  # (a slow send: the whole reply by the deadline)
                    else:
                        now = self._recv_now
                        if now is not None and now[0] is sock:
                            try:
                                data = now[1](RECV_SIZE)
                            except BlockingIOError:  # not there yet: gevent's recv waits
                                data = sock.recv(RECV_SIZE)
                        else:
                            data = sock.recv(RECV_SIZE)
                    if data is not None:
                        if not data:
                            raise self._closed_mid_reply()
                        status = reader.feed_values(data, (raw,), found)
                    if status is NEED_DATA:  # one recv did not finish it: see _read_rest
                        parse = functools.partial(reader.read_values, (raw,), found)
                        deadline = self._deadline_from(started)
                        status = self._read_rest(sock, reader, parse, deadline)
                    if reader.buffered:
                        raise MemcacheProtocolError(self._leftover(reader))
                except BaseException as exc:
                    self._abort(exc)
                self._pending = False
                if status is not END:
                    found = status
            if type(found) is not dict:
                self.raise_error(found, "get")
        except Exception:
            if self._ignore_exc:
                return default
            raise
        item = found.get(raw)
        if item is None:
            return default
        if self._raw_values:
            return item[1]
        return decode_values(found, {raw: key}, self.options, False).get(key, default)

    def get_many(self, keys: Iterable[Key]) -> Dict[Key, Any]:
        """The values of the keys present, in one round trip: ``{key: value}``."""
        return self._fetch_values(b"get", keys, None, False)

    get_multi = get_many

    def gets(self, key: Key, default: Any = None, cas_default: Any = None) -> Tuple[Any, Any]:
        """``(value, cas)`` for ``key``, or ``(default, cas_default)`` when missing."""
        found = self._fetch_values(b"gets", (key,), None, True)
        return found[key] if found else (default, cas_default)

    def gets_many(self, keys: Iterable[Key]) -> Dict[Key, Tuple[Any, Any]]:
        """``{key: (value, cas)}`` for the keys present, in one round trip."""
        return self._fetch_values(b"gets", keys, None, True)

    gets_multi = gets_many

    def gat(self, key: Key, expire: int = 0, default: Any = None) -> Any:
        """Get ``key`` and set its expiry to ``expire`` in one command."""
        found = self._fetch_values(b"gat", (key,), expire, False)
        return found[key] if found else default

    def gats(
        self, key: Key, expire: int = 0, default: Any = None, cas_default: Any = None
    ) -> Tuple[Any, Any]:
        """Like :meth:`gets`, and set the expiry of ``key`` to ``expire``."""
        found = self._fetch_values(b"gats", (key,), expire, True)
        return found[key] if found else (default, cas_default)

    # ------------------------------------------------------------------ other commands

    def delete(self, key: Key, noreply: Optional[bool] = None) -> bool:
        """Delete ``key``. False when it did not exist (always True with ``noreply``)."""
        noreply = resolve_noreply(noreply, self._noreply_default)
        result = self._one(RULES["delete"], encode_delete(self._key(key), noreply), noreply)
        return True if noreply else bool(result)

    def delete_many(self, keys: Iterable[Key], noreply: Optional[bool] = None) -> bool:
        """Delete many keys in one pipelined pass. True (missing keys are not an error)."""
        noreply = resolve_noreply(noreply, self._noreply_default)
        keys = list(keys)
        requests = [encode_delete(self._key(key), noreply) for key in keys]
        replies = self._pipeline(requests, RULES["delete"], noreply)
        error = per_key_results(keys, replies, RULES["delete"])[1]
        if error is not None:
            raise error
        return True

    delete_multi = delete_many

    def _arith(self, command: str, key: Key, value: int, noreply: Optional[bool]) -> Optional[int]:
        noreply = bool(noreply)  # pymemcache: incr/decr are noreply only when asked
        request = encode_incr_decr(command.encode(), self._key(key), value, noreply)
        return self._one(RULES[command], request, noreply)  # type: ignore[no-any-return]

    def incr(
        self,
        key: Key,
        value: int,
        noreply: Optional[bool] = False,
        *,
        initial: Optional[int] = None,
        ttl: Optional[int] = None,
    ) -> Optional[int]:
        """Add ``value`` to a decimal counter; the new value, or None if it is missing.
        With ``initial`` (and ``ttl``) a missing counter is created as ``initial`` in the
        same round trip (``ma`` with ``N``/``J``: memcached 1.6)."""
        if initial is not None or ttl is not None:
            return self._counter(key, value, False, initial, ttl)
        return self._arith("incr", key, value, noreply)

    def decr(
        self,
        key: Key,
        value: int,
        noreply: Optional[bool] = False,
        *,
        initial: Optional[int] = None,
        ttl: Optional[int] = None,
    ) -> Optional[int]:
        """Subtract ``value`` (memcached stops at 0); the new value, or None if missing.
        ``initial`` and ``ttl`` as for :meth:`incr`."""
        if initial is not None or ttl is not None:
            return self._counter(key, value, True, initial, ttl)
        return self._arith("decr", key, value, noreply)

    def _counter(
        self, key: Key, delta: int, decrement: bool, initial: Optional[int], ttl: Optional[int]
    ) -> Optional[int]:
        result = self.meta_arithmetic(
            key,
            delta,
            decrement=decrement,
            initial=initial or 0,
            vivify_on_miss=ttl or 0,
        )
        return result.number

    def touch(self, key: Key, expire: int = 0, noreply: Optional[bool] = None) -> bool:
        """Set a new expiry. False when the key did not exist."""
        noreply = resolve_noreply(noreply, self._noreply_default)
        result = self._one(RULES["touch"], encode_touch(self._key(key), expire, noreply), noreply)
        return True if noreply else bool(result)

    def stats(self, *args: Union[str, bytes]) -> Dict[bytes, Any]:
        """The server's ``stats`` (with optional sub-command), values typed like pymemcache."""
        reply = self.request(encode_stats(*args), ExpectStats())
        if type(reply) is ErrorReply:
            self.raise_error(reply, "stats")
        return _typed_stats(reply)

    def _ok(self, request: bytes, noreply: bool, command: str) -> bool:
        self._one(RULES[command], request, noreply)
        return True

    def cache_memlimit(self, memlimit: int) -> bool:
        """Set the server's memory limit, in megabytes."""
        return self._ok(encode_cache_memlimit(memlimit), False, "cache_memlimit")

    def verbosity(self, level: int, noreply: Optional[bool] = None) -> bool:
        """Set the server's logging verbosity."""
        noreply = resolve_noreply(noreply, self._noreply_default)
        return self._ok(encode_verbosity(level, noreply), noreply, "verbosity")

    def flush_all(self, delay: int = 0, noreply: Optional[bool] = None) -> bool:
        """Invalidate every item, now or in ``delay`` seconds."""
        noreply = resolve_noreply(noreply, self._noreply_default)
        return self._ok(encode_flush_all(delay, noreply), noreply, "flush_all")

    def version(self) -> bytes:
        """The server's version, e.g. ``b"1.6.18"``."""
        return self._one(RULES["version"], b"version\r\n", False)  # type: ignore[no-any-return]

    def cluster_config(self) -> ClusterConfig:
        """AWS ElastiCache's ``config get cluster``: the cluster's version and nodes.
        A server that is not an ElastiCache configuration endpoint answers ``ERROR``:
        :class:`MemcacheUnknownCommandError`."""
        reply = self.request(encode_config_get(b"cluster"), ExpectConfig())
        if type(reply) is ErrorReply:
            self.raise_error(reply, "config get cluster")
        return reply  # type: ignore[no-any-return]

    def quit(self) -> None:
        """Tell the server to close the connection, and close it."""
        if self.sock is not None:
            try:
                self.sock.sendall(b"quit\r\n")
            except OSError:
                pass
        self.close()

    def shutdown(self, graceful: bool = False) -> None:
        """Ask the server to shut down (it needs ``--enable-shutdown``)."""
        try:
            self._one(RULES["shutdown"], encode_shutdown(graceful), False)
        except MemcacheUnexpectedCloseError:
            return
        self.close()

    def raw_command(
        self, command: Union[str, bytes], end_tokens: Union[str, bytes] = "\r\n"
    ) -> bytes:
        """Send one command line as is; return the reply up to ``end_tokens``.

        pymc cannot know where the reply of an arbitrary command ends, so it makes sure
        nothing follows: a second request (the sync marker) must be answered next. A reply
        longer than ``end_tokens`` says is a protocol error that closes the connection."""
        encoding = "utf-8" if self._unicode else "ascii"
        raw = command.encode(encoding) if isinstance(command, str) else command
        token = end_tokens.encode(encoding) if isinstance(end_tokens, str) else end_tokens
        if b"\r" in raw or b"\n" in raw:
            raise MemcacheIllegalInputError("raw_command takes one line, without CRLF")
        if not token:
            raise MemcacheIllegalInputError("raw_command needs non-empty end_tokens")
        reply: bytes = self.request(raw + b"\r\n", ExpectRaw(token))
        # Anything the server still sends for this command comes before the answer to a
        # sync marker: read up to it now (an error line is logged; anything else is a
        # protocol error), or, if interrupted, before the next command's reply.
        self._owes_sync = True
        self.request(b"", ExpectReplies(RULES["version"], 0))
        for kind in (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"):
            if reply == kind or reply.startswith(kind + b" ") or reply.startswith(kind + b":"):
                message = reply.partition(b" ")[2].decode("utf-8", "replace")
                self.raise_error(
                    ErrorReply(kind, message), raw.split(b" ", 1)[0].decode("ascii", "replace")
                )
        return reply

    # ------------------------------------------------------------------ meta protocol
    #
    # memcached 1.6's meta commands. Every request carries an opaque token that its reply
    # must echo (checked by meta.ExpectMeta), values go through the serde as with text
    # commands, and keys that are not valid text keys travel base64-encoded.

    def _opaque(self) -> bytes:
        self._opaque_counter = (self._opaque_counter + 1) & 0xFFFFFFF
        return b"%x" % self._opaque_counter

    def _meta(
        self, request: bytes, opaque: bytes, command: str, vivify: bool = False
    ) -> MetaResult:
        expect = ExpectMeta(opaque, None, False, command=command.encode(), vivify=vivify)
        result = self.request(request, expect)
        if type(result) is ErrorReply:
            self._meta_result(result, command)  # (raises)
        return result  # type: ignore[no-any-return]

    def _meta_result(self, result: Any, command: str) -> MetaResult:
        """``result`` (a reply to a meta request), or its error raised."""
        if type(result) is ErrorReply:
            self._meta_error(result, command)
        self._meta_ok = True
        return result  # type: ignore[no-any-return]

    def _meta_error(self, reply: ErrorReply, command: str) -> NoReturn:
        """Raise the error a meta command drew. A bare ``ERROR`` is a server without meta
        commands: how many more error lines the request draws is unknown (memcached before
        1.6 reads an ``ms`` data block as one more command line), so the connection is
        closed, and the error names the version a fresh connection reports."""
        if reply.kind == b"ERROR" and not reply.message:
            self.close()
            raise MemcacheUnknownCommandError(
                f"{server_name(self.server)} does not know the meta command {command} "
                f"(memcached {self._server_version()}); meta commands need 1.6 or later"
            )
        self.raise_error(reply, command)

    def _meta_checked(self, command: str) -> None:
        """Before the first value goes out in an ``ms`` on this connection: make sure the
        server knows meta commands (one ``mn`` round trip, once per connection). A server
        before 1.6 would read the data block as a command line of its own, and run it."""
        try:
            result = self.request(encode_meta_noop(), ExpectMeta(command=b"mn"))
        except MemcacheUnsupportedCommandError as exc:  # (a proxy that closes on mn)
            refused = MemcacheUnsupportedCommandError(
                str(exc).replace("answer to mn", f"answer to mn, pymc's check before {command}")
                + f": {command} needs meta commands"
            )
            refused.before_reply = True
            raise refused from exc
        if type(result) is ErrorReply:
            self._meta_error(result, command)
        self._meta_ok = True

    def _server_version(self) -> str:
        try:
            return self.version().decode("ascii", "replace")
        except MemcacheError:
            return "of unknown version"

    def _decoded(self, key: Key, result: MetaResult) -> MetaResult:
        """``result`` with its value deserialized, as a text get would return it."""
        if result.value is None or (self._raw_values and not result.client_flags):
            return result  # (a vivify placeholder is a miss: meta.ExpectMeta)
        value = self._serde.deserialize(key, result.value, result.client_flags or 0)
        return result.with_value(value)

    def meta_get(
        self,
        key: Key,
        *,
        return_cas: bool = False,
        return_ttl: bool = False,
        return_size: bool = False,
        return_hit: bool = False,
        return_last_access: bool = False,
        touch_ttl: Optional[int] = None,
        vivify_on_miss: Optional[int] = None,
        recache_ttl: Optional[int] = None,
        no_bump: bool = False,
        flags: str = "",
    ) -> MetaResult:
        """``mg``: the value (deserialized) and what was asked for, as a :class:`MetaResult`
        (``status`` ``"hit"`` or ``"miss"``; ``win``/``stale``/``won_elsewhere`` with
        ``vivify_on_miss`` or ``recache_ttl``). memcached's vivify placeholder (an empty
        item made by ``vivify_on_miss``, until a value replaces it) is a ``"miss"``: ``win``
        for its maker, ``won_elsewhere`` for the others."""
        wire, b64 = meta_key(key, self._prefix, True)  # any key: binary ones go base64
        opaque = self._opaque()
        request = encode_meta_get(
            wire,
            base64=b64,
            return_cas=return_cas,
            return_ttl=return_ttl,
            return_client_flags=True,
            return_size=return_size,
            return_hit=return_hit,
            return_last_access=return_last_access,
            opaque=opaque,
            touch_ttl=touch_ttl,
            vivify_on_miss=vivify_on_miss,
            recache_ttl=recache_ttl,
            no_bump=no_bump,
            flags=flags,
        )
        vivify = vivify_on_miss is not None or (flags != "" and flags_vivify(flags))
        return self._decoded(key, self._meta(request, opaque, "mg", vivify))

    def lease_get(
        self, key: Key, lease_ttl: int = 30, recache_ttl: Optional[int] = None
    ) -> MetaResult:
        """The probe :meth:`fetch` makes: the value (``mg`` with ``return_cas`` and
        ``recache_ttl``), and on a miss a try for the key's lease (:func:`~pymc.meta.lease_key`,
        held ``lease_ttl`` seconds). A ``"hit"`` is the value; with ``win`` this caller is the
        one to refresh it (stale, or near expiry). A ``"miss"`` with ``win`` holds the lease
        (its ``cas``); with ``won_elsewhere`` another caller holds it. Give a win or a lease
        back through :meth:`lease_set` or :meth:`lease_release`."""
        # The request around its opaque is built and checked once per key (a read-through
        # probes its hot keys again and again); only exact str/bytes keys and int ttls are
        # remembered, so that 30.0 or True never passes for what was checked as 30 or 1.
        memo: Any = None
        template = None
        if (
            (type(key) is str or type(key) is bytes)
            and type(lease_ttl) is int
            and (recache_ttl is None or type(recache_ttl) is int)
        ):
            memo = (key, lease_ttl, recache_ttl)
            template = self._lease_templates.get(memo)
        if template is None:
            wire, b64 = meta_key(key, self._prefix, True)
            template = lease_get_template(wire, lease_ttl, recache_ttl, base64=b64)
            if memo is not None:
                if len(self._lease_templates) >= LEASE_TEMPLATES:
                    self._lease_templates.clear()
                self._lease_templates[memo] = template
        opaque = self._opaque()
        result = self.request(template[0] + opaque + template[1], ExpectMeta(opaque))
        if type(result) is ErrorReply:
            self._meta_result(result, "mg")  # (raises)
        if result.status == "miss" and not result.won_elsewhere:
            result = self._take_lease(key, lease_ttl, template)
        return self._decoded(key, result)

    def _take_lease(self, key: Key, lease_ttl: int, template: Tuple[bytes, bytes]) -> MetaResult:
        """On a miss: add the key's lease and probe the key again, in one round trip (a
        holder stores the value before it frees its lease, so a lease won after that finds
        the value)."""
        wire = lease_key(key, self._prefix)
        first, then = self._opaque(), self._opaque()
        add = encode_meta_set(
            wire, b"", base64=True, ttl=lease_ttl, mode="add", return_cas=True, opaque=first
        )
        replies = self.request(
            add + template[0] + then + template[1],
            ExpectMetaEach([ExpectMeta(first, command=b"ms"), ExpectMeta(then)]),
        )
        lease = self._meta_result(replies[0], "ms")
        found = self._meta_result(replies[1], "mg")
        if lease.status == "stored":
            if found.status == "miss":
                return MetaResult("miss", cas=lease.cas, win=True)
            self._free_lease(key, lease.cas)  # filled meanwhile: the value, and no lease
            return found
        if found.status == "miss":
            return MetaResult("miss", won_elsewhere=True)
        return found

    def _free_lease(self, key: Key, cas: Optional[int]) -> bool:
        opaque = self._opaque()
        wire = lease_key(key, self._prefix)
        request = encode_meta_delete(wire, base64=True, compare_cas=cas, opaque=opaque)
        return self._meta(request, opaque, "md").status == "deleted"

    def lease_set(self, key: Key, value: Any, ttl: int, lease: MetaResult) -> bool:
        """Store ``value`` as what this caller's win or lease (``lease``, from
        :meth:`lease_get`) computed, and give the lease back; False if it was not stored
        (another value came meanwhile, or the lease was lost).

        A lease on a missing key stores in add mode, then frees the lease; had the lease
        gone meanwhile (``invalidate()``, or it expired and another caller took it), the
        value just stored is taken back. A refresh stores only over the value it won
        (``cas``); if the server refuses the new value (too large: memcached then drops the
        key), the old value is put back as it was (stale if it was), unless another write
        replaced it meanwhile, and the error raised."""
        data, client_flags = self._serialize(key, value, None)
        wire, b64 = meta_key(key, self._prefix, True)
        first, then = self._opaque(), self._opaque()
        if lease.status != "hit":  # a lease on a missing key
            store = encode_meta_set(
                wire,
                data,
                base64=b64,
                client_flags=client_flags,
                ttl=ttl,
                mode="add",
                return_cas=True,
                opaque=first,
            )
            free = encode_meta_delete(
                lease_key(key, self._prefix), base64=True, compare_cas=lease.cas, opaque=then
            )
            unsure = True  # the value may be stored, and whether the lease held is not known
            try:
                replies = self.request(
                    store + free,
                    ExpectMetaEach(
                        [ExpectMeta(first, command=b"ms"), ExpectMeta(then, command=b"md")]
                    ),
                )
                if type(replies[0]) is ErrorReply or replies[0].status != "stored":
                    unsure = False  # nothing was stored
                stored = self._meta_result(replies[0], "ms")
                freed = self._meta_result(replies[1], "md")
                if stored.status == "stored" and freed.status != "deleted":
                    # The lease went while this caller computed: what it computed may
                    # predate the write that invalidated it.
                    opaque = self._opaque()
                    undo = encode_meta_delete(
                        wire, base64=b64, compare_cas=stored.cas, opaque=opaque
                    )
                    self._meta(undo, opaque, "md")
                    unsure = False
                    return False
                unsure = False
                return stored.status == "stored"
            except BaseException:
                # Interrupted (gevent.Timeout, KeyboardInterrupt) or cut off between the
                # store and knowing that the lease held (or during the undo): take the value
                # back, whatever is there now. A miss is never a wrong value; a value
                # computed before a write would be served until its ttl ends.
                if unsure:
                    self._take_back(wire, b64)
                raise
        ask = encode_meta_get(
            wire, base64=b64, value=False, return_cas=True, return_ttl=True, opaque=first
        )
        store = encode_meta_set(
            wire,
            data,
            base64=b64,
            client_flags=client_flags,
            ttl=ttl,
            compare_cas=lease.cas,
            opaque=then,
        )
        replies = self.request(
            ask + store, ExpectMetaEach([ExpectMeta(first), ExpectMeta(then, command=b"ms")])
        )
        before = self._meta_result(replies[0], "mg")
        # memcached drops the key when it refuses a value (too large), whatever the cas:
        # put the won value back only if it was still there just before the store, so that
        # a newer write it dropped is never replaced by the older value.
        if (
            type(replies[1]) is ErrorReply
            and replies[1].in_step
            and before.hit
            and before.cas == lease.cas
        ):
            try:
                self._put_back(key, wire, b64, lease, before.ttl)
            except MemcacheError:
                pass  # (the error that dropped it is the one to raise)
        return self._meta_result(replies[1], "ms").status == "stored"

    def _take_back(self, wire: bytes, b64: bool) -> None:
        """Delete the key (best effort, on a fresh connection if need be): the way out
        of a fill whose outcome is unknown."""
        try:
            opaque = self._opaque()
            self._meta(encode_meta_delete(wire, base64=b64, opaque=opaque), opaque, "md")
        except Exception:  # (the error that got here is the one to raise)
            pass

    def _put_back(
        self,
        key: Key,
        wire: bytes,
        b64: bool,
        lease: MetaResult,
        ttl: Optional[int],
        compare_cas: Optional[int] = None,
    ) -> bool:
        """Store again the value a refresh won, for the time it had left (``ttl``, from
        ``mg ... t``), stale if it was: over itself (``compare_cas``: a fresh item, whose
        win the next caller gets again), or in add mode (memcached dropped it when it
        refused the new value). False if it was not stored."""
        data, client_flags = self._serialize(key, lease.value, None)
        opaque = self._opaque()
        request = encode_meta_set(
            wire,
            data,
            base64=b64,
            client_flags=client_flags,
            ttl=0 if ttl is None or ttl < 0 else max(ttl, 1),
            mode="add" if compare_cas is None else None,
            compare_cas=compare_cas,
            return_cas=True,
            opaque=opaque,
        )
        if not lease.stale:
            return self._meta(request, opaque, "ms").status == "stored"
        # A stale value goes back stale: the mark goes in the same request, so that no
        # reader (nor an interruption between two round trips) finds it fresh. Whatever is
        # there then is marked (a newer value that won the add is served stale while one
        # caller refreshes it: never older than what was written).
        then = self._opaque()
        stale = encode_meta_delete(wire, base64=b64, invalidate=True, opaque=then)
        replies = self.request(
            request + stale,
            ExpectMetaEach([ExpectMeta(opaque, command=b"ms"), ExpectMeta(then, command=b"md")]),
        )
        self._meta_result(replies[1], "md")
        return self._meta_result(replies[0], "ms").status == "stored"

    def lease_release(self, key: Key, lease: MetaResult) -> bool:
        """Give back a win or a lease (from :meth:`lease_get`) without storing anything: the
        lease of a missing key is freed; a won refresh leaves the value as it was, and the
        next caller wins it again (a stale value is marked stale again; a value near expiry
        is stored again as it was, for the time it had left). False if there was nothing
        left to give back (the value changed meanwhile)."""
        if lease.status != "hit":
            return self._free_lease(key, lease.cas)
        wire, b64 = meta_key(key, self._prefix, True)
        opaque = self._opaque()
        if lease.stale:
            request = encode_meta_delete(
                wire, base64=b64, compare_cas=lease.cas, invalidate=True, opaque=opaque
            )
            return self._meta(request, opaque, "md").status == "deleted"
        request = encode_meta_get(wire, base64=b64, value=False, return_ttl=True, opaque=opaque)
        before = self._meta(request, opaque, "mg")
        if not before.hit:
            return False
        return self._put_back(key, wire, b64, lease, before.ttl, lease.cas)

    def meta_set(
        self,
        key: Key,
        value: Any,
        ttl: int = 0,
        *,
        mode: Optional[str] = None,
        compare_cas: Optional[int] = None,
        invalidate: bool = False,
        return_cas: bool = False,
        flags: str = "",
    ) -> MetaResult:
        """``ms``: store ``value`` (through the serde); ``mode`` is ``"set"`` (default),
        ``"add"``, ``"replace"``, ``"append"`` or ``"prepend"``. ``status`` is ``"stored"``,
        ``"not_stored"``, ``"exists"`` (stale ``compare_cas``) or ``"not_found"``."""
        wire, b64 = meta_key(key, self._prefix, True)  # any key: binary ones go base64
        data, client_flags = self._serialize(key, value, None)
        if not self._meta_ok or self.sock is None:
            self._meta_checked("ms")
        opaque = self._opaque()
        request = encode_meta_set(
            wire,
            data,
            base64=b64,
            client_flags=client_flags,
            ttl=ttl,
            mode=mode,
            compare_cas=compare_cas,
            invalidate=invalidate,
            return_cas=return_cas,
            opaque=opaque,
            flags=flags,
        )
        return self._meta(request, opaque, "ms")

    def meta_delete(
        self,
        key: Key,
        *,
        compare_cas: Optional[int] = None,
        invalidate: bool = False,
        ttl: Optional[int] = None,
        flags: str = "",
    ) -> MetaResult:
        """``md``: delete, or with ``invalidate`` mark the value stale (served while one
        caller refreshes it). ``status`` is ``"deleted"`` (done), ``"not_found"`` or
        ``"exists"`` (stale ``compare_cas``)."""
        wire, b64 = meta_key(key, self._prefix, True)  # any key: binary ones go base64
        opaque = self._opaque()
        request = encode_meta_delete(
            wire,
            base64=b64,
            compare_cas=compare_cas,
            invalidate=invalidate,
            ttl=ttl,
            opaque=opaque,
            flags=flags,
        )
        return self._meta(request, opaque, "md")

    def meta_arithmetic(
        self,
        key: Key,
        delta: int = 1,
        *,
        decrement: bool = False,
        initial: Optional[int] = None,
        vivify_on_miss: Optional[int] = None,
        ttl: Optional[int] = None,
        compare_cas: Optional[int] = None,
        return_cas: bool = False,
        flags: str = "",
    ) -> MetaResult:
        """``ma``: add (or subtract) ``delta``; ``number`` is the new value. With
        ``vivify_on_miss`` a missing counter is created as ``initial`` (default 0) with
        that ttl."""
        wire, b64 = meta_key(key, self._prefix, True)  # any key: binary ones go base64
        opaque = self._opaque()
        request = encode_meta_arithmetic(
            wire,
            base64=b64,
            decrement=decrement,
            delta=delta,
            initial=initial,
            vivify_on_miss=vivify_on_miss,
            ttl=ttl,
            compare_cas=compare_cas,
            return_cas=return_cas,
            opaque=opaque,
            flags=flags,
        )
        return self._meta(request, opaque, "ma")

    def meta_noop(self) -> MetaResult:
        """``mn``: a round trip that does nothing (``status`` ``"noop"``)."""
        result = self.request(encode_meta_noop(), ExpectMeta(command=b"mn"))
        if type(result) is ErrorReply:
            self._meta_error(result, "mn")
        self._meta_ok = True
        return result  # type: ignore[no-any-return]

    def get_cas(self, key: Key, default: Any = None) -> Tuple[Any, Optional[int]]:
        """``(value, cas)`` through ``mg``, or ``(default, None)`` on a miss."""
        result = self.meta_get(key, return_cas=True)
        return (result.value, result.cas) if result.status == "hit" else (default, None)

    def set_cas(self, key: Key, value: Any, cas: int, ttl: int = 0) -> bool:
        """Store ``value`` only if the item's cas is still ``cas``; False if it changed or
        the key is gone."""
        return self.meta_set(key, value, ttl, compare_cas=cas).status == "stored"

    def invalidate(self, key: Key, ttl: int = 30) -> bool:
        """Mark ``key`` stale instead of deleting it: the next :meth:`fetch` gets the stale
        value at once while one caller recomputes it. A :meth:`fetch` filling the missing
        key loses its lease, so that what it computed before the write is not stored. True
        if the key existed."""
        wire, b64 = meta_key(key, self._prefix, True)  # any key: binary ones go base64
        first, then = self._opaque(), self._opaque()
        request = encode_meta_delete(
            wire, base64=b64, invalidate=True, ttl=ttl, opaque=first
        ) + encode_meta_delete(lease_key(key, self._prefix), base64=True, opaque=then)
        replies = self.request(
            request,
            ExpectMetaEach([ExpectMeta(first, command=b"md"), ExpectMeta(then, command=b"md")]),
        )
        self._meta_result(replies[1], "md")
        return self._meta_result(replies[0], "md").status == "deleted"

    def fetch(
        self,
        key: Key,
        compute: Callable[[], Any],
        ttl: int = 0,
        *,
        lease_ttl: int = 30,
        recache_ttl: Optional[int] = None,
        wait: Optional[float] = None,
    ) -> Any:
        """Read-through with herd protection and stale-while-revalidate: see
        :func:`read_through`."""
        return read_through(self, key, compute, ttl, lease_ttl, recache_ttl, wait)

    # Quiet pipelines: each request says ``q`` and carries its own opaque; one ``mn``
    # ends the batch; only misses and failures come back (``ExpectMetaQuiet`` checks that
    # every reply belongs to a request of the batch, in order).

    def _deadline_for(self, requests: int) -> Optional[float]:
        """One deadline for a command of several requests (None for one: see receive)."""
        return command_deadline(self.options.timeout) if requests > 1 else None

    def meta_wires(self, keys: Iterable[Any]) -> Dict[bytes, Tuple[Any, bool]]:
        """``{wire key: (key, base64?)}``; spellings of one key are one key (the last)."""
        out: Dict[bytes, Tuple[Any, bool]] = {}
        for key in keys:
            wire, b64 = meta_key(key, self._prefix, True)
            out[wire] = (key, b64)
        return out

    def meta_get_many(self, keys: Iterable[Key]) -> Dict[Key, Any]:
        """The values (deserialized) of the keys present, in one quiet pipeline per
        batch: ``mg ... q`` for each key, then ``mn``; the server sends only the hits."""
        keys = keys if type(keys) is list else list(keys)
        try:
            text = validate_keys(keys, self._prefix, True)  # (what meta_key sends as it is)
        except MemcacheIllegalInputError:
            text = None  # a key that goes base64 (or a bad one: meta_wires says which)
        if text is not None and (
            len(text) * (MAX_KEY_LENGTH + 40) < QUIET_BATCH_BYTES  # (no need to add up)
            or sum(map(len, text)) + 40 * len(text) < QUIET_BATCH_BYTES
        ):
            # One batch of text keys (meta_batches would make one): encoded, read and
            # matched without a Python turn per key where the compiled module is in use.
            if not text:
                return {}
            first = self._opaque_counter + 1  # (the opaques _opaque would give, in turn)
            self._opaque_counter = (self._opaque_counter + len(text)) & OPAQUE_MASK
            request, opaques = encode_quiet_gets(list(text), first)
            found = self.request(request, ExpectMetaQuiet.gets(opaques))
            if type(found) is ErrorReply:
                self._meta_error(found, "mg")
            self._meta_ok = True
            return self.meta_values(found, dict(zip(opaques, text.values())))
        out: Dict[Key, Any] = {}
        batches = meta_batches(list(self.meta_wires(keys).items()))
        deadline = self._deadline_for(len(batches))
        for batch in batches:
            request, sent, key_of = quiet_gets(batch, self._opaque)
            found = self.request(request, ExpectMetaQuiet(sent), deadline)
            if type(found) is ErrorReply:
                self._meta_error(found, "mg")
            self._meta_ok = True
            out.update(self.meta_values(found, key_of))
        return out

    def meta_values(
        self, found: Dict[bytes, MetaResult], key_of: Dict[bytes, Any]
    ) -> Dict[Any, Any]:
        """``{key: value}`` (deserialized) of the hits of a quiet ``mg`` pipeline."""
        if self._raw_values:  # (the default serde returns the bytes, whatever the flags)
            # (r[0], r[1]: status and value, read without the named tuple's descriptors)
            return {key_of[token]: r[1] for token, r in found.items() if r[0] == "hit"}
        out: Dict[Any, Any] = {}
        for token, result in found.items():
            if result.status == "hit":
                key = key_of[token]
                out[key] = self._decoded(key, result).value
        return out

    def meta_set_many(self, values: Mapping[Any, Any], ttl: int = 0) -> List[Any]:
        """Store many values in one quiet pipeline per batch; return the keys that were not
        stored. An error line (a value over the item size limit) names no request, so that
        batch is sent again with a reply for each (a set may run twice), and the error is
        raised once every reply was read, as :meth:`set_many` does."""
        failed: List[Any] = []
        errors: List[Tuple[Any, ErrorReply]] = []
        wires = self.meta_wires(values)
        if wires and (not self._meta_ok or self.sock is None):
            self._meta_checked("ms")
        batches = meta_batches(list(wires.items()))
        deadline = self._deadline_for(len(batches))
        for batch in batches:
            lines: List[Tuple[bytes, bytes, Any]] = []  # (opaque, request without q, key)
            for wire, (key, b64) in batch:
                data, client_flags = self._serialize(key, values[key], None)
                opaque = self._opaque()
                options = dict(base64=b64, client_flags=client_flags, ttl=ttl, opaque=opaque)
                lines.append((opaque, encode_meta_set(wire, data, quiet=True, **options), key))
            sent: List[Tuple[bytes, ...]] = [(opaque, b"ms") for opaque, _, _ in lines]
            request = b"".join(line for _, line, _ in lines) + encode_meta_noop()
            found = self.request(request, ExpectMetaQuiet(sent), deadline)
            if type(found) is not ErrorReply:
                key_of = {opaque: key for opaque, _, key in lines}
                failed.extend(key_of[o] for o, r in found.items() if r.status != "stored")
                continue
            if not found.in_step or (found.kind == b"ERROR" and not found.message):
                self._meta_error(found, "ms")
            # Which request drew the error? Ask again, one reply each, in order.
            loud = []
            for wire, (key, b64) in batch:
                data, client_flags = self._serialize(key, values[key], None)
                opaque = self._opaque()
                options = dict(base64=b64, client_flags=client_flags, ttl=ttl, opaque=opaque)
                loud.append((opaque, encode_meta_set(wire, data, **options), key))
            replies = self.request(
                b"".join(line for _, line, _ in loud),
                ExpectMetaEach([ExpectMeta(opaque, command=b"ms") for opaque, _, _ in loud]),
                deadline,
            )
            for (_, _, key), reply in zip(loud, replies):
                if type(reply) is ErrorReply:
                    errors.append((key, reply))
                elif reply.status != "stored":
                    failed.append(key)
        if errors:
            names = ", ".join(repr(k) for k, _ in errors[:5])
            self.raise_error(errors[0][1], f"meta_set_many of {len(errors)} key(s): {names}")
        return failed

    def meta_delete_many(self, keys: Iterable[Key], *, invalidate: bool = False) -> List[Key]:
        """Delete (or with ``invalidate`` mark stale) many keys in one quiet pipeline per
        batch; return the keys that were not found."""
        missing: List[Key] = []
        batches = meta_batches(list(self.meta_wires(keys).items()))
        deadline = self._deadline_for(len(batches))
        for batch in batches:
            request, sent, key_of = quiet_deletes(batch, self._opaque, invalidate)
            found = self.request(request, ExpectMetaQuiet(sent), deadline)
            if type(found) is ErrorReply:
                self._meta_error(found, "md")
            self._meta_ok = True
            missing.extend(key_of[t] for t, r in found.items() if r.status == "not_found")
        return missing

    # ------------------------------------------------------------------ mapping sugar

    def __getitem__(self, key: Key) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: Key, value: Any) -> None:
        self.set(key, value)

    def __delitem__(self, key: Key) -> None:
        self.delete(key)


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


def _observe(client: Client) -> None:
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


P = ParamSpec("P")
R = TypeVar("R")


def _delegate(
    method: Callable[Concatenate[Client, P], R],
) -> Callable[Concatenate[Commands, P], R]:
    """A method that runs the Client command ``method`` through ``self.run``."""
    name = method.__name__

    @functools.wraps(method)
    def call(self: Commands, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.run(name, args, kwargs)  # type: ignore[no-any-return]

    return call


class Commands:
    """Every :class:`Client` command, with Client's signature, each run by :meth:`run`: the
    base of the clients that run the commands somewhere else (``PooledClient`` on a pooled
    connection, ``RetryingClient`` on the client it wraps, with retries)."""

    def run(self, name: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        """Run the Client command ``name`` with ``args`` and ``kwargs`` (passed as a tuple
        and a dict, so no keyword of the caller can collide with a parameter of this)."""
        raise NotImplementedError

    set = _delegate(Client.set)
    set_many = _delegate(Client.set_many)
    set_multi = set_many
    add = _delegate(Client.add)
    replace = _delegate(Client.replace)
    append = _delegate(Client.append)
    prepend = _delegate(Client.prepend)
    cas = _delegate(Client.cas)
    get = _delegate(Client.get)
    get_many = _delegate(Client.get_many)
    get_multi = get_many
    gets = _delegate(Client.gets)
    gets_many = _delegate(Client.gets_many)
    gets_multi = gets_many
    gat = _delegate(Client.gat)
    gats = _delegate(Client.gats)
    delete = _delegate(Client.delete)
    delete_many = _delegate(Client.delete_many)
    delete_multi = delete_many
    incr = _delegate(Client.incr)
    decr = _delegate(Client.decr)
    touch = _delegate(Client.touch)
    stats = _delegate(Client.stats)
    cache_memlimit = _delegate(Client.cache_memlimit)
    version = _delegate(Client.version)
    verbosity = _delegate(Client.verbosity)
    flush_all = _delegate(Client.flush_all)
    quit = _delegate(Client.quit)
    shutdown = _delegate(Client.shutdown)
    raw_command = _delegate(Client.raw_command)
    cluster_config = _delegate(Client.cluster_config)
    meta_get = _delegate(Client.meta_get)
    lease_get = _delegate(Client.lease_get)
    lease_set = _delegate(Client.lease_set)
    lease_release = _delegate(Client.lease_release)
    meta_set = _delegate(Client.meta_set)
    meta_delete = _delegate(Client.meta_delete)
    meta_arithmetic = _delegate(Client.meta_arithmetic)
    meta_noop = _delegate(Client.meta_noop)
    meta_get_many = _delegate(Client.meta_get_many)
    meta_set_many = _delegate(Client.meta_set_many)
    meta_delete_many = _delegate(Client.meta_delete_many)
    get_cas = _delegate(Client.get_cas)
    set_cas = _delegate(Client.set_cas)
    invalidate = _delegate(Client.invalidate)

    def fetch(
        self,
        key: Key,
        compute: Callable[[], Any],
        ttl: int = 0,
        *,
        lease_ttl: int = 30,
        recache_ttl: Optional[int] = None,
        wait: Optional[float] = None,
    ) -> Any:
        """As :meth:`Client.fetch`; each step takes a connection of its own, so none is
        held while this caller waits for another's lease."""
        return read_through(self, key, compute, ttl, lease_ttl, recache_ttl, wait)
