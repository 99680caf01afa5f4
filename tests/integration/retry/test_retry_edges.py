"""RetryingClient and retried commands: keyword arguments and replayed keys."""

from __future__ import annotations

from typing import Any, Callable, List

import pytest
from support.faultproxy import FaultProxy
from support.helpers import tcp, wait_until
from support.servers import MemcachedProcess

import pymc
import pymc.cluster
from pymc import (
    Client,
    MemcacheUnknownCommandError,
    PooledClient,
    RetryingClient,
)
from pymc.client import COMMANDS


def _every_command_by_keyword(client: Any) -> List[str]:
    """Call every Client command through ``client`` with keyword arguments only; return the
    names called. Ends with ``shutdown``: the server must be private and have ``-A``."""
    called: List[str] = []

    def call(name: str, **kwargs: Any) -> Any:
        called.append(name)
        return getattr(client, name)(**kwargs)

    assert call("set", key="k", value=b"v", expire=0, noreply=False, flags=0) is True
    assert call("set_many", values={"a": b"1"}, expire=0, noreply=False, flags=None) == []
    assert call("set_multi", values={"b": b"2"}, expire=0, noreply=False, flags=None) == []
    assert call("add", key="new", value=b"n", expire=0, noreply=False, flags=None) is True
    assert call("replace", key="k", value=b"w", expire=0, noreply=False, flags=None) is True
    assert call("append", key="k", value=b">", expire=0, noreply=False, flags=None) is True
    assert call("prepend", key="k", value=b"<", expire=0, noreply=False, flags=None) is True
    assert call("get", key="k", default=None) == b"<w>"
    assert call("get", key="missing", default="dflt") == "dflt"
    value, cas = call("gets", key="k", default=None, cas_default=None)
    assert value == b"<w>"
    assert call("cas", key="k", value=b"c", cas=cas, expire=0, noreply=False, flags=None)
    assert call("get_many", keys=["k", "a"]) == {"k": b"c", "a": b"1"}
    assert call("get_multi", keys=["b"]) == {"b": b"2"}
    assert set(call("gets_many", keys=["k"])) == {"k"}
    assert set(call("gets_multi", keys=["a"])) == {"a"}
    assert call("gat", key="k", expire=0, default=None) == b"c"
    assert call("gats", key="k", expire=0, default=None, cas_default=None)[0] == b"c"
    assert call("touch", key="k", expire=0, noreply=False) is True
    assert call("set", key="n", value=5) is True
    assert call("incr", key="n", value=2, noreply=False) == 7
    assert call("decr", key="n", value=3, noreply=False) == 4
    assert call("delete", key="n", noreply=False) is True
    assert call("delete_many", keys=["a"], noreply=False) is True
    assert call("delete_multi", keys=["b"], noreply=False) is True
    assert call("stats")[b"curr_connections"] >= 1
    assert call("cache_memlimit", memlimit=64) is True
    assert call("version").startswith(b"1.")
    assert call("verbosity", level=0, noreply=False) is True
    assert call("raw_command", command="version", end_tokens="\r\n").startswith(b"VERSION ")
    reply = call("raw_command", command=b"get new", end_tokens=b"END\r\n")
    assert reply.startswith(b"VALUE new 0 1\r\nn\r\n")
    with pytest.raises(MemcacheUnknownCommandError):  # plain memcached: no cluster config
        call("cluster_config")
    assert call("meta_set", key="m", value=b"1", ttl=0).status == "stored"
    assert call("meta_get", key="m", return_cas=True).value == b"1"
    assert call("lease_get", key="m", lease_ttl=30, recache_ttl=None).value == b"1"
    lease = call("lease_get", key="m-new", lease_ttl=30, recache_ttl=None)
    assert lease.win and call("lease_set", key="m-new", value=b"n", ttl=0, lease=lease) is True
    lease = call("lease_get", key="m-gone", lease_ttl=30, recache_ttl=None)
    assert lease.win and call("lease_release", key="m-gone", lease=lease) is True
    assert call("meta_arithmetic", key="m", delta=2).number == 3
    assert call("meta_delete", key="m", invalidate=True).status == "deleted"
    assert call("meta_noop").status == "noop"
    value, cas = call("get_cas", key="m", default=None)
    assert call("set_cas", key="m", value=b"5", cas=cas, ttl=0) is True
    assert call("invalidate", key="m", ttl=30) is True
    assert call("meta_set_many", values={"m1": b"1", "m2": b"2"}, ttl=0) == []
    assert call("meta_get_many", keys=["m1", "m2", "m3"]) == {"m1": b"1", "m2": b"2"}
    assert call("meta_delete_many", keys=["m1", "m3"], invalidate=False) == ["m3"]
    assert call("flush_all", delay=0, noreply=False) is True
    assert call("get", key="k", default=None) is None
    assert call("quit") is None
    assert call("shutdown", graceful=False) is None
    return called


@pytest.mark.parametrize("wrapped", ["Client", "PooledClient"])
def test_retrying_client_passes_every_keyword_argument_through(
    new_memcached: Callable[..., MemcachedProcess], wrapped: str
) -> None:
    server = new_memcached("-A")  # -A: shutdown enabled
    inner = {"Client": Client, "PooledClient": PooledClient}[wrapped](tcp(server), timeout=2.0)
    client = RetryingClient(inner, attempts=2)
    try:
        called = _every_command_by_keyword(client)
    finally:
        inner.close()
    assert set(called) == set(COMMANDS)
    wait_until(lambda: not server.is_running(), what="the server to shut down")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("wrap", ["retrying", "hooked-retrying"])
def test_a_retried_multi_key_command_replays_its_keys(
    memcached: MemcachedProcess, fault_proxy: Callable[..., FaultProxy], wrap: str
) -> None:
    """Keys given as an iterator (a generator, ``map``, ``dict.keys()`` of a view's
    iterator) are read by the first attempt; a retry read the spent iterator and returned
    ``{}``: every value silently a miss after a connection had broken."""
    seed = pymc.Client(tcp(memcached))
    seed.set_many({"gen-a": b"1", "gen-b": b"2"})
    seed.close()
    proxy = fault_proxy(tcp(memcached))
    hook = (lambda command, keys, server: None) if wrap == "hooked-retrying" else None
    inner = pymc.Client(("127.0.0.1", proxy.port), on_command=hook)
    client = pymc.RetryingClient(inner, attempts=3)
    try:
        assert client.get_many(iter(["gen-a", "gen-b"])) == {"gen-a": b"1", "gen-b": b"2"}
        proxy.close_all()  # the connection breaks under the client
        found = client.get_many(key for key in ["gen-a", "gen-b"])
        assert found == {"gen-a": b"1", "gen-b": b"2"}
        proxy.close_all()
        assert client.delete_many(iter(["gen-a"])) is True
        assert client.get_many(iter(["gen-a", "gen-b"])) == {"gen-b": b"2"}
    finally:
        client.close()
