"""OpenTelemetry spans for pymc's commands, through the client's ``on_command`` hook.

::

    from pymc.contrib.opentelemetry import PymcInstrumentor

    tracing = PymcInstrumentor()  # or PymcInstrumentor(tracer_provider=provider)
    client = pymc.HashClient(servers, on_command=tracing.hook())

Each command becomes one span of kind CLIENT, named after the method called (``get``,
``set_many``, ...), with the attributes ``opentelemetry-instrumentation-pymemcache`` gives
pymemcache's spans: ``db.system`` (``memcached``), ``db.statement`` (the command and its
keys, space-separated), ``net.peer.name`` and ``net.peer.port`` (``net.transport``
``ip_tcp``), or, for a UNIX socket, ``net.peer.name`` (the path) and ``net.transport``
``other``. A command that raises records the exception on its span, whose status is then
ERROR. A fan-out over several nodes (``get_many``, ``set_many``, the ``meta_*_many``
pipelines of a HashClient) makes one span per node, each under the caller's span.

Spans are started with the caller's context as parent and are never made current, so spans
of a fan-out (which overlap) are siblings, not nested in one another. pymc is not patched:
a client without the hook makes no span and pays nothing. Needs ``opentelemetry-api``
(``pip install 'pymc-memcached[opentelemetry]'``); an SDK (or none) is the application's
choice.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

try:
    from opentelemetry.trace import (
        SpanKind,
        Status,
        StatusCode,
        TracerProvider,
        get_tracer,
    )
except ImportError as exc:  # say which extra brings it
    raise ImportError(
        "pymc.contrib.opentelemetry needs opentelemetry-api: "
        f"pip install 'pymc-memcached[opentelemetry]' ({exc})"
    ) from exc

import pymc
from pymc.client import CommandEnd, CommandHook, ServerSpec

__all__ = ["PymcInstrumentor", "statement"]

Attributes = Dict[str, Union[str, int]]


def _key_text(key: Any) -> str:
    if type(key) is tuple and len(key) == 2:  # a HashClient (server_key, key)
        key = key[1]
    if isinstance(key, bytes):
        return key.decode("utf-8", "replace")
    return str(key)


def statement(command: str, keys: Tuple[Any, ...]) -> str:
    """``db.statement``: ``"command key1 key2 ..."`` (bytes keys decoded as UTF-8), or the
    command alone when it has no keys."""
    if not keys:
        return command
    return command + " " + " ".join(map(_key_text, keys))


def _peer(server: ServerSpec) -> Attributes:
    if isinstance(server, str):
        return {"db.system": "memcached", "net.peer.name": server, "net.transport": "other"}
    host, port = server
    return {
        "db.system": "memcached",
        "net.peer.name": host,
        "net.peer.port": port,
        "net.transport": "ip_tcp",
    }


class PymcInstrumentor:
    """Makes the ``on_command`` hook that turns pymc's commands into spans.

    ``tracer_provider``: the provider to take the tracer from (default: the global one,
    as set by ``opentelemetry.trace.set_tracer_provider``, also when it is set later).
    """

    def __init__(self, tracer_provider: Optional[TracerProvider] = None) -> None:
        self.tracer = get_tracer(__name__, pymc.__version__, tracer_provider)

    def hook(self) -> CommandHook:
        """The callable to pass as a client's ``on_command=`` option."""
        return self.on_command

    def on_command(self, command: str, keys: Tuple[Any, ...], server: ServerSpec) -> CommandEnd:
        """Start the span of one command on one node; return what ends it."""
        attributes = _peer(server)
        attributes["db.statement"] = statement(command, keys)
        span = self.tracer.start_span(command, kind=SpanKind.CLIENT, attributes=attributes)

        def end(error: Optional[BaseException]) -> None:
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            span.end()

        return end

    __call__ = on_command
