"""A BaseException landing at any line of the sync marker's read (``Client._sync``, the
protocol's ``ExpectSync``, the check for a close after noreply commands) or of the meta
check before an ``ms`` (``Client._meta_checked``) never leaves a connection out of step:
the commands after it get their own replies, and no ``ms`` data block reaches a server
without meta commands.

Injected with ``sys.settrace`` at the 1st, 2nd, ... line event inside those functions (and
whatever they call in pymc), until a call runs clean, as a gevent.Timeout, a SIGALRM
deadline or Ctrl-C would land.
"""

from __future__ import annotations

import itertools
import sys
import time
from types import FrameType
from typing import Any, Callable, List, Optional

import pytest
from support.helpers import Interrupt, source_files, tcp, wait_until
from support.nutcracker import NutcrackerProcess, down_address
from support.oldserver import OldServer
from support.servers import MemcachedProcess

import pymc
import pymc.client
import pymc.commands
import pymc.meta
import pymc.options
import pymc.protocol
import pymc.transport

pytestmark = pytest.mark.timeout(180)

TRACED = source_files(pymc.client, pymc.transport, pymc.commands, pymc.options, pymc.protocol)
MAX_LINES = 2000
_counter = itertools.count()


class Injected(Interrupt):
    pass


def _inside(frame: Optional[FrameType], targets: frozenset[str]) -> bool:
    while frame is not None:
        if frame.f_code.co_name in targets and frame.f_code.co_filename in TRACED:
            return True
        frame = frame.f_back
    return False


def inject_at(n: int, fn: Callable[[], Any], targets: frozenset[str]) -> str:
    """Run ``fn`` with :class:`Injected` raised at the ``n``-th line event inside one of
    ``targets`` (or below it, in pymc); where it fired, or "" when the call ran clean."""
    count = 0
    where = ""

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count, where
        if event == "line" and _inside(frame, targets):
            count += 1
            if count == n:
                where = f"{frame.f_code.co_name} line {frame.f_lineno}"
                raise Injected(where)
        return local

    def global_(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename in TRACED else None

    sys.settrace(global_)
    try:
        fn()
    except Injected:
        pass
    except pymc.MemcacheError:
        pass  # (an error the interruption caused on its way, e.g. a closed connection)
    finally:
        sys.settrace(None)
    return where


def every_line(
    scenario: Callable[[], Any], check: Callable[[str], None], targets: frozenset[str]
) -> int:
    for n in range(1, MAX_LINES):
        where = inject_at(n, scenario, targets)
        check(f"injection #{n} at {where or '(none)'}")
        if not where:
            assert n > 5, f"the scenario ran only {n - 1} lines"
            return n - 1
    raise AssertionError(f"still injecting after {MAX_LINES} lines")


SYNC = frozenset({"_sync", "_closed_after_noreply", "_noreply_refused"})
KINDS = ["client", "pooled"]


def make(kind: str, server: str) -> Any:
    if kind == "client":
        return pymc.Client(server, timeout=3.0)
    return pymc.PooledClient(server, timeout=3.0, max_pool_size=1)


@pytest.mark.parametrize("kind", KINDS)
def test_an_interrupt_in_the_sync_marker_read_on_memcached(
    memcached: MemcachedProcess, kind: str
) -> None:
    """A noreply command that draws an error line (incr of a non-number), then commands
    whose marker read is interrupted: every command after it gets its own reply."""
    client = make(kind, memcached.server)
    word, key = f"w{next(_counter)}", f"k{next(_counter)}"
    client.set(word, b"not-a-number")
    values: List[bytes] = []

    def scenario() -> None:
        value = b"%d" % len(values)
        values.append(value)
        client.incr(word, 1, noreply=True)  # CLIENT_ERROR ... non-numeric value
        client.set(key, value, noreply=True)
        assert client.get(key) == value

    def check(where: str) -> None:
        # (a noreply write sent on a connection the interruption closed is applied by its
        # own memcached connection, with no order against the next connection's reads)
        wait_until(lambda: client.get(key) == values[-1], 2.0, where)
        assert client.set(key + "x", b"y") is True, where
        assert client.get_many([key, key + "x"]) == {key: values[-1], key + "x": b"y"}, where

    try:
        assert every_line(scenario, check, SYNC) > 10
    finally:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_an_interrupt_in_the_sync_marker_read_behind_twemproxy(
    memcached: MemcachedProcess, twemproxy: Callable[..., NutcrackerProcess], kind: str
) -> None:
    """The marker answered ``SERVER_ERROR`` (twemproxy, its ``version`` backend down)."""
    for backends in ([tcp(memcached), down_address()], [down_address(), tcp(memcached)]):
        proxy = twemproxy(backends)
        if proxy.request(b"version\r\n").startswith(b"SERVER_ERROR"):
            break
    else:
        raise AssertionError("twemproxy sent version to the live backend in both orders")
    live, other = proxy.keys(f"si{next(_counter)}", live=True, count=2)
    client = make(kind, proxy.server)
    values: List[bytes] = []

    def scenario() -> None:
        value = b"%d" % len(values)
        values.append(value)
        client.set(live, value, noreply=True)
        assert client.get(live) == value

    def check(where: str) -> None:
        wait_until(lambda: client.get(live) == values[-1], 2.0, where)
        assert client.set(other, b"y") is True, where
        assert client.get_many([live, other]) == {live: values[-1], other: b"y"}, where

    try:
        assert every_line(scenario, check, SYNC) > 10
    finally:
        client.close()


META_CHECK = frozenset({"_meta_checked"})


@pytest.mark.parametrize("kind", KINDS)
def test_an_interrupt_in_the_meta_check_on_memcached(
    memcached: MemcachedProcess, kind: str
) -> None:
    key = f"mc{next(_counter)}"
    values: List[bytes] = []
    client = make(kind, memcached.server)

    def scenario() -> None:
        client.close()  # a new connection: its first ms checks with mn
        value = b"%d" % len(values)
        values.append(value)
        assert client.meta_set(key, value).status == "stored"

    def check(where: str) -> None:
        got = client.meta_get(key)
        assert got.value in (values[-1], b"z", None), where
        assert client.meta_set(key, b"z").status == "stored", where
        assert client.get(key) == b"z" and client.meta_get(key).value == b"z", where

    try:
        assert every_line(scenario, check, META_CHECK) > 3
    finally:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_an_interrupt_in_the_meta_check_on_an_old_server(kind: str) -> None:
    """Whatever line the interruption lands on, no ``ms`` data block ever reaches the
    server (it would run it as a command line), and the connection stays in step."""
    with OldServer() as old:
        client = make(kind, old.server)
        data = b"flush_all"  # what an old server would run, were the block sent

        def scenario() -> None:
            client.close()
            client.meta_set("m", data)

        def check(where: str) -> None:
            assert data not in old.lines, where
            assert client.set("t", b"1") is True and client.get("t") == b"1", where
            with pytest.raises(pymc.MemcacheUnknownCommandError, match=r"1\.5"):
                client.meta_set("m", data)
            assert data not in old.lines, where
            assert client.get("t") == b"1", where

        try:
            start = time.monotonic()
            assert every_line(scenario, check, META_CHECK) > 3
            assert time.monotonic() - start < 120
        finally:
            client.close()
