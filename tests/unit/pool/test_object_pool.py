"""ObjectPool with plain objects, and PooledClient's surface: no server."""

from __future__ import annotations

import inspect
import threading
import time
from typing import Any, List

import pymemcache.client.base
import pytest
from support.helpers import Interrupt, wait_until

from pymc import (
    Client,
    MemcachePoolTimeoutError,
    ObjectPool,
    PooledClient,
)

pytestmark = pytest.mark.timeout(30)


def test_object_pool_timeout_argument_and_waiters_all_served() -> None:
    pool: ObjectPool[object] = ObjectPool(object, max_size=2, timeout=5)
    a, b = pool.get(), pool.get()
    start = time.monotonic()
    with pytest.raises(MemcachePoolTimeoutError):
        pool.get(timeout=0.1)
    assert 0.08 <= time.monotonic() - start < 2
    got: List[object] = []
    waiters = [threading.Thread(target=lambda: got.append(pool.get()), daemon=True) for _ in "xy"]
    for w in waiters:
        w.start()
    wait_until(lambda: pool.stats()["waiting"] == 2)
    pool.release(a)
    pool.destroy(b)  # a destroyed object frees its slot too
    for w in waiters:
        w.join(3)
    assert len(got) == 2 and a in got
    s = pool.stats()
    assert s["in_use"] == 2 and s["created"] == 3 and s["destroyed"] == 1
    assert s["timeouts"] == 1 and s["waiting"] == 0


def test_object_pool_get_and_release_destroys_on_base_exception() -> None:
    removed: List[object] = []
    pool: ObjectPool[object] = ObjectPool(
        object, after_remove=removed.append, max_size=1, timeout=0.2
    )
    for _ in range(20):
        with pytest.raises(Interrupt), pool.get_and_release() as obj:
            raise Interrupt()
        assert removed[-1] is obj
    with pool.get_and_release() as obj:
        pass
    with pool.get_and_release() as again:
        assert again is obj  # a clean exit returns the object for reuse
    s = pool.stats()
    assert s["destroyed"] == 20 and s["in_use"] == 0 and s["idle"] == 1 and s["timeouts"] == 0


def test_object_pool_is_lifo() -> None:
    made = iter(range(100))
    pool: ObjectPool[int] = ObjectPool(lambda: next(made), max_size=3)
    a, b, c = pool.get(), pool.get(), pool.get()
    assert (a, b, c) == (0, 1, 2)
    for obj in (b, c, a):
        pool.release(obj)
    assert pool.get() == a  # the last released comes out first
    assert pool.get() == c
    pool.release(c)
    assert pool.get() == c
    assert pool.stats()["created"] == 3


def test_stats_and_repr_show_live_counts() -> None:
    pool: ObjectPool[object] = ObjectPool(object, max_size=2, timeout=0.05)
    a = pool.get()
    b = pool.get()
    with pytest.raises(MemcachePoolTimeoutError):
        pool.get()
    pool.destroy(b)
    waiter_got: List[object] = []
    hold = pool.get()
    t = threading.Thread(target=lambda: waiter_got.append(pool.get(timeout=3)), daemon=True)
    t.start()
    wait_until(lambda: pool.stats()["waiting"] == 1)
    s = pool.stats()
    assert s == {
        "in_use": 2,
        "idle": 0,
        "waiting": 1,
        "created": 3,
        "destroyed": 1,
        "timeouts": 1,
        "max_size": 2,
    }
    text = repr(pool)
    for part in ("in_use=2", "idle=0", "waiting=1", "created=3", "destroyed=1", "timeouts=1"):
        assert part in text
    pool.release(hold)
    t.join(3)
    assert waiter_got == [hold]
    pool.release(a)
    pool.release(hold)
    s = pool.stats()
    assert (s["in_use"], s["idle"], s["waiting"]) == (0, 2, 0)
    assert "idle=2" in repr(pool) and "in_use=0" in repr(pool)


def test_threading_primitives_are_looked_up_when_the_pool_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: List[str] = []
    real_lock = threading.Lock

    def counting_lock() -> Any:
        made.append("Lock")
        return real_lock()

    monkeypatch.setattr(threading, "Lock", counting_lock)
    pool: ObjectPool[object] = ObjectPool(object, max_size=1, timeout=0.05)
    assert made == ["Lock"]  # the pool's lock
    monkeypatch.undo()
    obj = pool.get()
    with pytest.raises(MemcachePoolTimeoutError):
        pool.get()  # waits on a lock made by threading.Lock as it was when the pool was made
    assert made == ["Lock", "Lock"]
    pool.release(obj)
    assert pool.get() is obj


def test_pooled_client_has_every_public_pymemcache_method() -> None:
    theirs = {n for n in dir(pymemcache.client.base.PooledClient) if not n.startswith("_")}
    missing = {n for n in theirs if not hasattr(PooledClient, n)}
    assert not missing
    for name in theirs - {"client_class"}:
        assert callable(getattr(PooledClient, name)), name


def test_pooled_client_method_signatures_are_clients() -> None:
    assert inspect.signature(PooledClient.get) == inspect.signature(Client.get)
    for name in ("set", "get_many", "incr", "cas", "gets", "delete_many", "stats"):
        assert inspect.signature(getattr(PooledClient, name)) == inspect.signature(
            getattr(Client, name)
        ), name
    params = inspect.signature(PooledClient.get).parameters
    assert list(params) == ["self", "key", "default"]


def test_try_get_never_waits() -> None:
    made = iter(range(100))
    refused: List[int] = []
    pool: ObjectPool[int] = ObjectPool(
        lambda: next(made),
        max_size=2,
        timeout=5,
        validate=lambda obj, idle: obj not in refused,
    )
    a = pool.try_get()
    b = pool.try_get()
    assert (a, b) == (0, 1)
    start = time.monotonic()
    assert pool.try_get() is None  # full: None at once, not a timeout
    assert time.monotonic() - start < 0.5
    s = pool.stats()
    assert s["timeouts"] == 0 and s["in_use"] == 2 and s["waiting"] == 0, s
    assert b is not None
    pool.release(b)
    assert pool.try_get() == 1  # an idle one
    pool.release(1)
    refused.append(1)
    assert pool.try_get() == 2  # the idle one is refused: a new one is made
    pool.release(a)  # type: ignore[arg-type]
    pool.release(2)
    s = pool.stats()
    assert s == {**s, "in_use": 0, "idle": 2, "created": 3, "destroyed": 1, "timeouts": 0}
