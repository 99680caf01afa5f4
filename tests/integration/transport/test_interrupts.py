"""A BaseException at every line: wherever an interruption (``gevent.Timeout``, a signal
handler's ``KeyboardInterrupt``) lands inside pymc's client and cluster code, the next call
gets the right answer and no pool slot is lost.

``sys.settrace`` makes it deterministic: run N raises :class:`Interrupt` at the N-th line
executed in the chosen pymc modules, for N = 1, 2, ... until a run completes untouched.
"""

from __future__ import annotations

import linecache
import sys
from types import FrameType
from typing import Any, Callable, Dict, List, Optional

import pytest
from support.helpers import Interrupt, source_files, tcp
from support.servers import MemcachedProcess

import pymc.client
import pymc.cluster
import pymc.commands
import pymc.options
import pymc.protocol
import pymc.transport
from pymc import Client, HashClient, PooledClient

FILES = source_files(
    pymc.client, pymc.transport, pymc.commands, pymc.options, pymc.cluster, pymc.protocol
)
MAX_LINES = 20000  # a bound on the runs: no scenario executes more lines than this

Tracer = Callable[[FrameType, str, Any], Any]


def _is_try(frame: FrameType) -> bool:
    """CPython 3.11 reports a line event on a bare ``try:``, and an exception a tracer raises
    there skips the enclosing ``finally`` blocks. No real interruption can land there (a
    signal or a greenlet switch needs a call or a jump), so the injector skips those lines."""
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno)
    return line.strip() == "try:"


where = [""]  # the line the last run was interrupted at, for failure messages


def run_interrupted(call: Callable[[], Any], at: int) -> bool:
    """Run ``call`` raising Interrupt at the ``at``-th line in FILES; True if it fired."""
    seen = [0]
    fired = [False]
    where[0] = ""

    def local(frame: FrameType, event: str, arg: Any) -> Optional[Tracer]:
        if event == "line" and not fired[0] and not _is_try(frame):
            seen[0] += 1
            if seen[0] == at:
                fired[0] = True
                where[0] = f"line {frame.f_lineno} of {frame.f_code.co_filename}"
                raise Interrupt(where[0])
        return local

    def global_(frame: FrameType, event: str, arg: Any) -> Optional[Tracer]:
        return local if frame.f_code.co_filename in FILES and not fired[0] else None

    sys.settrace(global_)
    try:
        call()
    except Interrupt:
        pass
    finally:
        sys.settrace(None)
    return fired[0]


def every_line(call: Callable[[], Any], check: Callable[[], None]) -> int:
    """Interrupt ``call`` at each of its lines in turn, running ``check`` after each."""
    for at in range(1, MAX_LINES):
        fired = run_interrupted(call, at)
        try:
            check()
        except AssertionError as exc:
            raise AssertionError(f"after an interrupt at {where[0]}: {exc}") from exc
        if not fired:
            return at - 1
    raise AssertionError("the scenario never ran to its end")


def _values(prefix: str, n: int) -> Dict[str, bytes]:
    return {f"{prefix}:{i}": b"value-%d" % i for i in range(n)}


def _in_use(client: Any) -> List[int]:
    pools = client.clients.values() if isinstance(client, HashClient) else [client]
    return [p.client_pool.stats()["in_use"] for p in pools]


def _scenarios(client: Any, prefix: str) -> Dict[str, Callable[[], Any]]:
    values = _values(prefix, 6)
    keys = list(values)
    return {
        "get": lambda: client.get(keys[0]),
        "get_many": lambda: client.get_many(keys),
        "gets_many": lambda: client.gets_many(keys),
        "set_many": lambda: client.set_many(values),
        "set_many_noreply": lambda: client.set_many(values, noreply=True),
        # (a scratch key: an interrupted write may still reach the server after the check)
        "delete_then_set": lambda: (client.delete(f"{prefix}:s"), client.set(f"{prefix}:s", b"1")),
        "incr": lambda: client.incr(f"{prefix}:counter", 0),
    }


SCENARIOS = list(_scenarios(None, "x"))


def _make(kind: str, servers: List[Any]) -> Any:
    if kind == "client":
        return Client(servers[0], timeout=2.0)
    if kind == "pooled":
        return PooledClient(servers[0], timeout=2.0, max_pool_size=2, pool_timeout=2.0)
    return HashClient(
        servers,
        timeout=2.0,
        use_pooling=True,
        max_pool_size=2,
        pool_timeout=2.0,
        retry_attempts=10**6,  # interruptions are not node failures; never eject
        retry_timeout=0,
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("kind", ["client", "pooled", "hash"])
def test_an_interrupt_at_any_line_leaves_every_answer_right(
    memcached_nodes: List[MemcachedProcess], kind: str, scenario: str
) -> None:
    servers = [tcp(n) for n in memcached_nodes[:3]]
    client = _make(kind, servers)
    fixer = _make(kind, servers)  # puts the data back after an interrupted write
    prefix = f"intr-{kind}-{scenario}"
    values = _values(prefix, 6)
    keys = list(values)
    try:
        client.set_many(values)
        client.set(f"{prefix}:counter", b"10")
        call = _scenarios(client, prefix)[scenario]

        def check() -> None:
            fixer.set_many(values)
            fixer.set(f"{prefix}:counter", b"10")
            if kind != "client":
                assert _in_use(client) == [0] * len(_in_use(client)), "a pool slot was lost"
            # Whatever was interrupted, the stored values are right and every reply is the
            # reply to its own command.
            assert client.get_many(keys) == values
            assert client.incr(f"{prefix}:counter", 0) == 10
            assert client.add(keys[0], b"no") is False
            assert client.get(keys[2]) == values[keys[2]]
            assert client.delete(f"{prefix}:absent") is False

        lines = every_line(call, check)
        assert lines > 5  # the scenario did run through traced code
    finally:
        client.close()
        fixer.close()
