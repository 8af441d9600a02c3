"""curvlab.tree: the one pytree helper (optree underneath)."""

from __future__ import annotations

import numpy as np
import pytest

from curvlab import tree as T


def _trees():
    a = np.arange(6.0).reshape(2, 3)
    b = np.array([1.0, -2.0])
    return {
        "leaf": a,
        "list": [a, b],
        "tuple": (a, b),
        "dict": {"w": a, "b": b},
        "nested": {"layer1": (a, None), "layer0": [b, {"x": a}]},
    }


@pytest.mark.parametrize("name", sorted(_trees()))
def test_map_keeps_structure_and_container_types(name):
    t = _trees()[name]
    out = T.tree_map(lambda x: 2 * x, t)
    assert T.tree_structure(out) == T.tree_structure(t)
    assert type(out) is type(t)
    for x, y in zip(T.tree_leaves(out), T.tree_leaves(t)):
        np.testing.assert_array_equal(x, 2 * y)
    leaves, treedef = T.tree_flatten(t)
    back = T.tree_unflatten(treedef, leaves)
    assert T.tree_structure(back) == treedef and all(x is y for x, y in zip(T.tree_leaves(back), leaves))


def test_leaf_order_none_and_counts():
    t = _trees()["nested"]
    # dict keys sorted, None an empty subtree
    assert T.num_leaves(t) == 3 and T.num_leaves(None) == 0 and T.num_leaves(np.ones(3)) == 1
    assert T.tree_map(lambda x: x, t)["layer1"][1] is None
    assert T.tree_leaves(t)[0] is t["layer0"][0]


def test_mismatched_structures_are_refused_list_and_tuple_are_alike():
    a = [np.ones(2), np.ones(3)]
    with pytest.raises(ValueError, match="tree structures differ"):
        T.tree_map(lambda x, y: x + y, a, np.ones(2))
    with pytest.raises(ValueError, match="tree structures differ"):
        T.tree_map(lambda x, y: x + y, {"a": np.ones(2)}, {"b": np.ones(2)})
    out = T.tree_map(lambda x, y: x + y, a, tuple(a))
    assert isinstance(out, list) and np.array_equal(out[1], 2 * np.ones(3))
    assert T.same_structure(a, tuple(a)) and not T.same_structure(a, [np.ones(2)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vdot_accumulates_in_float64(dtype):
    rng = np.random.default_rng(0)
    # more than one chunk of 65,536 and a float32 sum that loses digits
    x = {"a": rng.standard_normal(70_000).astype(dtype), "b": (np.full(3, 1e4, dtype),)}
    y = {"a": rng.standard_normal(70_000).astype(dtype), "b": (np.full(3, 1e-4, dtype),)}
    ref = float(np.dot(x["a"].astype(np.float64), y["a"].astype(np.float64))) + 3 * float(dtype(1e4)) * float(dtype(1e-4))
    got = T.tree_vdot(x, y)
    assert isinstance(got, float) and np.asarray(got).dtype == np.float64
    assert abs(got - ref) <= 1e-12 * np.sum(np.abs(x["a"].astype(np.float64) * y["a"])) + 1e-12


def test_zeros_add_scale_keep_dtype():
    t = {"w": np.ones((2, 2), np.float32), "b": [np.ones(3)]}
    z = T.tree_zeros_like(t)
    assert z["w"].dtype == np.float32 and not np.any(z["w"]) and z["b"][0].dtype == np.float64
    s = T.tree_scale(0.1, t)
    assert s["w"].dtype == np.float32 and s["w"][0, 0] == np.float32(0.1)
    a = T.tree_add(t, s)
    assert a["w"].dtype == np.float32 and a["b"][0][0] == 1.1


def test_sequence_of_leaves():
    assert T.is_sequence_of_leaves([np.ones(2), np.ones(3)])
    assert not T.is_sequence_of_leaves([np.ones(2), [np.ones(3)]])
    assert not T.is_sequence_of_leaves(np.ones(2))
