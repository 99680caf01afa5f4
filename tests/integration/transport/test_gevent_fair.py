"""Fair tails under gevent: a greenlet whose replies arrive buffered (so its socket never
makes it wait) still lets the others run, once per command. The gevent part runs in a fresh
process (tests/integration/transport/fair_gevent_scenarios.py); this pytest process stays unpatched
and owns the memcached server."""

from __future__ import annotations

import threading
import time
from typing import Any, List

import pytest
from support import gevent_runner
from support.helpers import tcp
from support.servers import MemcachedProcess

import pymc

monkey = pytest.importorskip("gevent.monkey")


@pytest.mark.skipif(monkey.is_module_patched("socket"), reason="starts its own gevent process")
@pytest.mark.timeout(120)
def test_a_single_get_is_not_starved_by_greenlets_whose_replies_are_buffered(
    memcached: MemcachedProcess,
) -> None:
    args = {"server": list(tcp(memcached)), "greenlets": 200, "gets": 40}
    out = gevent_runner.run_scenario(
        "integration/transport/fair_gevent_scenarios.py", "one_get_is_not_starved", args
    )
    assert "scenario one_get_is_not_starved passed" in out


@pytest.mark.skipif(monkey.is_module_patched("socket"), reason="starts its own gevent process")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("patch", [True, False], ids=["patch_all", "gevent_socket_module"])
def test_a_greenlet_storing_with_noreply_does_not_stall_a_reader(
    memcached: MemcachedProcess, patch: bool
) -> None:
    args = {"server": list(tcp(memcached)), "sets": 6000, "reads": 3, "patch": patch}
    name = "noreply_writer_lets_readers_run"
    out = gevent_runner.run_scenario("integration/transport/fair_gevent_scenarios.py", name, args)
    assert f"scenario {name} passed" in out


@pytest.mark.skipif(monkey.is_module_patched("socket"), reason="starts its own gevent process")
@pytest.mark.timeout(60)
def test_the_pools_idle_check_does_not_go_through_the_hub(memcached: MemcachedProcess) -> None:
    args = {"server": list(tcp(memcached))}
    name = "idle_check_does_not_yield"
    out = gevent_runner.run_scenario("integration/transport/fair_gevent_scenarios.py", name, args)
    assert f"scenario {name} passed" in out


@pytest.mark.skipif(monkey.is_module_patched("time"), reason="needs the blocking time.sleep")
def test_blocking_sockets_never_yield(
    memcached: MemcachedProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Threaded users pay nothing: a Client on a standard socket never calls time.sleep,
    whichever command it runs (PooledClient and a plain Client, in a thread)."""
    sleeps: List[Any] = []
    real_sleep = time.sleep

    def counting_sleep(seconds: float) -> None:
        if threading.current_thread() is worker:
            sleeps.append(seconds)
        real_sleep(seconds)

    errors: List[BaseException] = []

    def run() -> None:
        try:
            commands()
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    def commands() -> None:
        pooled = pymc.PooledClient(tcp(memcached))
        with pymc.Client(tcp(memcached)) as client:
            for i in range(20):
                assert client.set(f"b{i}", "v")
                assert client.get(f"b{i}") == b"v"
                assert pooled.get(f"b{i}") == b"v"
                assert client.get_many([f"b{i}", "missing"]) == {f"b{i}": b"v"}
                client.set(f"n{i}", "v", noreply=True)
                assert client.delete(f"n{i}")
        pooled.close()

    monkeypatch.setattr(time, "sleep", counting_sleep)
    worker = threading.Thread(target=run)
    worker.start()
    worker.join(30)
    assert not worker.is_alive() and not errors, errors
    assert sleeps == []
