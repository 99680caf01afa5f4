"""A threaded TCP proxy on 127.0.0.1 that injects faults between a client and memcached.

One daemon thread runs a ``selectors`` loop over the listener and every connection pair, with
non-blocking sockets and a select timeout of at most 50 ms, so nothing here can hang a test.
``set_mode()`` swaps an immutable mode object; the loop reads it for every chunk it moves, so a
new mode applies to data flowing after the call, on existing and new connections alike.

Modes (client->server data is called a request, server->client data a reply):
  pass                  forward both ways
  delay, seconds=S      forward requests at once; hold every reply chunk S seconds (in order)
  stall                 forward requests (the server does execute them) but drop every reply;
                        nothing is closed
  reset                 on the next request data, close the client socket with an RST
  close                 on the next request data, close the client socket cleanly (FIN)
  garbage, data=B       forward requests; replace each reply chunk with B
  close_after, nbytes=N forward at most N more reply bytes per connection, then close (FIN)
  rewrite, fn=F         forward requests; replace each reply chunk by F(chunk): a server or
                        middlebox that misbehaves in a chosen way (F may keep state). F may
                        return a list of pieces: the first goes at once, each next one
                        ``seconds`` after the one before (a late duplicate, say)
"""

from __future__ import annotations

import collections
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, List, Optional, Tuple, Union

DEFAULT_GARBAGE = b"\x00\xde\xad\xbe\xef GARBAGE \xff\xfe\r\n"
MODES = ("pass", "delay", "stall", "reset", "close", "garbage", "close_after", "rewrite")
TICK = 0.05


@dataclass(frozen=True, eq=False)
class Mode:
    name: str = "pass"
    seconds: float = 0.0
    data: bytes = DEFAULT_GARBAGE
    nbytes: int = 0
    fn: Optional[Callable[[bytes], Union[bytes, List[bytes]]]] = None


@dataclass(eq=False)
class _Pair:
    client: socket.socket
    upstream: socket.socket
    to_client: bytearray = field(default_factory=bytearray)
    to_upstream: bytearray = field(default_factory=bytearray)
    held: Deque[Tuple[float, bytes]] = field(default_factory=collections.deque)
    budget_mode: Optional[Mode] = None  # the close_after mode ``budget`` was counted for
    budget: int = 0
    close_when_flushed: bool = False


class FaultProxy:
    def __init__(self, upstream: Tuple[str, int], connect_timeout: float = 1.0) -> None:
        self.upstream = upstream
        self.connect_timeout = connect_timeout
        self.accepted = 0
        self._mode = Mode()
        self._pairs: set[_Pair] = set()
        self._sel = selectors.DefaultSelector()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.address: Tuple[str, int] = self._listener.getsockname()[:2]
        self._stop = threading.Event()
        self._close_all = threading.Event()
        self._closed_all = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"FaultProxy:{self.port}")
        self._thread.daemon = True

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def server(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    @property
    def connections(self) -> int:
        return len(self._pairs)

    @property
    def mode(self) -> Mode:
        return self._mode

    def __repr__(self) -> str:
        return f"<FaultProxy {self.server} -> {self.upstream} mode={self._mode.name}>"

    def start(self) -> FaultProxy:
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._thread.start()
        return self

    def set_mode(self, name: str, **params: Any) -> None:
        if name not in MODES:
            raise ValueError(f"unknown mode {name!r}; one of {MODES}")
        self._mode = Mode(name, **params)

    def close_all(self, timeout: float = 2.0) -> None:
        """Close every current connection (a network drop); new ones are still accepted."""
        self._closed_all.clear()
        self._close_all.set()
        if not self._closed_all.wait(timeout):
            raise TimeoutError("FaultProxy.close_all: loop did not answer")

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():  # else the loop still owns the sockets; it is a daemon
            self._shutdown()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- the loop (only the proxy thread runs what follows) ------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._close_all.is_set():
                    self._close_all.clear()
                    for pair in list(self._pairs):
                        self._drop(pair)
                    self._closed_all.set()
                for key, events in self._sel.select(self._timeout()):
                    if key.data is None:
                        self._accept()
                    elif key.data[0] in self._pairs:
                        self._io(key.data[0], key.fileobj is key.data[0].client, events)
                now = time.monotonic()
                for pair in list(self._pairs):
                    while pair.held and pair.held[0][0] <= now:
                        pair.to_client += pair.held.popleft()[1]
                    self._flush(pair)
        finally:
            self._shutdown()

    def _timeout(self) -> float:
        dues = [p.held[0][0] for p in self._pairs if p.held]
        return max(0.0, min([TICK, *(d - time.monotonic() for d in dues)]))

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        self.accepted += 1
        try:
            upstream = socket.create_connection(self.upstream, timeout=self.connect_timeout)
        except OSError:
            client.close()  # upstream down: the client sees its connection closed
            return
        pair = _Pair(client, upstream)
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sel.register(sock, selectors.EVENT_READ, (pair,))
        self._pairs.add(pair)

    def _io(self, pair: _Pair, is_client: bool, events: int) -> None:
        sock = pair.client if is_client else pair.upstream
        if events & selectors.EVENT_READ:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # EOF: the client left, or the server closed (deliver what we have)
                if is_client:
                    self._drop(pair)
                else:
                    pair.close_when_flushed = True
                    self._sel.unregister(pair.upstream)
                    pair.upstream.close()
                return
            if is_client:
                self._request(pair, data)
            else:
                self._reply(pair, data)
        if pair in self._pairs:
            self._flush(pair)

    def _request(self, pair: _Pair, data: bytes) -> None:
        name = self._mode.name
        if name in ("reset", "close"):
            self._drop(pair, rst=name == "reset")
        elif pair.upstream.fileno() != -1:
            pair.to_upstream += data

    def _reply(self, pair: _Pair, data: bytes) -> None:
        mode = self._mode
        if pair.close_when_flushed or mode.name == "stall":
            return
        if mode.name == "garbage":
            data = mode.data
        elif mode.name == "rewrite" and mode.fn is not None:
            out = mode.fn(data)
            if isinstance(out, list):
                now = time.monotonic()
                for i, piece in enumerate(out):
                    pair.held.append((now + i * mode.seconds, piece))
                return
            data = out
        elif mode.name == "close_after":
            if pair.budget_mode is not mode:
                pair.budget_mode, pair.budget = mode, mode.nbytes
            data = data[: pair.budget]
            pair.budget -= len(data)
            pair.close_when_flushed = pair.budget <= 0
        due = time.monotonic() + (mode.seconds if mode.name == "delay" else 0.0)
        if pair.held or due > time.monotonic():
            pair.held.append((due, data))  # behind earlier held chunks: order is kept
        else:
            pair.to_client += data

    def _flush(self, pair: _Pair) -> None:
        if pair not in self._pairs:
            return
        for sock, buf in ((pair.client, pair.to_client), (pair.upstream, pair.to_upstream)):
            if sock.fileno() == -1:
                continue
            try:
                while buf:
                    del buf[: sock.send(buf)]
            except BlockingIOError:
                pass
            except OSError:
                self._drop(pair)
                return
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if buf else 0)
            if self._sel.get_key(sock).events != want:
                self._sel.modify(sock, want, (pair,))
        if pair.close_when_flushed and not pair.held and not pair.to_client:
            self._drop(pair)

    def _drop(self, pair: _Pair, rst: bool = False) -> None:
        self._pairs.discard(pair)
        for sock in (pair.client, pair.upstream):
            if sock.fileno() == -1:
                continue
            self._sel.unregister(sock)
            try:
                if rst and sock is pair.client:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                elif sock is pair.client:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _shutdown(self) -> None:
        if self._listener.fileno() == -1:
            return
        for pair in list(self._pairs):
            self._drop(pair)
        self._listener.close()
        self._sel.close()
