"""One conformance test of the :class:`curvlab.sources.CurvatureSource` protocol, run on every
(case × framework) of :mod:`tests.cases` (the reference MLP, and torch/JAX once their
builders are filled).

Independent references: central finite differences of the loss (gradient) and of the
gradient (a dense float64 Hessian twin, symmetrised), always computed on the float64
version of the case. Exactness between the source's own products (``dᵀ(Hd)`` vs
``directional_curvature``, layer blocks vs the dense Hessian) is checked at round-off
(``EXACT`` by dtype); agreement with finite differences at ``FD_TOL``.
"""

from __future__ import annotations

import numpy as np
import pytest

from curvlab.layout import Layout
from curvlab.sources import CurvatureSource, LayerStructureUnavailable
from tests.cases import CASES, case_ids, get_framework

FRAMEWORK_NAMES = ("mlp", "torch", "jax")
#: round-off tolerance (relative, Frobenius) for identities between a source's own results
EXACT = {np.dtype(np.float64): 1e-11, np.dtype(np.float32): 2e-4}
#: float32 results against the float64 twin of the same case
F32_VS_F64 = 2e-3
#: central finite differences (float64, step FD_H) against exact derivatives
FD_H, FD_TOL = 1e-5, 1e-6

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


@pytest.fixture(params=[(c, f) for f in FRAMEWORK_NAMES for c in CASES],
                ids=[f"{f}-{i}" for f in FRAMEWORK_NAMES for i in case_ids(CASES)])
def setup(request):
    case, name = request.param
    fw = get_framework(name)  # skips a placeholder framework
    src = fw.build(case)
    return case, fw, src


def _np(fw, x) -> np.ndarray:
    return np.asarray(fw.to_numpy(x))


def _vec(fw, src, a):
    """``a`` (NumPy, in the source's layout) as an array the source accepts."""
    return fw.from_numpy(np.asarray(a, dtype=_np(fw, src.params).dtype), src.params)


def _matrix(fw, src, op) -> np.ndarray:
    P = src.layout.size
    return _np(fw, op @ _vec(fw, src, np.eye(P)))


def _fd_hessian(fw, src64) -> np.ndarray:
    """Central differences of the float64 source's gradient, column by column, symmetrised."""
    p = _np(fw, src64.params)
    P = p.size
    H = np.empty((P, P))
    for j in range(P):
        e = np.zeros(P)
        e[j] = FD_H
        gp = _np(fw, src64.at(params=_vec(fw, src64, p + e)).gradient()[1])
        gm = _np(fw, src64.at(params=_vec(fw, src64, p - e)).gradient()[1])
        H[:, j] = (gp - gm) / (2 * FD_H)
    return 0.5 * (H + H.T)


_FD_CACHE: dict = {}


def fd_twin(case, fw) -> np.ndarray:
    key = (case.astype(np.float64), fw.name)
    if key not in _FD_CACHE:
        _FD_CACHE[key] = _fd_hessian(fw, fw.build(case.astype(np.float64)))
    return _FD_CACHE[key]


def tol(src, fw) -> float:
    return EXACT[np.dtype(_np(fw, src.params).dtype)]


# ---------------------------------------------------------------------------
def test_protocol_and_layout(setup):
    case, fw, src = setup
    assert isinstance(src, CurvatureSource)
    assert isinstance(src.layout, Layout)
    p = _np(fw, src.params)
    assert p.shape == (src.layout.size,) == (case.n_params,)
    assert np.dtype(p.dtype) == np.dtype(case.dtype)
    f = src.loss()
    assert isinstance(f, float) and np.isfinite(f)
    f2, g = src.gradient()
    assert f2 == f and _np(fw, g).shape == p.shape


def test_gradient_against_central_differences(setup):
    case, fw, src = setup
    src64 = fw.build(case.astype(np.float64)) if np.dtype(case.dtype) != np.float64 else src
    p = _np(fw, src64.params)
    _, g = src64.gradient()
    g = _np(fw, g)
    fd = np.empty_like(p)
    for j in range(p.size):
        e = np.zeros_like(p)
        e[j] = FD_H
        fd[j] = (src64.at(params=_vec(fw, src64, p + e)).loss() - src64.at(params=_vec(fw, src64, p - e)).loss()) / (2 * FD_H)
    assert rel(g, fd) < FD_TOL
    if src is not src64:  # float32 gradient against the float64 one
        assert rel(_np(fw, src.gradient()[1]), g) < F32_VS_F64


def test_hessian_matvec_matmat_against_dense_twin(setup):
    case, fw, src = setup
    H_fd = fd_twin(case, fw)
    H = src.hessian()
    P = src.layout.size
    assert tuple(H.shape) == (P, P)
    Hd = _matrix(fw, src, H)
    assert rel(Hd, H_fd) < (FD_TOL if np.dtype(case.dtype) == np.float64 else F32_VS_F64)
    assert rel(Hd, Hd.T) < tol(src, fw)  # symmetric to round-off
    rng = np.random.default_rng(1)
    V = rng.standard_normal((P, 3))
    HV = _np(fw, H @ _vec(fw, src, V))
    assert rel(HV, Hd @ V) < tol(src, fw)
    for k in range(3):  # matvec agrees with matmat's columns
        assert rel(_np(fw, H @ _vec(fw, src, V[:, k])), HV[:, k]) < tol(src, fw)


def test_ggn_and_fisher_are_symmetric_psd(setup):
    case, fw, src = setup
    for op in (src.ggn(), src.fisher("empirical")):
        G = _matrix(fw, src, op)
        assert rel(G, G.T) < tol(src, fw)
        w = np.linalg.eigvalsh(0.5 * (G + G.T).astype(np.float64))
        assert w[0] >= -10 * tol(src, fw) * max(abs(w[-1]), 1e-30)


def test_fisher_empirical_is_mean_outer_product_of_sample_gradients(setup):
    case, fw, src = setup
    if not hasattr(src, "per_sample_gradients"):
        pytest.skip("per_sample_gradients not provided")
    G = _np(fw, src.per_sample_gradients()).astype(np.float64)
    assert G.shape == (case.batch, src.layout.size)
    assert rel(G.mean(axis=0), _np(fw, src.gradient()[1])) < tol(src, fw)
    F = _matrix(fw, src, src.fisher("empirical"))
    assert rel(F, G.T @ G / case.batch) < tol(src, fw)


def test_directional_curvature_is_dHd_and_grad_and_curvature_agrees(setup):
    case, fw, src = setup
    H = src.hessian()
    f, g = src.gradient()
    for seed in range(3):
        d = np.random.default_rng(seed).standard_normal(src.layout.size)
        dv = _vec(fw, src, d)
        ref = float(d @ _np(fw, H @ dv).astype(np.float64))
        scale = float(np.abs(d) @ np.abs(_np(fw, H @ _vec(fw, src, np.abs(d))).astype(np.float64))) + abs(ref)
        c = src.directional_curvature(dv)
        assert isinstance(c, float)
        assert abs(c - ref) <= 4 * tol(src, fw) * scale
        f2, g2, c2 = src.grad_and_curvature(dv)
        assert abs(f2 - f) <= tol(src, fw) * abs(f)
        assert rel(_np(fw, g2), _np(fw, g)) < tol(src, fw)
        assert abs(c2 - ref) <= 4 * tol(src, fw) * scale


def test_products_are_deterministic(setup):
    case, fw, src = setup
    V = _vec(fw, src, np.random.default_rng(2).standard_normal((src.layout.size, 4)))
    for make in (src.hessian, src.ggn, src.fisher):
        op = make()
        a, b = _np(fw, op @ V), _np(fw, op @ V)
        assert a.tobytes() == b.tobytes()
    d = V[:, 0]
    assert src.directional_curvature(d) == src.directional_curvature(d)


def test_at_rebinds_params_without_altering_the_source(setup):
    case, fw, src = setup
    p = _np(fw, src.params).copy()
    f0, g0 = src.gradient()
    g0 = _np(fw, g0).copy()
    H0 = _matrix(fw, src, src.hessian())
    new = p + 0.1 * np.random.default_rng(3).standard_normal(p.size)
    moved = src.at(params=_vec(fw, src, new))
    assert isinstance(moved, CurvatureSource) and moved is not src
    assert np.array_equal(_np(fw, moved.params), new.astype(p.dtype))
    assert moved.loss() != f0
    # the old source still answers for the old parameters, bit for bit
    assert np.array_equal(_np(fw, src.params), p)
    f1, g1 = src.gradient()
    assert f1 == f0 and _np(fw, g1).tobytes() == g0.tobytes()
    assert _matrix(fw, src, src.hessian()).tobytes() == H0.tobytes()
    # and rebinding back reproduces it
    back = moved.at(params=_vec(fw, src, p))
    fb, gb = back.gradient()
    assert fb == f0 and _np(fw, gb).tobytes() == g0.tobytes()
    # rebinding the same data keeps the values
    same = src.at(data=fw.data_of(case))
    assert same.loss() == f0


def test_layer_structure_blocks_equal_the_dense_hessian_diagonal_blocks(setup):
    case, fw, src = setup
    try:
        layers = src.layer_structure()
    except LayerStructureUnavailable:
        return
    H = _matrix(fw, src, src.hessian()).astype(np.float64)
    lay = src.layout
    assert len(layers) == len(case.shapes)
    for layer in layers:
        a = _np(fw, layer.inputs).astype(np.float64)
        delta = _np(fw, layer.output_grads).astype(np.float64)
        M = _np(fw, layer.output_hessians).astype(np.float64)
        B, n = a.shape
        m = delta.shape[1]
        assert M.shape == (B, m, m) and delta.shape == (B, m)
        at = np.concatenate([a, np.ones((B, 1))], axis=1)
        block = sum(np.kron(M[b], np.outer(at[b], at[b])) for b in range(B)) / B
        # flat indices of W̃ = [W | b] in row-major order
        w = lay.slice(layer.weight)
        if layer.bias_folded:
            assert lay.shapes[lay.index(layer.weight)] == (m, n + 1)
            idx = np.arange(w.start, w.stop)
        else:
            wi = np.arange(w.start, w.stop).reshape(m, n)
            bi = (np.arange(lay.slice(layer.bias).start, lay.slice(layer.bias).stop).reshape(m, 1)
                  if layer.bias is not None else None)
            if bi is None:
                block = block.reshape(m, n + 1, m, n + 1)[:, :n, :, :n].reshape(m * n, m * n)
                idx = wi.ravel()
            else:
                idx = np.concatenate([wi, bi], axis=1).ravel()
        assert rel(H[np.ix_(idx, idx)], block) < 10 * tol(src, fw)
        # the layer's gradient block is the mean of δ ãᵀ
        g = _np(fw, src.gradient()[1]).astype(np.float64)
        assert rel(g[idx], (delta.T @ at / B).ravel() if layer.bias_folded or layer.bias is not None
                   else (delta.T @ a / B).ravel()) < 10 * tol(src, fw)


# ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", [c for c in CASES if np.dtype(c.dtype) == np.float64], ids=lambda c: c.id)
def test_mlp_torch_and_jax_agree_on_the_same_weights(case):
    """Two independent implementations agree: the reference MLP, torch (``nn.Sequential`` twin
    from ``adapters.torch.from_reference_mlp``, its flat layout a permutation ``perm`` of the
    MLP's) and JAX (``adapters.jax.from_reference_mlp``, the MLP's layout), float64, 1e-10."""
    get_framework("torch")
    get_framework("jax")
    from curvlab.adapters.torch import from_reference_mlp

    srcs = {name: get_framework(name).build(case) for name in FRAMEWORK_NAMES}
    _, perm = from_reference_mlp(case.mlp(), case.params())
    # each source's flat vectors in the MLP's layout: x_mlp[perm] = x_torch
    to_mlp = {"mlp": lambda x: np.asarray(x), "jax": lambda x: np.asarray(x),
              "torch": lambda x: np.asarray(x)[np.argsort(perm)]}
    to_src = {"mlp": lambda a: a, "jax": lambda a: a, "torch": lambda a: np.ascontiguousarray(a[perm])}
    for name, src in srcs.items():
        assert np.array_equal(to_mlp[name](src.params), case.params()), name
    rng = np.random.default_rng(7)
    P = case.n_params
    V = rng.standard_normal((P, 3))
    d = V[:, 0].copy()
    ref = srcs["mlp"]
    f_ref, g_ref = ref.gradient()
    prods_ref = {k: np.asarray(op.matmat(V)) for k, op in
                 (("hessian", ref.hessian()), ("ggn", ref.ggn()), ("fisher", ref.fisher("empirical")),
                  ("true fisher", ref.fisher("true")))}
    c_ref = ref.directional_curvature(d)
    G_ref = np.asarray(ref.per_sample_gradients())
    for name in ("torch", "jax"):
        src, back, fwd = srcs[name], to_mlp[name], to_src[name]
        f, g = src.gradient()
        assert abs(f - f_ref) <= 1e-10 * abs(f_ref) and src.loss() == f, name
        assert rel(back(g), g_ref) < 1e-10, name
        ops = {"hessian": src.hessian(), "ggn": src.ggn(), "fisher": src.fisher("empirical"),
               "true fisher": src.fisher("true")}
        for k, op in ops.items():
            assert rel(back(op.matmat(fwd(V))), prods_ref[k]) < 1e-10, (name, k)
            assert rel(back(op @ fwd(d)), prods_ref[k][:, 0]) < 1e-10, (name, k)
        assert abs(src.directional_curvature(fwd(d)) - c_ref) <= 1e-10 * abs(c_ref), name
        f2, g2, c2 = src.grad_and_curvature(fwd(d))
        assert abs(f2 - f_ref) <= 1e-10 * abs(f_ref) and rel(back(g2), g_ref) < 1e-10
        assert abs(c2 - c_ref) <= 1e-10 * abs(c_ref), name
        G = np.asarray(src.per_sample_gradients())
        assert rel(G[:, np.argsort(perm)] if name == "torch" else G, G_ref) < 1e-10, name
        # rebound to other weights, still the same numbers
        p2 = case.params(rng_offset=1)
        f_ref2, g_ref2 = ref.at(params=p2).gradient()
        f_2, g_2 = src.at(params=fwd(p2)).gradient()
        assert abs(f_2 - f_ref2) <= 1e-10 * abs(f_ref2) and rel(back(g_2), g_ref2) < 1e-10, name
