"""The asyncio cases, run in a subprocess per event loop (the default one, then uvloop).

``python -m benchmarks.async_case --servers H:P,... --loop asyncio|uvloop --seconds S
--rounds R`` prints one JSON object: ``{"results": [{case, client, ops_per_sec, p50_us,
p99_us}, ...], "notes": [...]}``. ``notes`` says which client or case was left out, and why
(a client that is not installed, ``pymc.asyncio`` not importable yet).

Every case runs ``tasks`` tasks on one event loop, all calling one shared client, each in a
loop until the round's time is up; a sample is one call's latency (waiting for a free
connection included). The clients, on the same servers with the same keys and values:

* pymc: ``pymc.asyncio.PooledClient`` on one node, ``pymc.asyncio.HashClient(use_pooling=
  True)`` on four;
* emcache: ``emcache.create_client`` (one node, or the four);
* aiomcache: ``aiomcache.Client`` (one node only: it has no cluster);
* bare protocol (the single-node gets only): the floor, no client library at all: the same
  ``get`` over an :class:`asyncio.Protocol` per connection, a pool of ``--pool-size`` of
  them, the value cut out of the reply with no checks;
* bare streams: the same floor on asyncio streams (``open_connection``, ``readuntil``,
  ``readexactly``): which of the two transports is faster, measured side by side.

Fairness: every client may open the same number of connections per node (``--pool-size``:
pymc's ``max_pool_size``, emcache's ``max_connections``, aiomcache's ``pool_size``), and no
client runs a per-call timeout (aiomcache has none: pymc's ``timeout`` and emcache's are set
to None). Each client writes its own keys (the two cluster clients place keys their own
way). Rounds are interleaved (each client of a case, then the next case, then again) and
each case keeps its best round, as in the other cases.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import resource
import sys
import time
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from .cases import selected

VALUE = b"v" * 100
ONE = b"bench:one"
MANY = [b"bench:many:%d" % i for i in range(100)]
CLUSTER_ONE = b"bench:cluster:7"
CLUSTER_MANY = [b"bench:cluster:%d" % i for i in range(100)]

Address = Tuple[str, int]
Op = Callable[[], Awaitable[Any]]
#: case name -> (tasks, {client: op})
Cases = Dict[str, Tuple[int, Dict[str, Op]]]
Closers = List[Callable[[], Awaitable[Any]]]

#: Connections per node each client may open, by default (``--pool-size``).
POOL_SIZE = 8

#: What a client is left out for, by the name it is imported as.
MISSING = {
    "pymc": "pymc.asyncio is not available",
    "emcache": "emcache is not installed (pip install emcache)",
    "aiomcache": "aiomcache is not installed (pip install aiomcache)",
}


def case_names(loop: str, tasks: int = 100, many_tasks: int = 1000) -> List[str]:
    """The cases' names under ``loop`` ('asyncio' or 'uvloop'), in the order they run."""
    return [
        f"{loop} get x{tasks}",
        f"{loop} get x{many_tasks}",
        f"{loop} get_many(100) x{tasks}",
        f"{loop} HashClient.get x{tasks}",
        f"{loop} HashClient.get_many(100) x{tasks}",
    ]


async def run_tasks(op: Op, tasks: int, seconds: float) -> Tuple[float, List[int]]:
    """``tasks`` tasks calling ``op`` for about ``seconds``: ops/s and each call's latency
    in ns.

    Each task yields to the loop once between two calls, as a request handler does when it
    goes on to its next ``await``: without it, the tasks that hold the pool's connections
    take them again at once, before the tasks woken for them run (every one of the three
    clients' pools lets a caller take an idle connection ahead of the waiters), so a few
    tasks do all the calls while the others wait out the whole round, and p99 is the
    round's length."""
    pause = asyncio.sleep
    clock = time.perf_counter_ns
    samples: List[int] = []
    append = samples.append
    deadline = clock() + int(seconds * 1e9)

    async def worker() -> None:
        now = clock()
        while now < deadline:
            await op()
            after = clock()
            append(after - now)
            await pause(0)  # (see above: the task yields between two calls)
            now = clock()

    start = clock()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return len(samples) / ((clock() - start) / 1e9), samples


def _value(got: Any) -> Any:
    """A get's value whatever the client returned (emcache: an Item)."""
    return getattr(got, "value", got)


async def check(case: str, client: str, op: Op) -> None:
    """Refuse to time a client that answers wrongly."""
    got = await op()
    if "get_many" in case:
        values = got.values() if isinstance(got, dict) else got
        values = [_value(v) for v in values]
        assert len(values) == 100 and set(values) == {VALUE}, (case, client)
    else:
        assert _value(got) == VALUE, (case, client, got)


async def pymc_clients(
    addresses: Sequence[Address], pool: int, notes: List[str], closers: Closers
) -> Dict[str, Op]:
    """pymc's ops by case kind ('get', 'get_many', 'hash get', 'hash get_many')."""
    try:
        import pymc.asyncio as pymc_asyncio
    except ImportError as exc:
        notes.append(f"pymc: {MISSING['pymc']} ({exc}): its asyncio cases are skipped")
        return {}
    single = pymc_asyncio.PooledClient(addresses[0], max_pool_size=pool, timeout=None)
    closers.append(single.close)
    await single.set(ONE, VALUE)
    await single.set_many(dict.fromkeys(MANY, VALUE))
    ops: Dict[str, Op] = {
        "get": lambda: single.get(ONE),
        "get_many": lambda: single.get_many(MANY),
    }
    try:
        hash_client_class = pymc_asyncio.HashClient
    except (ImportError, AttributeError) as exc:
        notes.append(f"pymc: pymc.asyncio.HashClient is not available ({exc}): skipped")
        return ops
    cluster = hash_client_class(addresses, use_pooling=True, max_pool_size=pool, timeout=None)
    closers.append(cluster.close)
    try:
        await cluster.set_many(dict.fromkeys(CLUSTER_MANY, VALUE))
    except Exception as exc:  # (a client still being written must not stop the others)
        notes.append(f"pymc: pymc.asyncio.HashClient failed: {exc!r}: skipped")
        return ops
    ops["hash get"] = lambda: cluster.get(CLUSTER_ONE)
    ops["hash get_many"] = lambda: cluster.get_many(CLUSTER_MANY)
    return ops


async def emcache_clients(
    addresses: Sequence[Address], pool: int, notes: List[str], closers: Closers
) -> Dict[str, Op]:
    try:
        import emcache
    except ImportError:
        notes.append(f"emcache: {MISSING['emcache']}: skipped")
        return {}

    async def make(nodes: Sequence[Address], keys: Sequence[bytes]) -> Any:
        client = await emcache.create_client(
            [emcache.MemcachedHostAddress(host, port) for host, port in nodes],
            max_connections=pool,
            timeout=None,
        )
        closers.append(client.close)
        for key in keys:
            await client.set(key, VALUE)
        return client

    single = await make(addresses[:1], [ONE, *MANY])
    cluster = await make(addresses, CLUSTER_MANY)
    return {
        "get": lambda: single.get(ONE),
        "get_many": lambda: single.get_many(MANY),
        "hash get": lambda: cluster.get(CLUSTER_ONE),
        "hash get_many": lambda: cluster.get_many(CLUSTER_MANY),
    }


async def aiomcache_clients(
    addresses: Sequence[Address], pool: int, notes: List[str], closers: Closers
) -> Dict[str, Op]:
    try:
        import aiomcache
    except ImportError:
        notes.append(f"aiomcache: {MISSING['aiomcache']}: skipped")
        return {}
    host, port = addresses[0]
    single = aiomcache.Client(host, port, pool_size=pool)
    closers.append(single.close)
    for key in (ONE, *MANY):
        await single.set(key, VALUE)
    return {
        "get": lambda: single.get(ONE),
        # (a single node's multi_get: aiomcache has no cluster)
        "get_many": lambda: single.multi_get(*MANY),
    }


class _Bare(asyncio.Protocol):
    """One connection of the floor: the reply's bytes, until ``END``, wake ``waiter``."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.data = b""
        self.waiter: Optional[asyncio.Future[bytes]] = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.data.endswith(b"END\r\n") and self.waiter is not None:
            self.waiter.set_result(self.data)
            self.data, self.waiter = b"", None


async def bare_clients(
    addresses: Sequence[Address], pool: int, notes: List[str], closers: Closers
) -> Dict[str, Op]:
    """The floor (see the module's docstring): a LIFO pool that hands a connection given
    back straight to the task waiting longest."""
    loop = asyncio.get_running_loop()
    host, port = addresses[0]
    idle: List[_Bare] = []
    for _ in range(pool):
        idle.append((await loop.create_connection(_Bare, host, port))[1])
    waiting: Deque[asyncio.Future[_Bare]] = collections.deque()
    request = b"get " + ONE + b"\r\n"

    async def close() -> None:
        for conn in idle:
            conn.transport.close()

    closers.append(close)

    async def get() -> bytes:
        if idle:
            conn = idle.pop()
        else:
            turn: asyncio.Future[_Bare] = loop.create_future()
            waiting.append(turn)
            conn = await turn
        conn.waiter = loop.create_future()
        conn.transport.write(request)
        reply = await conn.waiter
        if waiting:
            waiting.popleft().set_result(conn)
        else:
            idle.append(conn)
        return reply[reply.index(b"\r\n") + 2 : -7]

    return {"get": get}


async def bare_streams_clients(
    addresses: Sequence[Address], pool: int, notes: List[str], closers: Closers
) -> Dict[str, Op]:
    """The streams floor, beside the Protocol one: the same ``get`` and the same pool, on
    asyncio streams (``asyncio.open_connection``; the reply read with ``readuntil`` and
    ``readexactly``, no checks; no ``drain()``, a write of a few bytes never waits)."""
    loop = asyncio.get_running_loop()
    host, port = addresses[0]
    idle: List[Tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    for _ in range(pool):
        idle.append(await asyncio.open_connection(host, port))
    waiting: Deque[asyncio.Future[Tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = (
        collections.deque()
    )
    request = b"get " + ONE + b"\r\n"

    async def close() -> None:
        for _, writer in idle:
            writer.close()

    closers.append(close)

    async def get() -> Optional[bytes]:
        if idle:
            conn = idle.pop()
        else:
            turn: asyncio.Future[Tuple[asyncio.StreamReader, asyncio.StreamWriter]]
            turn = loop.create_future()
            waiting.append(turn)
            conn = await turn
        reader, writer = conn
        writer.write(request)
        header = await reader.readuntil(b"\r\n")
        value = None
        if header != b"END\r\n":
            value = (await reader.readexactly(int(header.split()[3]) + 7))[:-7]
        if waiting:
            waiting.popleft().set_result(conn)
        else:
            idle.append(conn)
        return value

    return {"get": get}


async def build(
    addresses: Sequence[Address],
    loop: str,
    args: argparse.Namespace,
    notes: List[str],
    closers: Closers,
) -> Cases:
    wanted = args.clients.split(",") if args.clients else None
    makers = {
        "pymc": pymc_clients,
        "emcache": emcache_clients,
        "aiomcache": aiomcache_clients,
        "bare protocol": bare_clients,
        "bare streams": bare_streams_clients,
    }
    by_client: Dict[str, Dict[str, Op]] = {}
    for name, maker in makers.items():
        if wanted is None or name in wanted:
            by_client[name] = await maker(addresses, args.pool_size, notes, closers)
    names = case_names(loop, args.tasks, args.many_tasks)
    kinds = [
        ("get", args.tasks),
        ("get", args.many_tasks),
        ("get_many", args.tasks),
        ("hash get", args.tasks),
        ("hash get_many", args.tasks),
    ]
    cases: Cases = {}
    for name, (kind, tasks) in zip(names, kinds):
        if not selected(name, args.cases):
            continue
        ops = {client: ops[kind] for client, ops in by_client.items() if kind in ops}
        if ops:
            cases[name] = (tasks, ops)
    return cases


async def main_async(args: argparse.Namespace, loop: str) -> Dict[str, Any]:
    addresses: List[Address] = []
    for item in args.servers.split(","):
        host, _, port = item.rpartition(":")
        addresses.append((host, int(port)))
    notes: List[str] = []
    closers: Closers = []
    try:
        cases = await build(addresses, loop, args, notes, closers)
        for case, (_, ops) in cases.items():
            for client, op in list(ops.items()):
                try:
                    await check(case, client, op)
                except Exception as exc:  # (a wrong answer is not timed, nor fatal)
                    notes.append(f"{client}: {case}: failed its check: {exc!r}: skipped")
                    del ops[client]
        best: Dict[Tuple[str, str], Tuple[float, List[int]]] = {}
        for tasks, ops in cases.values():  # warm up: every connection of every pool
            for op in ops.values():
                await run_tasks(op, tasks, min(args.seconds, 0.1))
        for _ in range(args.rounds):
            for case, (tasks, ops) in cases.items():
                for client, op in ops.items():
                    rate, samples = await run_tasks(op, tasks, args.seconds)
                    if rate > best.get((case, client), (0.0, []))[0]:
                        best[(case, client)] = (rate, samples)
    finally:
        for close in closers:
            await close()
    results = []
    for (case, client), (rate, samples) in best.items():
        samples.sort()
        results.append(
            {
                "case": case,
                "client": client,
                "ops_per_sec": rate,
                "p50_us": samples[len(samples) // 2] / 1000,
                "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1000,
            }
        )
    return {"results": results, "notes": notes}


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.async_case", description=__doc__)
    parser.add_argument("--servers", required=True, help="host:port,... (the first: one node)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--many-tasks", type=int, default=1000)
    parser.add_argument("--pool-size", type=int, default=POOL_SIZE, help="connections per node")
    parser.add_argument("--clients", help="comma-separated: only these clients")
    parser.add_argument("--cases", help="comma-separated substrings of the cases' names")
    args = parser.parse_args(argv)
    # Each task may hold a connection: allow the descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    loop = new_loop(args.loop)
    try:
        out = loop.run_until_complete(main_async(args, args.loop))
    finally:
        loop.close()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
