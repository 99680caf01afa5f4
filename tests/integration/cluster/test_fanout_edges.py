"""Second-round attacks on HashClient's fan-out (issue 18, items 11, 13, 14): replies that
stall half way, connections that owe a sync marker, replies in every order, many fds."""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.helpers import tcp
from support.servers import MemcachedProcess

from pymc import HashClient, MemcacheServerRefusedError, MemcacheTimeoutError


def pieces_late(first_at: int, rest_at: int) -> Callable[[bytes], List[bytes]]:
    """A rewrite that sends the first 10 bytes of each reply chunk ``first_at`` ticks late
    and the rest ``rest_at`` ticks late (ticks: the mode's ``seconds``)."""

    def rewrite(chunk: bytes) -> List[bytes]:
        return [b""] * first_at + [chunk[:10]] + [b""] * (rest_at - first_at - 1) + [chunk[10:]]

    return rewrite


@pytest.mark.timeout(30)
@pytest.mark.parametrize("ignore_exc", [False, True])
def test_a_half_reply_after_noreply_writes_ends_by_the_fan_outs_deadline(
    memcached_nodes: List[MemcachedProcess],
    fault_proxy: Callable[[Tuple[str, int]], FaultProxy],
    ignore_exc: bool,
) -> None:
    """After noreply writes every connection owes a sync marker; a node that sends part of
    its reply late, then stalls, must not hold the fan-out past its one deadline (it did:
    its reads restarted the timeout once its first bytes came)."""
    fast, slow = (fault_proxy(tcp(node)) for node in memcached_nodes[:2])
    client = HashClient(
        [fast.address, slow.address],
        timeout=1.0,
        retry_attempts=100,
        retry_timeout=0,
        ignore_exc=ignore_exc,
    )
    keys = [f"half-{i}" for i in range(40)]
    assert client.set_many({k: b"old" for k in keys}) == []
    client.set_many({k: k.encode() for k in keys}, noreply=True)
    on_fast = [k for k in keys if client.snapshot.node_for(k) == fast.server]
    assert on_fast and len(on_fast) < len(keys)
    slow.set_mode("rewrite", fn=pieces_late(9, 60), seconds=0.1)  # 0.9 s, then 6 s
    start = time.monotonic()
    if ignore_exc:
        assert client.get_many(keys) == {k: k.encode() for k in on_fast}
    else:
        with pytest.raises(MemcacheTimeoutError):
            client.get_many(keys)
    assert time.monotonic() - start < 1.6  # the deadline is 1.0 s; it took 1.9 s
    slow.set_mode("pass")
    assert client.get_many(keys) == {k: k.encode() for k in keys}


def record_events(seen: List[str]) -> Callable[[str, str, Dict[str, Any]], None]:
    return lambda event, node, info: seen.append(event)


REFUSED = b"ERROR Too many open connections\r\n"

PIPELINES: Dict[str, Callable[[HashClient, List[str]], Any]] = {
    "set_many": lambda c, keys: c.set_many({k: b"v" for k in keys}),
    "delete_many": lambda c, keys: c.delete_many(keys),
    "touch_many": lambda c, keys: c.touch_many(keys, 10),
}


@pytest.mark.parametrize("command", sorted(PIPELINES))
def test_a_refused_connection_counts_against_the_node_in_a_pipeline(
    memcached: MemcachedProcess,
    fault_proxy: Callable[[Tuple[str, int]], FaultProxy],
    command: str,
) -> None:
    """``ERROR Too many open connections`` (memcached hangs up after it) is a failure of the
    connection in set_many/delete_many/touch_many too, as in get_many and a single set: it
    counts, and ejects the node after retry_attempts (it was only raised, never counted)."""
    proxy = fault_proxy(tcp(memcached))
    seen: List[str] = []
    client = HashClient(
        [proxy.address], retry_attempts=2, retry_timeout=0, on_event=record_events(seen)
    )
    keys = ["refused-a", "refused-b"]
    assert client.set_many({k: b"v" for k in keys}) == []
    proxy.set_mode("rewrite", fn=lambda chunk: REFUSED)
    for _ in range(2):
        with pytest.raises(MemcacheServerRefusedError):
            PIPELINES[command](client, keys)
    assert seen.count("node_failed") == 2 and seen.count("node_ejected") == 1, seen


NOREPLY_WRITES: Dict[str, Callable[[HashClient], Any]] = {
    "set": lambda c: c.set("nr-a", b"v", noreply=True),
    "delete": lambda c: c.delete("nr-a", True),
    "set_many": lambda c: c.set_many({"nr-a": b"v", "nr-b": b"v"}, noreply=True),
    "delete_many": lambda c: c.delete_many(["nr-a", "nr-b"], noreply=True),
    "touch_many": lambda c: c.touch_many(["nr-a", "nr-b"], 10, noreply=True),
}


@pytest.mark.parametrize("write", sorted(NOREPLY_WRITES))
def test_a_noreply_write_is_no_proof_that_a_failing_node_recovered(
    memcached: MemcachedProcess,
    fault_proxy: Callable[[Tuple[str, int]], FaultProxy],
    write: str,
) -> None:
    """A noreply command reads nothing: that it went out says nothing of the node. A node
    that refuses every connection (``ERROR Too many open connections``) while reads and
    noreply writes alternate is ejected after retry_attempts failures (the noreply writes
    cleared its failures, so it never was)."""
    proxy = fault_proxy(tcp(memcached))
    seen: List[str] = []
    client = HashClient(
        [proxy.address], retry_attempts=2, retry_timeout=0, on_event=record_events(seen)
    )
    proxy.set_mode("rewrite", fn=lambda chunk: REFUSED)
    for _ in range(2):
        NOREPLY_WRITES[write](client)
        with pytest.raises(MemcacheServerRefusedError):
            client.get("nr-a")
    assert seen.count("node_failed") == 2 and seen.count("node_ejected") == 1, seen


@pytest.mark.timeout(30)
def test_the_sync_markers_answer_read_in_steps_byte_by_byte(
    memcached_nodes: List[MemcachedProcess],
    fault_proxy: Callable[[Tuple[str, int]], FaultProxy],
) -> None:
    """The marker's answer and the reply behind it, split at every byte on two nodes whose
    replies interleave: every value right, and the connections in step after."""
    proxies = [fault_proxy(tcp(node)) for node in memcached_nodes[:2]]
    client = HashClient([p.address for p in proxies], timeout=5, retry_attempts=100)
    keys = [f"drip-{i}" for i in range(12)]
    for round_ in range(2):
        values = {k: f"{k}/{round_}".encode() for k in keys}
        client.set_many(values, noreply=True)
        for proxy in proxies:
            proxy.set_mode(
                "rewrite", fn=lambda c: [c[i : i + 1] for i in range(len(c))], seconds=0.001
            )
        assert client.get_many(keys) == values
        for proxy in proxies:
            proxy.set_mode("pass")
        assert client.get_many(keys) == values
