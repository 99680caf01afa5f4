"""ElastiCache discovery without a server: the poll delay, the warnings, the request chunks."""

from __future__ import annotations

import logging
import random

import pytest

import pymc
from pymc.elasticache import JITTER, poll_delay

pytestmark = pytest.mark.timeout(60)


def test_poll_delay_has_jitter() -> None:
    delays = [poll_delay(60.0) for _ in range(2000)]
    assert min(delays) >= 60 * (1 - JITTER) and max(delays) <= 60 * (1 + JITTER)
    assert max(delays) - min(delays) > 60 * JITTER  # spread, not in step
    assert len(set(delays)) > 1500


def test_hash_and_pooled_clients_warn_about_a_configuration_endpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="pymc")
    cfg = ("mycluster.abc123.cfg.use1.cache.amazonaws.com", 11211)
    pymc.PooledClient(cfg)
    pymc.HashClient([cfg, ("127.0.0.1", 1)])
    warned = [r.getMessage() for r in caplog.records if "configuration endpoint" in r.getMessage()]
    assert len(warned) == 2 and all("ElastiCacheClient" in m for m in warned)
    caplog.clear()
    pymc.HashClient([("node1.abc123.0001.use1.cache.amazonaws.com", 11211)])
    assert not caplog.records


@pytest.mark.parametrize("limit", [512, 600, 4096, 16384])
def test_request_chunks_keep_every_line_within_max_get_line(limit: int) -> None:
    from pymc.client import request_chunks
    from pymc.protocol import encode_retrieval

    rng = random.Random(limit)
    raws = [b"k%d-" % i + b"x" * rng.randrange(1, 240) for i in range(400)]
    chunks = request_chunks(raws, limit)
    assert [raw for chunk in chunks for raw in chunk] == raws  # every key, in order, once
    for chunk in chunks:
        assert len(encode_retrieval(b"gats", chunk, 2147483647)) <= limit
