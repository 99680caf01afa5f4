"""Pool scenarios under ``gevent.monkey.patch_all()``, each run in a fresh process by
``tests/integration/pool/test_pool_gevent.py``:

    python tests/integration/pool/pool_gevent_scenarios.py NAME '{"server": ["127.0.0.1", 11211]}'

exits 0 when every check held (an assertion's traceback goes to stderr otherwise).
"""

from __future__ import annotations

import json
import random
import sys
import time
from typing import Any, Callable, Dict, List

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402
import gevent.event  # noqa: E402

import pymc  # noqa: E402

Args = Dict[str, Any]


def swarm(args: Args) -> None:
    """Hundreds of greenlets share a PooledClient(max_pool_size=4) under random short
    gevent.Timeouts: whatever each Timeout interrupts, no slot is lost."""
    server = (args["server"][0], int(args["server"][1]))
    client = pymc.PooledClient(server, max_pool_size=4, pool_timeout=5, timeout=3)
    assert client.set("k", b"v")
    rng = random.Random(args.get("seed", 1))
    outcomes = {"ok": 0, "timeout": 0}
    count = args.get("greenlets", 400)
    # The Timeouts span a few waves of queued requests as this machine runs them now, so
    # some land before, during and after each command whatever the load (a fixed 30 ms span
    # timed out every request on a loaded 2-core machine, leaving nothing succeeded).
    start = time.monotonic()
    for _ in range(count):
        client.get("k")
    span = max(0.1, 6 * (time.monotonic() - start))

    def worker(i: int) -> None:
        for j in range(5):
            try:
                with gevent.Timeout(rng.uniform(0.0, span)):
                    if j % 2:
                        assert client.get("k") == b"v"
                    else:
                        assert client.set(f"w{i}", f"{j}")
                outcomes["ok"] += 1
            except gevent.Timeout:
                outcomes["timeout"] += 1
            gevent.sleep(0)

    greenlets = [gevent.spawn(worker, i) for i in range(count)]
    gevent.joinall(greenlets, timeout=60, raise_error=True)
    assert all(g.dead for g in greenlets), "greenlets still running"
    print(f"outcomes: {outcomes} (timeouts up to {span:.3f} s)")
    assert outcomes["timeout"] > 50 and outcomes["ok"] > 50, outcomes
    s = client.client_pool.stats()
    assert s["in_use"] == 0 and s["waiting"] == 0 and s["idle"] <= 4, s
    start = time.monotonic()
    with gevent.Timeout(1):
        assert client.get("k") == b"v"
    assert time.monotonic() - start < 0.5
    held = [client.client_pool.get(timeout=0.5) for _ in range(4)]  # all 4 slots are there
    for conn in held:
        client.client_pool.release(conn)


def lock_held(args: Args) -> None:
    """A sibling greenlet holds the pool's lock while the gevent.Timeout of a caller that
    wants it (to give a connection back, or to register the one it made) fires."""
    locks: List[Any] = []

    def generator() -> Any:
        import threading

        lock = threading.Lock()  # gevent's, under patch_all
        locks.append(lock)
        return lock

    def hold_all(seconds: float, started: gevent.event.Event) -> None:
        taken = [lock for lock in list(locks) if lock.acquire(False)]
        started.set()
        gevent.sleep(seconds)
        for lock in taken:
            lock.release()

    def check(pool: pymc.ObjectPool[Any], action: Callable[[], Any], idle: int) -> None:
        started = gevent.event.Event()
        holder = gevent.spawn(hold_all, 0.3, started)
        assert started.wait(2)
        timeout = gevent.Timeout(0.05)
        try:
            with timeout:
                action()
            raise AssertionError("the action did not wait for the held lock")
        except gevent.Timeout as exc:
            assert exc is timeout
        holder.join(2)
        s = pool.stats()
        assert s["in_use"] == 0 and s["idle"] == idle, s
        obj = pool.get(timeout=0.1)  # the one slot is there
        pool.release(obj)

    removed: List[Any] = []
    pool: pymc.ObjectPool[Any] = pymc.ObjectPool(
        object, after_remove=removed.append, max_size=1, timeout=1, lock_generator=generator
    )
    obj = pool.get()
    check(pool, lambda: pool.release(obj), idle=1)
    obj = pool.get()
    check(pool, lambda: pool.destroy(obj), idle=0)
    assert removed == [obj]

    started_holding: List[gevent.Greenlet] = []

    def make() -> Any:  # while the object is made, a sibling takes the pool's lock
        event = gevent.event.Event()
        started_holding.append(gevent.spawn(hold_all, 0.3, event))
        assert event.wait(2)
        return object()

    locks.clear()
    pool2: pymc.ObjectPool[Any] = pymc.ObjectPool(
        make, max_size=1, timeout=1, lock_generator=generator
    )
    timeout = gevent.Timeout(0.05)
    try:
        with timeout:
            pool2.get()
        raise AssertionError("get did not wait for the held lock")
    except gevent.Timeout as exc:
        assert exc is timeout
    started_holding[0].join(2)
    s = pool2.stats()
    assert s["in_use"] == 0 and s["destroyed"] == 1, s


SCENARIOS = {"swarm": swarm, "lock_held": lock_held}


def main(argv: List[str]) -> int:
    SCENARIOS[argv[1]](json.loads(argv[2]) if len(argv) > 2 else {})
    print(f"scenario {argv[1]} passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
