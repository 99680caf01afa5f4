"""The asyncio fan-out of a cluster client: one plan per node, over many connections at once.

Each node's part is a native coroutine: take one connection of the node's pool, execute the
node's :class:`~pymc.protocol.plans.Plan` on it (the connection sends the request and reads
the reply, under the command's deadline), give the connection back. The parts run at once,
so every request goes out before any reply is read, the replies are read as they arrive, and
each connection goes back as soon as its own reply is complete: a slow node holds nothing but
its own connection. The rules are those of the sync :class:`~pymc.cluster.fanout.FanOut`: a
node that failed less than ``retry_timeout`` ago is not tried; a failure is counted against
its node before its connection goes back (so a request waiting for one finds the node
failed); a node that failed is retried alone as the retry policy allows; with ``ignore_exc``
a failed node is left out of the result, otherwise the first failure is raised once every
node's part has ended.

A cancellation (``task.cancel()``, ``asyncio.timeout()``) of the caller cancels every part
and waits for them to end: each connection whose reply may be unread is closed, and every
pool slot comes back before the caller sees the ``CancelledError``.

Layer: imports ``client``, ``cluster``, ``retry`` and this package's ``bridge``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Set

from ..client import end_command, refused_by_close
from ..cluster.fanout import Observe, Settings
from ..cluster.health import Health, is_connection_failure, retried_alone
from ..cluster.nodeset import NodeSet
from ..exceptions import NodeRestingError
from ..protocol.plans import Plan
from ..retry import RetryPolicy
from .bridge import run_sync
from .nodes import checkout, give_back

__all__ = ["AsyncFanOut", "retry_alone"]


async def retry_alone(
    policy: RetryPolicy, command: str, alone: Callable[[str], Any], name: str
) -> Any:
    """``alone(name)`` (a sync function, run in the bridge) retried as ``policy`` allows,
    with its backoff slept on the loop."""
    while True:
        try:
            return await run_sync(alone, name)
        except Exception as exc:
            if policy.exhausted or not policy.is_retryable(command, exc):
                raise
            delay = policy.backoff_time()
            policy = policy.increment()
            if delay > 0:
                await asyncio.sleep(delay)


async def _all(parts: List[Awaitable[None]]) -> None:
    """Run ``parts`` at once and wait for every one of them to end, even when the caller is
    cancelled (each part is then cancelled, and cleans up); then raise the first exception a
    part raised, if any."""
    outcomes = await asyncio.gather(*parts, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


class AsyncFanOut:
    """The executor of an asyncio cluster client's fan-outs (``settings``: the client, whose
    ``options``, ``retry`` and ``ignore_exc`` it follows; ``health``: its nodes' books)."""

    def __init__(self, settings: Settings, health: Health) -> None:
        self._settings = settings
        self._health = health
        self._failures = health.failures  # (changed in place only)

    async def execute(
        self,
        command: str,
        nodes: NodeSet,
        plans: Dict[str, Optional[Plan]],
        alone: Callable[[str], Any],
        observe: Optional[Observe] = None,
        noreply: bool = False,
    ) -> Dict[str, Any]:
        """``{node: finished result}``: as :meth:`pymc.cluster.fanout.FanOut.execute`.
        ``alone(node)`` (a sync function, run in the bridge) serves a node whose plan is
        None, and retries a node that failed."""
        results: Dict[str, Any] = {}
        failed: Dict[str, Exception] = {}
        noted: Set[str] = set()  # nodes whose failure is counted already
        parts: List[Awaitable[None]] = []
        for name in sorted(plans):
            plan = plans[name]
            if plan is None:
                parts.append(self._alone(name, alone, results, failed))
            else:
                part = self._part(command, nodes, name, plan, results, failed, noted, observe)
                parts.append(part)
        if len(parts) == 1:
            await parts[0]
        elif parts:
            await _all(parts)
        first: Optional[Exception] = None
        policy = self._settings.retry
        health = self._health
        for name, error in failed.items():
            if retried_alone(policy, command, error):
                try:  # the node alone, with the attempts the policy has left
                    results[name] = await retry_alone(policy.increment(), command, alone, name)
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

    async def _alone(
        self,
        name: str,
        alone: Callable[[str], Any],
        results: Dict[str, Any],
        failed: Dict[str, Exception],
    ) -> None:
        try:
            results[name] = await run_sync(alone, name)
        except Exception as exc:
            failed[name] = exc

    async def _part(
        self,
        command: str,
        nodes: NodeSet,
        name: str,
        plan: Plan,
        results: Dict[str, Any],
        failed: Dict[str, Exception],
        noted: Set[str],
        observe: Optional[Observe],
    ) -> None:
        """One node's part: its plan on one of its connections, given back at once."""
        health = self._health
        if self._failures and health.fail_fast(name):
            failed[name] = health.resting(name, "failed recently")
            return
        pool = nodes.clients[name]
        try:
            conn, waited = await checkout(pool)
        except Exception as exc:  # no free connection in time, no connection: this node only
            failed[name] = exc
            return
        clean = False
        try:
            if waited:  # the node may have failed while this part waited for its connection
                try:
                    health.still_usable(name)
                except NodeRestingError as exc:
                    failed[name] = exc
                    clean = True  # (given back unused)
                    return
            end = None if observe is None else observe(name)
            try:
                results[name] = await conn.execute(plan)
            except Exception as exc:
                error = refused_by_close(plan.request, exc, name)
                failed[name] = error  # type: ignore[assignment]
                # Counted before the connection goes back (destroyed): see the module.
                self._note_failures(command, {name: error}, noted)  # type: ignore[dict-item]
                end_command(end, error)
                return
            except BaseException as exc:
                end_command(end, exc)
                raise
            clean = True
            end_command(end, None)
        finally:
            give_back(pool, conn, not clean)

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
