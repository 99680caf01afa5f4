"""pymc.testing's fault modes are all listed."""

from __future__ import annotations

import pymc.testing


def test_all_modes_are_listed() -> None:
    assert set(pymc.testing.MODES) == {
        "normal",
        "error",
        "garbage",
        "malformed",
        "stall",
        "down",
        "legacy",
        "plain",
        "too_many",
        "lf",
        "slowloris",
        "huge",
    }
