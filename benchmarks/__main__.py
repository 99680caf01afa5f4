"""``make bench``: pymc against pymemcache, pylibmc and a bare socket, in one run; and
pymc.asyncio against emcache and aiomcache (on the default event loop, then uvloop).

Every client runs every case on the same servers with the same keys and values. Rounds are
interleaved (pymc, then each peer, then again) so that drift in the machine's speed hits
every client alike, and each case reports its best round. By default the servers and the
benchmark share one CPU, so that an exchange costs the same for every client and what differs
is the clients' own work. Figures are relative: compare ratios, not absolute numbers, across
machines.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import pymc

from . import async_case
from . import cases as bench_cases
from .cases import selected
from .report import Result, chart, table
from .servers import Address, LocalCluster

Samples = Tuple[float, List[int]]

#: Which reader this process times (chosen when pymc was imported).
READER = "reader: " + (
    "compiled (pymc.speedups)" if pymc.__speedups__ else "pure Python (pymc.protocol.PyReader)"
)


def measure(op: bench_cases.Op, seconds: float) -> Samples:
    """Run ``op`` for about ``seconds``; return ops/s and each op's latency in ns."""
    clock = time.perf_counter_ns
    samples: List[int] = []
    append = samples.append
    start = now = clock()
    deadline = start + int(seconds * 1e9)
    while now < deadline:
        op()
        after = clock()
        append(after - now)
        now = after
    return len(samples) / ((now - start) / 1e9), samples


def measure_threaded(case: bench_cases.Threaded, seconds: float) -> Samples:
    collected: List[List[int]] = []
    barrier = threading.Barrier(case.threads)

    def worker() -> None:
        barrier.wait()
        collected.append(measure(case.op, seconds)[1])

    threads = [threading.Thread(target=worker) for _ in range(case.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [x for part in collected for x in part]
    return len(flat) / seconds, flat


class Cpus:
    """Where the cases run: pinned to one CPU (servers and benchmark), except the threaded
    cases that ask for every CPU (``Threaded.all_cpus``): for those the measuring threads
    and the servers' threads are unpinned, then pinned back."""

    def __init__(self, pin: Optional[int], server_pids: Sequence[int]) -> None:
        self.pin = pin
        self.server_pids = list(server_pids)

    def _tasks(self) -> List[int]:
        tasks = [0]  # this thread: the measuring threads it starts inherit its CPUs
        for pid in self.server_pids:
            try:
                tasks += [int(t) for t in os.listdir(f"/proc/{pid}/task")]
            except OSError:
                pass
        return tasks

    @contextlib.contextmanager
    def every_cpu(self) -> Iterator[None]:
        if self.pin is None:
            yield
            return
        every = set(range(os.cpu_count() or 1))
        tasks = self._tasks()
        for task in tasks:
            os.sched_setaffinity(task, every)
        try:
            yield
        finally:
            for task in tasks:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(task, {self.pin})


class Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled

    def step(self, label: str) -> None:
        self.done += 1
        if self.enabled:
            bar = "#" * (30 * self.done // max(self.total, 1))
            sys.stderr.write(f"\r[{bar:<30}] {self.done}/{self.total} {label:<45}")
            sys.stderr.flush()

    def finish(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _result(case: str, client: str, rate: float, samples: List[int]) -> Result:
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return Result(case, client, rate, statistics.median(samples) / 1000, p99 / 1000)


def run(
    cases: bench_cases.Cases, rounds: int, seconds: float, progress: Progress, cpus: Cpus
) -> List[Result]:
    best: Dict[Tuple[str, str], Samples] = {}
    for _ in range(rounds):
        for case, ops in cases.items():
            for client, op in ops.items():
                if isinstance(op, bench_cases.Threaded):
                    with cpus.every_cpu() if op.all_cpus else contextlib.nullcontext():
                        rate, samples = measure_threaded(op, seconds)
                else:
                    for _ in range(200):  # warm up connections and caches
                        op()
                    rate, samples = measure(op, seconds)
                if rate > best.get((case, client), (0.0, []))[0]:
                    best[(case, client)] = (rate, samples)
                progress.step(f"{case} {client}")
    return [_result(case, client, *best[(case, client)]) for case, client in best]


def run_gevent(
    address: Address, counts: Sequence[int], rounds: int, seconds: float, progress: Progress
) -> List[Result]:
    results = []
    for greenlets in counts:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.gevent_case", bench_cases.spec(address),
             str(greenlets), str(seconds), str(rounds)],
            capture_output=True, text=True, timeout=600, check=False,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )  # fmt: skip
        if proc.returncode != 0:
            raise SystemExit(f"gevent case failed:\n{proc.stderr}")
        for client, r in json.loads(proc.stdout).items():
            results.append(
                Result(f"gevent get x{greenlets}", client, r["ops_per_sec"], r["p50_us"],
                       r["p99_us"])
            )  # fmt: skip
        progress.step(f"gevent x{greenlets}")
    return results


#: The event loops the asyncio cases run on, each in a process of its own.
LOOPS = ("asyncio", "uvloop")


def async_loops(patterns: Optional[str]) -> List[str]:
    """The loops with at least one asyncio case chosen by ``patterns``."""
    return [
        loop for loop in LOOPS if any(selected(n, patterns) for n in async_case.case_names(loop))
    ]


def run_async(
    addresses: Sequence[Address],
    loops: Sequence[str],
    args: argparse.Namespace,
    pure: bool,
    progress: Progress,
    notes: List[str],
) -> List[Result]:
    """The asyncio cases (:mod:`benchmarks.async_case`), one process per event loop; with
    ``pure``, pymc's again in a PYMC_NO_EXTENSIONS=1 process ('pymc pure'). What was left
    out, and why, goes to ``notes``."""
    results: List[Result] = []
    for loop in loops:
        passes: List[Tuple[str, Dict[str, str]]] = [("", {})]
        passes += [("pymc pure", {"PYMC_NO_EXTENSIONS": "1"})] if pure else []
        if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
            notes.append("uvloop is not installed (pip install uvloop): its cases are skipped")
            for _ in passes:
                progress.step("uvloop: not installed")
            continue
        for name, env in passes:
            command = [
                sys.executable, "-m", "benchmarks.async_case", "--loop", loop,
                "--servers", ",".join(bench_cases.spec(a) for a in addresses),
                "--seconds", str(args.seconds), "--rounds", str(args.rounds),
                "--pool-size", str(args.async_pool_size),
            ]  # fmt: skip
            if args.cases:
                command += ["--cases", args.cases]
            if name or args.clients:
                command += ["--clients", "pymc" if name else args.clients]
            proc = subprocess.run(
                command, capture_output=True, text=True, timeout=1800, check=False,
                env={**os.environ, **env},
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            )  # fmt: skip
            if proc.returncode != 0:
                raise SystemExit(f"the {loop} cases failed:\n{proc.stderr}")
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            if not name:
                notes += [note for note in out["notes"] if note not in notes]
            for row in out["results"]:
                results.append(Result(**{**row, "client": name or row["client"]}))
            progress.step(f"{loop} cases" + (f", {name}" if name else ""))
    return results


def select(
    cases: bench_cases.Cases, patterns: Optional[str], clients: Optional[str]
) -> bench_cases.Cases:
    keep = clients.split(",") if clients else None
    out: bench_cases.Cases = {}
    for case, ops in cases.items():
        if selected(case, patterns):
            ops = {n: op for n, op in ops.items() if keep is None or n in keep}
            if ops:
                out[case] = ops
    return out


def run_pure(
    addresses: Sequence[Address],
    args: argparse.Namespace,
    pin: Optional[int],
    rounds: int,
    gevent: bool,
    cpus: Cpus,
) -> List[Result]:
    """pymc's cases again with the pure-Python reader, in a process that ignores the compiled
    one (the reader is chosen at import); its rows are named 'pymc pure'. ``gevent``: the
    gevent cases only, else all the others."""
    command = [
        sys.executable, "-m", "benchmarks", "--json", "--no-progress", "--clients", "pymc",
        "--servers", ",".join("%s:%d" % a for a in addresses),  # noqa: UP031
        "--rounds", str(rounds), "--seconds", str(args.seconds),
    ]  # fmt: skip
    command += ["--no-pin"] if pin is None else ["--cpu", str(pin)]
    command += ["--server-pids", ",".join(map(str, cpus.server_pids))]
    if gevent:
        command += ["--cases", "gevent get"]
    else:
        command += ["--no-gevent", "--no-async"]
        command += ["--cases", args.cases] if args.cases else []
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=3600, check=False,
        env={**os.environ, "PYMC_NO_EXTENSIONS": "1"},
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"the pure-Python pass failed:\n{proc.stderr}")
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    return [Result(**{**row, "client": "pymc pure"}) for row in rows]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--servers", help="host:port,... to use instead of 4 local servers")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, best kept")
    parser.add_argument("--seconds", type=float, default=0.5, help="seconds per round and case")
    parser.add_argument("--cpu", type=int, default=0, help="CPU to pin servers and bench to")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    parser.add_argument("--quick", action="store_true", help="one short round (smoke test)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--async-pool-size",
        type=int,
        default=async_case.POOL_SIZE,
        help="connections per node every asyncio client may open (pymc's max_pool_size, "
        "emcache's max_connections, aiomcache's pool_size)",
    )
    parser.add_argument(
        "--cases",
        "--only",
        help="comma-separated substrings: only the cases whose name holds one (the gevent "
        "case only when one of them is in 'gevent get')",
    )
    parser.add_argument(
        "--readers",
        choices=("both", "in-use"),
        default="both",
        help="both: when pymc's compiled reader is in use, also time pymc with the pure-Python "
        "reader (a second process with PYMC_NO_EXTENSIONS=1), shown as 'pymc pure'",
    )
    parser.add_argument("--clients", help=argparse.SUPPRESS)  # comma-separated, for that pass
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # results only
    parser.add_argument("--no-gevent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-async", action="store_true", help=argparse.SUPPRESS)
    # The local servers' pids, for a pass run on another process's servers (see Cpus).
    parser.add_argument("--server-pids", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 1, 0.1
    pin = None if args.no_pin or not hasattr(os, "sched_setaffinity") else args.cpu
    if pin is not None:
        os.sched_setaffinity(0, {pin})

    cluster = None
    if args.servers:
        addresses = []
        for item in args.servers.split(","):
            host, _, port = item.rpartition(":")
            addresses.append((host, int(port)))
    else:
        cluster = LocalCluster(count=4, cpu=pin)
        addresses = cluster.addresses
    pids = cluster.pids if cluster else [int(p) for p in args.server_pids.split(",") if p]
    cpus = Cpus(pin, pids)
    try:
        cases: bench_cases.Cases = {}
        cases.update(bench_cases.single_server(addresses[0]))
        cases.update(bench_cases.pooled(addresses[0]))
        cases.update(bench_cases.cluster(addresses))
        if selected("HashClient.get pooled", args.cases):
            cases.update(bench_cases.threaded_cluster(addresses))
        cases = select(cases, args.cases, args.clients)
        bench_cases.check(cases)
        gevent = selected("gevent get", args.cases) and not args.no_gevent
        gevent_counts = (100, 1000) if gevent else ()
        loops = [] if args.no_async else async_loops(args.cases)
        notes: List[str] = []
        # Both readers: each round of the compiled one (this process) is followed by a round
        # of the pure one (a PYMC_NO_EXTENSIONS=1 process), so drift hits both alike.
        pure = args.readers == "both" and pymc.__speedups__ and not args.json
        total = args.rounds * (sum(len(v) for v in cases.values()) + pure)
        total += (len(gevent_counts) + len(loops)) * (1 + pure)
        progress = Progress(total, not args.no_progress)
        best: Dict[Tuple[str, str], Result] = {}
        for _ in range(args.rounds):
            part = run(cases, 1, args.seconds, progress, cpus)
            if pure and cases:
                part += run_pure(addresses, args, pin, 1, gevent=False, cpus=cpus)
                progress.step("pymc pure")
            for r in part:
                if r.ops_per_sec > getattr(best.get((r.case, r.client)), "ops_per_sec", 0.0):
                    best[(r.case, r.client)] = r
        results = list(best.values())
        results += run_gevent(addresses[0], gevent_counts, args.rounds, args.seconds, progress)
        if pure and gevent_counts:
            results += run_pure(addresses, args, pin, args.rounds, gevent=True, cpus=cpus)
            for _ in gevent_counts:
                progress.step("gevent, pymc pure")
        results += run_async(addresses, loops, args, bool(pure), progress, notes)
        progress.finish()
        if args.clients:
            results = [r for r in results if r.client in args.clients.split(",")]
        order = {case: i for i, case in enumerate(cases)}
        results.sort(key=lambda r: (order.get(r.case, len(order)), r.client == "pymc pure"))
    finally:
        if cluster is not None:
            cluster.stop()

    if args.json:
        print(json.dumps([r.__dict__ for r in results]))
        return 0
    pinning = (
        f" (bench pinned to CPU {pin}; threaded cluster case on all CPUs)"
        if pin is not None
        else ""
    )
    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores{pinning}, "
        f"Python {platform.python_version()}, {len(addresses)} memcached nodes; "
        f"{READER}"
    )
    text = table(results) + "".join(f"\nnot run: {note}" for note in notes)
    print(f"{READER}\n{text}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "latest.json"), "w") as f:
        json.dump(
            {"machine": machine, "results": [r.__dict__ for r in results], "notes": notes},
            f,
            indent=1,
        )
    with open(os.path.join(args.out, "latest.txt"), "w") as f:
        f.write(f"{machine}\n\n{text}\n")
    png = chart(results, os.path.join(args.out, "throughput.png"), machine)
    print(f"\n{machine}\nwritten: {args.out}/latest.txt, latest.json" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
