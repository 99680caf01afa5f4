"""The asyncio HashClient's probe of its dead nodes: an asyncio task on the client's loop
(no thread, no sync socket), one at a time, with the sync client's rules (dead_timeout,
the health books), cancelled by close()."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Awaitable, Callable, List, Set

import pytest
from support.servers import MemcachedProcess

import pymc
from pymc.asyncio.cluster import HashClient

pytestmark = pytest.mark.timeout(60)


def run(coro: Awaitable[Any], timeout: float = 30) -> Any:
    async def bounded() -> Any:
        asyncio.current_task().set_name("_bounded")  # type: ignore[union-attr]
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded(), debug=True)


@pytest.fixture
def thread_starts(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """The names of the threads started during the test."""
    started: List[str] = []
    original = threading.Thread.start

    def start(self: threading.Thread) -> None:
        started.append(self.name)
        original(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    return started


def others() -> Set[asyncio.Task[Any]]:
    """The tasks of the loop but the test's own (named ``_...``)."""
    return {t for t in asyncio.all_tasks() if not t.get_name().startswith("_")}


def key_on(client: HashClient, name: str, prefix: str) -> str:
    keys = (f"{prefix}{i}" for i in range(1000))
    return next(k for k in keys if client.snapshot.node_for(k) == name)


def ejecting(servers: List[Any], timeout: float, **options: Any) -> HashClient:
    """A client that ejects a node at its first failure and probes it 0.2 s later."""
    return HashClient(
        servers,
        retry_attempts=1,
        retry_timeout=0,
        dead_timeout=0.2,
        connect_timeout=timeout,
        timeout=timeout,
        ignore_exc=True,
        **options,
    )


def test_killed_node_comes_back_by_a_task_of_the_loop(
    new_memcached: Callable[..., MemcachedProcess], thread_starts: List[str]
) -> None:
    live = new_memcached()
    flaky = new_memcached()
    flaky_name = pymc.client.server_name(flaky.address)
    events: List[str] = []

    async def main() -> None:
        asyncio.current_task().set_name("_main")  # type: ignore[union-attr]
        threads = threading.active_count()
        client = ejecting(
            [live.address, flaky.address],
            0.5,
            on_event=lambda event, node, info: events.append(event),
        )
        key = key_on(client, flaky_name, "kill-")
        assert await client.set(key, b"1")
        flaky.kill()  # a crash: SIGKILL
        assert await client.get(key, b"d") == b"d"  # failed: ejected (retry_attempts=1)
        assert flaky_name not in client.snapshot.names
        # Dead and not restarted: the probes past dead_timeout fail, the node stays out.
        deadline = time.monotonic() + 0.6
        while time.monotonic() < deadline:
            await client.get("other")
            await client.get_many(["other", "other2"])
            await asyncio.sleep(0.05)
        assert flaky_name not in client.snapshot.names
        flaky.start()  # the same port
        for _ in range(100):  # a request past dead_timeout starts the probe (here in the
            await client.get_many(["other", "other2"])  # bridge, from the many-key code)
            if flaky_name in client.snapshot.names:
                break
            await asyncio.sleep(0.05)
        assert flaky_name in client.snapshot.names
        assert events.count("node_revived") == 1
        assert await client.set(key, b"2") and await client.get(key) == b"2"
        assert thread_starts == []
        assert threading.active_count() == threads
        await client.close()
        assert others() == set()

    run(main())


def test_close_cancels_a_probe_in_flight(
    nodes: List[MemcachedProcess], fault_proxy: Callable[..., Any], thread_starts: List[str]
) -> None:
    proxy = fault_proxy(nodes[0].address)
    servers = [("127.0.0.1", proxy.port), nodes[1].address]
    black_holed = f"127.0.0.1:{proxy.port}"
    thread_starts.clear()  # (the proxy's own)

    async def main() -> None:
        asyncio.current_task().set_name("_main")  # type: ignore[union-attr]
        client = ejecting(servers, 5)
        key = key_on(client, black_holed, "bh-")
        assert await client.set(key, b"1")
        proxy.set_mode("reset")
        assert await client.get(key, b"d") == b"d"  # failed: ejected (retry_attempts=1)
        assert black_holed not in client.snapshot.names
        proxy.set_mode("stall")  # replies dropped: the probe hangs (up to its 5 s timeout)
        started = time.monotonic()
        await asyncio.sleep(0.25)
        await client.get("other")  # starts the probe (dead_timeout passed)
        await asyncio.sleep(0.1)
        probes = others()
        assert probes, "no probe task runs"
        assert time.monotonic() - started < 2
        await client.close()
        assert others() == set()
        assert all(t.done() for t in probes)
        assert thread_starts == []
        # The client stays usable, and so is a later probe (its lock was given back).
        proxy.set_mode("pass")
        await asyncio.sleep(0.25)
        for _ in range(100):
            await client.get("other")
            if black_holed in client.snapshot.names:
                break
            await asyncio.sleep(0.05)
        assert black_holed in client.snapshot.names
        assert await client.get(key) == b"1"
        await client.close()
        assert others() == set()

    run(main())
