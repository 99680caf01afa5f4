"""Building the compiled reader: with a compiler, without one, with PYMC_NO_EXTENSIONS set."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Dict, Tuple

import pytest


def _build_in_copy(tmp_path: Path, env: Dict[str, str]) -> Tuple[int, str, str]:
    """``setup.py build_ext --inplace`` in a copy of the project, then which reader the copy
    imports: (build exit code, build output, "True"/"False")."""
    root = Path(__file__).resolve().parents[3]
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(root / name, tmp_path / name)
    shutil.copytree(
        root / "pymc",
        tmp_path / "pymc",
        ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"),
    )
    # The build sees PYMC_NO_EXTENSIONS only when the test sets it (make test's pure pass
    # sets it for the tests' own process).
    probe_env = {k: v for k, v in os.environ.items() if k != "PYMC_NO_EXTENSIONS"}
    build = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=tmp_path, env={**probe_env, **env}, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    # -S: no site-packages, so the editable install of the project under test is not seen.
    probe = subprocess.run(
        [sys.executable, "-S", "-c", "import pymc; print(pymc.__speedups__, pymc.__file__)"],
        cwd=tmp_path, env={**probe_env, "PYTHONPATH": str(tmp_path)},
        capture_output=True, text=True, timeout=50,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    speedups, where = probe.stdout.split()
    assert Path(where).parent == tmp_path / "pymc"
    return build.returncode, build.stdout + build.stderr, speedups


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_build_without_a_compiler_succeeds_with_pure_python(tmp_path: Path) -> None:
    code, output, speedups = _build_in_copy(
        tmp_path, {"CC": "/bin/false", "LDSHARED": "/bin/false"}
    )
    assert code == 0, output
    assert "pure-Python reader" in output or "failed" in output.lower(), output
    assert speedups == "False"


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_no_extensions_at_build_time_builds_nothing(tmp_path: Path) -> None:
    code, output, speedups = _build_in_copy(tmp_path, {"PYMC_NO_EXTENSIONS": "1"})
    assert code == 0, output
    assert list((tmp_path / "pymc" / "protocol").glob("speedups*.so")) == []
    assert speedups == "False"


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_build_with_a_compiler_uses_the_compiled_reader(tmp_path: Path) -> None:
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.exists() or not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("no C compiler or no Python headers here")
    code, output, speedups = _build_in_copy(tmp_path, {})
    assert code == 0, output
    assert speedups == "True", output
