"""Hostile tests of the redesigned reply path: each test shows a defect or a held line.

Every test states the input, what a user should see, and checks it against real memcached
processes (through the suite's fault proxy where a misbehaving server is needed).
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Dict, List, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.helpers import KINDS, one_node_client, tcp
from support.servers import MemcachedProcess

from pymc import HashClient, MemcacheProtocolError
from pymc.exceptions import MemcacheServerRefusedError
from pymc.protocol import (
    NEED_DATA,
    RULES,
    ExpectConfig,
    ExpectRaw,
    ExpectReplies,
    ExpectStats,
    ExpectSync,
    ExpectValues,
    Reader,
)

ProxyFactory = Callable[[Tuple[str, int]], FaultProxy]
_counter = itertools.count()


def tag() -> str:
    return f"atk{next(_counter)}-{time.monotonic_ns() % 10**9}"


make = one_node_client


@pytest.fixture
def proxy(memcached: MemcachedProcess, fault_proxy: ProxyFactory) -> FaultProxy:
    return fault_proxy(tcp(memcached))


# --------------------------------------------------------------------------- sans-IO splits

_CASES: List[Tuple[str, bytes, Callable[[], Any], Any]] = [
    (
        "get",
        b"VALUE k 5 3\r\nabc\r\nVALUE k2 0 7\r\n\r\nEND\r\n\r\nEND\r\n",
        lambda: ExpectValues({b"k", b"k2"}),
        {b"k": (5, b"abc", None), b"k2": (0, b"\r\nEND\r\n", None)},
    ),
    (
        "gets",
        b"VALUE k 0 4 99\r\nMN\r\n\r\nEND\r\n",
        lambda: ExpectValues({b"k"}, cas=True),
        {b"k": (0, b"MN\r\n", b"99")},
    ),
    ("miss", b"END\r\n", lambda: ExpectValues({b"k"}), {}),
    ("set", b"STORED\r\nNOT_STORED\r\n", lambda: ExpectReplies(RULES["set"], 2), None),
    ("incr", b"42\r\n", lambda: ExpectReplies(RULES["incr"]), [42]),
    ("stats", b"STAT pid 1\r\nSTAT x y z\r\nEND\r\n", ExpectStats, {b"pid": b"1", b"x": b"y z"}),
    ("raw", b"VALUE a\r\nEND\r\n", lambda: ExpectRaw(b"END\r\n"), b"VALUE a\r\n"),
    ("sync-version", b"CLIENT_ERROR x\r\nVERSION 1.6.9\r\n", ExpectSync, None),
    (
        "config",
        b"CONFIG cluster 0 19\r\n7\nh|10.0.0.1|11211\n\r\nEND\r\n",
        ExpectConfig,
        None,
    ),
]


def _drive(reply: bytes, cuts: List[int], factory: Callable[[], Any]) -> Any:
    reader = Reader()
    expect = factory()
    result: Any = NEED_DATA
    start = 0
    for stop in [*cuts, len(reply)]:
        if stop > start:
            reader.feed(reply[start:stop])
        start = stop
        result = expect.step(reader)
    assert reader.buffered == 0, (cuts, reader.buffered)
    return result


@pytest.mark.parametrize("name,reply,factory,want", _CASES, ids=[c[0] for c in _CASES])
def test_every_two_chunk_split_parses_the_same(
    name: str, reply: bytes, factory: Callable[[], Any], want: Any
) -> None:
    whole = _drive(reply, [], factory)
    if want is not None:
        assert whole == want
    for cut in range(1, len(reply)):
        assert _drive(reply, [cut], factory) == whole, cut
    assert _drive(reply, list(range(1, len(reply))), factory) == whole
    for a in range(1, len(reply)):
        for b in range(a + 1, len(reply)):
            assert _drive(reply, [a, b], factory) == whole, (a, b)


# --------------------------------------------------------------------------- the sync marker


@pytest.mark.parametrize("kind", KINDS)
def test_marker_refused_by_a_server_claiming_1_6(kind: str, proxy: FaultProxy) -> None:
    """A server (or proxy) that says ``VERSION 1.6.x`` but answers ``mn`` with ``ERROR``.

    After the first sync (``version``) the client switches to ``mn``; from then on every
    request after a noreply command should still answer right (fall back to ``version``, or
    at worst one failure), not fail forever with a protocol error."""
    proxy.set_mode("rewrite", fn=lambda data: data.replace(b"MN\r\n", b"ERROR\r\n"))
    client = make(kind, proxy.server)
    key = tag()
    client.set(key, b"v0")
    client.set(key, b"v1", noreply=True)
    assert client.get(key) == b"v1"  # first sync: ``version``, learns 1.6
    outcomes = []
    for i in range(3):
        client.set(key, b"v%d" % (i + 2), noreply=True)
        try:
            outcomes.append(client.get(key))
        except Exception as exc:
            outcomes.append(type(exc).__name__)
    assert outcomes[1:] == [b"v3", b"v4"], outcomes


def test_marker_refusal_is_not_a_noreply_error(proxy: FaultProxy) -> None:
    """The marker's own ``ERROR`` is counted as an error line of a noreply command."""
    proxy.set_mode("rewrite", fn=lambda data: data.replace(b"MN\r\n", b"ERROR\r\n"))
    client = make("client", proxy.server)
    key = tag()
    client.set(key, b"v1", noreply=True)
    client.get(key)
    client.set(key, b"v2", noreply=True)  # no error from this command
    try:
        client.get(key)
    except MemcacheProtocolError:
        pass
    assert client.noreply_errors == 0


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("kind", KINDS)
def test_too_many_connections_mid_pipeline_is_a_refusal(kind: str, proxy: FaultProxy) -> None:
    """memcached answers a refused connection with ``ERROR Too many open connections`` and
    hangs up. For one ``set`` pymc raises MemcacheServerRefusedError; a set_many (a pipeline)
    given the same answer should raise the same."""
    refusal = b"ERROR Too many open connections\r\n"
    client = make(kind, proxy.server)
    key = tag()
    proxy.set_mode("rewrite", fn=lambda data: refusal)
    with pytest.raises(MemcacheServerRefusedError):
        client.set(key, b"v")
    with pytest.raises(MemcacheServerRefusedError):
        client.set_many({key + "a": b"1", key + "b": b"2", key + "c": b"3"})


# --------------------------------------------------------------------------- tuple keys


def test_tuple_keys_with_one_real_key_on_two_server_keys(
    memcached_nodes: List[MemcachedProcess],
) -> None:
    """``(server_key, key)`` routes by server_key: ``("a", k)`` and ``("b", k)`` are two
    items (on two nodes). get_many of both must answer both, as two get() calls do."""
    client = HashClient([tcp(n) for n in memcached_nodes], timeout=2, connect_timeout=2)
    key = tag()
    snap = client.snapshot
    names = [f"route{i}" for i in range(200)]
    first = names[0]
    other = next(n for n in names if snap.node_for(n) != snap.node_for(first))
    client.set((first, key), b"one")  # type: ignore[arg-type]
    client.set((other, key), b"two")  # type: ignore[arg-type]
    single = {
        (first, key): client.get((first, key)),  # type: ignore[arg-type]
        (other, key): client.get((other, key)),  # type: ignore[arg-type]
    }
    assert single == {(first, key): b"one", (other, key): b"two"}
    assert client.get_many([(first, key), (other, key)]) == single
    many = client.gets_many([(first, key), (other, key)])
    assert {k: v for k, (v, _) in many.items()} == single


# --------------------------------------------------------------------------- values and sync


@pytest.mark.parametrize("kind", KINDS)
def test_values_that_look_like_replies_after_noreply(kind: str, proxy: FaultProxy) -> None:
    """Values holding END/MN/VALUE/VERSION lines, read right after noreply commands (so the
    marker's answer and the value arrive together), every reply chunk split in two."""

    def split(data: bytes) -> bytes:
        time.sleep(0.001)
        return data

    proxy.set_mode("rewrite", fn=split)
    client = make(kind, proxy.server)
    base = tag()
    tricky = {
        base + "a": b"\r\nEND\r\n",
        base + "b": b"MN\r\n",
        base + "c": b"VALUE " + base.encode() + b"a 0 1\r\nx\r\nEND\r\n",
        base + "d": b"VERSION 1.6.0\r\nMN\r\nEND\r\n",
        base + "e": b"",
    }
    for round_ in range(3):
        client.set(base + "x", b"%d" % round_, noreply=True)
        assert client.set_many(tricky, noreply=True) == []
        assert client.get_many(list(tricky)) == tricky
        client.delete(base + "zz", noreply=True)
        assert {k: v for k, (v, _) in client.gets_many(list(tricky)).items()} == tricky
        client.touch(base + "zz", noreply=True)
        assert client.get(base + "c") == tricky[base + "c"]
        assert client.get(base + "x") == b"%d" % round_


# --------------------------------------------------------------------------- ignore_exc


def _bad_item(data: bytes) -> bytes:
    """A server whose retrieval answers end in a corrupt data block."""
    if b"VALUE " in data:
        return data.replace(b"\r\nEND\r\n", b"XXEND\r\n")
    return data


_FAULTS: Dict[str, Callable[[FaultProxy], None]] = {
    "garbage": lambda p: p.set_mode("garbage"),
    "server_error": lambda p: p.set_mode(
        "rewrite", fn=lambda d: b"SERVER_ERROR busy\r\n" * max(1, d.count(b"END\r\n"))
    ),
    "close": lambda p: p.set_mode("close"),
    "corrupt_block": lambda p: p.set_mode("rewrite", fn=_bad_item),
}


@pytest.mark.parametrize("fault", list(_FAULTS))
def test_ignore_exc_answers_the_same_on_every_client(
    fault: str, memcached: MemcachedProcess, fault_proxy: ProxyFactory
) -> None:
    """ignore_exc=True: every read command gives the same answer on Client, PooledClient and
    HashClient for the same failure."""
    key = tag()
    seen: Dict[str, List[Any]] = {}
    for kind in KINDS:
        proxy = fault_proxy(tcp(memcached))
        client = make(kind, proxy.server, ignore_exc=True)
        client.set(key, b"v")
        _FAULTS[fault](proxy)
        answers: List[Any] = []
        calls: List[Callable[[Any], Any]] = [
            lambda c: c.get(key, "dflt"),
            lambda c: c.get_many([key, key + "m"]),
            lambda c: c.gets(key, "dflt", "cdflt"),
            lambda c: c.gets_many([key]),
            lambda c: c.gat(key, 0, "dflt"),
            lambda c: c.gats(key, 0, "dflt", "cdflt"),
        ]
        for call in calls:
            try:
                answers.append(call(client))
            except Exception as exc:
                answers.append(type(exc).__name__)
        seen[kind] = answers
    assert seen["pooled"] == seen["client"], seen
    assert seen["hash"] == seen["client"], seen


# --------------------------------------------------------------------------- retry policy


@pytest.mark.parametrize("nkeys", [20, 200])
def test_hash_retry_policy_covers_big_get_many(
    nkeys: int, memcached: MemcachedProcess, fault_proxy: ProxyFactory
) -> None:
    """HashClient(retry=RetryPolicy(...)): one garbled reply to an idempotent get_many is
    retried, whether the node's request is small (one pass) or over 32 KiB (passes)."""
    from pymc.retry import RetryPolicy

    proxy = fault_proxy(tcp(memcached))
    client = HashClient(
        [proxy.server],
        retry=RetryPolicy(attempts=3, backoff=0),
        retry_attempts=1000,
        retry_timeout=0,
        timeout=2,
        connect_timeout=2,
    )
    base = tag()
    keys = [f"{base}-{i}-".ljust(240, "k") for i in range(nkeys)]
    assert client.set_many({k: b"v" for k in keys}) == []
    hits = [0]

    def once(data: bytes) -> bytes:
        if b"VALUE " in data and hits[0] == 0:
            hits[0] += 1
            return b"HUH?\r\n"
        return data

    proxy.set_mode("rewrite", fn=once)
    assert client.get_many(keys) == {k: b"v" for k in keys}
    assert hits[0] == 1


# --------------------------------------------------------------------------- gevent swarm


@pytest.mark.timeout(90)
def test_gevent_swarm_with_random_timeouts(memcached_nodes: List[MemcachedProcess]) -> None:
    """24 greenlets run get_many/set_many(noreply too)/get/gets_many over a 3-node HashClient
    with gevent.Timeout at random points: no read is ever wrong, every pool slot comes back."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("gevent")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "tests")])
    env.pop("PYTEST_ADDOPTS", None)
    args = {"servers": [list(tcp(n)) for n in memcached_nodes[:3]], "seed": 7, "seconds": 4}
    proc = subprocess.run(
        [sys.executable, str(root / "tests/support/attack_gevent_swarm.py"), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


# --------------------------------------------------------------------------- byte by byte


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_every_command_with_replies_split_at_every_byte(
    kind: str, memcached: MemcachedProcess
) -> None:
    """Every reply (and every sync marker's answer) arrives one byte per segment."""
    from support.trickle import TrickleProxy

    trickle = TrickleProxy(tcp(memcached))
    try:
        client = make(kind, trickle.server)
        k = tag()
        assert client.set(k, b"v\r\nEND\r\n") is True
        client.set(k + "n", b"1", noreply=True)
        assert client.get(k) == b"v\r\nEND\r\n"
        client.delete(k + "zz", noreply=True)
        assert client.get_many([k, k + "n", k + "miss"]) == {k: b"v\r\nEND\r\n", k + "n": b"1"}
        client.set(k + "c", b"5", noreply=True)
        assert client.incr(k + "c", 2) == 7
        value, cas = client.gets(k)
        assert value == b"v\r\nEND\r\n" and cas is not None
        client.touch(k, noreply=True)
        assert client.cas(k, b"w", cas) is True
        assert client.gat(k, 0) == b"w"
        client.set(k + "n", b"2", noreply=True)
        assert client.delete_many([k + "n"]) is True
        client.set(k + "n", b"3", noreply=True)
        stats = client.stats()
        if kind == "hash":
            stats = next(iter(stats.values()))
        assert stats[b"pid"] > 0
        if kind != "hash":
            client.set(k + "n", b"4", noreply=True)
            assert client.raw_command("get " + k + "n", "END\r\n").endswith(b"4\r\n")
            assert client.version()
        assert client.set_many({k + "x": b"1", k + "y": b"2"}) == []
        assert client.get_many([k + "x", k + "y"]) == {k + "x": b"1", k + "y": b"2"}
    finally:
        trickle.stop()


# --------------------------------------------------------------------------- key limits


@pytest.mark.parametrize("kind", KINDS)
def test_keys_at_the_length_limit_after_prefix(kind: str, memcached: MemcachedProcess) -> None:
    """With key_prefix "pf:", a 247-byte key is legal (250 in all) and a 248-byte one is not,
    in every multi-key command, and duplicates of one key change nothing."""
    from pymc import MemcacheIllegalInputError

    client = make(kind, tcp(memcached), key_prefix="pf:")
    base = tag()
    ok = [base + str(i) + "k" * (247 - len(base) - len(str(i))) for i in range(3)]
    assert all(len(k) == 247 for k in ok)
    bad = ok[0] + "k"
    assert client.set_many({k: k.encode() for k in ok}) == []
    assert client.get_many(ok * 3) == {k: k.encode() for k in ok}
    assert set(client.gets_many(ok + ok)) == set(ok)
    if kind == "hash":
        assert client.touch_many(ok + ok) == {k: True for k in ok}
    calls: List[Callable[[], Any]] = [
        lambda: client.get_many([*ok, bad]),
        lambda: client.gets_many([bad]),
        lambda: client.set_many({bad: b"x"}),
        lambda: client.delete_many([*ok, bad]),
        lambda: client.get(bad),
    ]
    for call in calls:
        with pytest.raises(MemcacheIllegalInputError):
            call()
    assert client.get_many(ok) == {k: k.encode() for k in ok}  # nothing was half-done
    assert client.delete_many(ok + ok) is True
    assert client.get_many(ok) == {}


@pytest.mark.parametrize("kind", ["client", "pooled"])
def test_admin_commands_right_after_noreply(kind: str, memcached: MemcachedProcess) -> None:
    """stats sub-commands that answer OK/RESET, config get (ERROR on memcached), raw_command
    and version, each right after a noreply command: right answer, connection still good."""
    from pymc import MemcacheUnknownCommandError

    client = make(kind, tcp(memcached))
    k = tag()
    client.set(k, b"1", noreply=True)
    assert client.stats("reset") == {}
    client.set(k, b"2", noreply=True)
    assert client.stats("detail", "off") == {}
    client.set(k, b"3", noreply=True)
    if kind == "client":
        with pytest.raises(MemcacheUnknownCommandError):
            client.cluster_config()
    assert client.get(k) == b"3"
    client.set(k, b"4", noreply=True)
    assert client.raw_command("version").startswith(b"VERSION ")
    client.set(k, b"5", noreply=True)
    with pytest.raises(MemcacheUnknownCommandError):
        client.raw_command("bogus_command")
    assert client.get(k) == b"5"
    client.set(k, b"6", noreply=True)
    assert client.version()
    assert client.incr(k, 1) == 7


def test_pooled_client_has_every_client_command(memcached: MemcachedProcess) -> None:
    """PooledClient is documented as taking Client's place; Client.cluster_config (the one
    ElastiCache command) is missing from it, so ``PooledClient(...).cluster_config()`` is
    an AttributeError instead of the server's answer."""
    from pymc import MemcacheUnknownCommandError

    pooled = make("pooled", tcp(memcached))
    with pytest.raises(MemcacheUnknownCommandError):
        pooled.cluster_config()


@pytest.mark.parametrize("ignore", [False, True])
def test_one_too_large_value_in_set_many(ignore: bool, memcached: MemcachedProcess) -> None:
    """One value over the 1 MiB item limit in the middle of a set_many: every client raises
    MemcacheServerError (ignore_exc does not hide write errors on Client) or, where errors
    are hidden, names only the key that was not stored; the others are stored."""
    from pymc import MemcacheServerError

    seen: Dict[str, Any] = {}
    for kind in KINDS:
        client = make(kind, tcp(memcached), ignore_exc=ignore)
        k = tag()
        values = {k + "a": b"1", k + "big": b"x" * (2 << 20), k + "c": b"3"}
        try:
            seen[kind] = sorted(client.set_many(values))
        except MemcacheServerError:
            seen[kind] = "MemcacheServerError"
        assert client.get_many([k + "a", k + "c"]) == {k + "a": b"1", k + "c": b"3"}
        if seen[kind] != "MemcacheServerError":
            assert seen[kind] == [k + "big"], (kind, seen[kind])
