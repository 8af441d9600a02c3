"""TorchCurvature and JaxCurvature as curvature sources (curvlab.sources.CurvatureSource).

The protocol's members the shared conformance test (tests/test_sources_conformance.py) does
not reach: rebinding without rebuilding or recompiling (``at``), named operator reprs, the
``layer_structure`` error, per-sample gradients, ``fisher("true")``, and the deprecated
aliases of the old names (same numbers, a DeprecationWarning).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from curvlab.layout import Layout
from curvlab.sources import CurvatureSource, LayerStructureUnavailable


# --------------------------------------------------------------------------- torch
@pytest.fixture
def tsrc():
    torch = pytest.importorskip("torch")
    from curvlab.adapters.torch import TorchCurvature

    from ._models import SmallCNN

    torch.manual_seed(0)
    net = SmallCNN().eval()
    X, y = torch.randn(6, 1, 6, 6, dtype=torch.float64), torch.randint(0, 3, (6,))
    return TorchCurvature(net, "cross_entropy", (X, y)), net, X, y


def test_torch_is_a_curvature_source(tsrc):
    src, net, X, y = tsrc
    assert isinstance(src, CurvatureSource)
    assert type(src.layout) is Layout and src.layout.names[0] == "conv.weight"
    p = src.params
    assert isinstance(p, np.ndarray) and p.shape == (src.layout.size,) and p.dtype == np.float64
    assert np.array_equal(p, np.concatenate([q.detach().numpy().ravel() for q in net.parameters()]))
    p[:] = 0.0  # a copy: the snapshot is not changed through it
    assert np.any(src.params != 0.0)
    loss, g = src.gradient()
    assert src.loss() == loss and g.shape == (src.layout.size,)


def test_torch_at_rebinds_the_same_module_without_rebuilding(tsrc):
    torch = pytest.importorskip("torch")
    from curvlab.adapters.torch import TorchCurvature

    src, net, X, y = tsrc
    p2 = src.params * 0.7
    d = np.random.default_rng(1).standard_normal(src.layout.size)
    moved = src.at(params=p2)
    assert moved.model is src.model and moved.layout is src.layout and moved.loss_fn is src.loss_fn
    assert np.array_equal(src.params, TorchCurvature(net, "cross_entropy", (X, y)).params)  # source unchanged
    # data (before the module is moved to p2 below)
    half = src.at(data=(X[:3], y[:3]))
    assert half.batch_size == 3 and half.model is src.model
    assert half.loss() == TorchCurvature(net, "cross_entropy", (X[:3], y[:3])).loss()
    # the same numbers as a source built at p2 (and as the params= arguments of the products)
    with torch.no_grad():
        for q, v in zip(net.parameters(), moved.layout.unpack(torch.as_tensor(p2))):
            q.copy_(v)
    ref = TorchCurvature(net, "cross_entropy", (X, y))
    assert moved.gradient()[0] == ref.gradient()[0] and np.array_equal(moved.gradient()[1], ref.gradient()[1])
    assert np.array_equal(moved.hessian() @ d, ref.hessian() @ d)
    assert moved.directional_curvature(d) == src.directional_curvature(d, params=p2)
    with pytest.raises(ValueError, match="batch must be a pair"):
        src.at(data=X)
    with pytest.raises(ValueError, match=r"params must have shape \(123,\)"):
        src.at(params=np.zeros(5))


def test_torch_at_keeps_nan_policy():
    torch = pytest.importorskip("torch")
    from curvlab.adapters.torch import TorchCurvature

    from ._models import mlp

    net = mlp([3, 4, 2])
    X, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,))
    src = TorchCurvature(net, "cross_entropy", (X, y), nan_policy="raise")
    bad = src.params
    bad[2] = np.nan
    with pytest.raises(FloatingPointError, match="parameter '0.weight'"):
        src.at(params=bad)
    with pytest.raises(FloatingPointError, match="batch inputs"):
        src.at(data=(X * np.nan, y))


def test_torch_operator_reprs_say_what_they_are(tsrc):
    src, *_ = tsrc
    assert repr(src) == "TorchCurvature(SmallCNN on 6 samples, P=123, dtype=float64, hvp_mode=forward_over_reverse)"
    assert repr(src.hessian()).startswith("<Hessian of SmallCNN on 6 samples, P=123, hvp_mode=reverse_over_reverse "
                                          "(auto: faster than forward_over_reverse on cpu):")  # issue 14
    assert "hvp_mode=reverse_over_reverse, cached graph" in repr(src.hessian("reverse_over_reverse", cache_graph=True))
    assert repr(src.ggn()).startswith("<GGN of SmallCNN on 6 samples, P=123:")
    assert repr(src.fisher()).startswith("<empirical Fisher of SmallCNN")
    assert repr(src.fisher("true")).startswith("<true Fisher (= GGN) of SmallCNN")
    assert re.match(r"<Monte-Carlo Fisher of SmallCNN on 6 samples, P=123, mc_samples=2: .*psd>",
                    repr(src.fisher("mc", rng=0, mc_samples=2)))


def test_torch_layer_structure_without_a_linear_layer_is_unavailable_with_a_clear_message(tsrc):
    torch = pytest.importorskip("torch")
    from curvlab.adapters.torch import TorchCurvature

    src, *_ = tsrc
    assert [layer.weight for layer in src.layer_structure()] == ["fc.weight"]  # the CNN's Linear head
    conv_only = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, dtype=torch.float64), torch.nn.Flatten()).eval()
    X = torch.randn(4, 1, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    bare = TorchCurvature(conv_only, "cross_entropy", (X, torch.tensor([0, 3, 7, 17])))
    with pytest.raises(LayerStructureUnavailable, match="TorchCurvature.layer_structure.*Sequential.*no torch.nn.Linear"):
        bare.layer_structure()
    assert issubclass(LayerStructureUnavailable, NotImplementedError)


def test_torch_per_sample_gradients_and_true_fisher(tsrc):
    src, *_ = tsrc
    G = src.per_sample_gradients()
    assert G.shape == (6, src.layout.size)
    _, g = src.gradient()
    assert np.max(np.abs(G.mean(0) - g)) <= 1e-14 * np.max(np.abs(G))
    V = np.random.default_rng(2).standard_normal((src.layout.size, 3))
    F = src.fisher().matmat(V)
    assert np.max(np.abs(F - G.T @ (G @ V) / 6)) <= 1e-12 * np.max(np.abs(F))
    assert np.array_equal(src.fisher("true").matmat(V), src.ggn().matmat(V))
    with pytest.raises(ValueError, match="kind must be 'empirical', 'true' or 'mc'"):
        src.fisher("exact")


def test_torch_true_fisher_needs_a_builtin_loss():
    torch = pytest.importorskip("torch")
    from curvlab.adapters.torch import TorchCurvature

    from ._models import mlp

    X, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,))
    src = TorchCurvature(mlp([3, 4, 2]), torch.nn.functional.cross_entropy, (X, y))
    with pytest.raises(ValueError, match="kind='true'.*built-in loss"):
        src.fisher("true")


def test_torch_deprecated_aliases_are_gone(tsrc):
    src, *_ = tsrc
    assert not hasattr(src, "curvature") and not hasattr(src, "flat_params")  # directional_curvature, params
    import curvlab.adapters.torch as ta

    assert not hasattr(ta, "NamedLayout")


def test_torch_package_keeps_every_public_name_and_curvlab_imports_no_torch():
    pytest.importorskip("torch")
    import subprocess
    import sys

    import curvlab.adapters.torch as ta

    for name in ("TorchCurvature", "CurvlabOptimizer", "to_torch", "from_torch", "hessian_operator", "ggn_operator",
                 "fisher_operator", "HVP_MODES", "from_reference_mlp", "forward_mode_safe_ops", "Layout"):
        assert name in ta.__all__ and getattr(ta, name) is not None
    code = "import sys, curvlab, curvlab.adapters; print('torch' in sys.modules, 'jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --------------------------------------------------------------------------- JAX
def _jax_case(count: list[int]):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    def apply(p, X):
        count[0] += 1  # runs once per trace
        return jnp.tanh(X @ p["w"].T + p["s"]) @ p["v"].T

    r = np.random.default_rng(0)
    p = {"w": jnp.asarray(r.standard_normal((4, 3))), "v": jnp.asarray(r.standard_normal((2, 4))),
         "s": jnp.asarray(r.standard_normal(4))}
    X, y = r.standard_normal((8, 3)), r.integers(0, 2, 8)
    return apply, p, X, y


def test_jax_is_a_curvature_source():
    from curvlab.adapters.jax import JaxCurvature

    apply, p, X, y = _jax_case([0])
    src = JaxCurvature(apply, p, "cross_entropy", (X, y), trainable=["v", "w"])
    assert isinstance(src, CurvatureSource) and type(src.layout) is Layout
    assert src.layout.names == ("v", "w")
    assert isinstance(src.params, np.ndarray) and src.params.shape == (src.layout.size,)
    loss, g = src.gradient()
    assert src.loss() == loss
    G = src.per_sample_gradients()
    assert G.shape == (8, src.layout.size) and np.max(np.abs(G.mean(0) - g)) <= 1e-14 * np.max(np.abs(G))
    V = np.random.default_rng(1).standard_normal((src.layout.size, 2))
    assert np.max(np.abs(src.fisher().matmat(V) - G.T @ (G @ V) / 8)) <= 1e-12 * np.max(np.abs(G.T @ (G @ V)))
    assert np.array_equal(src.fisher("true").matmat(V), src.ggn().matmat(V))
    with pytest.raises(LayerStructureUnavailable, match="JaxCurvature.layer_structure.*apply"):
        src.layer_structure()
    assert repr(src) == "JaxCurvature(apply on 8 samples, P=20, dtype=float64, hvp_mode=forward_over_reverse)"
    assert repr(src.hessian("reverse_over_reverse")).startswith(
        "<Hessian of apply on 8 samples, P=20, hvp_mode=reverse_over_reverse: CurvatureOperator")
    assert repr(src.fisher("mc", rng=0)).startswith("<Monte-Carlo Fisher of apply on 8 samples, P=20, mc_samples=1")
    assert repr(src.fisher("true")).startswith("<true Fisher (= GGN) of apply")


def test_jax_at_reuses_the_compiled_functions():
    """Rebinding parameters and data of the same shapes traces nothing (counted in apply)."""
    import jax.numpy as jnp

    from curvlab.adapters.jax import JaxCurvature

    count = [0]
    apply, p, X, y = _jax_case(count)
    src = JaxCurvature(apply, p, "cross_entropy", (X, y), trainable=["v", "w"])
    d = np.random.default_rng(1).standard_normal(src.layout.size)

    def use(s):
        return (s.loss(), s.gradient(), s.hessian() @ d, s.ggn() @ d, s.directional_curvature(d),
                s.grad_and_curvature(d), s.per_sample_gradients(), s.fisher() @ d,
                s.fisher("mc", rng=0).matmat(np.stack([d, d], 1)))

    use(src)
    traced = count[0]
    X2, y2 = X + 0.5, (y + 1) % 2
    for moved in (src.at(params=src.params * 0.5), src.at(data=(X2, y2)), src.at(params=src.params * 2, data=(X2, y2)),
                  src.at(params={**p, "w": p["w"] * 3})):  # a pytree with the same held-fixed leaf
        out = use(moved)
        assert count[0] == traced, "at() retraced"
    # the numbers of a freshly built source
    ref = JaxCurvature(apply, {**p, "w": p["w"] * 3}, "cross_entropy", (X, y), trainable=["v", "w"])
    assert out[0] == ref.loss() and np.array_equal(out[1][1], ref.gradient()[1])
    assert np.array_equal(out[2], ref.hessian() @ d)
    both = src.at(params=src.params * 2, data=(X2, y2))
    p2 = src.layout.unpack_dict(src.params * 2)
    ref2 = JaxCurvature(apply, {**p, "w": jnp.asarray(p2["w"]), "v": jnp.asarray(p2["v"])}, "cross_entropy",
                        (X2, y2), trainable=["v", "w"])
    assert both.loss() == ref2.loss() and both.directional_curvature(d) == ref2.directional_curvature(d)
    assert src.loss() == use(src)[0]  # the source itself is unchanged
    # a different batch size compiles (new shapes); a different held-fixed leaf gets its own programs
    src.at(data=(X[:4], y[:4])).loss()
    assert count[0] > traced
    other = src.at(params={**p, "s": p["s"] + 1.0})
    assert other._jit is not src._jit
    ref3 = JaxCurvature(apply, {**p, "s": p["s"] + 1.0}, "cross_entropy", (X, y), trainable=["v", "w"])
    assert other.loss() == ref3.loss()


def test_jax_at_checks_its_arguments():
    from curvlab.adapters.jax import JaxCurvature

    apply, p, X, y = _jax_case([0])
    src = JaxCurvature(apply, p, "cross_entropy", (X, y), nan_policy="raise")
    with pytest.raises(ValueError, match="pytree of the constructor's structure"):
        src.at(params={"w": p["w"]})
    with pytest.raises(ValueError, match=r"params must have shape \(24,\)"):
        src.at(params=np.zeros(3))
    with pytest.raises(ValueError, match=r"class labels\) must lie in \[0, 1\]"):
        src.at(data=(X, y + 5))
    with pytest.raises(FloatingPointError, match="parameters"):
        src.at(params=src.params * np.nan)
    with pytest.raises(FloatingPointError, match="batch inputs"):
        src.at(data=(X * np.nan, y))


def test_jax_deprecated_aliases_are_gone():
    import curvlab.adapters.jax as ja
    from curvlab.adapters.jax import JaxCurvature

    apply, p, X, y = _jax_case([0])
    src = JaxCurvature(apply, p, "mse", (X, np.ones((8, 2))))
    assert not hasattr(src, "curvature") and not hasattr(src, "flat_params")  # directional_curvature, params
    assert not hasattr(ja, "NamedLayout")


def test_jax_operator_shortcuts_equal_the_source_operators():
    from curvlab.adapters.jax import JaxCurvature, fisher_operator, ggn_operator, hessian_operator

    apply, p, X, y = _jax_case([0])
    src = JaxCurvature(apply, p, "cross_entropy", (X, y))
    V = np.random.default_rng(5).standard_normal((src.layout.size, 2))
    assert np.array_equal(hessian_operator(apply, p, "cross_entropy", (X, y)).matmat(V), src.hessian().matmat(V))
    assert np.array_equal(ggn_operator(apply, p, "cross_entropy", (X, y)).matmat(V), src.ggn().matmat(V))
    assert np.array_equal(fisher_operator(apply, p, "cross_entropy", (X, y), "mc", rng=1).matmat(V),
                          src.fisher("mc", rng=1).matmat(V))
