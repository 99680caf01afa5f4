"""Building a locator from what ``HashClient(hasher=...)`` takes: one step for pymc's
locators (``from_nodes``), pymemcache's protocol (``hasher()`` then ``add_node``) otherwise."""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Iterable

__all__ = ["build_locator"]


def build_locator(hasher: Callable[..., Any], nodes: Iterable[str]) -> Any:
    """A new locator over ``nodes`` from ``hasher``, as ``HashClient(hasher=...)`` takes it.

    * A class with a ``from_nodes`` classmethod (:class:`KetamaHash`, :class:`RendezvousHash`
      and their subclasses), or a ``functools.partial`` of one with keyword arguments only
      (e.g. ``partial(KetamaHash, weights={...})``, ``partial(RendezvousHash, seed=7)``): the
      locator is built in one step, ``from_nodes(nodes, **keywords)``.
    * Anything else is pymemcache's protocol: ``hasher()`` then ``add_node(node)`` per node.

    The result is new and not shared with anyone yet.
    """
    names = list(dict.fromkeys(nodes))
    func: Any = hasher
    keywords: Dict[str, Any] = {}
    if isinstance(hasher, functools.partial):
        if not hasher.args:  # positional arguments would take the place of the nodes
            func, keywords = hasher.func, dict(hasher.keywords)
        else:
            func = None
    from_nodes = getattr(func, "from_nodes", None) if isinstance(func, type) else None
    if from_nodes is not None:
        return from_nodes(names, **keywords)
    locator = hasher()
    for name in names:
        locator.add_node(name)
    return locator
