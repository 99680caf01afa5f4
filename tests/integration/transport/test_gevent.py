"""pymc under gevent: the integration suite under ``monkey.patch_all()``, both import orders,
explicit gevent sockets and locks without patching, and cooperative behaviour under load.

Every gevent run happens in a subprocess (this pytest process stays unpatched): the suite in
``python -m pytest -p integration.transport.gevent_patch ...``, the scenarios in
``tests/integration/transport/gevent_scenarios.py``.
Servers, fault proxies and the ElastiCache configuration endpoint live here, in the parent,
so a proxy's delay is real time whatever the child's hub does; a scenario asks for mode
changes over its stdout/stdin (see ``gevent_scenarios.command``).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import pytest
from support.faultproxy import FaultProxy
from support.helpers import tcp
from support.servers import MemcachedProcess

monkey = pytest.importorskip("gevent.monkey")

from pymc import Client  # noqa: E402
from pymc.testing import ConfigEndpoint  # noqa: E402

pytestmark = pytest.mark.skipif(
    monkey.is_module_patched("socket"),
    reason="starts its own gevent processes and needs an unpatched parent (its proxies must "
    "keep real time whatever the child's hub does)",
)

ROOT = Path(__file__).resolve().parents[3]
TESTS = ROOT / "tests"
SCENARIOS = TESTS / "integration" / "transport" / "gevent_scenarios.py"
#: The integration suite run under patch_all (the files that exist).
SUITE = [
    "tests/integration/client/test_client.py",
    "tests/unit/options/test_client_arguments.py",
    "tests/integration/pool/test_pool.py",
    "tests/unit/pool/test_object_pool.py",
    "tests/integration/retry/test_retry.py",
    "tests/unit/retry/test_retry.py",
    "tests/integration/cluster/test_cluster.py",
]
SUITE_TIMEOUT = 300
Handler = Callable[[Dict[str, Any]], Any]


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT), str(TESTS)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("PYTEST_ADDOPTS", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tail(lines: Sequence[str], n: int = 80) -> str:
    return "".join(lines[-n:])


def run_scenario(
    name: str, args: Dict[str, Any], handle: Optional[Handler] = None, timeout: float = 60
) -> List[str]:
    """Run one scenario in a fresh process, answering its commands; fail with its output."""
    proc = subprocess.Popen(
        [sys.executable, str(SCENARIOS), name, json.dumps(args)],
        cwd=ROOT,
        env=child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    assert proc.stdin is not None and proc.stdout is not None
    lines: queue.Queue[Optional[str]] = queue.Queue()
    stdout = proc.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    output: List[str] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"scenario {name} did not finish in {timeout} s:\n{tail(output)}")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith("CMD "):
                assert handle is not None, f"scenario {name} sent a command: {line}"
                answer = handle(json.loads(line[4:]))
                output.append(f"[parent] {line[4:].strip()} -> {answer!r}\n")
                proc.stdin.write(json.dumps(answer) + "\n")
                proc.stdin.flush()
            else:
                output.append(line)
        returncode = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        stdout.close()
    assert returncode == 0, f"scenario {name} failed (exit {returncode}):\n{tail(output)}"
    print("".join(output))  # shown with -s or -rP: the timings the scenario measured
    return output


def proxy_commands(proxies: Sequence[FaultProxy]) -> Handler:
    def handle(request: Dict[str, Any]) -> Any:
        params = dict(request)
        proxy = proxies[params.pop("proxy")]
        proxy.set_mode(params.pop("mode"), **params)
        return "ok"

    return handle


def seed(server: MemcachedProcess, count: int, prefix: str) -> Dict[Union[str, bytes], str]:
    """Store ``count`` keys straight into ``server``; return ``{key: value}``."""
    # keyed as set_many's Mapping[str | bytes, ...] is (a Mapping's key type is invariant)
    values: Dict[Union[str, bytes], str] = {
        f"{prefix}-{i}": f"value-{prefix}-{i}" for i in range(count)
    }
    with Client(tcp(server)) as client:
        assert client.set_many(values) == []
    return values


# -- the integration suite under patch_all -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(SUITE_TIMEOUT + 30)
def test_integration_suite_passes_under_gevent_monkey_patching() -> None:
    files = [f for f in SUITE if (ROOT / f).exists()]
    assert files
    command = [sys.executable, "-m", "pytest", "-p", "integration.transport.gevent_patch", *files]
    command += ["-q", "-x", "-p", "no:cacheprovider"]
    try:
        result = subprocess.run(
            command,
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=SUITE_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode()
        pytest.fail(f"the gevent suite did not finish in {SUITE_TIMEOUT} s:\n{out[-6000:]}")
    out = result.stdout
    assert result.returncode == 0, f"the suite failed under gevent:\n{out[-8000:]}"
    assert "gevent_patch: monkey-patched" in out, out[-2000:]  # it really ran patched


# -- import order --------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["patch_first", "import_first"])
def test_import_order(
    order: str,
    memcached: MemcachedProcess,
    memcached_tls: MemcachedProcess,
    fault_proxy: Callable[..., FaultProxy],
    tmp_path: Path,
) -> None:
    proxy = fault_proxy(tcp(memcached))
    proxy.set_mode("delay", seconds=0.1)
    keys = seed(memcached, 50, "order")
    assert memcached_tls.ca is not None
    ca = tmp_path / "ca.pem"
    memcached_tls.ca.cert_pem.write_to_path(str(ca))
    args = {
        "order": order,
        "proxy": list(proxy.address),
        "keys": keys,
        "tls_server": ["localhost", memcached_tls.port],
        "tls_ca": str(ca),
    }
    run_scenario("import_order", args)


def test_explicit_gevent_socket_and_locks_without_patching(
    memcached: MemcachedProcess, fault_proxy: Callable[..., FaultProxy]
) -> None:
    proxy = fault_proxy(tcp(memcached))
    proxy.set_mode("delay", seconds=0.1)
    keys = seed(memcached, 100, "explicit")
    run_scenario("explicit_gevent", {"proxy": list(proxy.address), "keys": keys})


# -- behaviour under patch_all -------------------------------------------------------------------


def test_400_greenlets_share_a_hash_client_cooperatively(
    memcached_nodes: List[MemcachedProcess], fault_proxy: Callable[..., FaultProxy]
) -> None:
    proxies = [fault_proxy(tcp(node)) for node in memcached_nodes[:2]]
    args = {"proxies": [list(p.address) for p in proxies]}
    run_scenario("cooperative_hash", args, proxy_commands(proxies))


def test_gevent_timeout_mid_command_leaves_no_dirty_connection(
    memcached_nodes: List[MemcachedProcess], fault_proxy: Callable[..., FaultProxy]
) -> None:
    proxies = [fault_proxy(tcp(node)) for node in memcached_nodes[:2]]
    args = {"proxies": [list(p.address) for p in proxies]}
    run_scenario("timeout_mid_command", args, proxy_commands(proxies))


@pytest.mark.parametrize("patched", [True, False])
def test_a_slow_node_does_not_starve_a_healthy_one_under_gevent(
    memcached_nodes: List[MemcachedProcess], fault_proxy: Callable[..., FaultProxy], patched: bool
) -> None:
    from pymc import HashClient

    proxy = fault_proxy(tcp(memcached_nodes[1]))
    healthy = tcp(memcached_nodes[0])
    values = {f"slow-fan-{i}": f"value-{i}" for i in range(40)}
    with HashClient([healthy, proxy.address]) as client:
        assert client.set_many(values) == []
    proxy.set_mode("delay", seconds=0.5)
    args = {"healthy": list(healthy), "slow": list(proxy.address), "values": values}
    run_scenario("slow_node_fan_out", {**args, "patched": patched})


def test_greenlets_wait_for_an_exhausted_pool_cooperatively(memcached: MemcachedProcess) -> None:
    run_scenario("exhausted_pool", {"server": list(tcp(memcached))})


def test_elasticache_poller_is_a_greenlet_and_never_stalls_the_hub(
    memcached_nodes: List[MemcachedProcess],
) -> None:
    first, second = (tcp(node) for node in memcached_nodes[2:4])
    with ConfigEndpoint([first]) as endpoint:

        def handle(request: Dict[str, Any]) -> Any:
            if request["endpoint"] == "requests":
                return endpoint.requests
            if "nodes" in request:
                endpoint.set_nodes([tuple(node) for node in request["nodes"]])
            endpoint.set_mode(request["endpoint"])
            return "ok"

        args = {"endpoint": endpoint.server, "nodes": [list(first), list(second)]}
        run_scenario("elasticache_poller", args, handle)


def test_dropped_elasticache_clients_are_collected_under_gevent(
    new_memcached: Callable[..., MemcachedProcess],
) -> None:
    server = new_memcached()  # private: its connection count is the scenario's
    with ConfigEndpoint([tcp(server)]) as endpoint:

        def handle(request: Dict[str, Any]) -> Any:
            return int(server.stats()[request["stats"]])

        run_scenario("elasticache_dropped", {"endpoint": endpoint.server}, handle)
