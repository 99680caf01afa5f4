"""The pool under ``gevent.monkey.patch_all()``: a gevent.Timeout landing anywhere loses no
slot. Each scenario runs in a fresh process (tests/pool_gevent_scenarios.py); this pytest
process stays unpatched and owns the memcached server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest
from support.helpers import tcp
from support.servers import MemcachedProcess

monkey = pytest.importorskip("gevent.monkey")

pytestmark = pytest.mark.skipif(
    monkey.is_module_patched("socket"), reason="starts its own gevent processes"
)

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "tests" / "pool_gevent_scenarios.py"


def run_scenario(name: str, args: Dict[str, Any], timeout: float = 90) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    env.pop("PYTEST_ADDOPTS", None)
    try:
        result = subprocess.run(
            [sys.executable, str(SCENARIOS), name, json.dumps(args)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode()
        pytest.fail(f"scenario {name} did not finish in {timeout} s:\n{out[-4000:]}")
    assert result.returncode == 0, f"scenario {name} failed:\n{result.stdout[-6000:]}"
    print(result.stdout)
    return result.stdout


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
