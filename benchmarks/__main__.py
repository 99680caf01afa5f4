"""``make bench``: pymc against pymemcache, pylibmc and a bare socket, in one run.

Every client runs every case on the same servers with the same keys and values. Rounds are
interleaved (pymc, peer, peer, ... then again) so that drift in the machine's speed hits
every client alike, and each case reports the best round. Figures are relative: compare the
ratios, not the absolute numbers, between machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from .servers import Address, LocalCluster

VALUE = b"v" * 100
Op = Callable[[], Any]


@dataclass
class Result:
    case: str
    client: str
    ops_per_sec: float
    p50_us: float
    p99_us: float


def _bare_get(address: Address, key: bytes) -> Op:
    """The floor: the same single-key exchange with no client library at all."""
    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = b"get " + key + b"\r\n"

    def op() -> bytes:
        sock.sendall(request)
        data = sock.recv(65536)
        while not data.endswith(b"END\r\n"):
            data += sock.recv(65536)
        return data

    return op


def _bare_set(address: Address, key: bytes) -> Op:
    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = b"set %s 0 0 %d\r\n%s\r\n" % (key, len(VALUE), VALUE)

    def op() -> bytes:
        sock.sendall(request)
        data = sock.recv(65536)
        while not data.endswith(b"\r\n"):
            data += sock.recv(65536)
        return data

    return op


def _clients(address: Address) -> Dict[str, Any]:
    import pylibmc
    from pymemcache.client.base import Client as PymemcacheClient

    import pymc

    return {
        "pymc": pymc.Client(address),
        "pymemcache": PymemcacheClient(address, no_delay=True, default_noreply=False),
        "pylibmc": pylibmc.Client(
            ["%s:%d" % address], binary=False, behaviors={"tcp_nodelay": True}
        ),
    }


def single_server_cases(address: Address) -> Dict[str, Dict[str, Op]]:
    """``{case: {client: op}}`` for the single-server cases."""
    clients = _clients(address)
    keys100 = [f"bench:many:{i}" for i in range(100)]
    for c in clients.values():
        c.set("bench:one", VALUE)
        for k in keys100:
            c.set(k, VALUE)
    cases: Dict[str, Dict[str, Op]] = {
        "Client.get": {name: (lambda c=c: c.get("bench:one")) for name, c in clients.items()},
        "Client.set": {
            name: (lambda c=c: c.set("bench:one", VALUE)) for name, c in clients.items()
        },
        "Client.get_many(100)": {
            "pymc": lambda c=clients["pymc"]: c.get_many(keys100),
            "pymemcache": lambda c=clients["pymemcache"]: c.get_many(keys100),
            "pylibmc": lambda c=clients["pylibmc"]: c.get_multi(keys100),
        },
    }
    cases.update(pooled_cases(address))
    cases["Client.get"]["bare socket"] = _bare_get(address, b"bench:one")
    cases["Client.set"]["bare socket"] = _bare_set(address, b"bench:one")
    return cases


def pooled_cases(address: Address) -> Dict[str, Dict[str, Any]]:
    """PooledClient.get alone and under 4, 16 and 64 threads."""
    import pylibmc
    from pymemcache.client.base import PooledClient as PymemcachePooled

    import pymc

    pymc_pool = pymc.PooledClient(address)
    peer_pool = PymemcachePooled(address, no_delay=True, default_noreply=False)
    libmc_pool = pylibmc.ClientPool(
        pylibmc.Client(["%s:%d" % address], binary=False, behaviors={"tcp_nodelay": True}), 64
    )

    def libmc_get() -> Any:
        with libmc_pool.reserve() as mc:
            return mc.get("bench:one")

    ops: Dict[str, Op] = {
        "pymc": lambda: pymc_pool.get("bench:one"),
        "pymemcache": lambda: peer_pool.get("bench:one"),
        "pylibmc": libmc_get,
    }
    cases: Dict[str, Dict[str, Any]] = {"PooledClient.get": dict(ops)}
    for threads in (4, 16, 64):
        cases[f"PooledClient.get x{threads}"] = {n: Threaded(op, threads) for n, op in ops.items()}
    return cases


def _check(cases: Dict[str, Dict[str, Op]]) -> None:
    """Refuse to time a client that returns the wrong thing."""
    for name, op in cases["Client.get"].items():
        got = op()
        assert got == VALUE or (name == "bare socket" and VALUE in got), (name, got)
    for name, op in cases["Client.get_many(100)"].items():
        assert len(op()) == 100, name


@dataclass
class Threaded:
    """An op run by ``threads`` threads at once; the case reports their total ops/s."""

    op: Op
    threads: int


def measure_threaded(case: Threaded, seconds: float) -> Tuple[float, List[int]]:
    samples: List[List[int]] = []
    barrier = threading.Barrier(case.threads)

    def worker() -> None:
        barrier.wait()
        samples.append(measure(case.op, seconds)[1])

    threads = [threading.Thread(target=worker) for _ in range(case.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [x for s in samples for x in s]
    return len(flat) / seconds, flat


def measure(op: Op, seconds: float) -> Tuple[float, List[int]]:
    """Run ``op`` for about ``seconds``; return ops/s and each op's latency in ns."""
    clock = time.perf_counter_ns
    samples: List[int] = []
    append = samples.append
    deadline = clock() + int(seconds * 1e9)
    start = clock()
    now = start
    while now < deadline:
        op()
        after = clock()
        append(after - now)
        now = after
    return len(samples) / ((now - start) / 1e9), samples


def run(
    cases: Dict[str, Dict[str, Op]], rounds: int, seconds: float, progress: bool = True
) -> List[Result]:
    best: Dict[Tuple[str, str], Tuple[float, List[int]]] = {}
    total = rounds * sum(len(v) for v in cases.values())
    done = 0
    for _ in range(rounds):
        for case, ops in cases.items():
            for client, op in ops.items():
                if isinstance(op, Threaded):
                    rate, samples = measure_threaded(op, seconds)
                else:
                    for _ in range(200):  # warm up caches and connections
                        op()
                    rate, samples = measure(op, seconds)
                if rate > best.get((case, client), (0.0, []))[0]:
                    best[(case, client)] = (rate, samples)
                done += 1
                if progress:
                    bar = "#" * (30 * done // total)
                    sys.stderr.write(f"\r[{bar:<30}] {done}/{total} {case} {client:<12}")
                    sys.stderr.flush()
    if progress:
        sys.stderr.write("\n")
    results = []
    for (case, client), (rate, samples) in best.items():
        samples.sort()
        results.append(
            Result(
                case,
                client,
                rate,
                statistics.median(samples) / 1000,
                samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1000,
            )
        )
    return results


def table(results: List[Result]) -> str:
    by_case: Dict[str, Dict[str, Result]] = {}
    for r in results:
        by_case.setdefault(r.case, {})[r.client] = r
    lines = [
        f"{'case':<24} {'client':<12} {'ops/s':>10} {'p50 us':>8} {'p99 us':>8}  pymc ratio",
        "-" * 78,
    ]
    for case, rows in by_case.items():
        pymc = rows.get("pymc")
        for client, r in rows.items():
            ratio = ""
            if pymc is not None and client != "pymc":
                ratio = f"{pymc.ops_per_sec / r.ops_per_sec:.2f}x vs {client}"
            lines.append(
                f"{case:<24} {client:<12} {r.ops_per_sec:>10,.0f} {r.p50_us:>8.1f} "
                f"{r.p99_us:>8.1f}  {ratio}"
            )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--servers", help="host:port,... of servers to use instead of local")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best kept)")
    parser.add_argument("--seconds", type=float, default=0.5, help="seconds per round and case")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args(argv)

    cluster = None
    if args.servers:
        host, _, port = args.servers.split(",")[0].rpartition(":")
        address: Address = (host, int(port))
    else:
        cluster = LocalCluster(count=1)
        address = cluster.addresses[0]
    try:
        cases = single_server_cases(address)
        _check(cases)
        results = run(cases, args.rounds, args.seconds)
    finally:
        if cluster is not None:
            cluster.stop()
    text = table(results)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    machine = f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"
    with open(os.path.join(args.out, "latest.json"), "w") as f:
        json.dump({"machine": machine, "results": [asdict(r) for r in results]}, f, indent=1)
    with open(os.path.join(args.out, "latest.txt"), "w") as f:
        f.write(f"{machine}\n\n{text}\n")
    print(f"\nmachine: {machine}; written to {args.out}/latest.{{txt,json}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
