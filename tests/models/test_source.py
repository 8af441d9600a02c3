"""MLPCurvature: the reference MLP bound to (params, data) as a CurvatureSource.

The protocol itself is tested for every case in tests/test_sources_conformance.py; here:
the bound source gives **bit for bit** the numbers of the model's own methods, its
operators say what they are, the data is checked once (0 host syncs per product, none when
only the parameters are rebound), and bad inputs fail naming the argument.
"""

from __future__ import annotations

import numpy as np
import pytest

import curvlab
from curvlab import backend
from curvlab.models import MLP, MLPCurvature
from curvlab.models.mlp_products import CurvatureOperator
from curvlab.sources import CurvatureSource, DenseLayer
from tests.cases import CASES, case_ids


def _same(a, b) -> bool:
    a, b = backend.to_numpy(a), backend.to_numpy(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_bound_source_reproduces_the_model_bit_for_bit(case):
    model, p, (X, y) = case.mlp(), case.params(), case.data()
    src = MLPCurvature(model, p, (X, y))
    assert isinstance(src, CurvatureSource)
    assert src.layout == model.layout and src.params is p
    rng = np.random.default_rng(0)
    V = rng.standard_normal((p.size, 3)).astype(case.dtype)
    d = V[:, 0].copy()
    assert src.loss() == model.loss(p, X, y)
    f, g = src.gradient()
    f0, g0 = model.loss_and_grad(p, X, y)
    assert f == f0 and _same(g, g0)
    assert _same(src.per_sample_gradients(), model.per_sample_grads(p, X, y))
    assert _same(src.hessian() @ V, model.hvp_matmat(p, X, y, V))
    assert _same(src.hessian() @ d, model.hvp(p, X, y, d))
    assert _same(src.ggn() @ V, model.ggn_matmat(p, X, y, V))
    assert _same(src.fisher() @ V, model.fisher_matmat(p, X, y, V))
    assert _same(src.fisher("true") @ V, model.ggn_matmat(p, X, y, V))
    assert src.directional_curvature(d) == model.curvature(p, X, y, d)
    assert src.directional_curvature(d, mode="adjoint") == model.curvature(p, X, y, d, mode="adjoint")
    fa, ga, ca = src.grad_and_curvature(d)
    fb, gb, cb = model.grad_and_curvature(p, X, y, d)
    assert fa == fb and ca == cb and _same(ga, gb)
    layers = src.layer_structure()
    factors = model.layer_hessian_factors(p, X, y)
    assert [lay.name for lay in layers] == list(model.layout.names)
    for lay, (delta, M, at) in zip(layers, factors):
        assert isinstance(lay, DenseLayer) and lay.bias_folded and lay.bias is None and lay.weight == lay.name
        assert _same(lay.output_grads, delta) and _same(lay.output_hessians, M)
        assert _same(lay.inputs, at[:, :-1])


def test_at_equals_a_fresh_binding_and_reuses_the_checked_data(monkeypatch):
    case = CASES[0]
    model, p, data = case.mlp(), case.params(), case.data()
    calls = []
    real = model._check_labels
    monkeypatch.setattr(model, "_check_labels", lambda yy: (calls.append(1), real(yy))[1])
    src = MLPCurvature(model, p, data)
    assert len(calls) == 1  # the labels' range, read once when bound
    V = np.random.default_rng(1).standard_normal((p.size, 2))
    for op in (src.hessian(), src.ggn(), src.fisher()):
        op @ V
        op @ V[:, 0]
    src.loss(), src.gradient(), src.directional_curvature(V[:, 0]), src.grad_and_curvature(V[:, 0])
    src.layer_structure(), src.per_sample_gradients()
    assert len(calls) == 1  # no product or value re-checks the data
    new = case.params(rng_offset=1)
    moved = src.at(params=new)
    assert len(calls) == 1  # rebinding the parameters alone does not re-check the data
    fresh = MLPCurvature(model, new, data)
    assert moved.loss() == fresh.loss()
    assert _same(moved.gradient()[1], fresh.gradient()[1])
    assert _same(moved.hessian() @ V, fresh.hessian() @ V)
    assert moved.grad_and_curvature(V[:, 1])[2] == fresh.grad_and_curvature(V[:, 1])[2]
    n = len(calls)
    X2, y2 = data[0][:3], data[1][:3]
    sub = src.at(data=(X2, y2))
    assert len(calls) == n + 1 and sub.n_samples == 3
    assert sub.loss() == model.loss(p, X2, y2)
    bad = data[1].copy()
    bad[0] = model.sizes[-1]
    with pytest.raises(ValueError, match="y labels must lie in"):
        src.at(data=(data[0], bad))


def test_operators_and_source_say_what_they_are():
    case = CASES[0]
    src = MLPCurvature(case.mlp(), case.params(), case.data())
    label = f"MLP[4-5-4-3, {case.activation}, {case.loss}]"
    want = {src.hessian(): "Hessian", src.ggn(): "GGN", src.fisher(): "empirical Fisher",
            src.fisher("true"): "Fisher (true, = GGN)"}
    for op, what in want.items():
        assert isinstance(op, CurvatureOperator)
        assert op.description == f"{what} of {label} on 7 samples, P=64"
        assert repr(op).startswith(f"<{what} of {label} on 7 samples, P=64: ")
    assert repr(src) == f"MLPCurvature({label} on 7 samples, P=64)"
    assert src.hessian().symmetric and not src.hessian().psd and src.ggn().psd and src.fisher().psd


def test_bad_inputs_fail_naming_the_argument():
    case = CASES[0]
    model, p, (X, y) = case.mlp(), case.params(), case.data()
    with pytest.raises(TypeError, match="model must be a curvlab.models.mlp.MLP"):
        MLPCurvature("mlp", p, (X, y))
    for data in (X, (X,), (X, y, y), None):
        with pytest.raises(TypeError, match="data must be one batch"):
            MLPCurvature(model, p, data)
    with pytest.raises(ValueError, match=r"params must have shape \(64,\)"):
        MLPCurvature(model, p[:-1], (X, y))
    with pytest.raises(ValueError, match=r"X must have shape \(B, 4\)"):
        MLPCurvature(model, p, (X[:, :3], y))
    src = MLPCurvature(model, p, (X, y))
    with pytest.raises(ValueError, match=r"params must have shape \(64,\)"):
        src.at(params=p[:3])
    with pytest.raises(TypeError, match="params must have dtype float64"):
        src.at(params=p.astype(np.float32))
    with pytest.raises(ValueError, match=r"d must have shape \(64,\)"):
        src.directional_curvature(np.ones(3))
    with pytest.raises(ValueError, match=r"d must have shape \(64,\)"):
        src.grad_and_curvature(np.ones(3))
    with pytest.raises(ValueError, match="mode must be 'forward' or 'adjoint'"):
        src.directional_curvature(p, mode="reverse")
    with pytest.raises(ValueError, match=r"kind must be one of \('empirical', 'true'\), got 'mc'"):
        src.fisher("mc")


def test_exported_from_curvlab():
    assert curvlab.MLPCurvature is MLPCurvature
    assert "MLPCurvature" in curvlab.__all__


@pytest.mark.gpu
def test_products_do_no_host_sync_and_rebinding_params_none(xp):
    """On CuPy (the strict stand-in counts syncs): 1 sync when bound, 0 per product, 0 for
    ``at(params=...)``."""
    from tests import _strict_cupy  # noqa: PLC0415

    if xp is np or not _strict_cupy.installed():
        pytest.skip("host syncs are counted by the strict CuPy stand-in only (--strict-cupy)")
    from tests._strict_cupy import count_syncs  # noqa: PLC0415

    case = CASES[0]
    model = MLP(list(case.sizes), activation=case.activation, loss=case.loss, xp=xp)
    X, y = case.data()
    p, X, y = xp.asarray(case.params()), xp.asarray(X), xp.asarray(y)
    with count_syncs() as bind:
        src = MLPCurvature(model, p, (X, y))
    assert bind.count <= 1, bind.report()
    V = xp.asarray(np.random.default_rng(0).standard_normal((p.size, 3)))
    with count_syncs() as prods:
        for op in (src.hessian(), src.ggn(), src.fisher()):
            op.matvec(V[:, 0])
            op.matmat(V)
        moved = src.at(params=p * 0.5)
        moved.hessian().matmat(V)
        src.per_sample_gradients()
        src.layer_structure()
    assert prods.count == 0, prods.report()


@pytest.mark.gpu
def test_dataset_host_syncs_list_once_when_bound_stream_per_batch_per_pass(xp):
    """A list of batches: 1 sync per batch when bound, 0 per product; a stream (callable):
    its labels are checked per batch on every pass (1 sync each), as documented."""
    from tests import _strict_cupy  # noqa: PLC0415

    if xp is np or not _strict_cupy.installed():
        pytest.skip("host syncs are counted by the strict CuPy stand-in only (--strict-cupy)")
    from tests._strict_cupy import count_syncs  # noqa: PLC0415

    case = CASES[0]
    model = MLP(list(case.sizes), activation=case.activation, loss=case.loss, xp=xp)
    X, y = case.data()
    p, X, y = xp.asarray(case.params()), xp.asarray(X), xp.asarray(y)
    parts = [(X[:3], y[:3]), (X[3:], y[3:])]
    with count_syncs() as bind:
        src = MLPCurvature(model, p, parts)
    assert bind.count == 2, bind.report()  # the labels of each batch, once
    V = xp.asarray(np.random.default_rng(0).standard_normal((p.size, 3)))
    with count_syncs() as prods:
        for op in (src.hessian(), src.ggn(), src.fisher()):
            op.matvec(V[:, 0])
            op.matmat(V)
        src.at(params=p * 0.5).hessian().matmat(V)
        src.per_sample_gradients()
        src.layer_structure()
    assert prods.count == 0, prods.report()
    stream = MLPCurvature(model, p, lambda: iter(parts))
    H = stream.hessian()
    with count_syncs() as per_pass:
        H.matmat(V)
    assert per_pass.count == 2, per_pass.report()  # the labels of each batch, every pass
    full = MLPCurvature(model, p, (X, y))
    np.testing.assert_allclose(xp.asnumpy(src.hessian() @ V), xp.asnumpy(full.hessian() @ V), rtol=1e-12, atol=1e-14)
