"""The blocking socket transport: connect (TCP, UNIX, TLS, auth), send and receive by the
command's deadline, the resync marker, the gevent yield, the poll helpers. It executes
plans (:mod:`pymc.protocol.plans`); what a reply means is never decided here."""

from .connection import META_READERS, Connection, Flow
from .io import (
    COMPILED_EXCHANGE,
    DEADLINE_SLACK,
    RECV_SIZE,
    Exchange,
    Sender,
    command_deadline,
    time_left,
)
from .poll import quiet_connections, readiness_poll, refused_by_close

__all__ = [
    "COMPILED_EXCHANGE",
    "DEADLINE_SLACK",
    "META_READERS",
    "RECV_SIZE",
    "Connection",
    "Exchange",
    "Flow",
    "Sender",
    "command_deadline",
    "quiet_connections",
    "readiness_poll",
    "refused_by_close",
    "time_left",
]
