"""The unit tests: no server, no network.

Every test here runs with the socket layer's ``connect`` refused (an autouse fixture), so a test
that would need a server fails at once, with a message saying it belongs in
``tests/integration/``. (``socket.socketpair()`` and binding a port stay allowed.)
"""

from __future__ import annotations

import socket
from typing import Any, Iterator, NoReturn

import pytest


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise AssertionError(
            "a unit test tried to connect (no network in tests/unit/: it belongs in "
            f"tests/integration/): {args[1:]!r}"
        )

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield
