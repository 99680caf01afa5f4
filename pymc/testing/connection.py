"""One client connection of the emulated configuration endpoint, without its I/O: the
buffers, the queue that keeps local and relayed replies in request order, and the scan of
the upstream's replies for the ``MN`` that ends a relayed stretch.
"""

from __future__ import annotations

import collections
import socket
from typing import Deque, Optional

from .replies import HUGE_SIZE, MAX_LINE, MAX_PENDING_OUTPUT, Item

__all__ = ["Connection"]


class Connection:
    """One client connection of the endpoint: its buffers, its queue of replies, and its
    upstream connection when the endpoint relays (the endpoint does the I/O)."""

    __slots__ = (
        "binary",
        "closing",
        "drip_timer",
        "ending",
        "forward",
        "huge_left",
        "inbuf",
        "linger",
        "long_line",
        "mn_ours",
        "outbuf",
        "queue",
        "queued",
        "shut",
        "skip",
        "slow",
        "sock",
        "started",
        "up",
        "up_connected",
        "up_skip",
        "upbuf",
        "upin",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closing = False  # close once outbuf is sent (after ``quit`` or a refused line)
        self.ending = False  # take no more requests: a quit or refusal waits in the queue
        self.linger = False  # "too_many": once outbuf is sent, shut writes, drain, close
        self.shut = False
        self.slow = False  # "slowloris": outbuf drips, one byte per timer
        self.drip_timer = False
        self.huge_left = 0  # "huge": filler bytes still to stream
        self.started = False
        # -- relaying to the upstream (only with ``upstream``) --
        self.up: Optional[socket.socket] = None
        self.up_connected = False
        self.upbuf = bytearray()  # for the upstream, not sent yet
        self.upin = bytearray()  # from the upstream, not scanned yet
        self.up_skip = 0  # upstream data-block bytes to pass on unscanned
        self.mn_ours: Deque[bool] = collections.deque()  # each "mn" sent upstream: ours?
        self.queue: Deque[Item] = collections.deque()
        self.queued = 0  # bytes of local replies waiting in the queue
        self.skip = 0  # client data-block bytes still to pass on (or drop)
        self.forward = True  # whether those bytes (or the rest of a long line) are relayed
        self.long_line = False  # relaying the rest of an overlong line
        self.binary = False  # binary protocol: the whole connection is relayed as is

    def can_take(self) -> bool:
        """Whether the connection takes another request now (else its lines wait)."""
        return not (
            self.closing
            or self.ending
            or self.linger
            or self.huge_left
            or len(self.outbuf) >= MAX_PENDING_OUTPUT
            or len(self.upbuf) >= MAX_PENDING_OUTPUT
            or self.queued >= MAX_PENDING_OUTPUT
        )

    def reply(self, item: Item) -> None:
        """A local reply: out now, or after the relayed replies it must follow."""
        if not self.queue:
            self.emit(item)
            return
        if self.queue[-1][0] == "relay":  # mark where the relayed replies before it end
            self.queue[-1] = ("sealed", b"")
            self.upbuf += b"mn\r\n"
            self.mn_ours.append(True)
        self.queue.append(item)
        self.queued += len(item[1])

    def emit(self, item: Item) -> None:
        """A local reply goes out now (into ``outbuf``), with what its kind means."""
        kind, data = item
        self.outbuf += data
        if kind == "drip":
            self.slow = True
        elif kind == "huge":
            self.huge_left = HUGE_SIZE
        elif kind == "close":
            self.closing = True
        elif kind == "too_many":
            self.linger = True

    def open_relay(self) -> None:
        """Relayed commands follow: make sure the queue ends with an open relay stretch."""
        if not self.queue or self.queue[-1][0] != "relay":
            self.queue.append(("relay", b""))

    def scan_up(self) -> None:
        """Pass the upstream's replies on, swallowing the ``MN`` to each ``mn`` of ours and
        emitting the local replies that waited for it."""
        buf = self.upin
        while buf:
            if self.up_skip:
                size = min(self.up_skip, len(buf))
                self.outbuf += buf[:size]
                del buf[:size]
                self.up_skip -= size
                continue
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > MAX_LINE:  # no reply line is this long: pass it on unscanned
                    self.outbuf += buf
                    buf.clear()
                return
            line = bytes(buf[: end + 1])
            del buf[: end + 1]
            if line == b"MN\r\n" and self.mn_ours:
                if self.mn_ours.popleft():
                    self.relay_done()
                    continue
            elif line.startswith((b"VALUE ", b"VA ")):
                words = line.split()
                field = words[3] if words[0] == b"VALUE" and len(words) > 3 else words[1]
                if field.isdigit():
                    self.up_skip = int(field) + 2
            self.outbuf += line

    def relay_done(self) -> None:
        """The upstream answered our ``mn``: the local replies that waited for it go out."""
        if self.queue and self.queue[0][0] == "sealed":
            self.queue.popleft()
        while self.queue and self.queue[0][0] not in ("relay", "sealed"):
            if self.huge_left or self.closing or self.linger:
                return
            item = self.queue.popleft()
            self.queued -= len(item[1])
            self.emit(item)
