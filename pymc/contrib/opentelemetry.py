"""OpenTelemetry spans for pymc's commands, through the client's ``on_command`` hook.

::

    from pymc.contrib.opentelemetry import PymcInstrumentor

    tracing = PymcInstrumentor()  # or PymcInstrumentor(tracer_provider=provider)
    client = pymc.HashClient(servers, on_command=tracing.hook())

Each command becomes one span of kind CLIENT, named after the method called (``get``,
``set_many``, ...), with the attributes ``opentelemetry-instrumentation-pymemcache`` gives
pymemcache's spans: ``db.system`` (``memcached``), ``db.statement`` (the command and its
keys, space-separated; ``stats`` and its first argument), ``net.peer.name`` and
``net.peer.port`` (``net.transport`` ``ip_tcp``), or, for a UNIX socket, ``net.peer.name``
(the path) and ``net.transport`` ``other``. A command that raises records the exception on
its span, whose status is then ERROR. A fan-out over several nodes (``get_many``,
``set_many``, the ``meta_*_many`` pipelines of a HashClient) makes one span per node, each
under the caller's span.

``OTEL_SEMCONV_STABILITY_OPT_IN`` (read when the instrumentor is made) is followed as the
official database instrumentations follow it: with ``database`` the spans carry the stable
attributes instead (``db.system.name``, ``db.query.text``, ``server.address``,
``server.port``, ``network.transport`` ``tcp``, or ``pipe`` for a UNIX socket); with
``database/dup`` both sets. The tracer's schema URL is then
:data:`DATABASE_SCHEMA_URL`, else :data:`LEGACY_SCHEMA_URL`.

Spans are started with the caller's context as parent and are never made current, so spans
of a fan-out (which overlap) are siblings, not nested in one another. pymc is not patched:
a client without the hook makes no span and pays nothing. Needs ``opentelemetry-api``
(``pip install 'pymc-memcached[opentelemetry]'``); an SDK (or none) is the application's
choice.
"""

from __future__ import annotations

import os
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

__all__ = [
    "DATABASE_SCHEMA_URL",
    "LEGACY_SCHEMA_URL",
    "OPT_IN",
    "PymcInstrumentor",
    "semconv_mode",
    "statement",
]

Attributes = Dict[str, Union[str, int]]

#: The environment variable that opts in to the stable database conventions.
OPT_IN = "OTEL_SEMCONV_STABILITY_OPT_IN"
#: The tracer's schema URL with the old attributes (the official instrumentations' too).
LEGACY_SCHEMA_URL = "https://opentelemetry.io/schemas/1.11.0"
#: The tracer's schema URL when the stable database attributes are emitted.
DATABASE_SCHEMA_URL = "https://opentelemetry.io/schemas/1.25.0"


def semconv_mode(opt_in: Optional[str]) -> str:
    """What the value of ``OTEL_SEMCONV_STABILITY_OPT_IN`` asks of database spans:
    ``"database/dup"`` (old and stable attributes; it wins when both are listed),
    ``"database"`` (stable only) or ``"default"`` (old only). The value is a
    comma-separated list; other signals' entries (``http``) are ignored."""
    listed = {entry.strip() for entry in (opt_in or "").split(",")}
    if "database/dup" in listed:
        return "database/dup"
    if "database" in listed:
        return "database"
    return "default"


def _key_text(key: Any) -> str:
    if type(key) is tuple and len(key) == 2:  # a HashClient (server_key, key)
        key = key[1]
    if isinstance(key, bytes):
        return key.decode("utf-8", "replace")
    return str(key)


def statement(command: str, keys: Tuple[Any, ...]) -> str:
    """``db.statement``: ``"command key1 key2 ..."`` (bytes keys decoded as UTF-8), or the
    command alone when it has no keys. ``stats`` is given its arguments as keys, and shows
    the first one (``stats slabs``), as pymemcache's instrumentation does."""
    if not keys:
        return command
    if command == "stats":
        keys = keys[:1]
    return command + " " + " ".join(map(_key_text, keys))


def _peer(server: ServerSpec, old: bool, new: bool) -> Attributes:
    attributes: Attributes = {}
    if isinstance(server, str):  # a UNIX socket path
        if old:
            attributes.update(
                {"db.system": "memcached", "net.peer.name": server, "net.transport": "other"}
            )
        if new:
            attributes.update(
                {
                    "db.system.name": "memcached",
                    "server.address": server,
                    "network.transport": "pipe",
                }
            )
        return attributes
    host, port = server
    if old:
        attributes.update(
            {
                "db.system": "memcached",
                "net.peer.name": host,
                "net.peer.port": port,
                "net.transport": "ip_tcp",
            }
        )
    if new:
        attributes.update(
            {
                "db.system.name": "memcached",
                "server.address": host,
                "server.port": port,
                "network.transport": "tcp",
            }
        )
    return attributes


class PymcInstrumentor:
    """Makes the ``on_command`` hook that turns pymc's commands into spans.

    ``tracer_provider``: the provider to take the tracer from (default: the global one,
    as set by ``opentelemetry.trace.set_tracer_provider``, also when it is set later).
    """

    def __init__(self, tracer_provider: Optional[TracerProvider] = None) -> None:
        #: ``"default"``, ``"database"`` or ``"database/dup"``: see :func:`semconv_mode`.
        self.semconv_mode = mode = semconv_mode(os.environ.get(OPT_IN))
        self._old = mode != "database"
        self._new = mode != "default"
        schema_url = LEGACY_SCHEMA_URL if mode == "default" else DATABASE_SCHEMA_URL
        self.tracer = get_tracer(__name__, pymc.__version__, tracer_provider, schema_url)

    def hook(self) -> CommandHook:
        """The callable to pass as a client's ``on_command=`` option."""
        return self.on_command

    def on_command(self, command: str, keys: Tuple[Any, ...], server: ServerSpec) -> CommandEnd:
        """Start the span of one command on one node; return what ends it."""
        attributes = _peer(server, self._old, self._new)
        text = statement(command, keys)
        if self._old:
            attributes["db.statement"] = text
        if self._new:
            attributes["db.query.text"] = text
        span = self.tracer.start_span(command, kind=SpanKind.CLIENT, attributes=attributes)

        def end(error: Optional[BaseException]) -> None:
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            span.end()

        return end

    __call__ = on_command
