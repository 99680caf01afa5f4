"""The native paths of the asyncio Client (set/add/replace/append/prepend/set_many,
get_many/gets/gat/gats, delete, incr/decr, touch: the sync command's plan executed by the
connection, no bridge) against the same command run by the sync Client and by the sync
command in the bridge: the same result, or the same exception, for the same input (bad
keys, str and bytes keys, noreply, key_prefix, a serde, missing keys, server errors), over
Client, PooledClient and HashClient."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Dict, List, Tuple

import pytest
from support.servers import MemcachedProcess

import pymc
import pymc.asyncio as aio
from pymc.serde import pickle_serde

Case = Tuple[str, Tuple[Any, ...], Dict[str, Any]]

BIG = b"x" * (2 * 1024 * 1024)  # over memcached's item size limit: a SERVER_ERROR

CASES: List[Case] = [
    ("set", ("k", b"new"), {}),
    ("set", (b"k", "text"), {}),
    ("set", ("k", 12), {"expire": 100, "flags": 3}),
    ("set", ("k", b"v"), {"noreply": True}),
    ("set", ("k", b"v"), {"noreply": False}),
    ("set", ("k", {"a": 1}), {}),
    ("set", ("bad key", b"v"), {}),
    ("set", ("k" * 300, b"v"), {}),
    ("set", ("clé", b"v"), {}),
    ("set", ("big", BIG), {}),
    ("set", ("big", BIG), {"noreply": True}),
    ("add", ("k", b"v"), {}),
    ("add", ("fresh", b"v"), {}),
    ("add", ("k", b"v"), {"noreply": True}),
    ("replace", ("k", b"r"), {}),
    ("replace", ("missing", b"r"), {}),
    ("append", ("k", b"+"), {}),
    ("append", ("missing", b"+"), {}),
    ("prepend", ("k", b"-"), {}),
    ("prepend", ("missing", b"-"), {}),
    ("set_many", ({"a": b"1", b"b": 2, "c": "three"},), {}),
    ("set_many", ({"a": b"1", "big": BIG},), {}),
    ("set_many", ({"a": b"1"},), {"noreply": True}),
    ("set_many", ({},), {}),
    ("set_many", ({"bad key": b"1"},), {}),
    ("get_many", (["k", "n", "missing"],), {}),
    ("get_many", ([b"k", "k"],), {}),
    ("get_many", ([],), {}),
    ("get_many", (["bad key"],), {}),
    ("get_many", ([f"many{i}" for i in range(600)],), {}),
    ("get_multi", (["k"],), {}),
    ("gets", ("k",), {}),
    ("gets", ("missing",), {"default": 1, "cas_default": 2}),
    ("gets", ("bad key",), {}),
    ("gets_many", (["k", "missing"],), {}),
    ("gat", ("k", 100), {}),
    ("gat", ("missing", 100), {"default": b"d"}),
    ("gats", ("k", 100), {}),
    ("delete", ("k",), {}),
    ("delete", ("missing",), {}),
    ("delete", ("k",), {"noreply": True}),
    ("delete", ("bad key",), {}),
    ("incr", ("n", 5), {}),
    ("incr", ("missing", 5), {}),
    ("incr", ("k", 1), {}),  # not a number: CLIENT_ERROR
    ("incr", ("n", 5), {"noreply": True}),
    ("incr", ("n", -1), {}),
    ("incr", ("fresh-n", 2), {"initial": 10, "ttl": 60}),
    ("decr", ("n", 2), {}),
    ("decr", ("missing", 2), {}),
    ("touch", ("k", 100), {}),
    ("touch", ("missing", 100), {}),
    ("touch", ("k",), {"noreply": True}),
]

OPTIONS: Dict[str, Dict[str, Any]] = {
    "plain": {},
    "prefix": {"key_prefix": b"pre:"},
    "unicode": {"allow_unicode_keys": True},
    "pickle": {"serde": pickle_serde},
    "default-noreply": {"default_noreply": True},
    "ignore-exc": {"ignore_exc": True},
}


def outcome(call: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    try:
        return ("ok", normalize(call(*args, **kwargs)))
    except Exception as exc:
        return ("raised", type(exc), str(exc))


async def aoutcome(call: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    try:
        return ("ok", normalize(await call(*args, **kwargs)))
    except Exception as exc:
        return ("raised", type(exc), str(exc))


def normalize(result: Any) -> Any:
    """cas tokens differ from one run to the next: their type is compared."""
    if type(result) is tuple and len(result) == 2 and type(result[1]) is bytes:
        return (result[0], "cas")
    if type(result) is dict:
        return {k: normalize(v) for k, v in result.items()}
    return result


def seed(server: Any) -> None:
    sync = pymc.Client(server)
    sync.flush_all()
    for prefix in (b"", b"pre:"):
        sync.set(prefix + b"k", b"v")
        sync.set(prefix + b"n", b"7")
        sync.set_many({prefix + b"many%d" % i: b"%d" % i for i in range(0, 600, 3)})
    sync.close()


def state(server: Any) -> Any:
    """What the server holds afterwards (the command's effect)."""
    sync = pymc.Client(server)
    keys = ["k", "n", "fresh", "fresh-n", "a", "b", "c", "big", "missing"]
    got = {p + k: sync.get(p + k) for p in ("", "pre:") for k in keys}
    sync.close()
    return got


@pytest.mark.parametrize("kind", ["Client", "PooledClient", "HashClient"])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_native_matches_sync_and_bridged(
    memcached: MemcachedProcess, option: str, kind: str
) -> None:
    opts = OPTIONS[option]
    server = memcached.server
    # Each asyncio client against its sync twin (a HashClient's ignore_exc hides more).
    sync: Any
    if kind == "Client":
        sync = pymc.Client(server, **opts)
    elif kind == "PooledClient":
        sync = pymc.PooledClient(server, max_pool_size=2, **opts)
    else:
        sync = pymc.HashClient([server], use_pooling=True, **opts)

    async def main() -> None:
        if kind == "Client":
            client: Any = aio.Client(server, **opts)
        elif kind == "PooledClient":
            client = aio.PooledClient(server, max_pool_size=2, **opts)
        else:
            client = aio.HashClient([server], use_pooling=True, **opts)
        bridged = aio.Client(server, **opts)  # (its run(): the sync command in the bridge)
        for name, args, kwargs in CASES:
            seed(server)
            want = outcome(getattr(sync, name), args, kwargs)
            noreply = option == "default-noreply" or kwargs.get("noreply")
            if noreply:
                sync.get("k")  # (the sync marker: the noreply command was served)
            want_state = state(server)
            seed(server)
            got = await aoutcome(getattr(client, name), args, kwargs)
            assert got == want, (name, args, kwargs)
            if noreply:
                await client.get("k")
            assert state(server) == want_state, (name, args, kwargs)
            if kind == "Client":
                seed(server)
                again = await aoutcome(bridged.run, (name, args, kwargs), {})
                assert again == want, ("bridged", name, args, kwargs)
                if noreply:  # (served before the next case seeds: else it may land after)
                    await bridged.get("k")
        await client.close()
        await bridged.close()

    asyncio.run(main())
    sync.disconnect_all() if kind != "Client" else sync.close()


def test_native_paths_skip_the_bridge(
    memcached: MemcachedProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The native commands never enter the bridge (unless a hook observes them)."""
    import pymc.asyncio.bridge as bridge
    import pymc.asyncio.client as client_module

    entered: List[str] = []
    original = bridge.run_sync

    async def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
        entered.append(getattr(fn, "__name__", "?"))
        return await original(fn, *args, **kwargs)

    monkeypatch.setattr(client_module, "run_sync", spy)
    calls = [(n, a, k) for n, a, k in CASES if "initial" not in k and n in aio.client.NATIVE]

    async def main(hooked: bool) -> List[str]:
        entered.clear()
        hook = (lambda *a: None) if hooked else None
        c = aio.Client(memcached.server, on_command=hook)
        for name, args, kwargs in calls:
            try:
                await getattr(c, name)(*args, **kwargs)
            except pymc.MemcacheError:
                pass
        await c.close()
        return list(entered)

    assert asyncio.run(main(False)) == []
    assert len(asyncio.run(main(True))) == len(calls)


def test_hash_get_many_skips_the_bridge(
    memcached_nodes: List[MemcachedProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """HashClient.get_many of plain keys fans out with no bridge, and gets what the sync
    HashClient gets; a bad key still raises the sync client's error."""
    import pymc.asyncio.bridge as bridge
    import pymc.asyncio.cluster as cluster_module

    entered: List[Any] = []
    original = bridge.run_sync

    async def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
        entered.append(fn)
        return await original(fn, *args, **kwargs)

    monkeypatch.setattr(cluster_module, "run_sync", spy)
    servers = [node.server for node in memcached_nodes]
    sync = pymc.HashClient(servers)
    values = {f"hk{i}": b"%d" % i for i in range(50)}
    sync.set_many(values)
    keys: List[Any] = [*values, "absent", b"hk1"]

    async def main() -> Tuple[Any, Any]:
        hc = aio.HashClient(servers, use_pooling=True)
        got = await hc.get_many(keys)
        with pytest.raises(pymc.MemcacheIllegalInputError) as bad:
            await hc.get_many(["hk1", "bad key"])
        await hc.close()
        return got, bad.value

    got, bad = asyncio.run(main())
    assert got == sync.get_many(keys)
    assert len(entered) == 1  # (the bad key only: the sync command's checks)
    with pytest.raises(pymc.MemcacheIllegalInputError) as sync_bad:
        sync.get_many(["hk1", "bad key"])
    assert str(bad) == str(sync_bad.value)
