"""Node locators: which server holds a key.

Two placements, each reproducing an existing client bit for bit so that a fleet can switch to
pymc without losing its cache:

* :class:`RendezvousHash` places keys exactly like pymemcache 4.0's ``RendezvousHash`` (the
  default of its ``HashClient``): every node scores ``murmur3_32(f"{node}-{key}")`` and the
  highest score wins, a tie going to the larger node name. One deliberate difference: a
  bytes key holding UTF-8 text is placed as that text, with its str spelling (pymemcache
  formats it as ``"b'k'"``, which splits one key over two nodes).
* :class:`KetamaHash` places keys exactly like libmemcached's weighted ketama continuum, i.e.
  pylibmc with ``behaviors={"ketama_weighted": True}``.

Node names are the strings a ``HashClient`` builds: ``"host:port"`` for TCP servers, the socket
path for UNIX ones.

Locators are immutable values, built in one step from all their nodes (and weights): each class
has ``from_nodes(nodes, ...)``, and :func:`build_locator` builds any hasher a ``HashClient``
accepts over a given node list. :meth:`with_node` and :meth:`without_node` return a new locator
and leave the old one untouched, so a reader that picked a locator keeps a consistent view. The
pymemcache-style ``add_node``/``remove_node`` are kept for code written against pymemcache; they
mutate the locator in place (still safe for concurrent readers, since the whole lookup state is
swapped in one assignment), and pymc's own ``HashClient`` never calls them on these classes
(each call rebuilds the whole ring).

Everything here is pure computation: no I/O, no locks, standard library only.

The locators live in :mod:`pymc.cluster.rendezvous`, :mod:`pymc.cluster.ketama` and
:mod:`pymc.cluster.locators`; this module re-exports them (``pymc.hashing`` too).
"""

from __future__ import annotations

from .ketama import KetamaHash, ketama_points
from .locators import build_locator
from .rendezvous import KB as KB
from .rendezvous import K as K
from .rendezvous import Key as Key
from .rendezvous import RendezvousHash, murmur3_32

__all__ = ["KetamaHash", "RendezvousHash", "build_locator", "ketama_points", "murmur3_32"]
