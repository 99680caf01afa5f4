"""memcached's meta commands, the requests (sans I/O): :class:`MetaResult`, meta keys
(base64 or digest for keys no text key can be), and the encoders of ``mg``, ``ms``, ``md``,
``ma``, ``mn`` (each option one documented flag of memcached's ``doc/protocol.txt``).
"""

from __future__ import annotations

import base64 as _b64
import functools
import hashlib
import re
from typing import Final, List, NamedTuple, Optional, Tuple, Union

from ..exceptions import MemcacheIllegalInputError
from .keys import (
    MAX_KEY_LENGTH,
    key_bytes,
    validate_key,
)

#: Marks a key sent as its digest (a key too long for memcached even in base64).
LONG_KEY_TAG: Final = b"pymc:blake2b:"
#: The start of the item names pymc keeps for itself (no caller's key is sent as one).
RESERVED_KEY_START: Final = b"\x00pymc:"
#: memcached refuses an ``O`` token of 32 bytes or more (the flag letter counts).
MAX_OPAQUE_LENGTH: Final = 31
#: Every ``MetaResult.status``.
META_STATUSES: Final = (
    "hit",
    "miss",
    "stored",
    "deleted",
    "not_stored",
    "exists",
    "not_found",
    "noop",
)

UINT32: Final = 1 << 32
UINT64: Final = 1 << 64
_TTL_LOW: Final = -(1 << 31)
_TTL_HIGH: Final = 1 << 31
BAD_BYTE = re.compile(rb"[\x00-\x20\x7f]").search
_BAD_FLAGS = re.compile(r"[\x00-\x1f\x7f]").search
BASE64 = re.compile(rb"[A-Za-z0-9+/]+={0,2}").fullmatch
TTL = re.compile(rb"-?[0-9]{1,11}").fullmatch


# --------------------------------------------------------------------------- results


class MetaResult(NamedTuple):
    """One meta reply (immutable). ``status`` is one of :data:`META_STATUSES`: ``hit``
    (``VA``/``HD`` to ``mg`` or ``ma``), ``miss`` (``EN``, or memcached's vivify placeholder:
    see :class:`ExpectMeta`), ``stored`` (``HD`` to ``ms``),
    ``deleted`` (``HD`` to ``md``), ``not_stored`` (``NS``), ``exists`` (``EX``),
    ``not_found`` (``NF``), ``noop`` (``MN``). The other fields are the reply's flags (None
    when absent). A named tuple, because it is made on every meta reply and a tuple is the
    cheapest immutable object Python builds; ``_replace`` makes a changed copy.
    """

    status: str
    value: Optional[bytes] = None  # the data block of a VA reply
    cas: Optional[int] = None  # c
    ttl: Optional[int] = None  # t (-1: no expiry)
    client_flags: Optional[int] = None  # f
    size: Optional[int] = None  # s
    hit_before: Optional[bool] = None  # h
    last_access: Optional[int] = None  # l (seconds)
    win: bool = False  # W: this client won the right to recache
    stale: bool = False  # X
    won_elsewhere: bool = False  # Z: another client already won
    opaque: Optional[bytes] = None  # O
    key: Optional[bytes] = None  # k, decoded from base64 when the reply carried b
    number: Optional[int] = None  # ma's value (VA), as an int

    def with_value(self, value: object) -> MetaResult:
        """This result with another ``value`` (the deserialized one, say)."""
        return self._replace(value=value)  # type: ignore[arg-type]

    @property
    def hit(self) -> bool:
        return self.status == "hit"

    @property
    def miss(self) -> bool:
        return self.status == "miss"

    @property
    def stored(self) -> bool:
        return self.status == "stored"

    @property
    def deleted(self) -> bool:
        return self.status == "deleted"

    @property
    def ok(self) -> bool:
        """The command did what it was asked: ``hit``, ``stored``, ``deleted`` or ``noop``."""
        return self.status in ("hit", "stored", "deleted", "noop")


# --------------------------------------------------------------------------- keys


def meta_key(
    key: Union[str, bytes], prefix: bytes = b"", allow_unicode: bool = False
) -> Tuple[bytes, bool]:
    """``(wire key, base64?)`` for ``prefix + key``.

    A key the text commands send as it is (see :func:`~pymc.protocol.validate_key`, with
    ``allow_unicode``: a non-ASCII ``str`` as UTF-8) goes as it is here too, so that the
    text and the meta commands address one item for every key both take. Any other key
    (bytes holding a space or control character, a key longer than 250 bytes) goes
    base64-encoded, to be sent with the ``b`` flag. memcached takes a key token of at most
    250 bytes, base64 included (186 bytes before encoding): a longer one is sent as
    :data:`LONG_KEY_TAG` plus its 32-byte BLAKE2b digest, base64-encoded, and so is a key
    that starts with :data:`RESERVED_KEY_START` (pymc's own items, such as
    :func:`lease_key`, live there). Empty or non-str/bytes keys raise
    :class:`MemcacheIllegalInputError`.
    """
    if not isinstance(key, (str, bytes)):
        raise MemcacheIllegalInputError(f"a key must be str or bytes, not {type(key).__name__}")
    if not isinstance(prefix, bytes):
        raise MemcacheIllegalInputError(f"a key prefix must be bytes, not {type(prefix).__name__}")
    try:
        return validate_key(key, prefix, allow_unicode), False
    except MemcacheIllegalInputError:
        pass
    raw = key_bytes(key, allow_unicode)
    if not raw:
        raise MemcacheIllegalInputError("a key must not be empty")
    full = prefix + raw
    wire = _b64.b64encode(full)
    if len(wire) > MAX_KEY_LENGTH or full.startswith(RESERVED_KEY_START):
        # Too long even in base64 (over 186 bytes): the key's BLAKE2b digest stands for it,
        # so no key is refused. Only pymc finds such an item again (by the same digest).
        wire = _b64.b64encode(LONG_KEY_TAG + hashlib.blake2b(full, digest_size=32).digest())
    return wire, True


def lease_key(key: Union[str, bytes], prefix: bytes = b"", allow_unicode: bool = True) -> bytes:
    """The base64 wire key (sent with ``b``) of the lease :meth:`pymc.Client.fetch` takes
    on a missing ``prefix + key``: :data:`RESERVED_KEY_START`, ``lease:``, then the
    32-byte BLAKE2b digest of the key's item name (so every spelling of one key has one
    lease). No key a caller gives can name it: :func:`meta_key` sends any key starting
    with :data:`RESERVED_KEY_START` as a digest, and the text commands take no key with a
    control character."""
    wire, b64 = meta_key(key, prefix, allow_unicode)
    name = _b64.b64decode(wire) if b64 else wire
    return _b64.b64encode(
        RESERVED_KEY_START + b"lease:" + hashlib.blake2b(name, digest_size=32).digest()
    )


# --------------------------------------------------------------------------- encoders


def wire_key(key: bytes, base64: bool) -> bytes:
    if type(key) is not bytes:
        raise MemcacheIllegalInputError(
            f"a meta key must be bytes (see meta_key), not {type(key).__name__}"
        )
    if not 0 < len(key) <= MAX_KEY_LENGTH or BAD_BYTE(key) is not None:
        raise MemcacheIllegalInputError(f"illegal meta key {key[:60]!r} (see meta_key)")
    if base64 and (len(key) % 4 or BASE64(key) is None):
        raise MemcacheIllegalInputError(f"a base64 key that is not base64: {key[:60]!r}")
    return key


def _uint(value: object, name: str, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise MemcacheIllegalInputError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value < high:
        raise MemcacheIllegalInputError(f"{name} must be in [0, {high}), got {value}")
    return int(value)


def _ttl(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise MemcacheIllegalInputError(f"{name} must be an int, not {type(value).__name__}")
    if not _TTL_LOW <= value < _TTL_HIGH:
        raise MemcacheIllegalInputError(f"{name} must be in [{_TTL_LOW}, {_TTL_HIGH}), got {value}")
    return int(value)


def _opaque(opaque: object) -> bytes:
    if (
        type(opaque) is not bytes
        or not 0 < len(opaque) <= MAX_OPAQUE_LENGTH
        or BAD_BYTE(opaque) is not None
    ):
        raise MemcacheIllegalInputError(
            f"an opaque must be 1 to {MAX_OPAQUE_LENGTH} bytes with no space or control "
            f"character: {opaque!r}"
        )
    return b"O" + opaque


#: Flags a caller may not add (``flags=``), by their first letter: each changes what the
#: server sends back in a way the command's reader is not told of. ``q`` (quiet) leaves
#: no reply at all on success (``ms``, ``md``, ``ma``) or on a miss (``mg``), so one
#: command would wait out its timeout; ``O`` (opaque) and ``b`` (base64 key) are pymc's
#: own: it matches each reply by its opaque, and decides when a key travels base64.
_CALLER_REFUSED: Final = {
    "q": "q (quiet: no reply to wait for; the *_many methods pipeline quietly)",
    "O": "O (opaque: pymc sets its own to match replies)",
    "b": "b (base64 key: pymc encodes keys that need it)",
}


def _extra(flags: object) -> List[bytes]:
    if not isinstance(flags, str):
        raise MemcacheIllegalInputError(f"flags must be a str, not {type(flags).__name__}")
    if not flags:
        return []
    if not flags.isascii() or _BAD_FLAGS(flags) is not None:
        raise MemcacheIllegalInputError(f"flags must be ASCII with no CR, LF or control: {flags!r}")
    for token in flags.split():  # (memcached reads each token's first letter as its flag)
        why = _CALLER_REFUSED.get(token[0])
        if why is not None:
            raise MemcacheIllegalInputError(
                f"the meta flag {why} is not allowed in flags={flags!r}"
            )
    return [flags.encode("ascii")]


def flags_vivify(flags: str) -> bool:
    """Whether caller ``flags`` of an ``mg`` carry ``N<ttl>`` (vivify on miss), so that its
    reader knows a ``W`` on an empty item is the placeholder just made (a miss), as with
    ``vivify_on_miss``."""
    return "N" in flags and any(token[:1] == "N" for token in flags.split())


def _line(command: bytes, key: bytes, parts: List[bytes]) -> bytes:
    return b" ".join([command, key, *parts]) + b"\r\n"


def encode_meta_get(
    key: bytes,
    *,
    base64: bool = False,
    value: bool = True,
    return_cas: bool = False,
    return_ttl: bool = False,
    return_client_flags: bool = False,
    return_size: bool = False,
    return_hit: bool = False,
    return_last_access: bool = False,
    return_key: bool = False,
    opaque: Optional[bytes] = None,
    touch_ttl: Optional[int] = None,
    vivify_on_miss: Optional[int] = None,
    recache_ttl: Optional[int] = None,
    no_bump: bool = False,
    quiet: bool = False,
    flags: str = "",
) -> bytes:
    """``mg <key> <flags>*``. Flags, in this order: ``b`` (base64), ``v`` (value), ``c``
    (return_cas), ``f`` (return_client_flags), ``h`` (return_hit), ``k`` (return_key),
    ``l`` (return_last_access), ``s`` (return_size), ``t`` (return_ttl), ``O`` (opaque),
    ``q`` (quiet: no ``EN`` on a miss), ``N`` (vivify_on_miss: its TTL), ``R``
    (recache_ttl), ``T`` (touch_ttl), ``u`` (no_bump), then ``flags`` verbatim."""
    before, after = _mg_flags(
        base64,
        value,
        return_cas,
        return_client_flags,
        return_hit,
        return_key,
        return_last_access,
        return_size,
        return_ttl,
        quiet,
        vivify_on_miss,
        recache_ttl,
        touch_ttl,
        no_bump,
        flags,
    )
    middle = b" " + _opaque(opaque) if opaque is not None else b""
    return b"mg " + wire_key(key, base64) + before + middle + after + b"\r\n"


# typed: an untyped cache takes 30.0 for 30 and True for 1, so an argument the checks refuse
# would pass once some caller had asked with its int twin.
@functools.lru_cache(maxsize=512, typed=True)
def _mg_flags(
    base64: bool,
    value: bool,
    return_cas: bool,
    return_client_flags: bool,
    return_hit: bool,
    return_key: bool,
    return_last_access: bool,
    return_size: bool,
    return_ttl: bool,
    quiet: bool,
    vivify_on_miss: Optional[int],
    recache_ttl: Optional[int],
    touch_ttl: Optional[int],
    no_bump: bool,
    flags: str,
) -> Tuple[bytes, bytes]:
    """The flags of an ``mg`` before and after its opaque, each with its leading space
    (checked and built once for each combination: a read-through asks the same way every
    time)."""
    before = [b"b"] if base64 else []
    for wanted, flag in (
        (value, b"v"),
        (return_cas, b"c"),
        (return_client_flags, b"f"),
        (return_hit, b"h"),
        (return_key, b"k"),
        (return_last_access, b"l"),
        (return_size, b"s"),
        (return_ttl, b"t"),
    ):
        if wanted:
            before.append(flag)
    after = []
    if quiet:
        after.append(b"q")
    if vivify_on_miss is not None:
        after.append(b"N%d" % _ttl(vivify_on_miss, "vivify_on_miss"))
    if recache_ttl is not None:
        after.append(b"R%d" % _ttl(recache_ttl, "recache_ttl"))
    if touch_ttl is not None:
        after.append(b"T%d" % _ttl(touch_ttl, "touch_ttl"))
    if no_bump:
        after.append(b"u")
    after += _extra(flags)
    return b"".join(b" " + flag for flag in before), b"".join(b" " + flag for flag in after)


def encode_lease_get(
    key: bytes,
    opaque: bytes,
    lease_ttl: int,
    recache_ttl: Optional[int] = None,
    *,
    base64: bool = False,
) -> bytes:
    """The probe of a read-through: the bytes of :func:`encode_meta_get` with ``value``,
    ``return_cas``, ``return_client_flags``, ``opaque`` and ``recache_ttl``, built with
    less work (it runs on every ``fetch``). It makes nothing on a miss (no vivify: the
    lease on a missing key is an item of its own, :func:`lease_key`).

    ``lease_ttl`` (checked here, used by the lease a miss leads to) must be at least 1:
    memcached keeps a ttl of 0 forever (a lease whose holder dies before storing would
    never end) and a negative one not at all (every caller would win)."""
    head, tail = lease_get_template(key, lease_ttl, recache_ttl, base64=base64)
    return head + _opaque(opaque)[1:] + tail


def lease_get_template(
    key: bytes, lease_ttl: int, recache_ttl: Optional[int] = None, *, base64: bool = False
) -> Tuple[bytes, bytes]:
    """``(head, tail)``: the request of :func:`encode_lease_get` is ``head + opaque + tail``
    for any valid opaque (1 to 31 bytes, no space or control character), so that a client
    probing the same key again and again builds and checks the rest once."""
    if type(lease_ttl) is not int or not 1 <= lease_ttl < _TTL_HIGH:
        raise MemcacheIllegalInputError(
            f"lease_ttl must be an int of at least 1 second, got {lease_ttl!r}"
        )
    before, after = _lease_flags(base64, recache_ttl)
    return b"mg " + wire_key(key, base64) + before + b" O", after + b"\r\n"


@functools.lru_cache(maxsize=256, typed=True)
def _lease_flags(base64: bool, recache_ttl: Optional[int]) -> Tuple[bytes, bytes]:
    return _mg_flags(
        base64,
        True,
        True,
        True,
        False,
        False,
        False,
        False,
        False,
        False,
        None,
        recache_ttl,
        None,
        False,
        "",
    )


_MODES: Final = {"set": b"S", "add": b"E", "replace": b"R", "append": b"A", "prepend": b"P"}


def encode_meta_set(
    key: bytes,
    data: bytes,
    *,
    base64: bool = False,
    client_flags: int = 0,
    ttl: int = 0,
    mode: Optional[str] = None,
    compare_cas: Optional[int] = None,
    invalidate: bool = False,
    vivify_on_miss: Optional[int] = None,
    return_cas: bool = False,
    return_key: bool = False,
    opaque: Optional[bytes] = None,
    quiet: bool = False,
    flags: str = "",
) -> bytes:
    """``ms <key> <datalen> <flags>*`` and the data block. Flags, in this order: ``b``,
    ``c`` (return_cas), ``k`` (return_key), ``F`` (client_flags, left out when 0), ``T``
    (ttl, left out when 0), ``M`` (mode: ``E`` add, ``R`` replace, ``A`` append, ``P``
    prepend; ``set`` is the default and sends nothing), ``C`` (compare_cas), ``I``
    (invalidate, only with compare_cas), ``N`` (vivify_on_miss, only in append or prepend
    mode; memcached 1.6.20+), ``O``, ``q`` (quiet: no ``HD``), then ``flags`` verbatim."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MemcacheIllegalInputError(f"data must be bytes, not {type(data).__name__}")
    data = bytes(data)
    parts = [b"%d" % len(data)]
    if base64:
        parts.append(b"b")
    if return_cas:
        parts.append(b"c")
    if return_key:
        parts.append(b"k")
    if _uint(client_flags, "client_flags", UINT32):
        parts.append(b"F%d" % client_flags)
    if _ttl(ttl, "ttl"):
        parts.append(b"T%d" % ttl)
    if mode is not None:
        letter = _MODES.get(mode) if isinstance(mode, str) else None
        if letter is None:
            raise MemcacheIllegalInputError(f"mode must be one of {sorted(_MODES)}, not {mode!r}")
        if mode != "set":
            parts.append(b"M" + letter)
    if compare_cas is not None:
        parts.append(b"C%d" % _uint(compare_cas, "compare_cas", UINT64))
    if invalidate:
        if compare_cas is None:
            raise MemcacheIllegalInputError("invalidate needs compare_cas")
        parts.append(b"I")
    if vivify_on_miss is not None:
        if mode not in ("append", "prepend"):
            raise MemcacheIllegalInputError("vivify_on_miss needs mode='append' or 'prepend'")
        parts.append(b"N%d" % _ttl(vivify_on_miss, "vivify_on_miss"))
    if opaque is not None:
        parts.append(_opaque(opaque))
    if quiet:
        parts.append(b"q")
    parts += _extra(flags)
    return _line(b"ms", wire_key(key, base64), parts) + data + b"\r\n"


def encode_meta_delete(
    key: bytes,
    *,
    base64: bool = False,
    compare_cas: Optional[int] = None,
    invalidate: bool = False,
    ttl: Optional[int] = None,
    return_key: bool = False,
    opaque: Optional[bytes] = None,
    quiet: bool = False,
    flags: str = "",
) -> bytes:
    """``md <key> <flags>*``. Flags, in this order: ``b``, ``k`` (return_key), ``C``
    (compare_cas), ``I`` (invalidate: mark stale instead of removing), ``T`` (ttl, only
    with invalidate), ``O``, ``q`` (quiet: no ``HD``), then ``flags`` verbatim."""
    parts = [b"b"] if base64 else []
    if return_key:
        parts.append(b"k")
    if compare_cas is not None:
        parts.append(b"C%d" % _uint(compare_cas, "compare_cas", UINT64))
    if invalidate:
        parts.append(b"I")
    if ttl is not None:
        if not invalidate:
            raise MemcacheIllegalInputError("a delete ttl needs invalidate=True")
        parts.append(b"T%d" % _ttl(ttl, "ttl"))
    if opaque is not None:
        parts.append(_opaque(opaque))
    if quiet:
        parts.append(b"q")
    parts += _extra(flags)
    return _line(b"md", wire_key(key, base64), parts)


def encode_meta_arithmetic(
    key: bytes,
    *,
    base64: bool = False,
    decrement: bool = False,
    delta: int = 1,
    initial: Optional[int] = None,
    vivify_on_miss: Optional[int] = None,
    ttl: Optional[int] = None,
    compare_cas: Optional[int] = None,
    return_value: bool = True,
    return_cas: bool = False,
    return_ttl: bool = False,
    return_key: bool = False,
    opaque: Optional[bytes] = None,
    quiet: bool = False,
    flags: str = "",
) -> bytes:
    """``ma <key> <flags>*``. Flags, in this order: ``b``, ``v`` (return_value), ``c``
    (return_cas), ``k`` (return_key), ``t`` (return_ttl), ``M`` (``MD`` when decrement),
    ``D`` (delta, left out when 1), ``N`` (vivify_on_miss: its TTL), ``J`` (initial, only
    with vivify_on_miss), ``T`` (ttl), ``C`` (compare_cas), ``O``, ``q`` (quiet: no
    ``HD`` nor ``VA``), then ``flags`` verbatim."""
    parts = [b"b"] if base64 else []
    for wanted, flag in (
        (return_value, b"v"),
        (return_cas, b"c"),
        (return_key, b"k"),
        (return_ttl, b"t"),
    ):
        if wanted:
            parts.append(flag)
    if decrement:
        parts.append(b"MD")
    if _uint(delta, "delta", UINT64) != 1:
        parts.append(b"D%d" % delta)
    if vivify_on_miss is not None:
        parts.append(b"N%d" % _ttl(vivify_on_miss, "vivify_on_miss"))
    if initial is not None:
        if vivify_on_miss is None:
            raise MemcacheIllegalInputError("initial needs vivify_on_miss")
        parts.append(b"J%d" % _uint(initial, "initial", UINT64))
    if ttl is not None:
        parts.append(b"T%d" % _ttl(ttl, "ttl"))
    if compare_cas is not None:
        parts.append(b"C%d" % _uint(compare_cas, "compare_cas", UINT64))
    if opaque is not None:
        parts.append(_opaque(opaque))
    if quiet:
        parts.append(b"q")
    parts += _extra(flags)
    return _line(b"ma", wire_key(key, base64), parts)


def encode_meta_noop() -> bytes:
    """``mn``: answered ``MN`` once every request before it has been answered."""
    return b"mn\r\n"
