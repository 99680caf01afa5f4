"""Keys, sans I/O: what a key may be, and its bytes on the wire (:func:`validate_key`
refuses every key a server could misread, before a byte is sent).
"""

from __future__ import annotations

import re
from typing import (
    Dict,
    Final,
    Iterable,
    Set,
    Union,
)

from ..exceptions import (
    MemcacheIllegalInputError,
)

Key = Union[str, bytes]

MAX_KEY_LENGTH: Final = 250
#: A reply line longer than this, with no ``\r\n`` in sight, is garbage, not a slow server.
MAX_LINE_LENGTH: Final = 8192
#: The largest data block (``VALUE``, ``CONFIG`` or meta ``VA``) a :class:`Reader` accepts by
#: default: memcached's largest item (``-I 1024m``) is 1 GiB, header included, so no real
#: value is longer. A header announcing more is a protocol error as soon as it is parsed,
#: instead of buffering whatever a broken server or proxy sends until the timeout.
MAX_VALUE_BYTES: Final = 1 << 30
#: A sane ``max_block`` for a :class:`Reader` reading cluster configs: a real one is a few
#: dozen bytes per node, so a block larger than this is an endpoint gone wrong.
MAX_CONFIG_BYTES: Final = 1 << 20
#: The key pre-1.4.14 ElastiCache engines answer a ``get`` of with the cluster config.
LEGACY_CONFIG_KEY: Final = b"AmazonElastiCache:cluster"
UINT32: Final = 1 << 32
UINT64: Final = 1 << 64

# Bytes the server treats as separators or terminators: control characters, space, DEL.
BAD_KEY_BYTE = re.compile(rb"[\x00-\x20\x7f]").search
_CLEAN_PREFIXES: Set[bytes] = set()  # prefixes already seen to hold no bad byte
DIGITS = re.compile(rb"[0-9]{1,20}").fullmatch


# --------------------------------------------------------------------------- keys


def key_bytes(key: Key, allow_unicode: bool = False) -> bytes:
    """``key`` as bytes: a ``str`` as ASCII, or as UTF-8 with ``allow_unicode``; else
    :class:`MemcacheIllegalInputError`. (Only the encoding: :func:`validate_key` checks the
    rest.)"""
    if isinstance(key, str):
        try:
            return key.encode("ascii")
        except UnicodeEncodeError:
            if not allow_unicode:
                raise MemcacheIllegalInputError(
                    f"non-ASCII key {key!r}: pass allow_unicode_keys=True to store it as UTF-8"
                ) from None
            try:
                return key.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise MemcacheIllegalInputError(f"key {key!r} is not valid Unicode") from exc
    if isinstance(key, bytes):
        return key
    raise MemcacheIllegalInputError(f"a key must be str or bytes, not {type(key).__name__}")


def validate_key(key: Key, prefix: bytes = b"", allow_unicode: bool = False) -> bytes:
    """Return ``prefix + key`` as bytes, or raise :class:`MemcacheIllegalInputError`.

    A key is ``str`` (ASCII, or UTF-8 with ``allow_unicode``) or ``bytes``; with its prefix
    it is 1 to 250 bytes long and holds no space, control character or DEL, so it can never
    split into two arguments or smuggle a second command into the request.
    """
    # Fast path: an ASCII str with no control character and no space (isprintable()
    # refuses 0x00-0x1f and 0x7f).
    if (
        type(key) is str
        and key.isascii()
        and key.isprintable()
        and " " not in key
        and (not prefix or prefix in _CLEAN_PREFIXES)
    ):
        raw = prefix + key.encode("ascii") if prefix else key.encode("ascii")
        if 0 < len(raw) <= MAX_KEY_LENGTH:
            return raw
    raw = key_bytes(key, allow_unicode)
    if prefix:
        raw = prefix + raw
    if not raw:
        raise MemcacheIllegalInputError("a key must not be empty")
    if len(raw) > MAX_KEY_LENGTH:
        raise MemcacheIllegalInputError(
            f"key is {len(raw)} bytes long (with its prefix); memcached allows at most "
            f"{MAX_KEY_LENGTH}: {raw[:40]!r}..."
        )
    if BAD_KEY_BYTE(raw) is not None:
        raise MemcacheIllegalInputError(f"key {raw!r} contains whitespace or a control character")
    if prefix and len(_CLEAN_PREFIXES) < 256:
        _CLEAN_PREFIXES.add(prefix)  # it passed as part of raw: no bad byte in it
    return raw


def validate_keys_py(
    keys: Iterable[Key], prefix: bytes = b"", allow_unicode: bool = False
) -> Dict[bytes, Key]:
    """:func:`validate_key` for many keys at once: ``{prefix + key as bytes: key}``
    (the pure-Python :func:`validate_keys`, the reference).

    The common case (ASCII str or bytes keys of legal length) is checked with one scan of
    all the keys together; anything unusual takes the one-by-one path for its error.
    """
    if not isinstance(keys, (list, tuple)):
        keys = list(keys)
    out: Dict[bytes, Key] = {}
    limit = MAX_KEY_LENGTH - len(prefix)
    try:
        for key in keys:
            raw = key.encode("ascii") if type(key) is str else key
            if type(raw) is not bytes or not 0 < len(raw) <= limit:
                raise ValueError
            out[prefix + raw if prefix else raw] = key
        if BAD_KEY_BYTE(b"".join(out)) is None:
            return out
    except (UnicodeEncodeError, ValueError):
        pass
    return {validate_key(key, prefix, allow_unicode): key for key in keys}
