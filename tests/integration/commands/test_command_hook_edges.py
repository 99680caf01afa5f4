"""The on_command hook: a hooked client is freed when dropped; a copy runs on its own connection."""

from __future__ import annotations

import copy
import gc
import weakref
from typing import Any, List

from support.helpers import current_sock, tcp
from support.servers import MemcachedProcess

import pymc
import pymc.cluster


def test_a_hooked_client_is_freed_when_dropped(memcached: MemcachedProcess) -> None:
    """A hooked Client bound its observed commands on itself, each holding the client: a
    reference cycle, so a client dropped without close() kept its socket (and the server's
    connection) until the cycle collector ran; never, with gc disabled or frozen, as some
    prefork servers do. An unhooked client is freed at once; a hooked one must be too."""
    server = tcp(memcached)
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for hook in (None, lambda command, keys, where: None):
            client = pymc.Client(server, on_command=hook)
            assert client.get("dropped") is None
            sock = client.sock
            assert sock is not None
            client_ref, sock_ref = weakref.ref(client), weakref.ref(sock)
            del client, sock
            assert client_ref() is None and sock_ref() is None, f"hook={hook!r}"
    finally:
        if was_enabled:
            gc.enable()


def test_a_copy_of_a_hooked_client_runs_on_its_own_connection(
    memcached: MemcachedProcess,
) -> None:
    """copy.copy() of a hooked Client copied the observed commands bound to the original:
    the copy's commands ran on the original's socket and state."""
    seen: List[Any] = []
    original = pymc.Client(tcp(memcached), on_command=lambda c, k, s: seen.append(c))
    original.set("copied", b"1")
    duplicate = copy.copy(original)
    duplicate.sock = None  # its own connection, made on first use
    try:
        assert duplicate.get("copied") == b"1"
        assert current_sock(duplicate) not in (None, original.sock)
        assert seen == ["set", "get"]
    finally:
        original.close()
        duplicate.close()
