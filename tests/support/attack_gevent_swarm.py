"""A gevent swarm over HashClient fan-outs with gevent.Timeout landing at random points.

    python tests/support/attack_gevent_swarm.py '{"servers": [[host, port], ...], "seed": 1}'

Run by tests/integration/transport/test_gevent_swarm.py in a fresh process (patch_all first). Exits
0 when no read ever returned a wrong value and every pool is back to 0 connections in use; prints
what it saw.
"""

from __future__ import annotations

import json
import random
import sys
import time
from typing import Any, Dict, List


def main() -> int:
    from gevent import monkey

    monkey.patch_all()
    import gevent

    from pymc import HashClient

    args = json.loads(sys.argv[1])
    rng = random.Random(args.get("seed", 1))
    servers = [(h, int(p)) for h, p in args["servers"]]
    client = HashClient(
        servers,
        use_pooling=True,
        max_pool_size=4,
        timeout=3,
        connect_timeout=3,
        pool_timeout=3,
        retry_attempts=10**6,
        retry_timeout=0,
    )
    keys = [f"swarm-{i}" for i in range(300)]

    def value(key: str, size: int) -> bytes:
        return (key.encode() + b"|") * size

    sizes = {k: rng.choice([1, 50, 2000]) for k in keys}
    assert client.set_many({k: value(k, sizes[k]) for k in keys}) == []
    wrong: List[Any] = []
    errors: Dict[str, int] = {}
    interrupted = [0]
    done = [0]
    deadline = time.monotonic() + float(args.get("seconds", 6))

    def worker(seed: int) -> None:
        r = random.Random(seed)
        while time.monotonic() < deadline:
            batch = r.sample(keys, r.randint(1, 120))
            op = r.random()
            try:
                with gevent.Timeout(r.uniform(0, float(args.get("tmax", 0.03)))):
                    if op < 0.5:
                        got = client.get_many(batch)
                        for k, v in got.items():
                            if v != value(k, sizes[k]):
                                wrong.append(("get_many", k, v[:40]))
                    elif op < 0.7:
                        client.set_many({k: value(k, sizes[k]) for k in batch})
                    elif op < 0.8:
                        client.set_many({k: value(k, sizes[k]) for k in batch}, noreply=True)
                    elif op < 0.9:
                        k = batch[0]
                        v = client.get(k)
                        if v is not None and v != value(k, sizes[k]):
                            wrong.append(("get", k, v[:40]))
                    else:
                        got = client.gets_many(batch)
                        for k, (v, _) in got.items():
                            if v != value(k, sizes[k]):
                                wrong.append(("gets_many", k, v[:40]))
                done[0] += 1
            except gevent.Timeout:
                interrupted[0] += 1
            except Exception as exc:
                name = type(exc).__name__ + ": " + str(exc)[:120]
                errors[name] = errors.get(name, 0) + 1
            gevent.sleep(0)

    greenlets = [gevent.spawn(worker, i) for i in range(24)]
    gevent.joinall(greenlets, timeout=float(args.get("seconds", 6)) + 20)
    alive = sum(1 for g in greenlets if not g.dead)
    gevent.sleep(0.1)
    stats = {name: pool.client_pool.stats() for name, pool in client.clients.items()}
    # everything must still read right afterwards
    final = client.get_many(keys)
    final_wrong = [k for k, v in final.items() if v != value(k, sizes[k])]
    report = {
        "done": done[0],
        "interrupted": interrupted[0],
        "errors": errors,
        "wrong": wrong[:10],
        "n_wrong": len(wrong),
        "alive": alive,
        "in_use": {n: s["in_use"] for n, s in stats.items()},
        "final_missing": len(keys) - len(final),
        "final_wrong": final_wrong[:10],
    }
    print(json.dumps(report))
    ok = (
        not wrong
        and not alive
        and all(s["in_use"] == 0 for s in stats.values())
        and not final_wrong
        and len(final) == len(keys)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
