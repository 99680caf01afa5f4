"""Values at their edges: int subclasses, one too-large value in set_many."""

from __future__ import annotations

import enum
from typing import Any, Dict

import pytest
from pymemcache.client.base import Client as PmcClient
from support.hashclients import tag
from support.helpers import KINDS, one_node_client, tcp
from support.servers import MemcachedProcess

from pymc import (
    Client,
)


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


make = one_node_client


@pytest.mark.parametrize("ignore", [False, True])
def test_one_too_large_value_in_set_many(ignore: bool, memcached: MemcachedProcess) -> None:
    """One value over the 1 MiB item limit in the middle of a set_many: every client raises
    MemcacheServerError (ignore_exc does not hide write errors on Client) or, where errors
    are hidden, names only the key that was not stored; the others are stored."""
    from pymc import MemcacheServerError

    seen: Dict[str, Any] = {}
    for kind in KINDS:
        client = make(kind, tcp(memcached), ignore_exc=ignore)
        k = tag()
        values = {k + "a": b"1", k + "big": b"x" * (2 << 20), k + "c": b"3"}
        try:
            seen[kind] = sorted(client.set_many(values))
        except MemcacheServerError:
            seen[kind] = "MemcacheServerError"
        assert client.get_many([k + "a", k + "c"]) == {k + "a": b"1", k + "c": b"3"}
        if seen[kind] != "MemcacheServerError":
            assert seen[kind] == [k + "big"], (kind, seen[kind])
