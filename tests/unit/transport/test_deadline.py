"""The command deadline object, without I/O."""

from __future__ import annotations

import time

import pytest

from pymc import MemcacheTimeoutError
from pymc.client import command_deadline, time_left


def test_command_deadline_and_time_left() -> None:
    assert command_deadline(None) is None
    assert time_left(None) is None
    deadline = command_deadline(0.5)
    assert deadline is not None
    left = time_left(deadline)
    assert left is not None and 0.4 < left <= 0.5
    with pytest.raises(MemcacheTimeoutError, match=r"127\.0\.0\.1:1"):
        time_left(time.monotonic() - 0.001, ("127.0.0.1", 1))
