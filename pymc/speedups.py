"""The compiled twin moved to :mod:`pymc.protocol.speedups`; this name stays importable
(and raises ImportError where the module was not built, as it always did)."""

import sys

from .protocol import speedups

sys.modules[__name__] = speedups
