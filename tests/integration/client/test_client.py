"""The blocking ``pymc.Client`` against real memcached servers (no mocks).

Sections: every command and its pymemcache 4.0 return values; a differential run against
pymemcache on the same server; TLS, auth and UNIX sockets; faults injected by the proxy
(timeouts, resets, garbage, interrupts), after which the next call must still return the
right value; oversized and large values; keys and arguments refused before anything is sent.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple, Union

import pymemcache.exceptions
import pytest
from pymemcache.client.base import Client as PmcClient
from support.faultproxy import FaultProxy
from support.helpers import Interrupt, current_sock, tcp
from support.servers import MemcachedProcess, free_port, request
from unit.options.test_client_arguments import BAD_ARGS

from pymc import (
    Client,
    KeepaliveOpts,
    MemcacheAuthenticationError,
    MemcacheClientError,
    MemcacheConnectError,
    MemcacheIllegalInputError,
    MemcacheNetworkError,
    MemcacheProtocolError,
    MemcacheServerError,
    MemcacheTimeoutError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    MemcacheUnknownError,
)
from pymc.serde import pickle_serde

ProxyFactory = Callable[[Tuple[str, int]], FaultProxy]
ServerFactory = Callable[..., MemcachedProcess]
# What set_many takes: its Mapping's key type is invariant, so a dict[str, bytes] won't do.
Values = Dict[Union[str, bytes], bytes]

MB = 1024 * 1024


@pytest.fixture
def client(memcached: MemcachedProcess) -> Iterator[Client]:
    c = Client(tcp(memcached), connect_timeout=2.0, timeout=2.0)
    yield c
    c.close()


def raw_get(server: MemcachedProcess, key: bytes) -> bytes:
    """What the server holds for ``key``, read over a raw socket (no client involved)."""
    with server.connect() as sock:
        return request(sock, b"get " + key + b"\r\n", b"END\r\n")


def ttl(client: Client, key: str) -> int:
    """The remaining time to live of ``key`` (-1: never expires), via a meta command."""
    reply = client.raw_command(f"mg {key} t")
    assert reply.startswith(b"HD t"), reply
    return int(reply[4:])


def counters(server: MemcachedProcess) -> Dict[str, int]:
    wanted: Tuple[str, ...] = ("cmd_get", "cmd_set", "cmd_touch", "get_misses")
    wanted += ("delete_misses", "delete_hits")
    wanted += ("incr_misses", "incr_hits", "decr_misses", "decr_hits", "cas_misses")
    stats = server.stats()
    return {name: int(stats[name]) for name in wanted}


# ============================================================================ storage commands


def test_set_and_get(client: Client) -> None:
    assert client.set("k", b"value") is True
    assert client.get("k") == b"value"
    assert client.get(b"k") == b"value"
    assert client.set("k", b"other") is True
    assert client.get("k") == b"other"


def test_get_miss_returns_default(client: Client) -> None:
    assert client.get("missing") is None
    assert client.get("missing", b"dflt") == b"dflt"
    sentinel = object()
    assert client.get("missing", default=sentinel) is sentinel


def test_default_serde_stores_str_and_int_as_bytes(client: Client) -> None:
    assert client.set("s", "text") is True
    assert client.set("i", 42) is True
    assert client.set("e", b"") is True
    assert client.get("s") == b"text"
    assert client.get("i") == b"42"
    assert client.get("e") == b""


def test_binary_values_round_trip(client: Client) -> None:
    value = bytes(range(256)) + b"\r\nEND\r\nVALUE x 0 1\r\n"
    assert client.set("bin", value)
    assert client.get("bin") == value
    assert client.get_many(["bin"]) == {"bin": value}


def test_expire_and_flags_reach_the_server(client: Client, memcached: MemcachedProcess) -> None:
    assert client.set("k", b"v", expire=100, flags=7)
    assert raw_get(memcached, b"k") == b"VALUE k 7 1\r\nv\r\nEND\r\n"
    assert 98 <= ttl(client, "k") <= 100
    assert client.set("gone", b"v", expire=-1)
    assert client.get("gone") is None


def test_add(client: Client) -> None:
    assert client.add("k", b"first") is True
    assert client.add("k", b"second") is False
    assert client.get("k") == b"first"


def test_replace(client: Client) -> None:
    assert client.replace("k", b"v") is False
    assert client.get("k") is None
    client.set("k", b"old")
    assert client.replace("k", b"new") is True
    assert client.get("k") == b"new"


def test_append_and_prepend(client: Client) -> None:
    assert client.append("k", b"x") is False
    assert client.prepend("k", b"x") is False
    assert client.get("k") is None
    client.set("k", b"mid")
    assert client.append("k", b"-end") is True
    assert client.prepend("k", b"start-") is True
    assert client.get("k") == b"start-mid-end"


def test_cas(client: Client) -> None:
    assert client.cas("k", b"v", 1) is None  # missing key
    client.set("k", b"v1")
    _, token = client.gets("k")
    assert client.cas("k", b"v2", token) is True
    assert client.get("k") == b"v2"
    assert client.cas("k", b"v3", token) is False  # the token is stale now
    assert client.get("k") == b"v2"


@pytest.mark.parametrize("kind", [bytes, int, str])
def test_cas_token_types(client: Client, kind: Callable[[bytes], Any]) -> None:
    client.set("k", b"v1")
    _, token = client.gets("k")
    converted = int(token) if kind is int else token.decode() if kind is str else token
    assert client.cas("k", b"v2", converted) is True
    assert client.get("k") == b"v2"


def test_set_many_returns_failed_keys(client: Client) -> None:
    assert client.set_many({"a": b"1", b"b": b"2", "c": 3}) == []
    assert client.get_many(["a", b"b", "c"]) == {"a": b"1", b"b": b"2", "c": b"3"}
    assert client.set_many({}) == []


# ============================================================================ retrieval


def test_get_many(client: Client) -> None:
    client.set("a", b"1")
    client.set("b", b"2")
    assert client.get_many(["a", "b", "missing"]) == {"a": b"1", "b": b"2"}
    assert client.get_many([]) == {}
    assert client.get_many(["missing"]) == {}
    # the keys come back as they were given (str or bytes)
    assert client.get_many([b"a", "b"]) == {b"a": b"1", "b": b"2"}
    # duplicates and generators are fine
    assert client.get_many(k for k in ["a", "a"]) == {"a": b"1"}


def test_gets(client: Client) -> None:
    assert client.gets("missing") == (None, None)
    assert client.gets("missing", b"d", b"c") == (b"d", b"c")
    client.set("k", b"v")
    value, token = client.gets("k")
    assert value == b"v"
    assert isinstance(token, bytes) and token.isdigit()
    assert client.gets("k") == (b"v", token)  # unchanged value, unchanged token
    client.set("k", b"w")
    value, token2 = client.gets("k")
    assert value == b"w" and token2 != token


def test_gets_many(client: Client) -> None:
    client.set("a", b"1")
    client.set("b", b"2")
    found = client.gets_many(["a", "b", "missing"])
    assert set(found) == {"a", "b"}
    assert found["a"] == client.gets("a")
    assert found["b"] == client.gets("b")
    assert found["a"][1] != found["b"][1]
    assert client.gets_many([]) == {}


def test_gat_sets_expiry_and_returns_value(client: Client) -> None:
    assert client.gat("missing", 100) is None
    assert client.gat("missing", 100, default=b"d") == b"d"
    client.set("k", b"v")
    assert ttl(client, "k") == -1
    assert client.gat("k", 300) == b"v"
    assert 298 <= ttl(client, "k") <= 300
    assert client.gat("k", -1) == b"v"  # returned, then expired at once
    assert client.get("k") is None


def test_gats(client: Client) -> None:
    assert client.gats("missing", 100) == (None, None)
    assert client.gats("missing", 100, b"d", b"c") == (b"d", b"c")
    client.set("k", b"v")
    value, token = client.gats("k", 500)
    assert value == b"v" and token == client.gets("k")[1]
    assert 498 <= ttl(client, "k") <= 500


# ============================================================================ other commands


def test_delete(client: Client) -> None:
    assert client.delete("k") is False
    client.set("k", b"v")
    assert client.delete("k") is True
    assert client.get("k") is None
    assert client.delete("k") is False


def test_delete_many(client: Client) -> None:
    client.set_many({"a": b"1", "b": b"2", "c": b"3"})
    assert client.delete_many(["a", "b", "missing"]) is True
    assert client.get_many(["a", "b", "c"]) == {"c": b"3"}
    assert client.delete_many([]) is True


def test_incr_decr(client: Client) -> None:
    assert client.incr("n", 1) is None
    assert client.decr("n", 1) is None
    assert client.get("n") is None
    client.set("n", 10)
    result = client.incr("n", 5)
    assert result == 15 and type(result) is int
    assert client.decr("n", 3) == 12
    assert client.decr("n", 100) == 0  # memcached stops at 0
    assert client.incr("n", 2**64 - 1) == 2**64 - 1
    assert client.incr("n", 1) == 0  # and wraps at 64 bits
    assert int(client.get("n")) == 0  # memcached pads a shrunk number with spaces


def test_incr_of_non_numeric_value_is_a_client_error(client: Client) -> None:
    client.set("text", b"abc")
    client.set("other", b"fine")
    with pytest.raises(MemcacheClientError):
        client.incr("text", 1)
    with pytest.raises(MemcacheClientError):
        client.decr("text", 1)
    # the connection is still in step: the next replies are the right ones
    assert client.get("other") == b"fine"
    assert client.get("text") == b"abc"


def test_touch(client: Client) -> None:
    assert client.touch("missing", 10) is False
    client.set("k", b"v")
    assert client.touch("k", 200) is True
    assert 198 <= ttl(client, "k") <= 200
    assert client.touch("k") is True  # expire=0: never
    assert ttl(client, "k") == -1
    assert client.touch("k", -1) is True
    assert client.get("k") is None


def test_stats_are_typed(client: Client, memcached: MemcachedProcess) -> None:
    before = client.stats()
    client.set("a", b"1")
    client.set("b", b"2")
    stats = client.stats()
    assert stats[b"pid"] == memcached.proc.pid  # type: ignore[union-attr]
    assert stats[b"cmd_set"] == before[b"cmd_set"] + 2
    assert isinstance(stats[b"version"], bytes) and stats[b"version"] == client.version()
    assert isinstance(stats[b"rusage_user"], float)
    assert isinstance(stats[b"rusage_system"], float)
    assert isinstance(stats[b"uptime"], int) and isinstance(stats[b"curr_connections"], int)
    assert all(isinstance(name, bytes) for name in stats)


def test_stats_settings_and_slabs(client: Client) -> None:
    settings = client.stats("settings")
    assert settings[b"item_size_max"] == MB
    assert settings[b"maxbytes"] == 64 * MB
    assert settings[b"growth_factor"] == 1.25
    assert settings[b"inter"] == b"127.0.0.1"
    client.set("k", b"v")
    slabs = client.stats("slabs")
    assert slabs[b"active_slabs"] >= 1
    chunk_sizes = [v for k, v in slabs.items() if k.endswith(b":chunk_size")]
    assert chunk_sizes and all(isinstance(v, int) for v in chunk_sizes)
    assert client.stats(b"settings") == settings  # a bytes sub-command works too


def test_cache_memlimit(client: Client) -> None:
    try:
        assert client.cache_memlimit(100) is True
        assert client.stats("settings")[b"maxbytes"] == 100 * MB
    finally:
        assert client.cache_memlimit(64) is True
    assert client.stats("settings")[b"maxbytes"] == 64 * MB


def test_version(client: Client) -> None:
    version = client.version()
    assert isinstance(version, bytes)
    assert version == client.stats()[b"version"]
    assert version.split(b".")[0].isdigit()


def test_verbosity(client: Client) -> None:
    try:
        assert client.verbosity(1) is True
        assert client.stats("settings")[b"verbosity"] == 1
    finally:
        assert client.verbosity(0) is True
    assert client.stats("settings")[b"verbosity"] == 0
    assert client.verbosity(0, noreply=True) is True
    assert client.version()  # still in step


def test_flush_all(client: Client) -> None:
    client.set_many({"a": b"1", "b": b"2"})
    assert client.flush_all() is True
    assert client.get_many(["a", "b"]) == {}
    client.set("c", b"3")
    assert client.flush_all(noreply=True) is True
    assert client.get("c") is None


def test_quit_then_next_call_reconnects(client: Client, memcached: MemcachedProcess) -> None:
    client.set("k", b"v")
    old = client.sock
    assert old is not None
    # pymemcache 4.0's quit(), shutdown() and close() return None: checked on purpose
    assert client.quit() is None  # type: ignore[func-returns-value]
    assert client.sock is None and old.fileno() == -1
    opened = int(memcached.stats()["total_connections"])
    assert client.get("k") == b"v"
    # one new connection for the client, one for this stats() call
    assert int(memcached.stats()["total_connections"]) == opened + 2
    assert client.quit() is None  # type: ignore[func-returns-value]
    # quitting an idle client is harmless
    assert client.quit() is None  # type: ignore[func-returns-value]


def test_shutdown_refused_without_enable_shutdown(
    client: Client, memcached: MemcachedProcess
) -> None:
    client.set("k", b"v")
    with pytest.raises(MemcacheUnknownCommandError):
        client.shutdown()
    assert memcached.is_running()
    assert client.get("k") == b"v"


@pytest.mark.parametrize("graceful", [False, True])
def test_shutdown_stops_the_server(new_memcached: ServerFactory, graceful: bool) -> None:
    server = new_memcached("--enable-shutdown")
    c = Client(tcp(server), connect_timeout=1.0, timeout=2.0)
    assert c.set("k", b"v")
    assert c.shutdown(graceful=graceful) is None  # type: ignore[func-returns-value]
    assert server.proc is not None and server.proc.wait(5.0) is not None
    assert c.sock is None
    with pytest.raises(MemcacheConnectError):
        c.get("k")


def test_raw_command(client: Client) -> None:
    assert client.raw_command("version") == b"VERSION " + client.version()
    client.set("k", b"v")
    assert client.raw_command(b"get k", b"END\r\n") == b"VALUE k 0 1\r\nv\r\n"
    assert client.raw_command("get k", "END\r\n") == b"VALUE k 0 1\r\nv\r\n"
    with pytest.raises(MemcacheUnknownCommandError):
        client.raw_command("no_such_command")
    assert client.get("k") == b"v"
    with pytest.raises(MemcacheIllegalInputError):
        client.raw_command("get k\r\nflush_all")
    assert client.get("k") == b"v"


def test_close_and_reconnect(client: Client) -> None:
    client.set("k", b"v")
    sock = client.sock
    assert sock is not None
    assert client.close() is None  # type: ignore[func-returns-value]
    assert client.sock is None and sock.fileno() == -1
    client.close()  # twice is fine
    assert client.get("k") == b"v"
    assert current_sock(client) is not None and current_sock(client) is not sock


def test_aliases(client: Client) -> None:
    assert client.set_multi({"a": b"1", "b": b"2"}) == []
    assert client.get_multi(["a", "b"]) == {"a": b"1", "b": b"2"}
    multi = client.gets_multi(["a", "b"])
    assert multi == client.gets_many(["a", "b"]) and multi["a"][0] == b"1"
    assert client.delete_multi(["a"]) is True
    assert client.get_multi(["a", "b"]) == {"b": b"2"}
    sock = client.sock
    client.disconnect_all()
    assert client.sock is None and sock is not None and sock.fileno() == -1
    assert client.get("b") == b"2"


def test_mapping_sugar(client: Client) -> None:
    with pytest.raises(KeyError):
        client["k"]
    client["k"] = b"v"
    assert client["k"] == b"v"
    assert client.get("k") == b"v"
    del client["k"]
    assert client.get("k") is None
    del client["k"]  # deleting a missing key is not an error
    with pytest.raises(KeyError):
        client["k"]


def test_context_manager(memcached: MemcachedProcess) -> None:
    with Client(tcp(memcached)) as c:
        assert c.set("k", b"v")
        sock = c.sock
        assert sock is not None
    assert c.sock is None and sock.fileno() == -1
    with pytest.raises(ZeroDivisionError), Client(tcp(memcached)) as c2:
        c2.get("k")
        sock = c2.sock
        1 / 0  # noqa: B018
    assert c2.sock is None and sock is not None and sock.fileno() == -1


def test_key_prefix(memcached: MemcachedProcess) -> None:
    c = Client(tcp(memcached), key_prefix=b"app:")
    plain = Client(tcp(memcached))
    try:
        assert c.set("k", b"v")
        assert raw_get(memcached, b"app:k") == b"VALUE app:k 0 1\r\nv\r\nEND\r\n"
        assert raw_get(memcached, b"k") == b"END\r\n"
        assert plain.get("app:k") == b"v"
        assert c.get("k") == b"v"
        c.set("j", b"w")
        assert c.get_many(["k", "j", "x"]) == {"k": b"v", "j": b"w"}
        assert set(c.gets_many(["k", "j"])) == {"k", "j"}
        assert c.incr("missing", 1) is None and c.set("n", 1) and c.incr("n", 1) == 2
        assert plain.get("app:n") == b"2"
        assert c.delete("k") is True
        assert plain.get("app:k") is None
        assert Client(tcp(memcached), key_prefix="str:").set("k", b"s")
        assert plain.get("str:k") == b"s"
    finally:
        c.close()
        plain.close()


def test_default_noreply_is_false(client: Client) -> None:
    assert client.default_noreply is False
    client.set("k", b"v")
    assert client.add("k", b"other") is False  # a reply was read, not assumed
    assert client.replace("missing", b"x") is False


def test_noreply_variants(client: Client) -> None:
    assert client.set("k", b"v", noreply=True) is True
    assert client.get("k") == b"v"
    assert client.add("k", b"other", noreply=True) is True  # not stored, but not known
    assert client.replace("missing", b"x", noreply=True) is True
    assert client.append("k", b"+", noreply=True) is True
    assert client.prepend("k", b"-", noreply=True) is True
    assert client.cas("k", b"cas", b"1", noreply=True) is True  # stale token
    assert client.get_many(["k", "missing"]) == {"k": b"-v+"}
    client.set("n", 5)
    assert client.incr("n", 2, noreply=True) is None
    assert client.decr("n", 1, noreply=True) is None
    assert client.get("n") == b"6"
    assert client.touch("k", 100, noreply=True) is True
    assert 98 <= ttl(client, "k") <= 100
    assert client.delete("k", noreply=True) is True
    assert client.get("k") is None
    assert client.set_many({"a": b"1", "b": b"2"}, noreply=True) == []
    assert client.get_many(["a", "b"]) == {"a": b"1", "b": b"2"}
    assert client.delete_many(["a", "b"], noreply=True) is True
    assert client.get_many(["a", "b"]) == {}


def test_default_noreply_true(memcached: MemcachedProcess) -> None:
    c = Client(tcp(memcached), default_noreply=True)
    try:
        assert c.default_noreply is True
        assert c.set("k", b"v") is True
        assert c.add("k", b"other") is True  # no reply was read
        assert c.delete("missing") is True
        assert c.get("k") == b"v"
        assert c.set("k", b"w", noreply=False) is True
        assert c.add("k", b"x", noreply=False) is False
    finally:
        c.close()


def test_errors_of_noreply_commands_never_shift_replies(client: Client) -> None:
    client.set("text", b"abc")
    client.set("k2", b"v2")
    assert client.incr("text", 1, noreply=True) is None  # the server refuses it silently
    assert client.set("big", b"x" * (2 * MB), noreply=True) is True  # refused too
    assert client.get("k2") == b"v2"
    assert client.get("big") is None
    assert client.incr("missing", 1) is None


# ============================================================================ differential


def _normalize(value: Any) -> Any:
    """Replace cas tokens (which differ between runs) by a marker of their shape."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], bytes):
        return (value[0], "cas" if value[1].isdigit() else value[1])
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    return value


def _pymemcache_name(exc: Exception) -> Any:
    """The names of the classes of ``exc`` that pymemcache also has: pymc may raise a
    subclass, but the ``except`` clauses written for pymemcache must still catch it."""
    return frozenset(
        cls.__name__ for cls in type(exc).__mro__ if hasattr(pymemcache.exceptions, cls.__name__)
    )


def _same(ours: Tuple[str, Any], theirs: Tuple[str, Any]) -> bool:
    (_, got), (_, expected) = ours, theirs
    if isinstance(got, tuple) and got[:1] == ("raised",) and isinstance(expected, tuple):
        return expected[:1] == ("raised",) and expected[1] <= got[1]
    return ours == theirs


def _scenario(c: Any) -> List[Tuple[str, Any]]:
    out: List[Tuple[str, Any]] = []

    def run(name: str, call: Callable[[], Any]) -> Any:
        try:
            result = call()
        except Exception as exc:
            out.append((name, ("raised", _pymemcache_name(exc))))
            return None
        out.append((name, _normalize(result)))
        return result

    run("get-miss", lambda: c.get("a"))
    run("get-miss-default", lambda: c.get("a", b"dflt"))
    run("set", lambda: c.set("a", b"1"))
    run("set-str", lambda: c.set("s", "text"))
    run("set-int", lambda: c.set("i", 42))
    run("set-flags-expire", lambda: c.set("f", b"x", expire=100, flags=3))
    run("get", lambda: (c.get("a"), c.get("s"), c.get("i"), c.get("f")))
    run("add-exists", lambda: c.add("a", b"x"))
    run("add-new", lambda: c.add("b", b"2"))
    run("replace-miss", lambda: c.replace("zz", b"x"))
    run("replace-hit", lambda: c.replace("a", b"10"))
    run("append", lambda: c.append("a", b"0"))
    run("append-miss", lambda: c.append("zz", b"x"))
    run("prepend", lambda: c.prepend("a", b"9"))
    run("prepend-miss", lambda: c.prepend("zz", b"x"))
    run("get_many", lambda: c.get_many(["a", "b", "zz", b"s"]))
    run("get_many-empty", lambda: c.get_many([]))
    run("gets-miss", lambda: c.gets("zz"))
    run("gets-miss-default", lambda: c.gets("zz", b"d", b"c"))
    token = run("gets", lambda: c.gets("a"))[1]
    run("cas-ok", lambda: c.cas("a", b"new", token))
    run("cas-stale", lambda: c.cas("a", b"newer", token))
    run("cas-miss", lambda: c.cas("zz", b"x", token))
    run("gets_many", lambda: c.gets_many(["a", "b", "zz"]))
    run("incr", lambda: c.incr("i", 8))
    run("decr-floor", lambda: c.decr("i", 100))
    run("incr-miss", lambda: c.incr("zz", 1))
    run("decr-miss", lambda: c.decr("zz", 1))
    run("incr-non-numeric", lambda: c.incr("s", 1))
    run("touch", lambda: c.touch("a", 100))
    run("touch-miss", lambda: c.touch("zz", 100))
    run("delete", lambda: c.delete("b"))
    run("delete-miss", lambda: c.delete("b"))
    run("delete_many", lambda: c.delete_many(["a", "zz"]))
    run("set_many", lambda: c.set_many({"m1": b"1", "m2": b"2"}))
    run("set_multi", lambda: c.set_multi({"m3": b"3"}))
    run("get_multi", lambda: c.get_multi(["m1", "m2", "m3", "zz"]))
    run("noreply-set", lambda: c.set("nr", b"v", noreply=True))
    run("noreply-add", lambda: c.add("nr", b"w", noreply=True))
    run("noreply-delete", lambda: c.delete("zz", noreply=True))
    run("noreply-incr", lambda: c.incr("i", 1, noreply=True))
    run("after-noreply", lambda: (c.get("nr"), c.get("i")))
    run("getitem", lambda: c["m1"])
    run("getitem-miss", lambda: c["zz"])
    run("version-type", lambda: type(c.version()).__name__)
    run("raw_command", lambda: c.raw_command("get m1", "END\r\n"))
    run("raw_command-version", lambda: c.raw_command("version"))
    run("cache_memlimit", lambda: c.cache_memlimit(64))
    run("shutdown", lambda: c.shutdown())
    run("bad-key-space", lambda: c.get("a b"))
    run("bad-key-long", lambda: c.set("k" * 251, b"v"))
    run("bad-key-nonascii", lambda: c.get("clé"))
    run("quit", lambda: c.quit())
    run("after-quit", lambda: c.get("m2"))
    run("flush_all", lambda: c.flush_all())
    run("after-flush", lambda: c.get_many(["m1", "m2", "m3"]))
    run("close", lambda: c.close())
    run("after-close", lambda: c.set("z", b"z"))
    return out


@pytest.mark.parametrize("prefix", [b"", b"pfx:"])
def test_differential_against_pymemcache(memcached: MemcachedProcess, prefix: bytes) -> None:
    ours = Client(tcp(memcached), timeout=2.0, key_prefix=prefix)
    theirs = PmcClient(tcp(memcached), timeout=2.0, default_noreply=False, key_prefix=prefix)
    try:
        memcached.flush_all()
        got = _scenario(ours)
        memcached.flush_all()
        expected = _scenario(theirs)
    finally:
        ours.close()
        theirs.close()
    assert [m for m, r in zip(got, expected) if not _same(m, r)] == []
    assert len(got) == len(expected)


def test_stats_keys_and_types_match_pymemcache(client: Client, memcached: MemcachedProcess) -> None:
    theirs = PmcClient(tcp(memcached), timeout=2.0, default_noreply=False)
    try:
        client.set("k", b"v")
        for args in [(), ("settings",), ("slabs",), ("items",)]:
            mine = client.stats(*args)
            reference = theirs.stats(*args)
            assert mine.keys() == reference.keys(), args
            assert {k: type(v) for k, v in mine.items()} == {
                k: type(v) for k, v in reference.items()
            }, args
        settings = client.stats("settings")
        assert settings == theirs.stats("settings")  # static values: equal, not just typed
    finally:
        theirs.close()


# ============================================================================ TLS, auth, UNIX


def test_tls_round_trip(memcached_tls: MemcachedProcess) -> None:
    ctx = memcached_tls.client_ssl_context()
    with Client(tcp(memcached_tls), tls_context=ctx, timeout=2.0) as c:
        assert c.set("tls-k", b"v" * 100_000)
        assert c.get("tls-k") == b"v" * 100_000
        assert c.get_many(["tls-k", "missing"]) == {"tls-k": b"v" * 100_000}
        assert c.stats()[b"pid"] == memcached_tls.proc.pid  # type: ignore[union-attr]
        assert c.delete("tls-k") is True
        assert c.tls_context is ctx


def test_tls_with_an_untrusted_certificate_fails_to_connect(
    memcached_tls: MemcachedProcess,
) -> None:
    with Client(tcp(memcached_tls), tls_context=ssl.create_default_context(), timeout=2.0) as c:
        with pytest.raises(MemcacheConnectError) as info:
            c.get("k")
        assert isinstance(info.value.__cause__, ssl.SSLError)
        assert c.sock is None


def test_auth_with_right_credentials(memcached_auth: MemcachedProcess) -> None:
    user, password = memcached_auth.username, memcached_auth.password
    with Client(tcp(memcached_auth), username=user, password=password, timeout=2.0) as c:
        assert c.set("auth-k", b"v")
        assert c.get("auth-k") == b"v"
        c.close()
        assert c.get("auth-k") == b"v"  # authenticates again after reconnecting
        assert c.delete("auth-k") is True


def test_auth_with_wrong_password(memcached_auth: MemcachedProcess) -> None:
    user, password = memcached_auth.username, memcached_auth.password
    with Client(tcp(memcached_auth), username=user, password=password) as good:
        good.set("auth-k", b"secret")
    with Client(tcp(memcached_auth), username=user, password="wrong", timeout=2.0) as c:
        for _ in range(2):  # and again: never a value
            with pytest.raises(MemcacheAuthenticationError) as info:
                c.get("auth-k")
            assert isinstance(info.value, MemcacheClientError)
            assert c.sock is None
        with pytest.raises(MemcacheAuthenticationError):
            c.set("auth-k", b"overwritten")
    with Client(tcp(memcached_auth), username=user, password=password) as good:
        assert good.get("auth-k") == b"secret"
        good.delete("auth-k")


def test_auth_without_credentials_never_returns_a_value(memcached_auth: MemcachedProcess) -> None:
    user, password = memcached_auth.username, memcached_auth.password
    with Client(tcp(memcached_auth), username=user, password=password) as good:
        good.set("auth-k", b"secret")
    with Client(tcp(memcached_auth), timeout=2.0) as c:
        with pytest.raises(MemcacheClientError):
            c.get("auth-k")
        with pytest.raises(MemcacheClientError):
            c.get_many(["auth-k"])
        with pytest.raises(MemcacheClientError):
            c.gets("auth-k")
        with pytest.raises(MemcacheClientError):
            c.set("auth-k", b"overwritten")
    with Client(tcp(memcached_auth), username=user, password=password) as good:
        assert good.get("auth-k") == b"secret"
        good.delete("auth-k")


@pytest.mark.parametrize("form", ["path", "unix:path"])
def test_unix_socket_round_trip(memcached_unix: MemcachedProcess, form: str) -> None:
    path = memcached_unix.server
    with Client(path if form == "path" else "unix:" + path, timeout=2.0) as c:
        assert c.set("unix-k", b"v")
        assert c.get("unix-k") == b"v"
        assert c.get_many(["unix-k", "missing"]) == {"unix-k": b"v"}
        assert c.stats()[b"pid"] == memcached_unix.proc.pid  # type: ignore[union-attr]
        assert c.delete("unix-k") is True


# ============================================================================ faults


@pytest.fixture
def seeded(memcached: MemcachedProcess) -> MemcachedProcess:
    """Distinct keys and values, so a stale reply could not pass for the right one."""
    with Client(tcp(memcached)) as c:
        c.set_many({"k1": b"value-one", "k2": b"value-two", "n1": 100, "n2": 200})
        c.set("large", b"L" * 300_000)
    return memcached


@pytest.fixture
def proxy(seeded: MemcachedProcess, fault_proxy: ProxyFactory) -> FaultProxy:
    return fault_proxy(tcp(seeded))


def via(proxy: FaultProxy, **kw: Any) -> Client:
    kw.setdefault("timeout", 0.3)
    kw.setdefault("connect_timeout", 1.0)
    return Client(proxy.address, **kw)


# A first command (which fails) and a second command with the value it must return.
FIRST: Dict[str, Callable[[Client], Any]] = {
    "get": lambda c: c.get("k1"),
    "get_many": lambda c: c.get_many(["k1", "n1"]),
    "gets": lambda c: c.gets("k1"),
    "incr": lambda c: c.incr("n1", 1),
    "set": lambda c: c.set("k3", b"value-three"),
    "version": lambda c: c.version(),
}


def check_next_calls(c: Client) -> None:
    assert c.incr("n2", 1) == 201
    assert c.get("k2") == b"value-two"
    assert c.get_many(["k2", "k1", "missing"]) == {"k1": b"value-one", "k2": b"value-two"}
    assert c.gets("k2")[0] == b"value-two"


@pytest.mark.parametrize("first", ["get", "incr", "get_many"])
def test_timeout_mid_reply_then_next_call_is_right(proxy: FaultProxy, first: str) -> None:
    c = via(proxy, timeout=0.2)
    assert c.version()  # connected
    proxy.set_mode("delay", seconds=0.5)
    with pytest.raises(MemcacheTimeoutError) as info:
        FIRST[first](c)
    exc = info.value
    assert isinstance(exc, TimeoutError)
    assert isinstance(exc, socket.timeout)
    assert isinstance(exc, OSError)
    assert isinstance(exc, MemcacheNetworkError)
    assert c.sock is None
    time.sleep(0.5)  # the delayed reply has arrived by now (it would sit in a reused socket)
    proxy.set_mode("pass")
    check_next_calls(c)


def test_stall_times_out_then_next_call_is_right(proxy: FaultProxy) -> None:
    c = via(proxy, timeout=0.2)
    assert c.get("k1") == b"value-one"
    proxy.set_mode("stall")
    started = time.monotonic()
    with pytest.raises(MemcacheTimeoutError):
        c.incr("n1", 1)
    assert time.monotonic() - started < 1.5
    assert c.sock is None
    proxy.set_mode("pass")
    check_next_calls(c)
    assert c.get("n1") == b"101"  # the server did run the stalled incr


class InterruptingSocket:
    """Wraps a connected socket; raises :class:`Interrupt` at the chosen recv or send."""

    def __init__(self, real: socket.socket, recv_at: int = 0, send_fraction: float = 0.0):
        self.real = real
        self.recv_at = recv_at
        self.send_fraction = send_fraction
        self.recvs = 0

    def recv(self, size: int) -> bytes:
        self.recvs += 1
        if self.recvs == self.recv_at:
            time.sleep(0.05)  # the reply is now in the kernel's buffer of this socket
            raise Interrupt()
        return self.real.recv(size)

    def sendall(self, data: bytes) -> None:
        if self.send_fraction:
            self.real.sendall(data[: int(len(data) * self.send_fraction)])
            raise Interrupt()
        self.real.sendall(data)

    def send(self, data: bytes) -> int:
        if self.send_fraction:
            self.real.sendall(data[: int(len(data) * self.send_fraction)])
            raise Interrupt()
        return self.real.send(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.mark.parametrize(
    ("first", "recv_at"),
    [("incr", 1), ("get", 1), ("get_many", 1), ("large", 1), ("large", 2), ("large", 4)],
)
def test_base_exception_mid_reply_closes_the_socket(
    seeded: MemcachedProcess, first: str, recv_at: int
) -> None:
    c = Client(tcp(seeded), timeout=1.0)
    assert c.version()
    real = c.sock
    assert real is not None
    c.sock = InterruptingSocket(real, recv_at=recv_at)  # type: ignore[assignment]
    command = FIRST.get(first) or (lambda c: c.get("large"))
    with pytest.raises(Interrupt):
        command(c)
    assert c.sock is None
    assert real.fileno() == -1
    check_next_calls(c)
    assert c.get("large") == b"L" * 300_000


def test_base_exception_mid_send_never_stores_a_torn_value(seeded: MemcachedProcess) -> None:
    c = Client(tcp(seeded), timeout=1.0)
    assert c.version()
    real = c.sock
    assert real is not None
    c.sock = InterruptingSocket(real, send_fraction=0.5)  # type: ignore[assignment]
    with pytest.raises(Interrupt):
        c.set("k1", b"X" * 1000)
    assert c.sock is None and real.fileno() == -1
    # were the socket reused, this request would be taken as the rest of the set's data
    check_next_calls(c)
    assert c.get("k1") == b"value-one"


def test_base_exception_through_socket_module(seeded: MemcachedProcess) -> None:
    created: List[socket.socket] = []

    class Module:
        """A ``socket_module`` whose first socket is interrupted at its first recv."""

        def __getattr__(self, name: str) -> Any:
            return getattr(socket, name)

        def socket(self, *args: Any) -> Any:
            sock = socket.socket(*args)
            created.append(sock)
            return InterruptingSocket(sock, recv_at=1 if len(created) == 1 else 0)

    c = Client(tcp(seeded), socket_module=Module(), timeout=1.0)
    with pytest.raises(Interrupt):
        c.incr("n1", 1)
    assert c.sock is None and len(created) == 1 and created[0].fileno() == -1
    check_next_calls(c)
    assert len(created) == 2
    c.close()


GARBAGE = [
    b"\x00\xde\xad\xbe\xef GARBAGE \xff\xfe\r\n",
    b"VALUE k1 0 5\r\nabc\r\nEND\r\n",  # data block of the wrong length
    b"VALUE k1 zero 1\r\nx\r\nEND\r\n",
    b"HELLO\r\n",
    b"x" * 10_000,  # a line with no end
]


@pytest.mark.parametrize("data", GARBAGE, ids=range(len(GARBAGE)))
@pytest.mark.parametrize("first", ["get", "get_many", "gets", "incr", "set", "version"])
def test_garbage_reply_raises_protocol_error(proxy: FaultProxy, first: str, data: bytes) -> None:
    c = via(proxy)
    assert c.version()
    proxy.set_mode("garbage", data=data)
    with pytest.raises(MemcacheProtocolError) as info:
        FIRST[first](c)
    assert isinstance(info.value, MemcacheUnknownError)
    assert c.sock is None
    proxy.set_mode("pass")
    check_next_calls(c)


@pytest.mark.parametrize(
    ("command", "data"),
    [
        ("incr", b"STORED\r\n"),
        ("set", b"END\r\n"),
        ("set", b"DELETED\r\n"),
        ("version", b"OK\r\n"),
        ("get", b"STORED\r\n"),
        ("gets", b"VALUE k1 0 1\r\nx\r\nEND\r\n"),  # no cas token
    ],
)
def test_well_formed_reply_of_the_wrong_kind_raises(
    proxy: FaultProxy, command: str, data: bytes
) -> None:
    c = via(proxy)
    assert c.version()
    proxy.set_mode("garbage", data=data)
    with pytest.raises(MemcacheProtocolError):
        FIRST[command](c)
    assert c.sock is None
    proxy.set_mode("pass")
    check_next_calls(c)


@pytest.mark.parametrize(
    "command",
    [
        lambda c: c.get("k1"),
        lambda c: c.get_many(["k1", "k2"]),
        lambda c: c.gets("k1"),
        lambda c: c.gets_many(["k1"]),
        lambda c: c.gat("k1", 10),
        lambda c: c["k1"],
    ],
    ids=["get", "get_many", "gets", "gets_many", "gat", "getitem"],
)
def test_reply_for_a_key_not_asked_for_raises(
    proxy: FaultProxy, command: Callable[[Client], Any]
) -> None:
    c = via(proxy)
    assert c.version()
    proxy.set_mode("garbage", data=b"VALUE other 0 1\r\nx\r\nEND\r\n")
    with pytest.raises(MemcacheProtocolError):
        command(c)
    assert c.sock is None
    proxy.set_mode("pass")
    check_next_calls(c)


def test_duplicate_values_in_a_reply_raise(proxy: FaultProxy) -> None:
    c = via(proxy)
    assert c.version()
    proxy.set_mode("garbage", data=b"VALUE k1 0 1\r\nx\r\nVALUE k1 0 1\r\ny\r\nEND\r\n")
    with pytest.raises(MemcacheProtocolError):
        c.get("k1")
    with pytest.raises(MemcacheProtocolError):
        c.get_many(["k1", "k2"])
    proxy.set_mode("pass")
    check_next_calls(c)


@pytest.mark.parametrize("first", ["get", "incr", "set"])
def test_reset_is_a_network_error(proxy: FaultProxy, first: str) -> None:
    c = via(proxy)
    assert c.version()
    proxy.set_mode("reset")
    with pytest.raises(MemcacheNetworkError) as info:
        FIRST[first](c)
    assert isinstance(info.value, OSError)
    assert c.sock is None
    proxy.set_mode("pass")
    check_next_calls(c)


@pytest.mark.parametrize("first", ["get", "incr", "set", "version"])
def test_close_is_an_unexpected_close(proxy: FaultProxy, first: str) -> None:
    c = via(proxy)
    assert c.version()
    proxy.set_mode("close")
    with pytest.raises(MemcacheUnexpectedCloseError) as info:
        FIRST[first](c)
    assert isinstance(info.value, MemcacheNetworkError) and isinstance(info.value, OSError)
    assert c.sock is None
    proxy.set_mode("pass")
    check_next_calls(c)


@pytest.mark.parametrize("nbytes", [1, 10, 25, 1000, 299_000])
def test_close_mid_reply_is_an_unexpected_close(proxy: FaultProxy, nbytes: int) -> None:
    c = via(proxy, timeout=1.0)
    assert c.version()
    proxy.set_mode("close_after", nbytes=nbytes)
    with pytest.raises(MemcacheUnexpectedCloseError):
        c.get("large")
    assert c.sock is None
    proxy.set_mode("pass")
    check_next_calls(c)
    assert c.get("large") == b"L" * 300_000


def test_close_mid_multi_get_reply(proxy: FaultProxy) -> None:
    c = via(proxy, timeout=1.0)
    assert c.version()
    proxy.set_mode("close_after", nbytes=len(b"VALUE k1 0 9\r\nvalue-one\r\n") + 3)
    with pytest.raises(MemcacheUnexpectedCloseError):
        c.get_many(["k1", "k2"])
    proxy.set_mode("pass")
    check_next_calls(c)


def test_connection_refused_then_recovery(new_memcached: ServerFactory) -> None:
    server = new_memcached()
    c = Client(tcp(server), connect_timeout=1.0, timeout=1.0)
    assert c.set("k", b"v")
    server.kill()
    with pytest.raises(MemcacheNetworkError):  # the old connection is dead
        c.get("k")
    for _ in range(2):
        with pytest.raises(MemcacheConnectError) as info:
            c.get("k")
        assert isinstance(info.value, MemcacheNetworkError) and isinstance(info.value, OSError)
        assert c.sock is None
    server.start()  # same port, empty
    assert c.get("k") is None
    assert c.set("k", b"again") and c.get("k") == b"again"
    c.close()


def test_connect_to_a_port_nobody_listens_on() -> None:
    c = Client(("127.0.0.1", free_port()), connect_timeout=1.0)
    for call in (lambda: c.get("k"), lambda: c.set("k", b"v"), c.version, c.stats):
        with pytest.raises(MemcacheConnectError):
            call()


def test_upstream_down_behind_proxy(
    new_memcached: ServerFactory, fault_proxy: ProxyFactory
) -> None:
    server = new_memcached()
    proxy = fault_proxy(tcp(server))
    c = via(proxy)
    server.kill()
    with pytest.raises(MemcacheNetworkError):
        c.get("k")
    server.start()
    assert c.set("k", b"v") and c.get("k") == b"v"


# ---------------------------------------------------------------------------- ignore_exc


def test_ignore_exc_on_a_dead_server() -> None:
    c = Client(("127.0.0.1", free_port()), ignore_exc=True, connect_timeout=1.0)
    assert c.get("k") is None
    assert c.get("k", b"dflt") == b"dflt"
    assert c.get_many(["a", "b"]) == {}
    assert c.gets("k") == (None, None)
    assert c.gets("k", b"d", b"c") == (b"d", b"c")
    assert c.gets_many(["a"]) == {}
    assert c.gat("k", 10, default=b"d") == b"d"
    assert c.gats("k", 10) == (None, None)
    with pytest.raises(KeyError):
        c["k"]
    # writes still raise, as in pymemcache
    with pytest.raises(MemcacheConnectError):
        c.set("k", b"v")
    # and a bad key is the caller's mistake, never a miss
    for call in (
        lambda: c.get("a b"),
        lambda: c.get_many(["ok", "a b"]),
        lambda: c.gets("a\r\nb"),
        lambda: c.gets_many(["a\x00"]),
        lambda: c.gat("k" * 251, 1),
    ):
        with pytest.raises(MemcacheIllegalInputError):
            call()


@pytest.mark.parametrize("mode", ["garbage", "stall", "reset", "close", "delay"])
def test_ignore_exc_on_faults_gives_misses_never_wrong_values(proxy: FaultProxy, mode: str) -> None:
    c = via(proxy, ignore_exc=True, timeout=0.2)
    assert c.get("k1") == b"value-one"
    params: Dict[str, Dict[str, Any]] = {
        "delay": {"seconds": 0.4},
        "garbage": {"data": b"VALUE other 0 1\r\nx\r\nEND\r\n"},
    }
    proxy.set_mode(mode, **params.get(mode, {}))
    assert c.get("k1") is None
    assert c.get("k1", b"d") == b"d"
    assert c.get_many(["k1", "k2"]) == {}
    assert c.gets("k1") == (None, None)
    with pytest.raises(MemcacheIllegalInputError):
        c.get("bad key")
    if mode == "delay":
        time.sleep(0.4)  # let the delayed replies arrive
    proxy.set_mode("pass")
    check_next_calls(c)


# ============================================================================ sizes


def test_oversized_value_is_a_server_error_and_client_stays_usable(client: Client) -> None:
    assert client.set("k", b"before")
    with pytest.raises(MemcacheServerError):
        client.set("big", b"x" * (2 * MB))
    assert client.get("big") is None
    assert client.set("k2", b"after") is True
    assert client.get_many(["k", "k2"]) == {"k": b"before", "k2": b"after"}
    with pytest.raises(MemcacheServerError):
        client.set("k", b"y" * (2 * MB))
    assert client.incr("missing", 1) is None


def test_set_many_with_one_oversized_value(client: Client) -> None:
    values: Values = {"a": b"1", "big": b"x" * (2 * MB), "c": b"3", "d": b"4" * 1000}
    with pytest.raises(MemcacheServerError) as info:
        client.set_many(values)
    assert "big" in str(info.value)
    assert client.get_many(list(values)) == {"a": b"1", "c": b"3", "d": b"4" * 1000}
    assert client.set("e", b"5") and client.get("e") == b"5"


def test_large_value_round_trip(client: Client) -> None:
    value = bytes(range(256)) * (900_000 // 256)
    assert len(value) > 890_000
    assert client.set("large", value)
    assert client.get("large") == value
    got, token = client.gets("large")
    assert got == value and client.cas("large", value[::-1], token) is True
    assert client.get_many(["large", "missing"]) == {"large": value[::-1]}
    assert client.gat("large", 100) == value[::-1]


def test_get_many_of_1000_keys(client: Client) -> None:
    # long keys: the request is ~200 KB, sent in several pipelined passes
    keys = [f"{i:04d}-" + "k" * 200 for i in range(1000)]
    values: Values = {key: key[:4].encode() * 500 for key in keys}
    assert client.set_many(values) == []
    missing = [f"missing-{i}-" + "m" * 200 for i in range(200)]
    wanted = [k for pair in zip(keys, missing + keys[200:]) for k in pair]
    assert client.get_many(wanted) == values
    found = client.gets_many(keys)
    assert {k: v for k, (v, _) in found.items()} == values
    assert len({token for _, token in found.values()}) == 1000
    assert client.get("k2") is None  # still in step


def test_set_many_and_delete_many_of_5000_keys(client: Client, memcached: MemcachedProcess) -> None:
    values: Values = {f"key-{i}": f"value-{i}-".encode() * 20 for i in range(5000)}
    before = int(memcached.stats()["cmd_set"])
    assert client.set_many(values) == []
    assert int(memcached.stats()["cmd_set"]) == before + 5000
    assert client.get_many(list(values)) == values
    assert client.delete_many(list(values)) is True
    assert client.get_many(list(values)) == {}
    assert client.set_many(values, noreply=True) == []
    assert client.get_many(list(values)) == values
    assert client.delete_many(list(values), noreply=True) is True
    assert client.get_many(list(values)) == {}


# ============================================================================ refused input


BAD_KEYS = {
    "space": "a b",
    "crlf-injection": "a\r\nflush_all",
    "lf": "a\nb",
    "tab": "a\tb",
    "nul": "a\x00b",
    "del": "a\x7fb",
    "bytes-space": b"a b",
    "empty": "",
    "251": "k" * 251,
    "251-bytes": b"k" * 251,
    "non-ascii": "clé",
    "int": 1,
    "none": None,
    "float": 1.5,
}

KEY_COMMANDS: Dict[str, Callable[[Client, Any], Any]] = {
    "get": lambda c, k: c.get(k),
    "gets": lambda c, k: c.gets(k),
    "gat": lambda c, k: c.gat(k, 10),
    "gats": lambda c, k: c.gats(k, 10),
    "get_many": lambda c, k: c.get_many(["ok", k]),
    "gets_many": lambda c, k: c.gets_many(["ok", k]),
    "set": lambda c, k: c.set(k, b"v"),
    "add": lambda c, k: c.add(k, b"v"),
    "replace": lambda c, k: c.replace(k, b"v"),
    "append": lambda c, k: c.append(k, b"v"),
    "prepend": lambda c, k: c.prepend(k, b"v"),
    "cas": lambda c, k: c.cas(k, b"v", 1),
    "set_many": lambda c, k: c.set_many({"ok": b"v", k: b"v"}),
    "delete": lambda c, k: c.delete(k),
    "delete_many": lambda c, k: c.delete_many(["ok", k]),
    "incr": lambda c, k: c.incr(k, 1),
    "decr": lambda c, k: c.decr(k, 1),
    "touch": lambda c, k: c.touch(k, 10),
    "getitem": lambda c, k: c[k],
    "setitem": lambda c, k: c.__setitem__(k, b"v"),
    "delitem": lambda c, k: c.__delitem__(k),
    "noreply-set": lambda c, k: c.set(k, b"v", noreply=True),
}


@pytest.fixture(scope="module")
def nowhere() -> Client:
    """A client whose server does not exist: anything sent would be a connect error."""
    return Client(("127.0.0.1", free_port()), connect_timeout=0.5)


@pytest.mark.parametrize("command", list(KEY_COMMANDS))
@pytest.mark.parametrize("key", list(BAD_KEYS.values()), ids=list(BAD_KEYS))
def test_bad_key_is_refused_before_connecting(nowhere: Client, key: Any, command: str) -> None:
    with pytest.raises(MemcacheIllegalInputError):
        KEY_COMMANDS[command](nowhere, key)
    assert nowhere.sock is None


@pytest.mark.parametrize("key", list(BAD_KEYS.values()), ids=list(BAD_KEYS))
def test_bad_key_sends_nothing_to_a_live_server(
    client: Client, memcached: MemcachedProcess, key: Any
) -> None:
    client.set("ok", b"sentinel")
    before = counters(memcached)
    for name, command in KEY_COMMANDS.items():
        with pytest.raises(MemcacheIllegalInputError):
            command(client, key)
        assert client.sock is not None, name  # refused input does not cost the connection
    assert counters(memcached) == before
    assert client.get("ok") == b"sentinel"  # nothing flushed, still in step


def test_key_length_limit_counts_the_prefix(memcached: MemcachedProcess) -> None:
    with Client(tcp(memcached), key_prefix=b"p:") as c:
        with pytest.raises(MemcacheIllegalInputError):
            c.set("k" * 249, b"v")  # 251 with the prefix
        with pytest.raises(MemcacheIllegalInputError):
            c.get_many(["ok", "k" * 249])
        assert c.set("k" * 248, b"v")  # exactly 250
        assert c.get("k" * 248) == b"v"
        assert raw_get(memcached, b"p:" + b"k" * 248).startswith(b"VALUE p:kkk")
    with Client(tcp(memcached)) as c:
        assert c.set("k" * 250, b"w") and c.get("k" * 250) == b"w"


def test_unicode_keys(memcached: MemcachedProcess) -> None:
    with Client(tcp(memcached), allow_unicode_keys=True) as c:
        assert c.set("clé", b"v1")
        assert c.set("ключ", b"v2")
        assert c.get("clé") == b"v1"
        assert c.get_many(["clé", "ключ", "нет"]) == {"clé": b"v1", "ключ": b"v2"}
        assert raw_get(memcached, "clé".encode()) == b"VALUE cl\xc3\xa9 0 2\r\nv1\r\nEND\r\n"
        assert c.delete("clé") is True and c.get("clé") is None
        for key in ("a b", "é\r\nflush_all", "é" * 126):  # still whitespace-free, <= 250 B
            with pytest.raises(MemcacheIllegalInputError):
                c.set(key, b"v")
        assert c.get("ключ") == b"v2"
    with Client(tcp(memcached)) as c, pytest.raises(MemcacheIllegalInputError):
        c.get("ключ")


def test_values_with_pickle_serde_round_trip(memcached: MemcachedProcess) -> None:
    with Client(tcp(memcached), serde=pickle_serde) as c:
        for value in (1.5, {"a": 1}, None, [1, 2], True):
            assert c.set("k", value)
            assert c.get("k") == value and type(c.get("k")) is type(value)
        assert c.get("missing", default="d") == "d"


def test_bad_arguments_send_nothing_to_a_live_server(
    client: Client, memcached: MemcachedProcess
) -> None:
    client.set("k", b"5")
    before = counters(memcached)
    for name, call in BAD_ARGS.items():
        with pytest.raises(MemcacheIllegalInputError):
            call(client)
        assert client.sock is not None, name
    assert counters(memcached) == before
    assert client.get("k") == b"5"
    assert ttl(client, "k") == -1


def test_cas_without_a_token_never_shifts_replies(seeded: MemcachedProcess) -> None:
    # Sent as is, "cas k 0 0 1" (no token) gets ERROR, and so does its data block, read as
    # a command: one reply too many, and every later call would get the previous reply.
    with Client(tcp(seeded), timeout=1.0) as c:
        with pytest.raises(MemcacheIllegalInputError):
            c.cas("k1", b"x", None)  # type: ignore[arg-type]
        assert c.incr("n1", 1) == 101
        check_next_calls(c)
        assert c.get("k1") == b"value-one"


# -- connecting: address fallback, TCP options ----------------------------------------------


def test_every_resolved_address_is_tried_until_one_connects(memcached: MemcachedProcess) -> None:
    """A name that resolves to several addresses (IPv6 and IPv4, say) is tried in turn:
    the first refuses, the second is the server."""
    dead = ("127.0.0.1", free_port())
    tried: List[Tuple[str, int]] = []

    class Resolver:
        def __getattr__(self, name: str) -> Any:
            return getattr(socket, name)

        def getaddrinfo(self, host: str, port: int, *args: Any) -> List[Any]:
            inet = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
            return [(*inet, dead), (*inet, tcp(memcached))]

        def socket(self, *args: Any) -> Any:
            return Recording(*args)

    class Recording(socket.socket):
        def connect(self, address: Any) -> None:
            tried.append(address)
            super().connect(address)

    c = Client(("cache.example", 11211), socket_module=Resolver(), connect_timeout=1)
    assert c.set("k", b"v") and c.get("k") == b"v"
    assert tried == [dead, tcp(memcached)]
    c.close()


def test_localhost_by_name(memcached: MemcachedProcess) -> None:
    c = Client(f"localhost:{memcached.port}", connect_timeout=1)
    assert c.set("k", b"v") and c.get("k") == b"v"
    c.close()


def test_nodelay_is_on_by_default_and_can_be_turned_off(memcached: MemcachedProcess) -> None:
    for no_delay, expected in ((True, 1), (False, 0)):
        c = Client(tcp(memcached), no_delay=no_delay)
        assert c.version()
        assert c.sock is not None
        assert c.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == expected
        c.close()
    assert Client(tcp(memcached)).no_delay is True


def test_socket_keepalive_options_reach_the_socket(memcached: MemcachedProcess) -> None:
    c = Client(tcp(memcached), socket_keepalive=KeepaliveOpts(idle=7, intvl=3, cnt=4))
    assert c.version()
    sock = c.sock
    assert sock is not None
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
    c.close()


# -- command line ----------------------------------------------------------------------------


def test_python_m_pymc_stats_prints_the_servers_stats(memcached: MemcachedProcess) -> None:
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "pymc", "stats", memcached.server],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = dict(line.split(None, 1) for line in run.stdout.splitlines())
    assert lines["pid"].strip() == str(memcached.proc.pid if memcached.proc else "")
    assert lines["version"].strip().startswith("1.")
    settings = subprocess.run(
        [sys.executable, "-m", "pymc", "stats", memcached.server, "settings"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert settings.returncode == 0 and "item_size_max" in settings.stdout
    down = subprocess.run(
        [sys.executable, "-m", "pymc", "--timeout", "0.5", "stats", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert down.returncode == 2 and "cannot connect" in down.stderr
