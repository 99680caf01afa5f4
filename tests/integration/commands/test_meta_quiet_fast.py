"""meta_get_many's one-batch path (text keys: encoded, read and matched without a Python
turn per key where the compiled module is in use) against real memcached, on every
client. Run it with ``PYMC_NO_EXTENSIONS=1`` too: the pure reader must give the same."""

from __future__ import annotations

import itertools
import time
from typing import Any, Callable, List, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.helpers import make_client, tcp
from support.servers import MemcachedProcess

from pymc import Client, MemcacheProtocolError
from pymc.meta import OPAQUE_MASK
from pymc.serde import pickle_serde

pytestmark = pytest.mark.timeout(60)
KINDS = ["client", "pooled", "hash"]
_tags = itertools.count()


def tag() -> str:
    return f"mqf{next(_tags)}-{time.monotonic_ns() % 10**9}"


@pytest.mark.parametrize("kind", KINDS)
def test_hits_and_misses_of_a_hundred_keys_are_the_text_gets(
    nodes: List[MemcachedProcess], kind: str
) -> None:
    client = make_client(kind, nodes)
    base = tag()
    keys: List[Any] = [f"{base}:{n}" for n in range(100)]
    keys[7] = keys[7].encode()  # bytes and str keys in one call
    keys[9] = f"{base}:é"  # non-ASCII: UTF-8, as the text commands send it with unicode keys
    try:
        stored = {k: b"v%d" % n for n, k in enumerate(keys) if n % 3}
        client.set_many(stored)
        got = client.meta_get_many(keys)
        assert got == stored
        if kind != "hash":  # (a HashClient's come node by node)
            assert list(got) == [k for k in keys if k in stored]  # in the keys' order
        assert client.meta_get_many([]) == {}
        assert client.meta_get_many(iter(keys[:5])) == {
            k: stored[k] for k in keys[:5] if k in stored
        }
    finally:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_keys_that_go_base64_still_take_the_general_path(
    nodes: List[MemcachedProcess], kind: str
) -> None:
    client = make_client(kind, nodes)
    base = tag()
    keys = [f"{base}:plain", f"{base} with space".encode(), f"{base}:" + "x" * 300]
    try:
        client.meta_set_many({k: b"<%d>" % n for n, k in enumerate(keys)})
        assert client.meta_get_many(keys) == {k: b"<%d>" % n for n, k in enumerate(keys)}
    finally:
        client.close()


def test_two_spellings_of_one_key_are_one_key_the_last(nodes: List[MemcachedProcess]) -> None:
    client = Client(tcp(nodes[0]), timeout=5)
    key = tag()
    try:
        client.set(key, b"v")
        assert client.meta_get_many([key, key.encode()]) == {key.encode(): b"v"}
        assert client.meta_get_many([key.encode(), key]) == {key: b"v"}
    finally:
        client.close()


def test_a_prefix_and_a_serde(nodes: List[MemcachedProcess]) -> None:
    client = Client(tcp(nodes[0]), timeout=5, key_prefix=b"p:", serde=pickle_serde)
    keys = [tag() for _ in range(20)]
    try:
        values = {k: {"n": n, "list": [n] * 3} for n, k in enumerate(keys)}
        client.set_many(values)
        assert client.meta_get_many(keys) == values
        assert client.get_many(keys) == values
    finally:
        client.close()


def test_opaques_wrap_around_their_mask(nodes: List[MemcachedProcess]) -> None:
    client = Client(tcp(nodes[0]), timeout=5)
    keys = [tag() for _ in range(50)]
    try:
        client.set_many({k: k.encode() for k in keys})
        client._opaque_counter = OPAQUE_MASK - 20  # (the 50 opaques run through 0)
        assert client.meta_get_many(keys) == {k: k.encode() for k in keys}
        assert client._opaque_counter == 29
        assert client.meta_get(keys[0]).value == keys[0].encode()  # (opaque 1e)
    finally:
        client.close()


def _checked_refusal(
    nodes: List[MemcachedProcess],
    fault_proxy: Callable[[Tuple[str, int]], FaultProxy],
    fn: Callable[[bytes], bytes],
) -> None:
    proxy = fault_proxy(tcp(nodes[0]))
    client = Client(proxy.server, timeout=2)
    keys = [tag() for _ in range(100)]
    try:
        client.set_many({k: k.encode() for k in keys})
        proxy.set_mode("rewrite", fn=fn)
        with pytest.raises(MemcacheProtocolError):
            client.meta_get_many(keys)
        assert client.sock is None
        proxy.set_mode("pass")
        assert client.meta_get_many(keys) == {k: k.encode() for k in keys}
    finally:
        client.close()


def test_a_reply_labelled_with_an_earlier_request_is_refused(
    nodes: List[MemcachedProcess], fault_proxy: Callable[[Tuple[str, int]], FaultProxy]
) -> None:
    def relabel(data: bytes) -> bytes:  # the last hit claims the first one's opaque
        first = data.index(b" O") + 2
        opaque = data[first : data.index(b"\r\n", first)]
        at = data.rindex(b" O") + 2
        return data[:at] + opaque + data[data.index(b"\r\n", at) :]

    _checked_refusal(nodes, fault_proxy, relabel)


def test_a_reply_for_no_request_is_refused(
    nodes: List[MemcachedProcess], fault_proxy: Callable[[Tuple[str, int]], FaultProxy]
) -> None:
    _checked_refusal(nodes, fault_proxy, lambda d: d.replace(b" O", b" Ozz", 1))


def test_a_value_over_the_size_cap_is_refused_before_it_is_read(
    nodes: List[MemcachedProcess], fault_proxy: Callable[[Tuple[str, int]], FaultProxy]
) -> None:
    started = time.monotonic()
    _checked_refusal(nodes, fault_proxy, lambda d: d.replace(b"VA ", b"VA 999999999999", 1))
    assert time.monotonic() - started < 10  # (no wait for the announced bytes)


def test_an_error_line_mid_pipeline_is_raised_and_the_connection_closed(
    nodes: List[MemcachedProcess], fault_proxy: Callable[[Tuple[str, int]], FaultProxy]
) -> None:
    def error(data: bytes) -> bytes:
        at = data.find(b"VA ", 1)
        return data[:at] + b"SERVER_ERROR out of memory\r\n" + data[at:] if at > 0 else data

    proxy = fault_proxy(tcp(nodes[0]))
    client = Client(proxy.server, timeout=2)
    keys = [tag() for _ in range(10)]
    try:
        client.set_many({k: b"v" for k in keys})
        proxy.set_mode("rewrite", fn=error)
        with pytest.raises(Exception, match="out of memory"):
            client.meta_get_many(keys)
        proxy.set_mode("pass")
        assert client.meta_get_many(keys) == {k: b"v" for k in keys}
    finally:
        client.close()


def test_trailing_bytes_after_mn_close_the_connection(
    nodes: List[MemcachedProcess], fault_proxy: Callable[[Tuple[str, int]], FaultProxy]
) -> None:
    _checked_refusal(
        nodes, fault_proxy, lambda d: d + b"VA 1 O1\r\nx\r\n" if d.endswith(b"MN\r\n") else d
    )
