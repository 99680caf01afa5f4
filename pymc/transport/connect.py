"""Connecting: TCP (keepalive, no-delay) or a UNIX socket, TLS, ASCII auth, and the look
at an idle connection before a pool reuses it.

Layer: transport.
"""

from __future__ import annotations

import select
import selectors
import socket
import ssl
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

from ..exceptions import (
    MemcacheAuthenticationError,
    MemcacheAuthNotRequiredError,
    MemcacheConnectError,
    MemcacheConnectTimeoutError,
    MemcacheError,
    MemcacheProtocolError,
    network_error,
)
from ..options import ClientOptions, ServerSpec, server_name
from ..protocol import (
    RULES,
    STORED,
    ErrorReply,
    Expect,
    ExpectReplies,
    Reader,
    asks_for_auth,
    encode_auth,
    encode_auth_probe,
    expect_auth_probe,
)
from .io import (
    COMPILED_EXCHANGE,
    Sender,
    is_tls,
    kernel_timed,
    recv_now_for,
    send_plain,
    sender_for,
    set_timeout,
)
from .poll import stray_check, unpatched_poll

__all__ = ["COMPILED_EXCHANGE", "Connector"]  # (the one new connections look at)


class Connector:
    """The connect half of :class:`~pymc.transport.Connection` (a mixin of it)."""

    if TYPE_CHECKING:
        server: ServerSpec
        options: ClientOptions
        sock: Optional[socket.socket]
        tls_hostname: Optional[str]
        _reader: Optional[Reader]
        _send: Sender
        _exchange_sock: Optional[socket.socket]
        _recv_now: Optional[Tuple[Any, Callable[[int], bytes]]]
        _tls: bool
        _stray: Callable[[int], Any]
        _owes_sync: bool
        _syncing: bool
        _pending: bool

        def request(
            self, request: bytes, expect: Expect, deadline: Optional[float] = None
        ) -> Any: ...

        def close(self) -> None: ...

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
            set_timeout(sock, opts.timeout)
            self._send = sender_for(sock)
            plain = (
                COMPILED_EXCHANGE is not None and self._send is send_plain and kernel_timed(sock)
            )
            self._exchange_sock = sock if plain else None
            self._recv_now = recv_now_for(sock)
            self._tls = is_tls(sock)
            self.sock = sock
            self._reader = Reader()
            self._stray = stray_check(sock)
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
            poll = unpatched_poll()
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
