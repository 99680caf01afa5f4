"""One connection to one memcached server on the asyncio event loop, on an
:class:`asyncio.Protocol`: connect (TCP by ``host:port`` or ``(host, port)``, a UNIX socket
path, TLS, ASCII auth) within ``connect_timeout``, plans executed with one deadline for the
whole command (``timeout``), the resync marker after ``noreply`` commands, and the safety
rule of the sync transport: any error, timeout or interruption (``CancelledError``
included) while a reply may be unread closes the connection before the exception leaves.

What a reply means is decided by the plans and the ``Expect`` readers of
:mod:`pymc.protocol`, as in sync, never here. The few steps that the sync transport
writes as blocking code (ASCII auth, the meta check before the first ``ms``, the error
for a server without meta commands) run here through the bridge, on
:class:`~pymc.asyncio.core.BridgedTransport`, so they exist once.

Deadlines given to this module are ``loop.time()`` values.

Layer: asyncio.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
from typing import Any, Callable, List, NoReturn, Optional, Sequence

from ..exceptions import (
    MemcacheConnectError,
    MemcacheConnectTimeoutError,
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
from ..protocol.meta import ExpectMetaQuiet
from ..protocol.metaplans import NoMetaCommands
from ..protocol.plans import Plan
from ..protocol.results import decode_values
from ..serde import DefaultSerde
from ..transport import refused_by_close
from ..transport.poll import stray_check
from ..transport.sync import SyncMarker
from .bridge import run_sync
from .core import BridgedTransport

__all__ = ["AsyncConnection", "Link"]

# A timer may run a little before its time (the loop's clock resolution): a deadline this
# close counts as reached.
_EARLY = 0.0005


class Link(asyncio.Protocol):
    """The :class:`asyncio.Protocol` of one connection: bytes received go into its reader
    at once (so bytes nobody asked for show as ``reader.buffered``), and wake the one
    command waiting for them."""

    def __init__(self, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        #: The event loop the connection was made on (its transport's).
        self.loop = loop
        self.reader = Reader()
        self.transport: Optional[asyncio.Transport] = None
        #: The future the connection's command waits on (bytes, EOF, the deadline).
        self.waiter: Optional[asyncio.Future[None]] = None
        #: The server closed the connection (EOF or a reset): what came before is readable.
        self.gone = False
        #: How it was lost, when not by a clean close (a reset: an OSError).
        self.error: Optional[OSError] = None
        self.paused = False  # the transport's write buffer is full (see pause_writing)
        #: ``look(0)``: whether the socket holds bytes or a close that the loop has not
        #: delivered yet (None over TLS, where a readable socket need not hold any).
        self.look: Optional[Callable[[int], Any]] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        self.wake()

    def wake(self) -> None:
        """Wake the command waiting (for bytes, the close, room in the write buffer)."""
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def eof_received(self) -> bool:
        self.connection_lost(None)
        return False  # (the transport closes itself)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.gone = True
        if isinstance(exc, OSError):
            self.error = exc
        self.paused = False
        # (Not through data_received: a reader that gave up on a bad reply raises when
        # fed, which the loop would log as an error of its own.)
        self.wake()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.wake()

    def sendall(self, data: bytes) -> None:
        """Queue ``data`` (what the sync command set's ``quit`` calls on ``sock``)."""
        if self.transport is not None:
            self.transport.write(data)

    def abort(self) -> None:
        """Drop the connection at once, whatever is queued or unread (from any loop, or
        none: a transport is only touched on its own loop, and a closed loop runs nothing,
        so then the socket is shut down, and closed when the transport is collected)."""
        self.gone = True
        transport = self.transport
        if transport is None:
            return
        loop = self.loop
        if loop is not None and (loop.is_closed() or _running_loop() not in (None, loop)):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if not loop.is_closed():
                loop.call_soon_threadsafe(transport.abort)
            return
        transport.abort()


def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _leftover(server: ServerSpec, reader: Reader) -> MemcacheProtocolError:
    return MemcacheProtocolError(
        f"{server_name(server)} sent {reader.buffered} byte(s) more than the "
        "reply; the connection is out of step and was closed"
    )


class AsyncConnection(SyncMarker):
    """One connection to one memcached server on the running event loop (see the
    module's docstring). Nothing connects until the first command. Not shared between
    tasks: one command at a time (a pool gives each task its own)."""

    def __init__(self, server: ServerSpec, options: ClientOptions) -> None:
        self.server = server
        self.options = options
        self.sock: Optional[Link] = None  # (named as the sync transport's: see Link.sendall)
        self._reader: Optional[Reader] = None
        self.tls_hostname: Optional[str] = None
        self._serde = options.serde
        self._prefix = options.key_prefix
        self._unicode = options.allow_unicode_keys
        self._ignore_exc = options.ignore_exc
        self._raw_values = type(options.serde) is DefaultSerde
        self._timeout = options.timeout
        self._owes_sync = False
        self._syncing = False
        self._sync_alone = False
        self._marker: Optional[ExpectSync] = None
        self._meta_ok = False
        self._pending = False
        self._sent_at = 0.0
        self.noreply_errors = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        # The deadline of the command now waiting, and the one timer that enforces it: it
        # stays armed across commands and is moved only when a deadline comes earlier.
        self._deadline: Optional[float] = None
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at = 0.0
        self._over = False  # the deadline passed while the command was between waits
        self._view: Optional[BridgedTransport] = None

    def __repr__(self) -> str:
        state = "connected" if self.sock is not None else "idle"
        return f"<{type(self).__name__} {server_name(self.server)} {state}>"

    @property
    def view(self) -> BridgedTransport:
        """This connection as the sync transport the command set expects (to be called
        inside :func:`~pymc.asyncio.bridge.run_sync`)."""
        view = self._view
        if view is None:
            view = self._view = BridgedTransport(self)
        return view

    # ------------------------------------------------------------------ connection

    def close(self) -> None:
        """Close the connection now, if open (a reply still unread is dropped). The next
        command reconnects."""
        link = self.sock
        self.sock = None
        self._reader = None
        self._owes_sync = self._syncing = self._pending = False
        self._marker = None
        self._meta_ok = False
        if link is not None:
            link.abort()

    async def aclose(self) -> None:
        """:meth:`close`, as a coroutine."""
        self.close()

    @property
    def owes_sync(self) -> bool:
        """Whether a ``noreply`` command was sent whose error line (if any) is unread (the
        command set's ``raw_command`` sets it, to read up to a marker)."""
        return self._owes_sync

    @owes_sync.setter
    def owes_sync(self, value: bool) -> None:
        self._owes_sync = value

    @property
    def meta_ok(self) -> bool:
        """This connection's server is known to take meta commands."""
        return self._meta_ok

    @meta_ok.setter
    def meta_ok(self, value: bool) -> None:
        self._meta_ok = value

    @property
    def raw_values(self) -> bool:
        """Values are the bytes read (the default serde)."""
        return self._raw_values

    @property
    def pending(self) -> bool:
        """A request was sent whose reply is not read to its end."""
        return self._pending

    def is_clean(self) -> bool:
        """Whether the connection can take a command as it is: nothing unread, not closed
        by the server (True when not connected). A pool asks before reusing it."""
        link = self.sock
        if link is None:
            return True
        return not (link.gone or self._pending or link.reader.buffered or link.reader.broken)

    async def _wait(self, awaitable: Any) -> Any:
        """The one place a command of this connection waits (for a reply, for the write
        buffer, for the connect): tests wrap it to interrupt a command at each wait."""
        return await awaitable

    async def _connect(self) -> Link:
        opts = self.options
        server = self.server
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._timer = None  # (the old loop's; see _expire)
            self._loop = loop
        link = Link(loop)
        context = opts.tls_context
        try:
            if isinstance(server, str):
                hostname = (self.tls_hostname or "") if context is not None else None
                connecting = loop.create_unix_connection(
                    lambda: link, server, ssl=context, server_hostname=hostname
                )
            else:
                host, port = server
                hostname = (self.tls_hostname or host) if context is not None else None
                # (loop.create_connection resolves the name with loop.getaddrinfo: the
                # loop never blocks on DNS; connect_timeout covers it, TCP and TLS.)
                connecting = loop.create_connection(
                    lambda: link, host, port, ssl=context, server_hostname=hostname
                )
            await self._wait(asyncio.wait_for(connecting, opts.connect_timeout))
            sock = link.transport.get_extra_info("socket") if link.transport else None
            if sock is not None and sock.family != socket.AF_UNIX:
                self._socket_options(sock)
            if sock is not None and context is None:
                link.look = stray_check(sock)
            self.sock = link
            self._reader = link.reader
            if opts.username is not None:
                await run_sync(self.view.authenticate, opts.username, opts.password or "")
            return link
        except BaseException as exc:
            # No connection, so nothing pending or owed (an interruption inside the auth
            # requests may have left their flags set).
            self.sock = None
            self._reader = None
            self._owes_sync = self._syncing = self._pending = False
            link.abort()
            name = server_name(server)
            if isinstance(exc, asyncio.TimeoutError):  # (not an OSError before 3.11)
                raise MemcacheConnectTimeoutError(
                    errno.ETIMEDOUT, f"timed out connecting to {name}"
                ) from exc
            if isinstance(exc, MemcacheError) or not isinstance(exc, OSError):
                raise
            raise network_error(
                MemcacheConnectError, exc, f"cannot connect to {name}: {exc}"
            ) from exc

    def _socket_options(self, sock: Any) -> None:
        opts = self.options
        if not opts.no_delay:  # (asyncio sets TCP_NODELAY on every TCP connection)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
        keepalive = opts.socket_keepalive
        if keepalive is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, keepalive.idle)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, keepalive.intvl)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, keepalive.cnt)

    # ------------------------------------------------------------------ the deadline

    def deadline_for(self, requests: int = 2) -> Optional[float]:
        """One deadline (a ``loop.time()`` value) for a command of several requests that
        starts now (None for one request, which takes ``timeout`` from its send, or when
        there is no timeout)."""
        timeout = self._timeout
        if requests < 2 or timeout is None:
            return None
        return asyncio.get_running_loop().time() + timeout

    def _arm(self, deadline: Optional[float]) -> None:
        """Make ``deadline`` the one the waiting command is held to."""
        self._deadline = deadline
        self._over = False
        if deadline is not None and (self._timer is None or deadline < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            loop = self._loop or asyncio.get_running_loop()
            self._timer = loop.call_at(deadline, self._expire)
            self._timer_at = deadline

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a timer of a loop the connection left
            return
        self._timer = None
        deadline = self._deadline
        link = self.sock
        if deadline is None or link is None:
            return
        if loop.time() + _EARLY < deadline:  # a later command's deadline: wait for it
            self._timer = loop.call_at(deadline, self._expire)
            self._timer_at = deadline
            return
        # (The command may be between two waits, bytes having just woken it: the flag
        # stops it at its next wait.)
        self._over = True
        waiter = link.waiter
        if waiter is not None and not waiter.done():
            link.waiter = None
            waiter.set_exception(self._timed_out())

    def _timed_out(self) -> MemcacheTimeoutError:
        return MemcacheTimeoutError(
            errno.ETIMEDOUT,
            f"timed out talking to {server_name(self.server)}: the command did not "
            "finish within its timeout",
        )

    async def _more(self, link: Link) -> None:
        """Wait for bytes (or the server's close, or the deadline: then raise)."""
        if link.gone:
            raise self._closed_mid_reply(link)
        if self._over:
            raise self._timed_out()
        waiter = link.waiter = (self._loop or asyncio.get_running_loop()).create_future()
        await self._wait(waiter)

    async def _settle(self, link: Link) -> None:
        """The socket of an idle connection holds bytes or the server's close that the loop
        has not delivered yet (its read runs after this task's step: a proxy's close right
        after its reply always comes so): let the loop deliver them, so that what ``send``
        checks before reusing the connection sees them, as the sync transport's look
        before each send does. Nothing is sent or pending; bounded by ``timeout``."""
        if self._pending or self._loop is not asyncio.get_running_loop():
            return  # (a new connection anyway)
        timeout = self._timeout
        self._arm(None if timeout is None else self._loop.time() + timeout)
        try:
            waiter = link.waiter = self._loop.create_future()
            await self._wait(waiter)
        except MemcacheTimeoutError:
            pass  # (nothing came: the checks decide)
        finally:
            self._arm(None)

    async def _until(self, link: Link, parse: Callable[[], Any]) -> Any:
        """``parse()`` over what the reader holds, waiting for more until it has a result.
        Inside the callers' safety net."""
        while True:
            result = parse()
            if result is not NEED_DATA:
                return result
            await self._more(link)

    # ------------------------------------------------------------------ the engine

    async def send(
        self,
        request: bytes,
        noreply: bool = False,
        deadline: Optional[float] = None,
        looked: bool = False,
    ) -> None:
        """Send ``request``, connecting first if needed (as the sync transport's
        ``send``: ``noreply`` leaves a sync marker owed; one request in flight at a time;
        on any failure the connection is closed). ``looked`` is accepted for the
        signature's sake."""
        link = self.sock
        if link is not None and link.look is not None and link.look(0) and not link.gone:
            await self._settle(link)
        if (
            link is None
            or self._pending
            or self._loop is not asyncio.get_running_loop()
            or link.gone
            or link.reader.broken
            or (link.reader.buffered and not self._owes_sync)
        ):
            # A reply never read to its end (an interrupted command), a reader that gave
            # up, bytes after the last complete reply (a proxy's late duplicate), the
            # server's close, or a connection made on another event loop (a client used
            # by one asyncio.run after another): a new connection before anything is
            # sent. (After noreply commands, bytes are their error lines, which the
            # marker reads; a close is their refusal, counted and logged.)
            if link is not None:
                if link.gone and self._owes_sync:
                    self._noreply_refused()
                self.close()
            link = await self._connect()
        if not self._meta_ok and request[:3] == b"ms ":
            # The meta check before the first value goes out in an ``ms`` (see the sync
            # transport's send): one ``mn`` round trip, once per connection.
            await run_sync(self.view.check_meta, "ms")
            relinked = self.sock
            if relinked is None:
                raise MemcacheUnexpectedCloseError(f"{server_name(self.server)} went away")
            link = relinked
        if noreply:
            self._owes_sync = True
        else:
            if self._owes_sync:
                self._sync_alone = not request
                request = encode_sync() + request
                self._syncing = True
                self._owes_sync = False
            self._pending = True
        self._sent_at = (self._loop or asyncio.get_running_loop()).time()
        link.transport.write(request)  # type: ignore[union-attr]
        if link.paused:  # the write buffer is full: wait for it, by the deadline
            try:
                if deadline is None and self._timeout is not None:
                    deadline = self._sent_at + self._timeout
                self._arm(deadline)
                while link.paused:
                    await self._more(link)
            except BaseException as exc:
                self._abort(exc)

    async def receive(self, expect: Expect, deadline: Optional[float] = None) -> Any:
        """Read the reply to the request sent last, as ``expect`` reads it, by ``deadline``
        (None: ``timeout`` from the send). Bytes after the reply are a protocol error. On
        any failure the connection is closed."""
        link = self.sock
        if link is None:
            raise MemcacheProtocolError("receive() without a request sent on this connection")
        reader = link.reader
        try:
            if deadline is None and self._timeout is not None:
                deadline = self._sent_at + self._timeout
            self._arm(deadline)
            if self._syncing:
                await self._read_marker(link)
            result = await self._until(link, functools.partial(expect.step, reader))
            if reader.buffered:
                raise _leftover(self.server, reader)
        except BaseException as exc:
            self._abort(exc)
        self._pending = False
        if type(expect) is ExpectMetaQuiet and type(result) is not ErrorReply:
            self._meta_ok = True
        return result

    async def _read_marker(self, link: Link) -> None:
        """Read up to the sync marker's answer (see the sync transport's ``_sync``)."""
        sync = ExpectSync(follows=not self._sync_alone)
        try:
            marker = await self._until(link, functools.partial(sync.step, link.reader))
        except MemcacheUnexpectedCloseError as exc:
            raise self._noreply_refused() from exc
        self._synced(sync, marker)

    async def request(
        self, request: bytes, expect: Expect, deadline: Optional[float] = None
    ) -> Any:
        """:meth:`send` then :meth:`receive` (a close before any reply to a command not
        every server knows is that command refused: see ``refused_by_close``)."""
        await self.send(request, False, deadline)
        try:
            return await self.receive(expect, deadline)
        except MemcacheUnexpectedCloseError as exc:
            refused = refused_by_close(request, exc, server_name(self.server))
            if refused is exc:
                raise
            raise refused from exc

    def _abort(self, exc: BaseException) -> NoReturn:
        """Close the connection (its state is unknown) and raise ``exc`` as pymc's."""
        self.close()
        if isinstance(exc, OSError) and not isinstance(exc, MemcacheError):
            raise network_error(
                MemcacheNetworkError,
                exc,
                f"connection to {server_name(self.server)} failed: {exc}",
            ) from exc
        raise exc

    def _closed_mid_reply(self, link: Link) -> BaseException:
        if self._syncing:  # (before the marker's answer: a close after noreply commands)
            return self._noreply_refused()
        if link.error is not None:  # a reset: a network error (see _abort), as in sync
            return link.error
        error = MemcacheUnexpectedCloseError(
            f"{server_name(self.server)} closed the connection mid-reply"
        )
        reader = self._reader
        if reader is not None and not reader.buffered:
            error.before_reply = True
        return error

    def raise_error(self, reply: ErrorReply, command: str) -> NoReturn:
        """Raise the exception for an error reply, closing the connection first when the
        reply leaves it unusable (``ERROR <message>``)."""
        if not reply.in_step:
            self.close()
        raise reply.exception(command)

    # ------------------------------------------------------------------ plans

    async def execute(self, plan: Plan, deadline: Optional[float] = None) -> Any:
        """Run ``plan`` (as the sync transport's ``execute``): its request, its reply read
        by a fresh ``plan.expect()``, and ``plan.finish(reply)``."""
        expect = plan.expect
        if expect is None:
            await self.send(plan.request, True, deadline)
            return plan.finish(None)
        reply = await self.request(plan.request, expect(), deadline)
        last = reply[-1] if type(reply) is list and reply else reply  # (a pipeline's stop)
        if type(last) is ErrorReply and not last.in_step:
            self.close()
        try:
            return plan.finish(reply)
        except NoMetaCommands as exc:
            raise await run_sync(self.view.no_meta, exc.command) from None

    async def execute_all(self, plans: Sequence[Plan]) -> List[Any]:
        """Run ``plans`` in order, under one deadline when there are several."""
        deadline = self.deadline_for(len(plans))
        return [await self.execute(plan, deadline) for plan in plans]

    async def one(self, rule: Rule, request: bytes, noreply: bool) -> Any:
        """Send a one-reply command and return what its reply means (per ``rule``)."""
        if noreply:
            await self.send(request, True)
            return None
        reply = (await self.request(request, ExpectReplies(rule)))[0]
        if type(reply) is ErrorReply:
            self.raise_error(reply, rule.command)
        return rule.result(reply)

    # ------------------------------------------------------------------ the get fast path

    async def get(self, key: Key, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it is missing: the sync transport's
        ``get`` fast path (``get <key>``, read by the reader's ``read_values``, decoded by
        ``decode_values``), with no plan object made."""
        raw = validate_key(key, self._prefix, self._unicode)
        try:
            link = self.sock
            if link is not None and link.look is not None and link.look(0) and not link.gone:
                await self._settle(link)
            if (
                link is None
                or self._pending
                or self._owes_sync
                or self._loop is not asyncio.get_running_loop()
                or link.gone
                or link.reader.buffered
                or link.reader.broken
            ):
                found = await self.request(b"get " + raw + b"\r\n", ExpectValues((raw,)))
            else:
                reader = link.reader
                self._pending = True
                try:
                    link.transport.write(b"get " + raw + b"\r\n")  # type: ignore[union-attr]
                    loop = self._loop or asyncio.get_running_loop()
                    timeout = self._timeout
                    if timeout is not None:
                        self._arm(loop.time() + timeout)
                    found = {}
                    waiter = link.waiter = loop.create_future()
                    await self._wait(waiter)
                    status = reader.read_values((raw,), found)
                    while status is NEED_DATA:
                        await self._more(link)
                        status = reader.read_values((raw,), found)
                    if reader.buffered:
                        raise _leftover(self.server, reader)
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
