"""Serializers ("serdes") that turn Python values into memcached payloads and back.

A serde is any object with two methods:

* ``serialize(key, value) -> (bytes, flags)``: called before a store command. ``flags`` is
  an integer (0-65535 is safe on every server) saved next to the value by memcached.
* ``deserialize(key, value, flags) -> object``: called on every value read back, with the
  raw bytes and the flags stored with them.

The flag values and the stored bytes are the ones pymemcache 4.0 and python-memcached use, so
pymc, pymemcache and python-memcached clients can share a cache.

Every serde here is stateless once built and may be shared by any number of threads.

Reading a value that cannot be decoded (a broken zlib stream, a non-numeric integer, a
pickle that does not load, text that is not UTF-8) raises
:class:`~pymc.exceptions.MemcacheUnknownError` instead of returning something wrong.

.. warning:: Unpickling can run arbitrary code. Only use :data:`pickle_serde` and
   :data:`compressed_serde` with a memcached that untrusted parties cannot write to.
"""

from __future__ import annotations

import codecs
import pickle
import zlib
from functools import partial
from typing import Any, Callable, Protocol, Tuple, runtime_checkable

from pymc.exceptions import MemcacheIllegalInputError, MemcacheUnknownError

__all__ = [
    "DEFAULT_PICKLE_VERSION",
    "FLAG_BYTES",
    "FLAG_COMPRESSED",
    "FLAG_INTEGER",
    "FLAG_LONG",
    "FLAG_PICKLE",
    "FLAG_TEXT",
    "CompressedSerde",
    "DefaultSerde",
    "DeserializerFunc",
    "LegacyWrappingSerde",
    "PickleSerde",
    "Serde",
    "SerializerFunc",
    "coerce_to_bytes",
    "compressed_serde",
    "default_serde",
    "get_python_memcache_serializer",
    "pickle_serde",
    "python_memcache_deserializer",
    "python_memcache_serializer",
]

# Flag bits, as python-memcached and pymemcache define them.
FLAG_BYTES = 0  #: plain bytes, stored unchanged
FLAG_PICKLE = 1 << 0  #: a pickle
FLAG_INTEGER = 1 << 1  #: an int, stored as ASCII decimal digits
FLAG_LONG = 1 << 2  #: a Python 2 ``long``; read like FLAG_INTEGER, never written
FLAG_COMPRESSED = 1 << 3  #: the payload was compressed after serialization
FLAG_TEXT = 1 << 4  #: a str, stored as UTF-8

#: The pickle protocol used when none is given: the newest this Python knows. Objects with
#: ``__slots__`` and no ``__getstate__`` cannot be pickled with protocols 0 and 1.
DEFAULT_PICKLE_VERSION: int = pickle.HIGHEST_PROTOCOL

SerializerFunc = Callable[[Any, Any], Tuple[bytes, int]]
"""An old-style serializer function: ``(key, value) -> (bytes, flags)``."""

DeserializerFunc = Callable[[Any, bytes, int], Any]
"""An old-style deserializer function: ``(key, value, flags) -> object``."""


@runtime_checkable
class Serde(Protocol):
    """What a Client needs from the ``serde=`` object it is given."""

    def serialize(self, key: Any, value: Any) -> Tuple[bytes, int]:
        """Return the bytes to store for ``value`` and the flags to store with them."""
        ...

    def deserialize(self, key: Any, value: bytes, flags: int) -> Any:
        """Rebuild the value from the stored bytes and flags."""
        ...


# --------------------------------------------------------------------------------------------
# The behaviour of a Client given no serde at all.


def _unsupported_type_error(key: Any, value: Any) -> MemcacheIllegalInputError:
    type_name = type(value).__qualname__
    return MemcacheIllegalInputError(
        f"cannot store a value of type {type_name!r} for key {key!r}: without a serde only "
        f"bytes, str and int values can be stored. Convert the value to bytes yourself, or "
        f"create the client with serde=pymc.serde.pickle_serde to store any picklable value."
    )


def coerce_to_bytes(value: Any, encoding: str = "ascii", key: Any = None) -> bytes:
    """Turn a value into the bytes a Client stores when no serde changes it.

    ``bytes`` pass through; ``bytearray`` and ``memoryview`` are copied into ``bytes``; a
    ``str`` is encoded with ``encoding``; an ``int`` (but not a ``bool``) becomes its decimal
    digits in ASCII, and an int subclass such as an ``IntEnum`` member its ``str()``, as in
    pymemcache (which differs between Python 3.10 and 3.11+). Anything else raises
    :class:`~pymc.exceptions.MemcacheIllegalInputError`, where pymemcache would have stored
    ``str(value)`` (``b"None"``, ``b"True"``, ``b"1.5"``).

    A Client also applies this to whatever a custom serde returns, so an old serializer that
    returns ``str`` keeps working. ``key`` only appears in error messages.
    """
    value_type = type(value)
    if value_type is bytes:
        return value  # type: ignore[no-any-return]
    if isinstance(value, str):
        try:
            return value.encode(encoding)
        except UnicodeEncodeError as exc:
            raise MemcacheIllegalInputError(
                f"cannot store the str value for key {key!r} without a serde: it cannot be "
                f"encoded as {encoding!r} ({exc}). Encode it to bytes yourself, or create the "
                f"client with serde=pymc.serde.pickle_serde."
            ) from exc
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            if value_type is int:
                return b"%d" % value
            # A subclass (IntEnum, IntFlag, ...) is stored as its str(), as pymemcache does:
            # b"1" for an IntEnum member from Python 3.11 on, b"Color.RED" on 3.10.
            return str(value).encode(encoding)
        except UnicodeEncodeError as exc:
            raise MemcacheIllegalInputError(
                f"cannot store the {value_type.__name__} value for key {key!r} without a "
                f"serde: its str() cannot be encoded as {encoding!r} ({exc})."
            ) from exc
        except ValueError as exc:  # more digits than sys.get_int_max_str_digits() allows
            raise MemcacheIllegalInputError(
                f"cannot store the int value for key {key!r} without a serde: {exc}. "
                f"Create the client with serde=pymc.serde.pickle_serde to store it."
            ) from exc
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise _unsupported_type_error(key, value)


class DefaultSerde:
    """What a Client does with values when it is given no serde and no serializer.

    Values are stored with flags 0: bytes unchanged, str encoded with ``encoding`` (pass the
    Client's ``encoding``, ``"ascii"`` by default as in pymemcache), int as decimal ASCII.
    Other types are refused with :class:`~pymc.exceptions.MemcacheIllegalInputError`; use
    :data:`pickle_serde` to store them. Values are read back as the raw bytes, whatever their
    flags.
    """

    __slots__ = ("_encoding",)

    def __init__(self, encoding: str = "ascii") -> None:
        codecs.lookup(encoding)  # an unknown encoding fails here, not at the first set()
        self._encoding = encoding

    @property
    def encoding(self) -> str:
        """The codec str values are encoded with."""
        return self._encoding

    def serialize(self, key: Any, value: Any) -> Tuple[bytes, int]:
        return coerce_to_bytes(value, self._encoding, key), FLAG_BYTES

    def deserialize(self, key: Any, value: bytes, flags: int) -> Any:
        return value

    def __repr__(self) -> str:
        return f"{type(self).__name__}(encoding={self._encoding!r})"


#: The serde of a Client built without ``serde``, ``serializer`` or ``deserializer``.
default_serde = DefaultSerde()


# --------------------------------------------------------------------------------------------
# python-memcached compatible flags.


def python_memcache_serializer(
    key: Any, value: Any, pickle_version: int | None = DEFAULT_PICKLE_VERSION
) -> Tuple[bytes, int]:
    """Serialize like python-memcached: bytes as-is, str as UTF-8, int as digits, else pickle.

    Only the exact types ``bytes``, ``str`` and ``int`` are stored natively; their subclasses
    (``bool``, ``IntEnum`` members, ...) are pickled so that they come back as themselves.
    """
    value_type = type(value)
    if value_type is bytes:
        return value, FLAG_BYTES
    if value_type is str:
        return value.encode("utf-8"), FLAG_TEXT
    if value_type is int:
        try:
            return b"%d" % value, FLAG_INTEGER
        except ValueError:
            # Too many digits for int <-> str conversion (Python 3.11+ limit). A pickle has
            # no such limit and any reader of these flags can load it.
            pass
    return pickle.dumps(value, pickle_version), FLAG_PICKLE


def get_python_memcache_serializer(
    pickle_version: int | None = DEFAULT_PICKLE_VERSION,
) -> SerializerFunc:
    """Return :func:`python_memcache_serializer` bound to one pickle protocol version."""
    return partial(python_memcache_serializer, pickle_version=pickle_version)


def _corrupt(key: Any, what: str, exc: BaseException) -> MemcacheUnknownError:
    return MemcacheUnknownError(
        f"the value stored for key {key!r} {what}: {type(exc).__name__}: {exc}"
    )


def _parse_integer(key: Any, value: bytes) -> int:
    # Accept what memcached and python-memcached can produce: optional sign, ASCII digits,
    # and surrounding whitespace (an in-place ``decr`` pads shorter results with spaces).
    # Reject what int() would also take but no writer produces, such as "1_000".
    digits = value.strip()
    if digits[:1] in (b"-", b"+"):
        digits = digits[1:]
    if not digits.isdigit():
        raise MemcacheUnknownError(
            f"the value stored for key {key!r} is flagged as an integer but is not one: "
            f"{bytes(value[:40])!r}{'...' if len(value) > 40 else ''}"
        )
    try:
        return int(value)
    except ValueError as exc:  # more digits than sys.get_int_max_str_digits() allows
        raise _corrupt(key, "is flagged as an integer but cannot be read", exc) from exc


def python_memcache_deserializer(key: Any, value: bytes, flags: int) -> Any:
    """Read back a value written by :func:`python_memcache_serializer` or python-memcached.

    The flags are tested in this order: 0 gives the bytes, then FLAG_TEXT, FLAG_INTEGER,
    FLAG_LONG, FLAG_PICKLE; flags with none of these bits give the bytes unchanged.
    FLAG_COMPRESSED is not handled here (see :class:`CompressedSerde`).

    Raises :class:`~pymc.exceptions.MemcacheUnknownError` when the bytes do not match the
    flags. (pymemcache returns ``None`` when unpickling fails, which looks like a miss;
    pymc reports the failure.)
    """
    if flags == 0:
        return value
    if flags & FLAG_TEXT:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _corrupt(key, "is flagged as text but is not valid UTF-8", exc) from exc
    if flags & (FLAG_INTEGER | FLAG_LONG):
        return _parse_integer(key, value)
    if flags & FLAG_PICKLE:
        try:
            return pickle.loads(value)
        except Exception as exc:
            raise _corrupt(key, "is flagged as a pickle but could not be unpickled", exc) from exc
    return value


class PickleSerde:
    """A serde with python-memcached flags that pickles every type it cannot store natively.

    Both directions are :func:`python_memcache_serializer` and
    :func:`python_memcache_deserializer`; ``pickle_version`` is the pickle protocol to write.
    """

    __slots__ = ("_pickle_version",)

    def __init__(self, pickle_version: int | None = DEFAULT_PICKLE_VERSION) -> None:
        self._pickle_version = pickle_version

    @property
    def pickle_version(self) -> int | None:
        """The pickle protocol values are written with."""
        return self._pickle_version

    def serialize(self, key: Any, value: Any) -> Tuple[bytes, int]:
        return python_memcache_serializer(key, value, self._pickle_version)

    def deserialize(self, key: Any, value: bytes, flags: int) -> Any:
        return python_memcache_deserializer(key, value, flags)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(pickle_version={self._pickle_version!r})"


#: A :class:`PickleSerde` using :data:`DEFAULT_PICKLE_VERSION`.
pickle_serde = PickleSerde()


# --------------------------------------------------------------------------------------------
# Old-style serializer / deserializer functions.


class LegacyWrappingSerde:
    """Make a serde out of the old ``serializer=`` / ``deserializer=`` function pair.

    A missing (``None``) function is replaced by the matching half of :class:`DefaultSerde`
    (with ``encoding``, which should be the Client's).
    """

    __slots__ = ("_deserializer", "_serializer")

    def __init__(
        self,
        serializer_func: SerializerFunc | None,
        deserializer_func: DeserializerFunc | None,
        *,
        encoding: str = "ascii",
    ) -> None:
        fallback = DefaultSerde(encoding)
        self._serializer: SerializerFunc = serializer_func or fallback.serialize
        self._deserializer: DeserializerFunc = deserializer_func or fallback.deserialize

    def serialize(self, key: Any, value: Any) -> Tuple[bytes, int]:
        return self._serializer(key, value)

    def deserialize(self, key: Any, value: bytes, flags: int) -> Any:
        return self._deserializer(key, value, flags)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(serializer_func={self._serializer!r}, "
            f"deserializer_func={self._deserializer!r})"
        )


# --------------------------------------------------------------------------------------------
# Compression.


class CompressedSerde:
    """Wrap another serde and compress what it produces when that is worth it.

    A serialized value longer than ``min_compress_len`` bytes is compressed, and the result is
    kept (with FLAG_COMPRESSED added to the flags) unless it came out longer than the input.
    ``min_compress_len <= 0`` turns compression off, as in python-memcached and pymemcache.

    On read, a value with FLAG_COMPRESSED is decompressed and handed to the inner serde with
    the flags unchanged (FLAG_COMPRESSED still set). A value that does not decompress raises
    :class:`~pymc.exceptions.MemcacheUnknownError`.

    The inner serde is ``serde`` (default :data:`pickle_serde`), as in pymemcache.
    Alternatively pass ``serializer`` and/or ``deserializer`` functions (by keyword only);
    the missing one defaults to :func:`python_memcache_serializer` /
    :func:`python_memcache_deserializer`.
    """

    __slots__ = ("_compress", "_decompress", "_min_compress_len", "_serde")

    def __init__(
        self,
        compress: Callable[[bytes], bytes] = zlib.compress,
        decompress: Callable[[bytes], bytes] = zlib.decompress,
        serde: Serde | None = None,
        min_compress_len: int = 400,
        *,
        serializer: SerializerFunc | None = None,
        deserializer: DeserializerFunc | None = None,
    ) -> None:
        if serializer is not None or deserializer is not None:
            if serde is not None:
                raise TypeError(
                    "CompressedSerde takes either serde or serializer/deserializer, not both"
                )
            serde = LegacyWrappingSerde(
                serializer or python_memcache_serializer,
                deserializer or python_memcache_deserializer,
            )
        self._serde: Serde = pickle_serde if serde is None else serde
        self._compress = compress
        self._decompress = decompress
        self._min_compress_len = min_compress_len

    @property
    def serde(self) -> Serde:
        """The inner serde, applied before compressing and after decompressing."""
        return self._serde

    @property
    def min_compress_len(self) -> int:
        """Serialized values longer than this many bytes are compressed (0: never)."""
        return self._min_compress_len

    def serialize(self, key: Any, value: Any) -> Tuple[bytes, int]:
        data, flags = self._serde.serialize(key, value)
        if len(data) > self._min_compress_len > 0:
            packed = self._compress(data)
            # A tie goes to the compressed form, as in pymemcache, so both store equal bytes.
            if len(packed) <= len(data):
                return packed, flags | FLAG_COMPRESSED
        return data, flags

    def deserialize(self, key: Any, value: bytes, flags: int) -> Any:
        if flags & FLAG_COMPRESSED:
            try:
                value = self._decompress(value)
            except Exception as exc:
                raise _corrupt(
                    key, "is flagged as compressed but could not be decompressed", exc
                ) from exc
        return self._serde.deserialize(key, value, flags)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(compress={self._compress!r}, "
            f"decompress={self._decompress!r}, serde={self._serde!r}, "
            f"min_compress_len={self._min_compress_len!r})"
        )


#: A :class:`CompressedSerde` with zlib over :data:`pickle_serde`, compressing above 400 bytes.
compressed_serde = CompressedSerde()
