"""HashClient checks shared by the integration tests of keys, failures and client kinds.

``Events`` counts ``on_event`` calls; ``in_use``/``no_slot_out`` see the connections a HashClient
has checked out; ``SINGLE_KEY_COMMANDS``/``MULTI_KEY_COMMANDS`` call every command; ``BAD_KEYS``
are keys every command must refuse (with the key prefix ``PREFIX``); ``tag()`` makes unique keys.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable, Dict, List, Tuple

from pymc import HashClient


class Events:
    """An ``on_event`` hook that counts what it is told (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: List[Tuple[str, str]] = []

    def __call__(self, event: str, node: str, info: Dict[str, Any]) -> None:
        with self.lock:
            self.seen.append((event, node))

    def count(self, event: str) -> int:
        with self.lock:
            return sum(1 for e, _ in self.seen if e == event)


def in_use(client: HashClient) -> Dict[str, int]:
    """Connections checked out, per node (live and ejected): all 0 between calls."""
    pools = dict(client.clients)
    for name, (_, pool, _) in list(client._dead.items()):
        pools[name] = pool
    return {name: pool.client_pool.stats()["in_use"] for name, pool in pools.items()}


def no_slot_out(client: HashClient) -> bool:
    return not any(in_use(client).values())


MULTI_KEY_COMMANDS: Dict[str, Callable[[HashClient, List[Any]], Any]] = {
    "get_many": lambda c, keys: c.get_many(keys),
    "gets_many": lambda c, keys: c.gets_many(keys),
    "set_many": lambda c, keys: c.set_many({k: b"v" for k in keys}),
    "delete_many": lambda c, keys: c.delete_many(keys),
    "touch_many": lambda c, keys: c.touch_many(keys),
    "meta_get_many": lambda c, keys: c.meta_get_many(keys),
    "meta_delete_many": lambda c, keys: c.meta_delete_many(keys),
    "meta_set_many": lambda c, keys: c.meta_set_many({k: b"v" for k in keys}),
}


# What each command takes after its key.
SINGLE_KEY_COMMANDS: Dict[str, Tuple[Any, ...]] = {
    "get": (),
    "set": (b"v",),
    "add": (b"v",),
    "replace": (b"v",),
    "append": (b"v",),
    "prepend": (b"v",),
    "delete": (),
    "gets": (),
    "touch": (0,),
    "incr": (1,),
    "decr": (1,),
    "cas": (b"v", 1),
    "gat": (0,),
}


PREFIX = b"p:"


BAD_KEYS: List[Any] = [
    "k" * (251 - len(PREFIX)),  # 251 bytes with the prefix
    b"k" * (251 - len(PREFIX)),
    "a\x00b",
    b"a\x7fb",
    "a\r\nget x",
    b"a b",
    "é",  # allow_unicode_keys is off
    "é" * 125,  # 250 bytes of UTF-8 + the prefix: too long even with allow_unicode_keys
    None,
    1,
    bytearray(b"ab"),
    ["x"],
]


_counter = itertools.count()


def tag() -> str:
    return f"atk{next(_counter)}-{time.monotonic_ns() % 10**9}"
