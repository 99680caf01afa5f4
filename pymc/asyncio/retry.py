"""`RetryingClient` for asyncio: pymemcache's retrying decorator with the sync one's
arguments, policy (:class:`pymc.retry.RetryPolicy`) and decisions; the sleep between
attempts waits on the loop.

Layer: asyncio.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Awaitable, Callable, Dict, Tuple

from ..retry import RetryingClient as SyncRetryingClient
from ..retry import RetryPolicy, replayable
from .commands import Commands

__all__ = ["RetryingClient", "retry_call"]


async def retry_call(
    policy: RetryPolicy,
    command: str,
    fn: Callable[..., Awaitable[Any]],
    /,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """Await ``fn(*args, **kwargs)`` and retry it as ``policy`` allows (the decisions of
    :func:`pymc.retry.call_with_retry`; the backoff sleeps on the loop)."""
    while True:
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            if policy.exhausted or not policy.is_retryable(command, exc):
                raise
            delay = policy.backoff_time()
            policy = policy.increment()
            if delay > 0:
                await asyncio.sleep(delay)


class RetryingClient(Commands):
    """Wrap an asyncio Client, PooledClient or HashClient and retry its commands, with
    the arguments and rules of :class:`pymc.retry.RetryingClient`."""

    def __init__(self, client: Any, *args: Any, **kwargs: Any) -> None:
        # The sync decorator's own argument checks and policy.
        self._policy = SyncRetryingClient(client, *args, **kwargs).policy
        self._client = client

    __init__.__signature__ = inspect.signature(SyncRetryingClient.__init__)  # type: ignore[attr-defined]

    @property
    def policy(self) -> RetryPolicy:
        return self._policy

    async def run(self, name: str, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
        """The wrapped client's command ``name``, retried as the policy allows."""
        args, kwargs = replayable(name, args, kwargs)
        return await retry_call(self._policy, name, getattr(self._client, name), *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Anything that is not a command (server, check_key, ...) comes from the client.
        return getattr(self._client, name)

    def __repr__(self) -> str:
        return f"<pymc.asyncio.RetryingClient attempts={self._policy.attempts} {self._client!r}>"

    async def close(self) -> None:
        """Close the wrapped client."""
        await self._client.close()

    async def __aenter__(self) -> RetryingClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.close()
