"""Client arguments and options refused or accepted at construction, before any connection."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import pytest
from support.servers import free_port

from pymc import (
    Client,
    HashClient,
    KeepaliveOpts,
    MemcacheIllegalInputError,
    PooledClient,
)


def test_username_without_password_is_refused() -> None:
    with pytest.raises(ValueError):
        Client(("127.0.0.1", 11211), username="user")


@pytest.fixture(scope="module")
def nowhere() -> Client:
    """A client whose server does not exist: anything sent would be a connect error."""
    return Client(("127.0.0.1", free_port()), connect_timeout=0.5)


def test_bad_key_prefix_is_refused() -> None:
    for prefix in (b"a b", b"a\r\n", "k" * 251):
        with pytest.raises(MemcacheIllegalInputError):
            Client(("127.0.0.1", 1), key_prefix=prefix)


@pytest.mark.parametrize(
    "value", [1.5, {"a": 1}, None, [1, 2], True, object()], ids=lambda v: type(v).__name__
)
def test_values_without_serde_are_refused(nowhere: Client, value: Any) -> None:
    with pytest.raises(MemcacheIllegalInputError):
        nowhere.set("k", value)
    with pytest.raises(MemcacheIllegalInputError):
        nowhere.set_many({"ok": b"v", "k": value})
    with pytest.raises(MemcacheIllegalInputError):
        nowhere.add("k", value)
    with pytest.raises(MemcacheIllegalInputError):
        nowhere.cas("k", value, 1)


BAD_ARGS: Dict[str, Callable[[Client], Any]] = {
    "expire-str": lambda c: c.set("k", b"v", expire="10"),  # type: ignore[arg-type]
    "expire-float": lambda c: c.set("k", b"v", expire=1.5),  # type: ignore[arg-type]
    "expire-none": lambda c: c.set("k", b"v", expire=None),  # type: ignore[arg-type]
    "expire-bool": lambda c: c.set("k", b"v", expire=True),
    "expire-huge": lambda c: c.set("k", b"v", expire=2**31),
    "flags-str": lambda c: c.set("k", b"v", flags="1"),  # type: ignore[arg-type]
    "flags-negative": lambda c: c.set("k", b"v", flags=-1),
    "flags-33-bit": lambda c: c.set("k", b"v", flags=2**32),
    "flags-float": lambda c: c.set("k", b"v", flags=1.0),  # type: ignore[arg-type]
    "set_many-expire": lambda c: c.set_many({"k": b"v"}, expire="1"),  # type: ignore[arg-type]
    "delta-negative": lambda c: c.incr("k", -1),
    "delta-str": lambda c: c.incr("k", "1"),  # type: ignore[arg-type]
    "delta-float": lambda c: c.decr("k", 1.5),  # type: ignore[arg-type]
    "delta-none": lambda c: c.incr("k", None),  # type: ignore[arg-type]
    "delta-65-bit": lambda c: c.incr("k", 2**64),
    "delta-crlf": lambda c: c.incr("k", "1\r\nflush_all"),  # type: ignore[arg-type]
    "touch-expire-str": lambda c: c.touch("k", "10"),  # type: ignore[arg-type]
    "gat-expire-str": lambda c: c.gat("k", "10"),  # type: ignore[arg-type]
    "gats-expire-float": lambda c: c.gats("k", 1.5),  # type: ignore[arg-type]
    "cas-token-str": lambda c: c.cas("k", b"v", "abc"),
    "cas-token-crlf": lambda c: c.cas("k", b"v", b"1\r\nflush_all"),
    "cas-token-negative": lambda c: c.cas("k", b"v", -1),
    "cas-token-float": lambda c: c.cas("k", b"v", 1.5),  # type: ignore[arg-type]
    "cas-token-none": lambda c: c.cas("k", b"v", None),  # type: ignore[arg-type]
    "verbosity-str": lambda c: c.verbosity("1"),  # type: ignore[arg-type]
    "flush-delay-negative": lambda c: c.flush_all(-1),
    "memlimit-str": lambda c: c.cache_memlimit("64"),  # type: ignore[arg-type]
    "stats-crlf": lambda c: c.stats("items\r\nflush_all"),
    "stats-space": lambda c: c.stats("a b"),
}


@pytest.mark.parametrize("call", list(BAD_ARGS.values()), ids=list(BAD_ARGS))
def test_bad_arguments_are_refused_before_connecting(
    nowhere: Client, call: Callable[[Client], Any]
) -> None:
    with pytest.raises(MemcacheIllegalInputError):
        call(nowhere)


def test_options_are_checked() -> None:
    bad: List[Dict[str, Any]] = [{"timeout": 0}, {"connect_timeout": -1}, {"key_prefix": 1}]
    for kw in bad:
        with pytest.raises((ValueError, TypeError)):
            Client(("127.0.0.1", 1), **kw)


@pytest.mark.parametrize("bad", [{"idle": 0}, {"intvl": 0}, {"cnt": -1}, {"idle": 1.5}])
def test_keepalive_opts_refuse_nonsense(bad: Dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        KeepaliveOpts(**bad)


def _construct(kind: str, address: Tuple[str, int], **kwargs: Any) -> Any:
    if kind == "HashClient":
        return HashClient([address], **kwargs)
    return {"Client": Client, "PooledClient": PooledClient}[kind](address, **kwargs)


KINDS = ["Client", "PooledClient", "HashClient"]


BAD_PREFIXES = [
    "é:",  # non-ASCII str without allow_unicode_keys
    "a b",
    b"a\r\n",
    "tab\t",
    b"\x00",
    b"del\x7f",
    "k" * 251,
    b"k" * 251,
    "é" * 126,  # 252 bytes as UTF-8 (checked with allow_unicode_keys below too)
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prefix", BAD_PREFIXES, ids=lambda p: ascii(p)[:24])
def test_bad_key_prefix_raises_illegal_input(kind: str, prefix: Any) -> None:
    with pytest.raises(MemcacheIllegalInputError, match="key_prefix"):
        _construct(kind, ("127.0.0.1", 1), key_prefix=prefix)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("prefix", ["a b", "é" * 126, "é\n"], ids=lambda p: ascii(p)[:24])
def test_bad_unicode_key_prefix_raises_illegal_input(kind: str, prefix: str) -> None:
    with pytest.raises(MemcacheIllegalInputError, match="key_prefix"):
        _construct(kind, ("127.0.0.1", 1), key_prefix=prefix, allow_unicode_keys=True)


@pytest.mark.parametrize("kind", KINDS)
def test_key_prefix_of_the_wrong_type_is_a_type_error(kind: str) -> None:
    # pymemcache 4.0 raises TypeError for a prefix that is neither str nor bytes: so do we.
    for prefix in (1, bytearray(b"p:"), None):
        with pytest.raises(TypeError):
            _construct(kind, ("127.0.0.1", 1), key_prefix=prefix)
