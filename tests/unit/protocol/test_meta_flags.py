"""The meta encoders refuse the flags a caller may not pass."""

from __future__ import annotations

from typing import Callable, Dict

import pytest

from pymc import MemcacheIllegalInputError
from pymc.meta import (
    encode_meta_arithmetic,
    encode_meta_delete,
    encode_meta_get,
    encode_meta_set,
)

UNSAFE = ["q", "k q", "q k", "qv", "O123", "s O9", "b", "t b"]


ENCODERS: Dict[str, Callable[[str], bytes]] = {
    "mg": lambda f: encode_meta_get(b"k", flags=f),
    "ms": lambda f: encode_meta_set(b"k", b"v", flags=f),
    "md": lambda f: encode_meta_delete(b"k", flags=f),
    "ma": lambda f: encode_meta_arithmetic(b"k", flags=f),
}


@pytest.mark.parametrize("command", sorted(ENCODERS))
@pytest.mark.parametrize("flags", UNSAFE)
def test_the_encoders_refuse_them_too(flags: str, command: str) -> None:
    with pytest.raises(MemcacheIllegalInputError, match=r"flag"):
        ENCODERS[command](flags)
