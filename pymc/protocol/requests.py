"""The text protocol's requests, sans I/O: each ``encode_*`` turns a checked command into the
exact bytes to send.
"""

from __future__ import annotations

from typing import (
    Final,
    Optional,
    Sequence,
    Union,
)

from ..exceptions import (
    MemcacheIllegalInputError,
)
from .keys import (
    BAD_KEY_BYTE,
    DIGITS,
    LEGACY_CONFIG_KEY,
    UINT32,
    UINT64,
)


def _int_arg(value: object, name: str, low: int, high: int) -> bytes:
    if type(value) is not int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise MemcacheIllegalInputError(
                f"{name} must be an int, not {type(value).__name__}: {value!r}"
            )
        value = int(value)
    if not low <= value < high:
        raise MemcacheIllegalInputError(f"{name} must be in [{low}, {high}), got {value}")
    return b"%d" % value


def _cas_arg(cas: object) -> bytes:
    if isinstance(cas, (bytes, str)):
        raw = cas.encode("ascii", "replace") if isinstance(cas, str) else cas
        if DIGITS(raw) is None or int(raw) >= UINT64:
            raise MemcacheIllegalInputError(f"cas must be a 64-bit unsigned number: {cas!r}")
        return raw
    return _int_arg(cas, "cas", 0, UINT64)


def _token(arg: Union[str, bytes], what: str) -> bytes:
    try:
        raw = arg.encode("ascii") if isinstance(arg, str) else arg
    except UnicodeEncodeError:
        raise MemcacheIllegalInputError(f"non-ASCII {what} argument: {arg!r}") from None
    if not isinstance(raw, bytes) or not raw or BAD_KEY_BYTE(raw) is not None:
        raise MemcacheIllegalInputError(f"bad {what} argument: {arg!r}")
    return raw


# --------------------------------------------------------------------------- encoders

_NOREPLY: Final = b" noreply"
_EXPIRE_LOW: Final = -(1 << 31)
_EXPIRE_HIGH: Final = 1 << 31


def encode_storage(
    command: bytes,
    key: bytes,
    data: bytes,
    flags: int = 0,
    expire: int = 0,
    noreply: bool = False,
    cas: object = None,
) -> bytes:
    """``set|add|replace|append|prepend|cas`` of an already validated key."""
    if (
        type(flags) is int
        and type(expire) is int
        and 0 <= flags < UINT32
        and _EXPIRE_LOW <= expire < _EXPIRE_HIGH
    ):
        head = b"%s %s %d %d %d" % (command, key, flags, expire, len(data))
    else:  # the slow path says what is wrong
        head = b"%s %s %s %s %d" % (
            command,
            key,
            _int_arg(flags, "flags", 0, UINT32),
            _int_arg(expire, "expire", _EXPIRE_LOW, _EXPIRE_HIGH),
            len(data),
        )
    if cas is not None:
        head += b" " + _cas_arg(cas)
    if noreply:
        head += _NOREPLY
    return head + b"\r\n" + data + b"\r\n"


def encode_retrieval(command: bytes, keys: Sequence[bytes], expire: Optional[int] = None) -> bytes:
    """``get|gets`` of validated keys, or ``gat|gats`` with an ``expire``."""
    if expire is not None:
        command += b" " + _int_arg(expire, "expire", _EXPIRE_LOW, _EXPIRE_HIGH)
    return command + b" " + b" ".join(keys) + b"\r\n"


def encode_delete(key: bytes, noreply: bool = False) -> bytes:
    return b"delete " + key + (_NOREPLY if noreply else b"") + b"\r\n"


def encode_incr_decr(command: bytes, key: bytes, delta: int, noreply: bool = False) -> bytes:
    return b"%s %s %s%s\r\n" % (
        command,
        key,
        _int_arg(delta, "value", 0, UINT64),
        _NOREPLY if noreply else b"",
    )


def encode_touch(key: bytes, expire: int, noreply: bool = False) -> bytes:
    return b"touch %s %s%s\r\n" % (
        key,
        _int_arg(expire, "expire", _EXPIRE_LOW, _EXPIRE_HIGH),
        _NOREPLY if noreply else b"",
    )


def encode_stats(*args: Union[str, bytes]) -> bytes:
    return b" ".join([b"stats", *(_token(a, "stats") for a in args)]) + b"\r\n"


def encode_version() -> bytes:
    return b"version\r\n"


def encode_verbosity(level: int, noreply: bool = False) -> bytes:
    return b"verbosity %s%s\r\n" % (
        _int_arg(level, "level", 0, UINT32),
        _NOREPLY if noreply else b"",
    )


def encode_cache_memlimit(megabytes: int, noreply: bool = False) -> bytes:
    return b"cache_memlimit %s%s\r\n" % (
        _int_arg(megabytes, "memlimit", 0, UINT32),
        _NOREPLY if noreply else b"",
    )


def encode_flush_all(delay: int = 0, noreply: bool = False) -> bytes:
    return b"flush_all %s%s\r\n" % (
        _int_arg(delay, "delay", 0, _EXPIRE_HIGH),
        _NOREPLY if noreply else b"",
    )


def encode_quit() -> bytes:
    return b"quit\r\n"


def encode_shutdown(graceful: bool = False) -> bytes:
    return b"shutdown graceful\r\n" if graceful else b"shutdown\r\n"


def encode_config_get(name: Union[str, bytes] = b"cluster") -> bytes:
    return b"config get " + _token(name, "config") + b"\r\n"


def encode_legacy_config_get() -> bytes:
    """The cluster config request of engines older than 1.4.14 (read by
    :class:`ExpectLegacyConfig`)."""
    return b"get " + LEGACY_CONFIG_KEY + b"\r\n"


#: The key of ASCII auth's ``set`` (ignored by a server with ``-Y``; see encode_auth_probe).
AUTH_KEY = b"auth"


def encode_auth(username: Union[str, bytes], password: Union[str, bytes]) -> bytes:
    """memcached's ASCII authentication (``memcached -Y``): a ``set`` whose data is
    ``"<username> <password>"``. The key is ignored by the server."""
    user = _token(username, "username")
    try:
        secret = password.encode("utf-8") if isinstance(password, str) else password
    except UnicodeEncodeError:
        raise MemcacheIllegalInputError("a password must be valid Unicode") from None
    if not isinstance(secret, bytes) or not secret or b"\r\n" in secret:
        raise MemcacheIllegalInputError("a password must be non-empty and hold no CRLF")
    return encode_storage(b"set", AUTH_KEY, user + b" " + secret)


def encode_auth_probe() -> bytes:
    """The request sent before the credentials, read with :func:`expect_auth_probe` and
    judged by :func:`asks_for_auth`: ``get auth``. memcached ``-Y`` answers every command
    of a connection not yet authenticated with ``CLIENT_ERROR unauthenticated`` (and drops
    whatever was pipelined behind it, so the credentials go out only after the answer). A
    server without ``-Y`` answers normally: sent to it, the credentials would be stored as
    an item named ``auth``. The probe names that key, so a proxy (twemproxy, mcrouter)
    routes it to the backend the credentials would go to, not to whichever backend it
    picks for a keyless command such as ``version``."""
    return b"get " + AUTH_KEY + b"\r\n"
