"""The adapters' flat layout (curvlab.layout.Layout): flat <-> named
parameter arrays (no framework needed)."""

from __future__ import annotations

import numpy as np
import pytest

from curvlab.layout import Layout


def test_round_trip_and_views(xp, rng):
    lay = Layout(["conv.weight", "conv.bias", "fc.weight"], [(2, 1, 3, 3), (2,), (3, 4)], np.float64)
    assert lay.size == 18 + 2 + 12 and lay.offsets == (0, 18, 20, 32)
    flat = xp.asarray(rng.standard_normal(lay.size))
    parts = lay.unpack(flat)
    assert [tuple(p.shape) for p in parts] == [(2, 1, 3, 3), (2,), (3, 4)]
    parts[1][0] = 7.0  # views: writing through changes the flat vector
    assert float(flat[18]) == 7.0
    back = lay.pack(parts)
    assert bool(xp.all(back == flat))
    d = lay.unpack_dict(flat)
    assert bool(xp.all(d["fc.weight"] == flat[lay.slice("fc.weight")].reshape(3, 4)))


def test_errors():
    with pytest.raises(ValueError, match="unique"):
        Layout(["a", "a"], [(1,), (2,)])
    with pytest.raises(ValueError, match="differ in length"):
        Layout(["a"], [(1,), (2,)])
    lay = Layout(["a", "b"], [(2,), (3,)])
    with pytest.raises(ValueError, match=r"\(5,\)"):
        lay.unpack(np.zeros(4))
    with pytest.raises(ValueError, match="expected \\(3,\\)"):
        lay.pack([np.zeros(2), np.zeros(4)])
    with pytest.raises(KeyError, match="no parameter named 'c'"):
        lay.slice("c")
    assert "a[2]" in repr(lay)


@pytest.mark.parametrize("shapes,exc,where", [
    ([(2,), (-1, 3)], ValueError, r"shapes\[1\] must hold non-negative integers, got \(-1, 3\)"),
    ([(2.5,)], TypeError, r"shapes\[0\] must hold non-negative integers, got 2.5"),
    ([(True, 2)], TypeError, r"shapes\[0\].*bool"),
    ([3], TypeError, r"shapes\[0\] must be a sequence"),
])
def test_bad_shapes_are_refused(shapes, exc, where):
    """A negative dimension used to give a negative size and overlapping offsets."""
    with pytest.raises(exc, match=where):
        Layout([f"p{i}" for i in range(len(shapes))], shapes)


def test_zero_sized_parameters_are_allowed():
    lay = Layout(["a", "empty", "b"], [(2,), (0, 3), (np.int64(1),)])
    assert lay.size == 3 and lay.offsets == (0, 2, 2, 3)
    assert [p.shape for p in lay.unpack(np.arange(3.0))] == [(2,), (0, 3), (1,)]


def test_the_old_named_layout_alias_is_gone():
    import curvlab.adapters

    assert not hasattr(curvlab.adapters, "NamedLayout")
    with pytest.raises(AttributeError, match="NoSuchName"):
        curvlab.adapters.NoSuchName  # noqa: B018
