"""`Client`: one blocking socket to one memcached server, and the whole command set.

A Client is not thread-safe: share a :class:`~pymc.pool.PooledClient` instead.

A thin composition: the transport (:class:`pymc.transport.Connection`: the socket, connect,
TLS, auth, the deadline, the resync marker, the gevent yield; it executes plans), the
command set (:mod:`pymc.commands`: text, meta, leases and read-through, each command a plan
of :mod:`pymc.protocol.plans`) and the options (:class:`pymc.options.ClientOptions`).

Safety rule: whatever goes wrong in the middle of a command (a socket error, a timeout, a
malformed reply, ``gevent.Timeout``, ``KeyboardInterrupt``) closes the socket before the
exception leaves the Client. The next call reconnects, so no caller ever reads the reply
meant for another command.

Every name importable from here before the split still is (re-exported).
"""

from __future__ import annotations

import dataclasses as dataclasses
import errno as errno
import functools
import importlib as importlib
import logging as logging
import select as select
import selectors as selectors
import socket
import ssl
import struct as struct
import sys as sys
import time as time
import types as types
from typing import (
    Any,
    Callable,
    Concatenate,
    Dict,
    Optional,
    ParamSpec,
    Tuple,
    TypeVar,
    Union,
)
from typing import (
    Container as Container,
)
from typing import (
    Final as Final,
)
from typing import (
    Iterable as Iterable,
)
from typing import (
    List as List,
)
from typing import (
    Mapping as Mapping,
)
from typing import (
    NoReturn as NoReturn,
)
from typing import (
    Sequence as Sequence,
)

from .commands import (
    COMMANDS as COMMANDS,
)
from .commands import (
    LEASE_TEMPLATES as LEASE_TEMPLATES,
)
from .commands import (
    LeaseCommands,
    MetaCommands,
    TextCommands,
    begin_command,
    end_command,
    observe,
    read_through,
)
from .exceptions import (
    MemcacheAuthenticationError as MemcacheAuthenticationError,
)
from .exceptions import (
    MemcacheAuthNotRequiredError as MemcacheAuthNotRequiredError,
)
from .exceptions import (
    MemcacheConnectError as MemcacheConnectError,
)
from .exceptions import (
    MemcacheConnectTimeoutError as MemcacheConnectTimeoutError,
)
from .exceptions import (
    MemcacheError as MemcacheError,
)
from .exceptions import (
    MemcacheIllegalInputError as MemcacheIllegalInputError,
)
from .exceptions import (
    MemcacheLeaseTimeoutError as MemcacheLeaseTimeoutError,
)
from .exceptions import (
    MemcacheNetworkError as MemcacheNetworkError,
)
from .exceptions import (
    MemcacheProtocolError as MemcacheProtocolError,
)
from .exceptions import (
    MemcacheTimeoutError as MemcacheTimeoutError,
)
from .exceptions import (
    MemcacheUnexpectedCloseError as MemcacheUnexpectedCloseError,
)
from .exceptions import (
    MemcacheUnknownCommandError as MemcacheUnknownCommandError,
)
from .exceptions import (
    MemcacheUnsupportedCommandError as MemcacheUnsupportedCommandError,
)
from .exceptions import (
    network_error as network_error,
)
from .options import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    MAX_GET_LINE,
    ClientOptions,
    CommandEnd,
    CommandHook,
    KeepaliveOpts,
    normalize_server_spec,
    warn_if_config_endpoint,
)
from .options import (
    Key as Key,
)
from .options import (
    ServerSpec as ServerSpec,
)
from .options import (
    logger as logger,
)
from .options import (
    server_name as server_name,
)
from .protocol import (
    END as END,
)
from .protocol import (
    MAX_KEY_LENGTH as MAX_KEY_LENGTH,
)
from .protocol import (
    NEED_DATA as NEED_DATA,
)
from .protocol import (
    RULES as RULES,
)
from .protocol import (
    SPEEDUPS,
)
from .protocol import (
    STORED as STORED,
)
from .protocol import (
    ClusterConfig as ClusterConfig,
)
from .protocol import (
    ErrorReply as ErrorReply,
)
from .protocol import (
    Expect as Expect,
)
from .protocol import (
    ExpectConfig as ExpectConfig,
)
from .protocol import (
    ExpectRaw as ExpectRaw,
)
from .protocol import (
    ExpectReplies as ExpectReplies,
)
from .protocol import (
    ExpectStats as ExpectStats,
)
from .protocol import (
    ExpectSync as ExpectSync,
)
from .protocol import (
    ExpectValues as ExpectValues,
)
from .protocol import (
    Reader as Reader,
)
from .protocol import (
    Reply as Reply,
)
from .protocol import (
    Rule as Rule,
)
from .protocol import (
    asks_for_auth as asks_for_auth,
)
from .protocol import (
    encode_auth as encode_auth,
)
from .protocol import (
    encode_auth_probe as encode_auth_probe,
)
from .protocol import (
    encode_cache_memlimit as encode_cache_memlimit,
)
from .protocol import (
    encode_config_get as encode_config_get,
)
from .protocol import (
    encode_delete as encode_delete,
)
from .protocol import (
    encode_flush_all as encode_flush_all,
)
from .protocol import (
    encode_incr_decr as encode_incr_decr,
)
from .protocol import (
    encode_retrieval as encode_retrieval,
)
from .protocol import (
    encode_shutdown as encode_shutdown,
)
from .protocol import (
    encode_stats as encode_stats,
)
from .protocol import (
    encode_storage as encode_storage,
)
from .protocol import (
    encode_sync as encode_sync,
)
from .protocol import (
    encode_touch as encode_touch,
)
from .protocol import (
    encode_verbosity as encode_verbosity,
)
from .protocol import (
    expect_auth_probe as expect_auth_probe,
)
from .protocol import (
    validate_key as validate_key,
)
from .protocol import (
    validate_keys as validate_keys,
)
from .protocol.meta import (
    OPAQUE_MASK as OPAQUE_MASK,
)
from .protocol.meta import (
    ExpectMeta as ExpectMeta,
)
from .protocol.meta import (
    ExpectMetaEach as ExpectMetaEach,
)
from .protocol.meta import (
    ExpectMetaQuiet as ExpectMetaQuiet,
)
from .protocol.meta import (
    MetaResult as MetaResult,
)
from .protocol.meta import (
    encode_meta_arithmetic as encode_meta_arithmetic,
)
from .protocol.meta import (
    encode_meta_delete as encode_meta_delete,
)
from .protocol.meta import (
    encode_meta_get as encode_meta_get,
)
from .protocol.meta import (
    encode_meta_noop as encode_meta_noop,
)
from .protocol.meta import (
    encode_meta_set as encode_meta_set,
)
from .protocol.meta import (
    encode_quiet_gets as encode_quiet_gets,
)
from .protocol.meta import (
    flags_vivify as flags_vivify,
)
from .protocol.meta import (
    lease_get_template as lease_get_template,
)
from .protocol.meta import (
    lease_key as lease_key,
)
from .protocol.meta import (
    meta_key as meta_key,
)
from .protocol.metaplans import (
    QUIET_BATCH_BYTES as QUIET_BATCH_BYTES,
)
from .protocol.metaplans import (
    QuietBatch as QuietBatch,
)
from .protocol.metaplans import (
    meta_batches,
    quiet_deletes,
    quiet_gets,
)
from .protocol.plans import PIPELINE_BYTES as PIPELINE_BYTES
from .protocol.plans import request_chunks, resolve_noreply
from .protocol.results import (
    Item as Item,
)
from .protocol.results import (
    decode_parts as decode_parts,
)
from .protocol.results import (
    decode_values,
    per_key_results,
)
from .protocol.results import (
    merge_values as merge_values,
)
from .protocol.results import (
    merge_values_py as merge_values_py,
)
from .serde import Serde
from .transport import (
    DEADLINE_SLACK,
    Connection,
    command_deadline,
    readiness_poll,
    refused_by_close,
    time_left,
)
from .transport import (
    RECV_SIZE as RECV_SIZE,
)
from .transport import (
    Exchange as Exchange,
)
from .transport import (
    Sender as Sender,
)
from .transport import (
    quiet_connections as quiet_connections,
)

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

T = TypeVar("T")
A = TypeVar("A")

if SPEEDUPS:
    from .protocol import speedups as speedups  # (importable from here, as before)


class Client(Connection, TextCommands, MetaCommands, LeaseCommands):
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
        Connection._setup(self, server, options)
        self._opaque_counter = 0
        self._lease_templates: Dict[Tuple[Any, int, Optional[int]], Tuple[bytes, bytes]] = {}
        self._observing = False  # a command is being observed (see pymc.commands.hook)
        if options.on_command is not None:
            # Only a client made with the hook runs its commands through it: one without
            # it runs the class's methods as they are, at no cost (see observe).
            observe(self)

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
