"""Small helpers the test modules share."""

from __future__ import annotations

import json
import os
import select
import socket
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Protocol, Set, Tuple


class Interrupt(BaseException):
    """Stands for ``gevent.Timeout``, ``KeyboardInterrupt``, ``SystemExit``: not an
    ``Exception``, so only ``except BaseException`` cleanup sees it."""


def source_files(*modules: types.ModuleType) -> Set[str]:
    """The source files of ``modules``: a module's own file, every ``.py`` file of a package
    (so a tracer that fires in "the client's code" keeps covering it when it is split)."""
    files: Set[str] = set()
    for module in modules:
        path = Path(module.__file__ or "")
        if path.name == "__init__.py":
            files.update(str(p) for p in path.parent.rglob("*.py"))
        else:
            files.add(str(path))
    return files


def tcp(server: Any) -> Tuple[str, int]:
    """A TCP server's ``(host, port)``."""
    address = server.address
    assert isinstance(address, tuple)
    return (address[0], address[1])


class HasSock(Protocol):
    @property
    def sock(self) -> Optional[socket.socket]: ...


def current_sock(client: HasSock) -> Optional[socket.socket]:
    """``client.sock`` read afresh, for a test that asserts on it before and after a call:
    mypy keeps an attribute narrowed across method calls (``sock is None`` would make the
    next ``sock is not None`` unreachable)."""
    return client.sock


def stat(server: Any, name: str) -> int:
    """One numeric ``stats`` value of a test-bed server."""
    return int(server.stats()[name])


def wait_until(predicate: Callable[[], bool], timeout: float = 3.0, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.005)


def _reap(pid: int, timeout: float = 5.0) -> None:
    """Wait for a child to exit; kill it if it has not within ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)


def run_in_child(body: Callable[[], Dict[str, Any]], timeout: float = 10.0) -> Dict[str, Any]:
    """Fork; run ``body`` in the child and return the JSON report it makes."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            os.close(read_end)
            try:
                report = body()
            except BaseException as exc:  # report it to the parent
                report = {"error": repr(exc)}
            os.write(write_end, json.dumps(report).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    chunks = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 0.1)
            if ready:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_end)
        _reap(pid)
    result: Dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
    return result


#: The three clients that must answer the same input the same way.
KINDS = ["client", "pooled", "hash"]


def one_node_client(kind: str, server: Any, **options: Any) -> Any:
    """A Client, PooledClient or HashClient (of that one node) for ``server``. The
    HashClient never ejects its node, so every client sees the same input."""
    import pymc

    options.setdefault("timeout", 2.0)
    options.setdefault("connect_timeout", 2.0)
    if kind == "client":
        return pymc.Client(server, **options)
    if kind == "pooled":
        return pymc.PooledClient(server, max_pool_size=2, pool_timeout=2.0, **options)
    return pymc.HashClient(
        [server],
        use_pooling=True,
        max_pool_size=2,
        pool_timeout=2.0,
        retry_attempts=1000,
        retry_timeout=0,
        **options,
    )


def make_client(kind: str, nodes: Any, **kw: Any) -> Any:
    """A client of ``kind`` ("client", "pooled" or "hash") over the suite's ``nodes``: a
    Client or PooledClient on the first, a pooled HashClient over the first three."""
    from pymc import Client, HashClient, PooledClient

    kw.setdefault("timeout", 5.0)
    if kind == "client":
        return Client(tcp(nodes[0]), **kw)
    if kind == "pooled":
        return PooledClient(tcp(nodes[0]), max_pool_size=8, **kw)
    return HashClient([tcp(n) for n in nodes[:3]], use_pooling=True, max_pool_size=8, **kw)
