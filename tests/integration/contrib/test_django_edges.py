"""The Django ElastiCache backend takes django-elastipymemcache 1.x's cluster_timeout."""

from __future__ import annotations

import pytest
from support.helpers import tcp
from support.servers import MemcachedProcess


@pytest.mark.timeout(30)
def test_elasticache_backend_takes_django_elastipymemcache_1x_cluster_timeout(
    memcached: MemcachedProcess,
) -> None:
    """django-elastipymemcache 1.x/2.x documented ``cluster_timeout`` (seconds for the
    cluster query) beside ``ignore_exc`` and ``ignore_cluster_errors``; the README here
    maps ``ignore_cluster_errors`` from those versions, but a site switching with their
    settings block failed at its first request: ``TypeError: unexpected keyword argument
    'cluster_timeout'``. It is discovery_timeout's old name."""
    from django.core.cache.backends.base import InvalidCacheBackendError

    from pymc.contrib.django import ElastiCacheCache, close_clients

    host, port = tcp(memcached)
    options = {"cluster_timeout": 1, "ignore_exc": True, "ignore_cluster_errors": True}
    backend = ElastiCacheCache(f"{host}:{port}", {"OPTIONS": options})
    try:
        # A plain memcached has no cluster configuration: it is the one node.
        assert backend.set("cluster-timeout", "v") is None
        assert backend.get("cluster-timeout") == "v"
        backend.delete("cluster-timeout")
        both = {"cluster_timeout": 1, "discovery_timeout": 1}
        with pytest.raises(InvalidCacheBackendError, match="not both"):
            ElastiCacheCache(f"{host}:{port}", {"OPTIONS": both})
    finally:
        close_clients()
