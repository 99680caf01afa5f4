"""What replies become: per-key results of a pipeline, retrieved items decoded into the
caller's values (one node's or many nodes' merged), and ``stats`` typed as pymemcache
types them. Pure functions, no I/O: every client (and the cluster's fan-out) decodes here.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple, TypeVar

from ..exceptions import MemcacheError
from ..serde import DefaultSerde, Serde
from . import SPEEDUPS, ErrorReply, Reply, Rule

__all__ = [
    "DecodeOptions",
    "Item",
    "decode_parts",
    "decode_values",
    "merge_values",
    "merge_values_py",
    "per_key_results",
    "typed_stats",
]

Item = Tuple[int, bytes, Optional[bytes]]  # flags, data, cas of one retrieved value
A = TypeVar("A")


class DecodeOptions(Protocol):
    """What decoding needs of a client's options (:class:`pymc.client.ClientOptions`)."""

    @property
    def serde(self) -> Serde: ...

    @property
    def ignore_exc(self) -> bool: ...


def per_key_results(
    keys: Sequence[A], replies: Sequence[Reply], rule: Rule, where: str = ""
) -> Tuple[List[Tuple[A, Any]], Optional[MemcacheError]]:
    """``([(key, result)], error)`` for the replies of a pipeline of one command per key.
    A key whose reply was an error reply gets False, and ``error`` is the exception for the
    first of them (naming up to five keys), else None: the caller raises it, or (with
    ``ignore_exc``) does not, once every reply was read and the others took effect."""
    out: List[Tuple[A, Any]] = []
    errors: List[Tuple[A, ErrorReply]] = []
    result = rule.result
    for key, reply in zip(keys, replies):
        if type(reply) is ErrorReply:
            errors.append((key, reply))
            out.append((key, False))
        else:
            out.append((key, result(reply)))
    if not errors:
        return out, None
    names = ", ".join(repr(k) for k, _ in errors[:5])
    return out, errors[0][1].exception(f"{rule.command} of {len(errors)} key(s){where}: {names}")


def decode_values(
    found: Mapping[bytes, Item],
    wanted: Mapping[bytes, Any],
    options: DecodeOptions,
    with_cas: bool,
) -> Dict[Any, Any]:
    """Turn retrieved items into the caller's values: ``{key: value}``, or ``{key: (value,
    cas)}`` with ``with_cas``. ``wanted`` maps each raw key to the caller's key (a
    ``(server_key, key)`` tuple is deserialized as ``key``). With ``ignore_exc`` a value
    the serde cannot decode is a miss; without, its error is raised. Every client decodes
    through here."""
    serde = options.serde
    if not with_cas and type(serde) is DefaultSerde:  # the default serde returns the bytes
        return {wanted[raw]: item[1] for raw, item in found.items()}
    deserialize = serde.deserialize
    out: Dict[Any, Any] = {}
    for raw, (flags, data, cas) in found.items():
        key = wanted[raw]
        try:
            value = deserialize(key[1] if type(key) is tuple else key, data, flags)
        except Exception:
            if options.ignore_exc:
                continue
            raise
        out[key] = (value, cas) if with_cas else value
    return out


def merge_values_py(
    parts: Sequence[Mapping[bytes, Item]], wanted: Mapping[bytes, Any]
) -> Dict[Any, Any]:
    """``{wanted[raw]: data}`` over the items of every part (each node's), in order: the
    values as the default serde returns them (the bytes). The reference of the compiled
    ``merge_values`` (pymc/speedups.c)."""
    out: Dict[Any, Any] = {}
    for part in parts:
        for raw, item in part.items():
            out[wanted[raw]] = item[1]
    return out


merge_values: Callable[[Any, Any], Dict[Any, Any]] = merge_values_py
if SPEEDUPS:
    from . import speedups

    if hasattr(speedups, "merge_values"):  # (else a build older than this file)
        merge_values = speedups.merge_values


def decode_parts(
    parts: List[Dict[bytes, Item]],
    wanted: Mapping[bytes, Any],
    options: DecodeOptions,
    with_cas: bool,
) -> Dict[Any, Any]:
    """:func:`decode_values` of the items of many requests (a cluster fan-out's nodes),
    merged in order: ``wanted`` maps every raw key of them all to the caller's key."""
    if not with_cas and type(options.serde) is DefaultSerde and type(wanted) is dict:
        return merge_values(parts, wanted)  # (the default serde returns the bytes)
    if len(parts) == 1:
        items = parts[0]
    else:
        items = {}
        for part in parts:
            items.update(part)
    return decode_values(items, wanted, options, with_cas)


# How pymemcache types the values of ``stats``: int unless listed here; a value that does
# not convert is left as bytes.
def _seconds(value: bytes) -> float:
    return float(value.replace(b":", b"."))


def _flag(value: bytes) -> bool:
    return int(value) != 0


def _octal(value: bytes) -> int:
    return int(value, 8)


_STAT_TYPES: Dict[bytes, Callable[[bytes], Any]] = {
    b"version": bytes,
    b"rusage_user": _seconds,
    b"rusage_system": _seconds,
    b"hash_is_expanding": _flag,
    b"slab_reassign_running": _flag,
    b"inter": bytes,
    b"growth_factor": float,
    b"stat_key_prefix": bytes,
    b"umask": _octal,
    b"detail_enabled": _flag,
    b"cas_enabled": _flag,
    b"auth_enabled_sasl": lambda v: v == b"yes",
    b"maxconns_fast": _flag,
    b"slab_reassign": _flag,
    b"slab_automove": _flag,
}


def typed_stats(raw: Dict[bytes, bytes]) -> Dict[bytes, Any]:
    out: Dict[bytes, Any] = {}
    for name, value in raw.items():
        try:
            out[name] = _STAT_TYPES.get(name, int)(value)
        except ValueError:
            out[name] = value
    return out
