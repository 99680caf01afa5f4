"""The resync marker: after ``noreply`` commands, the next request goes out behind a
``version`` marker, and the replies up to the marker's answer (the noreply commands' error
lines) are logged, never taken for the next reply. And the meta check: one ``mn`` before
the first value goes out in an ``ms`` on a connection.

Layer: transport.
"""

from __future__ import annotations

import functools
import logging
import ssl
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..exceptions import (
    MemcacheError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    MemcacheUnsupportedCommandError,
)
from ..options import ServerSpec, server_name
from ..protocol import NEED_DATA, ErrorReply, ExpectSync, Reader
from ..protocol.metaplans import meta_check
from ..protocol.plans import Plan, version_plan
from .io import RECV_SIZE

__all__ = ["SyncMarker"]

logger = logging.getLogger("pymc")


class SyncMarker:
    """The resync marker and the meta check of :class:`~pymc.transport.Connection` (a
    mixin of it)."""

    if TYPE_CHECKING:
        server: ServerSpec
        noreply_errors: int
        _reader: Optional[Reader]
        _owes_sync: bool
        _syncing: bool
        _sync_alone: bool
        _marker: Optional[ExpectSync]
        _meta_ok: bool

        def close(self) -> None: ...

        def execute(self, plan: Plan, deadline: Optional[float] = None) -> Any: ...

        def _deadline_from(self, started: float) -> Optional[float]: ...

        def _read_rest(
            self, sock: Any, reader: Reader, parse: Callable[[], Any], deadline: Optional[float]
        ) -> Any: ...

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

    # ------------------------------------------------------------------ the meta check

    def _meta_checked(self, command: str) -> None:
        """Before the first value goes out in an ``ms`` on this connection: make sure the
        server knows meta commands (one ``mn`` round trip, once per connection). A server
        before 1.6 would read the data block as a command line of its own, and run it."""
        try:
            self.execute(meta_check(command))
            self._meta_ok = True
        except MemcacheUnsupportedCommandError as exc:  # (a proxy that closes on mn)
            refused = MemcacheUnsupportedCommandError(
                str(exc).replace("answer to mn", f"answer to mn, pymc's check before {command}")
                + f": {command} needs meta commands"
            )
            refused.before_reply = True
            raise refused from exc

    def _no_meta(self, command: str) -> MemcacheUnknownCommandError:
        """The error for a server that answered a meta command with a bare ``ERROR``
        (:class:`~pymc.protocol.metaplans.NoMetaCommands`): the connection is closed (how
        many more error lines the request draws is unknown: memcached before 1.6 reads an
        ``ms`` data block as one more command line), and the error names the version a
        fresh connection reports."""
        self.close()
        try:
            version = self.execute(version_plan()).decode("ascii", "replace")
        except MemcacheError:
            version = "of unknown version"
        return MemcacheUnknownCommandError(
            f"{server_name(self.server)} does not know the meta command {command} "
            f"(memcached {version}); meta commands need 1.6 or later"
        )
