"""What a Client is configured with: :class:`ClientOptions` (frozen, checked once and
shared by every connection a pool or a cluster makes), :class:`KeepaliveOpts`, the server
specification (:func:`normalize_server_spec`, :func:`server_name`) and the defaults.

Layer: above ``protocol`` (keys are checked by its rules), below ``transport`` and
``commands``; no I/O.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import ssl
from typing import Any, Callable, Final, Optional, Sequence, Tuple, Union

from .exceptions import MemcacheIllegalInputError
from .protocol import validate_key
from .protocol.plans import MAX_GET_LINE
from .serde import DefaultSerde, LegacyWrappingSerde, Serde

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "MAX_GET_LINE",
    "ClientOptions",
    "CommandEnd",
    "CommandHook",
    "KeepaliveOpts",
    "Key",
    "ServerSpec",
    "normalize_server_spec",
    "server_name",
    "warn_if_config_endpoint",
]

logger = logging.getLogger("pymc")

Key = Union[str, bytes]
ServerSpec = Union[Tuple[str, int], str]

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
