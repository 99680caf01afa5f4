"""Executing plans on a connection: one (:meth:`Executor.execute`), several under one
deadline (:meth:`execute_all`), or a flow of dependent round trips (:meth:`run_flow`).

Layer: transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator, List, Optional, Sequence

from ..exceptions import MemcacheUnknownCommandError
from ..options import ClientOptions
from ..protocol import ErrorReply, Expect
from ..protocol.metaplans import NoMetaCommands
from ..protocol.plans import Plan
from .io import command_deadline

__all__ = ["Executor", "Flow"]

#: A command of several dependent round trips: yields plans, is sent their results.
Flow = Generator[Plan, Any, Any]


class Executor:
    """The plan half of :class:`~pymc.transport.Connection` (a mixin of it)."""

    if TYPE_CHECKING:
        options: ClientOptions

        def send(
            self,
            request: bytes,
            noreply: bool = False,
            deadline: Optional[float] = None,
            looked: bool = False,
        ) -> None: ...

        def request(
            self, request: bytes, expect: Expect, deadline: Optional[float] = None
        ) -> Any: ...

        def close(self) -> None: ...

        def _no_meta(self, command: str) -> MemcacheUnknownCommandError: ...

    def execute(self, plan: Plan, deadline: Optional[float] = None) -> Any:
        """Run ``plan`` on this connection: send its request (``noreply`` when it expects
        nothing), read its reply with a fresh ``plan.expect()``, and return
        ``plan.finish(reply)``. An error reply that leaves the connection out of step
        closes it first; so does a server without meta commands (whose error then names
        the version it reports). ``deadline``: see :meth:`request`."""
        expect = plan.expect
        if expect is None:
            self.send(plan.request, True, deadline)
            return plan.finish(None)
        reply = self.request(plan.request, expect(), deadline)
        last = reply[-1] if type(reply) is list and reply else reply  # (a pipeline's stop)
        if type(last) is ErrorReply and not last.in_step:
            self.close()
        try:
            return plan.finish(reply)
        except NoMetaCommands as exc:
            raise self._no_meta(exc.command) from None

    def _deadline_for(self, requests: int) -> Optional[float]:
        """One deadline for a command of several requests (None for one: see receive)."""
        return command_deadline(self.options.timeout) if requests > 1 else None

    def execute_all(self, plans: Sequence[Plan]) -> List[Any]:
        """Run ``plans`` in order, under one deadline when there are several (a command of
        several requests); their results, in order."""
        deadline = self._deadline_for(len(plans))
        return [self.execute(plan, deadline) for plan in plans]

    def run_flow(self, flow: Flow) -> Any:
        """Drive a command of several dependent round trips (a generator that yields a
        :class:`~pymc.protocol.plans.Plan` and is sent its result, and returns the
        command's): each plan runs through :meth:`execute`; an exception a plan raised is
        thrown into the flow, which may handle it."""
        try:
            plan = next(flow)
            while True:
                try:
                    result = self.execute(plan)
                except BaseException as exc:
                    plan = flow.throw(exc)
                else:
                    plan = flow.send(result)
        except StopIteration as stop:
            return stop.value
