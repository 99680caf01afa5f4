"""Fairness scenarios under ``gevent.monkey.patch_all()``, each run in a fresh process by
``tests/integration/transport/test_gevent_fair.py``:

    python tests/integration/transport/fair_gevent_scenarios.py NAME \
    '{"server": ["127.0.0.1", 11211]}'

exits 0 when every check held (an assertion's traceback goes to stderr otherwise). Each
scenario calls ``monkey.patch_all()`` first, unless it is about gevent without patching.

"Replies arrive buffered": on a busy machine (or with the server on the client's CPU) the
server's reply is often in the socket before the client calls ``recv``, so a gevent socket's
``recv`` returns at once and the greenlet does not yield. ``BufferedReplies`` makes that
certain rather than likely: its sockets are real gevent sockets to a real server, whose
``send`` then blocks the whole thread (the unpatched ``poll``) until the reply has arrived.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Dict, List

import gevent
import gevent.socket
from gevent import monkey

import pymc

Args = Dict[str, Any]
_real_select = monkey.get_original("select", "poll")
POLLIN = 0x001


class _ReplyFirstSocket(gevent.socket.socket):  # type: ignore[misc]
    """A gevent socket whose ``send`` returns only once the reply is readable (or after 1 s):
    the caller then always finds the reply buffered."""

    def send(self, data: Any, flags: int = 0, timeout: Any = None) -> int:
        sent = int(super().send(data, flags))
        poller = _real_select()
        poller.register(self.fileno(), POLLIN)
        poller.poll(1000)  # blocks the thread, as a busy CPU would: no greenlet runs
        return sent


class BufferedReplies:
    """A socket module: gevent's, with :class:`_ReplyFirstSocket` sockets."""

    socket = _ReplyFirstSocket

    def __getattr__(self, name: str) -> Any:
        return getattr(gevent.socket, name)


def one_get_is_not_starved(args: Args) -> None:
    """``greenlets`` greenlets hammer one PooledClient with gets whose replies are always
    buffered; a greenlet spawned after them that needs a single get gets it within about
    one get of each of them -- not after all of theirs -- and no hammering greenlet waits
    much longer than one round of the others between two of its own gets."""
    monkey.patch_all()
    server = (args["server"][0], int(args["server"][1]))
    greenlets, per_greenlet = int(args["greenlets"]), int(args["gets"])
    hammer = pymc.PooledClient(server, socket_module=BufferedReplies(), timeout=5)
    probe = pymc.PooledClient(server, timeout=5)
    assert hammer.set("fair:hammer", b"h" * 100)
    assert probe.set("fair:probe", b"p")
    # Connect every hammering connection first (and leave them idle in the pool), so the
    # timed part measures scheduling, not 200 TCP handshakes.
    conns = [hammer.client_pool.get() for _ in range(greenlets)]
    for conn in conns:
        assert conn.get("fair:hammer") == b"h" * 100
    for conn in conns:
        hammer.client_pool.release(conn)

    done = [0]  # gets completed by the hammering greenlets, in order
    gaps: List[int] = []  # per greenlet: the most gets others did between two of its own
    probe_seen: Dict[str, Any] = {}

    def work(last: int) -> None:  # last: gets done when this greenlet was spawned
        widest = 0
        for _ in range(per_greenlet):
            assert hammer.get("fair:hammer") == b"h" * 100
            widest = max(widest, done[0] - last)
            done[0] += 1
            last = done[0]
        gaps.append(widest)

    def one_get(spawned_ops: int, spawned: float) -> None:
        # Counted from its spawn: the wait for its first turn is part of what a user sees.
        probe_seen["start_ops"] = done[0] - spawned_ops
        assert probe.get("fair:probe") == b"p"
        probe_seen["ops"] = done[0] - spawned_ops
        probe_seen["seconds"] = time.perf_counter() - spawned

    start = time.perf_counter()
    workers = [gevent.spawn(work, done[0]) for _ in range(greenlets)]
    single = gevent.spawn(one_get, done[0], time.perf_counter())
    gevent.joinall([*workers, single], raise_error=True, timeout=60)
    took = time.perf_counter() - start
    total = greenlets * per_greenlet
    assert done[0] == total and len(gaps) == greenlets, (done, len(gaps))
    print(
        f"{greenlets} greenlets x {per_greenlet} buffered gets in {took:.3f} s; the single "
        f"get waited {probe_seen['ops']} of their gets ({probe_seen['seconds'] * 1e3:.1f} ms, "
        f"started after {probe_seen['start_ops']}); widest gap of one greenlet: {max(gaps)} "
        "gets of the others"
    )
    # Fair: each other greenlet does about one get (at most a few) while the single get is
    # in flight; unfair: it waits for all their gets.
    assert probe_seen["ops"] <= 3 * greenlets, probe_seen
    assert probe_seen["seconds"] < took / 3, (probe_seen, took)
    # No greenlet is left behind: between two of its gets, the others do about one each.
    assert max(gaps) <= 3 * greenlets, sorted(gaps)[-5:]
    stats = hammer.client_pool.stats()
    assert stats["in_use"] == 0 and stats["destroyed"] == 0, stats


def noreply_writer_lets_readers_run(args: Args) -> None:
    """A greenlet storing ``sets`` keys with ``noreply`` never reads a reply, so its socket
    never makes it wait; a greenlet that needs a few gets meanwhile still gets them
    promptly, not after the whole batch. With ``"patch": false``, nothing is patched and
    both clients are given ``socket_module=gevent.socket`` (pymemcache's way)."""
    options: Dict[str, Any] = {"timeout": 5}
    if args.get("patch", True):
        monkey.patch_all()
    else:
        options["socket_module"] = gevent.socket
    server = (args["server"][0], int(args["server"][1]))
    sets, reads = int(args["sets"]), int(args["reads"])
    writer = pymc.Client(server, **options)
    reader = pymc.Client(server, **options)
    assert writer.set("fair:w", b"w") and reader.get("fair:w") == b"w"  # both connected
    assert isinstance(writer.sock, gevent.socket.socket), type(writer.sock)
    assert monkey.is_module_patched("time") == bool(args.get("patch", True))
    written = [0]
    seen: List[int] = []  # sets written when each read completed

    def write() -> None:
        for i in range(sets):
            writer.set(f"fair:w{i}", b"x" * 50, noreply=True)
            written[0] += 1
        assert writer.get(f"fair:w{sets - 1}") == b"x" * 50  # all of them arrived

    def read() -> None:
        for _ in range(reads):
            assert reader.get("fair:w") == b"w"
            seen.append(written[0])

    start = time.perf_counter()
    jobs = [gevent.spawn(write), gevent.spawn(read)]
    gevent.joinall(jobs, raise_error=True, timeout=60)
    took = time.perf_counter() - start
    print(f"{sets} noreply sets in {took:.3f} s; {reads} gets done after {seen} of them")
    assert len(seen) == reads, seen
    # Fair: the reads interleave with the writes; unfair: they all run once every write
    # is done. (A read that waits for its reply may wait up to gevent's switch interval,
    # 5 ms, while the writer keeps yielding: hundreds of sets, not thousands.)
    assert seen[0] < sets // 2 and seen[-1] < sets, seen


def idle_check_does_not_yield(args: Args) -> None:
    """The pool's check of a connection that sat idle (``Client.is_clean``, a zero-timeout
    poll) never waits, so it must not go through the hub: with gevent's patched ``poll`` it
    did, a trip costing every other greenlet's turn in between (and each round of a pool
    whose connections all idled began with a thousand of them). It still sees unread bytes
    and the server's close."""
    import greenlet

    monkey.patch_all()
    server = (args["server"][0], int(args["server"][1]))
    client = pymc.Client(server, timeout=5)
    pool = pymc.PooledClient(server, timeout=5)
    assert client.set("fair:idle", b"v") and pool.get("fair:idle") == b"v"
    time.sleep(0.1)  # past the pool's idle check threshold

    switches: List[Any] = []
    ran: List[str] = []
    gevent.spawn(ran.append, "other")  # ready to run at the first trip through the hub
    previous = greenlet.settrace(lambda event, args: switches.append(event))
    try:
        clean = client.is_clean()
        conn = pool.client_pool.get()  # idle past the threshold: checked before reuse
        pool.client_pool.release(conn)
    finally:
        greenlet.settrace(previous)
    assert clean is True
    assert switches == [] and ran == [], (switches, ran)
    stats = pool.client_pool.stats()
    assert stats["created"] == 1 and stats["destroyed"] == 0, stats  # reused, not replaced

    # Dirty connections are still seen: unread bytes, then the server's close (EOF).
    client.sock.sendall(b"version\r\n")  # type: ignore[union-attr]
    deadline = time.monotonic() + 5
    while client.is_clean() and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert client.is_clean() is False
    client.close()
    assert client.get("fair:idle") == b"v"
    client.sock.sendall(b"quit\r\n")  # type: ignore[union-attr]
    deadline = time.monotonic() + 5
    while client.is_clean() and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert client.is_clean() is False
    client.close()
    pool.close()


SCENARIOS = {
    "one_get_is_not_starved": one_get_is_not_starved,
    "noreply_writer_lets_readers_run": noreply_writer_lets_readers_run,
    "idle_check_does_not_yield": idle_check_does_not_yield,
}


def main(argv: List[str]) -> int:
    name = argv[1]
    args = json.loads(argv[2]) if len(argv) > 2 else {}
    SCENARIOS[name](args)
    print(f"scenario {name} passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
