"""pymc.asyncio against real memcached: the same results as the sync Client, TLS, UNIX,
auth, the sync marker after noreply, a server without meta commands, the whole-command
timeout, and a loop that keeps ticking while a node is black-holed."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Dict, List, Tuple

import pytest
from support.oldserver import OldServer
from support.servers import MemcachedProcess
from support.trickle import TrickleProxy

import pymc
import pymc.asyncio as aio
from pymc import MemcacheTimeoutError, MemcacheUnknownCommandError
from pymc.protocol.meta import MetaResult

Op = Tuple[str, Tuple[Any, ...], Dict[str, Any]]

# One scenario, run on the sync Client and on each asyncio client: every step's result
# (or exception type) must be the same.
SCENARIO: List[Op] = [
    ("set", ("k1", b"v1"), {}),
    ("get", ("k1",), {}),
    ("get", ("missing",), {"default": b"d"}),
    ("add", ("k1", b"x"), {}),
    ("add", ("k2", b"2"), {}),
    ("replace", ("k2", b"22"), {}),
    ("append", ("k2", b"a"), {}),
    ("prepend", ("k2", b"p"), {}),
    ("get_many", (["k1", "k2", "nope"],), {}),
    ("set_many", ({"m1": b"1", "m2": b"2"},), {}),
    ("get_multi", (["m1", "m2"],), {}),
    ("incr", ("n", 1), {}),
    ("set", ("n", b"10"), {}),
    ("incr", ("n", 5), {}),
    ("decr", ("n", 3), {}),
    ("touch", ("n", 100), {}),
    ("touch", ("nope", 100), {}),
    ("gat", ("k1", 100), {}),
    ("delete", ("m1",), {}),
    ("delete", ("m1",), {}),
    ("delete_many", (["m2", "nope"],), {}),
    ("set", ("q", b"quiet"), {"noreply": True}),
    ("get", ("q",), {}),
    ("set", ("bad key", b"x"), {}),
    ("meta_set", ("ms1", b"mv"), {}),
    ("meta_get", ("ms1",), {}),
    ("meta_delete", ("ms1",), {}),
    ("meta_get", ("ms1",), {}),
    ("meta_arithmetic", ("ma", 2), {"initial": 5, "vivify_on_miss": 0}),
    ("meta_noop", (), {}),
    ("meta_set_many", ({"x1": b"1", "x2": b"2"},), {}),
    ("meta_get_many", (["x1", "x2", "x3"],), {}),
    ("meta_delete_many", (["x1", "x9"],), {}),
    ("lease_get", ("lk",), {}),
    ("raw_command", ("version",), {}),
    ("verbosity", (0,), {}),
    ("cache_memlimit", (64,), {}),
    ("flush_all", (), {}),
    ("get", ("k1",), {}),
]


def meta_fields(value: Any) -> Any:
    if isinstance(value, MetaResult):
        return (value.status, value.value, value.win, value.number)
    if isinstance(value, dict):
        return {k: meta_fields(v) for k, v in value.items()}
    if isinstance(value, BaseException):
        return type(value)
    return value


def run_sync_scenario(server: str) -> List[Any]:
    client = pymc.Client(server, timeout=2)
    out = []
    for name, args, kwargs in SCENARIO:
        try:
            out.append(meta_fields(getattr(client, name)(*args, **kwargs)))
        except Exception as exc:
            out.append(type(exc))
    client.close()
    return out


async def run_async_scenario(client: Any) -> List[Any]:
    out = []
    for name, args, kwargs in SCENARIO:
        try:
            out.append(meta_fields(await getattr(client, name)(*args, **kwargs)))
        except Exception as exc:
            out.append(type(exc))
    await client.close()
    return out


def arun(coro: Awaitable[Any], seconds: float = 20) -> Any:
    return asyncio.run(asyncio.wait_for(coro, seconds))


@pytest.mark.parametrize("kind", ["Client", "PooledClient", "RetryingClient"])
def test_same_results_as_the_sync_client(memcached: MemcachedProcess, kind: str) -> None:
    expected = run_sync_scenario(memcached.server)
    memcached.flush_all()

    def make() -> Any:
        if kind == "Client":
            return aio.Client(memcached.server, timeout=2)
        if kind == "PooledClient":
            return aio.PooledClient(memcached.server, timeout=2, max_pool_size=2)
        return aio.RetryingClient(aio.Client(memcached.server, timeout=2), attempts=2)

    got = arun(run_async_scenario(make()))
    for (name, _, _), want, have in zip(SCENARIO, expected, got):
        assert have == want, name


def test_gets_cas_and_fetch(memcached: MemcachedProcess) -> None:
    async def main() -> None:
        async with aio.Client(memcached.server) as c:
            await c.set("c", b"1")
            value, token = await c.gets("c")
            assert value == b"1"
            assert await c.cas("c", b"2", token) is True
            assert await c.cas("c", b"3", token) is False
            assert await c.get("c") == b"2"
            calls = []

            async def compute() -> bytes:
                calls.append(1)
                await asyncio.sleep(0.001)
                return b"computed"

            assert await c.fetch("f", compute, 60) == b"computed"
            assert await c.fetch("f", compute, 60) == b"computed"
            assert await c.fetch("g", lambda: b"plain", 60) == b"plain"
            assert calls == [1]

    arun(main())
    assert pymc.Client(memcached.server).get("f") == b"computed"


def test_fetch_waits_for_the_lease_holder_on_the_loop(memcached: MemcachedProcess) -> None:
    async def main() -> List[Any]:
        pc = aio.PooledClient(memcached.server, max_pool_size=4)
        started = asyncio.Event()

        async def slow() -> bytes:
            started.set()
            await asyncio.sleep(0.1)
            return b"once"

        first = asyncio.ensure_future(pc.fetch("lease", slow, 60))
        await started.wait()
        others = [pc.fetch("lease", slow, 60) for _ in range(5)]
        return [await first, *(await asyncio.gather(*others))]

    assert arun(main()) == [b"once"] * 6


def test_tls(memcached_tls: MemcachedProcess) -> None:
    async def main() -> None:
        ctx = memcached_tls.client_ssl_context()
        async with aio.Client(memcached_tls.address, tls_context=ctx) as c:
            await c.set("t", b"tls")
            assert await c.get("t") == b"tls"
            assert (await c.get_many(["t"])) == {"t": b"tls"}

    arun(main())


def test_unix_socket(memcached_unix: MemcachedProcess) -> None:
    async def main() -> None:
        async with aio.Client(memcached_unix.server) as c:
            await c.set("u", b"unix")
            assert await c.get("u") == b"unix"

    arun(main())


def test_auth(memcached_auth: MemcachedProcess) -> None:
    user, password = memcached_auth.username, memcached_auth.password
    assert user is not None and password is not None

    async def main() -> None:
        async with aio.Client(memcached_auth.address, username=user, password=password) as c:
            await c.set("a", b"auth")
            assert await c.get("a") == b"auth"
        bad = aio.Client(memcached_auth.address, username=user, password="wrong")
        with pytest.raises(pymc.MemcacheAuthenticationError):
            await bad.get("a")
        assert bad.conn.sock is None

    arun(main())


def test_noreply_error_lines_are_read_by_the_sync_marker(
    memcached: MemcachedProcess, fault_proxy: Any
) -> None:
    proxy = fault_proxy(memcached.address)

    def once(prefix: bytes) -> Callable[[bytes], bytes]:
        armed = [True]

        def rewrite(data: bytes) -> bytes:
            if armed[0]:
                armed[0] = False
                return prefix + data
            return data

        return rewrite

    async def main() -> None:
        async with aio.Client(proxy.server, timeout=2) as c:
            await c.set("k", b"v")
            link = c.conn.sock
            for n in range(1, 4):
                assert await c.delete("gone", noreply=True) is True
                assert await c.set("small", b"fine", noreply=True) is True
                proxy.set_mode("rewrite", fn=once(b"CLIENT_ERROR one\r\nSERVER_ERROR two\r\n"))
                assert await c.get("k") == b"v"  # not an error line of the noreply commands
                assert c.noreply_errors == 2 * n
            assert c.conn.sock is link  # in step: no reconnect
            proxy.set_mode("rewrite", fn=once(b"SERVER_ERROR late\r\n"))
            await c.set("q", b"x", noreply=True)
            assert await c.add("k", b"w") is False
            assert await c.get_many(["k", "small"]) == {"k": b"v", "small": b"fine"}

    arun(main())


def test_stray_bytes_drop_the_connection(memcached: MemcachedProcess) -> None:
    async def main() -> None:
        async with aio.Client(memcached.server) as c:
            await c.set("k", b"v")
            link = c.conn.sock
            assert link is not None
            link.data_received(b"VALUE k 0 5\r\nwrong\r\nEND\r\n")  # a late duplicate
            assert await c.get("k") == b"v"
            assert c.conn.sock is not link

    arun(main())


def test_meta_set_on_a_server_without_meta_commands() -> None:
    async def main(server: str) -> None:
        c = aio.Client(server, timeout=2)
        with pytest.raises(MemcacheUnknownCommandError):
            await c.meta_set("k", b"value")
        with pytest.raises(MemcacheUnknownCommandError):
            await c.meta_get("k")
        assert await c.set("k", b"v") is True  # still in step
        assert await c.get("k") == b"v"

    with OldServer() as old:
        arun(main(old.server))


def test_timeout_bounds_the_whole_command(memcached: MemcachedProcess) -> None:
    pymc.Client(memcached.server).set("drip", b"x" * 3000)
    assert isinstance(memcached.address, tuple)
    proxy = TrickleProxy(memcached.address, pause=0.002, chunk=4)  # each piece in time
    try:

        async def main() -> float:
            c = aio.Client(proxy.server, timeout=0.3)
            start = time.monotonic()
            with pytest.raises(MemcacheTimeoutError):
                await c.get("drip")
            assert c.conn.sock is None
            return time.monotonic() - start

        took = arun(main())
        assert 0.25 < took < 0.8
    finally:
        proxy.stop()


async def ticking(work: Callable[[], Awaitable[Any]]) -> float:
    """The longest gap between ticks of a 10 ms ticker while ``work`` runs."""
    gaps: List[float] = []
    done = False

    async def ticker() -> None:
        last = time.monotonic()
        while not done:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    task = asyncio.ensure_future(ticker())
    try:
        await work()
    finally:
        done = True
        await task
    return max(gaps)


def test_the_loop_ticks_while_a_node_is_black_holed(
    memcached: MemcachedProcess, fault_proxy: Any
) -> None:
    proxy = fault_proxy(memcached.address)

    async def main() -> Tuple[float, float]:
        c = aio.Client(proxy.server, timeout=0.4, connect_timeout=0.4)
        await c.set("k", b"v")
        proxy.set_mode("stall")

        async def stalled() -> None:
            with pytest.raises(MemcacheTimeoutError):
                await c.get("k")

        reply_gap = await ticking(stalled)
        # A connect that is never answered (a non-routable address): DNS and TCP on the loop.
        black = aio.Client(("10.255.255.1", 11211), connect_timeout=0.4)

        async def connecting() -> None:
            with pytest.raises(pymc.MemcacheError):
                await black.get("k")

        return reply_gap, await ticking(connecting)

    reply_gap, connect_gap = arun(main())
    assert reply_gap < 0.05 and connect_gap < 0.05
