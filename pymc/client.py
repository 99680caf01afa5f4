"""`Client`: one blocking socket to one memcached server, and the whole command set.

A Client is not thread-safe: share a :class:`~pymc.pool.PooledClient` instead.

Safety rule: whatever goes wrong in the middle of a command (a socket error, a timeout, a
malformed reply, ``gevent.Timeout``, ``KeyboardInterrupt``) closes the socket before the
exception leaves the Client. The next call reconnects, so no caller ever reads the reply
meant for another command.
"""

from __future__ import annotations

import dataclasses
import select
import selectors
import socket
import ssl
from typing import (
    Any,
    Callable,
    Container,
    Dict,
    Iterable,
    List,
    Mapping,
    NoReturn,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

from .exceptions import (
    MemcacheAuthenticationError,
    MemcacheConnectError,
    MemcacheConnectTimeoutError,
    MemcacheError,
    MemcacheIllegalInputError,
    MemcacheNetworkError,
    MemcacheProtocolError,
    MemcacheTimeoutError,
    MemcacheUnexpectedCloseError,
)
from .protocol import (
    DELETED,
    END,
    EXISTS,
    NEED_DATA,
    NOT_FOUND,
    NOT_STORED,
    OK,
    STORED,
    TOUCHED,
    ClusterConfig,
    ErrorReply,
    Reader,
    Reply,
    Stat,
    Version,
    encode_auth,
    encode_cache_memlimit,
    encode_config_get,
    encode_delete,
    encode_flush_all,
    encode_incr_decr,
    encode_retrieval,
    encode_shutdown,
    encode_stats,
    encode_storage,
    encode_touch,
    encode_verbosity,
    validate_key,
    validate_keys,
)
from .serde import DefaultSerde, LegacyWrappingSerde, Serde, coerce_to_bytes

__all__ = ["Client", "ClientOptions", "KeepaliveOpts", "normalize_server_spec"]

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
_MISSING: Any = object()


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
    connect_timeout: Optional[float] = None
    timeout: Optional[float] = None
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

    @classmethod
    def create(
        cls,
        serde: Optional[Serde] = None,
        serializer: Optional[Callable[[Any, Any], Tuple[bytes, int]]] = None,
        deserializer: Optional[Callable[[Any, bytes, int], Any]] = None,
        connect_timeout: Optional[float] = None,
        timeout: Optional[float] = None,
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
        for name, value in (("connect_timeout", connect_timeout), ("timeout", timeout)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be None or > 0, got {value!r}")
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        return cls(
            serde,
            connect_timeout,
            timeout,
            no_delay,
            ignore_exc,
            socket_module,
            socket_keepalive,
            key_prefix,
            default_noreply,
            allow_unicode_keys,
            encoding,
            tls_context,
            username,
            password,
        )


def _send(sock: Any, request: bytes) -> None:
    """``sendall``, but one plain ``send()`` when that takes it all, as it nearly always
    does for a request: under gevent that skips a layer of Python per command."""
    sent = sock.send(request)
    if sent < len(request):
        sock.sendall(memoryview(request)[sent:])


# Reply collectors: run after the request is sent, read exactly that request's replies.


def _collect_one(client: Client, _: object) -> Reply:
    return client._reply()


def _collect_n(client: Client, count: int) -> List[Reply]:
    read = client._reply
    return [read() for _ in range(count)]


def _collect_items(
    client: Client, wanted: Container[bytes]
) -> Union[Dict[bytes, Item], ErrorReply]:
    """The answer to one retrieval command: ``{raw key: (flags, data, cas)}``."""
    reader = client._reader
    sock = client.sock
    assert reader is not None and sock is not None
    found: Dict[bytes, Item] = {}
    # A request was just sent, so its answer is still to come: receive before parsing
    # (whatever was left buffered is parsed first, in order).
    status: object = NEED_DATA
    while status is NEED_DATA:
        data = sock.recv(RECV_SIZE)
        if not data:
            raise client._closed_mid_reply()
        status = reader.feed_values(data, wanted, found)
    if status is END:
        return found
    if found:
        raise MemcacheProtocolError(f"an error in the middle of a retrieval: {status!r}")
    return status  # type: ignore[return-value]


def _collect_stats(client: Client, _: object) -> Union[Dict[bytes, bytes], ErrorReply]:
    stats: Dict[bytes, bytes] = {}
    while True:
        reply = client._reply()
        if reply is END or reply == OK:
            return stats
        if type(reply) is Stat:
            stats[reply.name] = reply.value
        elif type(reply) is ErrorReply and not stats:
            return reply
        else:
            raise MemcacheProtocolError(f"unexpected reply to stats: {reply!r}")


def _collect_config(client: Client, _: object) -> Reply:
    reply = client._reply()
    if type(reply) is ClusterConfig and client._reply() is not END:
        raise MemcacheProtocolError("a CONFIG block not followed by END")
    return reply


def _collect_raw(client: Client, token: bytes) -> bytes:
    return client._read_until(token)


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


class Client:
    """A client for one memcached server over one blocking socket.

    The arguments are pymemcache 4.0's, with safer defaults for ``no_delay`` (True) and
    ``default_noreply`` (False), plus ``username``/``password`` for ASCII auth. Nothing
    connects until the first command.
    """

    def __init__(
        self,
        server: ServerSpec,
        serde: Optional[Serde] = None,
        serializer: Optional[Callable[[Any, Any], Tuple[bytes, int]]] = None,
        deserializer: Optional[Callable[[Any, bytes, int], Any]] = None,
        connect_timeout: Optional[float] = None,
        timeout: Optional[float] = None,
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
    ) -> None:
        options = ClientOptions.create(
            serde,
            serializer,
            deserializer,
            connect_timeout,
            timeout,
            no_delay,
            ignore_exc,
            socket_module,
            socket_keepalive,
            key_prefix,
            default_noreply,
            allow_unicode_keys,
            encoding,
            tls_context,
            username,
            password,
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
        # A noreply command was sent since connecting: the server may still send an error
        # line for it, so after an error reply the connection cannot be trusted.
        self._noreply_sent = False

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
            sock.settimeout(opts.timeout)
            self.sock = sock
            self._reader = Reader()
            self._noreply_sent = False
            if opts.username is not None:
                self._authenticate(opts.username, opts.password or "")
            return sock
        except BaseException as exc:
            self.sock = None
            self._reader = None
            if sock is not None:
                sock.close()
            if isinstance(exc, MemcacheError) or not isinstance(exc, OSError):
                raise
            if isinstance(exc, socket.timeout):
                raise MemcacheConnectTimeoutError(
                    exc.errno, f"timed out connecting to {server_name(server)}"
                ) from exc
            raise MemcacheConnectError(
                exc.errno, f"cannot connect to {server_name(server)}: {exc}"
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
        reply = self._execute(encode_auth(username, password), _collect_one, None)
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
        if reader is None or reader.buffered or reader.broken:
            return False
        try:
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return False  # decrypted bytes already inside the TLS layer: unread
            # Looked up on each call: under gevent's patch_all this is gevent's poll (the
            # check then also works when pymc was imported first); where there is no poll
            # at all (Windows), selectors picks what the platform has.
            poll = getattr(select, "poll", None)
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

    @property
    def owes_sync(self) -> bool:
        """Whether a ``noreply`` command was sent whose error line (if any) is unread."""
        return self._noreply_sent

    def close(self) -> None:
        """Close the socket, if open. The next command reconnects."""
        sock = self.sock
        self.sock = None
        self._reader = None
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

    def _execute(
        self, request: bytes, collect: Callable[[Client, A], T], arg: A, noreply: bool = False
    ) -> T:
        """Send ``request`` and collect its replies; on *any* failure close the socket."""
        sock = self.sock
        if sock is None:
            sock = self._connect()
        try:
            _send(sock, request)
            if noreply:
                self._noreply_sent = True
                return None  # type: ignore[return-value]
            return collect(self, arg)
        except BaseException as exc:
            self._abort(exc)

    def _begin(self, request: bytes) -> None:
        """The sending half of :meth:`_execute`, for fanning out over many servers: a
        caller sends to all of them before it reads any reply with :meth:`_complete`."""
        sock = self.sock
        if sock is None:
            sock = self._connect()
        try:
            _send(sock, request)
        except BaseException as exc:
            self._abort(exc)

    def _complete(self, collect: Callable[[Client, A], T], arg: A) -> T:
        """The reading half of :meth:`_execute`."""
        try:
            return collect(self, arg)
        except BaseException as exc:
            self._abort(exc)

    def _abort(self, exc: BaseException) -> NoReturn:
        """Close the connection (its state is unknown) and raise ``exc`` as pymc's."""
        self.close()
        if isinstance(exc, OSError) and not isinstance(exc, MemcacheError):
            raise self._network_error(exc) from exc
        raise exc

    def _network_error(self, exc: OSError) -> MemcacheNetworkError:
        name = server_name(self.server)
        if isinstance(exc, socket.timeout):
            return MemcacheTimeoutError(exc.errno, f"timed out talking to {name}")
        return MemcacheNetworkError(exc.errno, f"connection to {name} failed: {exc}")

    def _reply(self) -> Reply:
        """The next reply, reading from the socket as needed."""
        reader = self._reader
        assert reader is not None and self.sock is not None
        reply = reader.next_reply()
        while reply is NEED_DATA:
            data = self.sock.recv(RECV_SIZE)
            if not data:
                raise self._closed_mid_reply()
            reader.feed(data)
            reply = reader.next_reply()
        return reply  # type: ignore[return-value]

    def _closed_mid_reply(self) -> MemcacheUnexpectedCloseError:
        return MemcacheUnexpectedCloseError(
            f"{server_name(self.server)} closed the connection mid-reply"
        )

    def _read_until(self, token: bytes) -> bytes:
        reader = self._reader
        assert reader is not None and self.sock is not None
        out = reader.read_until(token)
        while out is NEED_DATA:
            data = self.sock.recv(RECV_SIZE)
            if not data:
                raise self._closed_mid_reply()
            reader.feed(data)
            out = reader.read_until(token)
        return out  # type: ignore[return-value]

    def _bad_reply(self, reply: object, command: str) -> NoReturn:
        """Raise for a reply the command does not expect. An error reply leaves the
        connection in step (unless a noreply command may still answer); anything else
        means it is not, so it is closed."""
        if type(reply) is ErrorReply:
            if self._noreply_sent:
                self.close()
            raise reply.exception(command)
        self.close()
        raise MemcacheProtocolError(f"unexpected reply to {command}: {reply!r}")

    def _pipeline(self, requests: List[bytes], noreply: bool) -> List[Reply]:
        """Send many commands and read their replies, in passes of bounded size."""
        replies: List[Reply] = []
        start = 0
        while start < len(requests):
            stop, size = start, 0
            while stop < len(requests) and (size < PIPELINE_BYTES or stop == start):
                size += len(requests[stop])
                stop += 1
            batch = b"".join(requests[start:stop])
            result = self._execute(batch, _collect_n, stop - start, noreply)
            if not noreply:
                replies.extend(result)
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
        command: bytes,
        key: Key,
        value: Any,
        expire: int,
        noreply: Optional[bool],
        flags: Optional[int],
        cas: object = None,
    ) -> Optional[bool]:
        raw = self._key(key)
        data, data_flags = self._serialize(key, value, flags)
        if noreply is None:
            noreply = self._noreply_default
        request = encode_storage(command, raw, data, data_flags, expire, noreply, cas)
        reply = self._execute(request, _collect_one, None, noreply)
        if noreply:
            return True
        if reply is STORED:
            return True
        if reply is NOT_STORED and cas is None:
            return False
        if cas is not None:
            if reply is EXISTS:
                return False
            if reply is NOT_FOUND:
                return None
        self._bad_reply(reply, command.decode())

    def set(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        """Store ``value``. True when stored (always True with ``noreply``)."""
        return bool(self._store(b"set", key, value, expire, noreply, flags))

    def add(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        """Store only if the key is absent. False when it already existed."""
        return bool(self._store(b"add", key, value, expire, noreply, flags))

    def replace(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        """Store only if the key exists. False when it did not."""
        return bool(self._store(b"replace", key, value, expire, noreply, flags))

    def append(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        """Append to an existing value. False when the key did not exist."""
        return bool(self._store(b"append", key, value, expire, noreply, flags))

    def prepend(
        self,
        key: Key,
        value: Any,
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> bool:
        """Prepend to an existing value. False when the key did not exist."""
        return bool(self._store(b"prepend", key, value, expire, noreply, flags))

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
        return self._store(b"cas", key, value, expire, noreply, flags, cas)

    def set_many(
        self,
        values: Mapping[Key, Any],
        expire: int = 0,
        noreply: Optional[bool] = None,
        flags: Optional[int] = None,
    ) -> List[Key]:
        """Store many values in one pipelined pass; return the keys that were not stored.

        A server error for one key (a value over the item size limit) raises
        :class:`MemcacheServerError` after every reply was read; the others were stored.
        """
        keys: List[Key] = []
        requests: List[bytes] = []
        if noreply is None:
            noreply = self._noreply_default
        for key, value in values.items():
            raw = self._key(key)
            data, data_flags = self._serialize(key, value, flags)
            requests.append(encode_storage(b"set", raw, data, data_flags, expire, noreply))
            keys.append(key)
        if not requests:
            return []
        replies = self._pipeline(requests, noreply)
        if noreply:
            return []
        failed: List[Key] = []
        errors: List[Tuple[Key, Reply]] = []
        for key, reply in zip(keys, replies):
            if reply is STORED:
                continue
            if reply is NOT_STORED:
                failed.append(key)
            elif type(reply) is ErrorReply:
                errors.append((key, reply))
            else:
                self._bad_reply(reply, "set")
        if errors:
            key, first = errors[0]
            names = ", ".join(repr(k) for k, _ in errors[:5])
            self._bad_reply(first, f"set of {len(errors)} key(s): {names}")
        return failed

    set_multi = set_many

    # ------------------------------------------------------------------ retrieval

    def _wanted(self, keys: Iterable[Key]) -> Dict[bytes, Key]:
        """Validate every key before anything is sent: ``{raw key: key}``."""
        return validate_keys(keys, self._prefix, self._unicode)

    def _fetch(
        self, command: bytes, wanted: Dict[bytes, Key], expire: Optional[int]
    ) -> Dict[bytes, Item]:
        """Retrieve ``wanted`` in passes of bounded request size (see PIPELINE_BYTES)."""
        raws = list(wanted)
        chunks: List[List[bytes]] = [[]]
        size = 0
        for raw in raws:
            if size >= PIPELINE_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append(raw)
            size += len(raw) + 1
        found: Dict[bytes, Item] = {}
        for chunk in chunks:
            reply = self._execute(encode_retrieval(command, chunk, expire), _collect_items, wanted)
            if type(reply) is not dict:
                self._bad_reply(reply, command.decode())
            found.update(reply)
        return found

    def _fetch_values(
        self, command: bytes, keys: Iterable[Key], expire: Optional[int], with_cas: bool
    ) -> Dict[Key, Any]:
        wanted = self._wanted(keys)
        if not wanted:
            return {}
        try:
            found = self._fetch(command, wanted, expire)
            if self._raw_values and not with_cas:
                return {wanted[raw]: item[1] for raw, item in found.items()}
            deserialize = self._serde.deserialize
            out: Dict[Key, Any] = {}
            for raw, (flags, data, cas) in found.items():
                key = wanted[raw]
                if not with_cas:
                    out[key] = deserialize(key, data, flags)
                elif cas is None:
                    self.close()
                    raise MemcacheProtocolError(f"{command.decode()} answered without a cas")
                else:
                    out[key] = (deserialize(key, data, flags), cas)
            return out
        except Exception:
            if self._ignore_exc:
                return {}
            raise

    def get(self, key: Key, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it is missing."""
        raw = validate_key(key, self._prefix, self._unicode)
        try:
            # _execute(), written out: this is the hottest path of all.
            sock = self.sock
            if sock is None:
                sock = self._connect()
            try:
                _send(sock, b"get " + raw + b"\r\n")
                found = _collect_items(self, (raw,))
            except BaseException as exc:
                self._abort(exc)
            if type(found) is not dict:
                self._bad_reply(found, "get")
            item = found.get(raw)
            if item is None:
                return default
            if self._raw_values:
                return item[1]
            return self._serde.deserialize(key, item[1], item[0])
        except Exception:
            if self._ignore_exc:
                return default
            raise

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

    def _simple(self, request: bytes, noreply: bool) -> Optional[Reply]:
        return self._execute(request, _collect_one, None, noreply)

    def delete(self, key: Key, noreply: Optional[bool] = None) -> bool:
        """Delete ``key``. False when it did not exist (always True with ``noreply``)."""
        if noreply is None:
            noreply = self._noreply_default
        reply = self._simple(encode_delete(self._key(key), noreply), noreply)
        if noreply or reply is DELETED:
            return True
        if reply is NOT_FOUND:
            return False
        self._bad_reply(reply, "delete")

    def delete_many(self, keys: Iterable[Key], noreply: Optional[bool] = None) -> bool:
        """Delete many keys in one pipelined pass. True (missing keys are not an error)."""
        if noreply is None:
            noreply = self._noreply_default
        requests = [encode_delete(self._key(key), noreply) for key in keys]
        for reply in self._pipeline(requests, noreply):
            if reply is not DELETED and reply is not NOT_FOUND:
                self._bad_reply(reply, "delete")
        return True

    delete_multi = delete_many

    def _arith(
        self, command: bytes, key: Key, value: int, noreply: Optional[bool]
    ) -> Optional[int]:
        noreply = bool(noreply)
        reply = self._simple(encode_incr_decr(command, self._key(key), value, noreply), noreply)
        if noreply or reply is NOT_FOUND:
            return None
        if type(reply) is int:
            return reply
        self._bad_reply(reply, command.decode())

    def incr(self, key: Key, value: int, noreply: Optional[bool] = False) -> Optional[int]:
        """Add ``value`` to a decimal counter; the new value, or None if it is missing."""
        return self._arith(b"incr", key, value, noreply)

    def decr(self, key: Key, value: int, noreply: Optional[bool] = False) -> Optional[int]:
        """Subtract ``value`` (memcached stops at 0); the new value, or None if missing."""
        return self._arith(b"decr", key, value, noreply)

    def touch(self, key: Key, expire: int = 0, noreply: Optional[bool] = None) -> bool:
        """Set a new expiry. False when the key did not exist."""
        if noreply is None:
            noreply = self._noreply_default
        reply = self._simple(encode_touch(self._key(key), expire, noreply), noreply)
        if noreply or reply is TOUCHED:
            return True
        if reply is NOT_FOUND:
            return False
        self._bad_reply(reply, "touch")

    def stats(self, *args: Union[str, bytes]) -> Dict[bytes, Any]:
        """The server's ``stats`` (with optional sub-command), values typed like pymemcache."""
        reply = self._execute(encode_stats(*args), _collect_stats, None)
        if type(reply) is ErrorReply:
            self._bad_reply(reply, "stats")
        return _typed_stats(reply)  # type: ignore[arg-type]

    def _ok(self, request: bytes, noreply: bool, command: str) -> bool:
        reply = self._simple(request, noreply)
        if noreply or reply is OK:
            return True
        self._bad_reply(reply, command)

    def cache_memlimit(self, memlimit: int) -> bool:
        """Set the server's memory limit, in megabytes."""
        return self._ok(encode_cache_memlimit(memlimit), False, "cache_memlimit")

    def verbosity(self, level: int, noreply: Optional[bool] = None) -> bool:
        """Set the server's logging verbosity."""
        noreply = self._noreply_default if noreply is None else noreply
        return self._ok(encode_verbosity(level, noreply), noreply, "verbosity")

    def flush_all(self, delay: int = 0, noreply: Optional[bool] = None) -> bool:
        """Invalidate every item, now or in ``delay`` seconds."""
        noreply = self._noreply_default if noreply is None else noreply
        return self._ok(encode_flush_all(delay, noreply), noreply, "flush_all")

    def version(self) -> bytes:
        """The server's version, e.g. ``b"1.6.18"``."""
        reply = self._simple(b"version\r\n", False)
        if type(reply) is Version:
            return reply.version
        self._bad_reply(reply, "version")

    def cluster_config(self) -> ClusterConfig:
        """AWS ElastiCache's ``config get cluster``: the cluster's version and nodes.
        A server that is not an ElastiCache configuration endpoint answers ``ERROR``:
        :class:`MemcacheUnknownCommandError`."""
        reply = self._execute(encode_config_get(b"cluster"), _collect_config, None)
        if type(reply) is ClusterConfig:
            return reply
        self._bad_reply(reply, "config get cluster")

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
            reply = self._simple(encode_shutdown(graceful), False)
        except MemcacheUnexpectedCloseError:
            return
        self._bad_reply(reply, "shutdown")

    def raw_command(
        self, command: Union[str, bytes], end_tokens: Union[str, bytes] = "\r\n"
    ) -> bytes:
        """Send one command line as is; return the reply up to ``end_tokens``."""
        encoding = "utf-8" if self._unicode else "ascii"
        raw = command.encode(encoding) if isinstance(command, str) else command
        token = end_tokens.encode(encoding) if isinstance(end_tokens, str) else end_tokens
        if b"\r" in raw or b"\n" in raw:
            raise MemcacheIllegalInputError("raw_command takes one line, without CRLF")
        reply = self._execute(raw + b"\r\n", _collect_raw, token)
        for kind in (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"):
            if reply == kind or reply.startswith(kind + b" ") or reply.startswith(kind + b":"):
                self._bad_reply(
                    ErrorReply(kind, reply.partition(b" ")[2].decode("utf-8", "replace")),
                    raw.split(b" ", 1)[0].decode("ascii", "replace"),
                )
        return reply

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
    ]
)
