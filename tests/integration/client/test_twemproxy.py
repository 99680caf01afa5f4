"""pymc behind a real twemproxy (Debian's ``nutcracker``), with a backend down.

twemproxy relays ``version`` to one backend: when that backend is down it answers
``SERVER_ERROR Connection refused``. It drops whatever a backend answers to a ``noreply``
command, and closes the connection on a command it does not know (the meta commands).
These tests need the ``twemproxy`` fixture: they fail, not skip, without nutcracker.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from typing import Any, Callable, List, Tuple

import pytest
from support.helpers import KINDS, one_node_client, tcp
from support.nutcracker import NutcrackerProcess, down_address
from support.servers import MemcachedProcess

import pymc
from pymc import MemcacheServerError

Factory = Callable[..., NutcrackerProcess]
_counter = itertools.count()


def tag() -> str:
    return f"tw{next(_counter)}-{time.monotonic_ns() % 10**9}"


def make(kind: str, proxy: NutcrackerProcess, **options: Any) -> Any:
    return one_node_client(kind, proxy.server, **options)


@pytest.fixture
def half_down(memcached: MemcachedProcess, twemproxy: Factory) -> NutcrackerProcess:
    """twemproxy over a live memcached and a down backend, the one ``version`` goes to."""
    for backends in ([tcp(memcached), down_address()], [down_address(), tcp(memcached)]):
        proxy = twemproxy(backends)
        if proxy.request(b"version\r\n").startswith(b"SERVER_ERROR"):
            return proxy
    raise AssertionError("twemproxy sent version to the live backend in both orders")


@pytest.fixture
def all_down(twemproxy: Factory) -> NutcrackerProcess:
    """twemproxy whose only backend is down."""
    return twemproxy([down_address()])


def bounded(call: Callable[[], Any], seconds: float) -> Tuple[str, Any, float]:
    """Run ``call`` in a thread: ("ok", result) or ("raised", exception), and how long it
    took; ("hung", None) when it has not returned within ``seconds``."""
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
    if not out:
        return ("hung", None, took)
    return (out[0][0], out[0][1], took)


# --------------------------------------------------------------------------- noreply (item 6)


@pytest.mark.parametrize("kind", KINDS)
def test_noreply_then_commands_on_the_live_backend(half_down: NutcrackerProcess, kind: str) -> None:
    """After noreply writes, every command to a key on the live backend answers right, at
    once, although the sync marker (``version``) is answered ``SERVER_ERROR``."""
    live = half_down.keys(tag(), live=True, count=3)
    client = make(kind, half_down, timeout=3.0)
    try:
        start = time.monotonic()
        for round_ in range(3):
            client.set(live[0], b"v%d" % round_, noreply=True)
            assert client.get(live[0]) == b"v%d" % round_
            client.set_many({live[1]: b"a", live[2]: b"b"}, noreply=True)
            assert client.get_many(live) == {live[0]: b"v%d" % round_, live[1]: b"a", live[2]: b"b"}
            client.delete(live[1], noreply=True)
            assert client.add(live[1], b"again") is True
            client.incr(live[0], 1, noreply=True)
            assert client.set(live[2], b"c") is True
        assert time.monotonic() - start < 2.0
        if kind == "client":
            assert client.noreply_errors == 0  # the marker's refusal is no noreply error
    finally:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_noreply_then_a_key_on_the_down_backend(half_down: NutcrackerProcess, kind: str) -> None:
    """A command to the down backend after a noreply write gets twemproxy's own error at
    once (not a timeout), and the commands after it still answer right."""
    (live,) = half_down.keys(tag(), live=True)
    (dead,) = half_down.keys(tag(), live=False)
    client = make(kind, half_down, timeout=3.0)
    try:
        for _ in range(3):
            client.set(live, b"v", noreply=True)
            start = time.monotonic()
            with pytest.raises(MemcacheServerError, match="Connection refused"):
                client.get(dead)
            assert time.monotonic() - start < 1.5
            assert client.get(live) == b"v"
            client.set(dead, b"x", noreply=True)  # dropped by twemproxy: nothing comes back
            assert client.get(live) == b"v"
    finally:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_noreply_without_a_timeout_never_hangs(half_down: NutcrackerProcess, kind: str) -> None:
    """``timeout=None`` (pymemcache's default): the marker's error answer is taken as its
    answer, so nothing waits for a ``VERSION`` that never comes."""
    (live,) = half_down.keys(tag(), live=True)
    (dead,) = half_down.keys(tag(), live=False)
    client = make(kind, half_down, timeout=None)
    try:
        client.set(live, b"v", noreply=True)
        assert bounded(lambda: client.get(live), 5.0)[:2] == ("ok", b"v")
        client.set(live, b"w", noreply=True)
        outcome, error, took = bounded(lambda: client.get(dead), 5.0)
        assert outcome == "raised" and isinstance(error, MemcacheServerError), (outcome, error)
        assert took < 2.0
        assert bounded(lambda: client.get(live), 5.0)[:2] == ("ok", b"w")
    finally:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_noreply_when_every_backend_is_down(all_down: NutcrackerProcess, kind: str) -> None:
    """Marker and command both answered with errors: the command's error, at once, with
    or without a timeout; never a hang."""
    for timeout in (3.0, None):
        client = make(kind, all_down, timeout=timeout)
        try:
            for _ in range(2):
                client.set("k", b"v", noreply=True)
                outcome, error, took = bounded(functools.partial(client.get, "k"), 5.0)
                assert outcome == "raised" and isinstance(error, MemcacheServerError), (
                    outcome,
                    error,
                )
                assert "Connection refused" in str(error)
                assert took < 2.0
        finally:
            client.close()


def test_hash_client_keeps_the_proxy_node(half_down: NutcrackerProcess) -> None:
    """A HashClient with its default ejection settings over the proxy: noreply writes and
    the marker's refusal never make it drop the node."""
    (live,) = half_down.keys(tag(), live=True)
    client = pymc.HashClient([half_down.server], timeout=3.0, retry_attempts=2, retry_timeout=1)
    try:
        for i in range(6):
            client.set(live, b"%d" % i, noreply=True)
            assert client.get(live) == b"%d" % i
        assert client.set(live, b"last") is True and client.get(live) == b"last"
    finally:
        client.close()


def test_noreply_through_a_healthy_twemproxy(
    memcached: MemcachedProcess, twemproxy: Factory
) -> None:
    """With every backend up, noreply behaves as on memcached itself."""
    proxy = twemproxy([tcp(memcached)])
    key = tag()
    with pymc.Client(proxy.server, timeout=2.0) as client:
        for i in range(5):
            client.set(key, b"%d" % i, noreply=True)
            assert client.get(key) == b"%d" % i
            assert client.version().startswith(b"1.")
        assert client.noreply_errors == 0


def test_a_missing_nutcracker_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fixture's own rule, checked without running pytest again: no binary, a failure."""
    import support.nutcracker as nc

    monkeypatch.setattr(nc, "NUTCRACKER", "no-such-nutcracker-binary")
    assert nc.nutcracker_path() is None
    with pytest.raises(nc.NutcrackerStartError, match="not found"):
        NutcrackerProcess([down_address()]).start()


def test_raw_command_behind_a_refused_marker(half_down: NutcrackerProcess) -> None:
    """raw_command checks with a lone marker that nothing follows its reply: a refused
    marker with nothing after it cannot be told from a noreply error, so the connection
    is closed, and the reply is still returned."""
    (live,) = half_down.keys(tag(), live=True)
    with pymc.Client(half_down.server, timeout=None) as client:
        client.set(live, b"v")
        for _ in range(2):
            outcome, reply, took = bounded(
                functools.partial(client.raw_command, f"get {live}", "END\r\n"), 5.0
            )
            assert outcome == "ok" and reply.startswith(b"VALUE"), (outcome, reply)
            assert took < 2.0
            assert client.get(live) == b"v"


def _events_client(kind: str, proxy: NutcrackerProcess, timeout: Any, events: List[str]) -> Any:
    if kind == "hash":
        return pymc.HashClient(
            [proxy.server],
            timeout=timeout,
            retry_attempts=2,
            retry_timeout=60,
            on_event=lambda event, node, info: events.append(event),
        )
    return make(kind, proxy, timeout=timeout)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("timeout", [3.0, None])
@pytest.mark.parametrize("kind", KINDS)
def test_a_noreply_command_the_proxy_closes_on_is_not_the_next_commands_failure(
    memcached: MemcachedProcess, twemproxy: Factory, kind: str, timeout: Any
) -> None:
    """twemproxy closes the connection on ``flush_all``, which pymc may send ``noreply``
    (pymemcache's default_noreply=True makes it so): nothing answers it, and the close is
    the only sign. Once the close has come, the next command is served on a new connection
    (it was never sent on the closed one); one that crosses the close raises the public
    MemcacheUnsupportedCommandError, which a HashClient does not count against the node.
    Either way the command after it is served at once and the node never rests."""
    proxy = twemproxy([tcp(memcached)])
    key = tag()
    events: List[str] = []
    client = _events_client(kind, proxy, timeout, events)
    try:
        assert client.set(key, b"v") is True
        for _ in range(3):
            client.flush_all(noreply=True)
            time.sleep(0.3)  # the proxy's close arrives (loopback: well under a millisecond)
            outcome, value, took = bounded(lambda: client.get(key), 5.0)
            assert (outcome, value) == ("ok", b"v"), (outcome, value)
            assert took < 2.0
        for _ in range(3):
            client.flush_all(noreply=True)  # and at once: the get may cross the close
            outcome, value, took = bounded(lambda: client.get(key), 5.0)
            if outcome != "ok":
                assert outcome == "raised", outcome
                assert isinstance(value, pymc.MemcacheUnsupportedCommandError), repr(value)
                assert "noreply" in str(value), str(value)
            else:
                assert value == b"v"
            assert took < 2.0
            assert bounded(lambda: client.get(key), 5.0)[:2] == ("ok", b"v")
        assert "node_failed" not in events, events
        if kind == "client":
            assert client.noreply_errors >= 3  # each refusal is counted, as an error line is
    finally:
        client.close()


#: Rounds of the multi-get/noreply race: the old code lost about one in three.
CLOSE_RACE_ROUNDS = 30


@pytest.mark.parametrize("ignore_exc", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_a_noreply_write_after_a_multi_get_the_proxy_closes_on_is_not_lost(
    half_down: NutcrackerProcess, kind: str, ignore_exc: bool
) -> None:
    """twemproxy answers a multi-key get that touches a down backend with ``SERVER_ERROR``
    and then closes the connection (it does not on a single-key get). A noreply write sent
    at once must go out on a new connection, not into the closing one: there it was lost,
    and the read after it got the old value, or MemcacheUnsupportedCommandError (the
    close taken for a refusal of the write)."""
    (live,) = half_down.keys(tag(), live=True)
    (dead,) = half_down.keys(tag(), live=False)
    client = make(kind, half_down, timeout=3.0, ignore_exc=ignore_exc)
    try:
        start = time.monotonic()
        for n in range(CLOSE_RACE_ROUNDS):
            if ignore_exc:
                assert client.get_many([live, dead]) == {}
            else:
                with pytest.raises(MemcacheServerError, match="Connection refused"):
                    client.get_many([live, dead])
            client.set(live, b"r%d" % n, noreply=True)
            assert client.get(live) == b"r%d" % n, n
        assert time.monotonic() - start < 5.0
    finally:
        client.close()
