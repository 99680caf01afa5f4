"""fetch() under ``gevent.monkey.patch_all()``, run in a fresh process by
tests/integration/commands/test_meta.py:

python tests/integration/commands/meta_gevent_scenarios.py NAME \
    '{"servers": [["127.0.0.1", 11211]]}'
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Dict, List

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402

import pymc  # noqa: E402

Args = Dict[str, Any]


def herd(args: Args) -> None:
    """500 greenlets fetch one missing key through one shared client: compute runs once,
    every greenlet gets the value, none waits past lease_ttl, and the hub keeps running
    (a ticker greenlet ticks all along: the waiters yield)."""
    servers = [tuple(s) for s in args["servers"]]
    for kind in ("pooled", "hash"):
        herd_of(kind, servers)


def herd_of(kind: str, servers: List[Any]) -> None:
    if kind == "pooled":
        client: Any = pymc.PooledClient(servers[0], max_pool_size=8, timeout=5)
    else:
        client = pymc.HashClient(servers, use_pooling=True, max_pool_size=8, timeout=5)
    key = f"herd-{kind}-{time.monotonic_ns()}"
    calls: List[int] = []
    ticks: List[int] = []

    def compute() -> bytes:
        calls.append(1)
        gevent.sleep(0.3)
        return b"computed"

    def ticker() -> None:
        while True:
            ticks.append(1)
            gevent.sleep(0.01)

    def call() -> Any:
        started = time.monotonic()
        value = client.fetch(key, compute, 60, lease_ttl=5)
        return value, time.monotonic() - started

    tick = gevent.spawn(ticker)
    workers = [gevent.spawn(call) for _ in range(500)]
    gevent.joinall(workers, timeout=20)
    tick.kill()
    results = [w.value for w in workers]
    assert all(w.successful() for w in workers), [w.exception for w in workers][:3]
    assert len(calls) == 1, calls
    assert all(value == b"computed" for value, _ in results)
    assert max(took for _, took in results) < 5
    assert len(ticks) >= 20, ticks  # the hub ran while 499 greenlets waited
    print(f"{kind}: 500 greenlets, 1 compute, slowest {max(t for _, t in results):.2f} s")
    client.close()


SCENARIOS = {"herd": herd}


def main(argv: List[str]) -> int:
    SCENARIOS[argv[1]](json.loads(argv[2]) if len(argv) > 2 else {})
    print(f"scenario {argv[1]} passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
