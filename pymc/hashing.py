"""Key placement: moved to :mod:`pymc.cluster.hashing`; this name stays importable."""

from .cluster.hashing import (
    KB,
    K,
    KetamaHash,
    Key,
    RendezvousHash,
    build_locator,
    ketama_points,
    murmur3_32,
)

__all__ = [
    "KB",
    "K",
    "KetamaHash",
    "Key",
    "RendezvousHash",
    "build_locator",
    "ketama_points",
    "murmur3_32",
]
