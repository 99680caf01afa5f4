"""Drop-in ``except`` clauses on a HashClient whose node is resting.

After a node fails, a HashClient does not try it again for ``retry_timeout`` seconds: the
calls in between fail at once with the resting error. pymemcache's HashClient lets the
first failure's class through (``ConnectionRefusedError``, ``socket.timeout``...) and then,
in that window, returns the default. So an ``except ConnectionRefusedError:`` written for
it must catch the resting error too: it is also an instance of the class of the failure
that made the node rest (tests/integration/client/test_drop_in_errors.py covers the first failure).
"""

from __future__ import annotations

import pickle
import socket
from typing import Any, Callable, Dict, Tuple

import pytest
from support.faultproxy import FaultProxy
from support.helpers import tcp
from support.servers import MemcachedProcess

from pymc import HashClient, MemcacheConnectError, MemcacheNetworkError, MemcacheTimeoutError


def closed_port() -> Tuple[str, int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return ("127.0.0.1", sock.getsockname()[1])


def calls(client: HashClient) -> Dict[str, Callable[[], Any]]:
    keys = [f"rest:{i}" for i in range(8)]
    return {
        "get": lambda: client.get("rest:k"),
        "set": lambda: client.set("rest:k", b"v"),
        "get_many": lambda: client.get_many(keys),
        "set_many": lambda: client.set_many({k: b"v" for k in keys}),
        "meta_get_many": lambda: client.meta_get_many(keys),
    }


@pytest.mark.parametrize("command", ["get", "set", "get_many", "set_many", "meta_get_many"])
def test_a_resting_node_is_still_caught_as_connection_refused(command: str) -> None:
    # Default retry policy: the node rests for retry_timeout (1 s) after each failure.
    client = HashClient([closed_port()], timeout=2.0, connect_timeout=2.0, retry_attempts=10)
    call = calls(client)[command]
    errors = []
    for _ in range(3):  # the failure, then twice while the node rests
        with pytest.raises(ConnectionRefusedError) as info:
            call()
        errors.append(info.value)
    for error in errors:
        assert isinstance(error, MemcacheNetworkError)
        assert isinstance(error, OSError)
    resting = errors[-1]
    assert not isinstance(resting, MemcacheConnectError)  # nothing was tried this time
    assert "ConnectionRefusedError" in type(resting).__name__
    assert type(pickle.loads(pickle.dumps(resting))) is type(resting)
    client.close()


@pytest.mark.timeout(30)
def test_a_node_resting_after_a_timeout_is_still_caught_as_socket_timeout(
    memcached: MemcachedProcess, fault_proxy: Callable[..., FaultProxy]
) -> None:
    proxy = fault_proxy(tcp(memcached))
    client = HashClient([proxy.address], timeout=0.2, retry_attempts=10, retry_timeout=5)
    proxy.set_mode("stall")
    with pytest.raises(socket.timeout) as first:
        client.get("k")
    assert isinstance(first.value, MemcacheTimeoutError)
    with pytest.raises(socket.timeout) as resting:  # at once: the node rests
        client.get("k")
    assert not isinstance(resting.value, MemcacheTimeoutError)  # nothing timed out this time
    client.close()
