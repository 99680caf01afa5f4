"""A BaseException landing anywhere in the connect + ASCII auth path (the version probe,
the credentials, the reads of their replies) leaves no half-authenticated connection and
no stale state: the next command authenticates afresh and works.

The exception is injected with ``sys.settrace`` at every line of pymc/client.py and
pymc/protocol.py in turn (the 1st line event of the traced call, the 2nd, ... until a call
runs clean), as a gevent.Timeout, a SIGALRM deadline or Ctrl-C would land.
"""

from __future__ import annotations

import functools
import sys
from types import FrameType
from typing import Any, Callable, Dict, List

import pytest
from support.helpers import Interrupt, source_files, tcp
from support.servers import MemcachedProcess

import pymc.client
import pymc.commands
import pymc.options
import pymc.protocol
import pymc.transport
from pymc import Client, HashClient, PooledClient

pytestmark = pytest.mark.timeout(180)

TRACED = source_files(pymc.client, pymc.transport, pymc.commands, pymc.options, pymc.protocol)
MAX_LINES = 3000


class Injected(Interrupt):
    pass


def inject_at(n: int, fn: Callable[[], Any]) -> str:
    """Run ``fn`` with :class:`Injected` raised at the ``n``-th traced line event; returns
    where it fired ("" if the call ran clean)."""
    count = 0
    where = ""

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count, where
        if event == "line":
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
    finally:
        sys.settrace(None)
    return where


def _client(address: Any, **kw: Any) -> Any:
    return Client(address, **kw)


def _pooled(address: Any, **kw: Any) -> Any:
    return PooledClient(address, max_pool_size=1, **kw)


def _hash(address: Any, **kw: Any) -> Any:
    return HashClient([address], **kw)


@pytest.mark.parametrize("make", [_client, _pooled, _hash], ids=["Client", "Pooled", "Hash"])
def test_an_interrupt_anywhere_in_connect_and_auth_leaves_the_client_usable(
    make: Callable[..., Any], memcached_auth: MemcachedProcess
) -> None:
    credentials: Dict[str, Any] = {
        "username": memcached_auth.username,
        "password": memcached_auth.password,
    }
    with Client(tcp(memcached_auth), **credentials) as setup:
        assert setup.set("auth-int-k", b"v")
    failures: List[str] = []
    for n in range(1, MAX_LINES):
        client = make(tcp(memcached_auth), timeout=2.0, connect_timeout=2.0, **credentials)
        try:
            where = inject_at(n, functools.partial(client.get, "auth-int-k"))
            try:
                value = client.get("auth-int-k")
                if value != b"v":
                    failures.append(f"#{n} at {where}: the next get returned {value!r}")
            except Exception as exc:
                failures.append(f"#{n} at {where}: the next get raised {exc!r}")
        finally:
            client.close()
        if not where:
            assert n > 50, f"the scenario ran only {n - 1} traced lines"
            break
    else:
        raise AssertionError(f"still injecting after {MAX_LINES} lines")
    assert failures == []
