"""memcached's meta commands, sans I/O: every public name of :mod:`.metarequests` (the
requests and :class:`MetaResult`) and :mod:`.metareplies` (the replies and their readers).
"""

from .metareplies import (
    OPAQUE_MASK,
    ExpectMeta,
    ExpectMetaEach,
    ExpectMetaQuiet,
    encode_quiet_gets,
)
from .metarequests import (
    LONG_KEY_TAG,
    MAX_OPAQUE_LENGTH,
    META_STATUSES,
    RESERVED_KEY_START,
    MetaResult,
    encode_lease_get,
    encode_meta_arithmetic,
    encode_meta_delete,
    encode_meta_get,
    encode_meta_noop,
    encode_meta_set,
    flags_vivify,
    lease_get_template,
    lease_key,
    meta_key,
)

__all__ = [
    "LONG_KEY_TAG",
    "MAX_OPAQUE_LENGTH",
    "META_STATUSES",
    "OPAQUE_MASK",
    "RESERVED_KEY_START",
    "ExpectMeta",
    "ExpectMetaEach",
    "ExpectMetaQuiet",
    "MetaResult",
    "encode_lease_get",
    "encode_meta_arithmetic",
    "encode_meta_delete",
    "encode_meta_get",
    "encode_meta_noop",
    "encode_meta_set",
    "encode_quiet_gets",
    "flags_vivify",
    "lease_get_template",
    "lease_key",
    "meta_key",
]
