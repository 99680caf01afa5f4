"""dogpile.cache over pymc under ``gevent.monkey.patch_all()``, run in a fresh process by
``tests/integration/contrib/test_dogpile.py``:

    python tests/integration/contrib/contrib_dogpile_gevent_scenarios.py NAME \
    '{"server": "127.0.0.1:11211"}'

exits 0 when every check held (an assertion's traceback goes to stderr otherwise).
"""

from __future__ import annotations

import json
import random
import sys
from typing import Any, Dict, List

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402
from dogpile.cache import make_region  # noqa: E402
from dogpile.cache.api import NO_VALUE  # noqa: E402

import pymc  # noqa: E402
from pymc.contrib.dogpile import PymcBackend  # noqa: E402

Args = Dict[str, Any]


def herd(args: Args) -> None:
    """Hundreds of greenlets ask for a few missing keys at once, through regions with the
    distributed lock (lock_timeout=0: a lock nobody holds would stay forever), while random
    gevent.Timeouts interrupt some of them anywhere (waiting for the lock, holding it,
    creating, releasing). Afterwards: every answer is its key's value, no lock is left,
    no pool slot is lost, and the regions still work."""
    rng = random.Random(args.get("seed", 7))
    regions = [
        make_region().configure(
            "pymc",
            arguments={
                "url": args["server"],
                "distributed_lock": True,
                "max_pool_size": 3,
                "pool_timeout": 5,
                "timeout": 3,
            },
        )
        for _ in range(3)  # three "processes"
    ]
    keys = [f"herd-{i}" for i in range(4)]
    created: Dict[str, int] = dict.fromkeys(keys, 0)
    outcomes = {"ok": 0, "timeout": 0}
    wrong: List[Any] = []

    def creator_for(key: str) -> Any:
        def create() -> str:
            created[key] += 1
            gevent.sleep(0.005)
            return f"value of {key}"

        return create

    def worker(i: int) -> None:
        region = regions[i % len(regions)]
        for _ in range(4):
            key = rng.choice(keys)
            timeout = gevent.Timeout(rng.uniform(0.0005, 0.02)) if rng.random() < 0.4 else None
            try:
                if timeout is not None:
                    timeout.start()
                value = region.get_or_create(key, creator_for(key))
                if value != f"value of {key}":
                    wrong.append((key, value))
                outcomes["ok"] += 1
            except gevent.Timeout as exc:
                if exc is not timeout:
                    raise
                outcomes["timeout"] += 1
            finally:
                if timeout is not None:
                    timeout.close()
            gevent.sleep(rng.uniform(0, 0.003))

    greenlets = [gevent.spawn(worker, i) for i in range(int(args.get("greenlets", 300)))]
    join = float(args.get("join", 60))
    gevent.joinall(greenlets, timeout=join, raise_error=True)
    if not all(g.dead for g in greenlets):
        client = regions[0].backend.client
        print({k: client.meta_get("_lock" + k, return_ttl=True) for k in keys})
        raise AssertionError(f"greenlets still waiting after {join} s: a lock was left taken")
    assert not wrong, wrong[:5]
    assert outcomes["ok"] and outcomes["timeout"], outcomes
    for region in regions:
        backend = region.backend
        assert isinstance(backend, PymcBackend)
        client = backend.client
        assert isinstance(client, pymc.HashClient)
        for pool in client.clients.values():
            stats = pool.client_pool.stats()
            assert stats["in_use"] == 0, stats
        for key in keys:
            mutex = backend.get_mutex(key)
            assert mutex is not None and not mutex.locked(), f"{key}'s lock was left behind"
            assert mutex.acquire(False)
            mutex.release()
        for key in keys:
            assert region.get(key) in (NO_VALUE, f"value of {key}")
    print(f"outcomes {outcomes}, creator calls {created}")


SCENARIOS = {"herd": herd}


def main(argv: List[str]) -> int:
    SCENARIOS[argv[1]](json.loads(argv[2]) if len(argv) > 2 else {})
    print(f"scenario {argv[1]} passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
