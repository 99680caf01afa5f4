"""Hostile tests of the redesigned reply path: each test shows a defect or a held line.

Every test states the input, what a user should see, and checks it against real memcached
processes (through the suite's fault proxy where a misbehaving server is needed).
"""

from __future__ import annotations

import time
from typing import Callable, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.hashclients import tag
from support.helpers import KINDS, one_node_client, tcp
from support.servers import MemcachedProcess

from pymc.exceptions import MemcacheServerRefusedError

ProxyFactory = Callable[[Tuple[str, int]], FaultProxy]


make = one_node_client


@pytest.fixture
def proxy(memcached: MemcachedProcess, fault_proxy: ProxyFactory) -> FaultProxy:
    return fault_proxy(tcp(memcached))


# --------------------------------------------------------------------------- sans-IO splits


# --------------------------------------------------------------------------- the sync marker


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


# --------------------------------------------------------------------------- retry policy


# --------------------------------------------------------------------------- gevent swarm


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
