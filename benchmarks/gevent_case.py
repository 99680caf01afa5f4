"""The gevent cases, run in a subprocess that calls ``gevent.monkey.patch_all()`` first.

``python -m benchmarks.gevent_case SERVER GREENLETS SECONDS ROUNDS`` prints one JSON object:
``{client: {"ops_per_sec": ..., "p50_us": ..., "p99_us": ...}}`` for pymc and pymemcache,
each a pooled client shared by all the greenlets. (pylibmc is left out: its C calls block
the gevent hub, so it is no peer here.)
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any, Callable, Dict, List, Tuple  # noqa: E402

import gevent  # noqa: E402

VALUE = b"v" * 100


def run(get: Callable[[str], Any], greenlets: int, seconds: float) -> Tuple[float, List[int]]:
    samples: List[int] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(seconds * 1e9)

    def worker() -> None:
        now = clock()
        while now < deadline:
            get("bench:one")
            after = clock()
            samples.append(after - now)
            now = after

    start = clock()
    gevent.joinall([gevent.spawn(worker) for _ in range(greenlets)])
    return len(samples) / ((clock() - start) / 1e9), samples


def main() -> None:
    import resource

    from pymemcache.client.base import PooledClient as PymemcachePooled

    # Each client may open a connection per greenlet: allow it.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))

    import pymc

    host, _, port = sys.argv[1].rpartition(":")
    greenlets, seconds, rounds = int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    address = (host, int(port))
    clients: Dict[str, Any] = {
        "pymc": pymc.PooledClient(address),
        "pymemcache": PymemcachePooled(address, no_delay=True, default_noreply=False),
    }
    clients["pymc"].set("bench:one", VALUE)
    best: Dict[str, Tuple[float, List[int]]] = {}
    for _ in range(rounds):
        for name, client in clients.items():
            assert client.get("bench:one") == VALUE
            rate, samples = run(client.get, greenlets, seconds)
            if rate > best.get(name, (0.0, []))[0]:
                best[name] = (rate, samples)
    out = {}
    for name, (rate, samples) in best.items():
        samples.sort()
        out[name] = {
            "ops_per_sec": rate,
            "p50_us": samples[len(samples) // 2] / 1000,
            "p99_us": samples[int(len(samples) * 0.99)] / 1000,
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
