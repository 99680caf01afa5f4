"""Real ``memcached`` processes on free loopback ports (TCP, UNIX socket, TLS, ASCII auth).

Every process started here is stopped at interpreter exit even if a fixture finalizer did not
run. ``stats()``/``flush_all()`` speak the text protocol over a raw socket, doing the TLS and
auth handshakes as needed, so they work for every kind of server.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Tuple, Union

import trustme

MEMCACHED = os.environ.get("MEMCACHED_BIN", "memcached")
HOST = "127.0.0.1"
START_TIMEOUT = 5.0
Address = Union[Tuple[str, int], str]

_live: set[MemcachedProcess] = set()


class MemcachedStartError(RuntimeError):
    pass


def memcached_path() -> Optional[str]:
    return shutil.which(MEMCACHED)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class MemcachedProcess:
    """One memcached server. ``tls=True`` makes a trustme CA and a certificate for
    ``tls_names``; ``auth=(user, pass)`` enables -Y."""

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        unix_path: Union[str, Path, None] = None,
        tls: bool = False,
        tls_names: Sequence[str] = ("localhost", HOST),
        auth: Optional[Tuple[str, str]] = None,
        threads: int = 2,
        memory_mb: int = 64,
    ) -> None:
        self.args = list(args)
        self.unix_path = str(unix_path) if unix_path is not None else None
        self.tls = tls
        self.username: Optional[str] = auth[0] if auth else None
        self.password: Optional[str] = auth[1] if auth else None
        self.threads, self.memory_mb = threads, memory_mb
        self.host = HOST
        self.port = 0
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._tmp = tempfile.TemporaryDirectory(prefix="pymc-memcached-")
        self._dir = Path(self._tmp.name)
        self.ca: Optional[trustme.CA] = None
        if tls:
            self.ca = trustme.CA()
            cert = self.ca.issue_cert(*tls_names)
            for pem in cert.cert_chain_pems:
                pem.write_to_path(str(self._dir / "chain.pem"), append=True)
            cert.private_key_pem.write_to_path(str(self._dir / "key.pem"))
        if auth:
            (self._dir / "auth").write_text(f"{auth[0]}:{auth[1]}\n")

    # -- addresses ------------------------------------------------------------------------------
    @property
    def address(self) -> Address:
        """``(host, port)``, or the socket path for a UNIX-socket server."""
        return self.unix_path if self.unix_path else (self.host, self.port)

    @property
    def server(self) -> str:
        return self.unix_path if self.unix_path else f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<MemcachedProcess {self.server} {state}>"

    # -- life cycle -----------------------------------------------------------------------------
    def _command(self) -> list[str]:
        cmd = [MEMCACHED, "-U", "0", "-t", str(self.threads), "-m", str(self.memory_mb)]
        if os.geteuid() == 0:
            cmd += ["-u", "root"]
        if self.unix_path:
            cmd += ["-s", self.unix_path, "-a", "0700"]
        else:
            cmd += ["-l", self.host, "-p", str(self.port)]
        if self.tls:
            chain, key = self._dir / "chain.pem", self._dir / "key.pem"
            cmd += ["-Z", "-o", f"ssl_chain_cert={chain},ssl_key={key}"]
        if self.username is not None:
            cmd += ["-Y", str(self._dir / "auth")]
        return cmd + self.args

    def start(self) -> MemcachedProcess:
        """Start (again). The first TCP start picks a free port; later ones reuse it."""
        if self.is_running():
            return self
        fresh_port = not self.unix_path and self.port == 0
        deadline = time.monotonic() + START_TIMEOUT
        for attempt in range(50):
            if fresh_port:
                self.port = free_port()
            err = self._spawn_and_wait(deadline)
            if err is None:
                _live.add(self)
                return self
            busy = "Address already in use" in err
            if not busy or time.monotonic() > deadline or (fresh_port and attempt >= 4):
                raise MemcachedStartError(f"memcached failed to start: {self._command()}\n{err}")
            time.sleep(0.1)
        raise MemcachedStartError("memcached failed to start: too many attempts")

    def _spawn_and_wait(self, deadline: float) -> Optional[str]:
        """Spawn memcached and wait until it accepts; return its stderr on failure."""
        if self.unix_path and os.path.exists(self.unix_path):
            os.unlink(self.unix_path)  # a stale socket from a killed server
        log = self._dir / "stderr.log"
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                self._command(), stdin=subprocess.DEVNULL, stdout=err, stderr=err
            )
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return log.read_text(errors="replace") or f"exit status {self.proc.returncode}"
            try:
                self._raw_socket(0.2).close()
            except OSError:
                time.sleep(0.02)
                continue
            pid = 0 if self.unix_path else self._answering_pid()
            if self.unix_path or pid == self.proc.pid:
                return None
            if pid == 0:  # it could not say yet
                time.sleep(0.02)
                continue
            # Another process's server answers on the port (an xdist worker's, say, that
            # took it between free_port() and our bind): ours is failing to bind. Tests
            # must never share a server they think is their own.
            self.kill()
            return f"Address already in use: another server answers on port {self.port}"
        self.kill()
        return f"not accepting after {START_TIMEOUT}s\n" + log.read_text(errors="replace")

    def stop(self, timeout: float = 5.0, graceful: bool = True) -> None:
        """SIGTERM, wait (bounded), then SIGKILL. memcached takes up to 1 s to act on SIGTERM,
        so ``graceful=False`` (used at teardown) sends SIGKILL at once."""
        if self.proc is not None and self.proc.poll() is None:
            if graceful:
                self.proc.terminate()
            else:
                self.proc.kill()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        _live.discard(self)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5.0)
        _live.discard(self)

    def restart(self) -> MemcachedProcess:
        self.stop()
        return self.start()

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        """Stop at once (SIGKILL) and remove the temporary files."""
        self.stop(graceful=False)
        self._tmp.cleanup()

    def __enter__(self) -> MemcachedProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- raw protocol access --------------------------------------------------------------------
    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context trusting this server's CA (for ``localhost`` or ``127.0.0.1``)."""
        if self.ca is None:
            raise ValueError("not a TLS server")
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def _raw_socket(self, timeout: float) -> socket.socket:
        if self.unix_path:
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(timeout)
            try:
                sock.connect(self.unix_path)
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def connect(self, timeout: float = 2.0, verify: bool = True) -> socket.socket:
        """A connected socket, TLS-wrapped and authenticated if this server needs it
        (``verify=False``: a TLS server's certificate is not checked)."""
        sock = self._raw_socket(timeout)
        try:
            if self.tls:
                ctx = self.client_ssl_context()
                if not verify:  # (a certificate issued for names other than our host)
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                sock = ctx.wrap_socket(sock, server_hostname=self.host)
            if self.username is not None:
                cred = f"{self.username} {self.password}".encode()
                reply = request(sock, b"set auth 0 0 %d\r\n%s\r\n" % (len(cred), cred), b"\r\n")
                if reply != b"STORED\r\n":
                    raise MemcachedStartError(f"auth failed: {reply!r}")
        except BaseException:
            sock.close()
            raise
        return sock

    def _answering_pid(self) -> int:
        """The pid that the server answering on our address reports (0 if it cannot tell)."""
        try:
            with self.connect(verify=False) as sock:
                reply = request(sock, b"stats\r\n", b"END\r\n")
        except (OSError, ConnectionError, MemcachedStartError):
            return 0
        for line in reply.decode(errors="replace").split("\r\n"):
            if line.startswith("STAT pid "):
                return int(line.split()[2])
        return 0

    def stats(self, *args: str) -> dict[str, str]:
        with self.connect() as sock:
            cmd = " ".join(("stats", *args)).encode() + b"\r\n"
            lines = request(sock, cmd, b"END\r\n").decode().split("\r\n")
        return {p[1]: p[2] for p in (line.split(" ", 2) for line in lines) if p[0] == "STAT"}

    def flush_all(self) -> None:
        with self.connect() as sock:
            reply = request(sock, b"flush_all\r\n", b"\r\n")
        if reply != b"OK\r\n":
            raise RuntimeError(f"flush_all: {reply!r}")


def request(sock: socket.socket, data: bytes, terminator: bytes) -> bytes:
    """Send ``data`` and read until the reply ends with ``terminator`` (or an error line)."""
    sock.sendall(data)
    buf = b""
    while not buf.endswith(terminator) and not (buf.endswith(b"\r\n") and _is_error(buf)):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {buf!r}")
        buf += chunk
    return buf


def _is_error(buf: bytes) -> bool:
    return buf.startswith((b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"))


@atexit.register
def _reap_all() -> None:
    for server in list(_live):
        server.stop(timeout=2.0, graceful=False)
