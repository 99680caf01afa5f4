"""dogpile.cache's pymc backend: its arguments and defaults, without a server."""

from __future__ import annotations

import warnings

import pytest

import pymc
import pymc.contrib.dogpile
from pymc.contrib.dogpile import PymcBackend


def _hash_client(backend: PymcBackend) -> pymc.HashClient:
    client = backend.client
    assert isinstance(client, pymc.HashClient)
    return client


def test_defaults_are_dogpiles() -> None:
    backend = PymcBackend({"url": ["127.0.0.1:1", "127.0.0.1:2"]})
    client = _hash_client(backend)
    assert [str(s) for s in backend.url] == ["127.0.0.1:1", "127.0.0.1:2"]
    assert (client.retry_attempts, client.retry_timeout, client.dead_timeout) == (2, 1, 60)
    assert client.options.default_noreply is False
    assert backend.get_mutex("k") is None
    assert backend.has_lock_timeout() is False
    assert backend.client is client  # one client, shared


def test_dead_timeout_under_hash_clients_name() -> None:
    backend = PymcBackend({"url": "127.0.0.1:1", "dead_timeout": 7})
    assert _hash_client(backend).dead_timeout == 7


def test_retry_options_without_retry_client_warn() -> None:
    with pytest.warns(UserWarning, match="enable_retry_client is not set"):
        PymcBackend({"url": "127.0.0.1:1", "retry_attempts": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PymcBackend({"url": "127.0.0.1:1"})


def test_retry_client_needs_attempts() -> None:
    with pytest.raises(ValueError, match="retry_attempts"):
        PymcBackend({"url": "127.0.0.1:1", "enable_retry_client": True})


def test_pymemcache_style_keepalive_is_converted() -> None:
    class Opts:  # what pymemcache.KeepaliveOpts offers
        idle, intvl, cnt = 5, 6, 7

    backend = PymcBackend({"url": "127.0.0.1:1", "socket_keepalive": Opts()})
    keepalive = _hash_client(backend).options.socket_keepalive
    assert keepalive is not None
    assert (keepalive.idle, keepalive.intvl, keepalive.cnt) == (5, 6, 7)


def test_backend_does_not_change_its_arguments() -> None:
    arguments = {"url": "127.0.0.1:1", "memcached_expire_time": 3, "lock_timeout": 2}
    copy = dict(arguments)
    PymcBackend(arguments)
    assert arguments == copy
