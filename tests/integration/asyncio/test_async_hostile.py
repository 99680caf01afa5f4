"""Hostile tests of the single-node asyncio clients (Client, PooledClient, RetryingClient):
interruptions by ``asyncio.timeout``/``wait_for`` rather than ``task.cancel()``, a client
that outlives its event loop, pools whose waiters give up, servers that drip, refuse or
misbehave. Each test targets a way the clients could return a wrong value, lose a pool
slot, hang, or raise something other than what the sync client raises."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Callable, Dict, List, Tuple

import pytest
from support.servers import MemcachedProcess

import pymc
import pymc.asyncio as aio

KINDS = ["Client", "PooledClient", "RetryingClient"]


def make(kind: str, server: Any, **options: Any) -> Any:
    options.setdefault("timeout", 2)
    if kind == "Client":
        return aio.Client(server, **options)
    if kind == "PooledClient":
        return aio.PooledClient(server, max_pool_size=2, **options)
    return aio.RetryingClient(aio.Client(server, **options), attempts=2)


def arun(coro: Awaitable[Any], seconds: float = 20) -> Any:
    return asyncio.run(asyncio.wait_for(coro, seconds))


async def within(seconds: float, coro: Awaitable[Any]) -> Any:
    """``coro`` under ``asyncio.timeout(seconds)`` (3.11+; ``wait_for`` before): a
    cancellation that lands at whatever await the command is at."""
    timeout = getattr(asyncio, "timeout", None)
    if timeout is None:  # pragma: no cover (Python 3.10)
        return await asyncio.wait_for(coro, seconds)
    async with timeout(seconds):
        return await coro


# --------------------------------------------------------------------------- event loops


async def set_get(client: Any, value: bytes) -> Any:
    await client.set("loop", value)
    return (await client.get("loop"), await client.get_many(["loop"]))


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_outlives_its_event_loop(memcached: MemcachedProcess, kind: str) -> None:
    """A client made once and used by one ``asyncio.run`` after another (a module-level
    client under pytest-asyncio's loop per test, a script's several runs): each run gets
    right values, and ``close()`` in a later loop works."""
    client = make(kind, memcached.server)
    for i in range(3):
        value = b"run-%d" % i
        assert arun(set_get(client, value)) == (value, {"loop": value})
    arun(client.close())
    assert arun(set_get(client, b"after")) == (b"after", {"loop": b"after"})


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_moves_to_another_threads_loop(memcached: MemcachedProcess, kind: str) -> None:
    """Used on a loop that still runs in another thread, then on this thread's own loop
    (one at a time): the connection of the other loop is not used from this one."""
    client = make(kind, memcached.server)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        there = asyncio.run_coroutine_threadsafe(set_get(client, b"there"), loop).result(10)
        assert there == (b"there", {"loop": b"there"})
        assert arun(set_get(client, b"here")) == (b"here", {"loop": b"here"})
        back = asyncio.run_coroutine_threadsafe(set_get(client, b"back"), loop).result(10)
        assert back == (b"back", {"loop": b"back"})
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert arun(set_get(client, b"closed")) == (b"closed", {"loop": b"closed"})


# --------------------------------------------------------------------------- the swarm


def owned(key: str) -> bytes:
    """The one value the swarm ever stores under ``key``."""
    return b"value-of-" + key.encode()


async def mixed_round(c: Any, i: int, r: int, counter: List[int]) -> Dict[str, Any]:
    """One command (chosen by ``r``) on task ``i``'s own keys (one of three, so a stale
    reply would be another key's value): what it read, by the key it asked for."""
    key = f"hs{i}-{r % 3}"
    op = r % 8
    if op == 0:
        return {key: await c.get(key)}
    if op == 1:
        other = f"hs{i}-{(r + 1) % 3}"
        return dict(await c.get_many([key, other]))
    if op == 2:
        assert await c.set(key, owned(key)) is True
        return {}
    if op == 3:
        value, token = await c.gets(key)
        if token is not None:
            assert await c.cas(key, owned(key), token) in (True, False)
        return {key: value}
    if op == 4:
        counter[0] += 1  # (an interrupted incr may have been applied)
        n = await c.incr(f"hn{i}", 1)
        assert 1000 < int(n) <= 1000 + counter[0], (i, n)  # this task's own counter
        return {}
    if op == 5:
        fkey = f"hf{i}-{r}"

        async def compute() -> bytes:
            await asyncio.sleep(0.001)
            return owned(fkey)

        return {fkey: await c.fetch(fkey, compute, 0, lease_ttl=1)}
    if op == 6:
        return {key: (await c.meta_get(key)).value}
    return {k: value for k, (value, _) in (await c.gets_many([key])).items()}


@pytest.mark.parametrize("kind", KINDS)
def test_a_swarm_of_mixed_commands_under_asyncio_timeout(
    memcached: MemcachedProcess, fault_proxy: Any, kind: str
) -> None:
    """Tasks run every kind of command (reads, writes, gets/cas, incr, a fetch with a
    coroutine compute, meta) inside ``asyncio.timeout`` of a few ms over a delaying
    proxy, on a shared pool or each on a Client of its own that it keeps using after
    every timeout: no read ever returns another key's value, no slot is lost, and every
    connection works after."""
    import random

    proxy = fault_proxy(memcached.address)
    tasks, rounds = 48, 16
    keys = [f"hs{i}-{n}" for i in range(tasks) for n in range(3)]
    sync = pymc.Client(memcached.server)
    sync.set_many({key: owned(key) for key in keys})
    sync.set_many({f"hn{i}": b"1000" for i in range(tasks)})
    proxy.set_mode("delay", seconds=0.002)
    rng = random.Random(2111)

    async def main() -> Tuple[int, int, int]:
        pooled = aio.PooledClient(proxy.server, timeout=1, max_pool_size=16, pool_timeout=5)
        shared = pooled if kind != "RetryingClient" else aio.RetryingClient(pooled, attempts=2)
        foreign = timeouts = done = 0

        async def worker(i: int) -> None:
            nonlocal foreign, timeouts, done
            c = aio.Client(proxy.server, timeout=1) if kind == "Client" else shared
            counter = [0]
            for r in range(rounds):
                try:
                    got = await within(rng.uniform(0.001, 0.03), mixed_round(c, i, r + i, counter))
                except (TimeoutError, pymc.MemcacheTimeoutError):
                    timeouts += 1
                    continue
                done += 1
                foreign += sum(1 for k, v in got.items() if v is not None and v != owned(k))
            proxy_mode = proxy.mode.name
            if kind == "Client" and proxy_mode == "delay":  # the same Client, in step
                assert await c.get_many(keys[3 * i : 3 * i + 3]) == {
                    k: owned(k) for k in keys[3 * i : 3 * i + 3]
                }
                await c.close()

        await asyncio.gather(*(worker(i) for i in range(tasks)))
        assert pooled.client_pool.stats()["in_use"] == 0
        proxy.set_mode("pass")
        results = await asyncio.gather(*(shared.get(k) for k in keys[:32]))
        assert results == [owned(k) for k in keys[:32]]
        assert pooled.client_pool.stats()["in_use"] == 0
        return foreign, timeouts, done

    foreign, timeouts, done = arun(main(), 50)
    assert foreign == 0
    assert timeouts > 0 and done > 0  # (both outcomes happened)


# --------------------------------------------------------------------------- misbehaving servers


def _replace_reply(data: bytes) -> Callable[[bytes], bytes]:
    return lambda chunk: data


# A server or network that misbehaves, as the fault proxy's modes.
MISBEHAVIOURS: Dict[str, Dict[str, Any]] = {
    "reset": {"name": "reset"},
    "close": {"name": "close"},
    "garbage": {"name": "garbage"},
    "close_after_5": {"name": "close_after", "nbytes": 5},
    "too_many_connections": {
        "name": "rewrite",
        "fn": _replace_reply(b"ERROR Too many open connections\r\n"),
    },
    "server_error": {
        "name": "rewrite",
        "fn": _replace_reply(b"SERVER_ERROR out of memory storing object\r\n"),
    },
    "another_keys_value": {"name": "rewrite", "fn": _replace_reply(b"VALUE x 0 1\r\nx\r\nEND\r\n")},
    "bare_hd": {"name": "rewrite", "fn": _replace_reply(b"HD\r\n")},
}

MISBEHAVED_CALLS: Dict[str, Callable[[Any], Any]] = {
    "get": lambda c: c.get("k"),
    "get_many": lambda c: c.get_many(["k", "k2"]),
    "set": lambda c: c.set("k", b"v"),
    "incr": lambda c: c.incr("n", 1),
    "meta_get": lambda c: c.meta_get("k"),
    "stats": lambda c: c.stats(),
    "fetch": lambda c: c.fetch("k", lambda: b"v"),
}


def outcome_of(result: Any) -> Any:
    if isinstance(result, BaseException):
        cause = result.__cause__
        return (type(result).__name__, type(cause).__name__ if cause is not None else None)
    return ("ok", repr(result))


@pytest.mark.parametrize("mode", sorted(MISBEHAVIOURS))
def test_a_misbehaving_server_gets_the_sync_clients_answer(
    memcached: MemcachedProcess, fault_proxy: Any, mode: str
) -> None:
    """Each command, against a server that resets, closes, sends garbage, refuses the
    connection, or answers another key's value: the asyncio Client and PooledClient raise
    (or return) what the sync Client does, and are in step for the next command; the
    event loop logs no error of its own (an exception in a protocol callback)."""
    proxy = fault_proxy(memcached.address)
    spec = dict(MISBEHAVIOURS[mode])
    name = spec.pop("name")
    pymc.Client(memcached.server).set("k", b"v")

    def sync_outcome(call: Callable[[Any], Any]) -> Any:
        proxy.set_mode("pass")
        c = pymc.Client(proxy.server, timeout=1)
        c.meta_noop()  # (connected, meta checked)
        proxy.set_mode(name, **spec)
        try:
            result = call(c)
        except Exception as exc:
            result = exc
        proxy.set_mode("pass")
        assert c.get("k") == b"v"
        c.close()
        return outcome_of(result)

    async def async_outcome(kind: str, call: Callable[[Any], Any]) -> Any:
        proxy.set_mode("pass")
        c = make(kind, proxy.server, timeout=1)
        await c.meta_noop()
        proxy.set_mode(name, **spec)
        try:
            result = await call(c)
        except Exception as exc:
            result = exc
        proxy.set_mode("pass")
        assert await c.get("k") == b"v"
        await c.close()
        return outcome_of(result)

    async def main() -> List[Any]:
        logged: List[Any] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: logged.append(ctx))
        out = []
        for call_name, call in sorted(MISBEHAVED_CALLS.items()):
            want = sync_outcome(call)
            for kind in ("Client", "PooledClient"):
                out.append((call_name, kind, await async_outcome(kind, call), want))
        await asyncio.sleep(0.05)  # (the closed connections' callbacks run)
        assert logged == []
        return out

    for call_name, kind, have, want in arun(main(), 40):
        assert have == want, (call_name, kind)
