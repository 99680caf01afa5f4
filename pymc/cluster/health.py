"""The health of a cluster's nodes: failure counts, ejection, revival, the probe of dead nodes.

A connection-level failure (network error, timeout, unexpected close, malformed reply) counts
against its node. After ``retry_attempts`` failures the node is ejected: a new snapshot without
it is swapped in and its keys move to the other nodes. After ``dead_timeout`` seconds a
background probe (a thread, or a greenlet under gevent; an asyncio client's is a task of its
loop: see ``Health.start_probe``) asks it for its version and re-admits it if it answers. A
node that failed less than ``retry_timeout`` ago is not tried again yet: a request for it fails
fast with :class:`NodeRestingError`.

:class:`Health` has its own locks, which a forked child finds free (:class:`ForkSafeLock`).

Layer: imports ``client`` (``Client``, ``ClientOptions``, ``ServerSpec``), ``pool``,
``retry`` and ``exceptions``.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeGuard

from ..client import Client, ClientOptions, ServerSpec
from ..exceptions import (
    MemcacheNetworkError,
    MemcacheProtocolError,
    MemcacheServerRefusedError,
    MemcacheUnsupportedCommandError,
    NodeRestingError,
    network_error,
)
from ..pool import Lease, PooledClient
from ..retry import RetryPolicy
from .nodeset import NodeSet

__all__ = ["PROBE_TIMEOUT", "ForkSafeLock", "Health", "is_connection_failure", "retried_alone"]

#: Seconds a probe of a dead node may take when the client sets no timeouts.
PROBE_TIMEOUT = 5.0


def is_connection_failure(exc: BaseException) -> bool:
    """A failure that counts against the node: its connection broke, its reply made no
    sense, or it refused connections (``ERROR Too many open connections``). A refusal of
    the command alone (an ``ERROR <message>`` that leaves the connection in step, or a
    proxy closing on a command it does not support) is that command's error, and a
    resting node's is no new failure."""
    if isinstance(exc, MemcacheServerRefusedError):
        return not exc.in_step
    return isinstance(exc, (MemcacheNetworkError, MemcacheProtocolError)) and not isinstance(
        exc, (NodeRestingError, MemcacheUnsupportedCommandError)
    )


def retried_alone(
    policy: Optional[RetryPolicy], command: str, error: Exception
) -> TypeGuard[RetryPolicy]:
    """Whether a fan-out retries a node that failed with ``error`` alone (the one rule for
    its retry and for counting the failure before the connections go back)."""
    return policy is not None and not policy.exhausted and policy.is_retryable(command, error)


# Bumped in every child after os.fork(): a lock made in an earlier generation is replaced.
_fork_generation = [0]
# Lets one thread of a child replace a stale lock. Made anew in every child (when fork()
# runs, so a gevent-patched process gets a gevent lock); a parent never needs one.
_fork_guard: Any = None


def _after_fork_in_child() -> None:
    global _fork_guard
    _fork_guard = threading.Lock()
    _fork_generation[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ForkSafeLock:
    """A lock that a forked child finds free.

    A child inherits every lock as it was at ``fork()`` but only the thread that forked: a
    lock that another thread (a probe, a request ejecting a node, a node-set change) held
    then would stay held for the life of the child. The first use in a child replaces it:
    check the generation, take the fork guard, check again, so two threads of the child never
    both replace it (one of them would then hold a lock the other just threw away).
    """

    __slots__ = ("_factory", "_generation", "_inner")

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._inner = factory()
        self._generation = _fork_generation[0]

    def _current(self) -> Any:
        if self._generation != _fork_generation[0]:
            with _fork_guard:
                if self._generation != _fork_generation[0]:
                    self._inner = self._factory()  # before the generation: see above
                    self._generation = _fork_generation[0]
        return self._inner

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return bool(self._current().acquire(blocking, timeout))

    def release(self) -> None:
        self._inner.release()

    def locked(self) -> bool:
        """Whether a thread holds it (a plain Lock only)."""
        return bool(self._current().locked())

    def __enter__(self) -> bool:
        return bool(self._current().acquire())

    def __exit__(self, *exc_info: object) -> None:
        self._inner.release()


#: A dead node: its address, its pool (kept for its revival) and when it last failed.
Dead = Tuple[ServerSpec, PooledClient, float]


class Health:
    """The health books of one cluster client, and the changes of its node set they make.

    ``current()`` is the client's snapshot now, ``rebuild(servers, clients)`` builds (does
    not publish) the next one and ``publish(new)`` swaps it in (with ``change_lock`` and
    ``lock`` held); ``emit(event, node, **info)`` reports ``node_failed``, ``node_ejected``
    and ``node_revived``.

    Requests take ``lock`` briefly (the books, the swap); a change of the node set holds
    ``change_lock`` while it builds the new snapshot, and ``lock`` only to publish it. Both,
    and the probe's lock, are free again in a forked child. ``failures``
    (``{node: (count, last failure time)}``) and ``dead`` (``{node: Dead}``) are changed in
    place only, so a client may keep them at hand for its read path.
    """

    def __init__(
        self,
        *,
        retry_attempts: int,
        retry_timeout: float,
        dead_timeout: float,
        probe_options: ClientOptions,
        current: Callable[[], NodeSet],
        rebuild: Callable[[Dict[str, ServerSpec], Dict[str, PooledClient]], NodeSet],
        publish: Callable[[NodeSet], Any],
        emit: Callable[..., None],
    ) -> None:
        self.retry_attempts = retry_attempts
        self.retry_timeout = retry_timeout
        self.dead_timeout = dead_timeout
        self.probe_options = probe_options
        self._current = current
        self._rebuild = rebuild
        self._publish = publish
        self._emit = emit
        self._lock = ForkSafeLock(threading.Lock)
        self._change_lock = ForkSafeLock(threading.RLock)  # one change (read + swap) at a time
        self.failures: Dict[str, Tuple[int, float]] = {}  # node -> (count, last failure)
        # node -> its last failure: the class a resting error also is (see resting)
        self.last_failure: Dict[str, BaseException] = {}
        self.dead: Dict[str, Dead] = {}
        self.next_probe = 0.0
        self._probe_lock = ForkSafeLock(threading.Lock)  # held while a probe runs
        #: Starts a probe of the dead nodes, with ``probe_lock`` held (given back by
        #: :meth:`probe_ended`): a thread by default; an asyncio client puts a task here.
        self.start_probe: Callable[[], None] = self._start_thread

    @property
    def lock(self) -> ForkSafeLock:
        """Taken briefly by requests (the books) and to publish a snapshot."""
        return self._lock

    @property
    def change_lock(self) -> ForkSafeLock:
        """Held by one change of the node set (read, build, publish) at a time."""
        return self._change_lock

    @property
    def probe_lock(self) -> ForkSafeLock:
        """Held while a probe of the dead nodes runs."""
        return self._probe_lock

    # ------------------------------------------------------------------ failures

    def failed(self, name: str, exc: BaseException) -> None:
        """Count a connection-level failure of ``name``; eject it after retry_attempts."""
        now = time.monotonic()
        with self._lock:
            if name not in self._current().clients:
                # Already ejected (or removed) by an earlier failure: a request that chose
                # it before then says nothing new, and must not count against it once it
                # is re-admitted.
                return
            count = self.failures.get(name, (0, 0.0))[0] + 1
            self.failures[name] = (count, now)
            self.last_failure[name] = exc
        ejected = self._eject(name) if count >= self.retry_attempts else None
        self._emit("node_failed", name, error=repr(exc), failures=count)
        if ejected is not None:
            ejected.client_pool.clear()
            self._emit("node_ejected", name, version=self._current().version)

    def _eject(self, name: str) -> Optional[PooledClient]:
        """Take ``name`` out of the node set; its pool, or None when another thread did it
        first (or the node was removed, or answered a request meanwhile)."""
        with self._change_lock:
            nodes = self._current()
            pool = nodes.clients.get(name)
            if pool is None:
                return None
            servers = {n: s for n, s in nodes.servers.items() if n != name}
            clients = {n: c for n, c in nodes.clients.items() if n != name}
            new = self._rebuild(servers, clients)  # outside _lock
            with self._lock:
                record = self.failures.get(name)
                if record is None or record[0] < self.retry_attempts:
                    return None  # a request succeeded on it while we built
                now = time.monotonic()
                self.dead[name] = (nodes.servers[name], pool, now)
                del self.failures[name]
                self._publish(new)
                self.next_probe = min(
                    self.next_probe or now + self.dead_timeout, now + self.dead_timeout
                )
        return pool

    def count_failure(self, name: str, exc: Exception) -> None:
        """:meth:`failed` if ``exc`` is a connection failure."""
        if is_connection_failure(exc):
            self.failed(name, exc)

    def succeeded(self, name: str) -> None:
        with self._lock:
            self.failures.pop(name, None)
            self.last_failure.pop(name, None)

    def forget(self, kept: Any) -> List[PooledClient]:
        """Drop the books of the nodes not in ``kept`` (the node set now; with ``lock``
        held): the pools of the dead ones among them, to retire."""
        retired = [self.dead.pop(name)[1] for name in [n for n in self.dead if n not in kept]]
        for name in [n for n in self.failures if n not in kept]:
            del self.failures[name]
        return retired

    def dead_specs(self) -> List[ServerSpec]:
        return [spec for spec, _, _ in list(self.dead.values())]

    def dead_items(self) -> List[Tuple[str, ServerSpec]]:
        return [(n, v[0]) for n, v in list(self.dead.items())]

    # ------------------------------------------------------------------ resting nodes

    def still_usable(self, name: str) -> None:
        """Run once a request has its connection to ``name``: a request that waited for
        it while another found the node failing (or got it ejected) fails fast too,
        instead of spending its own timeout there (queued requests took one each)."""
        if self.failures and self.fail_fast(name):
            raise self.resting(name, f"failed less than {self.retry_timeout} s ago")
        if name in self.dead:
            raise self.resting(name, "was ejected")

    def resting(self, name: str, why: str) -> NodeRestingError:
        """The error of a request not sent to resting node ``name``: also an instance of
        the class of the failure that made it rest (``ConnectionRefusedError``,
        ``TimeoutError``...), so that an ``except`` that caught that failure catches this
        one too (pymemcache's HashClient returns the default there instead)."""
        message = f"{name} {why}"
        cause = self.last_failure.get(name)
        if isinstance(cause, OSError):
            return network_error(NodeRestingError, cause, message)
        return NodeRestingError(message)

    def still_usable_after_wait(self, name: str, lease: Lease[Client]) -> None:
        """:meth:`still_usable` for a fan-out that waited for ``name``'s connection: the
        connection goes back unused when the node failed meanwhile."""
        try:
            self.still_usable(name)
        except NodeRestingError:
            lease.give_back()
            raise

    def fail_fast(self, name: str) -> bool:
        """A node that failed less than retry_timeout ago is not tried again yet."""
        record = self.failures.get(name)
        return record is not None and time.monotonic() - record[1] < self.retry_timeout

    # ------------------------------------------------------------------ the probe

    def maybe_probe(self) -> None:
        """Start a probe of the dead nodes if one is due and none runs."""
        if time.monotonic() < self.next_probe or not self._probe_lock.acquire(blocking=False):
            return
        try:
            self.start_probe()
        except BaseException:
            self._probe_lock.release()
            raise

    def _start_thread(self) -> None:
        threading.Thread(target=self._probe, name="pymc-probe", daemon=True).start()

    def _probe(self) -> None:
        """Ask every dead node past dead_timeout for its version; re-admit those that answer."""
        try:
            for name, (spec, _, _) in self.due():
                probe = Client.from_options(spec, self.probe_options)
                try:
                    probe.version()
                except Exception:
                    self.probe_failed(name)
                    continue
                finally:
                    probe.close()
                self.revive(name)
        finally:
            self.probe_ended()

    def due(self) -> List[Tuple[str, Dead]]:
        """The dead nodes past dead_timeout: a probe asks each for its version."""
        now = time.monotonic()
        return [(n, v) for n, v in list(self.dead.items()) if now - v[2] >= self.dead_timeout]

    def probe_failed(self, name: str) -> None:
        """Dead node ``name`` did not answer its probe: dead_timeout counts from now."""
        with self._lock:
            record = self.dead.get(name)
            if record is not None:
                self.dead[name] = (record[0], record[1], time.monotonic())

    def revive(self, name: str) -> None:
        """Dead node ``name`` answered its probe: re-admit it (unless removed meanwhile)."""
        with self._change_lock:
            record = self.dead.get(name)
            if record is None:  # removed meanwhile
                return
            spec, pool, _ = record
            nodes = self._current()
            new = self._rebuild(
                {**nodes.servers, name: spec}, {**nodes.clients, name: pool}
            )  # outside _lock
            with self._lock:
                del self.dead[name]
                self._publish(new)
        self._emit("node_revived", name, version=new.version)

    def probe_ended(self) -> None:
        """The probe started by :meth:`maybe_probe` ended: the next is due when the first
        dead node passes dead_timeout."""
        with self._lock:
            deadlines = [v[2] + self.dead_timeout for v in self.dead.values()]
            self.next_probe = min(deadlines) if deadlines else 0.0
        self._probe_lock.release()
