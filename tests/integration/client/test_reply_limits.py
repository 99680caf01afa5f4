"""Replies that lie about their size, or come twice (issue 18, items 17 and 18).

A ``VALUE``/``VA`` header announcing a data block larger than
:data:`pymc.protocol.MAX_VALUE_BYTES` is refused as soon as the header is parsed (never
buffered until the timeout), and the connection is closed. A reply that a server or proxy
sends twice must never answer the next command. Both readers (compiled and pure) are checked;
the client tests run against real memcached behind the suite's fault proxy.
"""

from __future__ import annotations

import itertools
import re
import time
from typing import Any, Callable, Dict, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.helpers import KINDS, one_node_client, tcp
from support.servers import MemcachedProcess

from pymc import MemcacheProtocolError

ProxyFactory = Callable[[Tuple[str, int]], FaultProxy]
_counter = itertools.count()
HUGE = b"999999999999999999"  # 18 digits: the widest size the text reader parses


def tag() -> str:
    return f"lim{next(_counter)}-{time.monotonic_ns() % 10**9}"


# --------------------------------------------------------------------------- sans-IO


# --------------------------------------------------------------------------- through a proxy


def _huge_value_header(data: bytes) -> bytes:
    return re.sub(rb"VALUE (\S+) (\d+) \d+", rb"VALUE \1 \2 " + HUGE, data, count=1)


def _huge_va_header(data: bytes) -> bytes:
    return re.sub(rb"^VA \d+", b"VA " + HUGE, data, count=1)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["get", "get_many", "gets", "meta_get"])
def test_huge_declared_length_fails_at_once_and_closes(
    kind: str, command: str, memcached: MemcachedProcess, fault_proxy: ProxyFactory
) -> None:
    """A proxy announces a block of 10**18 bytes: the command fails at once with
    MemcacheProtocolError (not after the 3 s timeout), and the next command, on a new
    connection, reads the right value."""
    proxy = fault_proxy(tcp(memcached))
    client = one_node_client(kind, proxy.server, timeout=3.0)
    key = tag()
    assert client.set(key, b"abc") is True
    call: Dict[str, Callable[[], Any]] = {
        "get": lambda: client.get(key),
        "get_many": lambda: client.get_many([key, key + "x"]),
        "gets": lambda: client.gets(key),
        "meta_get": lambda: client.meta_get(key),
    }
    proxy.set_mode("rewrite", fn=_huge_va_header if command == "meta_get" else _huge_value_header)
    started = time.monotonic()
    with pytest.raises(MemcacheProtocolError, match=r"larger than|more than"):
        call[command]()
    assert time.monotonic() - started < 1.5
    proxy.set_mode("pass")
    assert client.get(key) == b"abc"
    assert proxy.accepted == 2  # the connection that read the header was closed


# --------------------------------------------------------------------------- duplicates


def _late_duplicate(of: bytes) -> Callable[[bytes], Any]:
    """A proxy that sends a reply chunk equal to ``of`` twice, the copy 10 ms later."""

    def rewrite(data: bytes) -> Any:
        return [data, data] if data == of else data

    return rewrite


DUPLICATES: Dict[str, Tuple[bytes, Callable[[Any, str], Any], Callable[[Any, str], Any], Any]] = {
    # name: (reply duplicated, the command drawing it, the next command, what it must return)
    "add": (b"STORED\r\n", lambda c, k: c.set(k, b"v"), lambda c, k: c.add(k, b"w"), False),
    "delete": (b"DELETED\r\n", lambda c, k: c.delete(k), lambda c, k: c.delete(k), False),
    "incr": (b"6\r\n", lambda c, k: c.incr(k + "-n", 1), lambda c, k: c.incr(k + "-n", 1), 7),
    "touch": (
        b"TOUCHED\r\n",
        lambda c, k: c.touch(k, 100),
        lambda c, k: c.touch(k + "-missing", 100),
        False,
    ),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(DUPLICATES))
def test_late_duplicate_reply_never_answers_the_next_command(
    kind: str, case: str, memcached: MemcachedProcess, fault_proxy: ProxyFactory
) -> None:
    """A proxy repeats a reply 10 ms later; the next command, sent right after (well within
    the pool's CHECK_IDLE_AFTER), gets its own answer: ``add`` of an existing key is False,
    never the stray ``STORED``."""
    duplicated, first, then, want = DUPLICATES[case]
    proxy = fault_proxy(tcp(memcached))
    client = one_node_client(kind, proxy.server)
    key = tag()
    assert client.set(key, b"v") is True
    assert client.set(key + "-n", b"5") is True
    proxy.set_mode("rewrite", fn=_late_duplicate(duplicated), seconds=0.01)
    first(client, key)
    time.sleep(0.03)  # the copy is in the socket's buffer now
    assert then(client, key) == want
    proxy.set_mode("pass")
    assert client.get(key + "-n") in (b"5", b"6", b"7")
    assert client.set(key, b"z") is True


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", KINDS)
def test_duplicate_in_the_same_chunk_closes_the_connection(
    kind: str, memcached: MemcachedProcess, fault_proxy: ProxyFactory
) -> None:
    """A copy that arrives with the reply is bytes left over: the command that read it
    fails with MemcacheProtocolError and its connection is closed, so the copy answers
    nothing."""
    proxy = fault_proxy(tcp(memcached))
    client = one_node_client(kind, proxy.server)
    key = tag()
    assert client.set(key, b"v") is True
    proxy.set_mode("rewrite", fn=lambda d: d + d if d == b"STORED\r\n" else d)
    with pytest.raises(MemcacheProtocolError, match="more than the reply"):
        client.set(key, b"w")
    proxy.set_mode("pass")
    assert client.add(key, b"x") is False
    assert client.get(key) == b"w"
    assert proxy.accepted == 2
