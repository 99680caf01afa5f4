"""pymc's logger."""

from __future__ import annotations


def test_pymc_logger_has_a_null_handler() -> None:
    import logging

    handlers = logging.getLogger("pymc").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)
