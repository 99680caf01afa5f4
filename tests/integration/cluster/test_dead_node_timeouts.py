"""Timeouts by default: requests queued for a dead node fail fast; the node is marked failed
first."""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Any, Dict, List

import pytest
from support.helpers import source_files

import pymc
import pymc.cluster


@pytest.mark.timeout(60)
@pytest.mark.parametrize("options", [{}, {"use_pooling": True, "max_pool_size": 2}])
@pytest.mark.parametrize("command", ["get", "get_many"])
def test_requests_queued_for_a_dead_nodes_connection_fail_fast(
    options: Dict[str, Any], command: str
) -> None:
    """A HashClient (pymemcache's default: one connection per node) in front of a server
    that accepts but never answers: the first request costs the timeout and marks the
    node failed, but the requests queued for its connection meanwhile each tried it
    again, one after another, so the k-th request took k timeouts (up to pool_timeout,
    10 s, for a 2 s timeout), single keys and fan-outs alike. A request must cost at most
    about twice the timeout."""
    timeout = 0.5
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # connections complete in the backlog; nothing is ever read
    client = pymc.HashClient(
        [silent.getsockname()], connect_timeout=timeout, timeout=timeout, **options
    )
    took: List[float] = []
    errors: List[str] = []

    def request() -> None:
        start = time.monotonic()
        try:
            if command == "get":
                client.get("dead")
            else:  # a fan-out
                client.get_many(["dead", "gone"])
        except pymc.MemcacheError as exc:
            errors.append(type(exc).__name__)
        took.append(time.monotonic() - start)

    workers = [threading.Thread(target=request) for _ in range(6)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)
        assert len(took) == len(errors) == 6
        assert max(took) <= 2 * timeout + 0.5, sorted(round(t, 2) for t in took)
    finally:
        client.close()
        silent.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["get", "get_many"])
def test_a_node_is_marked_failed_before_the_next_request_gets_its_connection(
    command: str,
) -> None:
    """A request that timed out on a silent node gave its connection back first and marked
    the node failed afterwards: a request waiting for that connection took it in between,
    found the node usable and spent a whole timeout of its own there (the race a loaded
    machine hits; here a trace holds the first request at its first line in pymc.cluster
    after the connection went back)."""
    timeout = 0.5
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    client = pymc.HashClient(
        [silent.getsockname()],
        connect_timeout=timeout,
        timeout=timeout,
        use_pooling=True,
        max_pool_size=1,
    )
    (pool,) = [node.client_pool for node in client.clients.values()]
    traced = source_files(pymc.cluster)  # (not pool.py: stats() there would wait on its lock)
    state = {"had_it": False, "held": False}
    first_done: List[float] = []
    second: List[Any] = []

    def line(frame: Any, event: str, arg: Any) -> Any:
        if event == "line" and not state["held"]:
            in_use = pool.stats()["in_use"]
            if in_use:
                state["had_it"] = True
            elif state["had_it"]:  # the connection just went back: hold here
                state["held"] = True
                deadline = time.monotonic() + 5
                while pool.stats()["in_use"] == 0 and time.monotonic() < deadline:
                    time.sleep(0.005)  # until the waiting request has the connection
                time.sleep(0.2)  # and has looked at the node (microseconds) before it asks
        return line

    def call(frame: Any, event: str, arg: Any) -> Any:
        return line if frame.f_code.co_filename in traced else None

    def run() -> None:
        if command == "get":
            client.get("dead")
        else:
            client.get_many(["dead", "gone"])

    def first() -> None:
        sys.settrace(call)
        try:
            with pytest.raises(pymc.MemcacheError):
                run()
        finally:
            sys.settrace(None)
            first_done.append(time.monotonic())

    def waiting() -> None:
        try:
            run()
        except pymc.MemcacheError as exc:
            second.append(exc)
        second.append(time.monotonic())

    a = threading.Thread(target=first)
    a.start()
    deadline = time.monotonic() + 5
    while pool.stats()["in_use"] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)  # the first request holds the connection
    b = threading.Thread(target=waiting)
    try:
        b.start()
        a.join(10)
        b.join(10)
        assert state["held"] and first_done and len(second) == 2, (state, first_done, second)
        assert isinstance(second[0], pymc.MemcacheError)
        # It failed at once (the node had failed), not a timeout later.
        assert second[1] - first_done[0] < timeout / 2, second[1] - first_done[0]
    finally:
        client.close()
        silent.close()
