"""A TCP proxy on 127.0.0.1 that forwards every server reply one byte per send() (with a
short pause between bytes), so a client sees replies split at every byte boundary.

``chunk`` forwards that many bytes per send() instead of one; ``lead=True`` pauses before
the first piece of each reply too (a server that drips from the start). ``pause`` may be
changed while the proxy runs: it is read before each piece.

Threads are daemons; sockets have timeouts; ``stop()`` closes everything.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import List, Optional, Tuple


class TrickleProxy:
    def __init__(
        self,
        upstream: Tuple[str, int],
        pause: float = 0.0003,
        chunk: int = 1,
        lead: bool = False,
        unix_path: Optional[str] = None,
    ) -> None:
        self.upstream = upstream
        self.pause = pause
        self.chunk = chunk
        self.lead = lead
        self.unix_path = unix_path  # listen there (a UNIX socket) instead of on TCP
        if unix_path is None:
            self._listener = socket.socket()
            self._listener.bind(("127.0.0.1", 0))
        else:
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(unix_path)
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        self.address: Tuple[str, int] = (
            self._listener.getsockname()[:2] if unix_path is None else ("", 0)
        )
        self._stop = threading.Event()
        self._socks: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def server(self) -> str:
        if self.unix_path is not None:
            return self.unix_path
        return f"{self.address[0]}:{self.address[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                continue
            upstream = socket.create_connection(self.upstream, timeout=5)
            for s in (client, upstream):
                if s.family != socket.AF_UNIX:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(0.2)
                self._socks.append(s)
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, trickle: bool) -> None:
        while not self._stop.is_set():
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                if trickle:
                    for i in range(0, len(data), self.chunk):
                        if self.lead:
                            time.sleep(self.pause)
                        if self._stop.is_set():
                            break
                        dst.sendall(data[i : i + self.chunk])
                        if not self.lead:
                            time.sleep(self.pause)
                else:
                    dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        for s in [self._listener, *self._socks]:
            try:
                s.close()
            except OSError:
                pass
