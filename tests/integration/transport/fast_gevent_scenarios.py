"""The gevent fast paths (issue 19), each scenario run in a fresh process by
``tests/integration/transport/test_gevent_fast.py``:

    python tests/integration/transport/fast_gevent_scenarios.py NAME \
    '{"server": ["127.0.0.1", 11211]}'

exits 0 when every check held. Under ``patch_all`` the pool's own lock is the operating
system's (nothing under it waits), and a command's first send and a get's first recv go to
the stdlib socket gevent wraps; every command still yields once, a reply not there yet is
waited for in the hub, and what one send did not take goes out through gevent's socket by
the command's deadline.
"""

from __future__ import annotations

import json
import socket as stdlib_socket
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402
import gevent.socket  # noqa: E402
import gevent.thread  # noqa: E402

import pymc  # noqa: E402
from pymc.cluster import HashClient  # noqa: E402

Args = Dict[str, Any]


def addr(value: List[Any]) -> Tuple[str, int]:
    return (value[0], int(value[1]))


class Ticker:
    """A greenlet counting its turns (one every ``interval`` seconds) while it runs."""

    def __init__(self, interval: float = 0.005) -> None:
        self.ticks = 0
        self._stop = False

        def tick() -> None:
            while not self._stop:
                self.ticks += 1
                gevent.sleep(interval)

        self._greenlet = gevent.spawn(tick)
        gevent.sleep(0)

    def stop(self) -> int:
        self._stop = True
        self._greenlet.join(1)
        return self.ticks


def pool_takes_no_gevent_lock(args: Args) -> None:
    """Checkouts and returns take no gevent lock (the pool's is the OS lock it replaced); a
    caller waiting for a slot still waits on a gevent lock, cooperatively, and no slot is
    lost."""
    server = addr(args["server"])
    taken = [0]
    real_acquire = gevent.thread.LockType.acquire

    def counting_acquire(self: Any, *a: Any, **kw: Any) -> Any:
        taken[0] += 1
        return real_acquire(self, *a, **kw)

    gevent.thread.LockType.acquire = counting_acquire
    pooled = pymc.PooledClient(server, timeout=5)
    hashed = HashClient([server], use_pooling=True, timeout=5)
    assert pooled.set("fast:lock", b"v") and hashed.get("fast:lock") == b"v"
    taken[0] = 0

    def gets() -> None:
        for _ in range(20):
            assert pooled.get("fast:lock") == b"v"
            assert hashed.get("fast:lock") == b"v"

    gevent.joinall([gevent.spawn(gets) for _ in range(10)], raise_error=True, timeout=30)
    assert taken[0] == 0, taken  # no gevent lock on a checkout or a return
    for pool in [pooled.client_pool] + [c.client_pool for c in hashed.clients.values()]:
        stats = pool.stats()
        assert stats["in_use"] == 0 and stats["destroyed"] == 0, stats

    # One connection for five greenlets: the others wait (on gevent locks), cooperatively.
    single = pymc.PooledClient(server, timeout=5, max_pool_size=1, pool_timeout=10)
    done: List[int] = []

    def turns(i: int) -> None:
        for _ in range(10):
            assert single.get("fast:lock") == b"v"
            gevent.sleep(0.002)  # holds nothing here: another greenlet takes the slot
        done.append(i)

    ticker = Ticker()
    gevent.joinall([gevent.spawn(turns, i) for i in range(5)], raise_error=True, timeout=30)
    assert ticker.stop() > 3 and sorted(done) == list(range(5)), (ticker.ticks, done)
    assert taken[0] > 0  # the waits were gevent's
    stats = single.client_pool.stats()
    assert stats["in_use"] == 0 and stats["idle"] == 1 and stats["created"] == 1, stats


def _gevent_socket_calls(run: Callable[[], None]) -> List[str]:
    """The calls of gevent's own socket ``send``/``recv`` (its Python layer) while ``run``."""
    calls: List[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        code = frame.f_code
        if (
            event == "call"
            and code.co_name in ("send", "recv")
            and code.co_filename.endswith("_socketcommon.py")
        ):
            calls.append(code.co_name)

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return calls


class _ReplyFirstRaw(gevent.socket.socket._gevent_sock_class):  # type: ignore[misc]
    """The stdlib socket under a gevent socket, whose ``send`` returns once the reply is
    readable (or after 1 s): the reply is then always buffered before the recv."""

    def send(self, data: Any, flags: int = 0) -> int:
        sent = int(super().send(data, flags))
        poller = monkey.get_original("select", "poll")()
        poller.register(self.fileno(), 0x001)
        poller.poll(1000)  # blocks the thread, as a busy CPU would: no greenlet runs
        return sent


class _ReplyFirstSocket(gevent.socket.socket):  # type: ignore[misc]
    """A gevent socket whose own send and recv are gevent's, over a :class:`_ReplyFirstRaw`."""

    _gevent_sock_class = _ReplyFirstRaw


class _ReplyFirstModule:
    socket = _ReplyFirstSocket

    def __getattr__(self, name: str) -> Any:
        return getattr(gevent.socket, name)


def gets_skip_geventss_socket_layer(args: Args) -> None:
    """A get on each client: its request goes to the wrapped socket in one send, its reply
    is read from it in one recv, and the value is right. (The replies are made to arrive
    before the recv, as they usually do during the turn: see _ReplyFirstRaw.)"""
    server = addr(args["server"])
    options: Dict[str, Any] = {"timeout": 5, "socket_module": _ReplyFirstModule()}
    clients: Dict[str, Any] = {
        "Client": pymc.Client(server, **options),
        "PooledClient": pymc.PooledClient(server, **options),
        "HashClient": HashClient([server], **options),
        "HashClient-pooled": HashClient([server], use_pooling=True, **options),
    }
    for name, client in clients.items():
        assert client.set(f"fast:{name}", name.encode()) and client.get("fast:none") is None

        def run(client: Any = client, name: str = name) -> None:
            for _ in range(20):
                assert client.get(f"fast:{name}") == name.encode()
                assert client.get("fast:none") is None

        assert _gevent_socket_calls(run) == [], name


def buffered_replies_still_yield(args: Args) -> None:
    """Replies always buffered before the recv, read without gevent's layer: each get still
    gives the other greenlets a turn (a ticker ticks between the gets)."""
    server = addr(args["server"])
    gets = int(args.get("gets", 200))
    client = pymc.Client(server, timeout=5, socket_module=_ReplyFirstModule())
    assert client.set("fast:buffered", b"b")
    assert isinstance(client.sock, _ReplyFirstSocket)

    def run() -> None:
        for _ in range(gets):
            assert client.get("fast:buffered") == b"b"

    ticks: List[int] = []

    def tick() -> None:
        while len(ticks) < gets:
            ticks.append(1)
            gevent.sleep(0)

    ticker = gevent.spawn(tick)
    calls = _gevent_socket_calls(lambda: gevent.spawn(run).join(30))
    ticker.kill()
    assert calls == [], calls  # the wrapped socket was used
    assert len(ticks) >= gets // 2, len(ticks)  # one turn per get


def slow_reply_and_large_request(args: Args) -> None:
    """A reply not there after the turn is waited for in the hub; a request one send does
    not take goes out through gevent's socket, cooperatively, by the command's deadline."""
    server, proxy = addr(args["server"]), addr(args["proxy"])  # (replies held 0.3 s)
    for client in (pymc.Client(proxy, timeout=5), pymc.PooledClient(proxy, timeout=5)):
        assert client.set("fast:slow", b"s")
        ticker = Ticker()
        start = time.monotonic()
        assert client.get("fast:slow") == b"s"
        took = time.monotonic() - start
        assert 0.25 < took < 3 and ticker.stop() > 10, (took, ticker.ticks)

    # 5 MB in one request (5000 sets of 1 KB): many sends, all of it stored.
    values = {f"fast:big{i}": bytes([65 + i % 26]) * 1024 for i in range(5000)}
    for client in (pymc.Client(server, timeout=5), pymc.PooledClient(server, timeout=5)):
        ticker = Ticker(0.001)
        assert client.set_many(values) == []
        ticker.stop()
        assert client.get_many(list(values)) == values

    # A peer that never reads: the request stops going out, the deadline ends the command.
    listener = stdlib_socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    host, port = listener.getsockname()[:2]
    client = pymc.Client((host, port), timeout=0.5, connect_timeout=5)
    ticker = Ticker()
    start = time.monotonic()
    try:
        client.set_many({f"fast:stuck{i}": b"x" * 1024 for i in range(20000)})
        raise AssertionError("20 MB went out to a peer that reads nothing")
    except pymc.MemcacheTimeoutError:
        pass
    took = time.monotonic() - start
    assert 0.4 < took < 3 and ticker.stop() > 20, (took, ticker.ticks)
    assert client.sock is None  # closed, never reused
    listener.close()


SCENARIOS = {
    "pool_takes_no_gevent_lock": pool_takes_no_gevent_lock,
    "gets_skip_geventss_socket_layer": gets_skip_geventss_socket_layer,
    "buffered_replies_still_yield": buffered_replies_still_yield,
    "slow_reply_and_large_request": slow_reply_and_large_request,
}


def main(argv: List[str]) -> int:
    name = argv[1]
    args = json.loads(argv[2]) if len(argv) > 2 else {}
    SCENARIOS[name](args)
    print(f"scenario {name} passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
