"""HashClient's node health as a user sees it: which errors reach the caller from a node
that is resting after a failure, and which failures count against a node (a command the
server or proxy refuses leaves the connection in step and is that command's error only).
"""

from __future__ import annotations

from typing import Any, Callable, List, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.helpers import tcp
from support.servers import MemcachedProcess

import pymc
import pymc.exceptions
from pymc import HashClient, MemcacheError, MemcacheNetworkError

PUBLIC = set(pymc.exceptions.__all__)


def assert_public(exc: BaseException) -> None:
    """``exc`` is of a class a user can name: public, in pymc.exceptions' tree, exported."""
    cls = type(exc)
    assert isinstance(exc, MemcacheError), repr(exc)
    assert cls.__module__ == "pymc.exceptions", f"{cls.__module__}.{cls.__qualname__}"
    assert cls.__name__ in PUBLIC and getattr(pymc, cls.__name__) is cls, cls
    assert not cls.__name__.startswith("_"), cls


def resting_cluster(
    memcached_nodes: List[MemcachedProcess],
    fault_proxy: Callable[[Tuple[str, int]], FaultProxy],
    ignore_exc: bool,
) -> Tuple[HashClient, FaultProxy, List[str]]:
    """A HashClient over a healthy node and a proxied one that failed once, so it rests
    (retry_timeout 60 s, not ejected); and keys that live on the resting node."""
    proxy = fault_proxy(tcp(memcached_nodes[0]))
    servers = [proxy.address, tcp(memcached_nodes[1])]
    client = HashClient(
        servers, retry_attempts=5, retry_timeout=60, timeout=2, ignore_exc=ignore_exc
    )
    resting = pymc.client.server_name(proxy.address)
    keys = [f"rest-{i}" for i in range(200) if client.snapshot.node_for(f"rest-{i}") == resting]
    assert len(keys) > 3
    proxy.set_mode("reset")
    if ignore_exc:
        assert client.get(keys[0]) is None
    else:
        with pytest.raises(MemcacheNetworkError):
            client.get(keys[0])
    proxy.set_mode("pass")
    assert resting in client.snapshot.names  # resting, not ejected
    return client, proxy, keys


def every_path(client: HashClient, keys: List[str]) -> List[Tuple[str, Callable[[], Any]]]:
    key = keys[1]
    healthy = [f"ok-{i}" for i in range(50)]
    return [
        ("get", lambda: client.get(key)),
        ("get_many", lambda: client.get_many([key, *healthy])),
        ("gets_many", lambda: client.gets_many([key, *healthy])),
        ("set", lambda: client.set(key, b"v")),
        ("set_many", lambda: client.set_many({key: b"v", healthy[0]: b"v"})),
        ("delete", lambda: client.delete(key)),
        ("delete_many", lambda: client.delete_many([key, *healthy])),
        ("incr", lambda: client.incr(key, 1)),
        ("meta_get", lambda: client.meta_get(key)),
        ("meta_get_many", lambda: client.meta_get_many([key, *healthy])),
        ("meta_set", lambda: client.meta_set(key, b"v")),
        ("get_cas", lambda: client.get_cas(key)),
        ("fetch", lambda: client.fetch(key, lambda: b"computed")),
        ("getitem", lambda: client[key]),
    ]


@pytest.mark.parametrize("ignore_exc", [False, True])
def test_a_resting_node_raises_only_public_exceptions(
    memcached_nodes: List[MemcachedProcess],
    fault_proxy: Callable[[Tuple[str, int]], FaultProxy],
    ignore_exc: bool,
) -> None:
    client, _, keys = resting_cluster(memcached_nodes, fault_proxy, ignore_exc)
    raised = []
    for name, call in every_path(client, keys):
        try:
            result = call()
        except KeyError:
            assert name == "getitem" and ignore_exc
            continue
        except BaseException as exc:
            assert_public(exc)
            # an except clause written for the connection failure still catches it
            assert isinstance(exc, MemcacheNetworkError), (name, exc)
            raised.append(name)
        else:
            assert ignore_exc, f"{name} on a resting node returned {result!r}"
            if name == "fetch":
                assert result == b"computed"
    if not ignore_exc:
        assert len(raised) == len(every_path(client, keys)), raised


def test_the_resting_error_is_public_and_documented() -> None:
    from pymc.exceptions import NodeRestingError

    assert issubclass(NodeRestingError, MemcacheNetworkError)
    assert NodeRestingError.__doc__
    with open(pymc.__file__.replace("pymc/__init__.py", "README.md"), encoding="utf-8") as f:
        assert "NodeRestingError" in f.read()
