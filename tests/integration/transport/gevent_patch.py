"""A pytest plugin that runs the suite under ``gevent.monkey.patch_all()``.

Loaded with ``python -m pytest -p integration.transport.gevent_patch ...`` (``tests/`` is on
``sys.path`` through the rootdir conftest), it patches when pytest imports it: before any test
module, and so before any test imports pymc. Tests that cannot run under gevent check
:func:`gevent_patched` and skip with a reason.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()


def gevent_patched() -> bool:
    """Whether this process runs with gevent's monkey-patching."""
    return bool(monkey.is_module_patched("socket"))


def pytest_terminal_summary(terminalreporter: object) -> None:
    """Say so at the end of the run, so whoever reads the output (or
    tests/integration/transport/test_gevent.py) can tell the suite really ran patched."""
    state = "monkey-patched" if gevent_patched() else "NOT monkey-patched"
    terminalreporter.write_line(f"gevent_patch: {state} (gevent.monkey.patch_all)")  # type: ignore[attr-defined]
