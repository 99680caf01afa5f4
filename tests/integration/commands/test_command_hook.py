"""The ``on_command`` hook: a plain recorder on Client, PooledClient, HashClient and
ElastiCacheClient against real servers. Each command is observed once, with its name, the
caller's keys and the node; fan-outs once per node, all started in the caller's thread
before any ends; errors and BaseExceptions reach the end callback; a hook that raises
changes nothing but a log line; a client without the hook runs the class's methods."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
from support.helpers import Interrupt, tcp
from support.servers import MemcachedProcess

import pymc
from integration.transport.test_interrupts import every_line
from pymc import Client, ElastiCacheClient, HashClient, PooledClient
from pymc.exceptions import MemcacheError, MemcacheServerError
from pymc.testing import ConfigEndpoint


class Recorder:
    """An ``on_command`` hook that records every start and end, in order."""

    def __init__(self) -> None:
        self.events: List[Tuple[Any, ...]] = []
        self.lock = threading.Lock()

    def __call__(
        self, command: str, keys: Tuple[Any, ...], server: Any
    ) -> Callable[[Optional[BaseException]], None]:
        with self.lock:
            n = len(self.starts())
            self.events.append(("start", n, command, keys, server, threading.get_ident()))

        def end(error: Optional[BaseException]) -> None:
            with self.lock:
                self.events.append(("end", n, error))

        return end

    def starts(self) -> List[Tuple[Any, ...]]:
        return [e for e in self.events if e[0] == "start"]

    def ends(self) -> Dict[int, Optional[BaseException]]:
        out: Dict[int, Optional[BaseException]] = {}
        for event in self.events:
            if event[0] == "end":
                assert event[1] not in out, f"observation {event[1]} ended twice"
                out[event[1]] = event[2]
        return out

    def calls(self) -> List[Tuple[str, Tuple[Any, ...], Any, Optional[BaseException]]]:
        """``[(command, keys, server, error)]``; every observation has ended, once."""
        ends = self.ends()
        starts = self.starts()
        assert sorted(ends) == [s[1] for s in starts], "an observation never ended"
        return [(s[2], s[3], s[4], ends[s[1]]) for s in starts]

    def clear(self) -> None:
        self.events.clear()


class ArmedSockets:
    """A ``socket_module``: the real one, whose sockets raise :class:`Interrupt` from the
    ``n``-th ``recv`` after :meth:`arm`."""

    def __init__(self) -> None:
        self.countdown = 0
        outer = self

        class Sock(socket.socket):
            def recv(self, bufsize: int, *flags: int) -> bytes:
                if outer.countdown:
                    outer.countdown -= 1
                    if outer.countdown == 0:
                        raise Interrupt("interrupted mid-reply")
                return super().recv(bufsize, *flags)

        self.socket = Sock

    def arm(self, nth_recv: int = 1) -> None:
        self.countdown = nth_recv

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)


@pytest.fixture
def nodes(memcached_nodes: List[MemcachedProcess]) -> List[MemcachedProcess]:
    for node in memcached_nodes:
        if not node.is_running():
            node.start()
        node.flush_all()
    return memcached_nodes


def _make(kind: str, servers: List[Any], **kw: Any) -> Any:
    kw.setdefault("timeout", 2.0)
    kw.setdefault("connect_timeout", 2.0)
    if kind == "client":
        return Client(servers[0], **kw)
    if kind == "pooled":
        return PooledClient(servers[0], max_pool_size=2, pool_timeout=2.0, **kw)
    return HashClient(servers, use_pooling=True, max_pool_size=2, pool_timeout=2.0, **kw)


def _in_use(client: Any) -> List[int]:
    if isinstance(client, Client):
        return []
    pools = client.clients.values() if isinstance(client, HashClient) else [client]
    return [p.client_pool.stats()["in_use"] for p in pools]


# -- no hook ------------------------------------------------------------------------------------


def test_a_client_without_the_hook_runs_the_class_methods(memcached: MemcachedProcess) -> None:
    c = Client(tcp(memcached))
    assert not [name for name in pymc.client.COMMANDS if name in vars(c)]
    assert c.options.on_command is None
    pooled = PooledClient(tcp(memcached))
    pooled.set("k", b"v")
    conn = pooled.client_pool.idle_objects()[0]
    assert not [name for name in pymc.client.COMMANDS if name in vars(conn)]
    pooled.close()


# -- Client -------------------------------------------------------------------------------------


def test_client_observes_each_command_once(memcached: MemcachedProcess) -> None:
    rec = Recorder()
    server = tcp(memcached)
    c = Client(server, on_command=rec, timeout=2.0)
    assert c.set("a", b"1") is True
    assert c.get("a") == b"1"
    assert c.get_many(k for k in ["a", "b"]) == {"a": b"1"}  # an iterator, read once
    assert c.get_many(keys=["a"]) == {"a": b"1"}  # by keyword
    assert c.set_many({"b": b"2", "c": b"3"}) == []
    assert c.get_cas("a")[0] == b"1"  # runs meta_get: observed once, as get_cas
    assert c.incr("n", 5, initial=1) == 1  # runs meta_arithmetic
    assert c["b"] == b"2"
    assert c.delete_many(["b", "c"]) is True
    assert c.meta_get_many(["a"]) == {"a": b"1"}
    assert isinstance(c.stats(), dict)
    assert c.fetch("f", lambda: b"F") == b"F"  # fetch is lease_get then lease_set
    assert [(name, keys, where, err) for name, keys, where, err in rec.calls()] == [
        ("set", ("a",), server, None),
        ("get", ("a",), server, None),
        ("get_many", ("a", "b"), server, None),
        ("get_many", ("a",), server, None),
        ("set_many", ("b", "c"), server, None),
        ("get_cas", ("a",), server, None),
        ("incr", ("n",), server, None),
        ("get", ("b",), server, None),
        ("delete_many", ("b", "c"), server, None),
        ("meta_get_many", ("a",), server, None),
        ("stats", (), server, None),
        ("lease_get", ("f",), server, None),
        ("lease_set", ("f",), server, None),
    ]
    assert all(s[5] == threading.get_ident() for s in rec.starts())
    c.close()


def test_client_errors_reach_the_end_and_the_client_stays_usable(
    memcached: MemcachedProcess, new_memcached: Callable[..., MemcachedProcess]
) -> None:
    rec = Recorder()
    c = Client(tcp(memcached), on_command=rec, timeout=2.0)
    with pytest.raises(MemcacheServerError):
        c.set("big", b"x" * (2 * 1024 * 1024))  # over the server's item size (-I 1m)
    assert c.set("small", b"y") and c.get("small") == b"y"
    (name, keys, _, error), *rest = rec.calls()
    assert (name, keys) == ("set", ("big",)) and isinstance(error, MemcacheServerError)
    assert [r[3] for r in rest] == [None, None]

    dead = new_memcached()
    address = tcp(dead)
    dead.stop()
    rec.clear()
    down = Client(address, on_command=rec, connect_timeout=1.0)
    with pytest.raises(MemcacheError):
        down.get("k")
    [(name, keys, where, error)] = rec.calls()
    assert (name, keys, where) == ("get", ("k",), address)
    assert isinstance(error, MemcacheError)
    c.close()


@pytest.mark.parametrize("kind", ["client", "pooled", "hash"])
def test_a_failing_hook_is_logged_and_ignored(
    nodes: List[MemcachedProcess], kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    servers = [tcp(n) for n in nodes[:3]]
    calls: List[str] = []

    def fails_at_start(command: str, keys: Tuple[Any, ...], server: Any) -> Any:
        calls.append(command)
        raise RuntimeError("broken tracer")

    def fails_at_end(command: str, keys: Tuple[Any, ...], server: Any) -> Any:
        calls.append(command)

        def end(error: Optional[BaseException]) -> None:
            raise RuntimeError("broken tracer")

        return end

    values = {f"fh:{i}": b"v%d" % i for i in range(8)}
    for hook in (fails_at_start, fails_at_end):
        client = _make(kind, servers, on_command=hook)
        try:
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="pymc"):
                assert client.set_many(values) == []
                assert client.get_many(list(values)) == values
                assert client.get("fh:1") == b"v1"
                assert client.delete("fh:7") is True
                assert client.get("fh:7") is None
            assert calls and len(caplog.records) == len(calls)
            assert all("on_command hook failed" in r.getMessage() for r in caplog.records)
            assert _in_use(client) == [0] * len(_in_use(client))
            if kind == "client":
                assert client.is_clean()
            calls.clear()
        finally:
            client.close()


# -- PooledClient, HashClient, ElastiCacheClient --------------------------------------------------


def test_pooled_client_observes_each_command_on_its_connection(
    memcached: MemcachedProcess,
) -> None:
    rec = Recorder()
    server = tcp(memcached)
    pooled = PooledClient(server, on_command=rec, max_pool_size=2)
    pooled.set("p", b"1")
    assert pooled.get("p") == b"1"
    assert pooled.get_many(["p", "q"]) == {"p": b"1"}
    with pytest.raises(MemcacheServerError):
        pooled.set("big", b"x" * (2 * 1024 * 1024))
    calls = rec.calls()
    assert [(n, k, s) for n, k, s, _ in calls] == [
        ("set", ("p",), server),
        ("get", ("p",), server),
        ("get_many", ("p", "q"), server),
        ("set", ("big",), server),
    ]
    assert [e is None for *_, e in calls] == [True, True, True, False]
    assert pooled.client_pool.stats()["in_use"] == 0
    pooled.close()


def _placed(client: HashClient, keys: List[str]) -> Dict[Any, Tuple[str, ...]]:
    """``{server: keys}`` as the client places them."""
    out: Dict[Any, List[str]] = {}
    for key in keys:
        name = client.snapshot.node_for(key)
        assert name is not None
        out.setdefault(client.snapshot.servers[name], []).append(key)
    return {server: tuple(group) for server, group in out.items()}


FAN_OUTS: Dict[str, Callable[[HashClient, List[str]], Any]] = {
    "set_many": lambda c, keys: c.set_many({k: b"v" for k in keys}),
    "get_many": lambda c, keys: c.get_many(keys),
    "gets_many": lambda c, keys: c.gets_many(keys),
    "delete_many": lambda c, keys: c.delete_many(keys),
    "meta_set_many": lambda c, keys: c.meta_set_many({k: b"v" for k in keys}),
    "meta_get_many": lambda c, keys: c.meta_get_many(keys),
    "meta_delete_many": lambda c, keys: c.meta_delete_many(keys),
}


@pytest.mark.parametrize("command", list(FAN_OUTS))
def test_hash_client_fan_out_is_one_observation_per_node(
    nodes: List[MemcachedProcess], command: str
) -> None:
    rec = Recorder()
    client = HashClient([tcp(n) for n in nodes[:3]], on_command=rec, use_pooling=True)
    keys = [f"fan:{i}" for i in range(30)]
    client.set_many({k: b"v" for k in keys})
    client.meta_get_many(keys)  # (a node's first quiet ms goes alone: its meta is checked)
    rec.clear()
    FAN_OUTS[command](client, keys)
    placed = _placed(client, keys)
    assert len(placed) == 3
    calls = rec.calls()
    assert sorted((s, k) for _, k, s, _ in calls) == sorted((s, k) for s, k in placed.items())
    assert {n for n, *_ in calls} == {command} and all(e is None for *_, e in calls)
    # every node's observation started (in the caller's thread) before any ended
    kinds = [e[0] for e in rec.events]
    assert kinds == ["start"] * 3 + ["end"] * 3
    assert {s[5] for s in rec.starts()} == {threading.get_ident()}
    client.close()


def test_hash_client_single_key_commands_name_their_node(nodes: List[MemcachedProcess]) -> None:
    rec = Recorder()
    client = HashClient([tcp(n) for n in nodes[:3]], on_command=rec)
    for i in range(6):
        client.set(f"one:{i}", b"x")
    assert client.version()
    placed = _placed(client, [f"one:{i}" for i in range(6)])
    where = {k: s for s, group in placed.items() for k in group}
    calls = rec.calls()
    assert [(n, k, s) for n, k, s, _ in calls[:6]] == [
        ("set", (f"one:{i}",), where[f"one:{i}"]) for i in range(6)
    ]
    assert sorted(s for n, _, s, _ in calls[6:]) == sorted(tcp(n) for n in nodes[:3])
    assert {n for n, *_ in calls[6:]} == {"version"}
    client.close()


def test_hash_client_a_failing_node_ends_its_observation_with_the_error(
    nodes: List[MemcachedProcess], new_memcached: Callable[..., MemcachedProcess]
) -> None:
    dead = new_memcached()
    gone = tcp(dead)
    dead.stop()
    rec = Recorder()
    servers = [tcp(n) for n in nodes[:2]] + [gone]
    client = HashClient(servers, on_command=rec, connect_timeout=1.0, ignore_exc=True)
    keys = [f"down:{i}" for i in range(30)]
    client.get_many(keys)
    calls = rec.calls()
    placed = _placed(client, keys)
    assert sorted((s, k) for _, k, s, _ in calls) == sorted((s, k) for s, k in placed.items())
    errors = {s: e for _, _, s, e in calls}
    assert isinstance(errors.pop(gone), MemcacheError)
    assert set(errors.values()) == {None}
    client.close()


def test_elasticache_client_passes_the_hook_to_its_nodes(nodes: List[MemcachedProcess]) -> None:
    rec = Recorder()
    with ConfigEndpoint() as endpoint:
        endpoint.set_nodes([tcp(n) for n in nodes[:3]], version=1)
        client = ElastiCacheClient(endpoint.server, poll_interval=60, on_command=rec, timeout=2)
        try:
            keys = [f"ec:{i}" for i in range(30)]
            assert client.set_many({k: b"e" for k in keys}) == []
            assert client.get("ec:1") == b"e"
            placed = _placed(client, keys)
            calls = rec.calls()
            assert sorted((n, s, k) for n, k, s, _ in calls[:-1]) == sorted(
                ("set_many", s, k) for s, k in placed.items()
            )
            name = client.snapshot.node_for("ec:1")
            assert name is not None
            assert calls[-1][:3] == ("get", ("ec:1",), client.snapshot.servers[name])
        finally:
            client.close()


# -- BaseException mid-command ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["client", "pooled", "hash"])
@pytest.mark.parametrize("command", ["get", "set", "get_many"])
def test_a_base_exception_mid_command_ends_the_observation(
    nodes: List[MemcachedProcess], kind: str, command: str
) -> None:
    rec = Recorder()
    sockets = ArmedSockets()
    client = _make(kind, [tcp(n) for n in nodes[:3]], on_command=rec, socket_module=sockets)
    values = {f"be:{i}": b"v%d" % i for i in range(12)}
    run: Dict[str, Callable[[], Any]] = {
        "get": lambda: client.get("be:1"),
        "set": lambda: client.set("be:1", b"v1"),
        "get_many": lambda: client.get_many(list(values)),
    }
    try:
        client.set_many(values)
        rec.clear()
        sockets.arm(1)
        with pytest.raises(Interrupt):
            run[command]()
        calls = rec.calls()  # every observation ended, once
        assert any(isinstance(e, Interrupt) for *_, e in calls)
        assert all(e is None or isinstance(e, Interrupt) for *_, e in calls)
        assert {n for n, *_ in calls} == {command}
        assert _in_use(client) == [0] * len(_in_use(client)), "a pool slot was lost"
        # no connection was left with unread bytes: every later answer is its own
        assert client.get_many(list(values)) == values
        assert client.get("be:3") == b"v3"
        assert client.delete("be:absent") is False
    finally:
        client.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["pooled", "hash"])
def test_an_interrupt_at_any_line_with_the_hook_loses_nothing(
    nodes: List[MemcachedProcess], kind: str
) -> None:
    """The same check as test_interrupts, with a recorder installed: whatever line the
    interrupt lands on (the hook's own code included), no slot is lost, every answer is
    right, and no observation ends twice."""
    rec = Recorder()
    servers = [tcp(n) for n in nodes[:3]]
    # (interruptions are not node failures: a HashClient must never eject a node here)
    never_eject: Dict[str, Any] = dict(retry_attempts=10**6, retry_timeout=0)
    client = _make(kind, servers, on_command=rec, **(never_eject if kind == "hash" else {}))
    values = {f"hl:{kind}:{i}": b"v%d" % i for i in range(6)}
    keys = list(values)
    client.set_many(values)

    def check() -> None:
        assert _in_use(client) == [0] * len(_in_use(client)), "a pool slot was lost"
        rec.ends()  # raises if an observation ended twice
        assert client.get_many(keys) == values
        assert client.get(keys[1]) == values[keys[1]]

    try:
        assert every_line(lambda: client.get_many(keys), check) > 5
    finally:
        client.close()
