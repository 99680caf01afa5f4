"""pymc.testing.ConfigEndpoint, the emulated ElastiCache configuration endpoint, on its own:
raw sockets and the protocol Reader (and one pymc.Client); memcached only behind an emulated
node (``upstream=``)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable, List, Tuple

import pytest
from support.servers import MemcachedProcess

import pymc
from pymc.exceptions import MemcacheProtocolError, MemcacheUnknownCommandError
from pymc.protocol import ClusterConfig, ClusterNode, Reader
from pymc.testing import ConfigEndpoint, config_reply

CONFIG_GET = b"config get cluster\r\n"
NODES = [("node-1.example", "10.0.0.1", 11211), ("2nd.example", "", 11212)]


def connect(endpoint: ConfigEndpoint, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(endpoint.address, timeout=timeout)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    buf = b""
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {buf!r}")
        buf += chunk
    return buf


def recv_until(sock: socket.socket, terminator: bytes) -> bytes:
    buf = b""
    while not buf.endswith(terminator):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {buf!r}")
        buf += chunk
    return buf


def ask(sock: socket.socket, request: bytes = CONFIG_GET) -> bytes:
    sock.sendall(request)
    reply = recv_until(sock, b"\r\n")
    if reply.startswith(b"CONFIG"):
        reply += recv_until(sock, b"END\r\n") if not reply.endswith(b"END\r\n") else b""
    return reply


def parse(data: bytes) -> object:
    reader = Reader()
    reader.feed(data)
    return reader.next_reply()


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


# -- the reply ----------------------------------------------------------------------------------


def test_config_reply_is_exact_and_parses() -> None:
    with ConfigEndpoint(NODES, version=7) as endpoint, connect(endpoint) as sock:
        reply = ask(sock)
        body = b"7\nnode-1.example|10.0.0.1|11211 2nd.example||11212\n"
        assert reply == b"CONFIG cluster 0 %d\r\n%s\r\nEND\r\n" % (len(body), body)
        assert reply == config_reply(7, NODES)
        assert parse(reply) == ClusterConfig(
            7, (ClusterNode(*NODES[0]), ClusterNode("2nd.example", "", 11212))
        )
        assert endpoint.requests == 1


def test_host_port_pairs_use_the_host_as_hostname_and_ip() -> None:
    # (Hosts that are IP literals: pymc refuses a config whose ip field holds a name.)
    with ConfigEndpoint([("127.0.0.1", 1), ("::1", 2)]) as endpoint:
        assert endpoint.nodes == (
            ClusterNode("127.0.0.1", "127.0.0.1", 1),
            ClusterNode("::1", "::1", 2),
        )
        with connect(endpoint) as sock:
            config = parse(ask(sock))
        assert isinstance(config, ClusterConfig)
        assert config.version == 1 and config.nodes == endpoint.nodes


def test_version_quit_and_other_commands() -> None:
    with ConfigEndpoint(NODES) as endpoint, connect(endpoint) as sock:
        assert ask(sock, b"version\r\n") == b"VERSION 1.6.18-emulator\r\n"
        for line in (b"get foo", b"", b"config get", b"config get other", b"stats", b"CONFIG"):
            assert ask(sock, line + b"\r\n") == b"ERROR\r\n", line
        assert ask(sock, b"version\n") == b"VERSION 1.6.18-emulator\r\n"  # bare LF, as memcached
        sock.sendall(b"quit\r\n")
        assert closed_by_peer(sock)
        assert endpoint.requests == 0


def test_pipelined_requests_are_answered_in_order() -> None:
    with ConfigEndpoint(NODES, version=3) as endpoint, connect(endpoint) as sock:
        config = config_reply(3, NODES)
        expected = config + b"VERSION 1.6.18-emulator\r\n" + b"ERROR\r\n" + config
        sock.sendall(CONFIG_GET + b"version\r\nbogus\r\n" + CONFIG_GET + b"quit\r\nversion\r\n")
        assert recv_exactly(sock, len(expected)) == expected
        assert closed_by_peer(sock)  # nothing after quit is answered
        assert endpoint.requests == 2


def test_requests_split_byte_by_byte() -> None:
    with ConfigEndpoint(NODES) as endpoint, connect(endpoint) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in CONFIG_GET + b"version\r\n":
            sock.sendall(bytes([byte]))
            time.sleep(0.001)
        expected = config_reply(1, NODES) + b"VERSION 1.6.18-emulator\r\n"
        assert recv_exactly(sock, len(expected)) == expected


def test_a_line_that_never_ends_is_refused() -> None:
    with ConfigEndpoint(NODES) as endpoint, connect(endpoint) as sock:
        sock.sendall(b"x" * 20000)
        assert recv_until(sock, b"\r\n") == b"CLIENT_ERROR line too long\r\n"
        assert closed_by_peer(sock)


def test_many_clients_at_once() -> None:
    errors: List[BaseException] = []
    with ConfigEndpoint(NODES) as endpoint:

        def worker() -> None:
            try:
                with connect(endpoint) as sock:
                    for _ in range(20):
                        assert ask(sock) == config_reply(1, NODES)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert not errors
        assert endpoint.requests == 16 * 20


def test_pymc_client_reads_it() -> None:
    with ConfigEndpoint([("0a.example", "", 11211)], version=5) as endpoint:
        client = pymc.Client(endpoint.address, connect_timeout=1, timeout=1)
        try:
            assert client.cluster_config() == ClusterConfig(
                5, (ClusterNode("0a.example", "", 11211),)
            )
            assert client.version() == b"1.6.18-emulator"
            endpoint.set_mode("error")
            with pytest.raises(MemcacheUnknownCommandError):
                client.cluster_config()
        finally:
            client.close()


# -- changing the cluster -----------------------------------------------------------------------


def test_set_nodes_bumps_the_version_unless_given() -> None:
    endpoint = ConfigEndpoint(NODES, version=4)
    with endpoint, connect(endpoint) as sock:
        assert endpoint.version == 4
        assert endpoint.set_nodes([("127.0.0.1", 1)]) == 5
        assert endpoint.version == 5
        assert parse(ask(sock)) == ClusterConfig(5, (ClusterNode("127.0.0.1", "127.0.0.1", 1),))
        endpoint.set_nodes(NODES, version=2)  # going back is allowed: clients must cope
        assert parse(ask(sock)) == ClusterConfig(2, tuple(ClusterNode(*n) for n in NODES))
        assert endpoint.set_nodes(endpoint.nodes) == 3


@pytest.mark.parametrize(
    "nodes",
    [
        [("host", 0)],
        [("host", 65536)],
        [("host", "11211")],
        [("ho st", 1)],
        [("a|b", 1)],
        [("", "1.2.3.4", 1)],
        [("host", "1.2.3.4 ", 1)],
        [("host",)],
        [("h", "i", 1, 2)],
        ["host:11211"],
        "host:11211",
    ],
)
def test_bad_nodes_are_refused(nodes: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        ConfigEndpoint(nodes)  # type: ignore[arg-type]
    with ConfigEndpoint() as endpoint:
        with pytest.raises((TypeError, ValueError)):
            endpoint.set_nodes(nodes)  # type: ignore[arg-type]
        assert endpoint.version == 1


def test_bad_version_and_mode_are_refused() -> None:
    with pytest.raises(ValueError):
        ConfigEndpoint(version=-1)
    with ConfigEndpoint() as endpoint:
        with pytest.raises(ValueError):
            endpoint.set_nodes(NODES, version=True)
        with pytest.raises(ValueError):
            endpoint.set_mode("broken")
        assert endpoint.mode == "normal"


# -- modes --------------------------------------------------------------------------------------


def test_error_mode() -> None:
    with ConfigEndpoint(NODES) as endpoint, connect(endpoint) as sock:
        endpoint.set_mode("error")
        assert ask(sock) == b"ERROR\r\n"
        assert ask(sock, b"version\r\n") == b"VERSION 1.6.18-emulator\r\n"
        endpoint.set_mode("normal")
        assert ask(sock) == config_reply(1, NODES)
        assert endpoint.requests == 2


def test_garbage_mode_is_never_a_reply() -> None:
    with ConfigEndpoint(NODES) as endpoint, connect(endpoint) as sock:
        endpoint.set_mode("garbage")
        for _ in range(20):
            data = ask(sock)
            assert data.startswith(b"\x00\xff")
            with pytest.raises(MemcacheProtocolError):
                parse(data)


def test_malformed_mode_alternates_short_length_and_missing_port() -> None:
    with ConfigEndpoint(NODES) as endpoint, connect(endpoint) as sock:
        endpoint.set_mode("malformed")
        seen = set()
        for _ in range(4):
            data = ask(sock)
            header, _, rest = data.partition(b"\r\n")
            body = rest[: -len(b"\r\nEND\r\n")]
            assert data.endswith(b"\r\nEND\r\n")
            if int(header.split()[3]) == len(body) - 1:
                seen.add("length")
            else:
                assert int(header.split()[3]) == len(body)
                assert b"node-1.example|10.0.0.1| " in body
                seen.add("port")
            with pytest.raises(MemcacheProtocolError):
                parse(data)
        assert seen == {"length", "port"}


def test_stall_mode_answers_nothing_and_counts_requests() -> None:
    with ConfigEndpoint(NODES) as endpoint, connect(endpoint, timeout=0.3) as sock:
        endpoint.set_mode("stall")
        sock.sendall(CONFIG_GET + b"version\r\n")
        with pytest.raises(socket.timeout):
            sock.recv(1)
        assert endpoint.requests == 1
        endpoint.set_mode("normal")  # what came in during the stall stays unanswered
        sock.settimeout(2)
        assert ask(sock) == config_reply(1, NODES)


def test_down_closes_the_port_and_normal_reopens_the_same_one() -> None:
    with ConfigEndpoint(NODES) as endpoint:
        address = endpoint.address
        sock = connect(endpoint)
        try:
            ask(sock)
            endpoint.set_mode("down")
            assert closed_by_peer(sock)
        finally:
            sock.close()
        assert endpoint.connections == 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=1).close()
        endpoint.set_mode("down")  # twice is fine
        endpoint.set_mode("normal")
        assert endpoint.address == address
        with connect(endpoint) as sock:
            assert ask(sock) == config_reply(1, NODES)
        endpoint.set_mode("down")
        endpoint.set_mode("error")  # any mode but down listens
        with connect(endpoint) as sock:
            assert ask(sock) == b"ERROR\r\n"


def test_close_connections_keeps_listening() -> None:
    with ConfigEndpoint(NODES) as endpoint:
        with connect(endpoint) as sock:
            ask(sock)
            endpoint.close_connections()
            assert closed_by_peer(sock)
        with connect(endpoint) as sock:
            assert ask(sock) == config_reply(1, NODES)


# -- life cycle ---------------------------------------------------------------------------------


def live_threads(endpoint: ConfigEndpoint) -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith(f":{endpoint.address[1]}")]


def test_stop_ends_the_thread_and_frees_the_port() -> None:
    endpoint = ConfigEndpoint(NODES).start()
    assert endpoint.start() is endpoint  # idempotent
    assert live_threads(endpoint) and all(t.daemon for t in live_threads(endpoint))
    sock = connect(endpoint)
    try:
        ask(sock)
        started = time.monotonic()
        endpoint.stop()
        assert time.monotonic() - started < 1.0
        assert not live_threads(endpoint)
        assert closed_by_peer(sock)
    finally:
        sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(endpoint.address, timeout=1).close()
    endpoint.stop()  # twice is fine
    endpoint.set_mode("normal")  # so is changing a stopped endpoint; it stays stopped
    with pytest.raises(RuntimeError):
        endpoint.start()


def test_modes_before_start() -> None:
    endpoint = ConfigEndpoint(NODES)
    try:
        endpoint.set_mode("down")
        endpoint.set_mode("normal")
        endpoint.start()
        with connect(endpoint) as sock:
            assert ask(sock) == config_reply(1, NODES)
    finally:
        endpoint.stop()


def test_repr_and_server() -> None:
    with ConfigEndpoint(NODES, version=9) as endpoint:
        host, port = endpoint.address
        assert endpoint.server == f"{host}:{port}"
        assert repr(endpoint) == (
            f"<ConfigEndpoint 127.0.0.1:{port} mode=normal version=9 nodes=2 requests=0>"
        )


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        endpoint = ConfigEndpoint(NODES, host="::1")
    except OSError:
        pytest.skip("no IPv6 loopback")
    with endpoint:
        assert endpoint.server == f"[::1]:{endpoint.address[1]}"
        with socket.create_connection(endpoint.address, timeout=2) as sock:
            assert ask(sock) == config_reply(1, NODES)


# -- the legacy command and the newer modes ----------------------------------------------------

LEGACY_GET = b"get AmazonElastiCache:cluster\r\n"
TOO_MANY = b"ERROR Too many open connections\r\n"


def ask_legacy(sock: socket.socket) -> bytes:
    sock.sendall(LEGACY_GET)
    reply = recv_until(sock, b"\r\n")
    if reply.startswith(b"VALUE"):
        reply += recv_until(sock, b"END\r\n") if not reply.endswith(b"END\r\n") else b""
    return reply


def test_legacy_get_is_answered_with_the_same_payload() -> None:
    with ConfigEndpoint(NODES, version=7) as endpoint, connect(endpoint) as sock:
        body = b"7\nnode-1.example|10.0.0.1|11211 2nd.example||11212\n"
        expected = b"VALUE AmazonElastiCache:cluster 0 %d\r\n%s\r\nEND\r\n" % (len(body), body)
        assert ask_legacy(sock) == expected
        assert config_reply(7, NODES, legacy=True) == expected
        assert ask(sock) == config_reply(7, NODES)
        assert ask(sock, b"gets AmazonElastiCache:cluster\r\n") == b"ERROR\r\n"  # only "get"
        assert endpoint.requests == 2  # both kinds count, nothing else


def test_legacy_mode_refuses_config_get_but_answers_the_legacy_get() -> None:
    with ConfigEndpoint(NODES, version=3) as endpoint, connect(endpoint) as sock:
        endpoint.set_mode("legacy")
        assert ask(sock) == b"ERROR\r\n"
        assert ask_legacy(sock) == config_reply(3, NODES, legacy=True)
        assert endpoint.requests == 2


def test_plain_mode_is_a_plain_memcached() -> None:
    with ConfigEndpoint(NODES) as endpoint, connect(endpoint) as sock:
        endpoint.set_mode("plain")
        assert ask(sock) == b"ERROR\r\n"
        assert ask_legacy(sock) == b"END\r\n"
        assert ask(sock, b"version\r\n") == b"VERSION 1.6.18-emulator\r\n"
        assert endpoint.requests == 2


def test_error_mode_refuses_both_config_requests() -> None:
    with ConfigEndpoint(NODES) as endpoint, connect(endpoint) as sock:
        endpoint.set_mode("error")
        assert ask_legacy(sock) == b"ERROR\r\n"


def test_other_broken_modes_break_the_legacy_get_too() -> None:
    with ConfigEndpoint(NODES) as endpoint, connect(endpoint) as sock:
        endpoint.set_mode("garbage")
        sock.sendall(LEGACY_GET)
        assert recv_until(sock, b"\r\n").startswith(b"\x00\xff")
        endpoint.set_mode("malformed")
        for _ in range(2):
            data = ask_legacy(sock)
            assert data.startswith(b"VALUE AmazonElastiCache:cluster 0 ")
            assert data.endswith(b"\r\nEND\r\n")
            assert data != config_reply(1, NODES, legacy=True)


def test_too_many_mode_answers_the_error_and_closes() -> None:
    with ConfigEndpoint(NODES) as endpoint:
        with connect(endpoint) as old:
            assert ask(old) == config_reply(1, NODES)
            endpoint.set_mode("too_many")
            old.sendall(CONFIG_GET + b"version\r\n")
            assert recv_exactly(old, len(TOO_MANY)) == TOO_MANY
            assert closed_by_peer(old)
        with connect(endpoint) as new:  # a new connection is told at once, like memcached
            assert recv_exactly(new, len(TOO_MANY)) == TOO_MANY
            assert closed_by_peer(new)
        with connect(endpoint) as new:  # a request sent before reading still sees the error
            new.sendall(b"version\r\n" * 100)
            assert recv_exactly(new, len(TOO_MANY)) == TOO_MANY
            assert closed_by_peer(new)
        deadline = time.monotonic() + 5
        while endpoint.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert endpoint.connections == 0
        endpoint.set_mode("normal")
        with connect(endpoint) as sock:
            assert ask(sock) == config_reply(1, NODES)


def test_lf_mode_is_exact_odd_and_still_a_valid_config() -> None:
    with ConfigEndpoint(NODES, version=4) as endpoint, connect(endpoint) as sock:
        endpoint.set_mode("lf")
        body = b"4 \nnode-1.example|10.0.0.1|11211  2nd.example||11212 \n"
        assert ask(sock) == b"CONFIG cluster 0 %d\r\n%s\r\nEND\r\n" % (len(body), body)
        assert ask_legacy(sock) == (
            b"VALUE AmazonElastiCache:cluster 0 %d\r\n%s\r\nEND\r\n" % (len(body), body)
        )
        assert b"\r" not in body
        lines = body.split(b"\n")
        assert int(lines[0]) == 4
        assert [e.split(b"|") for e in lines[1].split()] == [
            [b"node-1.example", b"10.0.0.1", b"11211"],
            [b"2nd.example", b"", b"11212"],
        ]


@pytest.mark.timeout(20)
def test_slowloris_drips_the_reply() -> None:
    drip = 0.02
    with ConfigEndpoint(NODES, drip_seconds=drip) as endpoint, connect(endpoint) as sock:
        assert endpoint.drip_seconds == drip
        endpoint.set_mode("slowloris")
        expected = config_reply(1, NODES)
        started = time.monotonic()
        sock.sendall(CONFIG_GET)
        assert sock.recv(65536) == expected[:1]
        first = time.monotonic() - started
        assert first < 1.0  # at once, not after the drip
        rest = recv_exactly(sock, len(expected) - 1)
        elapsed = time.monotonic() - started
        assert expected[:1] + rest == expected
        assert elapsed >= (len(expected) - 1) * drip * 0.9
        assert elapsed < (len(expected) - 1) * drip * 3 + 1
        # while one connection drips, another is served at once
        endpoint.set_mode("normal")
        endpoint.drip_seconds = 0.5
        with pytest.raises(ValueError):
            endpoint.drip_seconds = 0
        endpoint.set_mode("slowloris")
        sock.sendall(CONFIG_GET)
        assert sock.recv(65536) == expected[:1]  # the request was read in slowloris mode
        endpoint.set_mode("normal")
        with connect(endpoint) as other:
            started = time.monotonic()
            assert ask(other) == expected
            assert time.monotonic() - started < 2.0  # dripping it would take 30 s
        assert sock.recv(65536) == expected[1:2]  # and the first one still drips


@pytest.mark.timeout(30)
def test_huge_streams_without_buffering_and_stays_responsive() -> None:
    with ConfigEndpoint(NODES) as endpoint:
        endpoint.set_mode("huge")
        with connect(endpoint) as sock:
            sock.sendall(CONFIG_GET)
            header = b"CONFIG cluster 0 1099511627776\r\n"
            assert recv_exactly(sock, len(header)) == header
            got = 0
            peak = 0
            for reads in range(100_000):
                if got >= 10 * 1024 * 1024:
                    break
                chunk = sock.recv(1 << 20)
                assert chunk and chunk.strip(b"x") == b""
                got += len(chunk)
                if reads % 8 == 0:
                    peak = max(peak, endpoint.buffered)
            assert got >= 10 * 1024 * 1024
            time.sleep(0.3)  # the client stops reading: the emulator does not pile up filler
            assert endpoint.buffered <= 256 * 1024
            assert peak <= 256 * 1024
            with connect(endpoint) as other:  # still serving while a client is flooded
                other.sendall(LEGACY_GET)
                header = b"VALUE AmazonElastiCache:cluster 0 1099511627776\r\nxxx"
                assert recv_exactly(other, len(header)) == header
        endpoint.set_mode("normal")
        with connect(endpoint) as sock:
            assert ask(sock) == config_reply(1, NODES)
        deadline = time.monotonic() + 5
        while endpoint.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert endpoint.connections == 0 and endpoint.buffered == 0


def test_set_nodes_with_an_older_version_and_ipv6_ips() -> None:
    nodes = [("node1", "::1", 11211), ("node2", "fe80::1", 11212)]
    with ConfigEndpoint(NODES, version=10) as endpoint, connect(endpoint) as sock:
        assert endpoint.set_nodes(nodes, version=3) == 3
        assert endpoint.version == 3
        body = b"3\nnode1|::1|11211 node2|fe80::1|11212\n"
        assert ask(sock) == b"CONFIG cluster 0 %d\r\n%s\r\nEND\r\n" % (len(body), body)
        assert parse(ask(sock)) == ClusterConfig(3, tuple(ClusterNode(*n) for n in nodes))
        assert endpoint.set_nodes([("::1", 11213)], version=0) == 0
        assert endpoint.nodes == (ClusterNode("::1", "::1", 11213),)


# -- an emulated node: upstream= ----------------------------------------------------------------

UNIQUE = iter(range(1_000_000))


def key() -> bytes:
    return b"ecemu-%d-%d" % (time.monotonic_ns(), next(UNIQUE))


def tcp(server: MemcachedProcess) -> Tuple[str, int]:
    address = server.address
    assert isinstance(address, tuple)
    return address


def direct_get(server: MemcachedProcess, k: bytes) -> bytes:
    with socket.create_connection(tcp(server), timeout=2) as sock:
        sock.sendall(b"get " + k + b"\r\n")
        return recv_until(sock, b"END\r\n")


def node(server: MemcachedProcess, nodes: object = NODES, **kw: object) -> ConfigEndpoint:
    return ConfigEndpoint(nodes, upstream=tcp(server), **kw)  # type: ignore[arg-type]


def test_a_node_relays_commands_to_memcached(memcached: MemcachedProcess) -> None:
    k = key()
    with node(memcached) as endpoint, connect(endpoint) as sock:
        assert endpoint.upstream == memcached.address
        assert ask(sock, b"set %s 5 0 5\r\nhello\r\n" % k) == b"STORED\r\n"
        assert direct_get(memcached, k) == b"VALUE %s 5 5\r\nhello\r\nEND\r\n" % k
        assert ask(sock) == config_reply(1, NODES)  # the same connection
        sock.sendall(b"get %s\r\n" % k)
        assert recv_until(sock, b"END\r\n") == b"VALUE %s 5 5\r\nhello\r\nEND\r\n" % k
        assert ask(sock, b"version\r\n").startswith(b"VERSION 1.")  # memcached's own
        assert ask(sock, b"version\r\n") != b"VERSION 1.6.18-emulator\r\n"
        assert ask(sock, b"bogus\r\n") == b"ERROR\r\n"
        assert endpoint.requests == 1


def test_a_node_keeps_pipelined_replies_in_order(memcached: MemcachedProcess) -> None:
    k, k2 = key(), key()
    tricky = b"config get cluster\r\nMN\r\nEND\r\n"  # a value that looks like replies
    with node(memcached, version=2) as endpoint, connect(endpoint) as sock:
        config = config_reply(2, NODES)
        legacy = config_reply(2, NODES, legacy=True)
        request = (
            b"set %s 0 0 %d\r\n%s\r\n" % (k, len(tricky), tricky)
            + CONFIG_GET
            + b"get %s %s\r\n" % (k, k2)
            + LEGACY_GET
            + b"mn\r\n"
            + b"ms %s 2 T0\r\nhi\r\n" % k2
            + CONFIG_GET
            + b"mg %s v\r\n" % k
            + b"set %s 0 0 1 noreply\r\nx\r\n" % k2
            + CONFIG_GET
            + b"mg %s v\r\n" % k2
        )
        expected = (
            b"STORED\r\n"
            + config
            + b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (k, len(tricky), tricky)
            + legacy
            + b"MN\r\n"
            + b"HD\r\n"
            + config
            + b"VA %d\r\n%s\r\n" % (len(tricky), tricky)
            + config
            + b"VA 1\r\nx\r\n"
        )
        sock.sendall(request)
        assert recv_exactly(sock, len(expected)) == expected
        sock.sendall(b"mn\r\n")
        assert recv_exactly(sock, 4) == b"MN\r\n"  # nothing else came
        assert endpoint.requests == 4


@pytest.mark.timeout(30)
def test_a_node_keeps_order_under_many_pipelined_requests(memcached: MemcachedProcess) -> None:
    k = key()
    with node(memcached) as endpoint, connect(endpoint, timeout=10) as sock:
        assert ask(sock, b"set %s 0 0 3\r\nabc\r\n" % k) == b"STORED\r\n"
        one = b"get %s\r\n" % k + CONFIG_GET + b"incr nope 1\r\n" + LEGACY_GET
        reply = (
            b"VALUE %s 0 3\r\nabc\r\nEND\r\n" % k
            + config_reply(1, NODES)
            + b"NOT_FOUND\r\n"
            + config_reply(1, NODES, legacy=True)
        )
        errors: List[BaseException] = []

        def send() -> None:
            try:
                sock.sendall(one * 500)
            except BaseException as exc:
                errors.append(exc)

        sender = threading.Thread(target=send)
        sender.start()
        got = recv_exactly(sock, len(reply) * 500)
        sender.join(10)
        assert not errors
        assert got == reply * 500
        assert endpoint.requests == 1000


def test_a_node_relays_long_lines_and_the_binary_protocol(memcached: MemcachedProcess) -> None:
    keys = [key() + b"-" + b"k" * 100 for _ in range(200)]  # a get line of some 25 KB
    with node(memcached) as endpoint:
        with connect(endpoint) as sock:
            assert ask(sock, b"set %s 0 0 1\r\nv\r\n" % keys[-1]) == b"STORED\r\n"
            sock.sendall(b"get " + b" ".join(keys) + b"\r\n" + CONFIG_GET)
            expected = b"VALUE %s 0 1\r\nv\r\nEND\r\n" % keys[-1] + config_reply(1, NODES)
            assert recv_exactly(sock, len(expected)) == expected
        with connect(endpoint) as sock:  # a binary "version" request
            sock.sendall(bytes([0x80, 0x0B]) + bytes(22))
            header = recv_exactly(sock, 24)
            assert header[:2] == bytes([0x81, 0x0B])
            assert recv_exactly(sock, int.from_bytes(header[8:12], "big")).startswith(b"1.")
        assert endpoint.requests == 1


def test_a_node_closes_on_quit_after_the_relayed_replies(memcached: MemcachedProcess) -> None:
    with node(memcached) as endpoint, connect(endpoint) as sock:
        sock.sendall(b"get %s\r\n" % key() + CONFIG_GET + b"quit\r\nversion\r\n")
        expected = b"END\r\n" + config_reply(1, NODES)
        assert recv_exactly(sock, len(expected)) == expected
        assert closed_by_peer(sock)


def test_a_node_in_stall_mode_relays_nothing(memcached: MemcachedProcess) -> None:
    k = key()
    with node(memcached) as endpoint, connect(endpoint, timeout=0.3) as sock:
        endpoint.set_mode("stall")
        sock.sendall(b"set %s 0 0 5\r\nquit\r\n\r\n" % k + CONFIG_GET)
        with pytest.raises(socket.timeout):
            sock.recv(1)
        assert endpoint.requests == 1  # the data block was not read as a command
        endpoint.set_mode("normal")
        sock.settimeout(2)
        assert ask(sock, b"get %s\r\n" % k) == b"END\r\n"  # the set never reached it
        assert direct_get(memcached, k) == b"END\r\n"


def test_a_node_in_too_many_mode_relays_nothing(memcached: MemcachedProcess) -> None:
    k = key()
    with node(memcached) as endpoint, connect(endpoint) as sock:
        assert ask(sock, b"get %s\r\n" % k) == b"END\r\n"
        endpoint.set_mode("too_many")
        sock.sendall(b"set %s 0 0 1\r\nx\r\n" % k)
        assert recv_exactly(sock, len(TOO_MANY)) == TOO_MANY
        assert closed_by_peer(sock)
        assert direct_get(memcached, k) == b"END\r\n"


def test_a_node_whose_memcached_is_gone_closes_the_connection() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()
    with ConfigEndpoint(NODES, upstream=dead) as endpoint, connect(endpoint) as sock:
        assert ask(sock) == config_reply(1, NODES)  # answered without the upstream
        sock.sendall(b"get foo\r\n")
        assert closed_by_peer(sock)
    with pytest.raises(ValueError):
        ConfigEndpoint(upstream=("127.0.0.1", 0))


def test_a_node_whose_memcached_stops_closes_its_connections(
    new_memcached: Callable[..., MemcachedProcess],
) -> None:
    server = new_memcached()
    with node(server) as endpoint, connect(endpoint) as sock:
        assert ask(sock, b"get %s\r\n" % key()) == b"END\r\n"
        server.stop()
        assert closed_by_peer(sock)
        deadline = time.monotonic() + 5
        while endpoint.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert endpoint.connections == 0


def test_a_node_breaks_only_the_config_requests(memcached: MemcachedProcess) -> None:
    k = key()
    with node(memcached, version=6) as endpoint, connect(endpoint) as sock:
        endpoint.set_mode("legacy")
        assert ask(sock, b"set %s 0 0 1\r\nv\r\n" % k) == b"STORED\r\n"
        sock.sendall(b"get %s\r\n" % k + CONFIG_GET + LEGACY_GET)
        expected = (
            b"VALUE %s 0 1\r\nv\r\nEND\r\n" % k + b"ERROR\r\n" + config_reply(6, NODES, legacy=True)
        )
        assert recv_exactly(sock, len(expected)) == expected
        endpoint.set_mode("plain")
        sock.sendall(CONFIG_GET + b"get %s\r\n" % k + LEGACY_GET)
        expected = b"ERROR\r\n" + b"VALUE %s 0 1\r\nv\r\nEND\r\n" % k + b"END\r\n"
        assert recv_exactly(sock, len(expected)) == expected
        assert endpoint.requests == 4


def test_pymc_client_through_a_node(memcached: MemcachedProcess) -> None:
    k = key().decode()
    with node(memcached, [("0a.example", "", 11211)], version=5) as endpoint:
        client = pymc.Client(endpoint.address, connect_timeout=1, timeout=1)
        try:
            assert client.set(k, b"value")
            assert client.get(k) == b"value"
            assert client.cluster_config() == ClusterConfig(
                5, (ClusterNode("0a.example", "", 11211),)
            )
            assert client.get_many([k, k + "-missing"]) == {k: b"value"}
            assert client.delete(k)
        finally:
            client.close()
