"""The fan-out: one plan per node, executed over many connections at once.

Each node's plan goes out on one of its connections, every request is sent before any reply is
read, then one poll over the sockets reads the replies in the order they arrive; each
connection goes back to its pool as soon as its own reply is read, so a slow node never holds a
healthy node's connections, and ``timeout`` bounds the whole fan-out's reads. A node that fails
is retried alone (as the retry policy allows) or, with ``ignore_exc``, left out of the result.

Layer: imports ``client`` (``send``/``receive`` of a connection, the poll helpers, the
observation of commands), ``pool`` (``Lease``), ``protocol``, ``retry`` and ``exceptions``.
"""

from __future__ import annotations

import select
import time
from errno import ETIMEDOUT
from typing import (
    Any,
    Callable,
    Container,
    Dict,
    List,
    Mapping,
    Optional,
    Protocol,
    Set,
    Tuple,
)

from ..client import (
    Client,
    ClientOptions,
    CommandEnd,
    command_deadline,
    end_command,
    quiet_connections,
    readiness_poll,
    refused_by_close,
)
from ..exceptions import MemcacheTimeoutError
from ..pool import Lease
from ..protocol import NEED_DATA, Expect
from ..protocol.plans import Plan
from ..retry import RetryPolicy, call_with_retry
from .health import Health, is_connection_failure, retried_alone
from .nodeset import NodeSet

__all__ = ["FANOUT_MAX_COMMANDS", "FanOut", "Observe", "Plan", "Reading"]

#: What a fan-out polls its connections for (a reply; EOF and errors come with it).
_POLLIN: int = getattr(select, "POLLIN", 1)
#: A fan-out sends at most this many commands to one node before reading its replies.
FANOUT_MAX_COMMANDS = 2048

#: A node's read in a fan-out: its name, connection, lease, reply reader and finish.
Reading = Tuple[str, Client, Lease[Client], Expect, Callable[[Any], Any]]
#: Starts the observation of one node's part of a fan-out.
Observe = Callable[[str], Optional[CommandEnd]]


class Settings(Protocol):
    """What a fan-out reads from its client at each call."""

    options: ClientOptions
    retry: Optional[RetryPolicy]
    ignore_exc: bool


def _give_back(leases: List[Tuple[str, Lease[Client]]], done: Container[str]) -> None:
    """Return every leased connection: reused if its node is ``done`` (its reply was read
    to the end), destroyed otherwise. Every return is tried, even after one is interrupted
    (that exception is raised at the end); returning twice is harmless."""
    interrupted: Optional[BaseException] = None
    for name, lease in leases:
        try:
            lease.give_back(destroy=name not in done)
        except BaseException as exc:
            interrupted = interrupted or exc
    if interrupted is not None:
        raise interrupted


class FanOut:
    """The executor of a cluster client's fan-outs (``settings``: the client, whose
    ``options``, ``retry`` and ``ignore_exc`` it follows; ``health``: its nodes' books)."""

    def __init__(self, settings: Settings, health: Health) -> None:
        self._settings = settings
        self._health = health
        self._failures = health.failures  # (changed in place only)

    def execute(
        self,
        command: str,
        nodes: NodeSet,
        plans: Dict[str, Optional[Plan]],
        alone: Callable[[str], Any],
        observe: Optional[Observe] = None,
        noreply: bool = False,
    ) -> Dict[str, Any]:
        """Send each node its request, then read the replies as they arrive (see
        :meth:`_exchange`): ``{node: finished result}``.

        A plan's ``expect()`` makes the reader of the reply (None: a noreply request), its
        ``finish`` turns what it read into the node's result, and raises as the node's own
        Client would. A node whose plan is None (too big for one pass) goes through
        ``alone(node)`` instead.

        Connections are taken without waiting where one is free; when none is, the
        fan-out waits for one node's connection while it holds no other, so a slow node
        never keeps a healthy node's connections checked out, and two fan-outs cannot
        deadlock each other. A node that fails is retried alone (as the retry policy
        allows) or, with ignore_exc, left out of the result.

        ``observe`` (given when there is an ``on_command`` hook) starts the observation of
        each node's exchange, ended when its reply is read; ``alone`` observes its own.
        ``noreply``: the requests read no reply, so a node's plan going out clears none of
        its failures.
        """
        results: Dict[str, Any] = {}
        failed: Dict[str, Exception] = {}
        noted: Set[str] = set()  # nodes whose failure is counted already
        pending: List[str] = []
        solo: List[str] = []
        for name, plan in plans.items():
            (pending if plan is not None else solo).append(name)
        pending.sort()
        while pending:
            # Every lease is in ``leases`` before its connection is taken, so the finally
            # below gives back every connection, wherever an exception lands.
            leases: List[Tuple[str, Lease[Client]]] = []
            busy: List[str] = []
            try:
                self._take_and_exchange(
                    command, nodes, pending, leases, busy, plans, results, failed, noted, observe
                )
                # Before the connections go back: a request waiting for one must find
                # its node failed, not spend a timeout of its own there.
                self._note_failures(command, failed, noted)
            finally:
                try:
                    _give_back(leases, results)
                except BaseException:
                    _give_back(leases, results)  # the first give-back was interrupted
                    raise
            pending = busy
        for name in solo:
            try:
                results[name] = alone(name)
            except Exception as exc:
                failed[name] = exc
        first: Optional[Exception] = None
        policy = self._settings.retry
        health = self._health
        for name, error in failed.items():
            if retried_alone(policy, command, error):
                try:  # the node alone, with the attempts the policy has left
                    results[name] = call_with_retry(policy.increment(), command, alone, name)
                    continue
                except Exception as again:
                    error = again
            if is_connection_failure(error) and name not in noted:
                health.failed(name, error)
            if first is None:
                first = error
        if first is not None and not self._settings.ignore_exc:
            raise first
        if self._failures and not noreply:  # (noreply: nothing was read, nothing proven)
            for name in results:
                if name in self._failures:
                    health.succeeded(name)
        return results

    def _note_failures(
        self, command: str, failed: Mapping[str, Exception], noted: Set[str]
    ) -> None:
        """Count each connection failure in ``failed`` that will not be retried (and is not
        counted yet) against its node."""
        policy = self._settings.retry
        for name, error in failed.items():
            if name in noted or not is_connection_failure(error):
                continue
            if retried_alone(policy, command, error):
                continue  # retried alone after this round: counted if that fails too
            noted.add(name)
            self._health.failed(name, error)

    def _take_and_exchange(
        self,
        command: str,
        nodes: NodeSet,
        pending: List[str],
        leases: List[Tuple[str, Lease[Client]]],
        busy: List[str],
        plans: Dict[str, Optional[Plan]],
        results: Dict[str, Any],
        failed: Dict[str, Exception],
        noted: Set[str],
        observe: Optional[Observe],
    ) -> None:
        """One round of a fan-out: take a connection for each pending node that has one
        free (a node with none goes to ``busy``); when none was free, wait for the first
        busy node's alone; then exchange requests and replies on what was taken. Each
        lease is in ``leases`` before its connection is taken: the caller gives back what
        the exchange has not. A connection given back unused (its node failed while this
        fan-out waited for it) is never exchanged on: only the connections in ``taken``
        are."""
        taken: List[Tuple[str, Client, Lease[Client]]] = []
        clients = nodes.clients
        for name in pending:
            if self._failures and self._health.fail_fast(name):
                failed[name] = self._health.resting(name, "failed recently")
                continue
            lease = Lease(clients[name].client_pool)
            leases.append((name, lease))
            try:
                conn = lease.take(wait=False)
            except Exception as exc:
                failed[name] = exc
                continue
            if conn is None:
                busy.append(name)
            else:
                taken.append((name, conn, lease))
        if busy and not taken:
            name = busy.pop(0)  # wait for this node alone, holding no connection
            lease = clients[name].client_pool.lease()
            leases.append((name, lease))
            try:
                conn = lease.take()
                self._health.still_usable_after_wait(name, lease)
            except Exception as exc:  # no free connection in time: this node only
                failed[name] = exc
            else:
                taken.append((name, conn, lease))  # type: ignore[arg-type]
        if taken:
            self._exchange(command, taken, plans, results, failed, noted, observe)

    def _exchange(
        self,
        command: str,
        taken: List[Tuple[str, Client, Lease[Client]]],
        plans: Dict[str, Optional[Plan]],
        results: Dict[str, Any],
        failed: Dict[str, Exception],
        noted: Set[str],
        observe: Optional[Observe],
    ) -> None:
        """Send every taken connection its node's request, then read the replies in the
        order they arrive; each connection goes back as soon as its own reply is read (or,
        on a failure, once the failure is counted against its node, destroyed). The reads
        end by the ``timeout`` deadline, counted from before the first send. Whatever an
        exception landing anywhere leaves unreturned, the caller's ``_give_back`` returns
        (destroyed unless the node's reply is in ``results``)."""
        ends: Optional[Dict[str, Optional[CommandEnd]]] = None if observe is None else {}
        try:
            deadline = command_deadline(self._settings.options.timeout)  # (before the first send)
            # Everything the sends need is made first, so that the requests go out back to
            # back: on a machine where the servers share the client's CPU, each moment
            # between two sends is a chance for the server just woken to take the CPU.
            # One poll looks at every connection for stray bytes (see quiet_connections).
            sends: List[Tuple[str, Client, Lease[Client], bytes, Optional[Expect], Any]] = []
            for name, conn, lease in taken:
                plan: Plan = plans[name]  # type: ignore[assignment]
                expect = plan.expect
                sends.append((name, conn, lease, plan.request, expect and expect(), plan.finish))
            quiet = quiet_connections([conn for _, conn, _ in taken])
            if ends is not None:
                for name, _, _ in taken:
                    ends[name] = observe(name)  # type: ignore[misc]
            sent: List[Reading] = []
            for (name, conn, lease, request, reader, finish), looked in zip(sends, quiet):
                try:
                    conn.send(request, reader is None, deadline, looked)
                    if reader is None:  # noreply: nothing to read
                        results[name] = finish(None)
                    else:
                        sent.append((name, conn, lease, reader, finish))
                        continue
                except Exception as exc:
                    self._lost(command, name, lease, exc, failed, noted, ends, request)
                    continue
                lease.give_back()
                if ends is not None:
                    end_command(ends.pop(name), None)
            waiting: Dict[int, Reading] = {}  # socket's fd -> the node's read
            for reading in sent:
                waiting[reading[1].sock.fileno()] = reading  # type: ignore[union-attr]
            if len(waiting) > 1:
                self._read_as_they_come(
                    command, waiting, deadline, plans, results, failed, noted, ends
                )
            for name, conn, lease, reader, finish in waiting.values():
                # One reply to wait for (or no poll for these sockets): the connection's
                # own read.
                try:
                    results[name] = finish(conn.receive(reader, deadline))
                except Exception as exc:
                    request = plans[name].request  # type: ignore[union-attr]
                    self._lost(command, name, lease, exc, failed, noted, ends, request)
                    continue
                lease.give_back()
                if ends is not None:
                    end_command(ends.pop(name), None)
        except BaseException as exc:  # every observation still open ends with it
            if ends:
                for end in ends.values():
                    end_command(end, exc)
            raise

    def _read_as_they_come(
        self,
        command: str,
        waiting: Dict[int, Reading],
        deadline: Optional[float],
        plans: Dict[str, Optional[Plan]],
        results: Dict[str, Any],
        failed: Dict[str, Exception],
        noted: Set[str],
        ends: Optional[Dict[str, Optional[CommandEnd]]],
    ) -> None:
        """Read the replies of the connections ``waiting`` (by socket fd) in the order they
        arrive, one ``poll`` over them all, feeding each node's reader what its socket
        has; each node leaves ``waiting`` once its reply is read or failed. Without a poll
        for these sockets (see :func:`readiness_poll`), leaves them all to the caller."""
        poll = readiness_poll(next(iter(waiting.values()))[1].sock)
        if poll is None:
            return
        poller = poll()
        for fd in waiting:
            poller.register(fd, _POLLIN)
        done: List[int] = []  # read or failed: unregistered before the next poll
        while waiting:
            for fd in done:
                poller.unregister(fd)
            done.clear()
            if deadline is None:
                ready = poller.poll()
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                ready = poller.poll(left * 1000.0)
            for fd, _ in ready:
                name, conn, lease, reader, finish = waiting[fd]
                try:
                    reply = conn.receive_some(reader, deadline)
                    if reply is NEED_DATA:
                        continue
                    done.append(fd)
                    del waiting[fd]
                    results[name] = finish(reply)
                except Exception as exc:
                    if waiting.pop(fd, None) is not None:
                        done.append(fd)
                    request = plans[name].request  # type: ignore[union-attr]
                    self._lost(command, name, lease, exc, failed, noted, ends, request)
                    continue
                lease.give_back()
                if ends is not None:
                    end_command(ends.pop(name), None)
        for fd in list(waiting):  # past the deadline
            name, conn, lease, _, _ = waiting.pop(fd)
            conn.close()
            timeout = self._settings.options.timeout
            late = MemcacheTimeoutError(
                ETIMEDOUT, f"timed out talking to {name} (timeout {timeout} s)"
            )
            self._lost(command, name, lease, late, failed, noted, ends)

    def _lost(
        self,
        command: str,
        name: str,
        lease: Lease[Client],
        exc: Exception,
        failed: Dict[str, Exception],
        noted: Set[str],
        ends: Optional[Dict[str, Optional[CommandEnd]]],
        request: bytes = b"",
    ) -> None:
        """A node's plan failed: counted against it (unless it will be retried alone, or
        the node refused the command alone: see ``refused_by_close``), then its connection
        destroyed, so a request waiting for one finds it failed."""
        if request:
            exc = refused_by_close(request, exc, name)  # type: ignore[assignment]
        failed[name] = exc
        self._note_failures(command, {name: exc}, noted)
        lease.give_back(destroy=True)
        if ends is not None:
            end_command(ends.pop(name), exc)
