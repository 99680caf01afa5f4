"""A WSGI-like soak: 64 threads share one pooled HashClient while a node dies and comes back.

What a user of a threaded web app would see is checked: every value read is one its own
thread wrote last for that key (never another key's or another thread's), nothing hangs,
and the connections each server sees stay within the pool's bound.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

import pytest
from support.helpers import stat, tcp
from support.servers import MemcachedProcess

from pymc import HashClient
from pymc.client import server_name

ServerFactory = Callable[..., MemcachedProcess]

THREADS = 64
KEYS_PER_THREAD = 6
RUN_SECONDS = 3.0
KILL_AT, RESTART_AT = 0.9, 1.5
MAX_POOL_SIZE = 4
#: A thread's last command started before the run ended; the slowest one takes a connect
#: timeout plus a read timeout, or a pool wait. Everything is joined within this.
JOIN_WITHIN = 8.0

pytestmark = pytest.mark.timeout(40)


class Sampler(threading.Thread):
    """Reads curr_connections of every running server every 0.1 s."""

    def __init__(self, servers: List[MemcachedProcess]) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.servers = servers
        self.peak: Dict[str, int] = {s.server: 0 for s in servers}
        self.samples: Dict[str, int] = {s.server: 0 for s in servers}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            for server in self.servers:
                try:
                    current = stat(server, "curr_connections")
                except OSError:
                    continue  # the killed node
                self.samples[server.server] += 1
                self.peak[server.server] = max(self.peak[server.server], current)


def test_64_threads_over_a_pooled_hash_client_while_a_node_restarts(
    new_memcached: ServerFactory,
) -> None:
    servers = [new_memcached() for _ in range(3)]
    victim = servers[0]
    # Every stats() below opens one connection of its own, counted here and later alike.
    baseline = {s.server: stat(s, "curr_connections") for s in servers}
    total_before = {s.server: stat(s, "total_connections") for s in servers}
    events: List[Tuple[str, str]] = []
    client = HashClient(
        [tcp(s) for s in servers],
        use_pooling=True,
        max_pool_size=MAX_POOL_SIZE,
        ignore_exc=True,
        retry_attempts=2,
        retry_timeout=0.1,
        dead_timeout=0.5,
        connect_timeout=0.2,
        timeout=0.5,
        on_event=lambda event, node, info: events.append((event, node)),
    )
    stop = threading.Event()
    wrong: List[str] = []
    crashes: List[BaseException] = []
    stats = {"hits": 0, "misses": 0, "failed_sets": 0, "ops": 0}
    stats_lock = threading.Lock()

    def work(me: int) -> None:
        keys = [f"soak-t{me}-k{j}" for j in range(KEYS_PER_THREAD)]
        # The values a read may return for each key: the last one written, and -- after a
        # set that failed (ignore_exc: False), which the server may have run all the same --
        # that one too, until a later set succeeds.
        allowed: Dict[str, Set[str]] = {k: set() for k in keys}
        hits = misses = failed = ops = 0

        def check(key: str, got: Optional[bytes]) -> None:
            nonlocal hits, misses
            if got is None:
                misses += 1
                return
            hits += 1
            value = got.decode()
            if value not in allowed[key]:
                wrong.append(f"thread {me}: {key} = {value!r}, expected one of {allowed[key]}")

        seq = 0
        try:
            while not stop.is_set():
                seq += 1
                key = keys[seq % KEYS_PER_THREAD]
                value = f"t{me}-k{seq % KEYS_PER_THREAD}-n{seq}"
                if client.set(key, value):
                    allowed[key] = {value}
                else:
                    failed += 1
                    allowed[key].add(value)
                check(key, client.get(key))
                ops += 2
                if seq % 4 == 0:
                    got = client.get_many(keys)
                    ops += 1
                    if not set(got) <= set(keys):
                        wrong.append(f"thread {me}: foreign keys {set(got) - set(keys)}")
                    for k in keys:
                        if k in got:
                            check(k, got[k])
        except BaseException as exc:  # with ignore_exc nothing may escape
            crashes.append(exc)
        finally:
            with stats_lock:
                stats["hits"] += hits
                stats["misses"] += misses
                stats["failed_sets"] += failed
                stats["ops"] += ops

    threads = [
        threading.Thread(target=work, args=(i,), name=f"soak-{i}", daemon=True)
        for i in range(THREADS)
    ]
    sampler = Sampler(servers)
    started = time.monotonic()
    for thread in threads:
        thread.start()
    sampler.start()
    try:
        time.sleep(KILL_AT)
        # SIGKILL, as a crash; reaped later (a polling wait here would compete with 64
        # busy threads for the GIL).
        assert victim.proc is not None
        victim.proc.kill()
        time.sleep(RESTART_AT - KILL_AT)
        victim.kill()  # reap
        victim.start()  # the same port
        time.sleep(max(0.0, RUN_SECONDS - (time.monotonic() - started)))
    finally:
        stop.set()
        deadline = time.monotonic() + JOIN_WITHIN
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        sampler.stop.set()
        sampler.join(2)
    hung = [t.name for t in threads if t.is_alive()]
    assert not hung, f"{len(hung)} threads still running {JOIN_WITHIN} s after the end: {hung[:5]}"
    assert not crashes, crashes[:3]
    assert not wrong, wrong[:5]
    assert stats["hits"] > stats["ops"] / 4, stats  # the check was not vacuous

    # The victim failed, was ejected, and came back (probed after dead_timeout).
    name = server_name(tcp(victim))
    assert ("node_ejected", name) in events, events[:10]
    deadline = time.monotonic() + 3
    while name not in client.snapshot.names and time.monotonic() < deadline:
        client.get("soak-probe-trigger")  # a request lets the revival probe run
        time.sleep(0.05)
    assert name in client.snapshot.names, (events, client)
    assert ("node_revived", name) in events
    # And it serves again: a key that lives on it round-trips.
    key = next(
        k for k in (f"after-{i}" for i in range(10_000)) if client.snapshot.node_for(k) == name
    )
    assert client.set(key, "back") and client.get(key) == b"back"

    # Connections stay within the pool's bound. Sampled while running, a server may see one
    # connection more: the revival probe's own, or one the client closed that the server
    # has not yet reaped while its replacement is open. At the end, no more than the bound.
    for server in servers:
        peak = sampler.peak[server.server] - baseline[server.server]
        assert sampler.samples[server.server] > 0
        assert peak <= MAX_POOL_SIZE + 1, (server.server, peak, sampler.peak, baseline)
    time.sleep(0.1)  # let the servers reap connections closed at the very end
    for server in servers:
        now = stat(server, "curr_connections") - baseline[server.server]
        assert now <= MAX_POOL_SIZE, (server.server, now)
    for pool in client.clients.values():
        pool_stats = pool.client_pool.stats()
        assert pool_stats["in_use"] == 0 and pool_stats["idle"] <= MAX_POOL_SIZE, pool_stats
    # No connection per request: each live node opened few connections over thousands of
    # operations (the stats() calls of this test count as well).
    for server in servers[1:]:
        opened = stat(server, "total_connections") - total_before[server.server]
        opened -= sampler.samples[server.server] + 2
        assert opened <= 4 * MAX_POOL_SIZE, (server.server, opened, stats)
    opened = stat(victim, "total_connections")  # since its restart
    assert opened <= sampler.samples[victim.server] + 8 * MAX_POOL_SIZE, (opened, stats)
    client.close()
    peaks = {k: v - baseline[k] for k, v in sampler.peak.items()}
    print(f"soak: {stats}; peak connections over baseline {peaks}; events {events}")
