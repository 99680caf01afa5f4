"""Caller flags that change what the server sends back (issue 18 item 9).

memcached's protocol.txt: ``q`` (quiet: no reply on success for ``ms``/``md``/``ma``, and
none on a miss for ``mg``) leaves a single command with nothing to read, so the call
would wait its whole timeout and report a done command as a timeout; ``O`` (opaque) and
``b`` (base64 key) are pymc's own (it matches replies by its opaque, and decides when a
key travels base64). Each is refused before anything is sent; flags that only add return
fields (``k``, ``s``, ``t``, ``h``, ``l``, ...) keep working.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, Dict

import pytest
from support.helpers import KINDS, one_node_client, tcp
from support.servers import MemcachedProcess

from pymc import MemcacheIllegalInputError

_counter = itertools.count()


def tag() -> str:
    return f"mf{next(_counter)}-{time.monotonic_ns() % 10**9}"


CALLS: Dict[str, Callable[[Any, str, str], Any]] = {
    "meta_get": lambda c, k, f: c.meta_get(k, flags=f),
    "meta_set": lambda c, k, f: c.meta_set(k, b"v", flags=f),
    "meta_delete": lambda c, k, f: c.meta_delete(k, flags=f),
    "meta_arithmetic": lambda c, k, f: c.meta_arithmetic(k, flags=f),
}
UNSAFE = ["q", "k q", "q k", "qv", "O123", "s O9", "b", "t b"]


@pytest.mark.parametrize("flags", UNSAFE)
@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("kind", KINDS)
def test_flags_that_change_the_reply_are_refused(
    memcached: MemcachedProcess, kind: str, call: str, flags: str
) -> None:
    client = one_node_client(kind, tcp(memcached), timeout=3.0)
    key = tag()
    try:
        client.set(key, b"1")
        start = time.monotonic()
        with pytest.raises(MemcacheIllegalInputError, match=r"flag"):
            CALLS[call](client, key, flags)
        assert time.monotonic() - start < 1.0
        assert client.get(key) == b"1"  # nothing was sent: the connection is in step
        assert client.meta_get(key).value == b"1"
    finally:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_flags_that_add_return_fields_still_work(memcached: MemcachedProcess, kind: str) -> None:
    client = one_node_client(kind, tcp(memcached), timeout=3.0)
    key = tag()
    try:
        assert client.meta_set(key, b"5", flags="T60").status == "stored"
        got = client.meta_get(key, flags="k s t h l")
        assert (got.status, got.value, got.size) == ("hit", b"5", 1)
        assert client.meta_arithmetic(key, 2, flags="t").number == 7
        assert client.meta_delete(key, flags="k").status == "deleted"
        assert client.meta_get(key, flags="k").status == "miss"
    finally:
        client.close()


@pytest.mark.parametrize("flags", ["N30", "k N30", "N30 t"])
@pytest.mark.parametrize("kind", KINDS)
def test_vivify_through_flags_is_a_miss_not_an_empty_value(
    memcached: MemcachedProcess, kind: str, flags: str
) -> None:
    """``N<ttl>`` passed through ``flags=`` vivifies as ``vivify_on_miss`` does: memcached
    makes an empty placeholder and hands its maker ``W``. The maker must see a miss it
    won, never the placeholder as an empty value (it was a ``"hit"`` of ``b""``)."""
    client = one_node_client(kind, tcp(memcached), timeout=3.0)
    other = one_node_client(kind, tcp(memcached), timeout=3.0)
    key = tag()
    try:
        made = client.meta_get(key, flags=flags)
        assert (made.status, made.value, made.win) == ("miss", None, True), made
        seen = other.meta_get(key, flags=flags)
        assert (seen.status, seen.value, seen.won_elsewhere) == ("miss", None, True), seen
        assert client.meta_set(key, b"real").status == "stored"
        got = client.meta_get(key, flags=flags)
        assert (got.status, got.value, got.win) == ("hit", b"real", False), got
    finally:
        client.close()
        other.close()
