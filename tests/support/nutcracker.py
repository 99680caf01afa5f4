"""A real twemproxy (``nutcracker``, the Debian package) on a free loopback port, over
memcached backends given by address, for tests of pymc behind a proxy.

The YAML configuration is generated; a backend may be an address nobody listens on (a
down backend: twemproxy then answers the commands routed to it with ``SERVER_ERROR
Connection refused``). ``auto_eject_hosts: false`` keeps a down backend on the ring, so
which keys fail stays fixed. The stats listener gets a free loopback port too (its default,
22222 on every interface, would collide between test workers). Every process started here
is stopped at interpreter exit even if a fixture finalizer did not run.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from support.servers import HOST, free_port

NUTCRACKER = os.environ.get("NUTCRACKER_BIN", "nutcracker")
START_TIMEOUT = 5.0
Address = Tuple[str, int]

_live: set[NutcrackerProcess] = set()


class NutcrackerStartError(RuntimeError):
    pass


def nutcracker_path() -> Optional[str]:
    """The ``nutcracker`` binary: on PATH, else Debian's /usr/sbin (not on a user's PATH)."""
    found = shutil.which(NUTCRACKER)
    if found is None and os.sep not in NUTCRACKER:
        found = shutil.which(NUTCRACKER, path="/usr/sbin:/usr/local/sbin")
    return found


#: Sockets bound and never listening: their ports refuse connections, and no later server
#: (ours or another test worker's) can take them while the session runs.
_refusing: List[socket.socket] = []


def down_address() -> Address:
    """A loopback address that refuses connections: a port bound by a socket that never
    listens, held for the rest of the session (a port merely found free could be taken
    by the next server started, and the down backend would come up)."""
    sock = socket.socket()
    sock.bind((HOST, 0))
    _refusing.append(sock)
    return (HOST, int(sock.getsockname()[1]))


class NutcrackerProcess:
    """One twemproxy pool listening on ``address``, over ``backends`` (``(host, port)``
    pairs, in ring order). ``timeout_ms`` is twemproxy's per-request server timeout.
    ``names`` are the backends' names in the configuration (ketama places a named server
    by its name, so different names give a different ring); ``node0``, ``node1``... by
    default."""

    def __init__(
        self,
        backends: Sequence[Address],
        *,
        hash: str = "md5",
        distribution: str = "ketama",
        timeout_ms: int = 1000,
        names: Optional[Sequence[str]] = None,
    ) -> None:
        if not backends:
            raise ValueError("twemproxy needs at least one backend")
        self.backends = [(str(h), int(p)) for h, p in backends]
        if names is None:
            names = [f"node{n}" for n in range(len(self.backends))]
        if len(names) != len(self.backends):
            raise ValueError("one name per backend")
        self.names = [str(name) for name in names]
        self.hash, self.distribution, self.timeout_ms = hash, distribution, timeout_ms
        self.host = HOST
        self.port = 0
        self.stats_port = 0
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._tmp = tempfile.TemporaryDirectory(prefix="pymc-nutcracker-")
        self._dir = Path(self._tmp.name)

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<NutcrackerProcess {self.server} over {self.backends} {state}>"

    def config(self) -> str:
        servers = "\n".join(
            f"    - {host}:{port}:1 {name}" for name, (host, port) in zip(self.names, self.backends)
        )
        return (
            "pymc:\n"
            f"  listen: {self.host}:{self.port}\n"
            f"  hash: {self.hash}\n"
            f"  distribution: {self.distribution}\n"
            "  auto_eject_hosts: false\n"
            f"  timeout: {self.timeout_ms}\n"
            "  server_connections: 1\n"
            "  servers:\n"
            f"{servers}\n"
        )

    def start(self) -> NutcrackerProcess:
        binary = nutcracker_path()
        if binary is None:
            raise NutcrackerStartError(f"{NUTCRACKER!r} not found (apt-get install nutcracker)")
        deadline = time.monotonic() + START_TIMEOUT
        error = ""
        for _ in range(5):  # a port taken between free_port() and nutcracker's bind: again
            self.port, self.stats_port = free_port(), free_port()
            conf = self._dir / "nutcracker.yml"
            conf.write_text(self.config())
            log = self._dir / "nutcracker.log"
            cmd = [binary, "-c", str(conf), "-s", str(self.stats_port), "-a", self.host]
            cmd += ["-o", str(log), "-p", str(self._dir / "nutcracker.pid")]
            with open(self._dir / "stderr.log", "wb") as err:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
            error = self._wait_ready(deadline)
            if not error:
                _live.add(self)
                return self
            self.stop()
            if time.monotonic() > deadline:
                break
        raise NutcrackerStartError(f"nutcracker failed to start: {error}")

    def _wait_ready(self, deadline: float) -> str:
        """'' once the proxy accepts and relays (``get`` of a key answers ``END`` or a
        ``SERVER_ERROR``: any full line), else why not."""
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return self._logs() or f"exit status {self.proc.returncode}"
            try:
                with socket.create_connection(self.address, timeout=0.5) as sock:
                    sock.sendall(b"get pymc:ready\r\n")
                    if self._read_line(sock, deadline).endswith(b"\r\n"):
                        return ""
            except OSError:
                time.sleep(0.02)
        return f"not ready after {START_TIMEOUT}s\n{self._logs()}"

    @staticmethod
    def _read_line(sock: socket.socket, deadline: float) -> bytes:
        buf = b""
        while not buf.endswith(b"\r\n") and time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buf += chunk
        return buf

    def _logs(self) -> str:
        out: List[str] = []
        for name in ("stderr.log", "nutcracker.log"):
            path = self._dir / name
            if path.exists():
                out.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(out)

    def request(self, data: bytes, timeout: float = 2.0) -> bytes:
        """Send ``data`` on a new connection; return the first reply line (with CRLF)."""
        with socket.create_connection(self.address, timeout=timeout) as sock:
            sock.sendall(data)
            return self._read_line(sock, time.monotonic() + timeout)

    def keys(self, prefix: str, live: bool, count: int = 1) -> List[str]:
        """``count`` keys starting with ``prefix`` that twemproxy routes to a live backend
        (``live=True``: a ``get`` answers ``END`` or a value) or to a down one (it answers
        ``SERVER_ERROR``), found by asking (at most 500 keys are tried)."""
        found: List[str] = []
        with socket.create_connection(self.address, timeout=2.0) as sock:
            for n in range(500):
                # (keys that differ in one digit can all land on one arc of the ring)
                key = f"{prefix}:{hashlib.md5(b'%d' % n).hexdigest()[:12]}"
                sock.sendall(b"get %s\r\n" % key.encode())
                reply = b""
                while not reply.endswith(b"END\r\n") and not (
                    reply.endswith(b"\r\n") and reply.startswith(b"SERVER_ERROR")
                ):
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError(f"twemproxy closed the connection after {reply!r}")
                    reply += chunk
                if reply.startswith(b"SERVER_ERROR") != live:
                    found.append(key)
                    if len(found) == count:
                        return found
        raise AssertionError(
            f"no key of {prefix!r} is routed to a {'live' if live else 'down'} backend"
        )

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5.0)
            except subprocess.TimeoutExpired:
                pass
        _live.discard(self)

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> NutcrackerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


@atexit.register
def _reap_all() -> None:
    for proxy in list(_live):
        proxy.stop()
    for sock in _refusing:
        sock.close()
