"""python -m pymc reports a bad address without a traceback."""

from __future__ import annotations

import subprocess
import sys
from typing import List

import pytest


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args", [["stats", "127.0.0.1:notaport"], ["discover", "[::1"], ["stats", "host:99999"]]
)
def test_the_command_line_reports_a_bad_address_without_a_traceback(args: List[str]) -> None:
    """``python -m pymc stats HOST:PORT`` with a malformed address died with a Python
    traceback (ValueError) instead of the one-line error and exit status 2 it gives for a
    server that cannot be reached."""
    proc = subprocess.run(
        [sys.executable, "-m", "pymc", "--timeout", "1", *args],
        capture_output=True,
        text=True,
        timeout=50,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: "), proc.stderr
