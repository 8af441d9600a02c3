"""NamedLayout: flat <-> named parameter arrays (no framework needed)."""

from __future__ import annotations

import numpy as np
import pytest

from curvlab.adapters import NamedLayout


def test_round_trip_and_views(xp, rng):
    lay = NamedLayout(["conv.weight", "conv.bias", "fc.weight"], [(2, 1, 3, 3), (2,), (3, 4)], np.float64)
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
        NamedLayout(["a", "a"], [(1,), (2,)])
    with pytest.raises(ValueError, match="differ in length"):
        NamedLayout(["a"], [(1,), (2,)])
    lay = NamedLayout(["a", "b"], [(2,), (3,)])
    with pytest.raises(ValueError, match=r"\(5,\)"):
        lay.unpack(np.zeros(4))
    with pytest.raises(ValueError, match="expected \\(3,\\)"):
        lay.pack([np.zeros(2), np.zeros(4)])
    with pytest.raises(KeyError, match="no parameter named 'c'"):
        lay.slice("c")
    assert "a[2]" in repr(lay)
