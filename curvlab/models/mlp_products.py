"""Exact curvature products of the reference MLP: Hessian, GGN, Fisher, ``dᵀHd``.

The product half of :class:`curvlab.models.mlp.MLP` (mixed into it as
:class:`MLPProducts`; it uses the model's forward pass, loss head and layout), and the
:class:`~curvlab.linalg.operators.LinearOperator` views of the products on bound data.

* **Hessian-vector products** by the R-operator (Pearlmutter 1994, "Fast exact
  multiplication by the Hessian", Neural Computation 6(1)): one forward pass carrying the
  tangents ``R(z_l)`` and one backward pass carrying ``R(δ_l)``; :meth:`MLPProducts.hvp_matmat`
  pushes a block of ``k`` directions through one pass as ``(k, B, n)`` tangents.
* **Generalized Gauss-Newton** ``Jᵀ (∇²_z L / B) J`` (the same forward tangents, the
  backward pass without the second-order terms) and the **empirical Fisher**
  ``(1/B) Σ_b g_b g_bᵀ`` (per-sample projections without forming the ``g_b``).
* The **directional curvature** ``c = dᵀ H d`` in the two modes of arXiv 2210.14520 (method inspired by):
  forward (Taylor) mode streaming ``(z, z', z'')`` and storing nothing beyond the
  current layer, and adjoint mode, which returns the loss and gradient with ``c``.
* :func:`hessian_operator`, :func:`ggn_operator`, :func:`fisher_operator`: the model bound
  to ``(params, X, y)`` as a :class:`CurvatureOperator` whose ``repr`` names it
  (:class:`curvlab.models.MLPCurvature` builds the same operators).

Host syncs: a direct product with cross-entropy labels reads the labels' range once (1);
the operators check their data once when built and do **0 host syncs per product**.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..linalg.operators import CallableOperator, LinearOperator
from ._common import matmul_into, positive_int

__all__ = [
    "MLPProducts",
    "CurvatureOperator",
    "bound_operator",
    "hessian_operator",
    "ggn_operator",
    "fisher_operator",
]


class CurvatureOperator(CallableOperator):
    """A curvature matrix of a model on bound data (a :class:`CallableOperator` that says
    what it is).

    ``description`` reads like ``"Hessian of MLP[4-5-3, tanh, cross_entropy] on 8 samples,
    P=43"`` and leads the ``repr``.
    """

    def __init__(self, matvec: Any, shape: tuple[int, int], dtype: Any, *, description: str, **kw: Any) -> None:
        super().__init__(matvec, shape, dtype, **kw)
        self.description = str(description)

    def __repr__(self) -> str:
        tags = [t for t in ("symmetric", "psd") if getattr(self, t)]
        return (f"<{self.description}: {type(self).__name__} shape={self.shape} dtype={self.dtype} "
                f"backend={self.xp.__name__}{' ' + ','.join(tags) if tags else ''}>")


class MLPProducts:
    """Curvature products of :class:`curvlab.models.mlp.MLP` (mixed into the model).

    Every public method checks ``params``, ``X``, ``y`` and the direction(s) like the
    model's other methods; the ``_*_mm`` forms take checked inputs (layer views ``Ws`` of
    ``params``) and do no host sync.
    """

    # -- tangent (R-operator) machinery -----------------------------------------
    def _split_block(self, V: Any) -> list[Any]:
        """(P, k) -> list of (k, n_l, m_l) contiguous layer blocks."""
        VT = self.xp.ascontiguousarray(V.T)
        k = V.shape[1]
        return [VT[:, self.layout.slice(l)].reshape(k, n, m) for l, (n, m) in enumerate(self.layout.shapes)]

    def _tangent_forward(self, Ws: list[Any], X: Any, Vs: list[Any], keep_rz: bool) -> tuple:
        """Primal forward plus tangents ``R(z_l)`` (k, B, n_l) along the k directions.

        Returns acts (a_0..a_{L-1}), ds (σ'(z_l) for hidden l), Ras (R(a_l), None for l=0),
        Rzs (hidden R(z_l) if keep_rz), zL, RzL.
        """
        xp = self.xp
        L = self.n_layers
        k = Vs[0].shape[0]
        B = X.shape[0]
        acts, ds, Ras, Rzs = [X], [], [None], []
        a, Ra = X, None
        for l in range(L):
            W, V = Ws[l], Vs[l]
            Wb = W[:, :-1]
            z = a @ Wb.T
            z += W[:, -1]
            Rz = xp.matmul(a, V[:, :, :-1].transpose(0, 2, 1))  # (k, B, n)
            Rz += V[:, None, :, -1]
            if Ra is not None:
                Rz += (Ra.reshape(k * B, -1) @ Wb.T).reshape(k, B, -1)
            if l == L - 1:
                return acts, ds, Ras, Rzs, z, Rz
            a = self.act.value_(z, xp)
            d1 = self.act.d1_from_output(a, xp)
            Ra = Rz * d1
            acts.append(a)
            ds.append(d1)
            Ras.append(Ra)
            if keep_rz:
                Rzs.append(Rz)
        raise AssertionError("unreachable")

    def _checked_block(self, params: Any, X: Any, y: Any, V: Any) -> tuple[list[Any], Any, Any, Any]:
        """Checked ``(Ws, X, y, V)`` for the unchecked block products ``_*_mm``."""
        Ws, X, y = self.check_inputs(params, X, y)
        return Ws, X, y, self._check_dir(V, "V", 2)

    def _vp(self, matmat: Any, params: Any, X: Any, y: Any, v: Any) -> Any:
        """A matrix-vector product through the block product ``matmat`` on one column."""
        v = self._check_dir(v, "v", 1)
        return matmat(params, X, y, v[:, None])[:, 0]

    def _write_block(self, out: Any, l: int, Rd: Any, a: Any, extra: Any = None) -> None:
        """out[:, layer l] = Rdᵀ ã (+ extra in the weight part); Rd (k, B, n), a (B, m-1)."""
        xp = self.xp
        n, m = self.layout.shapes[l]
        k = Rd.shape[0]
        blk = out[:, self.layout.slice(l)].reshape(k, n, m)
        matmul_into(Rd.transpose(0, 2, 1), a, blk[:, :, :-1], xp)
        if extra is not None:
            blk[:, :, :-1] += extra
        xp.sum(Rd, axis=1, out=blk[:, :, -1])

    def hvp_matmat(self, params: Any, X: Any, y: Any, V: Any) -> Any:
        """Exact Hessian times a block ``V`` (P, k) -> (P, k), one R-operator pass.

        Pearlmutter's R-operator on forward and backward passes; the k directions
        travel together as (k, B, n) tangents, so each layer costs a few batched
        matrix products whatever k is. Host syncs: 1 (the label range, cross-entropy);
        0 through :func:`hessian_operator`.
        """
        return self._hvp_mm(*self._checked_block(params, X, y, V))

    def _hvp_mm(self, Ws: list[Any], X: Any, y: Any, V: Any) -> Any:
        """:meth:`hvp_matmat` on checked inputs (no host sync)."""
        xp = self.xp
        Vs, k = self._split_block(V), V.shape[1]
        B = X.shape[0]
        acts, ds, Ras, Rzs, zL, RzL = self._tangent_forward(Ws, X, Vs, keep_rz=True)
        _, delta, aux = self._head(zL, y)
        Rd = self._hL(aux, RzL)
        Rd *= 1.0 / B
        out = xp.empty((k, self.n_params), dtype=self.dtype)
        for l in range(self.n_layers - 1, -1, -1):
            a, Ra = acts[l], Ras[l]
            extra = None if Ra is None else xp.matmul(delta.T, Ra)
            self._write_block(out, l, Rd, a, extra)
            if l > 0:
                Wb, Vb = Ws[l][:, :-1], Vs[l][:, :, :-1]
                g = delta @ Wb  # (B, m-1)
                Rg = (Rd.reshape(k * B, -1) @ Wb).reshape(k, B, -1)
                Rg += xp.matmul(delta, Vb)
                d1 = ds[l - 1]
                Rg *= d1
                d2 = self.act.d2_from_output(acts[l], d1, xp)
                if d2 is not None:
                    Rg += Rzs[l - 1] * (d2 * g)
                g *= d1
                delta, Rd = g, Rg
        return out.T

    def hvp(self, params: Any, X: Any, y: Any, v: Any) -> Any:
        """Exact Hessian-vector product ``H v`` (P,) by the R-operator."""
        return self._vp(self.hvp_matmat, params, X, y, v)

    def ggn_matmat(self, params: Any, X: Any, y: Any, V: Any) -> Any:
        """Generalized Gauss-Newton ``Jᵀ (∇²_z L / B) J`` times ``V`` (P, k) -> (P, k).

        Host syncs: 1 (the label range, cross-entropy); 0 through :func:`ggn_operator`.
        """
        return self._ggn_mm(*self._checked_block(params, X, y, V))

    def _ggn_mm(self, Ws: list[Any], X: Any, y: Any, V: Any) -> Any:
        """:meth:`ggn_matmat` on checked inputs (no host sync)."""
        xp = self.xp
        Vs, k = self._split_block(V), V.shape[1]
        B = X.shape[0]
        acts, ds, _, _, zL, RzL = self._tangent_forward(Ws, X, Vs, keep_rz=False)
        _, _, aux = self._head(zL, y)
        Rd = self._hL(aux, RzL)
        Rd *= 1.0 / B
        out = xp.empty((k, self.n_params), dtype=self.dtype)
        for l in range(self.n_layers - 1, -1, -1):
            self._write_block(out, l, Rd, acts[l])
            if l > 0:
                Rg = (Rd.reshape(k * B, -1) @ Ws[l][:, :-1]).reshape(k, B, -1)
                Rg *= ds[l - 1]
                Rd = Rg
        return out.T

    def ggn_vp(self, params: Any, X: Any, y: Any, v: Any) -> Any:
        """GGN-vector product ``G v`` (P,)."""
        return self._vp(self.ggn_matmat, params, X, y, v)

    def fisher_matmat(self, params: Any, X: Any, y: Any, V: Any) -> Any:
        """Empirical Fisher ``(1/B) Σ_b g_b g_bᵀ`` times ``V`` (P, k), without forming the g_b.

        Host syncs: 1 (the label range, cross-entropy); 0 through :func:`fisher_operator`.
        """
        return self._fisher_mm(*self._checked_block(params, X, y, V))

    def _fisher_mm(self, Ws: list[Any], X: Any, y: Any, V: Any) -> Any:
        """:meth:`fisher_matmat` on checked inputs (no host sync)."""
        xp = self.xp
        Vs, k = self._split_block(V), V.shape[1]
        B = X.shape[0]
        acts, zL = self._forward(Ws, X)
        _, delta, _ = self._head(zL, y)
        delta *= B  # per-sample output errors
        deltas = [d for _, d in self._deltas(Ws, acts, delta)][::-1]
        # s[k, b] = g_b · v_k = Σ_l δ_{l,b}ᵀ V_l ã_b
        s = xp.zeros((k, B), dtype=self.dtype)
        for l in range(self.n_layers):
            T = xp.matmul(acts[l], Vs[l][:, :, :-1].transpose(0, 2, 1))
            T += Vs[l][:, None, :, -1]
            T *= deltas[l]
            s += T.sum(axis=2)
        s *= 1.0 / B
        out = xp.empty((k, self.n_params), dtype=self.dtype)
        for l in range(self.n_layers):
            self._write_block(out, l, deltas[l][None] * s[:, :, None], acts[l])
        return out.T

    def fisher_vp(self, params: Any, X: Any, y: Any, v: Any) -> Any:
        """Empirical-Fisher-vector product ``F v`` (P,)."""
        return self._vp(self.fisher_matmat, params, X, y, v)

    # -- directional curvature (arXiv 2210.14520 modes) ----------------------------
    def curvature(self, params: Any, X: Any, y: Any, d: Any, mode: str = "forward") -> float:
        """Directional curvature ``c = dᵀ H d`` of the batch-mean loss (Python float).

        ``mode="forward"``: Taylor mode, one extended forward pass carrying
        ``(z, z', z'')`` layer by layer and storing nothing beyond the current
        layer (memory ≈ the forward pass). ``mode="adjoint"``: reuses the backward
        errors δ_l and stored first-order tangents (see :meth:`grad_and_curvature`).
        Reductions accumulate in float64.
        """
        if mode == "forward":
            Ws, X, y = self.check_inputs(params, X, y)
            d = self._check_dir(d, "d", 1)
            return float(self._curvature_forward(Ws, X, y, d))
        if mode == "adjoint":
            return self.grad_and_curvature(params, X, y, d)[2]
        raise ValueError(f"mode must be 'forward' or 'adjoint', got {mode!r}")

    def _curvature_forward(self, Ws: list[Any], X: Any, y: Any, d: Any) -> Any:
        """Taylor mode: stream ``(z, z', z'')`` through the layers; keeps one layer alive.

        z'_l = W_l ã'_{l-1} + D_l ã_{l-1},  z''_l = W_l ã''_{l-1} + 2 D_l ã'_{l-1},
        a' = σ' z',  a'' = σ' z'' + σ'' z'²,  c = mean_b [∇L·z''_L + z'_Lᵀ ∇²L z'_L].
        Buffers are reused in place so the peak is ≈ 5 layer-sized arrays.
        """
        xp = self.xp
        act = self.act
        Ds = self.layout.unpack(d)
        L = self.n_layers
        B = X.shape[0]
        W, D = Ws[0], Ds[0]
        z = X @ W[:, :-1].T
        z += W[:, -1]
        z1 = X @ D[:, :-1].T
        z1 += D[:, -1]
        z2 = None  # z'' of the first layer is zero (ã'_0 = ã''_0 = 0)
        for l in range(1, L):
            # hidden activation: z -> a, z' -> a' = σ' z', z'' -> a'' = σ' z'' + σ'' z'²
            a = act.value_(z, xp)
            s1 = act.d1_from_output(a, xp)
            q = act.d2_from_output(a, s1, xp)
            if q is not None:
                q *= z1
                q *= z1
                if z2 is not None:
                    z2 *= s1
                    z2 += q
                    del q
                else:
                    z2 = q
            elif z2 is not None:
                z2 *= s1
            z1 *= s1
            del s1
            a1, a2 = z1, z2
            del z, z1, z2
            W, D = Ws[l], Ds[l]
            Wb, Db = W[:, :-1].T, D[:, :-1].T
            t = a @ Db  # D ã
            t += D[:, -1]
            z = a @ Wb
            z += W[:, -1]
            del a
            u = a1 @ Wb
            t += u  # t = z' of this layer
            w = a1 @ Db
            del a1
            w *= 2
            if a2 is not None:
                matmul_into(a2, Wb, u, xp)
                del a2
                u += w
                del w
                z2 = u
            else:
                del u
                z2 = w
            z1 = t
            del t
        loss, delta, aux = self._head(z, y)
        c = xp.sum(z1 * self._hL(aux, z1), dtype=np.float64) / B
        if z2 is not None:
            c = c + xp.sum(delta * z2, dtype=np.float64)
        return c

    def grad_and_curvature(self, params: Any, X: Any, y: Any, d: Any) -> tuple[float, Any, float]:
        """Loss, gradient ``(P,)`` and ``c = dᵀ H d`` together (adjoint mode).

        Forward: primal ``z_l`` and first-order tangents ``z'_l = W_l ã'_{l-1} + D_l ã_{l-1}``
        with ``E_l = D_l ã'_{l-1}`` (stored per layer, like the activations).
        Backward: the usual δ_l, and, summed over the batch (δ_l holds the 1/B),

            c = Σ_l 2 δ_lᵀ E_l + Σ_{l<L} (W̄_{l+1}ᵀ δ_{l+1})ᵀ (σ''(z_l) ⊙ z'_l²)
                + z'_Lᵀ ∇²L z'_L / B.

        Adjoint mode; method inspired by arXiv 2210.14520. The three products ``W ã``,
        ``W ã' + D ã`` and ``D ã'`` of a layer take three matrix products instead
        of four, like the "3M" complex product:
        ``z'_l = (W + D)(ã + ã') − W ã − D ã'``. To keep this cancellation benign,
        ``d`` is rescaled internally to ``d̂ = s d`` with ``max|d̂| = max|θ|`` (c is
        quadratic in d, so ``c = ĉ / s²``). Reductions in float64.

        >>> import numpy as np
        >>> from curvlab.models.mlp import MLP
        >>> m = MLP([3, 4, 2]); p = m.init_params(0); rng = np.random.default_rng(0)
        >>> X, y, d = rng.standard_normal((5, 3)), rng.integers(0, 2, 5), rng.standard_normal(26)
        >>> f, g, c = m.grad_and_curvature(p, X, y, d)
        >>> bool(np.isclose(c, d @ m.hvp(p, X, y, d)))
        True
        """
        Ws, X, y = self.check_inputs(params, X, y)
        loss, grad, c = self._grad_and_curvature(Ws, X, y, self._check_dir(d, "d", 1), params)
        return float(loss), grad, float(c)

    def _grad_and_curvature(self, Ws: list[Any], X: Any, y: Any, d: Any, params: Any) -> tuple[Any, Any, Any]:
        """:meth:`grad_and_curvature` on checked inputs (``Ws`` the layer views of the flat
        ``params``); loss and ``c`` as 0-d float64 arrays (no host sync)."""
        xp = self.xp
        # scale d to the parameters' magnitude (max-abs, device-side, no sync, no overflow)
        nd = xp.max(xp.abs(d))
        nt = xp.max(xp.abs(params))
        nt = xp.where(nt > 0, nt, 1)
        scale = xp.where(nd > 0, nt / xp.where(nd > 0, nd, 1), 1).astype(self.dtype)
        Ds = self.layout.unpack(d)  # unscaled views; ŝD is formed on the fly
        L = self.n_layers
        B = X.shape[0]
        act = self.act
        acts = [X]
        Es: list[Any] = [None]  # D̂_l ã'_{l-1} (zero for the first layer)
        Qs: list[Any] = []  # σ''(z_l) ⊙ z'_l² for hidden layers (None when σ'' = 0)
        a, a1 = X, None
        for l in range(L):
            W, D = Ws[l], Ds[l]
            Wb, Db = W[:, :-1].T, D[:, :-1].T
            if a1 is None:
                z = a @ Wb
                z += W[:, -1]
                z1 = a @ Db
                z1 += D[:, -1]
                z1 *= scale
            else:
                WD = D * scale
                WD += W
                S = a + a1
                z1 = S @ WD[:, :-1].T  # = W ã + (W ã' + D̂ ã) + D̂ ã'
                z1 += WD[:, -1]
                del WD, S
                z = a @ Wb
                z += W[:, -1]
                E = a1 @ Db
                E *= scale
                z1 -= z
                z1 -= E
                Es.append(E)
            if l == L - 1:
                break
            a = act.value_(z, xp)
            s1 = act.d1_from_output(a, xp)
            s2 = act.d2_from_output(a, s1, xp)
            if s2 is not None:
                s2 *= z1
                s2 *= z1
            Qs.append(s2)
            z1 *= s1
            del s1
            a1 = z1
            acts.append(a)
        loss, delta, aux = self._head(z, y)
        c = xp.sum(z1 * self._hL(aux, z1), dtype=np.float64) / B
        grad = xp.empty(self.n_params, dtype=self.dtype)
        gs = self.layout.unpack(grad)
        for l in range(L - 1, -1, -1):
            a = acts[l]
            matmul_into(delta.T, a, gs[l][:, :-1], xp)
            xp.sum(delta, axis=0, out=gs[l][:, -1])
            if Es[l] is not None:
                c = c + 2 * xp.sum(delta * Es[l], dtype=np.float64)
                Es[l] = None
            if l > 0:
                g = delta @ Ws[l][:, :-1]
                if Qs[l - 1] is not None:
                    c = c + xp.sum(g * Qs[l - 1], dtype=np.float64)
                    Qs[l - 1] = None
                g *= act.d1_from_output(a, xp)
                delta = g
        s64 = scale.astype(np.float64)
        c = c / (s64 * s64)
        return loss, grad, c

    # -- dense (tests only) ----------------------------------------------------
    def dense_hessian(self, params: Any, X: Any, y: Any, block: int = 256) -> Any:
        """The exact ``(P, P)`` Hessian by R-operator products on identity blocks (small P).

        ``block`` (a positive integer) is the number of columns per product.
        """
        xp = self.xp
        block = positive_int(block, "block")
        Ws, X, y = self.check_inputs(params, X, y)
        P = self.n_params
        H = xp.empty((P, P), dtype=self.dtype)
        for j in range(0, P, block):
            k = min(block, P - j)
            E = xp.zeros((P, k), dtype=self.dtype)
            E[xp.arange(j, j + k), xp.arange(k)] = 1
            H[:, j : j + k] = self._hvp_mm(Ws, X, y, E)
        return H


# ---------------------------------------------------------------------------
# operators
# ---------------------------------------------------------------------------
_KINDS = {"hessian": ("Hessian", "_hvp_mm", False), "ggn": ("GGN", "_ggn_mm", True),
          "fisher": ("empirical Fisher", "_fisher_mm", True)}


def _check_model(model: Any) -> Any:
    if not isinstance(model, MLPProducts):
        raise TypeError(f"model must be a curvlab.models.mlp.MLP, got {type(model).__name__}")
    return model


def bound_operator(model: Any, Ws: list[Any], X: Any, y: Any, kind: str) -> CurvatureOperator:
    """The ``kind`` ("hessian", "ggn" or "fisher") matrix of ``model`` on **checked** data
    (``Ws, X, y`` from ``model.check_inputs``) as a symmetric :class:`CurvatureOperator`
    (PSD for GGN and Fisher). Its products do 0 host syncs; the operator's own input check
    gives them ``(P, k)`` arrays of the model's backend and dtype.
    """
    try:
        label, meth, psd = _KINDS[kind]
    except KeyError:
        raise ValueError(f"kind must be one of {tuple(_KINDS)}, got {kind!r}") from None
    mm = getattr(_check_model(model), meth)
    P = model.n_params
    return CurvatureOperator(
        lambda v: mm(Ws, X, y, v[:, None])[:, 0],
        (P, P),
        model.dtype,
        matmat=lambda V: mm(Ws, X, y, V),
        symmetric=True,
        psd=psd,
        xp=model.xp,
        description=f"{label} of {model.label} on {X.shape[0]} samples, P={P}",
    )


def _operator(model: Any, params: Any, X: Any, y: Any, kind: str) -> CurvatureOperator:
    """Bind checked data once (labels read here, 1 host sync); the products then do none."""
    Ws, X, y = _check_model(model).check_inputs(params, X, y)  # fail early, naming the argument
    return bound_operator(model, Ws, X, y, kind)


def hessian_operator(model: Any, params: Any, X: Any, y: Any) -> LinearOperator:
    """The batch Hessian as a symmetric :class:`LinearOperator` (matmat = one R-operator pass).

    >>> import numpy as np
    >>> from curvlab.models.mlp import MLP
    >>> m = MLP([3, 4, 2]); p = m.init_params(0); rng = np.random.default_rng(0)
    >>> H = hessian_operator(m, p, rng.standard_normal((6, 3)), rng.integers(0, 2, 6))
    >>> H.shape, H.symmetric
    ((26, 26), True)
    >>> H.description
    'Hessian of MLP[3-4-2, tanh, cross_entropy] on 6 samples, P=26'

    Host syncs: 1 when built (the labels' range, cross-entropy; plus the finiteness checks
    under ``nan_policy="raise"``), **0 per product** (matvec and matmat). The bound arrays are
    not re-checked: do not change them in place afterwards.
    """
    return _operator(model, params, X, y, "hessian")


def ggn_operator(model: Any, params: Any, X: Any, y: Any) -> LinearOperator:
    """The generalized Gauss-Newton matrix as a symmetric PSD :class:`LinearOperator`.

    Host syncs: as :func:`hessian_operator` (1 when built, 0 per product).
    """
    return _operator(model, params, X, y, "ggn")


def fisher_operator(model: Any, params: Any, X: Any, y: Any) -> LinearOperator:
    """The empirical Fisher ``(1/B) Σ g_b g_bᵀ`` as a symmetric PSD :class:`LinearOperator`.

    Host syncs: as :func:`hessian_operator` (1 when built, 0 per product).
    """
    return _operator(model, params, X, y, "fisher")
