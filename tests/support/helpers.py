"""Small helpers the test modules share."""

from __future__ import annotations

import time
from typing import Any, Callable, Tuple


class Interrupt(BaseException):
    """Stands for ``gevent.Timeout``, ``KeyboardInterrupt``, ``SystemExit``: not an
    ``Exception``, so only ``except BaseException`` cleanup sees it."""


def tcp(server: Any) -> Tuple[str, int]:
    """A TCP server's ``(host, port)``."""
    address = server.address
    assert isinstance(address, tuple)
    return (address[0], address[1])


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
