"""What both halves of the suite share.

``tests/unit/`` needs no server and no network: ``pytest tests/unit`` (``make test-unit``)
passes on a machine without memcached. ``tests/integration/`` runs real memcached servers, the
fault proxy and twemproxy; its fixtures are in ``tests/integration/conftest.py``.

``tests/`` has no ``__init__.py``, so pytest puts it on ``sys.path`` (for this conftest): both
halves and the scripts run in subprocesses (with ``tests/`` on their ``PYTHONPATH``) import the
helpers as ``support.*``. The test folders are packages (``unit.protocol``,
``integration.client``, ...), so two test files may share a name in different folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import pytest
from support.servers import MEMCACHED, memcached_path

INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Stop at once, with the reason, when integration tests are to run without memcached."""
    if memcached_path() is not None or config.option.collectonly:
        return
    if any(INTEGRATION in Path(str(item.path)).parents for item in items):
        pytest.exit(
            f"{MEMCACHED!r} not found on PATH: the integration tests need a real memcached "
            "(`make test` installs it with apt-get; or set MEMCACHED_BIN); "
            "`make test-unit` runs the unit tests alone, without it",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )
