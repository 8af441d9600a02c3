"""One registry of (model, loss, data) cases shared by the MLP, torch and JAX tests.

A :class:`Case` is a small dense network (widths, hidden activation, loss, dtype) with
seeded weights and one batch of data. The same case builds a curvature source
(:class:`curvlab.sources.CurvatureSource`) in each framework of :data:`FRAMEWORKS`:

* ``"mlp"`` — :class:`curvlab.models.MLPCurvature` (filled here);
* ``"torch"`` and ``"jax"`` — ``TorchCurvature`` / ``JaxCurvature`` on the twin network
  with the same weights (:func:`curvlab.adapters.torch.from_reference_mlp`, whose flat
  layout is a permutation of the MLP's, and :func:`curvlab.adapters.jax.from_reference_mlp`,
  whose layout is the MLP's); skipped where the framework is not installed.

The weights are the MLP's: layer ``l`` is ``W_l`` ``(n_l, n_{l-1} + 1)`` with the bias as
its last column (``Case.weights()`` gives them as NumPy float64 arrays, whatever the case
dtype, so every framework starts from the same numbers). Labels are integers in
``[0, n_L)`` (cross-entropy) or float targets ``(B, n_L)`` (mse).

>>> case = CASES_BY_ID["tanh-cross_entropy-float64"]
>>> src = build(case, "mlp")
>>> src.layout.size == case.n_params
True
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

__all__ = ["Case", "Framework", "CASES", "CASES_BY_ID", "FRAMEWORKS", "build", "case_ids"]


@dataclass(frozen=True)
class Case:
    """A (model, loss, data) case: an MLP ``sizes`` with ``activation``, ``loss``, ``dtype``,
    ``batch`` samples, all drawn from ``seed``."""

    sizes: tuple[int, ...]
    activation: str
    loss: str
    dtype: Any = np.float64
    batch: int = 7
    seed: int = 0

    @property
    def id(self) -> str:
        return f"{self.activation}-{self.loss}-{np.dtype(self.dtype).name}"

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """The weight shapes ``(n_l, n_{l-1} + 1)`` (bias folded as the last column)."""
        return [(self.sizes[i + 1], self.sizes[i] + 1) for i in range(len(self.sizes) - 1)]

    @property
    def n_params(self) -> int:
        return sum(n * m for n, m in self.shapes)

    def astype(self, dtype: Any) -> "Case":
        """The same case (same weights and data) in another dtype."""
        return replace(self, dtype=dtype)

    def weights(self, rng_offset: int = 0) -> list[np.ndarray]:
        """Seeded float64 weights (Glorot-uniform scale, nonzero biases), one ``(n, m)`` per layer;
        ``rng_offset`` draws another point of the same case."""
        rng = np.random.default_rng([self.seed, 1 + rng_offset])
        out = []
        for n, m in self.shapes:
            lim = np.sqrt(6.0 / (m - 1 + n))
            out.append(rng.uniform(-lim, lim, size=(n, m)))
        return out

    def params(self, rng_offset: int = 0) -> np.ndarray:
        """The MLP's flat ``(P,)`` parameters (row-major ``vec(W_1), …``) in the case dtype."""
        return np.concatenate([W.ravel() for W in self.weights(rng_offset)]).astype(self.dtype)

    def data(self) -> tuple[np.ndarray, np.ndarray]:
        """One batch ``(X, y)``: ``X`` ``(B, n_0)`` in the case dtype; integer labels or float targets."""
        rng = np.random.default_rng([self.seed, 0])
        X = rng.standard_normal((self.batch, self.sizes[0]))
        K = self.sizes[-1]
        if self.loss == "cross_entropy":
            y = rng.integers(0, K, size=self.batch)
        else:
            y = rng.standard_normal((self.batch, K)).astype(self.dtype)
        return X.astype(self.dtype), y

    def mlp(self) -> Any:
        """The reference :class:`curvlab.models.MLP` of this case."""
        from curvlab.models import MLP  # noqa: PLC0415

        return MLP(list(self.sizes), activation=self.activation, loss=self.loss, dtype=self.dtype)


@dataclass(frozen=True)
class Framework:
    """How one framework builds a case's curvature source and converts its arrays.

    ``build(case) -> source`` binds the case's weights (:meth:`Case.weights`) and data;
    ``to_numpy(x) -> np.ndarray`` reads a flat vector/matrix of the source;
    ``from_numpy(a, like) -> array`` makes a flat vector (or ``(P, k)`` block) the source
    accepts (``like``: its ``params``); ``data(case)`` the batch in the form ``at(data=...)``
    takes (default: ``case.data()``).
    """

    name: str
    build: Callable[[Case], Any]
    to_numpy: Callable[[Any], np.ndarray]
    from_numpy: Callable[[np.ndarray, Any], Any]
    requires: tuple[str, ...] = ()
    data: Callable[[Case], Any] | None = None

    def data_of(self, case: Case) -> Any:
        return case.data() if self.data is None else self.data(case)


def _build_mlp(case: Case) -> Any:
    from curvlab.models import MLPCurvature  # noqa: PLC0415

    return MLPCurvature(case.mlp(), case.params(), case.data())


def _build_torch(case: Case) -> Any:
    """``TorchCurvature`` of the ``nn.Sequential`` twin (``from_reference_mlp``: torch's
    ``weight`` then ``bias`` per ``nn.Linear``, a permutation of the MLP's flat layout)."""
    import torch  # noqa: PLC0415

    from curvlab.adapters.torch import TorchCurvature, from_reference_mlp  # noqa: PLC0415

    torch.set_num_threads(1)
    net, _ = from_reference_mlp(case.mlp(), case.params())
    return TorchCurvature(net, case.loss, case.data())


_JAX_SOURCES: dict[Case, Any] = {}


def _build_jax(case: Case) -> Any:
    """``JaxCurvature`` of the JAX twin (``from_reference_mlp``: the MLP's own flat layout).

    Built once per case and shared: a source is immutable (``at`` returns a new one sharing
    its compiled functions), and compiling every product again per test costs minutes."""
    if case not in _JAX_SOURCES:
        _JAX_SOURCES[case] = _build_jax_uncached(case)
    return _JAX_SOURCES[case]


def _build_jax_uncached(case: Case) -> Any:
    import jax  # noqa: PLC0415

    jax.config.update("jax_enable_x64", True)  # float64 cases; float32 leaves stay float32
    from curvlab.adapters.jax import JaxCurvature, from_reference_mlp  # noqa: PLC0415

    apply_fn, tree = from_reference_mlp(case.mlp(), case.params())
    return JaxCurvature(apply_fn, tree, case.loss, case.data())


def _same_dtype(a: np.ndarray, like: Any) -> np.ndarray:
    return np.asarray(a, dtype=like.dtype)


#: the frameworks a case runs on; ``None`` marks a placeholder not filled yet (skipped)
FRAMEWORKS: dict[str, Framework | None] = {
    "mlp": Framework("mlp", _build_mlp, np.asarray, lambda a, like: np.asarray(a, dtype=like.dtype)),
    # the adapters return NumPy arrays on the CPU and take NumPy vectors and batches
    "torch": Framework("torch", _build_torch, np.asarray, _same_dtype, requires=("torch",)),
    "jax": Framework("jax", _build_jax, np.asarray, _same_dtype, requires=("jax",)),
}

_ACTIVATIONS = ("tanh", "relu", "softplus", "sigmoid")
_LOSSES = ("cross_entropy", "mse")

#: every case: 4 activations × 2 losses × {float64, float32}, 3 layers, P = 64
CASES: list[Case] = [
    Case((4, 5, 4, 3), act, loss, dtype, seed=i)
    for dtype in (np.float64, np.float32)
    for i, (act, loss) in enumerate((a, l) for a in _ACTIVATIONS for l in _LOSSES)
]
CASES_BY_ID: dict[str, Case] = {c.id: c for c in CASES}


def case_ids(cases: list[Case]) -> list[str]:
    return [c.id for c in cases]


def get_framework(name: str) -> Framework:
    """The :class:`Framework` ``name``; ``pytest.skip`` for a placeholder or a missing package."""
    import pytest  # noqa: PLC0415

    if name not in FRAMEWORKS:
        raise KeyError(f"unknown framework {name!r}; known: {sorted(FRAMEWORKS)}")
    fw = FRAMEWORKS[name]
    if fw is None:
        pytest.skip(f"framework {name!r}: placeholder in tests/cases.py, not filled yet")
    for mod in fw.requires:
        pytest.importorskip(mod)
    return fw


def build(case: Case, framework: str = "mlp") -> Any:
    """The curvature source of ``case`` in ``framework`` (skips for a placeholder)."""
    return get_framework(framework).build(case)
