"""The ElastiCache clients: :class:`ElastiCacheClient`, a :class:`~pymc.cluster.HashClient`
whose nodes come from a configuration endpoint (see :mod:`pymc.elasticache` for the rules it
keeps), and :class:`AWSElastiCacheHashClient`, its pymemcache-compatible name.

Layer: imports ``client``, ``cluster``, ``protocol``, ``exceptions`` and this package's
``discovery`` and ``poller``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from typing import Any, Dict, Optional, Tuple, Union

from ..client import normalize_server_spec, server_name
from ..cluster import HashClient
from ..exceptions import ClusterNotReadyError
from ..protocol import ClusterConfig
from .discovery import DISCOVERY_TIMEOUT, Discovery, stop_discoveries
from .following import FollowsConfig
from .poller import Change, ChangeHook, Polled, run_hook

__all__ = ["AWSElastiCacheHashClient", "ElastiCacheClient"]

logger = logging.getLogger("pymc")

# Bumped in every child after os.fork(): a client made in an earlier generation has no
# poller thread in this process. _FORK_GUARD lets one thread of the child do the restart.
_fork_generation = [0]
_FORK_GUARD = threading.Lock()


def _after_fork_in_child() -> None:
    global _FORK_GUARD
    _FORK_GUARD = threading.Lock()  # a parent thread may have held it at fork time
    _fork_generation[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ElastiCacheClient(FollowsConfig, HashClient, Polled):
    """A :class:`HashClient` whose nodes come from an ElastiCache configuration endpoint.

    ``endpoint`` is ``"host:port"`` (the ``.cfg.`` name). ``use_vpc=True`` connects to
    each node's IP address, ``False`` to its hostname; with ``tls_context`` the certificate
    is checked against the node's hostname either way. ``on_change(old, new)`` is called
    (from the poller) with the node lists after each change. ``discovery_timeout`` bounds
    each discovery as a whole, the fallback to the known nodes included. ``ready_timeout``:
    wait up to that many seconds in the constructor for the first node list, and raise
    :class:`ClusterNotReadyError` (after closing) if none came. Every other keyword is a
    :class:`HashClient` option.
    """

    def __init__(
        self,
        endpoint: Any,
        poll_interval: float = 60.0,
        use_vpc: bool = True,
        on_change: Optional[ChangeHook] = None,
        discovery_timeout: Optional[float] = None,
        ready_timeout: Optional[float] = None,
        **options: Any,
    ) -> None:
        # (a NaN or infinite one would kill the poller, or make every discovery fail)
        if not 0 < poll_interval < math.inf:
            raise ValueError(f"poll_interval must be a finite number > 0, got {poll_interval!r}")
        if discovery_timeout is not None and not 0 < discovery_timeout < math.inf:
            raise ValueError(
                f"discovery_timeout must be None or a finite number > 0, got {discovery_timeout!r}"
            )
        self.endpoint = normalize_server_spec(endpoint)
        if isinstance(self.endpoint, str):
            raise ValueError("an ElastiCache endpoint is host:port")
        self.poll_interval = poll_interval
        self.use_vpc = use_vpc
        self.on_change = on_change
        #: The version of the node list in use (None: none yet, or a plain server).
        self.config_version: Optional[int] = None
        #: The endpoint has no cluster configuration: it is the one node, not polled.
        self.plain = False
        self._closed = False
        self._failing = False  # discovery is failing, and that was said once
        self._older_seen: Optional[int] = None  # the last older version logged
        self._sockets: Dict[int, socket.socket] = {}  # discoveries in flight
        self._make_sync_objects()
        super().__init__([], **options)
        opts = self.options
        self._discovery_timeout = float(
            discovery_timeout
            or max(opts.connect_timeout or 0, opts.timeout or 0)
            or DISCOVERY_TIMEOUT
        )
        self._tls_context = opts.tls_context
        # The first try, here (within ready_timeout when one is given); the poller retries.
        started = time.monotonic()
        first = self._discovery_timeout
        if ready_timeout is not None:
            first = max(min(first, ready_timeout), 0.001)
        self._refresh(first)
        if not self.plain:
            self._start_poller()
        if ready_timeout is not None and not self.wait_ready(
            max(ready_timeout - (time.monotonic() - started), 0)
        ):
            self.close()
            raise ClusterNotReadyError(
                f"no node list from {server_name(self.endpoint)} within {ready_timeout} s"
            )

    def _make_sync_objects(self) -> None:
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._refresh_lock = threading.Lock()  # one discovery + apply at a time
        self._state_lock = threading.Lock()  # guards _closed and the node-set swap
        self._poller: Optional[threading.Thread] = None
        self._generation = _fork_generation[0]  # last: other threads test it unlocked

    # ------------------------------------------------------------------ readiness

    def wait_ready(self, timeout: Optional[float] = None) -> bool:
        """Wait up to ``timeout`` seconds for the first node list; return whether it came."""
        self._check_fork()
        return bool(self._ready.wait(timeout))

    # ------------------------------------------------------------------ discovery

    def refresh(self) -> bool:
        """Poll now; return whether the node set changed. A failure keeps the last good
        node set (or leaves the client not ready) and is logged once, until it recovers.
        Returns within ``discovery_timeout``, a wait for a discovery already in flight
        included (when that wait uses it all, this call returns False)."""
        changed, change = self._refresh(self._discovery_timeout)
        # The hook runs with no lock held: it may call refresh() or close().
        if change is not None and self.on_change is not None:
            run_hook(self.on_change, change)
        return changed

    def _refresh(self, timeout: float) -> Tuple[bool, Optional[Change]]:
        """One discovery, applied: whether the node set changed, and the ``(old, new)``
        lists for ``on_change`` (which the caller runs, with no lock held)."""
        job = self._begin(timeout)
        if job is None:
            return False, None
        return self._end(job, job.outcome())

    def _begin(self, timeout: float) -> Optional[Discovery]:
        """Take the refresh lock (within ``timeout``) and describe the discovery to run,
        with nothing in it that references this client; None when there is none to run.
        The lock stays held: :meth:`_end` releases it."""
        self._check_fork()
        if self.plain or self._closed:
            return None
        deadline = time.monotonic() + timeout
        lock = self._refresh_lock
        if not lock.acquire(timeout=max(timeout, 0.001)):
            return None  # another discovery took the whole deadline
        try:
            if self._stop.is_set():  # closed while this call waited for the lock
                lock.release()
                return None
            logger.debug("pymc: ElastiCache poll of %s", server_name(self.endpoint))
            known = self.known_nodes()
            return Discovery(
                self.endpoint, known, self._tls_context, self._stop, self._sockets, lock, deadline
            )
        except BaseException:
            lock.release()
            raise

    def _end(
        self, job: Discovery, outcome: Union[ClusterConfig, Exception, None]
    ) -> Tuple[bool, Optional[Change]]:
        """Apply a discovery's outcome and release the refresh lock."""
        try:
            return self.take_outcome(outcome)
        finally:
            job.lock.release()

    # ------------------------------------------------------------------ the poller

    def _check_fork(self) -> None:
        """In a forked child, on first use: fresh locks and a poller of its own."""
        if self._generation == _fork_generation[0]:
            return
        with _FORK_GUARD:
            if self._generation == _fork_generation[0]:
                return
            for sock in list(self._sockets.values()):
                try:
                    sock.close()  # the child's copy of a discovery the parent had in flight
                except OSError:
                    pass
            self._sockets = {}
            self._make_sync_objects()
            if self.config_version is not None or self.plain:
                self._ready.set()
            if not self._closed and not self.plain:
                self._start_poller()

    # The request paths, with the fork check first.

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        if self._generation != _fork_generation[0]:
            self._check_fork()
        return super()._run(*args, **kwargs)

    def _groups(self, *args: Any, **kwargs: Any) -> Any:
        if self._generation != _fork_generation[0]:
            self._check_fork()
        return super()._groups(*args, **kwargs)

    def _each(self, *args: Any, **kwargs: Any) -> Any:
        if self._generation != _fork_generation[0]:
            self._check_fork()
        return super()._each(*args, **kwargs)

    # ------------------------------------------------------------------ life cycle

    def close(self) -> None:
        """Stop the poller (a discovery in flight is cut off) and close every connection.
        After this returns no thread of the client runs and the node set never changes."""
        with self._state_lock:
            self._closed = True
        stop_discoveries(self._stop, self._sockets)
        poller = self._poller
        if poller is not None and poller is not threading.current_thread():
            poller.join(timeout=self._discovery_timeout + 1.0)
        super().close()

    def __enter__(self) -> ElastiCacheClient:
        return self

    def __repr__(self) -> str:
        state = "plain" if self.plain else ("ready" if self.ready else "not ready")
        return (
            f"<{type(self).__name__} {server_name(self.endpoint)} {state} "
            f"config_version={self.config_version} nodes={[server_name(n) for n in self.nodes]}>"
        )


class AWSElastiCacheHashClient(ElastiCacheClient):
    """For code written against pymemcache's ElastiCache extension: ``cfg_node`` is the
    configuration endpoint and :meth:`reconfigure_nodes` polls it now."""

    def __init__(self, cfg_node: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(cfg_node, *args, **kwargs)

    def reconfigure_nodes(self) -> None:
        self.refresh()
