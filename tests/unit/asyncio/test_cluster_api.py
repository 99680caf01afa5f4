"""The asyncio HashClient and ElastiCacheClient have every public command of the sync ones,
with the same parameters, each a coroutine function."""

from __future__ import annotations

import inspect
from typing import Any, List

import pytest

import pymc
import pymc.elasticache
from pymc.asyncio.cluster import HashClient
from pymc.asyncio.elasticache import ElastiCacheClient

#: Public methods of the sync clients that do no I/O: plain methods on the async ones too.
NO_IO = {"set_servers", "add_server", "remove_server", "check_key"}


def commands(cls: Any) -> List[str]:
    return [
        name
        for name, value in inspect.getmembers(cls)
        if not name.startswith("_") and inspect.isfunction(value) and name not in NO_IO
    ]


@pytest.mark.parametrize("name", commands(pymc.HashClient))
def test_hash_client_command(name: str) -> None:
    sync = getattr(pymc.HashClient, name)
    mine = getattr(HashClient, name)
    assert inspect.iscoroutinefunction(mine), name
    assert inspect.signature(mine) == inspect.signature(sync), name


@pytest.mark.parametrize("name", sorted(NO_IO))
def test_hash_client_plain_method(name: str) -> None:
    mine = getattr(HashClient, name)
    assert not inspect.iscoroutinefunction(mine)
    assert list(inspect.signature(mine).parameters) == list(
        inspect.signature(getattr(pymc.HashClient, name)).parameters
    )


def test_hash_client_constructor() -> None:
    sync = inspect.signature(pymc.HashClient.__init__).parameters
    mine = inspect.signature(HashClient.__init__).parameters
    assert list(mine) == list(sync)
    for name, param in sync.items():
        assert mine[name].kind == param.kind and mine[name].default == param.default, name


def test_properties() -> None:
    for name in ("snapshot", "nodes", "clients", "retry_attempts", "retry_timeout", "key_prefix"):
        assert isinstance(getattr(HashClient, name), property), name


def test_elasticache_commands() -> None:
    sync = pymc.elasticache.ElastiCacheClient
    for name in [*commands(sync), "wait_ready", "refresh"]:
        assert inspect.iscoroutinefunction(getattr(ElastiCacheClient, name)), name
    mine = inspect.signature(ElastiCacheClient.__init__).parameters
    theirs = inspect.signature(sync.__init__).parameters
    assert list(mine) == list(theirs)
    for name, param in theirs.items():
        assert mine[name].default == param.default, name
