"""The package as users get it: a wheel and an sdist that install by the distribution's
own name, and a command line that runs nothing from the current directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

import pymc

ROOT = Path(__file__).resolve().parents[3]
DIST_NAME = "pymc-memcached"


def run(args: List[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        args,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def source_copy(target: Path) -> Path:
    """The files git tracks (or, outside a git checkout, the tree without build output),
    copied so that building leaves the checkout untouched."""
    source = target / "src"
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout.decode()
        files = [name for name in listed.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        files = []
    if files:
        for name in files:
            if (ROOT / name).is_file():
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, source / name)
    else:
        shutil.copytree(
            ROOT,
            source,
            ignore=shutil.ignore_patterns(
                ".venv*", ".git", "build", "dist", "*.egg-info", "__pycache__"
            ),
        )
    return source


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Path]]:
    work = tmp_path_factory.mktemp("build")
    source = source_copy(work)
    out = work / "dist"
    # --no-isolation: the build runs with this venv's setuptools (the test extra pins one
    # new enough), so the test needs no download.
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)], work)
    wheels = list(out.glob("*.whl"))
    sdists = list(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list(out.iterdir())
    yield {"wheel": wheels[0], "sdist": sdists[0], "work": work}


@pytest.mark.timeout(300)
def test_the_wheel_is_named_versioned_and_licensed_as_declared(dists: Dict[str, Path]) -> None:
    wheel = dists["wheel"]
    assert wheel.name.startswith(f"pymc_memcached-{pymc.__version__}-")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = f"pymc_memcached-{pymc.__version__}.dist-info"
        metadata = Parser().parsestr(zf.read(f"{info}/METADATA").decode())
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
        license_names = [n for n in names if n.startswith(info) and n.endswith("/LICENSE")]
        assert license_names, names
        shipped = zf.read(license_names[0]).decode()
    assert shipped == (ROOT / "LICENSE").read_text()
    assert "Apache License" in shipped and "Version 2.0" in shipped
    assert metadata["Name"] == DIST_NAME
    assert metadata["Version"] == pymc.__version__
    assert "Apache-2.0" in (metadata.get("License-Expression") or metadata.get("License") or "")
    assert metadata["Requires-Python"] == ">=3.10"
    assert not metadata.get_all("Requires-Dist") or all(
        "extra ==" in req for req in metadata.get_all("Requires-Dist") or []
    ), "the core must need nothing at run time"
    assert "pymc = pymc.contrib.dogpile:PymcBackend" in entry_points
    assert "pymc/py.typed" in names
    assert "pymc/contrib/__init__.py" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]


@pytest.mark.timeout(300)
def test_the_sdist_carries_what_a_rebuild_needs(dists: Dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as tf:
        names = {name.split("/", 1)[1] for name in tf.getnames() if "/" in name}
    for needed in (
        "LICENSE",
        "CHANGELOG.md",
        "README.md",
        "pyproject.toml",
        "setup.cfg",
        "setup.py",
        "pymc/__init__.py",
        "pymc/py.typed",
    ):
        assert needed in names, needed


@pytest.mark.timeout(300)
def test_the_wheel_installs_into_a_fresh_venv_and_imports(dists: Dict[str, Path]) -> None:
    venv = dists["work"] / "venv"
    run([sys.executable, "-m", "venv", str(venv)], dists["work"])
    python = venv / "bin" / "python"
    run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(dists["wheel"])],
        dists["work"],
    )
    elsewhere = dists["work"] / "elsewhere"
    elsewhere.mkdir()
    proc = run(
        [
            str(python),
            "-c",
            "import pymc, pymc.contrib, importlib.metadata as m;"
            "print(pymc.__version__, m.version('pymc-memcached'), pymc.__file__)",
        ],
        elsewhere,
    )
    version, dist_version, where = proc.stdout.split()
    assert version == dist_version == pymc.__version__
    assert where.startswith(str(venv)), where  # the installed copy, not the checkout


def test_python_m_pymc_never_runs_a_benchmarks_package_from_the_current_directory(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "ran"
    package = tmp_path / "benchmarks"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\ndef main(argv=None):\n    return 0\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pymc", "bench"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2 and "invalid choice: 'bench'" in proc.stderr
    assert not marker.exists()
