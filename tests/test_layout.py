"""curvlab.layout.Layout, the one named flat layout (used by the MLP, the adapters and the
methods): offsets, views of vectors and of (P, k) blocks, packing, lookup, equality, errors.
(Framework-free checks of the adapters' use live in tests/adapters/test_layout.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from curvlab.layout import Layout
from curvlab.models.mlp import MLP, dense_layout


def _lay():
    return Layout(["w", "b", "v"], [(2, 3), (2,), (1, 2, 2)], np.float64)


def test_offsets_sizes_and_types():
    lay = _lay()
    assert lay.names == ("w", "b", "v") and lay.shapes == ((2, 3), (2,), (1, 2, 2))
    assert lay.sizes == (6, 2, 4) and lay.offsets == (0, 6, 8, 12) and lay.size == 12 and len(lay) == 3
    assert lay.dtype == np.dtype(np.float64) and Layout(["a"], [(1,)]).dtype is None
    assert [lay.slice(n) for n in lay.names] == [slice(0, 6), slice(6, 8), slice(8, 12)]
    assert lay.slice(1) == lay.slice("b") and lay.slice(-1) == lay.slice("v")
    assert lay.index("v") == 2


def test_vector_views_write_through_and_pack_back(xp, rng):
    lay = _lay()
    flat = xp.asarray(rng.standard_normal(12))
    w, b, v = lay.unpack(flat)
    assert (w.shape, b.shape, v.shape) == ((2, 3), (2,), (1, 2, 2))
    assert float(w[1, 2]) == float(flat[5])  # row-major
    w[0, 0] = 9.0
    assert float(flat[0]) == 9.0
    assert bool(xp.all(lay.pack([w, b, v]) == flat))
    d = lay.unpack_dict(flat)
    assert list(d) == ["w", "b", "v"] and bool(xp.all(d["b"] == flat[6:8]))


def test_block_views_and_pack_of_blocks(xp, rng):
    lay = _lay()
    V = xp.asarray(rng.standard_normal((12, 3)))
    parts = lay.unpack(V)
    assert [tuple(p.shape) for p in parts] == [(2, 3, 3), (2, 3), (1, 2, 2, 3)]
    for k in range(3):  # column k of the block unpacks like the vector V[:, k]
        for p, q in zip(parts, lay.unpack(xp.ascontiguousarray(V[:, k]))):
            assert bool(xp.all(p[..., k] == q))
    assert bool(xp.all(lay.pack(parts) == V))


def test_errors_name_what_is_wrong():
    lay = _lay()
    with pytest.raises(ValueError, match=r"v must have shape \(12,\) or \(12, k\)"):
        lay.unpack(np.zeros(11))
    with pytest.raises(ValueError, match=r"g must have shape \(12,\) \(the flat"):
        lay.check_flat(np.zeros((12, 2)), "g")
    lay.check_flat(np.zeros((12, 2)), "g", block=True)
    with pytest.raises(ValueError, match="pack expects 3 arrays, got 2"):
        lay.pack([np.zeros((2, 3)), np.zeros(2)])
    with pytest.raises(ValueError, match=r"parts\[1\] \(b\) has shape \(3,\), expected \(2,\)"):
        lay.pack([np.zeros((2, 3)), np.zeros(3), np.zeros((1, 2, 2))])
    with pytest.raises(ValueError, match="mix vectors and blocks"):
        lay.pack([np.zeros((2, 3, 2)), np.zeros(2), np.zeros((1, 2, 2))])
    with pytest.raises(KeyError, match=r"no parameter named 'x'; the layout holds \['w', 'b', 'v'\]"):
        lay.slice("x")
    with pytest.raises(IndexError, match="parameter position 3 out of range"):
        lay.slice(3)
    with pytest.raises(TypeError, match="names must be a sequence of str"):
        Layout("wb", [(1,), (1,)])
    with pytest.raises(TypeError, match="shapes must be a sequence of shapes"):
        Layout(["w"], 3)
    with pytest.raises(ValueError, match="unique"):
        Layout(["w", "w"], [(1,), (1,)])


def test_equality_hash_and_repr():
    a = Layout(["w", "b"], [(2, 3), (2,)], np.float64)
    b = Layout(("w", "b"), ((2, 3), (2,)), np.float32)  # the dtype is informative only
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert a != Layout(["w", "c"], [(2, 3), (2,)]) and a != Layout(["w", "b"], [(3, 2), (2,)])
    assert a != "not a layout"
    assert repr(a) == "Layout(size=8, dtype=float64, [w[2, 3], b[2]])"


def test_empty_layout_and_zero_sized_parameters():
    lay = Layout([], [])
    assert lay.size == 0 and lay.offsets == (0,) and lay.unpack(np.zeros(0)) == []
    assert lay.pack([]).shape == (0,)
    lay = Layout(["a", "z"], [(2,), (0, 4)])
    assert lay.size == 2 and [p.shape for p in lay.unpack(np.ones(2))] == [(2,), (0, 4)]


def test_the_mlp_layout_is_a_layout_named_W1_to_WL():
    model = MLP([4, 5, 3])
    assert type(model.layout) is Layout
    assert model.layout == Layout(["W1", "W2"], [(5, 5), (3, 6)])
    assert model.layout.dtype == np.dtype(np.float64)
    assert dense_layout([(5, 5), (3, 6)]) == model.layout
    assert dense_layout([(2, 2)], names=["first"]).names == ("first",)
    with pytest.raises(ValueError, match="names has 2 entries, expected 1"):
        dense_layout([(2, 2)], names=["a", "b"])
    with pytest.raises(ValueError, match=r"shapes\[0\] must be a pair"):
        dense_layout([(2, 2, 2)])
    with pytest.raises(ValueError, match=r"shapes\[0\] must be a positive integer, got 0"):
        dense_layout([(0, 2)])  # a general Layout accepts 0; a dense layer does not


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_unpack_views_framework_arrays(framework):
    lay = _lay()
    if framework == "torch":
        torch = pytest.importorskip("torch")
        flat = torch.arange(12.0, dtype=torch.float64)
        block = torch.zeros((12, 2), dtype=torch.float64)
    else:
        jnp = pytest.importorskip("jax.numpy")
        flat = jnp.arange(12.0)
        block = jnp.zeros((12, 2))
    parts = lay.unpack(flat)
    assert [tuple(p.shape) for p in parts] == [(2, 3), (2,), (1, 2, 2)]
    assert float(parts[2][0, 1, 1]) == 11.0
    assert [tuple(p.shape) for p in lay.unpack(block)] == [(2, 3, 2), (2, 2), (1, 2, 2, 2)]
