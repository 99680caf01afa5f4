"""The default timeouts and limits."""

from __future__ import annotations

import pytest

import pymc
from pymc.client import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT

pytestmark = pytest.mark.timeout(30)


def test_the_defaults_are_finite() -> None:
    assert DEFAULT_CONNECT_TIMEOUT == 2.0 and DEFAULT_TIMEOUT == 2.0
    client = pymc.Client(("127.0.0.1", 1))
    assert (client.connect_timeout, client.timeout) == (2.0, 2.0)
    # None still means wait forever, as in pymemcache, when asked for
    assert pymc.Client(("127.0.0.1", 1), connect_timeout=None, timeout=None).timeout is None
