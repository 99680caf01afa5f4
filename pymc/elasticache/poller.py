"""The ElastiCache poller: a daemon thread (a greenlet under ``gevent.monkey.patch_all()``)
that runs a discovery every ``poll_interval`` seconds, jittered by ``JITTER`` either way (so
a fleet of workers does not poll in step), after ``STARTUP_TRIES`` quick tries while the
client is not ready yet.

The poller holds its client weakly (strongly only to start a discovery and to apply its
outcome), so a client dropped without ``close()`` is collected, and its poller then ends.
:class:`Polled` is what the poller needs of a client, and starts it.

Layer: imports ``client`` (server specs) and this package's ``discovery``.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import traceback
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ..client import ServerSpec, server_name
from ..protocol import ClusterConfig
from .discovery import Discovery, stop_discoveries

__all__ = [
    "JITTER",
    "STARTUP_SPACING",
    "STARTUP_TRIES",
    "Change",
    "ChangeHook",
    "Polled",
    "poll_delay",
    "run_hook",
]

logger = logging.getLogger("pymc")

#: Start-up: this many quick tries, this many seconds apart, before the normal interval.
STARTUP_TRIES = 3
STARTUP_SPACING = 0.5
#: The poll interval varies by this fraction either way.
JITTER = 0.1

ChangeHook = Callable[[List[ServerSpec], List[ServerSpec]], Any]
Change = Tuple[List[ServerSpec], List[ServerSpec]]  # (old, new) node lists


def poll_delay(interval: float) -> float:
    """The seconds until the next poll: ``interval``, give or take ``JITTER`` (at most
    what a wait takes: a very long interval is one very long sleep)."""
    return min(interval * random.uniform(1 - JITTER, 1 + JITTER), threading.TIMEOUT_MAX)


def run_hook(hook: ChangeHook, change: Change) -> None:
    """Call ``on_change``; a failure is logged."""
    try:
        hook(*change)
    except Exception:
        logger.exception("pymc: on_change hook failed")


class Polled:
    """What the poller drives: a client that discovers its nodes (an
    :class:`~pymc.elasticache.ElastiCacheClient`). ``_begin`` takes the client's refresh
    lock and describes a discovery, or returns None; ``_end`` applies its outcome and
    releases the lock, returning whether the node set changed and the change."""

    endpoint: ServerSpec
    poll_interval: float
    plain: bool
    on_change: Optional[ChangeHook]
    _discovery_timeout: float
    _stop: threading.Event
    _ready: threading.Event
    _sockets: Dict[int, socket.socket]
    _poller: Optional[threading.Thread]

    def _begin(self, timeout: float) -> Optional[Discovery]:
        raise NotImplementedError

    def _end(
        self, job: Discovery, outcome: Union[ClusterConfig, Exception, None]
    ) -> Tuple[bool, Optional[Change]]:
        raise NotImplementedError

    def _start_poller(self) -> None:
        # The thread gets a weak reference and objects that do not reference the client,
        # so a client dropped without close() is still collected; its finalizer then sets
        # the stop event, which wakes the poller from its sleep.
        stop, ready = self._stop, self._ready
        weakref.finalize(self, stop_discoveries, stop, self._sockets)
        self._poller = threading.Thread(
            target=_poll,
            args=(weakref.ref(self), stop, ready),
            name=f"pymc-elasticache-{server_name(self.endpoint)}",
            daemon=True,
        )
        self._poller.start()

    @property
    def polling(self) -> bool:
        """Whether the poller thread is running."""
        return self._poller is not None and self._poller.is_alive()


def _poll(
    client_ref: Callable[[], Optional[Polled]],
    stop: threading.Event,
    ready: threading.Event,
) -> None:
    """The poller's loop. It holds its client strongly only to start a discovery and to
    apply its outcome, never across the discovery's I/O nor the sleep, and ends when
    ``stop`` is set (by ``close()``, or by the finalizer of a client that was dropped) or
    the client is gone."""
    client = client_ref()
    quick = 0 if ready.is_set() else STARTUP_TRIES - 1
    while client is not None:
        if quick > 0 and not ready.is_set():
            quick -= 1
            delay = STARTUP_SPACING
        else:
            delay = poll_delay(client.poll_interval)
        client = None
        if stop.wait(delay):
            return
        client = client_ref()
        if client is None:
            return
        change = None
        try:
            job = client._begin(client._discovery_timeout)
            if job is not None:
                client = None
                outcome = job.outcome()
                client = client_ref()
                if client is None:  # dropped meanwhile
                    job.lock.release()
                    return
                change = client._end(job, outcome)[1]
        except Exception as exc:  # never let the poller die
            logger.exception("pymc: ElastiCache poll failed")
            # A log handler may keep the traceback: its frames must not keep the client.
            traceback.clear_frames(exc.__traceback__)
            client = client_ref()
            if client is None:
                return
        if change is not None and client.on_change is not None:
            # Called from this frame, whose client variable is cleared before the sleep:
            # a traceback a log handler keeps then holds no client.
            run_hook(client.on_change, change)
        if client.plain:
            return
