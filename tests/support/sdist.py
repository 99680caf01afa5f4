"""The source distribution of a pinned framework release, for running its own tests.

The frameworks' test modules are not part of their wheels, and we do not copy them into this
repository: the test that needs one asks for the sdist of the exact version installed, which pip
downloads once into the virtualenv (``<sys.prefix>/pymc-sdists``), and imports from there.
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

CACHE = Path(sys.prefix) / "pymc-sdists"


def sdist_tree(distribution: str, version: str | None = None) -> Path:
    """The unpacked sdist of ``distribution`` (the installed version unless one is given).

    Returns the directory the archive unpacks to (``Django-5.2.19/`` and the like). Raises
    ``RuntimeError`` if pip cannot download it: a framework's suite that cannot run is a failure,
    never a skip.
    """
    version = version or metadata.version(distribution)
    home = CACHE / f"{distribution.lower()}-{version}"
    home.mkdir(parents=True, exist_ok=True)
    done = home / ".unpacked"
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            _download_and_unpack(distribution, version, home)
            done.write_text("ok\n")
    roots = [p for p in home.iterdir() if p.is_dir() and p.name != "archive"]
    if len(roots) != 1:
        raise RuntimeError(f"the sdist of {distribution} {version} unpacked to {roots}")
    return roots[0]


def _download_and_unpack(distribution: str, version: str, home: Path) -> None:
    archives = home / "archive"
    archives.mkdir(exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--dest",
        str(archives),
        f"{distribution}=={version}",
    ]
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )
    found = sorted(archives.iterdir())
    if proc.returncode != 0 or len(found) != 1:
        raise RuntimeError(
            f"pip could not download the sdist of {distribution}=={version}:\n{proc.stderr}"
        )
    archive = found[0]
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(home)
    else:
        with tarfile.open(archive) as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(home, filter="data")
            else:  # pragma: no cover - Pythons before the tarfile filters
                tf.extractall(home)
