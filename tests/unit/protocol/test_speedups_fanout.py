"""issue 19: the compiled per-key loops of a HashClient multi-get against the pure ones
(pure logic, no server): ``place_keys`` (pymc/speedups.c) against
:func:`pymc.cluster.place_keys_py`, ``merge_values`` against
:func:`pymc.client.merge_values_py`. The pure functions are the reference: the same results
(the same dicts, in the same order) and the same errors, and no reference leaked. Skipped
when the compiled module is not in use (the pure functions are then the only ones, and
tests/integration/cluster/ runs them).
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymc import client, cluster, protocol

COMPILED = (
    protocol.SPEEDUPS
    and cluster.place_keys is not cluster.place_keys_py
    and client.merge_values is not client.merge_values_py
)
compiled = pytest.mark.skipif(not COMPILED, reason="the compiled fan-out loops are not in use")
MANY = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))

keys = st.one_of(st.text(max_size=6), st.binary(max_size=6))
names = st.sampled_from(["a:1", "b:2", "c:3", "d:4"])


def outcome(call: Any, *args: Any) -> Tuple[Any, ...]:
    try:
        result = call(*args)
    except Exception as exc:
        return ("raised", type(exc), str(exc))
    return ("ok", result, _order(result))


def _order(value: Any) -> Any:
    """Every dict's key order, nested (== on dicts ignores it)."""
    if isinstance(value, dict):
        return [(k, _order(v)) for k, v in value.items()]
    if isinstance(value, tuple):
        return tuple(_order(v) for v in value)
    return value


@compiled
@MANY
@given(
    st.lists(keys, max_size=40, unique=True),
    st.dictionaries(keys, st.one_of(names, st.none()), max_size=40),
)
def test_place_keys_agrees_with_the_pure_loop(
    user_keys: List[Any], cache: Dict[Any, Optional[str]]
) -> None:
    checked = {(k.encode() if isinstance(k, str) else k) + b"|": k for k in user_keys}
    want = outcome(cluster.place_keys_py, checked, cache)
    got = outcome(cluster.place_keys, checked, cache)
    assert got == want
    placed, unseen = got[1]
    assert all(type(group) is dict for group in placed.values())
    assert unseen is None or unseen  # None when every key is placed


@compiled
@MANY
@given(
    st.lists(
        st.dictionaries(st.binary(max_size=5), st.tuples(st.integers(0, 9), st.binary())),
        max_size=5,
    ),
    st.booleans(),
)
def test_merge_values_agrees_with_the_pure_loop(
    parts: List[Dict[bytes, Tuple[int, bytes]]], all_wanted: bool
) -> None:
    raws = [raw for part in parts for raw in part]
    wanted: Dict[bytes, Any] = {raw: raw.decode("latin-1") + "!" for raw in raws}
    if not all_wanted and raws:
        del wanted[raws[-1]]  # a KeyError for both
    items = [{raw: (*item, None) for raw, item in part.items()} for part in parts]
    assert outcome(client.merge_values, items, wanted) == outcome(
        client.merge_values_py, items, wanted
    )


@compiled
def test_bad_arguments_raise_and_leak_nothing() -> None:
    with pytest.raises(TypeError):
        cluster.place_keys([], {})
    with pytest.raises(TypeError):
        client.merge_values([{b"k": "no tuple"}], {b"k": "k"})
    with pytest.raises(TypeError):
        client.merge_values([{b"k": (1,)}], {b"k": "k"})
    with pytest.raises(TypeError):
        client.merge_values(["no dict"], {})
    with pytest.raises(TypeError):
        cluster.place_keys({b"k": ["unhashable"]}, {})
    data = b"x" * 1000
    key = "a key of its own"
    parts = [{b"k": (0, data, None)}]
    before = (sys.getrefcount(data), sys.getrefcount(key))
    for _ in range(1000):
        out = client.merge_values(parts, {b"k": key})
        placed, unseen = cluster.place_keys({b"k": key}, {key: "a:1"})
        placed, unseen = cluster.place_keys({b"k": key}, {})
        with pytest.raises(KeyError):
            client.merge_values(parts, {})
    del out, placed, unseen
    assert (sys.getrefcount(data), sys.getrefcount(key)) == before
