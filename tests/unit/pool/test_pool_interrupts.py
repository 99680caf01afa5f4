"""An exception injected at every line of ObjectPool (sys.settrace) loses no slot."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any, Callable, List, Optional, Set

import pytest
from support.helpers import Interrupt

import pymc.pool
import pymc.pool.objectpool
import pymc.pool.pooled
from pymc import (
    MemcachePoolTimeoutError,
    ObjectPool,
)

pytestmark = pytest.mark.timeout(120)


POOL_FILES = {pymc.pool.objectpool.__file__, pymc.pool.pooled.__file__}


MAX_LINES = 3000  # no call through the pool runs this many of its lines


class Injected(Interrupt):
    """The exception the tracer raises (the code under test may raise Interrupt too)."""


class Injector:
    """Raises :class:`Injected` at the ``n``-th line event inside pymc/pool/."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.count = 0
        self.where = ""

    def _global(self, frame: FrameType, event: str, arg: Any) -> Any:
        return self._local if frame.f_code.co_filename in POOL_FILES else None

    def _local(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.count += 1
            if self.count == self.n:
                self.where = f"{frame.f_code.co_name} line {frame.f_lineno}"
                raise Injected(self.where)
        return self._local

    def run(self, fn: Callable[[], Any]) -> bool:
        """Run ``fn`` traced; True if the injection fired."""
        sys.settrace(self._global)
        try:
            fn()
        except Injected:
            assert self.where, "Injected raised without the tracer"
        finally:
            sys.settrace(None)
        return self.count >= self.n


def every_line(
    scenario: Callable[[], Any], check: Callable[[str], None], min_lines: int = 5
) -> int:
    """Run ``scenario`` with an injection at line 1, 2, ... of the pool until it completes
    without one; ``check(where)`` after each run. Returns how many lines were covered."""
    for n in range(1, MAX_LINES):
        injector = Injector(n)
        fired = injector.run(scenario)
        check(f"injection #{n} at {injector.where or '(none)'}")
        if not fired:
            assert n > min_lines, f"the scenario ran only {n - 1} pool lines"
            return n - 1
    raise AssertionError(f"still injecting after {MAX_LINES} lines")


class Thing:
    def __init__(self, serial: int) -> None:
        self.serial = serial
        self.removed = False

    def __repr__(self) -> str:
        return f"<Thing {self.serial}{' removed' if self.removed else ''}>"


class Tracked:
    """An ObjectPool whose objects are counted: each made one is idle, out, or removed."""

    def __init__(self, max_size: int = 3, **kw: Any) -> None:
        self.made: List[Thing] = []
        self.reject: Set[int] = set()  # serials the validator refuses
        self.pool: ObjectPool[Thing] = ObjectPool(
            self.make,
            after_remove=self.remove,
            max_size=max_size,
            timeout=kw.pop("timeout", 2),
            validate=lambda obj, idle: obj.serial not in self.reject,
            **kw,
        )
        self.max_size = max_size

    def make(self) -> Thing:
        thing = Thing(len(self.made))
        self.made.append(thing)
        return thing

    @staticmethod
    def remove(thing: Thing) -> None:
        assert not thing.removed, f"{thing} removed twice"
        thing.removed = True

    def check(self, where: str, out: int = 0) -> None:
        pool = self.pool
        s = pool.stats()
        assert s["in_use"] == out and s["waiting"] == 0, (where, s)
        assert s["idle"] + s["in_use"] <= self.max_size, (where, s)
        # it still serves, at once (and that drains anything left to remove)
        with pool.get_and_release() as thing:
            assert not thing.removed, (where, thing)
        idle = pool.idle_objects()
        assert all(not t.removed for t in idle), (where, idle)
        lost = [t for t in self.made if not t.removed and t not in idle]
        assert len(lost) == out, f"{where}: objects neither idle nor removed: {lost}"
        assert pool.stats()["in_use"] == out


def robust_get_then(pool: ObjectPool[Thing], how: str) -> None:
    """A caller that does its part: what it got is given back even if giving back fails."""
    thing = pool.get()
    try:
        (pool.release if how == "release" else pool.destroy)(thing)
    except BaseException:
        pool.destroy(thing)
        raise


@pytest.mark.parametrize("how", ["release", "destroy"])
def test_injection_at_every_line_of_get_release_destroy(how: str) -> None:
    tracked = Tracked()
    pool = tracked.pool

    def cold() -> None:  # every time a new object: the create path
        pool.clear()
        robust_get_then(pool, how)

    def warm() -> None:  # an idle object: the reuse path
        robust_get_then(pool, how)

    every_line(cold, tracked.check)
    every_line(warm, tracked.check)


def test_injection_at_every_line_of_get_and_release() -> None:
    tracked = Tracked()
    pool = tracked.pool

    def clean() -> None:
        with pool.get_and_release() as thing:
            assert not thing.removed

    def failing() -> None:  # the block raises: the object is destroyed
        with pytest.raises(Interrupt), pool.get_and_release():
            raise Interrupt("the block failed")

    every_line(clean, tracked.check)
    every_line(failing, tracked.check)


def test_injection_at_every_line_of_validation_reaping_and_try_get() -> None:
    tracked = Tracked(max_size=3, idle_timeout=0.001, max_lifetime=60)
    pool = tracked.pool

    def try_get() -> None:
        thing = pool.try_get()
        assert thing is not None
        try:
            pool.release(thing)
        except BaseException:
            pool.destroy(thing)
            raise

    # Two idle objects: the newest is refused by the validator, the other is past
    # idle_timeout; both are dropped and a new one is made. Set up untraced each time.
    def run(n: int) -> bool:
        a, b = pool.get(), pool.get()
        pool.release(a)
        time.sleep(0.005)
        pool.release(b)
        tracked.reject.add(b.serial)
        injector = Injector(n)

        def traced() -> None:
            with pool.get_and_release() as thing:
                assert thing is not a and thing is not b

        fired = injector.run(traced)
        tracked.check(f"validation, injection #{n} at {injector.where or '(none)'}")
        return fired

    for n in range(1, MAX_LINES):
        if not run(n):
            assert n > 10
            break
    every_line(try_get, tracked.check)


def test_injection_at_every_line_of_a_checkout_that_waits_and_times_out() -> None:
    tracked = Tracked(max_size=1, timeout=0.02)
    pool = tracked.pool

    def full() -> None:
        with pytest.raises(MemcachePoolTimeoutError):
            pool.get()

    def full_try_get() -> None:
        assert pool.try_get() is None

    for scenario in (full, full_try_get):
        held = pool.get()
        try:
            every_line(scenario, lambda where: tracked_check_held(tracked, where))
        finally:
            pool.release(held)
        tracked.check("after the full pool")
    assert pool.stats()["timeouts"] > 0


def tracked_check_held(tracked: Tracked, where: str) -> None:
    s = tracked.pool.stats()
    assert s["in_use"] == 1 and s["waiting"] == 0 and s["idle"] == 0, (where, s)


class LockSpy:
    """A ``lock_generator`` whose locks a test can take all at once from another thread."""

    def __init__(self) -> None:
        self.locks: List[Any] = []

    def __call__(self) -> Any:
        lock = threading.Lock()
        self.locks.append(lock)
        return lock

    def hold_all(self, seconds: float, started: threading.Event) -> threading.Thread:
        """From another thread, take every unheld lock made so far (the pool's among
        them) for ``seconds``."""

        def holder() -> None:
            taken = [lock for lock in list(self.locks) if lock.acquire(False)]
            started.set()
            time.sleep(seconds)
            for lock in taken:
                lock.release()

        thread = threading.Thread(target=holder, daemon=True)
        thread.start()
        return thread


def alarm_in(seconds: float) -> Any:
    """Raise Interrupt from a SIGALRM handler in ``seconds`` (pytest-timeout's own alarm, if
    any, is put back by :func:`disarm`)."""

    def handler(signum: int, frame: Optional[FrameType]) -> None:
        raise Interrupt("SIGALRM deadline")

    previous = signal.signal(signal.SIGALRM, handler)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    return previous, outer, time.monotonic()


def disarm(saved: Any) -> None:
    previous, outer, since = saved
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)
    if outer:
        signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - since), 0.01))


needs_alarm = pytest.mark.skipif(
    not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread(),
    reason="needs setitimer in the main thread",
)


@needs_alarm
@pytest.mark.parametrize("how", ["release", "destroy"])
def test_deadline_while_waiting_for_the_lock_to_give_back(how: str) -> None:
    spy = LockSpy()
    removed: List[object] = []
    pool: ObjectPool[object] = ObjectPool(
        object, after_remove=removed.append, max_size=1, timeout=1, lock_generator=spy
    )
    obj = pool.get()
    started = threading.Event()
    holder = spy.hold_all(0.4, started)
    assert started.wait(2)
    previous = alarm_in(0.1)
    start = time.monotonic()
    try:
        with pytest.raises(Interrupt):
            (pool.release if how == "release" else pool.destroy)(obj)
    finally:
        disarm(previous)
    holder.join(2)
    # the give-back finished once the lock was free, then the deadline was raised
    assert time.monotonic() - start >= 0.35
    s = pool.stats()
    assert s["in_use"] == 0, s
    assert s["idle"] == (1 if how == "release" else 0), s
    assert removed == ([] if how == "release" else [obj])
    again = pool.get(timeout=0.1)  # the one slot is there
    pool.release(again)


@needs_alarm
def test_deadline_while_waiting_for_the_lock_after_making_an_object() -> None:
    spy = LockSpy()
    started = threading.Event()
    removed: List[object] = []
    holders: List[threading.Thread] = []

    def make() -> object:  # while the object is made, another thread takes the lock
        holders.append(spy.hold_all(0.4, started))
        assert started.wait(2)
        return object()

    pool: ObjectPool[object] = ObjectPool(
        make, after_remove=removed.append, max_size=1, timeout=1, lock_generator=spy
    )
    previous = alarm_in(0.1)
    try:
        with pytest.raises(Interrupt):
            pool.get()
    finally:
        disarm(previous)
    holders[0].join(2)
    s = pool.stats()
    assert s["in_use"] == 0, s
    assert len(removed) == s["destroyed"] == 1  # the object made for the interrupted get
    started.clear()
    pool._creator = object  # (a test may look inside)
    again = pool.get(timeout=0.1)
    pool.release(again)


def test_pool_file_is_what_the_tracer_watches() -> None:
    # The pool's checkout and checkin, Lease, PooledClient.run and its _once: all watched.
    for code in (
        pymc.pool.ObjectPool.get.__code__,
        pymc.pool.ObjectPool._settle.__code__,
        pymc.pool.Lease.take.__code__,
        pymc.pool.PooledClient.run.__code__,
        pymc.pool.PooledClient._once.__code__,
        pymc.pool.PooledClient.__init__.__code__,
    ):
        assert any(os.path.samefile(f, code.co_filename) for f in POOL_FILES), code
