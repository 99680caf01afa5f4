"""The command set, written once over the transport's ``execute`` (text, meta, leases and
read-through), and the ``on_command`` hook. :class:`pymc.client.Client` composes these
mixins with the blocking transport; the asyncio transport will compose them too."""

from .hook import COMMANDS, begin_command, end_command, observe
from .leases import LEASE_TEMPLATES, LeaseCommands, read_through
from .meta import MetaCommands
from .text import TextCommands

__all__ = [
    "COMMANDS",
    "LEASE_TEMPLATES",
    "LeaseCommands",
    "MetaCommands",
    "TextCommands",
    "begin_command",
    "end_command",
    "observe",
    "read_through",
]
