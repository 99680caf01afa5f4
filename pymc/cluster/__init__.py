"""The cluster: keys spread over many memcached servers (`HashClient`).

The package holds the layers of a cluster client, each in its own module:

* :mod:`.rendezvous`, :mod:`.ketama`, :mod:`.locators`: the placement rules (which node holds
  a key), pure computation; :mod:`.hashing` re-exports them (and ``pymc.hashing`` that);
* :mod:`.nodeset`: the immutable node-set snapshot and the placement of keys in it;
* :mod:`.health`: failure counts, ejection, revival, the probe of dead nodes;
* :mod:`.fanout`: the executor of one plan per node over many connections at once;
* :mod:`.many`: the many-key commands (get_many, set_many, the meta pipelines...);
* :mod:`.keyed`: the keyed dispatch (one key, its node's own Client method);
* :mod:`.client`: :class:`HashClient`, the composition of them all.

Every name this module held before the split stays importable from it.
"""

from __future__ import annotations

from ..client import (
    Client as Client,
)
from ..client import (
    ClientOptions as ClientOptions,
)
from ..client import (
    CommandEnd as CommandEnd,
)
from ..client import (
    Item as Item,
)
from ..client import (
    ServerSpec as ServerSpec,
)
from ..client import (
    begin_command as begin_command,
)
from ..client import (
    command_deadline as command_deadline,
)
from ..client import (
    decode_parts as decode_parts,
)
from ..client import (
    decode_values as decode_values,
)
from ..client import (
    end_command as end_command,
)
from ..client import (
    meta_batches as meta_batches,
)
from ..client import (
    normalize_server_spec as normalize_server_spec,
)
from ..client import (
    per_key_results as per_key_results,
)
from ..client import (
    quiet_connections as quiet_connections,
)
from ..client import (
    quiet_deletes as quiet_deletes,
)
from ..client import (
    quiet_gets as quiet_gets,
)
from ..client import (
    read_through as read_through,
)
from ..client import (
    readiness_poll as readiness_poll,
)
from ..client import (
    refused_by_close as refused_by_close,
)
from ..client import (
    request_chunks as request_chunks,
)
from ..client import (
    resolve_noreply as resolve_noreply,
)
from ..client import (
    server_name as server_name,
)
from ..client import (
    warn_if_config_endpoint as warn_if_config_endpoint,
)
from ..exceptions import (
    AllNodesDownError as AllNodesDownError,
)
from ..exceptions import (
    MemcacheError as MemcacheError,
)
from ..exceptions import (
    MemcacheIllegalInputError as MemcacheIllegalInputError,
)
from ..exceptions import (
    MemcacheNetworkError as MemcacheNetworkError,
)
from ..exceptions import (
    MemcacheProtocolError as MemcacheProtocolError,
)
from ..exceptions import (
    MemcacheServerRefusedError as MemcacheServerRefusedError,
)
from ..exceptions import (
    MemcacheTimeoutError as MemcacheTimeoutError,
)
from ..exceptions import (
    MemcacheUnsupportedCommandError as MemcacheUnsupportedCommandError,
)
from ..exceptions import (
    NodeRestingError as NodeRestingError,
)
from ..exceptions import (
    network_error as network_error,
)
from ..pool import (
    DEFAULT_POOL_TIMEOUT as DEFAULT_POOL_TIMEOUT,
)
from ..pool import (
    Lease as Lease,
)
from ..pool import (
    PooledClient as PooledClient,
)
from ..protocol import (
    NEED_DATA as NEED_DATA,
)
from ..protocol import (
    RULES as RULES,
)
from ..protocol import (
    SPEEDUPS as SPEEDUPS,
)
from ..protocol import (
    ErrorReply as ErrorReply,
)
from ..protocol import (
    Expect as Expect,
)
from ..protocol import (
    ExpectReplies as ExpectReplies,
)
from ..protocol import (
    ExpectValues as ExpectValues,
)
from ..protocol import (
    Rule as Rule,
)
from ..protocol import (
    encode_delete as encode_delete,
)
from ..protocol import (
    encode_retrieval as encode_retrieval,
)
from ..protocol import (
    encode_storage as encode_storage,
)
from ..protocol import (
    encode_touch as encode_touch,
)
from ..protocol import (
    validate_key as validate_key,
)
from ..protocol import (
    validate_keys as validate_keys,
)
from ..protocol.meta import (
    ExpectMetaQuiet as ExpectMetaQuiet,
)
from ..protocol.meta import (
    MetaResult as MetaResult,
)
from ..protocol.meta import (
    encode_meta_noop as encode_meta_noop,
)
from ..protocol.meta import (
    encode_meta_set as encode_meta_set,
)
from ..protocol.meta import (
    meta_key as meta_key,
)
from ..retry import (
    RetryPolicy as RetryPolicy,
)
from ..retry import (
    call_with_retry as call_with_retry,
)
from ..serde import (
    coerce_to_bytes as coerce_to_bytes,
)
from .client import (
    EventHook as EventHook,
)
from .client import (
    HashClient as HashClient,
)
from .client import (
    logger as logger,
)
from .fanout import (
    FANOUT_MAX_COMMANDS as FANOUT_MAX_COMMANDS,
)
from .fanout import (
    Observe as Observe,
)
from .fanout import (
    Plan as Plan,
)
from .fanout import (
    Reading as Reading,
)
from .health import (
    PROBE_TIMEOUT as PROBE_TIMEOUT,
)
from .keyed import (
    P as P,
)
from .keyed import (
    R as R,
)
from .locators import (
    build_locator as build_locator,
)
from .nodeset import (
    PLACEMENT_CACHE_SIZE as PLACEMENT_CACHE_SIZE,
)
from .nodeset import (
    AnyKey as AnyKey,
)
from .nodeset import (
    Key as Key,
)
from .nodeset import (
    NodeSet as NodeSet,
)
from .nodeset import (
    place_keys as place_keys,
)
from .nodeset import (
    place_keys_py as place_keys_py,
)
from .rendezvous import (
    RendezvousHash as RendezvousHash,
)

__all__ = ["AllNodesDownError", "HashClient", "NodeSet"]

#: A node's part of a fan-out (the name before the fan-out took plans).
Part = Plan
