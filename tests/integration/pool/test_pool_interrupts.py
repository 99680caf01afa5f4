"""A BaseException landing anywhere in the pool's bookkeeping loses no slot and leaks no object.

Two ways: an exception injected with ``sys.settrace`` at every line of ``pymc/pool/`` in
turn (the 1st line event of a call, the 2nd, ... until a call runs clean), and a signal
handler's exception (as SIGALRM deadlines and Ctrl-C raise) landing while a thread waits for
the pool's lock, held by another thread. The gevent variants are in
tests/integration/pool/test_pool_gevent.py.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, ClassVar, Dict, List

import pytest
from support.helpers import Interrupt, tcp, wait_until
from support.servers import MemcachedProcess
from unit.pool.test_pool_interrupts import (
    alarm_in,
    disarm,
    every_line,
    needs_alarm,
)

from pymc import (
    Client,
    HashClient,
    MemcacheIllegalInputError,
    PooledClient,
)

pytestmark = pytest.mark.timeout(120)


# -- ObjectPool --------------------------------------------------------------------------------


# -- PooledClient against a real memcached -----------------------------------------------------


class CountedClient(Client):
    made: ClassVar[List[Client]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        CountedClient.made.append(self)


def client_checker(client: PooledClient) -> Callable[[str], None]:
    def check(where: str) -> None:
        s = client.client_pool.stats()
        assert s["in_use"] == 0 and s["waiting"] == 0, (where, s)
        assert s["idle"] <= 2, (where, s)
        assert client.get("k") == b"v", where  # serves at once, and no stale reply
        idle = client.client_pool.idle_objects()
        leaked = [c for c in CountedClient.made if c.sock is not None and c not in idle]
        assert not leaked, f"{where}: open connections outside the pool: {leaked}"

    return check


def test_injection_at_every_line_of_pooled_client_calls(memcached: MemcachedProcess) -> None:
    CountedClient.made = []
    client = PooledClient(tcp(memcached), max_pool_size=2, pool_timeout=2, timeout=5)
    client.client_class = CountedClient
    assert client.set("k", "v")
    check = client_checker(client)

    def warm() -> None:
        assert client.get("k") == b"v"

    def cold() -> None:
        client.close()
        assert client.set("k", "v")

    def failing() -> None:  # the command fails: the injection lands in the handlers
        with pytest.raises(MemcacheIllegalInputError):
            client.get("bad key")

    wheres: List[str] = []

    def check_and_note(where: str) -> None:
        wheres.append(where)
        check(where)

    covered = [every_line(fn, check_and_note) for fn in (warm, cold, failing)]
    assert all(n > 10 for n in covered), covered
    # the fast checkout (a connection used a moment ago) and the slow one were both hit
    assert any("_take_fresh_locked" in w for w in wheres), wheres
    assert any(" _get " in w for w in wheres), wheres


def test_injection_at_every_line_of_hash_client_checkouts(
    memcached_nodes: List[MemcachedProcess],
) -> None:
    """HashClient's checkouts: a keyed call through PooledClient, and a fan-out's leases
    (taken without waiting, given back after the exchange). Wherever in the pool an
    exception lands, no slot is lost and no connection is left outside its pool."""
    CountedClient.made = []
    servers = [tcp(n) for n in memcached_nodes]
    client = HashClient(servers, use_pooling=True, max_pool_size=2, pool_timeout=2, timeout=5)
    client.client_class = CountedClient
    for pool in client.clients.values():
        pool.client_class = CountedClient
    values = {f"k{i}": b"v%d" % i for i in range(12)}
    assert client.set_many(values) == []
    assert len({client.snapshot.node_for(k) for k in values}) > 1  # a real fan-out

    def check(where: str) -> None:
        for name, pool in client.clients.items():
            s = pool.client_pool.stats()
            assert s["in_use"] == 0 and s["waiting"] == 0, (where, name, s)
        assert client.get_many(list(values)) == values, where  # no stale reply anywhere
        idle = [c for p in client.clients.values() for c in p.client_pool.idle_objects()]
        leaked = [c for c in CountedClient.made if c.sock is not None and c not in idle]
        assert not leaked, f"{where}: open connections outside the pools: {leaked}"

    def get() -> None:
        assert client.get("k3") == b"v3"

    def get_many() -> None:
        assert client.get_many(list(values)) == values

    def cold_get_many() -> None:  # every connection made anew
        client.close()
        assert client.get_many(list(values)) == values

    wheres: List[str] = []

    def check_and_note(where: str) -> None:
        wheres.append(where)
        check(where)

    covered = [every_line(fn, check_and_note) for fn in (get, get_many, cold_get_many)]
    assert all(n > 10 for n in covered), covered
    assert any("_take_fresh_locked" in w for w in wheres), wheres  # the fast checkout


# -- a signal handler's exception while waiting for the pool's lock ----------------------------


@needs_alarm
def test_deadline_while_waiting_for_a_slot_frees_nothing_and_wakes_the_next(
    memcached: MemcachedProcess,
) -> None:
    client = PooledClient(tcp(memcached), max_pool_size=1, pool_timeout=2)
    assert client.set("k", "v")
    conn = client.client_pool.get()
    got: Dict[str, Any] = {}

    def other() -> None:
        got["value"] = client.get("k")

    waiter = threading.Thread(target=other, daemon=True)
    previous = alarm_in(0.1)
    try:
        with pytest.raises(Interrupt):
            client.get("k")  # waits for the held connection; the deadline fires
    finally:
        disarm(previous)
    waiter.start()
    wait_until(lambda: client.client_pool.stats()["waiting"] == 1, what="a second waiter")
    client.client_pool.release(conn)
    waiter.join(2)
    assert got == {"value": b"v"}
    s = client.client_pool.stats()
    assert s["in_use"] == 0 and s["waiting"] == 0 and s["idle"] == 1, s
