"""The test bed itself, exercised with raw sockets only (no pymc client)."""

from __future__ import annotations

import socket
import time
from typing import Callable, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.helpers import tcp
from support.servers import MemcachedProcess, MemcachedStartError, request

ProxyFactory = Callable[[Tuple[str, int]], FaultProxy]


def set_get(sock: socket.socket, key: bytes = b"k", value: bytes = b"hello") -> bytes:
    assert request(sock, b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value), b"\r\n") == (
        b"STORED\r\n"
    )
    return request(sock, b"get %s\r\n" % key, b"END\r\n")


def connect(address: Tuple[str, int], timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(address, timeout=timeout)


# -- servers ------------------------------------------------------------------------------------


def test_plain_round_trip_stats_and_flush(memcached: MemcachedProcess) -> None:
    assert memcached.server == f"127.0.0.1:{memcached.port}"
    with connect(tcp(memcached)) as sock:
        assert set_get(sock) == b"VALUE k 0 5\r\nhello\r\nEND\r\n"
        big = b"x" * 900_000  # -I 1m on the session server
        assert set_get(sock, b"big", big).startswith(b"VALUE big 0 900000\r\n")
        stats = memcached.stats()
        assert int(stats["pid"]) == memcached.proc.pid  # type: ignore[union-attr]
        assert int(stats["curr_items"]) >= 2
        assert memcached.stats("settings")["item_size_max"] == str(1024 * 1024)
        memcached.flush_all()
        assert request(sock, b"get k\r\n", b"END\r\n") == b"END\r\n"


def test_session_server_may_be_killed(memcached: MemcachedProcess) -> None:
    memcached.kill()  # the next test's ``memcached`` fixture brings it back on the same port
    assert not memcached.is_running()


def test_memcached_fixture_starts_empty(memcached: MemcachedProcess) -> None:
    assert memcached.is_running()
    with connect(tcp(memcached)) as sock:
        assert request(sock, b"get k big\r\n", b"END\r\n") == b"END\r\n"


def test_nodes_are_distinct(memcached_nodes: list[MemcachedProcess]) -> None:
    assert len({node.port for node in memcached_nodes}) == 4
    for i, node in enumerate(memcached_nodes):
        with connect(tcp(node)) as sock:
            assert set_get(sock, b"node", b"%d" % i) == b"VALUE node 0 1\r\n%d\r\nEND\r\n" % i
        assert node.stats("settings")["num_threads"] == "2"


def test_unix_socket_round_trip(memcached_unix: MemcachedProcess) -> None:
    assert memcached_unix.server == memcached_unix.address == memcached_unix.unix_path
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(2.0)
        sock.connect(memcached_unix.server)
        assert set_get(sock) == b"VALUE k 0 5\r\nhello\r\nEND\r\n"
    assert memcached_unix.stats()["curr_items"] == "1"


@pytest.mark.parametrize("hostname", ["127.0.0.1", "localhost"])
def test_tls_round_trip(memcached_tls: MemcachedProcess, hostname: str) -> None:
    ctx = memcached_tls.client_ssl_context()
    with ctx.wrap_socket(connect(tcp(memcached_tls)), server_hostname=hostname) as sock:
        assert sock.version() is not None
        assert set_get(sock) == b"VALUE k 0 5\r\nhello\r\nEND\r\n"
    assert "pid" in memcached_tls.stats()


def test_auth_required(memcached_auth: MemcachedProcess) -> None:
    user, password = memcached_auth.username, memcached_auth.password
    assert user and password
    with connect(tcp(memcached_auth)) as sock:
        assert request(sock, b"get k\r\n", b"\r\n").startswith(b"CLIENT_ERROR")
    with connect(tcp(memcached_auth)) as sock:
        bad = f"{user} wrong".encode()
        reply = request(sock, b"set a 0 0 %d\r\n%s\r\n" % (len(bad), bad), b"\r\n")
        assert reply.startswith(b"CLIENT_ERROR")
    with connect(tcp(memcached_auth)) as sock:
        cred = f"{user} {password}".encode()
        reply = request(sock, b"set a 0 0 %d\r\n%s\r\n" % (len(cred), cred), b"\r\n")
        assert reply == b"STORED\r\n"
        assert set_get(sock) == b"VALUE k 0 5\r\nhello\r\nEND\r\n"
    memcached_auth.flush_all()  # stats()/flush_all() authenticate themselves
    assert "pid" in memcached_auth.stats()


def test_restart_and_kill_keep_the_port(new_memcached: Callable[..., MemcachedProcess]) -> None:
    server = new_memcached("-m", "16")
    port, pid = server.port, server.proc.pid  # type: ignore[union-attr]
    with connect(tcp(server)) as sock:
        set_get(sock)  # leaves a connection in TIME_WAIT or CLOSE_WAIT for the restart
        server.restart()
    assert server.is_running() and server.port == port
    assert server.proc.pid != pid  # type: ignore[union-attr]
    assert server.stats("settings")["maxbytes"] == str(16 * 1024 * 1024)
    server.kill()
    assert not server.is_running()
    with pytest.raises(OSError):
        connect(tcp(server), timeout=0.5)
    server.start()
    assert server.port == port and server.stats()["curr_items"] == "0"


def test_unix_server_restarts_after_kill(
    new_memcached: Callable[..., MemcachedProcess], tmp_path: object
) -> None:
    server = new_memcached(unix_path=f"{tmp_path}/mc.sock")
    server.kill()
    server.start()
    assert server.stats()["curr_connections"]


def test_context_manager_stops_the_process() -> None:
    with MemcachedProcess() as server:
        proc = server.proc
        assert server.is_running()
    assert proc is not None and proc.poll() is not None


# -- fault proxy ---------------------------------------------------------------------------------


@pytest.fixture
def proxy(memcached: MemcachedProcess, fault_proxy: ProxyFactory) -> FaultProxy:
    return fault_proxy(tcp(memcached))


def test_proxy_pass_and_mode_change_on_live_connection(proxy: FaultProxy) -> None:
    assert proxy.server == f"127.0.0.1:{proxy.address[1]}"
    with connect(proxy.address) as sock:
        assert set_get(sock) == b"VALUE k 0 5\r\nhello\r\nEND\r\n"
        big = bytes(range(256)) * 2000
        assert set_get(sock, b"big", big) == b"VALUE big 0 512000\r\n" + big + b"\r\nEND\r\n"
        proxy.set_mode("delay", seconds=0.3)
        start = time.monotonic()
        assert request(sock, b"get k\r\n", b"END\r\n") == b"VALUE k 0 5\r\nhello\r\nEND\r\n"
        assert time.monotonic() - start >= 0.3
        proxy.set_mode("pass")
        start = time.monotonic()
        request(sock, b"version\r\n", b"\r\n")
        assert time.monotonic() - start < 0.2
    assert proxy.accepted == 1


def test_proxy_delay_does_not_block_other_connections(proxy: FaultProxy) -> None:
    with connect(proxy.address) as slow, connect(proxy.address) as fast:
        proxy.set_mode("delay", seconds=0.5)
        slow.sendall(b"version\r\n")
        time.sleep(0.05)
        proxy.set_mode("pass")
        start = time.monotonic()
        request(fast, b"version\r\n", b"\r\n")
        assert time.monotonic() - start < 0.3
        assert request(slow, b"", b"\r\n").startswith(b"VERSION")
    assert proxy.accepted == 2


def test_proxy_stall(proxy: FaultProxy, memcached: MemcachedProcess) -> None:
    sets = int(memcached.stats()["cmd_set"])
    with connect(proxy.address, timeout=0.3) as sock:
        proxy.set_mode("stall")
        with pytest.raises(socket.timeout):
            set_get(sock, b"stalled")
    assert int(memcached.stats()["cmd_set"]) == sets + 1  # the server did execute it


def test_proxy_reset(proxy: FaultProxy) -> None:
    with connect(proxy.address) as sock:
        set_get(sock)
        proxy.set_mode("reset")
        with pytest.raises(ConnectionResetError):
            request(sock, b"get k\r\n", b"END\r\n")


def test_proxy_close(proxy: FaultProxy) -> None:
    with connect(proxy.address) as sock:
        proxy.set_mode("close")
        sock.sendall(b"get k\r\n")
        assert sock.recv(100) == b""  # a clean EOF, not a reset


def test_proxy_garbage(proxy: FaultProxy) -> None:
    with connect(proxy.address) as sock:
        proxy.set_mode("garbage", data=b"\x01\x02 nonsense\r\n")
        sock.sendall(b"set g 0 0 1\r\nx\r\n")
        assert sock.recv(100) == b"\x01\x02 nonsense\r\n"
        proxy.set_mode("pass")
        assert request(sock, b"get g\r\n", b"END\r\n") == b"VALUE g 0 1\r\nx\r\nEND\r\n"


def test_proxy_close_after(proxy: FaultProxy) -> None:
    with connect(proxy.address) as sock:
        set_get(sock, b"k", b"0123456789")
        proxy.set_mode("close_after", nbytes=14)
        sock.sendall(b"get k\r\n")
        data = b""
        while chunk := sock.recv(100):
            data += chunk
        assert data == b"VALUE k 0 10\r\n"


def test_proxy_close_all_and_stop(memcached: MemcachedProcess) -> None:
    proxy = FaultProxy(tcp(memcached)).start()
    try:
        first, second = connect(proxy.address), connect(proxy.address)
        with first, second:
            set_get(first)
            set_get(second)
            proxy.close_all()
            assert first.recv(10) == b"" and second.recv(10) == b""
            assert proxy.connections == 0
        with connect(proxy.address) as sock:
            set_get(sock)
            start = time.monotonic()
            proxy.stop()
            assert time.monotonic() - start < 1.0
            assert sock.recv(10) == b""
        assert proxy.accepted == 3
    finally:
        proxy.stop()
    with pytest.raises(OSError):
        connect(proxy.address, timeout=0.5)


def test_proxy_to_dead_upstream_closes_client(
    new_memcached: Callable[..., MemcachedProcess], fault_proxy: ProxyFactory
) -> None:
    server = new_memcached()
    proxy = fault_proxy(tcp(server))
    server.kill()
    with connect(proxy.address) as sock:
        assert sock.recv(10) == b""


def test_unknown_mode_is_rejected(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError):
        proxy.set_mode("drop_replies")


@pytest.mark.timeout(30)
def test_a_server_never_takes_another_processes_server_for_its_own() -> None:
    """Starting a server on a port where another process's memcached answers: the new one
    cannot bind, but its readiness probe connected to the other one and called it started,
    so two pytest-xdist workers could share a server, each flushing and killing the other's
    (a get that timed out in the Django suite under xdist had no other explanation)."""
    first = MemcachedProcess().start()
    second = MemcachedProcess()
    second.port = first.port  # as a restart on its old port, taken meanwhile
    try:
        with pytest.raises(MemcachedStartError):
            second.start()
        assert not second.is_running()
        assert first.is_running()
    finally:
        second.close()
        first.close()
