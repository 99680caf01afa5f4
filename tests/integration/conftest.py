"""Fixtures of the integration tests: real memcached servers, the fault proxy, twemproxy.

Session-scoped servers: ``memcached_server`` (plain, ``-I 1m``), ``memcached_nodes`` (4 plain),
``memcached_tls``, ``memcached_auth`` (``.username``/``.password``), ``memcached_unix``
(``.server`` is the socket path). Per test: ``memcached`` (the plain server, flushed, restarted if
a test killed it), ``new_memcached(*args, **kw)`` (a private server for kill/restart tests) and
``fault_proxy(address)`` (a started FaultProxy), ``twemproxy(backends)`` (a started real
twemproxy). All are stopped at teardown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, List, Sequence, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.nutcracker import NUTCRACKER, NutcrackerProcess, nutcracker_path
from support.servers import MemcachedProcess


def _serve(*args: str, **kw: Any) -> Iterator[MemcachedProcess]:
    server = MemcachedProcess(args, **kw)
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="session")
def memcached_server() -> Iterator[MemcachedProcess]:
    yield from _serve("-I", "1m")


@pytest.fixture(scope="session")
def memcached_nodes() -> Iterator[List[MemcachedProcess]]:
    nodes = [MemcachedProcess() for _ in range(4)]
    try:
        yield [node.start() for node in nodes]
    finally:
        for node in nodes:
            node.close()


@pytest.fixture(scope="session")
def memcached_tls() -> Iterator[MemcachedProcess]:
    yield from _serve(tls=True)


@pytest.fixture(scope="session")
def memcached_auth() -> Iterator[MemcachedProcess]:
    yield from _serve(auth=("pymc", "s3cret-pw"))


@pytest.fixture(scope="session")
def memcached_unix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MemcachedProcess]:
    path: Path = tmp_path_factory.mktemp("mcsock") / "memcached.sock"
    yield from _serve(unix_path=path)


@pytest.fixture
def memcached(memcached_server: MemcachedProcess) -> MemcachedProcess:
    """The session's plain server, running and empty."""
    if not memcached_server.is_running():
        memcached_server.start()
    memcached_server.flush_all()
    return memcached_server


@pytest.fixture
def new_memcached() -> Iterator[Callable[..., MemcachedProcess]]:
    """``new_memcached(*args, unix_path=..., tls=..., auth=...)``: a private started server."""
    servers: List[MemcachedProcess] = []

    def factory(*args: str, **kw: Any) -> MemcachedProcess:
        server = MemcachedProcess(args, **kw)
        servers.append(server)
        return server.start()

    yield factory
    for server in servers:
        server.close()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[Tuple[str, int]], FaultProxy]]:
    """``fault_proxy(server.address)``: a started FaultProxy in "pass" mode."""
    proxies: List[FaultProxy] = []

    def factory(upstream: Tuple[str, int]) -> FaultProxy:
        proxy = FaultProxy(upstream)
        proxies.append(proxy)
        return proxy.start()

    yield factory
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def twemproxy() -> Iterator[Callable[..., NutcrackerProcess]]:
    """``twemproxy(backends, **options)``: a started real twemproxy (Debian ``nutcracker``)
    over ``backends`` (``(host, port)`` pairs; :func:`support.nutcracker.down_address` gives
    one nobody listens on), with ``auto_eject_hosts: false``. A test that asks for it FAILS
    when nutcracker is not installed (``make test`` installs it), as the suite does without
    memcached; the other tests do not need it."""
    if nutcracker_path() is None:
        pytest.fail(
            f"{NUTCRACKER!r} not found (on PATH or in /usr/sbin): the twemproxy tests need a "
            "real twemproxy (`make test` installs it with apt-get: Debian/Ubuntu package "
            "`nutcracker`; or set NUTCRACKER_BIN)",
            pytrace=False,
        )
    proxies: List[NutcrackerProcess] = []

    def factory(backends: Sequence[Tuple[str, int]], **options: Any) -> NutcrackerProcess:
        proxy = NutcrackerProcess(backends, **options)
        proxies.append(proxy)
        return proxy.start()

    yield factory
    for proxy in proxies:
        proxy.close()


@pytest.fixture
def nodes(memcached_nodes: List[MemcachedProcess]) -> Iterator[List[MemcachedProcess]]:
    """The session's 4 plain servers, running (not flushed: tests use keys of their own)."""
    for node in memcached_nodes:
        if not node.is_running():
            node.start()
    yield memcached_nodes
