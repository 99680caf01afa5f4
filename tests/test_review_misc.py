"""Defects from the outside review: is_clean on high descriptors (2), keyword arguments through
RetryingClient (3), the ``pymc`` logger's NullHandler (11), bad ``key_prefix`` values (19) and
int subclasses stored as pymemcache stores them on the same interpreter (20).
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
from pymemcache.client.base import Client as PmcClient
from support.helpers import stat, tcp, wait_until
from support.servers import MemcachedProcess, request

from pymc import (
    Client,
    HashClient,
    MemcacheIllegalInputError,
    MemcacheUnknownCommandError,
    PooledClient,
    RetryingClient,
    RetryPolicy,
)
from pymc.client import COMMANDS
from pymc.retry import call_with_retry

resource = pytest.importorskip("resource")  # POSIX: descriptor limits

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"

#: Descriptors below this are taken while a test runs, so its sockets get one >= this.
HIGH_FD = 1100


# ------------------------------------------------------------------ (2) is_clean, fd >= 1024


@contextlib.contextmanager
def low_descriptors_taken(above: int = HIGH_FD) -> Iterator[None]:
    """Hold every free descriptor below ``above`` (raising the soft RLIMIT_NOFILE if it is
    too low, restored after), so that the sockets opened inside get descriptors >= ``above``
    -- where ``select.select`` fails -- without touching any client's internals."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = above + 256
    raised = soft != resource.RLIM_INFINITY and soft < need
    if raised:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    taken: List[int] = []
    try:
        base = os.open(os.devnull, os.O_RDONLY)
        taken.append(base)
        for _ in range(above):  # bounded: at most one dup per descriptor number
            fd = os.dup(base)
            taken.append(fd)
            if fd >= above - 1:
                break
        yield
    finally:
        for fd in taken:
            os.close(fd)
        if raised:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_low_descriptors_taken_gives_high_socket_numbers(memcached: MemcachedProcess) -> None:
    with low_descriptors_taken():
        sock = memcached.connect()
        try:
            assert sock.fileno() >= HIGH_FD
        finally:
            sock.close()


@pytest.fixture(params=["poll", "without-poll"])
def poll_or_not(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run with select.poll, and as on a platform without it (the selectors fallback)."""
    if request.param == "without-poll":
        monkeypatch.delattr(select, "poll", raising=False)
    return str(request.param)


def test_is_clean_on_a_descriptor_above_1024(memcached: MemcachedProcess, poll_or_not: str) -> None:
    with low_descriptors_taken():
        client = Client(tcp(memcached), timeout=2.0)
        try:
            assert client.set("k", b"v") is True
            assert client.sock is not None and client.sock.fileno() >= 1024
            # idle and healthy: clean (select.select raised ValueError here -> judged dirty)
            assert client.is_clean() is True
            assert client.get("k") == b"v"
            assert client.is_clean() is True
            # unread bytes: a request sent behind the client's back, its reply never read
            client.sock.sendall(b"version\r\n")
            wait_until(lambda: not client.is_clean(), what="the unread VERSION reply")
            assert client.is_clean() is False
        finally:
            client.close()


def test_is_clean_sees_a_server_close_on_a_descriptor_above_1024(
    memcached: MemcachedProcess, poll_or_not: str
) -> None:
    with low_descriptors_taken():
        client = Client(tcp(memcached), timeout=2.0)
        try:
            assert client.version()
            assert client.sock is not None and client.sock.fileno() >= 1024
            assert client.is_clean() is True
            client.sock.sendall(b"quit\r\n")  # memcached closes its end: no bytes, just EOF
            wait_until(lambda: not client.is_clean(), what="the server's close")
            assert client.is_clean() is False
            # and the next command reconnects cleanly
        finally:
            client.close()
        assert client.get("k") is None


def test_pooled_client_reuses_a_connection_above_1024(memcached: MemcachedProcess) -> None:
    with low_descriptors_taken():
        pool = PooledClient(tcp(memcached), max_pool_size=1, timeout=2.0)
        try:
            assert pool.set("k", b"v") is True
            before = stat(memcached, "total_connections")
            for _ in range(5):
                time.sleep(0.08)  # idle long enough for the pool to check the connection
                assert pool.get("k") == b"v"
            # + 1: the stats request above; the pool itself opened nothing new
            assert stat(memcached, "total_connections") == before + 1
        finally:
            pool.close()


GEVENT_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey
    monkey.patch_all()
    import json, sys, time
    sys.path[:0] = [sys.argv[2]]
    from test_review_misc import low_descriptors_taken
    from support.helpers import wait_until
    from pymc import Client, PooledClient
    address = tuple(json.loads(sys.argv[1]))
    out = {}
    with low_descriptors_taken():
        client = Client(address, timeout=2.0)
        client.set("k", b"v")
        out["fd"] = client.sock.fileno()
        out["idle"] = client.is_clean()
        client.sock.sendall(b"version\\r\\n")
        try:
            wait_until(lambda: not client.is_clean())
        except AssertionError:
            pass
        out["unread"] = client.is_clean()
        client.close()
        pool = PooledClient(address, max_pool_size=1, timeout=2.0)
        pool.get("k")
        for _ in range(3):
            time.sleep(0.08)  # idle long enough for the pool to check the connection
            pool.get("k")
        pool.close()
    print(json.dumps(out))
    """
)


@pytest.mark.timeout(60)
def test_is_clean_on_a_high_descriptor_under_gevent_patch_all(memcached: MemcachedProcess) -> None:
    pytest.importorskip("gevent")
    before = stat(memcached, "total_connections")
    proc = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT, json.dumps(list(tcp(memcached))), str(TESTS)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])},
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["fd"] >= 1024
    assert out["idle"] is True
    assert out["unread"] is False
    # the Client's connection, the pool's one connection, and the stats request: the pool
    # reused its connection across the idle gaps
    assert stat(memcached, "total_connections") == before + 3


# ------------------------------------------------------------------ (3) keyword arguments


def test_call_with_retry_passes_its_own_parameter_names_through() -> None:
    def fn(**kwargs: Any) -> Dict[str, Any]:
        return kwargs

    got = call_with_retry(RetryPolicy(), "get", fn, policy=1, command=2, fn=3, args=4)
    assert got == {"policy": 1, "command": 2, "fn": 3, "args": 4}


def _every_command_by_keyword(client: Any) -> List[str]:
    """Call every Client command through ``client`` with keyword arguments only; return the
    names called. Ends with ``shutdown``: the server must be private and have ``-A``."""
    called: List[str] = []

    def call(name: str, **kwargs: Any) -> Any:
        called.append(name)
        return getattr(client, name)(**kwargs)

    assert call("set", key="k", value=b"v", expire=0, noreply=False, flags=0) is True
    assert call("set_many", values={"a": b"1"}, expire=0, noreply=False, flags=None) == []
    assert call("set_multi", values={"b": b"2"}, expire=0, noreply=False, flags=None) == []
    assert call("add", key="new", value=b"n", expire=0, noreply=False, flags=None) is True
    assert call("replace", key="k", value=b"w", expire=0, noreply=False, flags=None) is True
    assert call("append", key="k", value=b">", expire=0, noreply=False, flags=None) is True
    assert call("prepend", key="k", value=b"<", expire=0, noreply=False, flags=None) is True
    assert call("get", key="k", default=None) == b"<w>"
    assert call("get", key="missing", default="dflt") == "dflt"
    value, cas = call("gets", key="k", default=None, cas_default=None)
    assert value == b"<w>"
    assert call("cas", key="k", value=b"c", cas=cas, expire=0, noreply=False, flags=None)
    assert call("get_many", keys=["k", "a"]) == {"k": b"c", "a": b"1"}
    assert call("get_multi", keys=["b"]) == {"b": b"2"}
    assert set(call("gets_many", keys=["k"])) == {"k"}
    assert set(call("gets_multi", keys=["a"])) == {"a"}
    assert call("gat", key="k", expire=0, default=None) == b"c"
    assert call("gats", key="k", expire=0, default=None, cas_default=None)[0] == b"c"
    assert call("touch", key="k", expire=0, noreply=False) is True
    assert call("set", key="n", value=5) is True
    assert call("incr", key="n", value=2, noreply=False) == 7
    assert call("decr", key="n", value=3, noreply=False) == 4
    assert call("delete", key="n", noreply=False) is True
    assert call("delete_many", keys=["a"], noreply=False) is True
    assert call("delete_multi", keys=["b"], noreply=False) is True
    assert call("stats")[b"curr_connections"] >= 1
    assert call("cache_memlimit", memlimit=64) is True
    assert call("version").startswith(b"1.")
    assert call("verbosity", level=0, noreply=False) is True
    assert call("raw_command", command="version", end_tokens="\r\n").startswith(b"VERSION ")
    reply = call("raw_command", command=b"get new", end_tokens=b"END\r\n")
    assert reply.startswith(b"VALUE new 0 1\r\nn\r\n")
    with pytest.raises(MemcacheUnknownCommandError):  # plain memcached: no cluster config
        call("cluster_config")
    assert call("meta_set", key="m", value=b"1", ttl=0).status == "stored"
    assert call("meta_get", key="m", return_cas=True).value == b"1"
    assert call("lease_get", key="m", lease_ttl=30, recache_ttl=None).value == b"1"
    lease = call("lease_get", key="m-new", lease_ttl=30, recache_ttl=None)
    assert lease.win and call("lease_set", key="m-new", value=b"n", ttl=0, lease=lease) is True
    lease = call("lease_get", key="m-gone", lease_ttl=30, recache_ttl=None)
    assert lease.win and call("lease_release", key="m-gone", lease=lease) is True
    assert call("meta_arithmetic", key="m", delta=2).number == 3
    assert call("meta_delete", key="m", invalidate=True).status == "deleted"
    assert call("meta_noop").status == "noop"
    value, cas = call("get_cas", key="m", default=None)
    assert call("set_cas", key="m", value=b"5", cas=cas, ttl=0) is True
    assert call("invalidate", key="m", ttl=30) is True
    assert call("meta_set_many", values={"m1": b"1", "m2": b"2"}, ttl=0) == []
    assert call("meta_get_many", keys=["m1", "m2", "m3"]) == {"m1": b"1", "m2": b"2"}
    assert call("meta_delete_many", keys=["m1", "m3"], invalidate=False) == ["m3"]
    assert call("flush_all", delay=0, noreply=False) is True
    assert call("get", key="k", default=None) is None
    assert call("quit") is None
    assert call("shutdown", graceful=False) is None
    return called


@pytest.mark.parametrize("wrapped", ["Client", "PooledClient"])
def test_retrying_client_passes_every_keyword_argument_through(
    new_memcached: Callable[..., MemcachedProcess], wrapped: str
) -> None:
    server = new_memcached("-A")  # -A: shutdown enabled
    inner = {"Client": Client, "PooledClient": PooledClient}[wrapped](tcp(server), timeout=2.0)
    client = RetryingClient(inner, attempts=2)
    try:
        called = _every_command_by_keyword(client)
    finally:
        inner.close()
    assert set(called) == set(COMMANDS)
    wait_until(lambda: not server.is_running(), what="the server to shut down")


def test_hash_client_takes_keys_by_keyword(memcached: MemcachedProcess) -> None:
    with HashClient([tcp(memcached)], timeout=2.0) as client:
        retrying = RetryingClient(client)
        assert retrying.set(key="x", value=b"1", expire=0) is True
        assert client.get(key="x", default=None) == b"1"
        assert retrying.get(key="y", default="d") == "d"
        assert retrying.get_many(keys=["x"]) == {"x": b"1"}
        assert retrying.delete(key="x", noreply=False) is True


# ------------------------------------------------------------------ (11) NullHandler


LOGGING_SCRIPT = textwrap.dedent(
    """
    import logging, socket
    import pymc
    records = []
    logging.getLogger("pymc").addFilter(lambda record: records.append(record) or True)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()
    client = pymc.HashClient(
        [dead], connect_timeout=0.5, timeout=0.5, retry_attempts=1, ignore_exc=True,
        dead_timeout=60,
    )
    for _ in range(3):
        client.get("k")
    client.close()
    print(len([r for r in records if r.levelno >= logging.WARNING]))
    """
)


def test_library_warnings_stay_off_stderr_without_logging_config() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", LOGGING_SCRIPT],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) >= 1  # a warning was logged...
    assert proc.stderr == ""  # ...and nothing reached stderr


def test_pymc_logger_has_a_null_handler() -> None:
    import logging

    handlers = logging.getLogger("pymc").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


# ------------------------------------------------------------------ (19) key_prefix


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


@pytest.mark.parametrize("kind", KINDS)
def test_key_length_edge_counts_the_prefix(kind: str, memcached: MemcachedProcess) -> None:
    client = _construct(kind, tcp(memcached), key_prefix="five:", timeout=2.0)
    try:
        assert client.set("k" * 245, b"edge") is True  # 5 + 245 = 250 bytes
        assert client.get("k" * 245) == b"edge"
        with pytest.raises(MemcacheIllegalInputError):
            client.set("k" * 246, b"over")  # 251 bytes
        with pytest.raises(MemcacheIllegalInputError):
            client.get("k" * 246)
    finally:
        client.close()
    assert raw_get(memcached, b"five:" + b"k" * 245).startswith(b"VALUE five:kkk")


def raw_get(server: MemcachedProcess, key: bytes) -> bytes:
    with server.connect() as sock:
        return request(sock, b"get " + key + b"\r\n", b"END\r\n")


@pytest.mark.parametrize("kind", KINDS)
def test_utf8_key_prefix_round_trips_with_allow_unicode_keys(
    kind: str, memcached: MemcachedProcess
) -> None:
    client = _construct(
        kind, tcp(memcached), key_prefix="café:", allow_unicode_keys=True, timeout=2.0
    )
    try:
        assert client.set("clé", b"valeur") is True
        assert client.get("clé") == b"valeur"
        assert client.get_many(["clé", "other"]) == {"clé": b"valeur"}
        # the prefix is 6 bytes of UTF-8: 244 more bytes fit, 245 do not
        assert client.set("k" * 244, b"edge") is True
        with pytest.raises(MemcacheIllegalInputError):
            client.set("k" * 245, b"over")
    finally:
        client.close()
    reply = raw_get(memcached, "café:clé".encode())
    assert reply.startswith("VALUE café:clé 0 6\r\nvaleur".encode())


# ------------------------------------------------------------------ (20) int subclasses


class Color(enum.IntEnum):
    RED = 1


class Perm(enum.IntFlag):
    R = 4


class Digits(int):
    pass


@pytest.mark.parametrize("value", [Color.RED, Perm.R, Digits(7), 12], ids=repr)
def test_int_subclasses_are_stored_as_pymemcache_stores_them(
    memcached: MemcachedProcess, value: int
) -> None:
    # pymemcache stores str(value): b"Color.RED" on Python 3.10, b"1" from 3.11 on (where
    # IntEnum.__str__ became int.__str__). pymc must store the same bytes on each.
    address = tcp(memcached)
    theirs = PmcClient(address, timeout=2.0, default_noreply=False)
    try:
        with Client(address, timeout=2.0) as ours:
            assert ours.set("by-pymc", value) is True
            assert theirs.set("by-pmc", value) is True
            assert ours.get("by-pymc") == theirs.get("by-pmc") == str(value).encode()
    finally:
        theirs.close()
