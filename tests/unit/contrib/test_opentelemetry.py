"""The OpenTelemetry hook's db.statement text, without a server."""

from __future__ import annotations

from pymc.contrib.opentelemetry import statement


def test_statement_formats_keys_as_pymemcache_does() -> None:
    assert statement("stats", ()) == "stats"
    assert statement("get_many", ("a", b"b", ("server", "c"))) == "get_many a b c"
    assert statement("get", ("caf\u00e9".encode(),)) == "get caf\u00e9"


def test_statement_of_stats_is_pymemcaches() -> None:
    assert statement("stats", ("slabs",)) == "stats slabs"
    assert statement("stats", (b"items",)) == "stats items"
    # pymemcache's instrumentation shows the first argument only.
    assert statement("stats", ("cachedump", "1", "10")) == "stats cachedump"
