"""Small helpers the test modules share."""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, Optional, Protocol, Tuple


class Interrupt(BaseException):
    """Stands for ``gevent.Timeout``, ``KeyboardInterrupt``, ``SystemExit``: not an
    ``Exception``, so only ``except BaseException`` cleanup sees it."""


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
