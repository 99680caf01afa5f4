"""HashClient across fork: the child opens its own sockets; the parent counts once."""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.hashclients import Events, no_slot_out
from support.helpers import run_in_child, tcp
from support.servers import MemcachedProcess

from pymc import HashClient

ProxyFactory = Callable[[Tuple[str, int]], FaultProxy]


pytestmark = pytest.mark.timeout(60)


@pytest.mark.timeout(60)
def test_a_forked_child_serves_two_threads_on_its_own_sockets_and_the_parent_counts_once(
    memcached_nodes: List[MemcachedProcess], fault_proxy: ProxyFactory
) -> None:
    proxies = [fault_proxy(tcp(n)) for n in memcached_nodes[:2]]
    events = Events()
    client = HashClient(
        [p.server for p in proxies],
        use_pooling=True,
        max_pool_size=2,
        ignore_exc=True,
        retry_attempts=1000,
        retry_timeout=0,
        timeout=2,
        connect_timeout=2,
        on_event=events,
    )
    values = {f"f{i}": b"%d" % i for i in range(20)}
    assert client.set_many(values) == []
    assert client.get_many(list(values)) == values  # idle connections in the parent's pools
    parent_socks = {
        c.sock.getsockname()
        for p in client.clients.values()
        for c in p.client_pool.idle_objects()
        if c.sock is not None
    }
    bad = proxies[0]
    on_bad = [k for k in values if client.snapshot.node_for(k) == bad.server]
    good = {k: v for k, v in values.items() if k not in on_bad}

    def body() -> Dict[str, Any]:
        errors: List[str] = []
        results: List[bool] = []

        def worker() -> None:
            try:
                for _ in range(20):
                    results.append(client.get_many(list(values)) == values)
                    results.append(client.get(on_bad[0]) == values[on_bad[0]])
            except BaseException as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        used = [
            c.sock.getsockname()
            for p in client.clients.values()
            for c in p.client_pool.idle_objects()
            if c.sock is not None
        ]
        return {
            "errors": errors,
            "ok": all(results) and len(results) == 80,
            "alive": any(t.is_alive() for t in threads),
            "in_use": sum(p.client_pool.stats()["in_use"] for p in client.clients.values()),
            "parent_socket_reused": any(u in parent_socks for u in used),
            "failures": dict(client._failures),
        }

    report = run_in_child(body, timeout=30)
    assert report.get("errors") == [], report
    assert report["ok"] and not report["alive"] and report["in_use"] == 0, report
    assert not report["parent_socket_reused"], report
    assert report["failures"] == {}, report
    # The parent's pools are untouched by the child, and the parent counts once per request.
    bad.set_mode("reset")
    for attempt in (1, 2):
        assert client.get_many(list(values)) == good
        assert client._failures[bad.server][0] == attempt
    bad.set_mode("pass")
    assert client.get_many(list(values)) == values
    assert not client._failures
    assert no_slot_out(client)
