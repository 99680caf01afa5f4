"""Defects from the outside review: is_clean on high descriptors (2), keyword arguments through
RetryingClient (3), the ``pymc`` logger's NullHandler (11), bad ``key_prefix`` values (19) and
int subclasses stored as pymemcache stores them on the same interpreter (20).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator, List

import pytest
from support.helpers import stat, tcp, wait_until
from support.servers import MemcachedProcess

import pymc
from pymc import (
    Client,
    PooledClient,
)

resource = pytest.importorskip("resource")  # POSIX: descriptor limits

ROOT = Path(__file__).resolve().parents[3]
TESTS = ROOT / "tests"

#: Descriptors below this are taken while a test runs, so its sockets get one >= this.
HIGH_FD = 1100


# ------------------------------------------------------------------ (2) is_clean, fd >= 1024


@contextlib.contextmanager
def low_descriptors_taken(above: int = HIGH_FD) -> Iterator[None]:
    """Hold every free descriptor below ``above`` (raising the soft RLIMIT_NOFILE if it is
    too low, restored after), so that the sockets opened inside get descriptors >= ``above``
    -- where ``select.select`` fails -- without touching any client's internals."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = above + 256
    raised = soft != resource.RLIM_INFINITY and soft < need
    if raised:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    taken: List[int] = []
    try:
        base = os.open(os.devnull, os.O_RDONLY)
        taken.append(base)
        for _ in range(above):  # bounded: at most one dup per descriptor number
            fd = os.dup(base)
            taken.append(fd)
            if fd >= above - 1:
                break
        yield
    finally:
        for fd in taken:
            os.close(fd)
        if raised:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_low_descriptors_taken_gives_high_socket_numbers(memcached: MemcachedProcess) -> None:
    with low_descriptors_taken():
        sock = memcached.connect()
        try:
            assert sock.fileno() >= HIGH_FD
        finally:
            sock.close()


@pytest.fixture(params=["poll", "without-poll"])
def poll_or_not(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run with select.poll, and as on a platform without it (the selectors fallback)."""
    if request.param == "without-poll":
        monkeypatch.delattr(select, "poll", raising=False)
    return str(request.param)


def test_is_clean_on_a_descriptor_above_1024(memcached: MemcachedProcess, poll_or_not: str) -> None:
    with low_descriptors_taken():
        client = Client(tcp(memcached), timeout=2.0)
        try:
            assert client.set("k", b"v") is True
            assert client.sock is not None and client.sock.fileno() >= 1024
            # idle and healthy: clean (select.select raised ValueError here -> judged dirty)
            assert client.is_clean() is True
            assert client.get("k") == b"v"
            assert client.is_clean() is True
            # unread bytes: a request sent behind the client's back, its reply never read
            client.sock.sendall(b"version\r\n")
            wait_until(lambda: not client.is_clean(), what="the unread VERSION reply")
            assert client.is_clean() is False
        finally:
            client.close()


def test_is_clean_sees_a_server_close_on_a_descriptor_above_1024(
    memcached: MemcachedProcess, poll_or_not: str
) -> None:
    with low_descriptors_taken():
        client = Client(tcp(memcached), timeout=2.0)
        try:
            assert client.version()
            assert client.sock is not None and client.sock.fileno() >= 1024
            assert client.is_clean() is True
            client.sock.sendall(b"quit\r\n")  # memcached closes its end: no bytes, just EOF
            wait_until(lambda: not client.is_clean(), what="the server's close")
            assert client.is_clean() is False
            # and the next command reconnects cleanly
        finally:
            client.close()
        assert client.get("k") is None


def test_pooled_client_reuses_a_connection_above_1024(memcached: MemcachedProcess) -> None:
    with low_descriptors_taken():
        pool = PooledClient(tcp(memcached), max_pool_size=1, timeout=2.0)
        try:
            assert pool.set("k", b"v") is True
            before = stat(memcached, "total_connections")
            for _ in range(5):
                time.sleep(0.08)  # idle long enough for the pool to check the connection
                assert pool.get("k") == b"v"
            # + 1: the stats request above; the pool itself opened nothing new
            assert stat(memcached, "total_connections") == before + 1
        finally:
            pool.close()


GEVENT_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    import json, sys, time
    sys.path[:0] = [sys.argv[2]]
    from integration.transport.test_high_descriptors import low_descriptors_taken
    from support.helpers import wait_until
    from pymc import Client, PooledClient
    address = tuple(json.loads(sys.argv[1]))
    out = {}
    with low_descriptors_taken():
        client = Client(address, timeout=2.0)
        client.set("k", b"v")
        out["fd"] = client.sock.fileno()
        out["idle"] = client.is_clean()
        client.sock.sendall(b"version\\r\\n")
        try:
            wait_until(lambda: not client.is_clean())
        except AssertionError:
            pass
        out["unread"] = client.is_clean()
        client.close()
        pool = PooledClient(address, max_pool_size=1, timeout=2.0)
        pool.get("k")
        for _ in range(3):
            time.sleep(0.08)  # idle long enough for the pool to check the connection
            pool.get("k")
        pool.close()
    print(json.dumps(out))
    """
)


@pytest.mark.timeout(60)
def test_is_clean_on_a_high_descriptor_under_gevent_patch_all(memcached: MemcachedProcess) -> None:
    pytest.importorskip("gevent")
    before = stat(memcached, "total_connections")
    proc = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT, json.dumps(list(tcp(memcached))), str(TESTS)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])},
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["fd"] >= 1024
    assert out["idle"] is True
    assert out["unread"] is False
    # the Client's connection, the pool's one connection, and the stats request: the pool
    # reused its connection across the idle gaps
    assert stat(memcached, "total_connections") == before + 3


# ------------------------------------------------------------------ (3) keyword arguments


# ------------------------------------------------------------------ (11) NullHandler


# ------------------------------------------------------------------ (19) key_prefix


# ------------------------------------------------------------------ (20) int subclasses


_counter = itertools.count()


def tag() -> str:
    return f"da{next(_counter)}-{time.monotonic_ns() % 10**9}"


@pytest.mark.timeout(60)
def test_descriptors_over_1024(memcached: MemcachedProcess) -> None:
    """The stray-bytes check, is_clean and the fan-out's poll work on descriptors of 1024 and
    up (select would fail there)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2100:
        pytest.skip("cannot raise RLIMIT_NOFILE")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2100), hard))
    dummies = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        key = tag()
        client = pymc.Client(tcp(memcached))
        assert client.set(key, b"v")
        assert client.sock is not None and client.sock.fileno() >= 1024
        assert client.is_clean()
        assert client.add(key, b"w") is False  # (the stray check polls this fd)
        pooled = pymc.PooledClient(tcp(memcached), max_pool_size=2)
        assert pooled.set(key, b"p") and pooled.get(key) == b"p"
        time.sleep(0.06)  # idle past CHECK_IDLE_AFTER: the pool looks at it
        assert pooled.get(key) == b"p"
        other = pymc.Client(tcp(memcached))
        hashed = pymc.HashClient([tcp(memcached), f"127.0.0.1:{memcached.port}"])
        assert hashed.set_many({f"{key}-{i}": b"h" for i in range(20)}) == []
        assert len(hashed.get_many([f"{key}-{i}" for i in range(20)])) == 20
        other.close()
        client.close()
    finally:
        for fd in dummies:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
