"""The benchmark cases: ``{case: {client: op}}``, every client on the same servers and keys.

An op is a no-argument callable doing one operation; a :class:`Threaded` op is run by many
threads at once. Every client is checked for correct answers before it is timed.
"""

from __future__ import annotations

import itertools
import socket
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from .servers import Address

VALUE = b"v" * 100
Op = Callable[[], Any]
Cases = Dict[str, Dict[str, Any]]


@dataclass
class Threaded:
    """An op run by ``threads`` threads at once; the case reports their total ops/s.

    ``all_cpus``: the threads and the servers run on every CPU of the machine for this case
    (unpinned), not on the one CPU the benchmark pins to: a threaded web worker has the
    machine's cores, and a client that releases the GIL for its I/O can use them."""

    op: Op
    threads: int
    all_cpus: bool = False


def selected(case: str, patterns: Optional[str]) -> bool:
    """Whether ``case`` is chosen by ``--cases`` (comma-separated substrings; None: all)."""
    return not patterns or any(p in case for p in patterns.split(","))


def spec(address: Address) -> str:
    return "%s:%d" % address  # noqa: UP031


def bare_exchange(address: Address, request: bytes, end: bytes) -> Op:
    """The floor: the same exchange over a plain socket, no client library at all."""
    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def op() -> bytes:
        sock.sendall(request)
        data = sock.recv(65536)
        while not data.endswith(end):
            data += sock.recv(65536)
        return data

    return op


def _libmc(addresses: Sequence[Address], **behaviors: Any) -> Any:
    import pylibmc

    return pylibmc.Client(
        [spec(a) for a in addresses],
        binary=False,
        behaviors={"tcp_nodelay": True, **behaviors},
    )


def single_server(address: Address) -> Cases:
    """Client get/set/get_many(100) on one server, plus the bare-socket floor."""
    from pymemcache.client.base import Client as PymemcacheClient

    import pymc

    clients = {
        "pymc": pymc.Client(address),
        "pymemcache": PymemcacheClient(address, no_delay=True, default_noreply=False),
        "pylibmc": _libmc([address]),
    }
    keys = [f"bench:many:{i}" for i in range(100)]
    for client in clients.values():
        client.set("bench:one", VALUE)
        for key in keys:
            client.set(key, VALUE)
    get_many = {
        "pymc": clients["pymc"].get_many,
        "pymemcache": clients["pymemcache"].get_many,
        "pylibmc": clients["pylibmc"].get_multi,
    }
    cases: Cases = {
        "Client.get": {n: (lambda c=c: c.get("bench:one")) for n, c in clients.items()},
        "Client.set": {n: (lambda c=c: c.set("bench:one", VALUE)) for n, c in clients.items()},
        "Client.get_many(100)": {n: (lambda f=f: f(keys)) for n, f in get_many.items()},
    }
    peers = {n: c for n, c in clients.items() if n != "pylibmc"}
    # noreply: the set alone, and a noreply set followed by a get (which pays for syncing
    # past the noreply command's possible error line).
    cases["Client.set noreply"] = {
        n: (lambda c=c: c.set("bench:nr", VALUE, noreply=True)) for n, c in peers.items()
    }
    cases["Client.set noreply+get"] = {
        n: (lambda c=c: (c.set("bench:nr", VALUE, noreply=True), c.get("bench:one")))
        for n, c in peers.items()
    }
    # The meta protocol (pymc only): a quiet pipeline of 100 gets, and fetch's hit path.
    cases["Client.meta_get_many(100)"] = {
        "pymc": lambda c=clients["pymc"]: c.meta_get_many(keys),
    }
    # The meta protocol's read-through: its hit path next to a plain get (pymc only).
    cases["Client.fetch (hit)"] = {
        "pymc": lambda c=clients["pymc"]: c.fetch("bench:one", lambda: VALUE, 0),
    }
    # The on_command hook (pymc only): the plain Client (hook unset) beside one whose hook
    # does nothing, and, where opentelemetry-api is installed, one with pymc's
    # instrumentation and no SDK (its spans are non-recording).
    cases["Client.get on_command"] = on_command_cases(address, clients["pymc"])
    cases["Client.get"]["bare socket"] = bare_exchange(address, b"get bench:one\r\n", b"END\r\n")
    # The floors of the two multi-gets: memcached answers 100 mg requests (it yields every
    # -R, by default 20, requests of a connection, flushing what it has) far slower than one
    # get of 100 keys, whatever the client does.
    raws = [key.encode() for key in keys]
    get_request = b"get " + b" ".join(raws) + b"\r\n"
    cases["Client.get_many(100)"]["bare socket"] = bare_exchange(address, get_request, b"END\r\n")
    mg_request = b"".join(b"mg %s v f O%x q\r\n" % (raw, n) for n, raw in enumerate(raws))
    cases["Client.meta_get_many(100)"]["bare socket"] = bare_exchange(
        address, mg_request + b"mn\r\n", b"MN\r\n"
    )
    set_request = b"set bench:one 0 0 %d\r\n%s\r\n" % (len(VALUE), VALUE)
    cases["Client.set"]["bare socket"] = bare_exchange(address, set_request, b"\r\n")
    return cases


def _no_op_hook(command: str, keys: Any, server: Any) -> None:
    return None


def on_command_cases(address: Address, plain: Any) -> Dict[str, Any]:
    """``Client.get`` with the ``on_command`` hook unset, set to a no-op, and set to the
    OpenTelemetry instrumentation without an SDK (when opentelemetry-api is installed)."""
    import pymc

    hooked = pymc.Client(address, on_command=_no_op_hook)
    ops: Dict[str, Any] = {
        "pymc": lambda: plain.get("bench:one"),
        "no-op hook": lambda: hooked.get("bench:one"),
    }
    try:
        from pymc.contrib.opentelemetry import PymcInstrumentor
    except ImportError:
        return ops
    traced = pymc.Client(address, on_command=PymcInstrumentor().hook())
    ops["otel no SDK"] = lambda: traced.get("bench:one")
    return ops


def pooled(address: Address, thread_counts: Sequence[int] = (1, 4, 16, 64)) -> Cases:
    """PooledClient.get alone and under several threads."""
    import pylibmc
    from pymemcache.client.base import PooledClient as PymemcachePooled

    import pymc

    pymc_pool = pymc.PooledClient(address)
    peer_pool = PymemcachePooled(address, no_delay=True, default_noreply=False)
    libmc_pool = pylibmc.ClientPool(_libmc([address]), max(thread_counts))
    pymc_pool.set("bench:one", VALUE)

    def libmc_get() -> Any:
        with libmc_pool.reserve() as mc:
            return mc.get("bench:one")

    ops: Dict[str, Op] = {
        "pymc": lambda: pymc_pool.get("bench:one"),
        "pymemcache": lambda: peer_pool.get("bench:one"),
        "pylibmc": libmc_get,
    }
    cases: Cases = {}
    for n in thread_counts:
        name = "PooledClient.get" if n == 1 else f"PooledClient.get x{n}"
        cases[name] = dict(ops) if n == 1 else {c: Threaded(op, n) for c, op in ops.items()}
    return cases


#: The thread counts of the threaded cluster case (its scaling view: a client's throughput
#: should never fall as threads are added).
CLUSTER_THREADS = (1, 2, 4, 8)


def threaded_cluster(
    addresses: List[Address], thread_counts: Sequence[int] = CLUSTER_THREADS
) -> Cases:
    """A pooled ``HashClient.get`` over all the servers shared by 1, 2, 4 and 8 threads, on
    all CPUs (see :class:`Threaded`): pymc's ``HashClient(use_pooling=True,
    max_pool_size=8)``, pylibmc's ``ClientPool`` of 8 clients (ketama), pymemcache's pooled
    ``HashClient``. Each call takes the next of 16 keys, spread over the servers."""
    import pylibmc
    from pymemcache.client.hash import HashClient as PymemcacheHash

    import pymc

    size = max(thread_counts)
    mine = pymc.HashClient(addresses, use_pooling=True, max_pool_size=size)
    peer = PymemcacheHash(
        addresses, use_pooling=True, max_pool_size=size, no_delay=True, default_noreply=False
    )
    libmc_pool = pylibmc.ClientPool(_libmc(addresses, ketama_weighted=True), size)
    keys = [f"bench:threads:{i}" for i in range(16)]
    mine.set_many({key: VALUE for key in keys})
    peer.set_many({key: VALUE for key in keys})
    with libmc_pool.reserve() as mc:  # (its own placement: ketama)
        mc.set_multi({key: VALUE for key in keys})

    def rotating(get: Callable[[str], Any]) -> Op:
        turn = itertools.cycle(keys).__next__  # (next() on a cycle is atomic under the GIL)
        return lambda: get(turn())

    def libmc_get(key: str) -> Any:
        with libmc_pool.reserve() as mc:
            return mc.get(key)

    gets = {"pymc": mine.get, "pylibmc": libmc_get, "pymemcache": peer.get}
    for name, get in gets.items():
        assert all(get(key) == VALUE for key in keys), name
    return {
        f"HashClient.get pooled x{n}": {
            name: Threaded(rotating(get), n, all_cpus=True) for name, get in gets.items()
        }
        for n in thread_counts
    }


def cluster(addresses: List[Address]) -> Cases:
    """HashClient get/set and get_many of 10 and 100 keys over all the servers."""
    from pymemcache.client.hash import HashClient as PymemcacheHash

    import pymc

    clients = {
        "pymc": pymc.HashClient(addresses),
        "pymemcache": PymemcacheHash(addresses, no_delay=True, default_noreply=False),
        "pylibmc": _libmc(addresses, ketama_weighted=True),
    }
    keys = [f"bench:cluster:{i}" for i in range(100)]
    for client in clients.values():
        for key in keys:
            client.set(key, VALUE)
    cases: Cases = {
        "HashClient.get": {n: (lambda c=c: c.get("bench:cluster:7")) for n, c in clients.items()},
        "HashClient.set": {
            n: (lambda c=c: c.set("bench:cluster:7", VALUE)) for n, c in clients.items()
        },
    }
    # The node names carry the servers' ports, new in every run, so each run places the
    # keys anew, and pymc's default placement (pymemcache's rendezvous) may spread 10 keys
    # over more nodes than pylibmc's ketama does: more servers to wake. The "ketama" cases
    # give pymc pylibmc's placement, so both do the same server work.
    ketama = pymc.HashClient(addresses, hasher=pymc.KetamaHash)
    for key in keys:
        ketama.set(key, VALUE)
    for count in (10, 100):
        subset = keys[:count]
        cases[f"HashClient.get_many({count})"] = {
            "pymc": lambda s=subset: clients["pymc"].get_many(s),
            "pymemcache": lambda s=subset: clients["pymemcache"].get_many(s),
            "pylibmc": lambda s=subset: clients["pylibmc"].get_multi(s),
        }
        cases[f"HashClient.get_many({count}) ketama"] = {
            "pymc": lambda s=subset: ketama.get_many(s),
            "pylibmc": lambda s=subset: clients["pylibmc"].get_multi(s),
        }
    return cases


def check(cases: Cases) -> None:
    """Refuse to time a client that answers wrongly."""
    for case, ops in cases.items():
        for name, op in ops.items():
            if isinstance(op, Threaded) or name == "bare socket":
                continue
            got = op()
            if "get_many" in case:
                want = int(case.split("(")[1].split(")")[0])
                assert len(got) == want and set(got.values()) == {VALUE}, (case, name)
            elif ".get" in case or ".fetch" in case:
                assert got == VALUE, (case, name, got)
