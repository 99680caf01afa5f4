"""The emulated configuration endpoint's server: one thread, one selector, its listening
socket, its client connections (and their upstream connections when it relays), its timers,
and the calls other threads ask it to run. What it says is :mod:`.replies`'; each
connection's buffers and reply order are :mod:`.connection`'s.
"""

from __future__ import annotations

import collections
import errno
import heapq
import itertools
import random
import selectors
import socket
import threading
import time
from typing import Callable, Deque, Dict, List, Optional, Tuple

from .connection import Connection
from .replies import (
    ERROR_REPLY,
    FILLER,
    HUGE_CHUNK,
    LEGACY_KEY,
    LINGER,
    MAX_CONNECTIONS,
    MAX_LINE,
    MAX_PENDING_OUTPUT,
    TICK,
    TOO_MANY_REPLY,
    VERSION_REPLY,
    State,
    config_answer,
    data_length,
)

__all__ = ["EndpointServer"]


class EndpointServer:
    """The server behind a :class:`~pymc.testing.ConfigEndpoint`: bound at once, served by
    :meth:`run` (on the endpoint's thread), ended by :meth:`shutdown`. ``state`` (what it
    answers) is replaced whole by the endpoint; ``requests`` counts configuration requests."""

    def __init__(
        self,
        host: str,
        port: int,
        state: State,
        upstream: Optional[Tuple[str, int]],
        drip_seconds: float,
    ) -> None:
        self.state = state
        self.upstream = upstream
        self.drip_seconds = drip_seconds
        self.requests = 0
        self.rng = random.Random()
        self.conns: Dict[socket.socket, Connection] = {}
        self.ups: Dict[socket.socket, Connection] = {}
        self.timers: List[Tuple[float, int, Callable[[], None]]] = []
        self.timer_seq = itertools.count()
        self.calls: Deque[Tuple[Callable[[], None], threading.Event, List[BaseException]]] = (
            collections.deque()
        )
        self.stopping = threading.Event()
        self.closed = False
        self.host = host
        self.listener: Optional[socket.socket] = self.listen(host, port)
        self.port = int(self.listener.getsockname()[1])
        self.sel = selectors.DefaultSelector()
        self.waker_r, self.waker_w = socket.socketpair()
        self.waker_r.setblocking(False)
        self.waker_w.setblocking(False)
        self.sel.register(self.waker_r, selectors.EVENT_READ, None)
        self.sel.register(self.listener, selectors.EVENT_READ, None)

    def buffered(self) -> int:
        """Bytes held for the connections (to be handled, sent, or waiting their turn)."""
        return sum(
            len(c.inbuf) + len(c.outbuf) + len(c.upbuf) + len(c.upin) + c.queued
            for c in self.conns.values()
        )

    @staticmethod
    def listen(host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=128)
        sock.setblocking(False)
        return sock

    def wake(self) -> None:
        try:
            self.waker_w.send(b"x")
        except OSError:  # closed, or its buffer is full: either way the loop will look
            pass

    def go_down(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            self.sel.unregister(listener)
            listener.close()
        self.drop_all()

    def go_up(self) -> None:
        if self.listener is None and not self.closed:
            self.listener = self.listen(self.host, self.port)
            self.sel.register(self.listener, selectors.EVENT_READ, None)

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                timeout = TICK
                if self.timers:
                    timeout = min(TICK, max(0.0, self.timers[0][0] - time.monotonic()))
                for key, events in self.sel.select(timeout):
                    sock = key.fileobj
                    if sock is self.waker_r:
                        self._drain_waker()
                    elif sock is self.listener:
                        self._accept()
                    else:
                        conn = self.conns.get(sock)  # type: ignore[call-overload]
                        if conn is not None:
                            self._io(conn, events)
                            continue
                        conn = self.ups.get(sock)  # type: ignore[call-overload]
                        if conn is not None:
                            self._up_io(conn, events)
                self._run_timers()
                self._run_calls()
        finally:
            self.shutdown()
            self._run_calls()

    def _drain_waker(self) -> None:
        try:
            while self.waker_r.recv(4096):
                pass
        except OSError:
            pass

    def _run_calls(self) -> None:
        while self.calls:
            fn, done, errors = self.calls.popleft()
            try:
                fn()
            except Exception as exc:
                errors.append(exc)
            finally:
                done.set()

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self.timer_seq), fn))

    def _run_timers(self) -> None:
        now = time.monotonic()
        for _ in range(1024):
            if not self.timers or self.timers[0][0] > now:
                return
            heapq.heappop(self.timers)[2]()

    def _accept(self) -> None:
        for _ in range(64):
            if self.listener is None:
                return
            try:
                sock, _ = self.listener.accept()
            except OSError:  # nothing more to accept (or ECONNABORTED, EMFILE)
                return
            if len(self.conns) >= MAX_CONNECTIONS:
                sock.close()
                continue
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            conn = Connection(sock)
            self.conns[sock] = conn
            if self.state.mode == "too_many":  # a full memcached says so at once
                conn.outbuf += TOO_MANY_REPLY
                conn.linger = True
            self._pump(conn)

    def _io(self, conn: Connection, events: int) -> None:
        if events & selectors.EVENT_READ:
            try:
                data = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":  # the client left: its unsent replies go with it
                self._drop(conn)
                return
            if data and not conn.linger:
                conn.inbuf += data
        self._pump(conn)

    def _process(self, conn: Connection) -> None:
        buf = conn.inbuf
        if self.upstream is not None and not conn.started and buf:
            conn.started = True
            conn.binary = buf[0] == 0x80
        while buf and conn.can_take():
            if conn.binary:
                self._relay(conn, bytes(buf))
                buf.clear()
                return
            if conn.skip:  # the data block of a storage command
                size = min(conn.skip, len(buf))
                if conn.forward:
                    self._relay(conn, bytes(buf[:size]))
                del buf[:size]
                conn.skip -= size
                continue
            end = buf.find(b"\n")
            if end < 0:
                if conn.long_line or (self.upstream is not None and len(buf) > MAX_LINE):
                    if not conn.long_line:  # no configuration request is this long
                        conn.long_line = True
                        conn.forward = self.state.mode != "stall"
                        conn.open_relay()
                    if conn.forward:
                        self._relay(conn, bytes(buf))
                    buf.clear()
                elif len(buf) > MAX_LINE:
                    conn.outbuf += b"CLIENT_ERROR line too long\r\n"
                    conn.closing = True
                    buf.clear()
                return
            raw = bytes(buf[: end + 1])
            del buf[: end + 1]
            if conn.long_line:
                conn.long_line = False
                if conn.forward:
                    self._relay(conn, raw)
                continue
            line = raw[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
            self._request(conn, line, raw)

    def _request(self, conn: Connection, line: bytes, raw: bytes) -> None:
        state = self.state
        words = line.split()
        is_config = words == [b"config", b"get", b"cluster"]
        is_legacy = words == [b"get", LEGACY_KEY]
        if is_config or is_legacy:
            self.requests += 1
        mode = state.mode
        if mode == "too_many":
            conn.ending = True
            conn.reply(("too_many", TOO_MANY_REPLY))
            return
        if mode == "stall":
            size = data_length(words) if self.upstream is not None else None
            if size is not None:
                conn.skip, conn.forward = size + 2, False
            return
        if is_config or is_legacy:
            item = config_answer(state, is_legacy, self.requests, self.rng)
            conn.reply(item)
            if item[0] == "huge":
                conn.ending = True
            return
        if words == [b"quit"]:
            if conn.queue:
                conn.ending = True
                conn.reply(("close", b""))
            else:
                conn.closing = True
            return
        if self.upstream is None:
            conn.reply(("bytes", VERSION_REPLY if words == [b"version"] else ERROR_REPLY))
            return
        conn.open_relay()
        if words[:1] == [b"mn"]:
            conn.mn_ours.append(False)
        self._relay(conn, raw)
        size = data_length(words)
        if size is not None:
            conn.skip, conn.forward = size + 2, True

    def _pump(self, conn: Connection) -> None:
        """Move what can move for ``conn``, then wait for the right events (or drop it)."""
        if conn.inbuf and conn.can_take():
            self._process(conn)
        if conn.up is not None and conn.up_connected and conn.upbuf:
            try:
                del conn.upbuf[: conn.up.send(conn.upbuf)]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._upstream_gone(conn)
        if conn.huge_left and len(conn.outbuf) < HUGE_CHUNK:
            size = min(HUGE_CHUNK, conn.huge_left)
            conn.outbuf += FILLER[:size]
            conn.huge_left -= size
            if not conn.huge_left:
                conn.outbuf += b"\r\nEND\r\n"
        if conn.slow:
            if conn.outbuf and not conn.drip_timer:
                self._drip(conn)
                return  # _drip pumps again
        elif conn.outbuf:
            try:
                del conn.outbuf[: conn.sock.send(conn.outbuf)]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._drop(conn)
                return
        if conn.closing and not conn.outbuf:
            self._drop(conn)
            return
        if conn.linger and not conn.outbuf and not conn.shut:
            conn.shut = True
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._drop(conn)
                return
            self._later(LINGER, lambda: self._drop(conn))
        if conn.inbuf and conn.can_take():
            self._process(conn)  # lines held back while the client was not reading
        reading = conn.linger or conn.can_take()
        writing = (bool(conn.outbuf) or conn.huge_left > 0) and not conn.slow
        self._want(
            conn.sock,
            (selectors.EVENT_READ if reading else 0) | (selectors.EVENT_WRITE if writing else 0),
        )
        if conn.up is not None:
            up_reading = len(conn.outbuf) < MAX_PENDING_OUTPUT
            up_writing = not conn.up_connected or bool(conn.upbuf)
            self._want(
                conn.up,
                (selectors.EVENT_READ if up_reading else 0)
                | (selectors.EVENT_WRITE if up_writing else 0),
            )

    def _want(self, sock: socket.socket, events: int) -> None:
        try:
            key: Optional[selectors.SelectorKey] = self.sel.get_key(sock)
        except KeyError:
            key = None
        if not events:
            if key is not None:
                self.sel.unregister(sock)
        elif key is None:
            self.sel.register(sock, events, None)
        elif key.events != events:
            self.sel.modify(sock, events, None)

    def _drip(self, conn: Connection) -> None:
        conn.drip_timer = False
        if self.conns.get(conn.sock) is not conn:
            return
        if conn.outbuf:
            try:
                del conn.outbuf[: conn.sock.send(conn.outbuf[:1])]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._drop(conn)
                return
        if conn.outbuf:
            conn.drip_timer = True
            self._later(self.drip_seconds, lambda: self._drip(conn))
        else:
            conn.slow = False
        self._pump(conn)

    def _drop(self, conn: Connection) -> None:
        if self.conns.pop(conn.sock, None) is None:
            return
        for sock in (conn.sock, conn.up):
            if sock is None:
                continue
            self.ups.pop(sock, None)
            try:
                self.sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
        conn.up = None

    def drop_all(self) -> None:
        for conn in list(self.conns.values()):
            self._drop(conn)

    def _relay(self, conn: Connection, data: bytes) -> None:
        if conn.up is None and self.upstream is not None and not conn.closing:
            self._connect_up(conn)
        if conn.up is not None:
            conn.upbuf += data

    def _connect_up(self, conn: Connection) -> None:
        assert self.upstream is not None
        host, port = self.upstream
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        err = sock.connect_ex((host, port))
        if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            sock.close()
            self._upstream_gone(conn)
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        conn.up = sock
        conn.up_connected = err == 0
        self.ups[sock] = conn

    def _upstream_gone(self, conn: Connection) -> None:
        """The upstream closed or failed: what it sent is passed on, then the client's
        connection is closed (a node that went away)."""
        up, conn.up = conn.up, None
        if up is not None:
            self.ups.pop(up, None)
            try:
                self.sel.unregister(up)
            except (KeyError, ValueError):
                pass
            up.close()
        conn.queue.clear()
        conn.queued = 0
        conn.upbuf.clear()
        conn.inbuf.clear()
        conn.closing = True

    def _up_io(self, conn: Connection, events: int) -> None:
        up = conn.up
        assert up is not None
        if not conn.up_connected and events & (selectors.EVENT_WRITE | selectors.EVENT_READ):
            if up.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._upstream_gone(conn)
                self._pump(conn)
                return
            conn.up_connected = True
        if events & selectors.EVENT_READ:
            try:
                data = up.recv(65536)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                data = b""
            if data == b"":
                self._upstream_gone(conn)
            elif data and conn.binary:
                conn.outbuf += data
            elif data:
                conn.upin += data
                conn.scan_up()
        self._pump(conn)

    def shutdown(self) -> None:
        if self.waker_r.fileno() == -1:
            return
        self.drop_all()
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.close()
        self.sel.close()
        self.waker_r.close()
        self.waker_w.close()
