"""The pool under ``gevent.monkey.patch_all()``: a gevent.Timeout landing anywhere loses no
slot. Each scenario runs in a fresh process (tests/integration/pool/pool_gevent_scenarios.py); this
pytest process stays unpatched and owns the memcached server."""

from __future__ import annotations

from typing import Any, Dict

import pytest
from support import gevent_runner
from support.helpers import tcp
from support.servers import MemcachedProcess

monkey = pytest.importorskip("gevent.monkey")

pytestmark = pytest.mark.skipif(
    monkey.is_module_patched("socket"), reason="starts its own gevent processes"
)


def run_scenario(name: str, args: Dict[str, Any], timeout: float = 90) -> str:
    return gevent_runner.run_scenario(
        "integration/pool/pool_gevent_scenarios.py", name, args, timeout
    )


@pytest.mark.timeout(120)
def test_swarm_of_greenlets_with_random_timeouts_loses_no_slot(
    memcached: MemcachedProcess,
) -> None:
    out = run_scenario("swarm", {"server": list(tcp(memcached)), "greenlets": 400})
    assert "scenario swarm passed" in out


@pytest.mark.timeout(60)
def test_timeout_while_a_sibling_holds_the_pool_lock_loses_no_slot() -> None:
    out = run_scenario("lock_held", {})
    assert "scenario lock_held passed" in out
