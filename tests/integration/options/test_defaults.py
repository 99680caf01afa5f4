"""Defaults that never hang: a server that never answers, or never accepts, costs a caller
the default timeouts (2 s each), on every client, without any timeout argument."""

from __future__ import annotations

import socket
import struct
import sys
import time
from typing import Any, Iterator, List, Tuple

import pytest
from support.helpers import KINDS

import pymc
from pymc import HashClient, PooledClient
from pymc.client import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT

pytestmark = pytest.mark.timeout(30)


def make(kind: str, address: Tuple[str, int]) -> Any:
    """A client with nothing but its server: every timeout is the default."""
    if kind == "client":
        return pymc.Client(address)
    if kind == "pooled":
        return PooledClient(address)
    # A HashClient that never ejects its node, and doesn't retry, so one timeout is seen.
    return HashClient([address], retry_attempts=0, dead_timeout=0)


@pytest.fixture
def silent_server() -> Iterator[Tuple[str, int]]:
    """Accepts connections (the kernel does) and never answers a byte."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield listener.getsockname()
    listener.close()


@pytest.fixture
def full_backlog() -> Iterator[Tuple[str, int]]:
    """A listener whose accept queue is full, so a new connection's SYN is dropped and
    connect() waits: what a dead or black-holed host looks like, on loopback."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers: List[socket.socket] = []
    for _ in range(8):  # fill the queue: later connects get no SYN-ACK
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(address)
        except BlockingIOError:
            pass
        fillers.append(filler)
    time.sleep(0.1)
    probe = socket.socket()
    probe.settimeout(0.5)
    try:
        probe.connect(address)
        full = False
    except OSError:  # (socket.timeout)
        full = True
    finally:
        probe.close()
    assert full, "the kernel still completes connections to a full backlog"
    yield address
    for filler in fillers:
        filler.close()
    listener.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_server_that_never_answers_costs_the_default_timeout(
    silent_server: Tuple[str, int], kind: str
) -> None:
    client = make(kind, silent_server)
    try:
        started = time.monotonic()
        with pytest.raises(pymc.MemcacheTimeoutError):
            client.get("k")
        assert DEFAULT_TIMEOUT - 0.1 < time.monotonic() - started < DEFAULT_TIMEOUT + 1.5
    finally:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_host_that_never_accepts_costs_the_default_connect_timeout(
    full_backlog: Tuple[str, int], kind: str
) -> None:
    client = make(kind, full_backlog)
    try:
        started = time.monotonic()
        with pytest.raises((pymc.MemcacheConnectTimeoutError, pymc.MemcacheTimeoutError)):
            client.set("k", b"v")
        took = time.monotonic() - started
        assert DEFAULT_CONNECT_TIMEOUT - 0.1 < took < DEFAULT_CONNECT_TIMEOUT + 1.5
    finally:
        client.close()


@pytest.mark.parametrize("timeout", [0.3, 1e-9])
def test_a_short_or_tiny_timeout_is_kept_not_turned_into_forever(
    silent_server: Tuple[str, int], timeout: float
) -> None:
    # On Linux the timeout is the kernel's (SO_RCVTIMEO), where a zero value means "no
    # timeout": a timeout too small for its microseconds must still time out.
    client = pymc.Client(silent_server, timeout=timeout)
    try:
        started = time.monotonic()
        with pytest.raises(pymc.MemcacheTimeoutError):
            client.get("k")
        assert time.monotonic() - started < timeout + 1.0
        assert client.sock is None  # the connection was closed, as after any timeout
    finally:
        client.close()


def test_a_plain_socket_waits_in_the_kernel_not_in_a_poll_before_each_call(
    silent_server: Tuple[str, int],
) -> None:
    client = pymc.Client(silent_server, timeout=1.5)
    try:
        client.send(b"version\r\n")  # connects
        sock = client.sock
        assert sock is not None
        if sys.platform.startswith("linux"):
            assert sock.gettimeout() is None  # blocking: CPython polls before no call
            seconds, micros = struct.unpack(
                "@ll", sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
            )
            assert (seconds, micros) == (1, 500_000)
        else:
            assert sock.gettimeout() == 1.5
    finally:
        client.close()


def test_a_gevent_socket_keeps_its_own_timeout(silent_server: Tuple[str, int]) -> None:
    # gevent's sockets are non-blocking underneath and wait in the hub: a kernel timeout
    # would never fire there (under patch_all, socket.socket is gevent's class too; the
    # gevent integration suite covers that).
    import gevent.socket

    client = pymc.Client(silent_server, timeout=0.3, socket_module=gevent.socket)
    try:
        started = time.monotonic()
        with pytest.raises(pymc.MemcacheTimeoutError):
            client.get("k")
        assert time.monotonic() - started < 1.3
    finally:
        client.close()
