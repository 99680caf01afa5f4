"""The blocking socket connection: one request in flight at a time, sent and read by the
command's deadline; the resync marker after ``noreply`` commands; any failure mid-command
closes the socket before the exception leaves, so no caller ever reads the reply meant for
another command. It executes plans (:meth:`Connection.execute`, :meth:`execute_all`,
:meth:`run_flow`); what a reply means is decided by the plan's ``finish`` and the
``Expect`` readers, never here.

Layer: transport (above ``options`` and ``protocol``).
"""

from __future__ import annotations

import functools
import logging
import socket
import ssl
from typing import Any, Callable, NoReturn, Optional, Tuple, TypeVar

from ..exceptions import (
    MemcacheError,
    MemcacheNetworkError,
    MemcacheProtocolError,
    MemcacheTimeoutError,
    MemcacheUnexpectedCloseError,
    network_error,
)
from ..options import ClientOptions, Key, ServerSpec, server_name
from ..protocol import (
    END,
    NEED_DATA,
    ErrorReply,
    Expect,
    ExpectReplies,
    ExpectSync,
    ExpectValues,
    Reader,
    Rule,
    encode_sync,
    validate_key,
)
from ..protocol.meta import ExpectMeta, ExpectMetaEach, ExpectMetaQuiet
from ..protocol.results import decode_values
from ..serde import DefaultSerde
from .connect import Connector
from .execute import Executor, Flow
from .io import (
    DEADLINE_SLACK,
    KERNEL_TIMEOUT_ERRNOS,
    RECV_SIZE,
    Sender,
    exchange,
    monotonic,
    send_plain,
    set_wait,
    time_left,
)
from .poll import never, refused_by_close
from .sync import SyncMarker

__all__ = ["META_READERS", "Connection", "Flow"]

logger = logging.getLogger("pymc")

#: The readers of meta replies: a reply read by one of them shows the server knows meta
#: commands (see :meth:`Connection.send`'s check before an ``ms``).
META_READERS = frozenset((ExpectMeta, ExpectMetaEach, ExpectMetaQuiet))


_exchange = exchange

C = TypeVar("C", bound="Connection")


def _leftover(server: ServerSpec, reader: Reader) -> str:
    return (
        f"{server_name(server)} sent {reader.buffered} byte(s) more than the "
        "reply; the connection is out of step and was closed"
    )


def _network_error(server: ServerSpec, exc: OSError) -> MemcacheNetworkError:
    name = server_name(server)
    if isinstance(exc, socket.timeout) or exc.errno in KERNEL_TIMEOUT_ERRNOS:
        return MemcacheTimeoutError(exc.errno, f"timed out talking to {name}")
    return network_error(MemcacheNetworkError, exc, f"connection to {name} failed: {exc}")


_monotonic = monotonic


class Connection(Executor, Connector, SyncMarker):
    """One blocking socket to one memcached server (see the module's docstring)."""

    def _setup(self, server: ServerSpec, options: ClientOptions) -> None:
        """The connection's state: not connected (nothing connects until a command)."""
        self.server = server
        self.options = options
        self.sock: Optional[socket.socket] = None
        self._reader: Optional[Reader] = None
        # How requests go out on this connection (chosen again at each connect): on a
        # cooperative socket, one turn for the other greenlets after each send.
        self._send: Sender = send_plain
        # The socket whose send and first recv go in one compiled call (_exchange, see
        # _compiled_exchange): this connection's, when it is a plain one, else None. (A
        # command compares it with the socket it is about to use, which may be another
        # object standing in for it.)
        self._exchange_sock: Optional[socket.socket] = None
        # On a gevent socket: (the socket, the recv of the stdlib socket it wraps), for the
        # first recv of a get, whose reply has usually arrived by then (see _recv_now_for).
        self._recv_now: Optional[Tuple[Any, Callable[[int], bytes]]] = None
        # When the last request went out (a time._monotonic() value; the deadline of a
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
        self._stray: Callable[[int], Any] = never
        #: Error lines that noreply commands drew from the server (logged, never raised).
        self.noreply_errors = 0

    def __repr__(self) -> str:
        state = "connected" if self.sock is not None else "idle"
        return f"<{type(self).__name__} {server_name(self.server)} {state}>"

    # ------------------------------------------------------------------ connection

    def close(self) -> None:
        """Close the socket, if open. The next command reconnects."""
        sock = self.sock
        self.sock = None
        self._reader = None
        self._stray = never
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

    def __enter__(self: C) -> C:
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
        ``deadline`` (a ``time._monotonic()`` value, see :func:`command_deadline`) sets
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
                set_wait(sock, time_left(deadline, self.server), socket.SO_RCVTIMEO)
                data = sock.recv(RECV_SIZE)
                set_wait(sock, self.options.timeout, socket.SO_RCVTIMEO)
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
                raise MemcacheProtocolError(_leftover(self.server, reader))
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
            raise MemcacheProtocolError(_leftover(self.server, reader))
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
                set_wait(sock, left, socket.SO_RCVTIMEO)
                wait = left
            data = sock.recv(RECV_SIZE)
            if not data:
                raise self._closed_mid_reply()
            reader.feed(data)
            result = parse()
            if result is not NEED_DATA:
                break
        if wait != timeout:
            set_wait(sock, timeout, socket.SO_RCVTIMEO)
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

    def _abort(self, exc: BaseException, request: bytes = b"") -> NoReturn:
        """Close the connection (its state is unknown) and raise ``exc`` as pymc's (a close
        in answer to ``request`` as :func:`refused_by_close` says)."""
        self.close()
        if request and type(exc) is MemcacheUnexpectedCloseError:
            refused = refused_by_close(request, exc, server_name(self.server))
            if refused is not exc:
                raise refused from exc
        if isinstance(exc, OSError) and not isinstance(exc, MemcacheError):
            raise _network_error(self.server, exc) from exc
        raise exc

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
                    raise MemcacheProtocolError(_leftover(self.server, reader))
            except BaseException as exc:
                self._abort(exc, request)
            self._pending = False
        if type(reply) is ErrorReply:
            self.raise_error(reply, rule.command)
        return rule.result(reply)

    # ------------------------------------------------------------------ the get fast path

    def get(self, key: Key, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it is missing.

        The transport's fast path of the hottest command: the request of
        :func:`~pymc.protocol.plans.retrieval_plans` (``get <key>``), its reply read by the
        reader's ``feed_values``/``read_values`` (what ``ExpectValues`` steps), decoded by
        :func:`~pymc.protocol.decode_values`, with no plan object made."""
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
                        raise MemcacheProtocolError(_leftover(self.server, reader))
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
