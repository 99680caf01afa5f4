"""Hostile tests of the single-node asyncio clients (Client, PooledClient, RetryingClient):
interruptions by ``asyncio.timeout``/``wait_for`` rather than ``task.cancel()``, a client
that outlives its event loop, pools whose waiters give up, servers that drip, refuse or
misbehave. Each test targets a way the clients could return a wrong value, lose a pool
slot, hang, or raise something other than what the sync client raises."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple
from unittest import mock

import pytest
from support.helpers import Interrupt, run_in_child
from support.nutcracker import NutcrackerProcess
from support.servers import MemcachedProcess

import pymc
import pymc.asyncio as aio
from integration.client import test_twemproxy
from integration.transport import test_auth_proxy
from pymc.asyncio.connection import AsyncConnection

# The sync suite's twemproxy fixtures (a backend down, every backend down) and key tags.
half_down = test_twemproxy.half_down
all_down = test_twemproxy.all_down
tag = test_twemproxy.tag
mixed_backends = test_auth_proxy.mixed_backends  # (a backend with auth, one without)

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


# --------------------------------------------------------------------------- twemproxy


@pytest.mark.parametrize("timeout", [3.0, None])
@pytest.mark.parametrize("kind", KINDS)
def test_twemproxy_with_a_backend_down(
    half_down: NutcrackerProcess, kind: str, timeout: Optional[float]
) -> None:
    """Behind twemproxy with a backend down (the one ``version``, the sync marker, goes
    to, so every marker is answered SERVER_ERROR): noreply writes then reads of live
    keys answer right; a key on the down backend gets twemproxy's error at once; a lone
    marker (raw_command) is survived; nothing ever waits for a reply that never comes."""
    live = half_down.keys(tag(), live=True, count=2)
    (dead,) = half_down.keys(tag(), live=False)

    async def main() -> None:
        c = make(kind, half_down.server, timeout=timeout)
        loop = asyncio.get_running_loop()
        for round_ in range(3):
            await c.set(live[0], b"v%d" % round_, noreply=True)
            assert await c.get(live[0]) == b"v%d" % round_
            await c.set_many({live[1]: b"a"}, noreply=True)
            assert await c.get_many(live) == {live[0]: b"v%d" % round_, live[1]: b"a"}
            await c.set(live[0], b"w", noreply=True)
            start = loop.time()
            with pytest.raises(pymc.MemcacheServerError, match="Connection refused"):
                await c.get(dead)
            assert loop.time() - start < 1.5
            await c.delete(dead, noreply=True)  # (twemproxy drops what comes back)
            assert await c.gets(live[0]) == (b"w", mock.ANY)
            reply = await c.raw_command(f"get {live[1]}", "END\r\n")
            assert reply.startswith(b"VALUE")
        await c.close()

    arun(main(), 15)


@pytest.mark.parametrize("kind", KINDS)
def test_twemproxy_with_every_backend_down(all_down: NutcrackerProcess, kind: str) -> None:
    """Marker and command both answered with errors: the command's error, at once, with
    or without a timeout."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for timeout in (3.0, None):
            c = make(kind, all_down.server, timeout=timeout)
            for _ in range(2):
                await c.set("k", b"v", noreply=True)
                start = loop.time()
                with pytest.raises(pymc.MemcacheServerError, match="Connection refused"):
                    await c.get("k")
                with pytest.raises(pymc.MemcacheServerError, match="Connection refused"):
                    await c.gets("k")
                assert loop.time() - start < 1.5
            await c.close()

    arun(main(), 15)


@pytest.mark.parametrize("kind", KINDS)
def test_twemproxy_closes_on_a_noreply_flush_all(
    memcached: MemcachedProcess, twemproxy: Callable[..., NutcrackerProcess], kind: str
) -> None:
    """twemproxy closes the connection on ``flush_all`` (sent noreply, nothing answers
    it): the next command is served on a new connection, or, if it crossed the close,
    raises MemcacheUnsupportedCommandError; the one after is served at once."""
    proxy = twemproxy([(memcached.address[0], memcached.address[1])])
    key = tag()

    async def main() -> None:
        c = make(kind, proxy.server, timeout=3.0)
        assert await c.set(key, b"v") is True
        for pause in (0.2, 0.2, 0, 0, 0):
            await c.flush_all(noreply=True)
            await asyncio.sleep(pause)
            try:
                assert await c.get(key) == b"v"
            except pymc.MemcacheUnsupportedCommandError as exc:
                assert pause == 0 and "noreply" in str(exc)
            assert await c.get(key) == b"v"
        await c.close()

    arun(main(), 15)


@pytest.mark.parametrize("kind", KINDS)
def test_a_write_after_a_reply_the_server_closes_on_is_not_lost(
    memcached: MemcachedProcess, fault_proxy: Any, kind: str
) -> None:
    """The server (a proxy: twemproxy does so after an error to a multi-key get) closes
    the connection right after a complete reply. A noreply write that follows at once goes
    out on a new connection and is stored, not into the closed one, lost; and the read
    after it gets the value, not an error saying the server refused the write. (The close
    is in the socket before the write, but the loop has not read it yet: its read comes
    after the task's step.)"""
    proxy = fault_proxy(memcached.address)

    async def main() -> None:
        c = make(kind, proxy.server, timeout=3.0)
        for n in range(3):
            proxy.set_mode("pass")
            await c.meta_noop()  # (connected, the meta check made)
            proxy.set_mode("close_after", nbytes=5)
            assert await c.get("gone") is None  # END, then the close
            time.sleep(0.02)  # (the loop blocked: the close is in the socket, not yet read)
            await c.set("w", b"after-%d" % n, noreply=True)
            proxy.set_mode("pass")
            assert await c.get("w") == b"after-%d" % n
        await c.close()

    arun(main(), 15)


@pytest.mark.parametrize("ignore_exc", [False, True])
@pytest.mark.parametrize("kind", [*KINDS, "HashClient"])
def test_a_noreply_write_after_a_multi_get_twemproxy_closes_on_is_not_lost(
    half_down: NutcrackerProcess, kind: str, ignore_exc: bool
) -> None:
    """The sync suite's test of the same name: twemproxy answers a multi-key get touching
    a down backend with ``SERVER_ERROR``, then closes the connection, maybe after the next
    command went out. The noreply write that follows at once is stored, never lost, and
    the read after it gets the value (no MemcacheUnsupportedCommandError)."""
    (live,) = half_down.keys(tag(), live=True)
    (dead,) = half_down.keys(tag(), live=False)

    async def main() -> None:
        if kind == "HashClient":
            c = aio.HashClient([half_down.server], timeout=3, ignore_exc=ignore_exc)
        else:
            c = make(kind, half_down.server, timeout=3.0, ignore_exc=ignore_exc)
        for n in range(test_twemproxy.CLOSE_RACE_ROUNDS):
            if ignore_exc:
                assert await c.get_many([live, dead]) == {}
            else:
                with pytest.raises(pymc.MemcacheServerError, match="Connection refused"):
                    await c.get_many([live, dead])
            await c.set(live, b"r%d" % n, noreply=True)
            assert await c.get(live) == b"r%d" % n, n
        await c.close()

    arun(main(), 15)


def test_credentials_never_reach_a_backend_without_auth_through_twemproxy(
    twemproxy: Callable[..., NutcrackerProcess],
    mixed_backends: Tuple[MemcachedProcess, MemcachedProcess],
) -> None:
    """ASCII auth through twemproxy whose backend for the key ``auth`` has no auth: the
    asyncio client does not send the credentials (they would be stored there, an item
    anyone can read), as the sync one does not."""
    with_auth, plain = mixed_backends
    proxy = test_auth_proxy.layout_splitting_auth(twemproxy, with_auth, plain)

    async def main() -> None:
        for kind in KINDS:
            c = make(kind, proxy.server, username="pymc", password="s3cret-pw")
            try:
                await c.get("some-key")
            except Exception as exc:
                assert isinstance(exc, pymc.MemcacheAuthNotRequiredError), repr(exc)
            else:
                raise AssertionError("no error from a backend that does not take auth")
            await c.close()

    arun(main())
    with pymc.Client(plain.address) as raw:
        assert raw.get("auth") is None, "the credentials were stored in a backend without auth"


# --------------------------------------------------------------------------- the bridge


INTERRUPTED: Dict[str, Callable[[Any], Any]] = {
    "get": lambda c: c.get("k"),
    "get_many": lambda c: c.get_many(["k", "k2"]),
    "set_many": lambda c: c.set_many({"k": b"v", "k2": b"v2"}),
    "meta_set": lambda c: c.meta_set("k", b"v"),
    "gets": lambda c: c.gets("k"),
    "fetch": lambda c: c.fetch("k", lambda: b"v"),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(INTERRUPTED))
def test_a_base_exception_at_every_await(
    memcached: MemcachedProcess, monkeypatch: pytest.MonkeyPatch, kind: str, name: str
) -> None:
    """A BaseException that is not a cancellation (KeyboardInterrupt, SystemExit, a
    gevent.Timeout-like one) raised at each wait of a command, through the greenlet
    bridge: it leaves unchanged, the connection is closed, the pool slot comes back, and
    the next commands get their own values."""
    state = {"at": 0, "count": 0}
    original = AsyncConnection._wait

    async def wait(conn: AsyncConnection, awaitable: Any) -> Any:
        state["count"] += 1
        if state["count"] == state["at"]:
            close = getattr(awaitable, "close", None)
            if close is not None:
                close()  # (a coroutine never awaited)
            raise Interrupt("at a wait")
        return await original(conn, awaitable)

    monkeypatch.setattr(AsyncConnection, "_wait", wait)

    async def main() -> int:
        c = make(kind, memcached.server)
        await c.set("k2", b"v2")
        for at in range(1, 20):
            await c.set("k", b"v")
            state["at"], state["count"] = at, 0
            try:
                await INTERRUPTED[name](c)
            except Interrupt:
                pass
            else:
                return at
            finally:
                state["at"] = 0
            pooled = getattr(c, "_client", c)
            if isinstance(pooled, aio.PooledClient):
                assert pooled.client_pool.stats()["in_use"] == 0
            else:
                assert not pooled.conn.pending and pooled.conn.sock is None
            assert await c.get_many(["k", "k2"]) == {"k": b"v", "k2": b"v2"}
        raise AssertionError("more waits than any of these commands makes")

    assert arun(main()) > 1


def test_a_base_exception_from_a_fetch_compute_gives_the_lease_back(
    memcached: MemcachedProcess,
) -> None:
    """fetch's coroutine compute raises a BaseException (or is cancelled, or outlasts an
    asyncio timeout): it leaves unchanged, the lease is given back (the next fetch
    computes at once instead of waiting out lease_ttl), and no lease placeholder is ever
    returned as a value."""

    async def main() -> None:
        c = aio.Client(memcached.server, timeout=2)
        other = aio.Client(memcached.server, timeout=2)
        loop = asyncio.get_running_loop()

        async def interrupted() -> bytes:
            await asyncio.sleep(0.001)
            raise Interrupt("in compute")

        async def slow() -> bytes:
            await asyncio.sleep(5)
            return b"slow"

        for n, failing in enumerate((interrupted, slow)):
            key = f"lease{n}"
            with pytest.raises((Interrupt, TimeoutError)):
                await within(0.2, c.fetch(key, failing, 0, lease_ttl=30))
            assert await other.get(key) is None  # (nothing stored, no placeholder)
            start = loop.time()
            assert await other.fetch(key, lambda: b"computed", 0, lease_ttl=30) == b"computed"
            assert loop.time() - start < 1
            assert await c.get(key) == b"computed"

    arun(main())


def test_commands_see_the_callers_context_variables(memcached: MemcachedProcess) -> None:
    """A bridged command runs in the calling task's context: an on_command hook and a
    fetch compute see its context variables; each task its own."""
    import contextvars

    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    seen: List[Tuple[str, str]] = []

    def hook(command: str, *args: Any, **kwargs: Any) -> None:
        seen.append((command, request_id.get("unset")))

    async def main() -> None:
        c = aio.PooledClient(memcached.server, timeout=2, max_pool_size=2, on_command=hook)

        async def one(i: int) -> bytes:
            request_id.set(f"r{i}")
            await c.set(f"cv{i}", b"x")
            return await c.fetch(f"cf{i}", lambda: request_id.get().encode(), 0)  # type: ignore[no-any-return]

        assert await asyncio.gather(*(one(i) for i in range(4))) == [b"r0", b"r1", b"r2", b"r3"]

    arun(main())
    assert seen and all(rid != "unset" for _, rid in seen)


@pytest.mark.parametrize("kind", KINDS)
def test_the_on_command_hook_sees_what_it_sees_in_sync(
    memcached: MemcachedProcess, kind: str
) -> None:
    """``on_command`` (a tracer's hook) is called for each command of an asyncio client
    as for the sync Client: the same commands, keys and server, in the same order."""

    def scenario(log: List[Any]) -> Callable[[str, Any, Any], None]:
        return lambda command, keys, server: log.append((command, keys, server))

    want: List[Any] = []
    sync = pymc.Client(memcached.server, on_command=scenario(want))
    for call in SCENARIO_CALLS:
        call(sync)
    sync.close()
    memcached.flush_all()

    async def main() -> List[Any]:
        have: List[Any] = []
        c = make(kind, memcached.server, on_command=scenario(have))
        for call in SCENARIO_CALLS:
            await call(c)
        await c.close()
        return have

    assert arun(main()) == want and len(want) == 7


SCENARIO_CALLS: List[Callable[[Any], Any]] = [
    lambda c: c.set("a", b"1"),
    lambda c: c.get("a"),
    lambda c: c.get("missing", b"default"),
    lambda c: c.get_many(["a", "b"]),
    lambda c: c.stats("slabs"),
    lambda c: c.fetch("f", lambda: b"computed"),  # (lease_get, lease_set)
]


def test_descriptors_above_1024(memcached: MemcachedProcess) -> None:
    """With more than 1024 descriptors open (select() cannot watch them), the asyncio
    clients work: the connection's descriptor is above 1024, its look before each send
    and the loop's own polling both handle it."""
    server = memcached.server

    def body() -> Dict[str, Any]:
        import os
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard < 1200:
            return {"skip": f"RLIMIT_NOFILE hard limit {hard}"}
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
        held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]

        async def main() -> Dict[str, Any]:
            c = aio.Client(server, timeout=2)
            await c.set("high", b"fd")
            await c.set("nr", b"quiet", noreply=True)
            link = c.conn.sock
            assert link is not None and link.transport is not None
            fd = link.transport.get_extra_info("socket").fileno()
            pc = aio.PooledClient(server, timeout=2, max_pool_size=4)
            values = await asyncio.gather(*(pc.get("high") for _ in range(16)))
            return {
                "fd": fd,
                "get": (await c.get("high")).decode(),
                "many": sorted((await c.get_many(["high", "nr"])).values()),
                "pooled": sorted(set(v.decode() for v in values)),
            }

        try:
            return {
                k: v if not isinstance(v, list) else [str(x) for x in v]
                for k, v in arun(main()).items()
            }
        finally:
            for fd in held:
                os.close(fd)

    report = run_in_child(body, timeout=20)
    if "skip" in report:
        pytest.skip(report["skip"])
    assert "error" not in report, report["error"]
    assert report["fd"] > 1024
    assert report["get"] == "fd" and report["pooled"] == ["fd"]
    assert report["many"] == ["b'fd'", "b'quiet'"]


def test_a_thousand_tasks_on_four_connections(memcached: MemcachedProcess) -> None:
    """1000 tasks on a pool of 4 with a pool_timeout of 20 ms, a third of them under
    wait_for timeouts of a few ms: those that wait too long get MemcachePoolTimeoutError
    (or the timeout), the others their own value; afterwards no slot is taken, each idle
    connection is clean, and 4 concurrent callers are all served."""
    import random

    async def main() -> Dict[str, int]:
        pc = aio.PooledClient(memcached.server, timeout=1, max_pool_size=4, pool_timeout=0.02)
        await pc.set_many({f"t{i}": b"v%d" % i for i in range(50)})
        rng = random.Random(4)
        counts = {"ok": 0, "wrong": 0, "pool_timeout": 0, "timeout": 0}

        async def one(i: int) -> None:
            key, want = f"t{i % 50}", b"v%d" % (i % 50)
            try:
                if i % 3 == 0:
                    got = await asyncio.wait_for(pc.get(key), rng.uniform(0.001, 0.03))
                elif i % 3 == 1:
                    got = (await pc.get_many([key])).get(key)
                else:
                    got = (await pc.gets(key))[0]
            except pymc.MemcachePoolTimeoutError:
                counts["pool_timeout"] += 1
                return
            except asyncio.TimeoutError:
                counts["timeout"] += 1
                return
            counts["ok" if got == want else "wrong"] += 1

        await asyncio.gather(*(one(i) for i in range(1000)))
        stats = pc.client_pool.stats()
        assert stats["in_use"] == 0 and stats["waiting"] == 0 and stats["idle"] <= 4
        assert all(client.is_clean() for client, _ in pc.client_pool._idle)
        assert await asyncio.gather(*(pc.get(f"t{i}") for i in range(4))) == [
            b"v0",
            b"v1",
            b"v2",
            b"v3",
        ]
        return counts

    counts = arun(main())
    assert counts["wrong"] == 0
    assert counts["ok"] > 0 and counts["pool_timeout"] > 0
