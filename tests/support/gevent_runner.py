"""Run a gevent scenario script in a fresh process (this pytest process stays unpatched)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def run_scenario(script: str, name: str, args: Dict[str, Any], timeout: float = 90) -> str:
    """``python tests/<script> NAME ARGS`` under a deadline; its output, or a test failure.

    ``script`` is the scenario script's path below ``tests/`` (it sits beside its runner test,
    e.g. ``integration/transport/fair_gevent_scenarios.py``)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    env.pop("PYTEST_ADDOPTS", None)
    try:
        result = subprocess.run(
            [sys.executable, str(ROOT / "tests" / script), name, json.dumps(args)],
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
