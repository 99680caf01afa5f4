"""A Django site under gevent, run in a fresh process by
``tests/integration/contrib/test_django.py``:

    python tests/integration/contrib/contrib_django_gevent.py requests \
    '{"server": "127.0.0.1:11211", ...}'

``gevent.monkey.patch_all()`` runs first, then Django is configured with PymcCache on the
given server. Many greenlets each serve requests (Django makes a backend per greenlet) that
read and write their own keys and end with ``request_finished``; every greenlet must read
back exactly its own data, the pool must stay within the concurrency, and it all must end.
Prints one JSON line of results; exits non-zero if a check failed.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List


def requests(args: Dict[str, Any]) -> Dict[str, Any]:
    from gevent import monkey

    monkey.patch_all()
    import django
    import gevent
    from django.conf import settings

    settings.configure(
        CACHES={"default": {"BACKEND": "pymc.contrib.django.PymcCache", "LOCATION": args["server"]}}
    )
    django.setup()
    from django.core import signals
    from django.core.cache import cache

    greenlets, rounds = int(args["greenlets"]), int(args["rounds"])
    wrong: List[str] = []

    def serve(g: int) -> None:
        for r in range(rounds):
            mine = {f"g{g}:{j}": [g, r, j] for j in range(3)}
            cache.set_many(mine)
            gevent.sleep(0)  # let the others interleave
            got = cache.get_many(list(mine))
            if got != mine:
                wrong.append(f"greenlet {g} round {r}: {got!r}")
            signals.request_finished.send(sender=None)

    jobs = [gevent.spawn(serve, g) for g in range(greenlets)]
    gevent.joinall(jobs, timeout=float(args["timeout"]), raise_error=True)
    unfinished = sum(1 for job in jobs if not job.dead)
    (pool,) = cache._cache.clients.values()
    return {"wrong": wrong[:5], "unfinished": unfinished, "pool": pool.client_pool.stats()}


if __name__ == "__main__":
    outcome = {"requests": requests}[sys.argv[1]](json.loads(sys.argv[2]))
    print(json.dumps(outcome, default=str))
