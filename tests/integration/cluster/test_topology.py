"""HashClient's node-set changes: how locators are built, weighted ketama, fork safety.

* A node-set snapshot builds its locator once, from all its nodes (and weights), and never
  while holding the lock that requests take to report successes and failures.
* ``hasher=functools.partial(KetamaHash, weights=...)`` places keys as pylibmc's weighted
  ketama does, before and after nodes leave.
* A child forked while a probe of a dead node is running can still probe and revive it.
"""

from __future__ import annotations

import functools
import json
import os
import select
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import pylibmc
import pytest
from support.faultproxy import FaultProxy
from support.helpers import tcp, wait_until
from support.servers import MemcachedProcess
from unit.cluster.test_locators import CountingKetama, fake_nodes, pylibmc_nodes

from pymc import HashClient, KetamaHash, MemcacheError, RendezvousHash

ProxyFactory = Callable[[Tuple[str, int]], FaultProxy]

pytestmark = pytest.mark.timeout(30)

FAILOVER: Dict[str, Any] = dict(
    retry_timeout=0, retry_attempts=1, dead_timeout=0.2, connect_timeout=0.5, timeout=1.0
)


def key_on(client: HashClient, name: str, limit: int = 100000) -> str:
    for i in range(limit):
        key = f"topo-{uuid.uuid4().hex[:6]}-{i}"
        if client.snapshot.node_for(key) == name:
            return key
    raise AssertionError(f"no key found for {name}")


# -- the locator is built once per snapshot, outside the request lock ----------------------------


def test_ejection_and_revival_build_one_locator_each_outside_the_request_lock(
    memcached: MemcachedProcess, fault_proxy: ProxyFactory
) -> None:
    proxy = fault_proxy(tcp(memcached))
    # 60 nodes: one behind a proxy that will fail, one real, and 58 that are never asked.
    servers = [proxy.address, tcp(memcached), *fake_nodes(58)]
    client = HashClient(servers, hasher=CountingKetama, **FAILOVER)
    try:
        key = key_on(client, proxy.server)
        assert client.set(key, b"v") is True

        CountingKetama.reset(client)
        proxy.set_mode("reset")
        with pytest.raises(MemcacheError):
            client.get(key)
        assert proxy.server not in client.snapshot.names
        assert CountingKetama.rings() == 1, "ejection builds one locator, not one a node"
        assert CountingKetama.locked_during_build == [False]

        other = key_on(client, memcached.server)  # a request that reaches a live node
        CountingKetama.reset(client)
        proxy.set_mode("pass")
        deadline = time.monotonic() + 5.0
        while proxy.server not in client.snapshot.names:
            assert time.monotonic() < deadline, "never revived"
            client.get(other)  # requests are what start the probe
            time.sleep(0.02)
        assert CountingKetama.rings() == 1, "revival builds one locator, not one a node"
        assert CountingKetama.locked_during_build == [False]
        assert client.get(key) == b"v"
    finally:
        CountingKetama.reset()
        client.close()


class PymemcacheStyleHasher:
    """Only what pymemcache's HashClient uses: a no-argument constructor, add_node,
    remove_node and get_node."""

    made = 0

    def __init__(self) -> None:
        PymemcacheStyleHasher.made += 1
        self.inner = RendezvousHash()

    def add_node(self, node: str) -> None:
        self.inner.add_node(node)

    def remove_node(self, node: str) -> None:
        self.inner.remove_node(node)

    def get_node(self, key: str) -> Optional[str]:
        return self.inner.get_node(key)


def test_a_pymemcache_style_hasher_still_works(memcached_nodes: List[MemcachedProcess]) -> None:
    PymemcacheStyleHasher.made = 0
    client = HashClient([tcp(s) for s in memcached_nodes], hasher=PymemcacheStyleHasher)
    try:
        assert PymemcacheStyleHasher.made == 1
        reference = RendezvousHash([s.server for s in memcached_nodes])
        keys = [f"topo-style-{i}" for i in range(200)]
        assert [client.snapshot.node_for(k) for k in keys] == [reference.get_node(k) for k in keys]
        assert client.set_many({k: k.encode() for k in keys}) == []
        assert client.get_many(keys) == {k: k.encode() for k in keys}
        client.delete_many(keys)  # the servers are shared: leave no items behind
    finally:
        client.close()


# -- weighted ketama from HashClient --------------------------------------------------------------


def test_weighted_ketama_through_hash_client_on_real_servers(
    memcached_nodes: List[MemcachedProcess],
) -> None:
    names = [s.server for s in memcached_nodes]
    weights = {names[0]: 4, names[2]: 2, names[3]: 3}
    client = HashClient(
        [tcp(s) for s in memcached_nodes], hasher=functools.partial(KetamaHash, weights=weights)
    )
    specs = [f"{n}:{weights.get(n, 1)}" for n in names]
    mc = pylibmc.Client(specs, behaviors={"ketama_weighted": True})
    try:
        t = uuid.uuid4().hex[:8]
        ours = {f"{t}-w-{i}": f"v{i}".encode() for i in range(2000)}
        assert client.set_many(ours) == []
        assert mc.get_multi(list(ours)) == ours  # pylibmc finds every key where pymc put it
        theirs = {f"{t}-l-{i}": f"l{i}".encode() for i in range(2000)}
        assert mc.set_multi(theirs) == []
        assert client.get_many(list(theirs)) == theirs
        client.delete_many([*ours, *theirs])  # the servers are shared: leave no items behind
    finally:
        mc.disconnect_all()
        client.close()


def test_weighted_ketama_survives_ejection_and_removal_of_a_weighted_node(
    memcached: MemcachedProcess, fault_proxy: ProxyFactory
) -> None:
    proxy = fault_proxy(tcp(memcached))
    others = fake_nodes(3)
    names = [proxy.server, *(f"{h}:{p}" for h, p in others)]
    weights = {names[0]: 3, names[1]: 2, names[3]: 4}
    client = HashClient(
        [proxy.address, *others], hasher=functools.partial(KetamaHash, weights=weights), **FAILOVER
    )
    try:
        key = key_on(client, proxy.server)
        proxy.set_mode("reset")
        with pytest.raises(MemcacheError):
            client.get(key)
        assert proxy.server not in client.snapshot.names  # ejected: the weights still apply
        live = names[1:]
        keys = [f"left-{i}" for i in range(3000)]
        expected = KetamaHash(live, {n: w for n, w in weights.items() if n in live})
        assert [client.snapshot.node_for(k) for k in keys] == [expected.get_node(k) for k in keys]
        assert [client.snapshot.node_for(k) for k in keys] == pylibmc_nodes(live, weights, keys)

        client.remove_server(*others[2])
        assert client.snapshot.locator.weights == {names[1]: 2, names[2]: 1}
    finally:
        client.close()


# -- fork while a probe runs ----------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_child_forked_during_a_probe_still_probes_and_revives_the_node(
    memcached: MemcachedProcess, fault_proxy: ProxyFactory
) -> None:
    proxy = fault_proxy(tcp(memcached))
    # The probe's version command stalls for up to `timeout` seconds in the parent.
    client = HashClient([proxy.address], ignore_exc=False, **{**FAILOVER, "timeout": 3.0})
    name = proxy.server
    assert client.set("k", b"v") is True
    proxy.set_mode("reset")
    with pytest.raises(MemcacheError):
        client.get("k")
    assert name not in client.snapshot.names

    proxy.set_mode("stall")  # the probe's version command gets no answer
    time.sleep(FAILOVER["dead_timeout"] + 0.05)

    def probe_running() -> bool:
        try:
            client.get("k")  # all nodes down: raises, and starts the probe
        except MemcacheError:
            pass
        return bool(client._health.probe_lock.locked())

    wait_until(probe_running, timeout=3.0, what="a probe in progress")
    time.sleep(0.3)  # its version request went through and the reply was dropped
    assert client._health.probe_lock.locked(), "the probe must still be waiting when we fork"
    proxy.set_mode("pass")  # new probes get answers; the parent's keeps waiting (3 s)

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, always leave with os._exit
        status = 1
        try:
            os.close(read_end)
            result: Dict[str, Any] = {"revived": False, "errors": []}
            deadline = time.monotonic() + 4.0
            while time.monotonic() < deadline:
                try:
                    value = client.get("k")
                    if name in client.snapshot.names:
                        result = {"revived": True, "value": repr(value), "errors": []}
                        break
                except MemcacheError as exc:
                    result["errors"] = [repr(exc)]
                time.sleep(0.05)
            os.write(write_end, json.dumps(result).encode())
            status = 0
        finally:
            os._exit(status)

    os.close(write_end)
    try:
        chunks = []
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 0.1)
            if ready:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        report = json.loads(b"".join(chunks) or b"{}")
    finally:
        os.close(read_end)
        end = time.monotonic() + 5.0
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done or time.monotonic() > end:
                break
            time.sleep(0.02)
        if not done:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        client.close()
    assert report.get("revived") is True, report
    assert report["value"] == repr(b"v")
    # The parent's own probe, interrupted by nothing, also ends and revives the node.
    deadline = time.monotonic() + 6.0
    while name not in client.snapshot.names:
        assert time.monotonic() < deadline
        try:
            client.get("k")
        except MemcacheError:
            pass
        time.sleep(0.05)


# -- the fork lock reset is race-free -------------------------------------------------------------


def test_locks_are_usable_in_a_child_forked_while_other_threads_hold_them() -> None:
    client = HashClient(fake_nodes(3))
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with client._change_lock, client._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert held.wait(5)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_end)
            outcome: Dict[str, Any] = {}
            # Every change still works: each takes the locks the holder had at fork time.
            done = threading.Event()

            def change() -> None:
                client.add_server("127.0.0.1", 42000)
                client.remove_server("127.0.0.1", 40000)
                done.set()

            worker = threading.Thread(target=change, daemon=True)
            worker.start()
            outcome["changed"] = done.wait(3)
            outcome["names"] = sorted(client.snapshot.names)
            os.write(write_end, json.dumps(outcome).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        chunks = []
        deadline = time.monotonic() + 8.0
        while time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 0.1)
            if ready:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        report = json.loads(b"".join(chunks) or b"{}")
    finally:
        release.set()
        os.close(read_end)
        end = time.monotonic() + 5.0
        while True:
            reaped, _ = os.waitpid(pid, os.WNOHANG)
            if reaped or time.monotonic() > end:
                break
            time.sleep(0.02)
        if not reaped:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        holder.join(5)
        client.close()
    assert report.get("changed") is True, report
    assert report["names"] == ["127.0.0.1:40001", "127.0.0.1:40002", "127.0.0.1:42000"]
