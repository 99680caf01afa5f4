"""A tiny memcached before 1.6 (no meta commands) on a free loopback port, for tests.

It speaks the text protocol's common commands over an in-memory dict (``get``/``gets``,
``set``/``add``/``replace``, ``delete``, ``incr``/``decr``, ``touch``, ``version``,
``flush_all``), pipelined, one thread per connection, and answers every other line with
``ERROR``, as memcached 1.5 does: a meta command (``mg``, ``ms``, ``mn``, ...) is an unknown
command, and the data block of an ``ms`` is read as one more command line (so it draws a
second ``ERROR``, or does whatever the line says). Daemon threads, bounded waits: nothing
here can hang a test.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Dict, List, Optional, Tuple

VERSION = b"1.5.22"
_STORE = (b"set", b"add", b"replace", b"append", b"prepend", b"cas")


class OldServer:
    def __init__(self, version: bytes = VERSION, port: int = 0) -> None:
        """``port``: 0 for a free one; or the port a stopped server listened on (a newer
        server replaced by an older one at the same address)."""
        self.version = version
        self.items: Dict[bytes, Tuple[int, bytes]] = {}
        self.lines: List[bytes] = []  # every command line received, in order
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.address: Tuple[str, int] = self._listener.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="OldServer")

    @property
    def server(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def start(self) -> OldServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self._listener.close()

    def __enter__(self) -> OldServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.1)
        buf = b""
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                out, buf, close = self._handle(buf)
                if out:
                    try:
                        conn.sendall(out)
                    except OSError:
                        return
                if close:
                    return

    def _handle(self, buf: bytes) -> Tuple[bytes, bytes, bool]:
        """Answer every complete command in ``buf``: (replies, what is left, close?)."""
        out: List[bytes] = []
        while True:
            end = buf.find(b"\r\n")
            if end < 0:
                return b"".join(out), buf, False
            line = buf[:end]
            words = line.split()
            command = words[0] if words else b""
            if command in _STORE and len(words) >= 5 and words[4].isdigit():
                size = int(words[4])
                if len(buf) < end + 2 + size + 2:
                    return b"".join(out), buf, False  # wait for the data block
                data = buf[end + 2 : end + 2 + size]
                buf = buf[end + 2 + size + 2 :]
                reply = self._store(command, words, data)
            else:
                buf = buf[end + 2 :]
                if command == b"quit":
                    return b"".join(out), b"", True
                reply = self._other(command, words)
            with self._lock:
                self.lines.append(line)
            noreply = words[-1:] == [b"noreply"] and command != b"get"
            if not noreply or reply.startswith((b"ERROR", b"CLIENT_ERROR")):
                out.append(reply)

    def _store(self, command: bytes, words: List[bytes], data: bytes) -> bytes:
        key, flags = words[1], int(words[2])
        with self._lock:
            present = key in self.items
            if (command == b"add" and present) or (command == b"replace" and not present):
                return b"NOT_STORED\r\n"
            if command in (b"append", b"prepend"):
                if not present:
                    return b"NOT_STORED\r\n"
                old_flags, old = self.items[key]
                data = old + data if command == b"append" else data + old
                flags = old_flags
            self.items[key] = (flags, data)
        return b"STORED\r\n"

    def _other(self, command: bytes, words: List[bytes]) -> bytes:
        with self._lock:
            if command in (b"get", b"gets") and len(words) > 1:
                parts = []
                for key in words[1:]:
                    found: Optional[Tuple[int, bytes]] = self.items.get(key)
                    if found is not None:
                        cas = b" 1" if command == b"gets" else b""
                        head = b"VALUE %s %d %d%s\r\n" % (key, found[0], len(found[1]), cas)
                        parts.append(head + found[1] + b"\r\n")
                return b"".join(parts) + b"END\r\n"
            if command == b"delete" and len(words) > 1:
                return b"DELETED\r\n" if self.items.pop(words[1], None) else b"NOT_FOUND\r\n"
            if command in (b"incr", b"decr") and len(words) > 2 and words[2].isdigit():
                found = self.items.get(words[1])
                if found is None:
                    return b"NOT_FOUND\r\n"
                number = int(found[1]) + int(words[2]) * (1 if command == b"incr" else -1)
                self.items[words[1]] = (found[0], b"%d" % max(number, 0))
                return b"%d\r\n" % max(number, 0)
            if command == b"touch" and len(words) > 2:
                return b"TOUCHED\r\n" if words[1] in self.items else b"NOT_FOUND\r\n"
            if command == b"version":
                return b"VERSION " + self.version + b"\r\n"
            if command == b"flush_all":
                self.items.clear()
                return b"OK\r\n"
        return b"ERROR\r\n"
