"""Many greenlets with random timeouts: no wrong value, no lost slot."""

from __future__ import annotations

from typing import List

import pytest
from support.helpers import tcp
from support.servers import MemcachedProcess


@pytest.mark.timeout(90)
def test_gevent_swarm_with_random_timeouts(memcached_nodes: List[MemcachedProcess]) -> None:
    """24 greenlets run get_many/set_many(noreply too)/get/gets_many over a 3-node HashClient
    with gevent.Timeout at random points: no read is ever wrong, every pool slot comes back."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("gevent")
    root = Path(__file__).resolve().parents[3]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "tests")])
    env.pop("PYTEST_ADDOPTS", None)
    args = {"servers": [list(tcp(n)) for n in memcached_nodes[:3]], "seed": 7, "seconds": 4}
    proc = subprocess.run(
        [sys.executable, str(root / "tests/support/attack_gevent_swarm.py"), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=root,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
