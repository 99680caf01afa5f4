"""The asyncio HashClient against real memcached nodes: the same results as the sync
HashClient, failover, a slow node holding nothing of the others, cancellation at every
await, with every pool slot usable afterwards."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable, Dict, List, Tuple

import pytest
from support.servers import MemcachedProcess

import pymc
from pymc.asyncio.cluster import HashClient

pytestmark = pytest.mark.timeout(60)

Addr = Tuple[str, int]


def addrs(nodes: List[MemcachedProcess]) -> List[Addr]:
    return [n.address for n in nodes]  # type: ignore[misc]


def run(coro: Awaitable[Any], timeout: float = 30) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def idle_everywhere(client: HashClient) -> bool:
    """No connection of any node is checked out."""
    return all(pool.client_pool.stats()["in_use"] == 0 for pool in client.clients.values())


# (command, args, kwargs): a script run on both clients, each on keys of its own prefix.
SCRIPT: List[Tuple[str, Tuple[Any, ...], Dict[str, Any]]] = [
    ("set", ("a", b"1"), {}),
    ("get", ("a",), {}),
    ("get", ("missing", b"dflt"), {}),
    ("add", ("a", b"2"), {}),
    ("add", ("b", b"2"), {}),
    ("replace", ("c", b"3"), {}),
    ("append", ("a", b"x"), {}),
    ("prepend", ("a", b"y"), {}),
    ("get", ("a",), {}),
    ("incr", ("n", 1), {}),
    ("set", ("n", b"10"), {}),
    ("incr", ("n", 5), {}),
    ("decr", ("n", 3), {}),
    ("touch", ("a", 100), {}),
    ("touch", ("nope", 100), {}),
    ("delete", ("b",), {}),
    ("delete", ("b",), {}),
    ("set_many", ({f"m{i}": str(i).encode() for i in range(40)},), {}),
    ("get_many", ([f"m{i}" for i in range(45)],), {}),
    ("get_multi", (["m1", "m2", "zz"],), {}),
    ("delete_many", (["m1", "m2"],), {}),
    ("touch_many", (["m3", "m1", "m4"],), {"expire": 50}),
    ("get_many", ([f"m{i}" for i in range(6)],), {}),
    ("meta_set_many", ({"x1": b"a", "x2": b"b"},), {}),
    ("meta_get_many", (["x1", "x2", "x3"],), {}),
    ("meta_delete_many", (["x1", "x9"],), {}),
    ("meta_get", ("x2",), {}),
    ("meta_set", ("x3", b"v"), {}),
    ("meta_delete", ("x3",), {}),
    ("meta_arithmetic", ("ctr",), {"vivify_on_miss": 5}),
    ("gat", ("a", 10), {}),
    ("get", (("route", "tupled"),), {}),
    ("set", (("route", "tupled"), b"t"), {}),
    ("get", (("route", "tupled"),), {}),
    ("fetch", ("f", lambda: "computed", 10), {}),
    ("fetch", ("f", lambda: "again", 10), {}),
]


def normal(command: str, result: Any, prefix: str) -> Any:
    """A result with the client's own key prefix taken out (and no cas values)."""
    if isinstance(result, dict):
        return {
            (k.replace(prefix, "", 1) if isinstance(k, str) else k): v for k, v in result.items()
        }
    if isinstance(result, list):
        return sorted(k.replace(prefix, "", 1) if isinstance(k, str) else k for k in result)
    return result


def prefixed(args: Tuple[Any, ...], prefix: str) -> Tuple[Any, ...]:
    first = args[0]
    if isinstance(first, str):
        first = prefix + first
    elif isinstance(first, tuple):
        first = (first[0], prefix + first[1])
    elif isinstance(first, dict):
        first = {prefix + k: v for k, v in first.items()}
    elif isinstance(first, list):
        first = [prefix + k for k in first]
    return (first, *args[1:])


def meta(result: Any) -> Any:
    status = getattr(result, "status", None)
    return (status, getattr(result, "value", None)) if status is not None else result


def test_same_results_as_sync(nodes: List[MemcachedProcess]) -> None:
    servers = addrs(nodes)
    stamp = str(time.monotonic_ns())
    sync_prefix, async_prefix = f"s{stamp}-", f"a{stamp}-"
    sync = pymc.HashClient(servers)
    expected = []
    for command, args, kwargs in SCRIPT:
        result = getattr(sync, command)(*prefixed(args, sync_prefix), **kwargs)
        expected.append(meta(normal(command, result, sync_prefix)))
    sync.close()

    async def main() -> List[Any]:
        client = HashClient(servers)
        got = []
        for command, args, kwargs in SCRIPT:
            result = await getattr(client, command)(*prefixed(args, async_prefix), **kwargs)
            got.append(meta(normal(command, result, async_prefix)))
        assert idle_everywhere(client)
        await client.close()
        return got

    got = run(main())
    for (command, _, _), want, have in zip(SCRIPT, expected, got):
        assert have == want, command


def test_placement_is_the_sync_clients(nodes: List[MemcachedProcess]) -> None:
    servers = addrs(nodes)
    sync = pymc.HashClient(servers)
    keys = [f"place-{i}" for i in range(200)]

    async def main() -> None:
        client = HashClient(servers)
        for key in keys:
            assert client.snapshot.node_for(key) == sync.snapshot.node_for(key)
        await client.close()

    run(main())


def test_dead_node_fails_over(new_memcached: Callable[..., MemcachedProcess]) -> None:
    live = [new_memcached(), new_memcached()]
    dead = new_memcached()
    servers = [*addrs(live), dead.address]
    dead.close()

    async def main() -> None:
        client = HashClient(
            servers,
            retry_attempts=2,
            retry_timeout=0,
            dead_timeout=600,
            connect_timeout=0.5,
            timeout=0.5,
            ignore_exc=True,
        )
        keys = [f"fo-{i}" for i in range(60)]
        on_dead = [
            k for k in keys if client.snapshot.node_for(k) == pymc.client.server_name(dead.address)
        ]
        assert on_dead
        # Reads of its keys miss (ignore_exc) until it is ejected, then go elsewhere.
        for _ in range(3):
            assert await client.get(on_dead[0], b"default") in (b"default", None)
        assert pymc.client.server_name(dead.address) not in client.snapshot.names
        assert await client.set_many({k: b"v" for k in keys}) == []
        assert await client.get_many(keys) == {k: b"v" for k in keys}
        assert idle_everywhere(client)
        await client.close()

    run(main())


def test_dead_node_raises_without_ignore_exc(
    new_memcached: Callable[..., MemcachedProcess],
) -> None:
    live = new_memcached()
    dead = new_memcached()
    servers = [live.address, dead.address]
    dead.close()
    sync = pymc.HashClient(servers, connect_timeout=0.5, timeout=0.5, retry_attempts=5)
    keys = [f"r-{i}" for i in range(40)]
    with pytest.raises(Exception) as sync_error:
        sync.get_many(keys)
    sync.close()

    async def main() -> None:
        client = HashClient(servers, connect_timeout=0.5, timeout=0.5, retry_attempts=5)
        with pytest.raises(type(sync_error.value)):
            await client.get_many(keys)
        assert idle_everywhere(client)
        await client.close()

    run(main())


SLOW_VALUES = {f"slow-{i}": b"v" for i in range(60)}
SLOW_KEYS = list(SLOW_VALUES)
#: Each many-key command, and its result when every node answers.
FAN_OUTS: Dict[str, Tuple[Callable[[HashClient], Awaitable[Any]], Any]] = {
    "get_many": (lambda c: c.get_many(SLOW_KEYS), SLOW_VALUES),
    "set_many": (lambda c: c.set_many(SLOW_VALUES), []),
    "delete_many": (lambda c: c.delete_many(SLOW_KEYS), True),
    "touch_many": (lambda c: c.touch_many(SLOW_KEYS, 0), dict.fromkeys(SLOW_KEYS, True)),
    "meta_get_many": (lambda c: c.meta_get_many(SLOW_KEYS), SLOW_VALUES),
    "meta_set_many": (lambda c: c.meta_set_many(SLOW_VALUES), []),
}


@pytest.mark.parametrize("command", sorted(FAN_OUTS))
def test_slow_node_holds_nothing_of_the_others(
    nodes: List[MemcachedProcess], fault_proxy: Callable[[Addr], Any], command: str
) -> None:
    proxy = fault_proxy(addrs(nodes)[0])
    servers = [("127.0.0.1", proxy.port), *addrs(nodes)[1:3]]
    slow_name = f"127.0.0.1:{proxy.port}"
    call, expected = FAN_OUTS[command]

    async def main() -> None:
        client = HashClient(
            servers, use_pooling=True, max_pool_size=1, timeout=5, key_prefix=command.encode()
        )
        assert await client.set_many(SLOW_VALUES) == []
        fast_key = next(k for k in SLOW_KEYS if client.snapshot.node_for(k) != slow_name)
        proxy.set_mode("delay", seconds=0.5)
        many = asyncio.ensure_future(call(client))
        await asyncio.sleep(0.1)
        # The fan-out waits for the slow node; the others' connections are back already.
        assert not many.done()
        for name, pool in client.clients.items():
            if name != slow_name:
                assert pool.client_pool.stats()["in_use"] == 0, f"{name}'s is held"
        started = time.monotonic()
        assert await client.set(fast_key, b"v")  # (one connection a node: it is free)
        assert time.monotonic() - started < 0.2
        assert await many == expected
        proxy.set_mode("pass")
        assert idle_everywhere(client)
        await client.close()

    run(main())


@pytest.mark.parametrize("command", ["get", "get_many", "set_many"])
def test_cancel_at_every_await(nodes: List[MemcachedProcess], command: str) -> None:
    servers = addrs(nodes)
    keys = [f"cx-{command}-{i}" for i in range(30)]
    values = {k: f"value of {k}".encode() for k in keys}
    calls: Dict[str, Callable[[HashClient], Awaitable[Any]]] = {
        "get": lambda c: c.get(keys[0]),
        "get_many": lambda c: c.get_many(keys),
        "set_many": lambda c: c.set_many(values),
    }

    async def main() -> None:
        client = HashClient(servers, use_pooling=True, max_pool_size=2)
        assert await client.set_many(values) == []
        completed = False
        ticks = 0
        deadline = time.monotonic() + 20
        while not completed and ticks < 500 and time.monotonic() < deadline:
            task = asyncio.ensure_future(calls[command](client))
            for _ in range(ticks):
                await asyncio.sleep(0)
            if task.done():
                completed = True
                await task
            else:
                task.cancel()
                try:
                    await task
                    completed = True
                except asyncio.CancelledError:
                    pass
            # Afterwards: no slot lost, right values.
            assert idle_everywhere(client)
            assert await client.get_many(keys) == values
            assert await client.get(keys[-1]) == values[keys[-1]]
            ticks += 1
        assert completed
        await client.close()

    run(main(), timeout=50)
