"""Meta commands against servers without them: memcached before 1.6 (an emulation that
answers ``ERROR`` to any command it does not know) and twemproxy (which closes the
connection on one). Every call must fail at once with a clear error, and leave the
connection in step or closed; a HashClient must not count its node as failed."""

from __future__ import annotations

import functools
import itertools
import socket
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest
from support.helpers import KINDS, one_node_client, tcp, wait_until
from support.nutcracker import NutcrackerProcess
from support.oldserver import OldServer
from support.servers import MemcachedProcess

import pymc
from pymc import MemcacheError, MemcacheUnknownCommandError

_counter = itertools.count()


def tag() -> str:
    return f"nm{next(_counter)}-{time.monotonic_ns() % 10**9}"


@pytest.fixture
def old_server() -> Iterator[OldServer]:
    with OldServer() as server:
        yield server


def bounded(call: Callable[[], Any], seconds: float) -> Tuple[str, Any, float]:
    """("ok", result) / ("raised", exception) / ("hung", None), and how long it took."""
    out: List[Any] = []

    def run() -> None:
        try:
            out.append(("ok", call()))
        except BaseException as exc:
            out.append(("raised", exc))

    start = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    took = time.monotonic() - start
    return (*(out[0] if out else ("hung", None)), took)


PIPELINES = {
    "meta_get_many": lambda c, k: c.meta_get_many([k, k + "2", k + "3"]),
    "meta_set_many": lambda c, k: c.meta_set_many({k: b"x", k + "2": b"y"}),
    "meta_delete_many": lambda c, k: c.meta_delete_many([k, k + "2"]),
}


# --------------------------------------------------------------------------- item 7


@pytest.mark.parametrize("timeout", [3.0, None])
@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
@pytest.mark.parametrize("kind", KINDS)
def test_quiet_pipelines_fail_at_once_on_an_old_server(
    old_server: OldServer, kind: str, pipeline: str, timeout: Any
) -> None:
    client = one_node_client(kind, old_server.server, timeout=timeout)
    key = tag()
    try:
        for _ in range(3):
            call = functools.partial(PIPELINES[pipeline], client, key)
            outcome, error, took = bounded(call, 5.0)
            assert outcome == "raised", (outcome, error)
            assert isinstance(error, MemcacheUnknownCommandError), error
            assert "1.5.22" in str(error) and "1.6" in str(error)
            assert took < 1.5
            # The connection is in step (or was closed): text commands answer right.
            assert client.set(key, b"text") is True
            assert client.get(key) == b"text"
            assert client.get_many([key, key + "-none"]) == {key: b"text"}
    finally:
        client.close()


def test_hash_client_keeps_an_old_node(old_server: OldServer) -> None:
    """With its default failure counting (retry_attempts=2): a refused command is that
    command's error, not a failure of the node."""
    client = pymc.HashClient([old_server.server], timeout=3.0)
    key = tag()
    try:
        for name in sorted(PIPELINES) * 3:
            with pytest.raises(MemcacheUnknownCommandError):
                PIPELINES[name](client, key)
            assert client.set(key, b"v") is True
            assert client.get(key) == b"v"
    finally:
        client.close()


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
@pytest.mark.parametrize("kind", KINDS)
def test_quiet_pipelines_through_twemproxy_fail_at_once(
    old_server: OldServer, twemproxy: Callable[..., NutcrackerProcess], kind: str, pipeline: str
) -> None:
    """twemproxy closes the connection on a meta command: an error at once, never a
    wait, and the text commands after it answer right."""
    proxy = twemproxy([old_server.address])
    client = one_node_client(kind, proxy.server, timeout=None)
    key = tag()
    try:
        outcome, error, took = bounded(functools.partial(PIPELINES[pipeline], client, key), 5.0)
        assert outcome == "raised" and isinstance(error, MemcacheError), (outcome, error)
        assert took < 1.5
        assert client.set(key, b"v") is True
        assert client.get(key) == b"v"
    finally:
        client.close()


# --------------------------------------------------------------------------- item 8


@pytest.mark.parametrize("kind", KINDS)
def test_meta_set_on_an_old_server_names_the_version_and_stays_in_step(
    old_server: OldServer, kind: str
) -> None:
    client = one_node_client(kind, old_server.server, timeout=2.0)
    key = tag()
    try:
        client.set(key, b"before")
        for _ in range(3):
            with pytest.raises(MemcacheUnknownCommandError, match=r"1\.5\.22"):
                client.meta_set(key, b"v")
            assert client.get(key) == b"before"
            assert client.set(key + "2", b"w") is True
            assert client.get_many([key, key + "2"]) == {key: b"before", key + "2": b"w"}
            version = client.version()  # (a HashClient's: by node)
            versions = list(version.values()) if kind == "hash" else [version]
            assert versions == [b"1.5.22"]
    finally:
        client.close()


def test_meta_set_never_sends_its_value_to_an_old_server(old_server: OldServer) -> None:
    """memcached before 1.6 reads the data block of an ``ms`` as a command line: a value
    that reads as a command would be run (here: ``flush_all``, which empties the cache)."""
    key = tag()
    with pymc.Client(old_server.server, timeout=2.0) as client:
        client.set(key, b"keep")
        with pytest.raises(MemcacheUnknownCommandError):
            client.meta_set(key + "x", b"flush_all")
        with pytest.raises(MemcacheUnknownCommandError):
            client.meta_set_many({key + "y": b"flush_all", key + "z": b"delete " + key.encode()})
        assert client.get(key) == b"keep"
    assert b"flush_all" not in old_server.lines


def test_hash_meta_set_many_never_sends_a_value_to_an_old_node(
    old_server: OldServer, memcached_nodes: List[Any]
) -> None:
    """HashClient's quiet fan-out: a node not yet known to have meta commands is asked
    through its own client (which checks first), never sent a value blind."""
    from support.helpers import tcp

    key = tag()
    host, port = tcp(memcached_nodes[0])
    client = pymc.HashClient([old_server.server, f"{host}:{port}"], timeout=3.0)
    try:
        client.set(key, b"keep")
        values = {f"{key}-{i}": b"flush_all" for i in range(20)}
        with pytest.raises(MemcacheUnknownCommandError):  # (a refused pipeline first)
            client.meta_get_many(list(values))
        with pytest.raises(MemcacheUnknownCommandError, match=r"1\.5\.22"):
            client.meta_set_many(values)
        assert b"flush_all" not in old_server.lines
        assert client.get(key) == b"keep"
        # The node with meta commands takes the fast path once it is known.
        on_new = {k: b"v" for k in values if client.snapshot.node_for(k) != old_server.server}
        assert on_new and client.meta_set_many(on_new) == []
        assert client.meta_get_many(list(on_new)) == on_new
    finally:
        client.close()


@pytest.mark.parametrize("get_first", [False, True])
@pytest.mark.parametrize("command", ["meta_set", "meta_set_many"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_server_replaced_by_an_old_one_never_gets_a_value_as_a_command(
    kind: str, command: str, get_first: bool
) -> None:
    """A connection checked for meta commands (``mn``) is closed by its server, and an
    older server (no meta commands) takes the address: a rollback, or a failover behind
    one name. The next ``ms`` goes out on a new connection (made for it, or by a ``get``
    before it), which must be checked again before any value goes out (an old server
    runs a data block as a command line; a HashClient knew the node had meta commands)."""
    new = MemcachedProcess().start()
    old: Optional[OldServer] = None
    client = one_node_client(kind, tcp(new), timeout=3.0)
    data = b"flush_all"  # the value: a command an old server would run
    store: Callable[[], Any] = {
        "meta_set": lambda: client.meta_set("m", data),
        "meta_set_many": lambda: client.meta_set_many({"m": data, "n": data}),
    }[command]
    try:
        store()  # checked (mn) and stored on the new server
        assert client.get("m") == data
        port = new.port
        new.stop()  # the server closes the connection the client keeps
        old = OldServer(port=port).start()
        wait_until(lambda: _answers(old), 3.0, "the old server listens")
        if get_first:
            assert client.set("pre", b"1") is True  # a text command makes the new connection
        with pytest.raises(MemcacheUnknownCommandError, match=r"1\.5"):
            store()
        assert data not in old.lines, old.lines
        assert client.set("t", b"1") is True and client.get("t") == b"1"
    finally:
        client.close()
        new.close()
        if old is not None:
            old.stop()


def _answers(old: OldServer) -> bool:
    """Whether ``old`` answers ``version``."""
    try:
        with socket.create_connection(old.address, timeout=1.0) as sock:
            sock.sendall(b"version\r\n")
            return sock.recv(100).startswith(b"VERSION")
    except OSError:
        return False
