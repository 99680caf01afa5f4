"""Flask-Caching's pymc backend: its options and inc under contention."""

from __future__ import annotations

import threading
from typing import Any, Dict, List

import flask
import flask_caching
import pytest
from support.helpers import tcp
from support.servers import MemcachedProcess

from pymc.contrib.flask import PymcCache as FlaskPymcCache


@pytest.mark.parametrize("options", [{"max_pool_size": 2}, {"use_pooling": False}])
def test_flask_cache_options_may_name_hash_client_pool_arguments(
    memcached: MemcachedProcess, options: Dict[str, Any]
) -> None:
    """CACHE_OPTIONS go to PymcCache, and what it does not know to the HashClient (its
    docstring says so), but ``max_pool_size`` and ``use_pooling`` collided with the
    arguments PymcCache itself passes: ``TypeError: got multiple values for keyword``."""
    app = flask.Flask("attack12")
    app.config.update(
        CACHE_TYPE="pymc.contrib.flask.PymcCache",
        CACHE_MEMCACHED_SERVERS=[f"{tcp(memcached)[0]}:{tcp(memcached)[1]}"],
        CACHE_OPTIONS=options,
    )
    cache = flask_caching.Cache(app)
    with app.app_context():
        assert cache.set("opt", 1) and cache.get("opt") == 1
        backend: Any = cache.cache
        assert isinstance(backend, FlaskPymcCache)
        client = backend.client
        assert client.use_pooling is options.get("use_pooling", True)
        (pooled,) = client.clients.values()
        assert pooled.client_pool.max_size == options.get("max_pool_size", 1)
        backend.close()


def test_flask_pool_size_given_twice_is_refused(memcached: MemcachedProcess) -> None:
    with pytest.raises(TypeError, match="not both"):
        FlaskPymcCache([tcp(memcached)], pool_size=2, max_pool_size=3)


@pytest.mark.timeout(60)
def test_flask_inc_under_contention_loses_no_increment(memcached: MemcachedProcess) -> None:
    """inc/dec are a compare-and-swap loop "so concurrent increments are never lost", but
    the loop retried at once: 8 threads incrementing one key spun together and ran out of
    attempts, so some inc() calls returned None (the failure return) and their increment
    was never applied."""
    cache = FlaskPymcCache([tcp(memcached)], key_prefix="contended:")
    threads_n, rounds = 8, 150
    failed: List[int] = []
    assert cache.set("n", 0)

    def work() -> None:
        for _ in range(rounds):
            if cache.inc("n") is None:
                failed.append(1)

    workers = [threading.Thread(target=work) for _ in range(threads_n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=50)
    assert not any(worker.is_alive() for worker in workers)
    assert (len(failed), cache.get("n")) == (0, threads_n * rounds)
    cache.close()
