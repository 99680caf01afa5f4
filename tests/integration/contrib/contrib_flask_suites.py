"""cachelib's and Flask-Caching's own test modules, imported from their pinned sdists.

Nothing of theirs is copied here: :func:`support.sdist.sdist_tree` unpacks the sdist of the
installed version, and this module imports the test modules from it. cachelib's modules import
each other by bare names (``from common import CommonTests``, ``from conftest import TestData``),
and its ``conftest`` imports pytest-xprocess, which we do not use (our fixtures start the
servers). So the import runs with cachelib's ``tests/`` first on ``sys.path``, its conftest
standing as ``conftest`` (ours is put back afterwards), and an empty stand-in for ``xprocess``
if that is not installed; the bare names are removed from ``sys.modules`` again so that they
cannot shadow anything else.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Dict, Iterable, Tuple

import pytest
from support.sdist import sdist_tree


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_suite(
    tests_dir: Path, modules: Iterable[str], conftest_as: str
) -> Dict[str, types.ModuleType]:
    """Import ``modules`` (bare names) from ``tests_dir``; their ``conftest`` is importable
    as ``conftest`` meanwhile, and is returned under the key ``"conftest"``."""
    names = list(modules)
    pytest.register_assert_rewrite(*names)
    saved_path = list(sys.path)
    saved = {name: sys.modules.get(name) for name in [*names, "conftest", "xprocess"]}
    try:
        if importlib.util.find_spec("xprocess") is None:
            stub = types.ModuleType("xprocess")
            stub.ProcessStarter = object  # type: ignore[attr-defined]
            sys.modules["xprocess"] = stub
        sys.path.insert(0, str(tests_dir))
        their_conftest = _load_file(conftest_as, tests_dir / "conftest.py")
        sys.modules["conftest"] = their_conftest
        loaded = {name: importlib.import_module(name) for name in names}
    finally:
        sys.path[:] = saved_path
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    loaded["conftest"] = their_conftest
    return loaded


def cachelib_suite() -> Dict[str, types.ModuleType]:
    """cachelib's ``tests/test_memcached_cache.py`` (with the mixins it imports)."""
    tests_dir = sdist_tree("cachelib") / "tests"
    return load_suite(
        tests_dir,
        ["common", "clear", "has", "delete_many_with_prefix", "test_memcached_cache"],
        conftest_as="cachelib_suite_conftest",
    )


def flask_caching_suite() -> Dict[str, types.ModuleType]:
    """Flask-Caching's ``tests/test_backend_cache.py``."""
    tests_dir = sdist_tree("Flask-Caching") / "tests"
    return load_suite(tests_dir, ["test_backend_cache"], conftest_as="flask_caching_suite_conftest")


#: Flask-Caching's app-level tests (the ``cached``/``memoize`` decorators, views, templates,
#: hash methods), which its own suite runs on SimpleCache only.
FLASK_CACHING_APP_MODULES = ["test_cache", "test_memoize", "test_view", "test_templates"]


def flask_caching_app_suite() -> Tuple[Path, Dict[str, types.ModuleType]]:
    """Flask-Caching's ``tests/`` directory and its app-level test modules."""
    tests_dir = sdist_tree("Flask-Caching") / "tests"
    modules = load_suite(
        tests_dir, FLASK_CACHING_APP_MODULES, conftest_as="flask_caching_app_suite_conftest"
    )
    return tests_dir, modules
