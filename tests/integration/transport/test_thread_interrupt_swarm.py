"""Threads interrupted at random moments: the threaded twin of the gevent swarm.

Worker threads run set/get/get_many on a private ``Client``, a shared ``PooledClient`` and a
shared pooled ``HashClient``, through fault proxies that delay some replies, while another
thread raises an ``Interrupt`` (a ``BaseException``, as a signal handler's
``KeyboardInterrupt`` or a timeout library's exception would be) in a random worker at a
random moment: in the pool's checkout, in a send, in a recv, while a reply is parsed, in the
fast paths. ``PyThreadState_SetAsyncExc`` delivers it at the worker's next bytecode boundary,
so it lands wherever that thread happens to be.

What a user would see is checked: no read ever returns a value that is not one this thread
wrote for that key, every pool slot is free at the end, and every client still works.
"""

from __future__ import annotations

import ctypes
import random
import threading
import time
from typing import Any, Dict, List, Optional, Set

import pytest
from support.faultproxy import FaultProxy
from support.helpers import Interrupt, tcp

import pymc

pytestmark = pytest.mark.timeout(60)

WORKERS = 12
KEYS = 3
RUN_SECONDS = 2.5


def _raise_in(thread: threading.Thread) -> None:
    ident = thread.ident
    assert ident is not None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(Interrupt))


class Worker(threading.Thread):
    def __init__(self, me: int, clients: Dict[str, Any], stop: threading.Event) -> None:
        super().__init__(name=f"swarm-{me}", daemon=True)
        self.me = me
        self.clients = clients
        self.stop = stop
        self.wrong: List[str] = []
        self.crashes: List[BaseException] = []
        self.interrupted = 0
        self.ops = 0
        self.busy = False  # the interrupter aims only at a thread inside the loop

    def run(self) -> None:
        # keys[client][i] -> the values a read may return: every value a set was started
        # with (it may have reached the server whatever became of its reply), narrowed to
        # one when a set returned True and nothing later was started.
        allowed: Dict[str, Dict[str, Set[str]]] = {
            name: {f"sw{self.me}-{name}-{i}": set() for i in range(KEYS)} for name in self.clients
        }
        seq = 0
        self.busy = True
        while not self.stop.is_set():
            try:
                while not self.stop.is_set():
                    seq += 1
                    for name, client in self.clients.items():
                        keys = allowed[name]
                        key = f"sw{self.me}-{name}-{seq % KEYS}"
                        value = f"{key}={seq}"
                        keys[key].add(value)
                        if client.set(key, value):
                            keys[key] = {value}
                        self._check(keys, key, client.get(key))
                        got = client.get_many(list(keys))
                        for k, v in got.items():
                            self._check(keys, k, v)
                        self.ops += 3
            except Interrupt:
                self.interrupted += 1
            except pymc.MemcacheError:
                pass  # a timeout behind the delaying proxy: allowed, never a wrong value
            except BaseException as exc:  # anything else is the bug
                self.crashes.append(exc)
                return
        self.busy = False

    def _check(self, keys: Dict[str, Set[str]], key: str, got: Optional[bytes]) -> None:
        if got is None:
            return
        if key not in keys or got.decode() not in keys[key]:
            self.wrong.append(f"{key} -> {got!r}, expected one of {sorted(keys.get(key, ()))}")


def _free(pool: pymc.PooledClient) -> bool:
    return bool(pool.client_pool.stats()["in_use"] == 0)


def test_threads_interrupted_anywhere_never_see_a_wrong_value_nor_lose_a_slot(
    memcached_nodes: List[Any],
) -> None:
    """(make test runs it with each reader, as every test.)"""
    proxies = [FaultProxy(tcp(node)).start() for node in memcached_nodes[:2]]
    try:
        options: Dict[str, Any] = {"timeout": 1.0, "connect_timeout": 1.0}
        pooled = pymc.PooledClient(proxies[0].address, max_pool_size=4, **options)
        hashed = pymc.HashClient(
            [p.address for p in proxies], use_pooling=True, max_pool_size=4,
            retry_attempts=1000, retry_timeout=0, dead_timeout=0, **options,
        )  # fmt: skip
        stop = threading.Event()
        workers = [
            Worker(
                i,
                {
                    "client": pymc.Client(proxies[1].address, **options),
                    "pooled": pooled,
                    "hashed": hashed,
                },
                stop,
            )
            for i in range(WORKERS)
        ]
        for worker in workers:
            worker.start()
        rng = random.Random(19)
        sent = 0
        ends = time.monotonic() + RUN_SECONDS
        while time.monotonic() < ends:
            # Half the time the replies come late (the interrupt then lands in a wait),
            # half the time at once (it lands in Python code: checkout, parse, return).
            for proxy in proxies:
                if rng.random() < 0.1:
                    proxy.set_mode("delay", seconds=0.002) if rng.random() < 0.5 else (
                        proxy.set_mode("pass")
                    )
            target = rng.choice(workers)
            if target.busy:
                _raise_in(target)
                sent += 1
            time.sleep(rng.uniform(0.0002, 0.003))
        for proxy in proxies:
            proxy.set_mode("pass")
        time.sleep(0.2)  # any interrupt still pending is delivered inside the loop
        stop.set()
        for worker in workers:
            worker.join(10)
        assert not any(w.is_alive() for w in workers), "a worker hangs"
        crashes = [exc for w in workers for exc in w.crashes]
        assert not crashes, crashes[:3]
        wrong = [line for w in workers for line in w.wrong]
        assert not wrong, wrong[:5]
        interrupted = sum(w.interrupted for w in workers)
        assert interrupted > 50, f"only {interrupted} of {sent} interrupts landed: test too weak"
        assert sum(w.ops for w in workers) > 500
        # Every slot is back, and every connection that was interrupted mid-command was
        # closed, not reused: the pools still give right answers.
        pools = [pooled, *hashed.clients.values()]
        assert all(_free(p) for p in pools), [p.client_pool.stats() for p in pools]
        assert sum(p.client_pool.stats()["destroyed"] for p in pools) > 0
        for worker in workers:
            for name, client in worker.clients.items():
                key = f"sw{worker.me}-{name}-final"
                assert client.set(key, key) is True
                assert client.get(key) == key.encode()
                assert client.get_many([key]) == {key: key.encode()}
        assert all(_free(p) for p in pools)
    finally:
        for proxy in proxies:
            proxy.stop()
