"""HashClient's node health as a user sees it: which errors reach the caller from a node
that is resting after a failure, and which failures count against a node (a command the
server or proxy refuses leaves the connection in step and is that command's error only).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.helpers import tcp
from support.nutcracker import NutcrackerProcess
from support.servers import MemcachedProcess

import pymc
import pymc.exceptions
from pymc import (
    HashClient,
    MemcacheError,
    MemcacheNetworkError,
    MemcacheServerRefusedError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    NodeRestingError,
)
from pymc.exceptions import MemcacheUnsupportedCommandError

PUBLIC = set(pymc.exceptions.__all__)


def assert_public(exc: BaseException) -> None:
    """``exc`` is of a class a user can name: public, in pymc.exceptions' tree, exported."""
    cls = type(exc)
    assert isinstance(exc, MemcacheError), repr(exc)
    if "[" in cls.__name__:
        # pymc.exceptions.network_error's pair of a public pymc class and the socket error's
        # own class (ConnectionResetError...), so pymemcache-era except clauses still work.
        ours, theirs = cls.__bases__
        assert theirs.__module__ in ("builtins", "ssl", "socket"), theirs
        cls = ours
    assert cls.__module__ == "pymc.exceptions", f"{cls.__module__}.{cls.__qualname__}"
    assert cls.__name__ in PUBLIC and getattr(pymc, cls.__name__) is cls, cls
    assert not cls.__name__.startswith("_"), cls


def resting_cluster(
    memcached_nodes: List[MemcachedProcess],
    fault_proxy: Callable[[Tuple[str, int]], FaultProxy],
    ignore_exc: bool,
) -> Tuple[HashClient, FaultProxy, List[str]]:
    """A HashClient over a healthy node and a proxied one that failed once, so it rests
    (retry_timeout 60 s, not ejected); and keys that live on the resting node."""
    proxy = fault_proxy(tcp(memcached_nodes[0]))
    servers = [proxy.address, tcp(memcached_nodes[1])]
    client = HashClient(
        servers, retry_attempts=5, retry_timeout=60, timeout=2, ignore_exc=ignore_exc
    )
    resting = pymc.client.server_name(proxy.address)
    keys = [f"rest-{i}" for i in range(200) if client.snapshot.node_for(f"rest-{i}") == resting]
    assert len(keys) > 3
    proxy.set_mode("reset")
    if ignore_exc:
        assert client.get(keys[0]) is None
    else:
        with pytest.raises(MemcacheNetworkError):
            client.get(keys[0])
    proxy.set_mode("pass")
    assert resting in client.snapshot.names  # resting, not ejected
    return client, proxy, keys


def every_path(client: HashClient, keys: List[str]) -> List[Tuple[str, Callable[[], Any]]]:
    key = keys[1]
    healthy = [f"ok-{i}" for i in range(50)]
    return [
        ("get", lambda: client.get(key)),
        ("get_many", lambda: client.get_many([key, *healthy])),
        ("gets_many", lambda: client.gets_many([key, *healthy])),
        ("set", lambda: client.set(key, b"v")),
        ("set_many", lambda: client.set_many({key: b"v", healthy[0]: b"v"})),
        ("delete", lambda: client.delete(key)),
        ("delete_many", lambda: client.delete_many([key, *healthy])),
        ("incr", lambda: client.incr(key, 1)),
        ("meta_get", lambda: client.meta_get(key)),
        ("meta_get_many", lambda: client.meta_get_many([key, *healthy])),
        ("meta_set", lambda: client.meta_set(key, b"v")),
        ("get_cas", lambda: client.get_cas(key)),
        ("fetch", lambda: client.fetch(key, lambda: b"computed")),
        ("getitem", lambda: client[key]),
    ]


@pytest.mark.parametrize("ignore_exc", [False, True])
def test_a_resting_node_raises_only_public_exceptions(
    memcached_nodes: List[MemcachedProcess],
    fault_proxy: Callable[[Tuple[str, int]], FaultProxy],
    ignore_exc: bool,
) -> None:
    client, _, keys = resting_cluster(memcached_nodes, fault_proxy, ignore_exc)
    raised = []
    for name, call in every_path(client, keys):
        try:
            result = call()
        except KeyError:
            assert name == "getitem" and ignore_exc
            continue
        except BaseException as exc:
            assert_public(exc)
            # an except clause written for the connection failure still catches it
            assert isinstance(exc, MemcacheNetworkError), (name, exc)
            raised.append(name)
        else:
            assert ignore_exc, f"{name} on a resting node returned {result!r}"
            if name == "fetch":
                assert result == b"computed"
    if not ignore_exc:
        assert len(raised) == len(every_path(client, keys)), raised


# -- a command the server or proxy refuses is that command's error, not the node's failure ----


class Events:
    def __init__(self) -> None:
        self.seen: List[Tuple[str, str]] = []

    def __call__(self, event: str, node: str, info: Dict[str, Any]) -> None:
        self.seen.append((event, node))

    def count(self, event: str) -> int:
        return sum(1 for e, _ in self.seen if e == event)


REFUSALS: Dict[str, Callable[[Any, str], Any]] = {
    "gat": lambda c, k: c.gat(k, 10),
    "gats": lambda c, k: c.gats(k, 10),
    "meta_get": lambda c, k: c.meta_get(k),
    "meta_set": lambda c, k: c.meta_set(k, b"v"),
    "meta_delete": lambda c, k: c.meta_delete(k),
    "touch": lambda c, k: c.touch(k, 10),
}


@pytest.mark.parametrize("command", sorted(REFUSALS))
def test_an_error_line_refusing_a_command_does_not_count_against_the_node(
    memcached: MemcachedProcess,
    fault_proxy: Callable[[Tuple[str, int]], FaultProxy],
    command: str,
) -> None:
    """A proxy answers ``ERROR <message>`` (the connection stays in step) to a command it
    does not support: the caller gets that command's error each time, and the node is
    neither counted failed nor ejected (retry_attempts=2, refused 4 times)."""
    proxy = fault_proxy(tcp(memcached))
    events = Events()
    client = HashClient([proxy.address], retry_attempts=2, retry_timeout=60, on_event=events)
    assert client.set("refused", b"v")
    proxy.set_mode("rewrite", fn=lambda chunk: b"ERROR command not supported by this proxy\r\n")
    for _ in range(4):
        with pytest.raises(MemcacheUnknownCommandError) as info:
            REFUSALS[command](client, "refused")
        assert "not supported by this proxy" in str(info.value)
        assert not isinstance(info.value, NodeRestingError)
    proxy.set_mode("pass")
    assert events.count("node_failed") == 0 and events.count("node_ejected") == 0, events.seen
    assert client.set("after", b"w") and client.get("after") == b"w"  # served at once


def test_memcacheds_own_refusal_of_the_connection_still_counts(
    memcached: MemcachedProcess, fault_proxy: Callable[[Tuple[str, int]], FaultProxy]
) -> None:
    """``ERROR Too many open connections`` (memcached hangs up after it) is a failure of the
    connection: it counts, and ejects the node after retry_attempts."""
    proxy = fault_proxy(tcp(memcached))
    events = Events()
    client = HashClient([proxy.address], retry_attempts=2, retry_timeout=0, on_event=events)
    proxy.set_mode("rewrite", fn=lambda chunk: b"ERROR Too many open connections\r\n")
    for _ in range(2):
        with pytest.raises(MemcacheServerRefusedError):
            client.get("full")
    assert events.count("node_failed") == 2 and events.count("node_ejected") == 1, events.seen


@pytest.fixture
def proxied_memcached(
    memcached: MemcachedProcess, twemproxy: Callable[..., NutcrackerProcess]
) -> Tuple[str, int]:
    """A real twemproxy (Debian's nutcracker) in front of the session's memcached."""
    return twemproxy([tcp(memcached)], timeout_ms=2000).address


UNSUPPORTED_BY_TWEMPROXY: Dict[str, Tuple[str, Callable[[Any, str], Any]]] = {
    "gat": ("gat", lambda c, k: c.gat(k, 10)),
    "meta_get": ("mg", lambda c, k: c.meta_get(k)),
    "meta_set": ("ms", lambda c, k: c.meta_set(k, b"v")),
    "meta_get_many": ("mg", lambda c, k: c.meta_get_many([k, k + "2"])),
    "stats": ("stats", lambda c, k: c.stats()),
    "flush_all": ("flush_all", lambda c, k: c.flush_all()),
}


@pytest.mark.parametrize("kind", ["client", "pooled", "hash"])
@pytest.mark.parametrize("command", sorted(UNSUPPORTED_BY_TWEMPROXY))
def test_a_proxy_that_closes_on_an_unknown_command_says_so(
    proxied_memcached: Tuple[str, int], kind: str, command: str
) -> None:
    """twemproxy closes the connection, without a byte of reply, on a command it does not
    support. The error names the command and says the server or proxy does not support it
    (a MemcacheUnknownCommandError, as memcached's own ERROR would be, and still the
    MemcacheUnexpectedCloseError it was); a HashClient does not count it against the node,
    so the node is not left resting and serves the next command at once."""
    wire, call = UNSUPPORTED_BY_TWEMPROXY[command]
    events = Events()
    if kind == "hash":
        client: Any = HashClient(
            [proxied_memcached], retry_attempts=2, retry_timeout=60, on_event=events, timeout=3
        )
    elif kind == "pooled":
        client = pymc.PooledClient(proxied_memcached, timeout=3)
    else:
        client = pymc.Client(proxied_memcached, timeout=3)
    assert client.set("tw", b"v")
    for _ in range(3):
        with pytest.raises(MemcacheUnsupportedCommandError) as info:
            call(client, "tw")
        message = str(info.value)
        assert wire in message and "not support" in message, message
        assert isinstance(info.value, MemcacheUnknownCommandError)
        assert isinstance(info.value, MemcacheUnexpectedCloseError)
        assert_public(info.value)
        assert client.get("tw") == b"v"  # at once: the node is not resting
    assert events.count("node_failed") == 0, events.seen


def test_a_close_in_answer_to_a_common_command_still_counts(
    memcached: MemcachedProcess, fault_proxy: Callable[[Tuple[str, int]], FaultProxy]
) -> None:
    """A close in answer to ``get`` (which every server and proxy supports) is the
    connection's failure, as before: counted against the node."""
    proxy = fault_proxy(tcp(memcached))
    events = Events()
    client = HashClient([proxy.address], retry_attempts=5, retry_timeout=60, on_event=events)
    assert client.set("k", b"v")
    proxy.set_mode("close")
    with pytest.raises(MemcacheUnexpectedCloseError) as info:
        client.get("k")
    assert not isinstance(info.value, MemcacheUnsupportedCommandError)
    assert events.count("node_failed") == 1, events.seen


@pytest.mark.timeout(30)
def test_a_keyed_call_that_waited_for_a_failing_nodes_connection_fails_fast(
    memcached_nodes: List[MemcachedProcess],
    fault_proxy: Callable[[Tuple[str, int]], FaultProxy],
) -> None:
    """A keyed call that queued for a node's only connection while the call holding it
    failed rests the node at once (NodeRestingError) instead of spending its own timeout
    there. (The checkout's fast path, taking a connection used a moment ago, skips this
    look: it is the call that waited that makes it.)"""
    import threading
    import time

    proxy = fault_proxy(tcp(memcached_nodes[0]))
    node = pymc.client.server_name(proxy.address)
    client = HashClient(
        [proxy.address, tcp(memcached_nodes[1])],
        use_pooling=True,
        max_pool_size=1,
        retry_attempts=5,
        retry_timeout=60,
        timeout=0.5,
        pool_timeout=5,
    )
    key = next(k for k in (f"wait-{i}" for i in range(200)) if client.snapshot.node_for(k) == node)
    assert client.set(key, b"v") is True
    assert client.get(key) == b"v"  # the connection is warm: the first call takes it fast
    pool = client.clients[node].client_pool
    proxy.set_mode("stall")
    errors: Dict[str, BaseException] = {}

    def call(who: str) -> None:
        try:
            client.get(key)
        except BaseException as exc:
            errors[who] = exc

    first = threading.Thread(target=call, args=("first",), daemon=True)
    first.start()
    deadline = time.monotonic() + 5
    while pool.stats()["in_use"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    second = threading.Thread(target=call, args=("second",), daemon=True)
    second.start()
    while pool.stats()["waiting"] == 0 and first.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert first.is_alive(), "the first call ended before the second queued"
    first.join(5)
    second.join(5)
    assert isinstance(errors["first"], pymc.MemcacheTimeoutError), errors
    assert isinstance(errors["second"], NodeRestingError), errors
    assert node in client.snapshot.names  # resting, not ejected
    s = pool.stats()
    assert s["in_use"] == 0 and s["waiting"] == 0, s
    proxy.set_mode("pass")
    client.close()
