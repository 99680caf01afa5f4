"""pymc's log records stay off stderr unless logging is configured."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


LOGGING_SCRIPT = textwrap.dedent(
    """
    import logging, socket
    import pymc
    records = []
    logging.getLogger("pymc").addFilter(lambda record: records.append(record) or True)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()
    client = pymc.HashClient(
        [dead], connect_timeout=0.5, timeout=0.5, retry_attempts=1, ignore_exc=True,
        dead_timeout=60,
    )
    for _ in range(3):
        client.get("k")
    client.close()
    print(len([r for r in records if r.levelno >= logging.WARNING]))
    """
)


def test_library_warnings_stay_off_stderr_without_logging_config() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", LOGGING_SCRIPT],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip()) >= 1  # a warning was logged...
    assert proc.stderr == ""  # ...and nothing reached stderr
