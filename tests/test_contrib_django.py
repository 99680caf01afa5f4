"""pymc.contrib.django: Django's own memcached cache tests against PymcCache and
ElastiCacheCache, and tests of our own.

Django's ``tests/cache`` app is not in its wheel: it comes from the sdist of the pinned Django
(``support.sdist.sdist_tree``), whose ``tests/`` directory goes at the *end* of ``sys.path`` (so
none of its many top-level packages shadows anything) and whose ``cache`` app is installed.
Django is configured here, at import, with an in-memory SQLite database (its cache tests read
and write a model); nothing of this reaches other test modules, which do not use Django.

Excluded from Django's suite, each with its reason (also in the README):

* ``test_pymemcache_highest_pickle_version``: reads pymemcache's serde internals
  (``default_kwargs["serde"]._serialize_func.keywords``). Ours:
  ``test_values_are_pickled_with_the_highest_protocol``.
* ``test_pymemcache_options``: reads pymemcache's ``HashClient.default_kwargs``. Ours:
  ``test_options_reach_the_client``.
* ``ElastiCacheCache.test_location_multiple_servers``: puts two servers in ``LOCATION``;
  ElastiCacheCache takes exactly one (the configuration endpoint) and says so when it is made,
  as django-elastipymemcache does. Ours: ``test_elasticache_needs_one_endpoint``.
"""

from __future__ import annotations

import importlib
import sys
import unittest
from typing import Any, ClassVar, Dict, Iterator, List

import django
import pytest
from django.conf import settings
from support.helpers import tcp
from support.sdist import sdist_tree
from support.servers import MemcachedProcess

from pymc.testing import ConfigEndpoint

DJANGO_TESTS = sdist_tree("Django") / "tests"
if str(DJANGO_TESTS) not in sys.path:
    sys.path.append(str(DJANGO_TESTS))

if not settings.configured:
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "cache"],
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        USE_TZ=True,
        SECRET_KEY="pymc-tests",
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates"}],
    )
    django.setup()

from django.test import override_settings  # noqa: E402
from django.test.utils import (  # noqa: E402
    setup_databases,
    setup_test_environment,
    teardown_databases,
    teardown_test_environment,
)

from pymc.contrib.django import (  # noqa: E402
    close_clients,
)

# Imported as a module, not its names: pytest would collect Django's own classes too.
django_cache_tests: Any = importlib.import_module("cache.tests")

PYMC = "pymc.contrib.django.PymcCache"
ELASTICACHE = "pymc.contrib.django.ElastiCacheCache"


@pytest.fixture(scope="module", autouse=True)
def django_test_environment() -> Iterator[None]:
    setup_test_environment()
    old = setup_databases(verbosity=0, interactive=False)
    try:
        yield
    finally:
        close_clients()
        teardown_databases(old, verbosity=0)
        teardown_test_environment()


def suite_caches(params: Dict[str, Any]) -> Dict[str, Any]:
    """The CACHES Django's memcached tests run with (its helper, with its exclusions)."""
    setting: Dict[str, Any] = django_cache_tests.caches_setting_for_tests(
        base=params, exclude=django_cache_tests.memcached_excluded_caches
    )
    return setting


class DjangoSuiteBase(django_cache_tests.PyMemcacheCacheTests):  # type: ignore[misc]
    """Django's ``PyMemcacheCacheTests`` (and so ``BaseMemcachedTests`` and
    ``BaseCacheTests``), with our backend in ``base_params``."""

    __test__ = False  # only its subclasses run
    __unittest_skip_why__ = ""
    # Django's class is skipped unless its settings name a PyMemcacheCache server; ours run.
    __unittest_skip__ = False
    # Django's close() after a request keeps the pooled connections: no disconnect_all().
    should_disconnect_on_close = False
    base_params: ClassVar[Dict[str, Any]] = {}
    backend = ""

    def configured(self, location: Any) -> Iterator[None]:
        """Django's settings for its memcached tests, with our backend at ``location``."""
        type(self).base_params = {"BACKEND": self.backend, "LOCATION": location}
        with override_settings(CACHES=suite_caches(self.base_params)):
            yield

    @unittest.skip("reads pymemcache's serde internals; see test_values_are_pickled_with...")
    def test_pymemcache_highest_pickle_version(self) -> None:
        pass

    @unittest.skip("reads pymemcache's HashClient.default_kwargs; see test_options_reach...")
    def test_pymemcache_options(self) -> None:
        pass


class TestDjangoSuitePymcCache(DjangoSuiteBase):
    __test__ = True
    backend = PYMC

    @pytest.fixture(autouse=True)
    def _caches(self, memcached_nodes: List[MemcachedProcess]) -> Iterator[None]:
        yield from self.configured([node.server for node in memcached_nodes])


class ElastiCacheCluster:
    """A configuration endpoint naming emulated nodes that relay to real memcached."""

    def __init__(self, servers: List[MemcachedProcess]) -> None:
        self.nodes = [ConfigEndpoint(upstream=tcp(s)).start() for s in servers]
        addresses = [node.address for node in self.nodes]
        self.endpoint = ConfigEndpoint(addresses).start()
        for node in self.nodes:
            node.set_nodes(addresses, version=1)

    @property
    def location(self) -> str:
        host, port = self.endpoint.address
        return f"{host}:{port}"

    def close(self) -> None:
        for emulator in [self.endpoint, *self.nodes]:
            emulator.stop()


@pytest.fixture(scope="module")
def elasticache_cluster(memcached_nodes: List[MemcachedProcess]) -> Iterator[ElastiCacheCluster]:
    cluster = ElastiCacheCluster(memcached_nodes)
    try:
        yield cluster
    finally:
        close_clients()  # its pollers first
        cluster.close()


class TestDjangoSuiteElastiCacheCache(DjangoSuiteBase):
    __test__ = True
    backend = ELASTICACHE

    @pytest.fixture(autouse=True)
    def _caches(self, elasticache_cluster: ElastiCacheCluster) -> Iterator[None]:
        yield from self.configured(elasticache_cluster.location)

    @unittest.skip("puts two servers in LOCATION: ElastiCacheCache takes one endpoint")
    def test_location_multiple_servers(self) -> None:
        pass
