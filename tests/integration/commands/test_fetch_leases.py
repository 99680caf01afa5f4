"""fetch()'s leases and refreshes, and one item per key whichever command touches it
(issue 18 items 1-4 and 10), on every client against real memcached servers."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable, Dict, Iterator, List

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.helpers import make_client
from support.servers import MemcachedProcess

from pymc import MemcacheError
from pymc.serde import pickle_serde

pytestmark = pytest.mark.timeout(60)
KINDS = ["client", "pooled", "hash"]
_tags = itertools.count()


def tag() -> str:
    return f"lease{next(_tags)}-{time.monotonic_ns() % 10**9}"


make = make_client


class Background:
    """Run ``fn`` in a thread; ``result()`` joins it and returns or raises what it did."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: Any = None

        def run() -> None:
            try:
                self.value = fn()
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self, timeout: float = 20.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "a fetch hangs"
        if self.error is not None:
            raise self.error
        return self.value


def slow(value: Any, seconds: float, started: threading.Event) -> Callable[[], Any]:
    def compute() -> Any:
        started.set()
        time.sleep(seconds)
        return value

    return compute


# --------------------------------------------------------------------------- item 1


@pytest.mark.parametrize("kind", KINDS)
def test_fetch_never_hands_out_the_lease_placeholder_after_invalidate(
    nodes: List[MemcachedProcess], kind: str
) -> None:
    """A misses and computes; a writer invalidates; B then recomputes; C, probing while B
    computes, gets one of the dicts the application stores (never b'')."""
    key = tag()
    client = make(kind, nodes, serde=pickle_serde)
    other = [make(kind, nodes, serde=pickle_serde) for _ in range(3)]
    try:
        a_started, b_started = threading.Event(), threading.Event()
        a = Background(lambda: other[0].fetch(key, slow({"by": "A"}, 1.2, a_started), 60))
        assert a_started.wait(5)
        client.invalidate(key)
        b = Background(lambda: other[1].fetch(key, slow({"by": "B"}, 1.2, b_started), 60))
        b_started.wait(2)  # (with the lease still A's, B waits instead: also fine)
        time.sleep(0.1)
        seen: List[Any] = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            seen.append(other[2].fetch(key, lambda: {"by": "C"}, 60, wait=5))
            time.sleep(0.05)
        assert a.result() == {"by": "A"}
        assert isinstance(b.result(), dict)
        assert seen and all(isinstance(v, dict) for v in seen), {repr(v) for v in seen}
        assert isinstance(client.fetch(key, lambda: {"by": "D"}, 60), dict)
    finally:
        for c in [client, *other]:
            c.close()


# --------------------------------------------------------------------------- item 2


def _reads(client: Any, key: str) -> Dict[str, Any]:
    """What every read command of ``client`` makes of ``key``: the value it returns, or
    ``MISS`` when it says the key is missing."""
    miss = "MISS"
    out: Dict[str, Any] = {
        "get": client.get(key, miss),
        "get_many": client.get_many([key]).get(key, miss),
        "gets": client.gets(key, miss)[0],
        "gets_many": client.gets_many([key]).get(key, (miss,))[0],
        "gat": client.gat(key, 60, miss),
        "get_cas": client.get_cas(key, miss)[0],
        "meta_get_many": client.meta_get_many([key]).get(key, miss),
    }
    result = client.meta_get(key)
    out["meta_get"] = result.value if result.status == "hit" else miss
    out["lease_get"] = client.lease_get(key, 30).value
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_no_read_returns_a_placeholder_while_fetch_computes(
    nodes: List[MemcachedProcess], kind: str
) -> None:
    key = tag()
    client = make(kind, nodes)
    holder = make(kind, nodes)
    try:
        started = threading.Event()
        job = Background(lambda: holder.fetch(key, slow(b"computed", 1.0, started), 60))
        assert started.wait(5)
        during = _reads(client, key)
        assert job.result() == b"computed"
        wrong = {name: value for name, value in during.items() if value not in ("MISS", None)}
        assert not wrong, wrong
        after = _reads(client, key)
        assert all(value == b"computed" for value in after.values()), after
    finally:
        client.close()
        holder.close()


@pytest.mark.parametrize("kind", KINDS)
def test_meta_reads_never_return_a_vivified_placeholder(
    nodes: List[MemcachedProcess], kind: str
) -> None:
    """memcached's own vivify-on-miss (``mg ... N``, which another client may send) makes
    an empty item with flags 0: the meta reads call it a miss, for its maker too."""
    key = tag()
    client = make(kind, nodes)
    try:
        made = client.meta_get(key, vivify_on_miss=30)
        assert made.win and made.status == "miss" and made.value is None
        again = client.meta_get(key)
        assert again.won_elsewhere and again.status == "miss" and again.value is None
        assert client.meta_get_many([key]) == {}
        assert client.get_cas(key, "MISS") == ("MISS", None)
        # fetch waits for the placeholder's maker; then, at most ``wait`` later, says so
        with pytest.raises(MemcacheError):
            client.fetch(key, lambda: b"x", 60, wait=0.3)
        # the maker fills it with its cas
        assert client.set_cas(key, b"filled", made.cas, 60)
        assert client.meta_get(key).value == b"filled"
        assert client.fetch(key, lambda: b"never", 60) == b"filled"
    finally:
        client.close()


# --------------------------------------------------------------------------- item 3


def _near_expiry(client: Any, key: str, value: Any, ttl: int = 4) -> None:
    assert client.set(key, value, ttl)


@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_refresh_keeps_the_value_and_gives_the_win_back(
    nodes: List[MemcachedProcess], kind: str
) -> None:
    key = tag()
    client = make(kind, nodes)
    try:
        _near_expiry(client, key, b"valid")

        def boom() -> bytes:
            raise RuntimeError("backend down")

        with pytest.raises(RuntimeError):  # the winner's compute raises
            client.fetch(key, boom, 60, recache_ttl=30)
        assert client.get(key) == b"valid"  # the value stays
        assert client.meta_get(key).value == b"valid"
        # the win came back: the next caller refreshes at once
        calls: List[int] = []

        def fresh() -> bytes:
            calls.append(1)
            return b"fresh"

        assert client.fetch(key, fresh, 60, recache_ttl=30) == b"fresh"
        assert calls == [1]
        assert client.get(key) == b"fresh"
    finally:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", ["recache", "invalidate"])
def test_a_refresh_whose_value_cannot_be_stored_keeps_the_value(
    nodes: List[MemcachedProcess], kind: str, how: str
) -> None:
    """memcached drops the item when a value over its item size comes for it: the old one
    is put back, as it was (stale after invalidate), and the win is given back."""
    client = make(kind, nodes)
    try:
        for check in ("fetch", "meta"):
            key = tag()
            if how == "recache":
                _near_expiry(client, key, b"valid", ttl=30)
                options: Dict[str, Any] = {"recache_ttl": 60}
            else:
                assert client.set(key, b"valid", 60)
                assert client.invalidate(key)
                options = {}
            with pytest.raises(MemcacheError):
                client.fetch(key, lambda: b"x" * (2 * 1024 * 1024), 60, **options)
            assert client.get(key) == b"valid"
            if check == "fetch":  # the win came back
                assert client.fetch(key, lambda: b"fresh", 60, **options) == b"fresh"
                assert client.get(key) == b"fresh"
            else:  # as it was (an mg of a stale item takes its win: so, last)
                result = client.meta_get(key, return_ttl=True)
                assert result.value == b"valid" and 0 < result.ttl <= 30
                assert result.stale == (how == "invalidate")
    finally:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_stale_refresh_that_fails_keeps_the_stale_value(
    nodes: List[MemcachedProcess], kind: str
) -> None:
    key = tag()
    client = make(kind, nodes)
    try:
        assert client.set(key, b"old", 60)
        assert client.invalidate(key)

        def boom() -> bytes:
            raise RuntimeError("backend down")

        with pytest.raises(RuntimeError):
            client.fetch(key, boom, 60)
        assert client.get(key) == b"old"
        assert client.fetch(key, lambda: b"new", 60) == b"new"
    finally:
        client.close()


# --------------------------------------------------------------------------- item 10


@pytest.mark.parametrize("kind", KINDS)
def test_recache_non_winners_get_the_value_at_once(
    nodes: List[MemcachedProcess], kind: str
) -> None:
    key = tag()
    client = make(kind, nodes)
    others = [make(kind, nodes) for _ in range(4)]
    try:
        _near_expiry(client, key, b"valid", ttl=20)
        started = threading.Event()
        winner = Background(
            lambda: client.fetch(key, slow(b"fresh", 1.5, started), 60, recache_ttl=30)
        )
        assert started.wait(5)
        for other in others:
            begun = time.monotonic()
            assert other.fetch(key, lambda: b"never", 60, recache_ttl=30, wait=1) == b"valid"
            assert time.monotonic() - begun < 0.5
        assert winner.result() == b"fresh"
        assert client.get(key) == b"fresh"
    finally:
        client.close()
        for other in others:
            other.close()


# --------------------------------------------------------------------------- item 4

ALPHABETS = [
    st.characters(min_codepoint=0x21, max_codepoint=0x7E),  # ASCII text keys
    st.characters(min_codepoint=0xA0, max_codepoint=0x7FF),  # two UTF-8 bytes
    st.characters(min_codepoint=0x800, max_codepoint=0xFFFF, codec="utf-8"),
    st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF, codec="utf-8"),
]


def _fit(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (whole characters)."""
    while len(text.encode("utf-8")) > limit:
        text = text[:-1]
    return text


@st.composite
def keys(draw: Any) -> str:
    """A str key of 1 to 260 UTF-8 bytes, most near the 186/187/250/251-byte edges."""
    alphabet = st.one_of(*draw(st.lists(st.sampled_from(ALPHABETS), min_size=1, max_size=3)))
    size = draw(st.sampled_from([1, 60, 185, 186, 187, 188, 200, 248, 249, 250, 251, 260]))
    text = draw(st.text(alphabet, min_size=1, max_size=size))
    while len(text.encode("utf-8")) < size:
        text += draw(st.text(alphabet, min_size=1, max_size=8))
    return _fit(text, size) or "k"


@pytest.fixture(scope="module")
def clients(memcached_nodes: List[MemcachedProcess]) -> Iterator[Dict[Any, Any]]:
    for node in memcached_nodes:
        if not node.is_running():
            node.start()
    made = {
        (kind, prefix): make(kind, memcached_nodes, allow_unicode_keys=True, key_prefix=prefix)
        for kind in KINDS
        for prefix in (b"", b"app:", "é".encode() * 20)
    }
    yield made
    for client in made.values():
        client.close()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(key=keys(), kind=st.sampled_from(KINDS), prefix=st.sampled_from([0, 1, 2]))
def test_one_key_is_one_item_for_text_and_meta_commands(
    clients: Dict[Any, Any], key: str, kind: str, prefix: int
) -> None:
    pfx = [b"", b"app:", "é".encode() * 20][prefix]
    client = clients[(kind, pfx)]
    stamp = f"{time.monotonic_ns()}".encode()
    text_key = len(pfx + key.encode("utf-8")) <= 250
    if not text_key:  # the text commands refuse it; the meta ones still take it
        with pytest.raises(MemcacheError):
            client.set(key, b"v")
        assert client.meta_set(key, stamp, 60).stored
        assert client.meta_get(key).value == stamp
        return
    # text writes, meta reads
    assert client.set(key, b"t" + stamp, 60)
    assert client.meta_get(key).value == b"t" + stamp
    assert client.get_cas(key)[0] == b"t" + stamp
    assert client.meta_get_many([key]) == {key: b"t" + stamp}
    assert client.fetch(key, lambda: b"never", 60) == b"t" + stamp
    # meta writes, text reads
    assert client.meta_set(key, b"m" + stamp, 60).stored
    assert client.get(key) == b"m" + stamp
    assert client.get_many([key]) == {key: b"m" + stamp}
    # a text delete is seen by fetch: it recomputes
    assert client.delete(key)
    assert client.fetch(key, lambda: b"c" + stamp, 60) == b"c" + stamp
    assert client.get(key) == b"c" + stamp
    # a meta delete is seen by the text reads
    assert client.meta_delete(key).deleted
    assert client.get(key) is None


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [186, 187, 188, 249, 250])
def test_a_long_unicode_key_is_one_item_at_the_edges(
    nodes: List[MemcachedProcess], kind: str, size: int
) -> None:
    client = make(kind, nodes, allow_unicode_keys=True)
    try:
        key = _fit(tag() + "ü" * 200, size)
        key += "x" * (size - len(key.encode()))
        assert len(key.encode()) == size
        assert client.set(key, b"old", 60)
        assert client.meta_get(key).value == b"old"
        assert client.delete(key)
        assert client.fetch(key, lambda: b"new", 60) == b"new"
        assert client.get(key) == b"new"
    finally:
        client.close()


def test_meta_keys_reserved_for_leases_are_not_user_keys(nodes: List[MemcachedProcess]) -> None:
    """No key a caller gives reaches the lease of another key."""
    from pymc.meta import lease_key, meta_key

    client = make("client", nodes)
    try:
        key = tag()
        lease = lease_key(key)
        assert meta_key(lease) != (lease, True)  # (the base64 text itself: another item)
        spelled = __import__("base64").b64decode(lease)
        assert meta_key(spelled)[0] != lease
        started = threading.Event()
        job = Background(lambda: client.fetch(key, slow(b"v", 0.8, started), 60))
        assert started.wait(5)
        with make("client", nodes) as other:
            assert other.meta_get(spelled).status == "miss"
            assert other.meta_set(spelled, b"x", 60).stored  # stored elsewhere: no lease taken
        assert job.result() == b"v"
    finally:
        client.close()


# --------------------------------------------------------------------------- a soak


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
def test_no_read_ever_sees_anything_but_what_the_application_stores(
    nodes: List[MemcachedProcess], kind: str
) -> None:
    """Threads fetch (with and without recache_ttl), invalidate, delete, set and read a few
    keys at once for about a second (a Client each; the others shared): every value any
    read returns is one of the dicts the application stores (no placeholder, no b'')."""
    keys_ = [tag() for _ in range(3)]
    clients_ = [make(kind, nodes, serde=pickle_serde) for _ in range(8 if kind == "client" else 2)]
    bad: List[Any] = []
    stop = time.monotonic() + 1.2
    counter = itertools.count()

    def compute() -> Dict[str, int]:
        time.sleep(0.01)
        return {"n": next(counter)}

    def check(value: Any) -> None:
        if value is not None and not isinstance(value, dict):
            bad.append(value)

    def worker(i: int) -> None:
        client = clients_[i % len(clients_)]
        for step in itertools.count(i):
            if time.monotonic() > stop:
                return
            key = keys_[step % len(keys_)]
            op = step % 9
            try:
                if op in (0, 1):
                    check(client.fetch(key, compute, 2, wait=3))
                elif op == 2:
                    check(client.fetch(key, compute, 2, recache_ttl=2, wait=3))
                elif op == 3:
                    client.invalidate(key, 5)
                elif op == 4:
                    client.delete(key)
                elif op == 5:
                    client.set(key, {"n": -1}, 2)
                elif op == 6:
                    check(client.get(key))
                    check(client.get_many([key]).get(key))
                elif op == 7:
                    check(client.gets(key)[0])
                    check(client.get_cas(key)[0])
                else:
                    check(client.meta_get_many([key]).get(key))
                    result = client.meta_get(key)
                    check(result.value if result.hit else None)
            except MemcacheError as exc:  # (a lease timeout would be a failure too)
                bad.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for c in clients_:
        c.close()
    assert not any(t.is_alive() for t in threads)
    assert not bad, bad[:5]
