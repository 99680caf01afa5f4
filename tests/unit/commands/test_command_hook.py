"""The on_command hook's arguments."""

from __future__ import annotations

import pytest

from pymc import Client


def test_on_command_must_be_callable() -> None:
    with pytest.raises(TypeError):
        Client(("127.0.0.1", 11211), on_command="tracer")  # type: ignore[arg-type]
