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

from .commands import (
    COMMANDS,
    LEASE_TEMPLATES,
    LeaseCommands,
    MetaCommands,
    TextCommands,
    begin_command,
    end_command,
    observe,
    read_through,
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
from .options import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    MAX_GET_LINE,
    ClientOptions,
    CommandEnd,
    CommandHook,
    KeepaliveOpts,
    Key,
    ServerSpec,
    logger,
    normalize_server_spec,
    server_name,
    warn_if_config_endpoint,
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
from .protocol.metaplans import (
    QUIET_BATCH_BYTES,
    QuietBatch,
    meta_batches,
    quiet_deletes,
    quiet_gets,
)
from .protocol.plans import PIPELINE_BYTES, request_chunks, resolve_noreply
from .protocol.results import (
    Item,
    decode_parts,
    decode_values,
    merge_values,
    merge_values_py,
    per_key_results,
)
from .serde import DefaultSerde, LegacyWrappingSerde, Serde, coerce_to_bytes
from .transport import (
    DEADLINE_SLACK,
    RECV_SIZE,
    Connection,
    Exchange,
    Sender,
    command_deadline,
    quiet_connections,
    readiness_poll,
    refused_by_close,
    time_left,
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

# Re-exported for the importers of pymc.client: every public name it held before the
# layers moved out of it (its own, and those it imported) is still importable from here.
_REEXPORTED = (
    *(COMMANDS, LEASE_TEMPLATES, MAX_GET_LINE, PIPELINE_BYTES, QUIET_BATCH_BYTES, RECV_SIZE),
    *(Exchange, Item, Key, QuietBatch, Sender, ServerSpec, decode_parts, logger, merge_values),
    *(merge_values_py, server_name, dataclasses, errno, importlib, logging, select, selectors),
    *(struct, sys, time, types, Container, Final, Iterable, List, Mapping, NoReturn, Sequence),
    *(MemcacheAuthenticationError, MemcacheAuthNotRequiredError, MemcacheConnectError),
    *(MemcacheConnectTimeoutError, MemcacheError, MemcacheIllegalInputError),
    *(MemcacheLeaseTimeoutError, MemcacheNetworkError, MemcacheProtocolError),
    *(MemcacheTimeoutError, MemcacheUnexpectedCloseError, MemcacheUnknownCommandError),
    *(MemcacheUnsupportedCommandError, network_error, END, MAX_KEY_LENGTH, NEED_DATA, RULES),
    *(SPEEDUPS, STORED, ClusterConfig, ErrorReply, Expect, ExpectConfig, ExpectRaw),
    *(ExpectReplies, ExpectStats, ExpectSync, ExpectValues, Reader, Reply, Rule, asks_for_auth),
    *(encode_auth, encode_auth_probe, encode_cache_memlimit, encode_config_get, encode_delete),
    *(encode_flush_all, encode_incr_decr, encode_retrieval, encode_shutdown, encode_stats),
    *(encode_storage, encode_sync, encode_touch, encode_verbosity, expect_auth_probe),
    *(validate_key, validate_keys, OPAQUE_MASK, ExpectMeta, ExpectMetaEach, ExpectMetaQuiet),
    *(MetaResult, encode_meta_arithmetic, encode_meta_delete, encode_meta_get, encode_meta_noop),
    *(encode_meta_set, encode_quiet_gets, flags_vivify, lease_get_template, lease_key, meta_key),
    *(DefaultSerde, LegacyWrappingSerde, coerce_to_bytes, quiet_connections),
)
if SPEEDUPS:
    from .protocol import speedups  # noqa: F401  (as before the split)


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
