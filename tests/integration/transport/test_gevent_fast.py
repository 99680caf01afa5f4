"""The gevent fast paths (issue 19): under ``patch_all`` the pool's lock is the operating
system's and a get's first send and recv skip gevent's socket layer, with every guarantee
kept (one turn per command, cooperative waits, the deadline, no slot lost). Each scenario
runs in a fresh process (tests/integration/transport/fast_gevent_scenarios.py); this pytest process
stays unpatched and owns the memcached server."""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import pytest
from support import gevent_runner
from support.faultproxy import FaultProxy
from support.helpers import tcp
from support.servers import MemcachedProcess

monkey = pytest.importorskip("gevent.monkey")

pytestmark = pytest.mark.skipif(
    monkey.is_module_patched("socket"), reason="starts its own gevent processes"
)


def run_scenario(name: str, args: Dict[str, Any]) -> None:
    out = gevent_runner.run_scenario("integration/transport/fast_gevent_scenarios.py", name, args)
    assert f"scenario {name} passed" in out


@pytest.mark.timeout(90)
def test_pool_checkouts_take_no_gevent_lock_and_waits_stay_cooperative(
    memcached: MemcachedProcess,
) -> None:
    run_scenario("pool_takes_no_gevent_lock", {"server": list(tcp(memcached))})


@pytest.mark.timeout(90)
def test_gets_on_every_client_skip_gevents_socket_layer(memcached: MemcachedProcess) -> None:
    run_scenario("gets_skip_geventss_socket_layer", {"server": list(tcp(memcached))})


@pytest.mark.timeout(90)
def test_gets_whose_replies_are_buffered_still_yield_once_each(
    memcached: MemcachedProcess,
) -> None:
    run_scenario("buffered_replies_still_yield", {"server": list(tcp(memcached)), "gets": 200})


@pytest.mark.timeout(90)
def test_slow_replies_and_large_requests_take_gevents_cooperative_path(
    memcached: MemcachedProcess, fault_proxy: Callable[[Tuple[str, int]], FaultProxy]
) -> None:
    proxy = fault_proxy(tcp(memcached))
    proxy.set_mode("delay", seconds=0.3)
    args = {"server": list(tcp(memcached)), "proxy": list(proxy.address)}
    run_scenario("slow_reply_and_large_request", args)
