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
  current layer (four matrix products per hidden layer), and adjoint mode, which returns
  the loss and gradient with ``c``.
* Every product is split into the vector-independent pass (:meth:`MLPProducts._primal`:
  activations, ``σ'``, the loss head; :meth:`MLPProducts._with_deltas`: the backward errors
  ``δ_l`` and ``σ'' ⊙ W̄ᵀδ``), held in a :class:`PrimalState`, and the tangent passes
  (``_hvp_from``, ``_ggn_from``, ``_fisher_from``). A one-shot product runs both; the
  product cache of :class:`curvlab.models.MLPCurvature` keeps the state per batch, so a
  cached Hessian product costs ``2u_1 + 6u_{l>1}`` matrix products of a layer's size
  ``u_l = 2 B n_l m_l`` flops (the gradient: ``2u_1 + 3u_{l>1}``) and a cached GGN
  product ``2u_1 + 4u_{l>1}``.
* :func:`hessian_operator`, :func:`ggn_operator`, :func:`fisher_operator`: the model bound
  to ``(params, X, y)`` as a :class:`CurvatureOperator` whose ``repr`` names it
  (:class:`curvlab.models.MLPCurvature` builds the same operators).

Host syncs: a direct product with cross-entropy labels reads the labels' range once (1);
the operators check their data once when built and do **0 host syncs per product**.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import numpy.typing as npt

from ..linalg.operators import CallableOperator, LinearOperator
from ._common import Workspace, dot64, matmul_into, positive_int, three_m_finish

if TYPE_CHECKING:
    from ..layout import Layout
    from .activations import Activation
    from .losses import Loss

#: a NumPy or CuPy array (typed as NumPy's)
Array = npt.NDArray[Any]

__all__ = [
    "MLPProducts",
    "PrimalState",
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


class PrimalState:
    """What the curvature products on one batch share, whatever the vector: the product
    cache's entry (:class:`curvlab.models.MLPCurvature` keeps one per cached batch).

    Attributes
    ----------
    acts : list of arrays
        Layer inputs ``a_0 = X, a_1, …, a_{L-1}`` ``(B, n_l)`` (``X`` is the bound batch, not
        a copy).
    d1s : list of arrays
        ``σ'(z_l)`` per hidden layer ``(B, n_l)``.
    aux : array or None
        The loss head's output-Hessian data (softmax ``p`` ``(B, K)``; None for mse).
    delta : array
        ``δ_L = ∂(mean loss)/∂z_L`` ``(B, K)``.
    deltas, qs : lists of arrays, or None until a product needs them
        ``δ_l`` at every layer's output (the last is ``delta``) and
        ``σ''(z_l) ⊙ W̄_{l+1}ᵀ δ_{l+1}`` per hidden layer (None where σ'' ≡ 0).
    """

    __slots__ = ("acts", "d1s", "aux", "delta", "deltas", "qs")

    def __init__(self, acts: list[Array], d1s: list[Array], aux: Array | None, delta: Array) -> None:
        self.acts, self.d1s, self.aux, self.delta = acts, d1s, aux, delta
        self.deltas: list[Array] | None = None
        self.qs: list[Array | None] | None = None

    def full_nbytes(self, has_q: bool) -> int:
        """:attr:`nbytes` once the backward errors are filled (``has_q``: σ'' ≢ 0)."""
        if self.deltas is not None:
            return self.nbytes
        hidden = sum(int(a.nbytes) for a in self.acts[1:])
        return self.nbytes + hidden * (2 if has_q else 1)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays this state allocated (the batch ``X`` itself not counted)."""
        seen: dict[int, int] = {}
        for a in [*self.acts[1:], *self.d1s, self.aux, self.delta, *(self.deltas or ()), *(self.qs or ())]:
            if a is not None:
                seen[id(a)] = int(a.nbytes)
        return sum(seen.values())


class MLPProducts:
    """Curvature products of :class:`curvlab.models.mlp.MLP` (mixed into the model).

    Every public method checks ``params``, ``X``, ``y`` and the direction(s) like the
    model's other methods; the ``_*_mm`` forms take checked inputs (layer views ``Ws`` of
    ``params``) and do no host sync.
    """

    if TYPE_CHECKING:  # provided by curvlab.models.mlp.MLP
        xp: types.ModuleType
        dtype: np.dtype[Any]
        layout: Layout
        act: Activation
        objective: Loss

        @property
        def label(self) -> str: ...

        @property
        def n_params(self) -> int: ...

        @property
        def n_layers(self) -> int: ...

        def check_inputs(self, params: Any, X: Any, y: Any) -> tuple[list[Array], Array, Array]: ...

        def _check_dir(self, v: Any, name: str, ndim: int) -> Array: ...

        def _head(self, zL: Array, y: Array) -> tuple[Array, Array, Array | None]: ...

        def _hL(self, aux: Array | None, U: Array) -> Array: ...

        def _ws(self) -> Workspace: ...

    # -- the vector-independent pass (the product cache's entry) -----------------
    def _primal(self, Ws: list[Array], X: Array, y: Array, ws: Workspace | None = None) -> PrimalState:
        """The forward pass and the loss head on checked inputs: what every curvature
        product on this batch shares (no host sync). The backward errors are added by
        :meth:`_with_deltas` when a product needs them. With a workspace ``ws`` the arrays
        are its scratch buffers (a one-shot product); without, new arrays (a cache entry)."""
        xp, act, dt = self.xp, self.act, self.dtype
        ws = ws or Workspace(xp, reuse=False)
        L = self.n_layers
        B = X.shape[0]
        acts: list[Array] = [X]
        d1s: list[Array] = []
        a = X
        for l, W in enumerate(Ws):
            z = ws.get(("a", l + 1), (B, W.shape[0]), dt)
            matmul_into(a, W[:, :-1].T, z, xp)
            z += W[:, -1]
            if l == L - 1:
                _, delta, aux = self._head(z, y)
                return PrimalState(acts, d1s, aux, delta)
            a = act.value_(z, xp)
            acts.append(a)
            d1s.append(act.d1_from_output(a, xp, out=ws.get(("d1", l + 1), a.shape, dt)))
        raise AssertionError("unreachable")

    def _with_deltas(self, Ws: list[Array], st: PrimalState, ws: Workspace | None = None) -> PrimalState:
        """Fill ``st.deltas`` (δ_l of the mean loss at every layer's output, the last one
        ``st.delta``) and ``st.qs`` (``σ''(z_l) ⊙ W̄_{l+1}ᵀ δ_{l+1}`` per hidden layer,
        ``None`` where σ'' ≡ 0): one backward pass without the weight gradients (arrays from
        ``ws``, or new ones for a cache entry)."""
        if st.deltas is not None:
            return st
        xp, act, dt = self.xp, self.act, self.dtype
        ws = ws or Workspace(xp, reuse=False)
        L = self.n_layers
        deltas: list[Array] = [st.delta] * L
        qs: list[Array | None] = [None] * (L - 1)
        delta = st.delta
        for l in range(L - 1, 0, -1):
            a, d1 = st.acts[l], st.d1s[l - 1]
            g = ws.get(("g", l), a.shape, dt)
            matmul_into(delta, Ws[l][:, :-1], g, xp)  # W̄_lᵀ δ_l per sample
            q = act.d2_from_output(a, d1, xp, out=ws.get(("q", l), a.shape, dt))
            if q is not None:
                q *= g
            qs[l - 1] = q
            g *= d1
            deltas[l - 1] = delta = g
        st.deltas, st.qs = deltas, qs
        return st

    # -- tangent (R-operator) machinery -----------------------------------------
    def _split_block(self, V: Array) -> list[Array]:
        """(P, k) -> list of (k, n_l, m_l) layer blocks (views when ``V`` is a column)."""
        VT = self.xp.ascontiguousarray(V.T)
        k = V.shape[1]
        return [VT[:, self.layout.slice(l)].reshape(k, n, m) for l, (n, m) in enumerate(self.layout.shapes)]

    def _tangent_in(self, ws: Workspace, l: int, a: Array, Vl: Array, Ra: Array | None, W: Array) -> Array:
        """``R(z_l) = V̄_l ã + W̄_l R(a)`` of layer ``l`` for k directions: (k, B, n) (scratch)."""
        xp, dt = self.xp, self.dtype
        k, B, n = Vl.shape[0], a.shape[0], Vl.shape[1]
        Rz = ws.get(("Rz", l), (k, B, n), dt)
        if Ra is None:
            matmul_into(a, Vl[:, :, :-1].transpose(0, 2, 1), Rz, xp)
        else:
            matmul_into(Ra.reshape(k * B, -1), W[:, :-1].T, Rz.reshape(k * B, n), xp)
            t = ws.get("tmp_Bn", (k, B, n), dt)
            matmul_into(a, Vl[:, :, :-1].transpose(0, 2, 1), t, xp)
            Rz += t
        Rz += Vl[:, None, :, -1]
        return Rz

    def _checked_block(self, params: Any, X: Any, y: Any, V: Any) -> tuple[list[Array], Array, Array, Array]:
        """Checked ``(Ws, X, y, V)`` for the unchecked block products ``_*_mm``."""
        Ws, X, y = self.check_inputs(params, X, y)
        return Ws, X, y, self._check_dir(V, "V", 2)

    def _vp(self, matmat: Callable[[Any, Any, Any, Array], Array], params: Any, X: Any, y: Any, v: Any) -> Array:
        """A matrix-vector product through the block product ``matmat`` on one column."""
        v = self._check_dir(v, "v", 1)
        return matmat(params, X, y, v[:, None])[:, 0]

    def _write_block(self, out: Array, l: int, Rd: Array, a: Array, extra: Array | None = None) -> None:
        """out[:, layer l] = Rdᵀ ã (+ extra in the weight part); Rd (k, B, n), a (B, m-1)."""
        xp = self.xp
        n, m = self.layout.shapes[l]
        k = Rd.shape[0]
        blk = out[:, self.layout.slice(l)].reshape(k, n, m)
        matmul_into(Rd.transpose(0, 2, 1), a, blk[:, :, :-1], xp)
        if extra is not None:
            blk[:, :, :-1] += extra
        xp.sum(Rd, axis=1, out=blk[:, :, -1])

    def _back_tangent(self, ws: Workspace, l: int, Rd: Array, W: Array) -> Array:
        """``R(g) = R(δ_l) W̄_l`` (k, B, m_l - 1) (scratch)."""
        k, B, n = Rd.shape
        Rg = ws.get(("Rg", l), (k, B, W.shape[1] - 1), self.dtype)
        matmul_into(Rd.reshape(k * B, n), W[:, :-1], Rg.reshape(k * B, -1), self.xp)
        return Rg

    def hvp_matmat(self, params: Any, X: Any, y: Any, V: Any) -> Array:
        """Exact Hessian times a block ``V`` (P, k) -> (P, k), one R-operator pass.

        Pearlmutter's R-operator on forward and backward passes; the k directions
        travel together as (k, B, n) tangents, so each layer costs a few batched
        matrix products whatever k is. Host syncs: 1 (the label range, cross-entropy);
        0 through :func:`hessian_operator`.
        """
        return self._hvp_mm(*self._checked_block(params, X, y, V))

    def _hvp_mm(self, Ws: list[Array], X: Array, y: Array, V: Array) -> Array:
        """:meth:`hvp_matmat` on checked inputs (no host sync)."""
        ws = self._ws()
        return self._hvp_from(Ws, self._primal(Ws, X, y, ws), V, ws)

    def _hvp_from(self, Ws: list[Array], st: PrimalState, V: Array, ws: Workspace | None = None) -> Array:
        """``H V`` (P, k) from the batch's :class:`PrimalState`: the R-forward and R-backward
        passes only (``st``'s backward errors are filled on first use, from ``ws`` if given)."""
        xp, dt = self.xp, self.dtype
        if ws is None:
            st = self._with_deltas(Ws, st)
            ws = self._ws()
        else:
            st = self._with_deltas(Ws, st, ws)
        deltas, qs = st.deltas, st.qs
        assert deltas is not None and qs is not None
        acts, d1s = st.acts, st.d1s
        Vs, k = self._split_block(V), V.shape[1]
        B = acts[0].shape[0]
        L = self.n_layers
        Ras: list[Array | None] = [None]
        Ts: list[Array | None] = [None]  # R(z_{l-1}) ⊙ q_{l-1}: the σ'' term of R(δ_{l-1})
        Rz = self._tangent_in(ws, 0, acts[0], Vs[0], None, Ws[0])
        for l in range(1, L):
            q = qs[l - 1]
            if q is None:
                Ts.append(None)
            else:
                T = ws.get(("T", l), Rz.shape, dt)
                xp.multiply(Rz, q, out=T)
                Ts.append(T)
            Rz *= d1s[l - 1]  # now R(a_l)
            Ras.append(Rz)
            Rz = self._tangent_in(ws, l, acts[l], Vs[l], Rz, Ws[l])
        Rd = self._hL(st.aux, Rz)
        Rd *= 1.0 / B
        out = xp.empty((k, self.n_params), dtype=dt)
        for l in range(L - 1, -1, -1):
            Ra = Ras[l]
            extra = None
            if Ra is not None:
                n, m = self.layout.shapes[l]
                extra = ws.get("tmp_nm", (k, n, m - 1), dt)
                matmul_into(deltas[l].T, Ra, extra, xp)
            self._write_block(out, l, Rd, acts[l], extra)
            if l > 0:
                Rg = self._back_tangent(ws, l, Rd, Ws[l])
                t = ws.get("tmp_Bm", Rg.shape, dt)
                matmul_into(deltas[l], Vs[l][:, :, :-1], t, xp)
                Rg += t
                Rg *= d1s[l - 1]
                T = Ts[l]
                if T is not None:
                    Rg += T
                Rd = Rg
        return out.T

    def hvp(self, params: Any, X: Any, y: Any, v: Any) -> Array:
        """Exact Hessian-vector product ``H v`` (P,) by the R-operator."""
        return self._vp(self.hvp_matmat, params, X, y, v)

    def ggn_matmat(self, params: Any, X: Any, y: Any, V: Any) -> Array:
        """Generalized Gauss-Newton ``Jᵀ (∇²_z L / B) J`` times ``V`` (P, k) -> (P, k).

        Host syncs: 1 (the label range, cross-entropy); 0 through :func:`ggn_operator`.
        """
        return self._ggn_mm(*self._checked_block(params, X, y, V))

    def _ggn_mm(self, Ws: list[Array], X: Array, y: Array, V: Array) -> Array:
        """:meth:`ggn_matmat` on checked inputs (no host sync)."""
        ws = self._ws()
        return self._ggn_from(Ws, self._primal(Ws, X, y, ws), V, ws)

    def _ggn_from(self, Ws: list[Array], st: PrimalState, V: Array, ws: Workspace | None = None) -> Array:
        """``G V`` (P, k) from the batch's :class:`PrimalState`: ``J V``, the output Hessian, ``Jᵀ``."""
        xp = self.xp
        ws = ws or self._ws()
        acts, d1s = st.acts, st.d1s
        Vs, k = self._split_block(V), V.shape[1]
        B = acts[0].shape[0]
        Rz = self._tangent_in(ws, 0, acts[0], Vs[0], None, Ws[0])
        for l in range(1, self.n_layers):
            Rz *= d1s[l - 1]
            Rz = self._tangent_in(ws, l, acts[l], Vs[l], Rz, Ws[l])
        Rd = self._hL(st.aux, Rz)
        Rd *= 1.0 / B
        out = xp.empty((k, self.n_params), dtype=self.dtype)
        for l in range(self.n_layers - 1, -1, -1):
            self._write_block(out, l, Rd, acts[l])
            if l > 0:
                Rg = self._back_tangent(ws, l, Rd, Ws[l])
                Rg *= d1s[l - 1]
                Rd = Rg
        return out.T

    def ggn_vp(self, params: Any, X: Any, y: Any, v: Any) -> Array:
        """GGN-vector product ``G v`` (P,)."""
        return self._vp(self.ggn_matmat, params, X, y, v)

    def fisher_matmat(self, params: Any, X: Any, y: Any, V: Any) -> Array:
        """Empirical Fisher ``(1/B) Σ_b g_b g_bᵀ`` times ``V`` (P, k), without forming the g_b.

        Host syncs: 1 (the label range, cross-entropy); 0 through :func:`fisher_operator`.
        """
        return self._fisher_mm(*self._checked_block(params, X, y, V))

    def _fisher_mm(self, Ws: list[Array], X: Array, y: Array, V: Array) -> Array:
        """:meth:`fisher_matmat` on checked inputs (no host sync)."""
        ws = self._ws()
        return self._fisher_from(Ws, self._primal(Ws, X, y, ws), V, ws)

    def _fisher_from(self, Ws: list[Array], st: PrimalState, V: Array, ws: Workspace | None = None) -> Array:
        """``F V`` (P, k) from the batch's :class:`PrimalState` (its backward errors δ_l,
        filled on first use): ``s[k, b] = g_b·v_k = B Σ_l δ_{l,b}ᵀ V_l ã_b`` (δ holds the
        1/B), then ``F v_k = Σ_b s[k, b] δ_{l,b} ã_bᵀ`` per layer."""
        xp, dt = self.xp, self.dtype
        if ws is None:
            st = self._with_deltas(Ws, st)
            ws = self._ws()
        else:
            st = self._with_deltas(Ws, st, ws)
        deltas = st.deltas
        assert deltas is not None
        acts = st.acts
        Vs, k = self._split_block(V), V.shape[1]
        B = acts[0].shape[0]
        s = xp.zeros((k, B), dtype=dt)
        for l in range(self.n_layers):
            n = Vs[l].shape[1]
            T = ws.get("tmp_Bn", (k, B, n), dt)
            matmul_into(acts[l], Vs[l][:, :, :-1].transpose(0, 2, 1), T, xp)
            T += Vs[l][:, None, :, -1]
            T *= deltas[l]
            s += T.sum(axis=2)
        s *= B
        out = xp.empty((k, self.n_params), dtype=dt)
        for l in range(self.n_layers):
            self._write_block(out, l, deltas[l][None] * s[:, :, None], acts[l])
        return out.T

    def fisher_vp(self, params: Any, X: Any, y: Any, v: Any) -> Array:
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

    def _curvature_forward(self, Ws: list[Array], X: Array, y: Array, d: Array) -> Array:
        """Taylor mode: stream ``(z, z', z'')`` through the layers; keeps one layer alive.

        z'_l = W_l ã'_{l-1} + D_l ã_{l-1},  z''_l = W_l ã''_{l-1} + 2 D_l ã'_{l-1},
        a' = σ' z',  a'' = σ' z'' + σ'' z'²,  c = mean_b [∇L·z''_L + z'_Lᵀ ∇²L z'_L].
        A hidden layer takes four matrix products instead of five, like the "3M" complex
        product: with ``E = D ã'``, ``z' = (W + D)(ã + ã') − W ã − E`` and
        ``z'' = W ã'' + 2E``. To keep the cancellation benign, ``d`` is rescaled internally
        to ``d̂ = s d`` with ``max|d̂| = max|θ|`` (``c = ĉ / s²``), as in the adjoint mode.
        The workspace holds ``z, z', z''`` of the current and the next layer, three
        temporaries and ``W + D̂``: ≈ 10 layer-sized arrays whatever the depth (the
        gradient keeps the activations, σ' and δ of every layer).
        """
        xp, act, dt = self.xp, self.act, self.dtype
        ws = self._ws()
        Ds = self.layout.unpack(d)
        L = self.n_layers
        B = X.shape[0]
        scale = self._direction_scale(d, Ws)

        def buf(tag: str, l: int, n: int) -> Array:  # z, z', z'' alternate between two sets
            return ws.get(("fw" + tag, l % 2) if tag in ("z", "z1", "z2") else "fw" + tag, (B, n), dt)

        W, D = Ws[0], Ds[0]
        n = W.shape[0]
        z = buf("z", 0, n)
        matmul_into(X, W[:, :-1].T, z, xp)
        z += W[:, -1]
        z1 = buf("z1", 0, n)
        matmul_into(X, D[:, :-1].T, z1, xp)
        z1 += D[:, -1]
        z1 *= scale
        z2: Array | None = None  # z'' of the first layer is zero (ã'_0 = ã''_0 = 0)
        for l in range(1, L):
            # hidden activation: z -> a, z' -> a' = σ' z', z'' -> a'' = σ' z'' + σ'' z'²
            a = act.value_(z, xp)
            _, a2 = act.tangent_step(a, z1, buf("s1", l, a.shape[1]), buf("q", l, a.shape[1]), xp, z2=z2)
            a1 = z1
            W, D = Ws[l], Ds[l]
            n = W.shape[0]
            z = buf("z", l, n)
            matmul_into(a, W[:, :-1].T, z, xp)
            z += W[:, -1]
            E = buf("E", l, n)  # D ã' (scaled to D̂ ã' below)
            matmul_into(a1, D[:, :-1].T, E, xp)
            WD = ws.get("fwWD", D.shape, dt)  # W + D̂
            xp.multiply(D, scale, out=WD)
            WD += W
            a1 += a  # ã + ã' (ã' is not needed any more)
            t = buf("z1", l, n)  # z' = (W + D̂)(ã + ã') − W ã − D̂ ã'
            matmul_into(a1, WD[:, :-1].T, t, xp)
            w = buf("z2", l, n)  # z'' = W ã'' + 2 D̂ ã'
            if a2 is not None:
                matmul_into(a2, W[:, :-1].T, w, xp)
            three_m_finish(t, WD[:, -1], z, E, scale, xp, w=w, w_add=a2 is not None)
            z2, z1 = w, t
        loss, delta, aux = self._head(z, y)
        c = xp.sum(z1 * self._hL(aux, z1), dtype=np.float64) / B
        if z2 is not None:
            c = c + xp.sum(delta * z2, dtype=np.float64)
        s64 = scale.astype(np.float64)
        return c / (s64 * s64)

    def _direction_scale(self, d: Array, Ws: list[Array]) -> Array:
        """``s`` (0-d, model dtype) with ``max|s d| = max|θ|`` (1 where either is 0); on the
        device, no host sync, no (P,) temporary."""
        xp = self.xp
        nd = xp.maximum(d.max(), -d.min())
        nt = xp.zeros((), dtype=self.dtype)
        for W in Ws:
            nt = xp.maximum(nt, xp.maximum(W.max(), -W.min()))
        nt = xp.where(nt > 0, nt, 1)
        return xp.where(nd > 0, nt / xp.where(nd > 0, nd, 1), 1).astype(self.dtype)

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

    def _grad_and_curvature(self, Ws: list[Array], X: Array, y: Array, d: Array, params: Array) -> tuple[Array, Array, Array]:
        """:meth:`grad_and_curvature` on checked inputs (``Ws`` the layer views of the flat
        ``params``); loss and ``c`` as 0-d float64 arrays (no host sync)."""
        xp, dt = self.xp, self.dtype
        ws = self._ws()
        # scale d to the parameters' magnitude (max-abs, device-side, no sync, no overflow)
        nd = xp.maximum(d.max(), -d.min())  # max |d| without a (P,) temporary
        nt = xp.maximum(params.max(), -params.min())
        nt = xp.where(nt > 0, nt, 1)
        scale = xp.where(nd > 0, nt / xp.where(nd > 0, nd, 1), 1).astype(dt)
        Ds = self.layout.unpack(d)  # unscaled views; ŝD is formed on the fly
        L = self.n_layers
        B = X.shape[0]
        act = self.act
        acts = [X]
        Es: list[Array | None] = [None]  # D̂_l ã'_{l-1} (zero for the first layer)
        Qs: list[Array | None] = []  # σ''(z_l) ⊙ z'_l² for hidden layers (None when σ'' = 0)
        d1s: list[Array] = []  # σ'(z_l) for hidden layers
        a: Array = X
        a1: Array | None = None
        S: Array = X
        for l in range(L):
            W, D = Ws[l], Ds[l]
            n = W.shape[0]
            Wb, Db = W[:, :-1].T, D[:, :-1].T
            z = ws.get(("a", l + 1), (B, n), dt)
            matmul_into(a, Wb, z, xp)
            z += W[:, -1]
            z1 = ws.get(("adz1", l % 2), (B, n), dt)
            if a1 is None:
                matmul_into(a, Db, z1, xp)
                z1 += D[:, -1]
                z1 *= scale
            else:
                WD = ws.get("adWD", D.shape, dt)
                xp.multiply(D, scale, out=WD)
                WD += W
                matmul_into(S, WD[:, :-1].T, z1, xp)  # S = ã + ã': W ã + (W ã' + D̂ ã) + D̂ ã'
                E = ws.get(("adE", l), (B, n), dt)
                matmul_into(a1, Db, E, xp)
                three_m_finish(z1, WD[:, -1], z, E, scale, xp)  # E ← D̂ ã', z1 ← z1 + b − z − E
                Es.append(E)
            if l == L - 1:
                break
            a = act.value_(z, xp)
            s1 = ws.get(("d1", l + 1), a.shape, dt)
            S = ws.get("adS", a.shape, dt)
            # σ', σ'' z'² and a' = σ' z' (in z1), S = a + a' for the next layer's product
            Q, _ = act.tangent_step(a, z1, s1, ws.get(("adQ", l + 1), a.shape, dt), xp, S=S)
            Qs.append(Q)
            a1 = z1
            acts.append(a)
            d1s.append(s1)
        loss, delta, aux = self._head(z, y)
        c = xp.sum(z1 * self._hL(aux, z1), dtype=np.float64) / B
        grad = xp.empty(self.n_params, dtype=dt)
        gs = self.layout.unpack(grad)
        for l in range(L - 1, -1, -1):
            a = acts[l]
            matmul_into(delta.T, a, gs[l][:, :-1], xp)
            xp.sum(delta, axis=0, out=gs[l][:, -1])
            E_l = Es[l]
            if E_l is not None:
                c = c + 2 * dot64(delta, E_l, xp)
            if l > 0:
                g = ws.get(("g", l), a.shape, dt)
                matmul_into(delta, Ws[l][:, :-1], g, xp)
                Q = Qs[l - 1]
                if Q is not None:
                    c = c + dot64(g, Q, xp)
                g *= d1s[l - 1]
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
