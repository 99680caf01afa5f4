"""One reply path: every client reads and judges replies the same way.

Defects an outside review found, each shown here against real memcached processes and the
suite's fault proxy (which plays a misbehaving server or middlebox). Every test runs the
same input through ``Client``, ``PooledClient`` and a ``HashClient`` and asserts what a
user sees: the right value, the right exception, and a connection that still answers right.
"""

from __future__ import annotations

import itertools
import pickle
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Tuple, Type

import pytest
from support.faultproxy import FaultProxy
from support.helpers import KINDS, one_node_client, tcp
from support.servers import MemcachedProcess

from pymc import (
    Client,
    HashClient,
    MemcacheClientError,
    MemcacheError,
    MemcachePoolTimeoutError,
    MemcacheProtocolError,
    MemcacheServerError,
    MemcacheUnknownCommandError,
)
from pymc.client import PIPELINE_BYTES
from pymc.exceptions import MemcacheServerRefusedError
from pymc.serde import pickle_serde

ProxyFactory = Callable[[Tuple[str, int]], FaultProxy]
_counter = itertools.count()


def tag() -> str:
    return f"rp{next(_counter)}-{time.monotonic_ns() % 10**9}"


make = one_node_client


@pytest.fixture
def proxy(memcached: MemcachedProcess, fault_proxy: ProxyFactory) -> FaultProxy:
    return fault_proxy(tcp(memcached))


def _lines(err: bytes) -> Callable[[bytes], bytes]:
    """A server that answers every one-line reply with ``err``."""
    return lambda data: err * data.count(b"\r\n")


def _whole(err: bytes) -> Callable[[bytes], bytes]:
    """A server that answers every retrieval (up to its END) with ``err``."""
    return lambda data: err * data.count(b"END\r\n")


ERRORS: Dict[str, Tuple[bytes, Type[BaseException]]] = {
    "server_error": (b"SERVER_ERROR out of memory\r\n", MemcacheServerError),
    "client_error": (b"CLIENT_ERROR bad command line format\r\n", MemcacheClientError),
    "error": (b"ERROR\r\n", MemcacheUnknownCommandError),
    "garbage": (b"\x00\xfe GARBAGE\r\n", MemcacheProtocolError),
}

# command -> (call it, whether its reply is a retrieval)
FAN_OUT: Dict[str, Tuple[Callable[[Any, List[str]], Any], bool]] = {
    "get_many": (lambda c, keys: c.get_many(keys), True),
    "gets_many": (lambda c, keys: c.gets_many(keys), True),
    "set_many": (lambda c, keys: c.set_many({k: b"new" for k in keys}), False),
    "delete_many": (lambda c, keys: c.delete_many(keys), False),
    "touch_many": (lambda c, keys: c.touch_many(keys, 100), False),
}


def _seed(proxy: FaultProxy, keys: List[str]) -> None:
    with Client(proxy.upstream, timeout=2.0) as seeder:
        seeder.set_many({k: b"old" for k in keys})


# --------------------------------------------------------------------------- defect 1


# touch_many is a HashClient command
KIND_COMMANDS = [(k, c) for k in KINDS for c in sorted(FAN_OUT) if k == "hash" or c != "touch_many"]


@pytest.mark.parametrize("error", sorted(ERRORS))
@pytest.mark.parametrize(("kind", "command"), KIND_COMMANDS)
def test_every_error_reply_to_every_multi_key_command(
    proxy: FaultProxy, kind: str, command: str, error: str
) -> None:
    """An error reply is raised as its exception (never read as data), on every client,
    and the connection answers the next command right."""
    keys = [f"{tag()}:{i}" for i in range(3)]
    _seed(proxy, keys)
    call, retrieval = FAN_OUT[command]
    line, expected = ERRORS[error]
    client = make(kind, proxy.server)
    try:
        assert client.get(keys[0]) == b"old"  # connected, in step
        proxy.set_mode("rewrite", fn=_whole(line) if retrieval else _lines(line))
        with pytest.raises(expected):
            call(client, keys)
        proxy.set_mode("pass")
        # The server did run the command; only its answer was spoiled.
        after = {"set_many": b"new", "delete_many": None}.get(command, b"old")
        held = {} if after is None else {k: after for k in keys}
        assert client.get_many(keys) == held
        assert client.get(keys[1]) == after
        assert client.set(keys[2], b"after") is True
        assert client.get(keys[2]) == b"after"
    finally:
        client.close()


@pytest.mark.parametrize("error", sorted(ERRORS))
@pytest.mark.parametrize("command", ["get_many", "gets_many"])
@pytest.mark.parametrize("kind", KINDS)
def test_error_reply_to_a_multi_get_is_a_miss_with_ignore_exc(
    proxy: FaultProxy, kind: str, command: str, error: str
) -> None:
    keys = [f"{tag()}:{i}" for i in range(3)]
    _seed(proxy, keys)
    client = make(kind, proxy.server, ignore_exc=True)
    try:
        proxy.set_mode("rewrite", fn=_whole(ERRORS[error][0]))
        assert FAN_OUT[command][0](client, keys) == {}
        proxy.set_mode("pass")
        assert client.get_many(keys) == {k: b"old" for k in keys}
    finally:
        client.close()


# --------------------------------------------------------------------------- defect 4


class _Unpicklable:
    pass


@pytest.mark.parametrize("kind", KINDS)
def test_a_value_that_does_not_decode_is_a_miss_with_ignore_exc_everywhere(
    memcached: MemcachedProcess, kind: str
) -> None:
    good, bad = f"{tag()}:good", f"{tag()}:bad"
    with Client(tcp(memcached)) as raw:
        raw.set(good, pickle.dumps({"a": 1}), flags=1)  # pickle_serde's flag for pickles
        raw.set(bad, b"\x80\x04not a pickle", flags=1)
    client = make(kind, tcp(memcached), serde=pickle_serde, ignore_exc=True)
    try:
        assert client.get(bad) is None
        assert client.get(bad, "dflt") == "dflt"
        assert client.get_many([good, bad]) == {good: {"a": 1}}
        assert client.gets_many([good, bad]).keys() == {good}
        assert client.get(good) == {"a": 1}  # the connection is fine
    finally:
        client.close()
    strict = make(kind, tcp(memcached), serde=pickle_serde)
    try:
        with pytest.raises(Exception) as single:
            strict.get(bad)
        with pytest.raises(Exception) as many:
            strict.get_many([good, bad])
        assert type(single.value) is type(many.value)
        assert strict.get(good) == {"a": 1}
    finally:
        strict.close()


# --------------------------------------------------------------------------- defect 5


def _once(prefix: bytes) -> Callable[[bytes], bytes]:
    """A server that puts ``prefix`` in front of the next reply only: what a server that
    answers an earlier noreply command with an error line looks like on the wire."""
    armed = [True]

    def rewrite(data: bytes) -> bytes:
        if armed[0]:
            armed[0] = False
            return prefix + data
        return data

    return rewrite


@pytest.mark.parametrize("kind", KINDS)
def test_an_error_caused_by_a_noreply_command_is_never_raised_by_the_next_one(
    proxy: FaultProxy, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = f"{tag()}:k"
    client = make(kind, proxy.server)
    try:
        assert client.set(key, b"v") is True
        assert client.set(f"{tag()}:other", b"w", noreply=True) is True
        proxy.set_mode("rewrite", fn=_once(b"SERVER_ERROR out of memory storing object\r\n"))
        with caplog.at_level("WARNING", logger="pymc"):
            assert client.get(key) == b"v"
        assert "out of memory" in caplog.text
        assert client.add(key, b"w") is False
        assert client.get_many([key]) == {key: b"v"}
    finally:
        client.close()


def test_noreply_errors_are_counted_and_the_connection_kept(proxy: FaultProxy) -> None:
    key = f"{tag()}:k"
    with Client(proxy.server, timeout=2.0) as client:
        client.set(key, b"v")
        sock = client.sock
        for n in range(1, 4):
            client.delete(f"{tag()}:gone", noreply=True)
            client.set(f"{tag()}:small", b"fine", noreply=True)
            errors = b"CLIENT_ERROR one\r\nSERVER_ERROR two\r\n"
            proxy.set_mode("rewrite", fn=_once(errors))
            assert client.get(key) == b"v"
            assert client.noreply_errors == 2 * n
        assert client.sock is sock  # no reconnect: the connection stayed in step


def test_noreply_mixed_with_every_kind_of_command(memcached: MemcachedProcess) -> None:
    """Each command gets its own answer, whatever noreply commands came before it."""
    key = f"{tag()}:mix"
    with Client(tcp(memcached), timeout=2.0) as client:
        for i in range(20):
            client.set(key, b"%d" % i, noreply=True)
            client.delete(f"{key}:none", noreply=True)
            assert client.get(key) == b"%d" % i
            assert client.incr(f"{key}:none", 1) is None
            assert client.touch(key, 100, noreply=True) is True
            assert client.add(key, b"no") is False
            client.set_many({f"{key}:{j}": b"%d" % j for j in range(5)}, noreply=True)
            assert client.get_many([f"{key}:{j}" for j in range(5)]) == {
                f"{key}:{j}": b"%d" % j for j in range(5)
            }
            client.flush_all(noreply=True)
            assert client.version().startswith(b"1.")
            assert client.get(key) is None
            assert client.stats()[b"pid"] > 0
        assert client.noreply_errors == 0


# --------------------------------------------------------------------------- defect 6


@pytest.mark.parametrize("kind", KINDS)
def test_stats_reset_succeeds(memcached: MemcachedProcess, kind: str) -> None:
    client = make(kind, tcp(memcached))
    try:
        result = client.stats("reset")
        if kind == "hash":
            assert list(result.values()) == [{}]
        else:
            assert result == {}
        key = f"{tag()}:after"
        assert client.set(key, b"v") and client.get(key) == b"v"
    finally:
        client.close()


# --------------------------------------------------------------------------- defect 7


@pytest.mark.parametrize("kind", KINDS)
def test_a_full_server_is_a_server_error_and_the_client_recovers(
    new_memcached: Callable[..., MemcachedProcess], kind: str
) -> None:
    server = new_memcached("-c", "32")  # memcached keeps some of these for itself
    hogs: List[socket.socket] = []
    client = make(kind, tcp(server))
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(hogs) < 64:
            sock = socket.create_connection(tcp(server), timeout=2)
            sock.sendall(b"version\r\n")
            answer = sock.recv(100)
            hogs.append(sock)
            if answer.startswith(b"ERROR"):
                assert answer == b"ERROR Too many open connections\r\n"
                break
        else:
            pytest.fail("the server never said it was full")
        with pytest.raises(MemcacheServerError) as info:
            client.get("k")
        assert isinstance(info.value, MemcacheServerRefusedError)
        assert not isinstance(info.value, MemcacheProtocolError)
        assert "Too many open connections" in str(info.value)
    finally:
        for sock in hogs:
            sock.close()
    try:
        key = f"{tag()}:back"
        deadline = time.monotonic() + 5
        while True:  # the server notices the closed hogs in its own time
            try:
                assert client.set(key, b"v") is True
                break
            except MemcacheServerRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert client.get(key) == b"v"
    finally:
        client.close()


def test_bare_error_stays_an_unknown_command(memcached: MemcachedProcess) -> None:
    with Client(tcp(memcached), timeout=2.0) as client:
        with pytest.raises(MemcacheUnknownCommandError) as info:
            client.raw_command("no_such_command")
        assert not isinstance(info.value, MemcacheServerError)
        assert client.version().startswith(b"1.")


# --------------------------------------------------------------------------- defect 15


@pytest.mark.parametrize("command", ["get_many", "gets_many"])
def test_one_key_spelled_as_str_and_bytes(
    memcached_nodes: List[MemcachedProcess], command: str
) -> None:
    key = tag()
    servers = [tcp(n) for n in memcached_nodes]
    # The value is on every node: str and bytes spellings of a key may hash to different
    # nodes (pymemcache's placement does so), and this is about the answer's shape.
    for server in servers:
        with Client(server, timeout=2.0) as seeder:
            seeder.set(key, b"v")
    hashed = HashClient(servers, timeout=2.0)
    single = Client(servers[0], timeout=2.0)
    try:
        for keys in ([key, key.encode()], [key.encode(), key]):
            expected = getattr(single, command)(keys)
            got = getattr(hashed, command)(keys)
            assert got.keys() == expected.keys() == {keys[-1]}
            if command == "get_many":
                assert got == expected == {keys[-1]: b"v"}
    finally:
        single.close()
        hashed.close()


# --------------------------------------------------------------------------- defect 16


@pytest.mark.parametrize("kind", KINDS)
def test_an_extra_line_after_a_reply_never_answers_the_next_command(
    proxy: FaultProxy, kind: str
) -> None:
    key = f"{tag()}:k"
    _seed(proxy, [key])
    client = make(kind, proxy.server)
    try:
        proxy.set_mode("rewrite", fn=lambda d: d.replace(b"END\r\n", b"END\r\nSTORED\r\n"))
        with pytest.raises(MemcacheProtocolError):
            client.get(key)
        proxy.set_mode("pass")
        assert client.add(key, b"again") is False  # it exists: never the stray STORED
        assert client.get(key) == b"old"
    finally:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_an_error_line_before_the_real_reply(proxy: FaultProxy, kind: str) -> None:
    key = f"{tag()}:k"
    _seed(proxy, [key])
    client = make(kind, proxy.server)
    try:
        assert client.get(key) == b"old"
        proxy.set_mode("rewrite", fn=lambda d: b"SERVER_ERROR busy\r\n" + d)
        with pytest.raises(MemcacheError):
            client.set(key, b"new")
        proxy.set_mode("pass")
        assert client.add(key, b"again") is False  # not the STORED meant for set
        assert client.get(key) == b"new"
    finally:
        client.close()


def _keys_over(size: int) -> List[str]:
    prefix = tag()
    keys: List[str] = []
    total = 0
    while total <= size:
        keys.append(f"{prefix}:{len(keys):06d}:" + "x" * 200)
        total += len(keys[-1]) + 1
    return keys


@pytest.mark.parametrize("kind", KINDS)
def test_a_key_answered_again_in_a_later_pass_is_an_error(proxy: FaultProxy, kind: str) -> None:
    keys = _keys_over(2 * PIPELINE_BYTES)
    _seed(proxy, keys)
    first = keys[0].encode()
    ends = [0]

    def answer_twice(data: bytes) -> bytes:
        # After the first pass's answer, a forged value for its first key is put in front
        # of the second pass's answer.
        out = data
        if ends[0] == 1:
            out = b"VALUE " + first + b" 0 4\r\nEVIL\r\n" + data
            ends[0] = 2
        if ends[0] == 0 and b"END\r\n" in data:
            ends[0] = 1
        return out

    client = make(kind, proxy.server)
    try:
        proxy.set_mode("rewrite", fn=answer_twice)
        with pytest.raises(MemcacheProtocolError):
            client.get_many(keys)
        proxy.set_mode("pass")
        assert client.get(keys[0]) == b"old"
    finally:
        client.close()


@pytest.mark.parametrize("kind", ["client", "pooled"])
def test_raw_command_leaves_nothing_for_the_next_command(
    memcached: MemcachedProcess, kind: str
) -> None:
    key = f"{tag()}:raw"
    client = make(kind, tcp(memcached))
    try:
        client.set(key, b"hello")
        with pytest.raises(MemcacheProtocolError):
            client.raw_command(f"get {key}", "\r\n")  # the data and END follow
        assert client.get(key) == b"hello"
        assert client.raw_command(f"get {key}", "END\r\n") == (
            f"VALUE {key} 0 5\r\nhello\r\n".encode()
        )
        assert client.add(key, b"x") is False
        assert client.raw_command("version").startswith(b"VERSION 1.")
        assert client.get(key) == b"hello"
    finally:
        client.close()


# --------------------------------------------------------------------------- defect 17


def test_a_slow_node_does_not_starve_a_healthy_one(
    memcached_nodes: List[MemcachedProcess], fault_proxy: ProxyFactory
) -> None:
    """A multi-get never holds one node's connection while it waits for another's."""
    proxies = [fault_proxy(tcp(n)) for n in memcached_nodes[:2]]
    proxies.sort(key=lambda p: p.server)  # the fan-out visits nodes in name order
    healthy, slow = proxies
    client = HashClient(
        [healthy.server, slow.server], use_pooling=True, max_pool_size=1, pool_timeout=1.0
    )
    try:
        keys = [f"{tag()}:{i}" for i in range(40)]
        client.set_many({k: b"v" for k in keys})
        mine = next(k for k in keys if client.snapshot.node_for(k) == healthy.server)
        assert {client.snapshot.node_for(k) for k in keys} == {healthy.server, slow.server}
        # Another caller has the slow node's only connection for a while.
        held = client.clients[slow.server].client_pool.get()
        errors: List[BaseException] = []

        def multi_get() -> None:
            try:
                client.get_many(keys)
            except BaseException as exc:
                errors.append(exc)

        waiter = threading.Thread(target=multi_get)
        waiter.start()
        time.sleep(0.2)  # the multi-get is now waiting for the slow node
        started = time.monotonic()
        assert client.get(mine) == b"v"
        assert time.monotonic() - started < 0.5
        waiter.join(5)
        assert not waiter.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], MemcachePoolTimeoutError)
        client.clients[slow.server].client_pool.release(held)
        assert client.get_many(keys) == {k: b"v" for k in keys}
    finally:
        client.close()


# --------------------------------------------------------------------------- 250-byte edge


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spelling", [str, bytes])
def test_keys_at_the_length_limit_after_the_prefix(
    memcached: MemcachedProcess, kind: str, spelling: Callable[[str], Any]
) -> None:
    from pymc import MemcacheIllegalInputError

    client = make(kind, tcp(memcached), key_prefix=b"pfx:")

    def key(n: int) -> Any:
        text = ("k" * n)[:n]
        return text if spelling is str else text.encode()

    try:
        assert client.set(key(246), b"edge") is True
        assert client.get(key(246)) == b"edge"
        assert client.get_many([key(246)]) == {key(246): b"edge"}
        calls: List[Callable[[], Any]] = [
            lambda: client.get(key(247)),
            lambda: client.set(key(247), b"x"),
            lambda: client.get_many([key(246), key(247)]),
            lambda: client.delete_many([key(247)]),
        ]
        for call in calls:
            with pytest.raises(MemcacheIllegalInputError):
                call()
        assert client.get(key(246)) == b"edge"  # nothing half-sent
    finally:
        client.close()


# --------------------------------------------------------------------------- defect 12


def test_hash_client_has_what_its_types_say(memcached_nodes: List[MemcachedProcess]) -> None:
    """HashClient is no Client subclass in disguise: it has check_key and key_prefix, and
    does not claim raw_command or shutdown (no single server to send them to)."""
    from pymc import MemcacheIllegalInputError

    client = HashClient([tcp(n) for n in memcached_nodes], key_prefix=b"p:")
    try:
        assert Client not in type(client).__mro__
        assert client.key_prefix == b"p:"
        assert client.check_key("k") == b"p:k"
        assert client.check_key("k", key_prefix=b"") == b"k"
        with pytest.raises(MemcacheIllegalInputError):
            client.check_key("k" * 249)
        assert not hasattr(client, "raw_command") and not hasattr(client, "shutdown")
        assert client.get(key="absent", default="d") == "d"
    finally:
        client.close()
