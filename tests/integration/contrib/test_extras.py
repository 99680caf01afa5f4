"""A framework backend without its framework names the extra to install."""

from __future__ import annotations

import subprocess
import sys
from typing import List

import pytest


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "module, blocked, extra",
    [
        ("pymc.contrib.django", ["django"], "django"),
        ("pymc.contrib.flask", ["flask_caching", "cachelib"], "flask"),
        ("pymc.contrib.opentelemetry", ["opentelemetry"], "opentelemetry"),
    ],
)
def test_a_backend_without_its_framework_names_the_extra(
    module: str, blocked: List[str], extra: str
) -> None:
    """Without its framework a backend said only ``No module named 'cachelib'`` (for the
    Flask backend, a package the user never asked for); it names the extra to install."""
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "try:\n"
        f"    import {module}\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=True
    )
    assert f"pip install 'pymc-memcached[{extra}]'" in proc.stdout, proc.stdout
