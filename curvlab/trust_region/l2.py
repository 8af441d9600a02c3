"""The l2 trust-region subproblem ``min gᵀs + ½ sᵀBs  s.t. ‖s‖ ≤ Δ``.

``B`` is given by its eigendecomposition ``B = V diag(λ) Vᵀ`` or as a
diagonal. In the eigenbasis (``γ = Vᵀg``) the solution is
``s(σ) = −γ/(λ + σ)`` with ``σ ≥ max(0, −λ_min)`` and ``σ(Δ − ‖s‖) = 0``
(Moré–Sorensen). The secular equation ``½‖s(σ)‖² = ½Δ²`` has the same form as
the arTuRO KL dual (``p = 1``, ``G = γ``, ``c = λ``), so it is solved by the
same safeguarded Newton iteration on ``‖s‖^{-1} − Δ^{-1}``
(:mod:`curvlab.trust_region._roots`). The hard case (``γ`` orthogonal to the
bottom eigenspace and ``‖s(−λ_min)‖ < Δ``) adds ``τ v_min`` to reach the
boundary.

Examples
--------
>>> import numpy as np
>>> res = solve_l2_subproblem(np.array([1.0, 0.0]), 0.5, diag=np.array([1.0, 2.0]))
>>> np.round(res.s, 12).tolist(), round(res.sigma, 12), res.interior     # s = -g/(1 + σ), ‖s‖ = Δ
([-0.5, 0.0], 1.0, False)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .. import backend
from ..linalg.results import ConvergenceError, Status, StatusField, _g, _repr, warn_unconverged
from ._roots import _count, _number, solve_decreasing

__all__ = ["L2Result", "solve_l2_subproblem"]


@dataclasses.dataclass
class L2Result:
    """Solution of the l2 subproblem.

    ``s`` the step (shape of ``g``); ``sigma`` the multiplier; ``norm`` = ‖s‖;
    ``model`` = ``gᵀs + ½sᵀBs``; ``interior`` (σ = 0, ‖s‖ < Δ);
    ``hard_case``; ``n_evals`` secular-function evaluations; ``converged``
    (``|½‖s‖²/(½Δ²) − 1| ≤ rtol``, or interior, or the hard case); ``status``
    (a :class:`curvlab.linalg.results.Status`; strings are converted)
    ``"converged"``, ``"max_iter"`` or ``"stagnated"`` (the tolerance is not
    attainable in float64; ``s`` is then the feasible end of the final bracket).
    """

    s: Any
    sigma: float
    norm: float
    model: float
    interior: bool
    hard_case: bool
    n_evals: int
    converged: bool
    status: StatusField = StatusField(Status.CONVERGED)

    def __post_init__(self) -> None:
        self.status = Status.of(self.status, "L2Result.status")

    @property
    def all_converged(self) -> bool:
        """Same as ``converged`` (one step)."""
        return bool(self.converged)

    def __repr__(self) -> str:
        shape = tuple(getattr(self.s, "shape", ()))
        return _repr(
            "L2Result",
            [f"sigma={_g(self.sigma)}", f"norm={_g(self.norm)}", f"model={_g(self.model)}", f"s=<{shape} array>",
             f"interior={self.interior}", f"hard_case={self.hard_case}"],
            [f"status={self.status.value!r}", f"n_evals={self.n_evals}"],
        )


def solve_l2_subproblem(g: Any, delta: float, *, eigvals: Any = None, eigvecs: Any = None, diag: Any = None,
                        rtol: float = 1e-10, max_iter: int = 100, hard_tol: float = 1e-12, warn: bool = True,
                        strict: bool = False) -> L2Result:
    """Solve ``min gᵀs + ½ sᵀBs, ‖s‖ ≤ delta`` globally.

    Give either ``diag`` (``(n,)``, B diagonal) or ``eigvals`` (``(k,)``) and
    ``eigvecs`` (``(n, k)``, orthonormal columns, not checked), so that
    ``B = V diag(λ) Vᵀ``; with ``k < n``, B is 0 on the complement of V's range
    and the part of ``g`` there is used too. ``rtol`` is the relative tolerance
    on ``½‖s‖²`` at the boundary. Components of ``γ = Vᵀg`` in the bottom
    eigenspace (and the complement part of ``g``) below ``hard_tol·‖g‖`` count
    as zero (hard case).

    The secular equation is solved in the shifted multiplier ``x = σ − σ_low``
    (``σ_low = max(0, −λ_min)``) with the shifted eigenvalues ``λ + σ_low``
    (exactly 0 on the bottom eigenspace), so that ``σ + λ_min`` is resolved to
    full relative accuracy near the pole: the near-hard case (γ nearly
    orthogonal to the bottom eigenvector) meets ``rtol`` like any other. A
    tolerance that cannot be met is reported (``converged=False``,
    ``status``), with a :class:`~curvlab.linalg.results.ConvergenceWarning`
    unless ``warn=False``; ``strict=True`` raises
    :class:`~curvlab.linalg.results.ConvergenceError` instead.

    Computes in float64; ``s`` is returned in the dtype of ``g`` (NumPy or
    CuPy, the backend of ``g``). NaN/Inf in ``g``, ``diag``, ``eigvals`` or
    ``eigvecs`` raise ``ValueError`` naming the argument; so do a non-positive
    or non-finite ``delta``, ``rtol``, ``max_iter < 1`` and ``hard_tol``
    outside ``[0, 1)``.

    Host syncs: 2 + 1 per secular evaluation (one read of the problem's
    scalars and finiteness flags, one per evaluation for ``‖s‖²`` and its
    derivative together, one for the step's norm and model).
    """
    for name, x in (("g", g), ("eigvals", eigvals), ("eigvecs", eigvecs), ("diag", diag)):
        if x is not None:
            try:
                backend.get_namespace(x)
            except TypeError as e:  # torch/JAX/lists: say which argument
                raise TypeError(f"{name}: {e}") from None
    backend.check_float_array(g, "g", ndim=1)
    xp = backend.get_namespace(g, eigvals, eigvecs, diag)
    delta = _number("delta (the trust-region radius)", delta, low=0.0, strict=True)
    rtol = _number("rtol", rtol, low=0.0, strict=True)
    max_iter = _count("max_iter", max_iter)
    hard_tol = _number("hard_tol", hard_tol, low=0.0)
    if not hard_tol < 1:
        raise ValueError(f"hard_tol must be in [0, 1), got {hard_tol}")
    n = g.shape[0]
    if (diag is None) == (eigvals is None):
        raise ValueError("give exactly one of diag= or eigvals= (with eigvecs=)")
    g64 = g.astype(np.float64)
    named = [("g", g)]
    V = None
    if diag is not None:
        if eigvecs is not None:
            raise ValueError("eigvecs= goes with eigvals=, not with diag=")
        backend.check_float_array(diag, "diag", ndim=1)
        if diag.shape != (n,):
            raise ValueError(f"diag must have shape ({n},) like g, got {tuple(diag.shape)}")
        named.append(("diag", diag))
        lam = diag.astype(np.float64)
        gam = g64
        k = n
    else:
        if eigvecs is None:
            raise ValueError("eigvals= needs eigvecs=")
        backend.check_float_array(eigvals, "eigvals", ndim=1)
        backend.check_float_array(eigvecs, "eigvecs", ndim=2)
        k = eigvals.shape[0]
        if eigvecs.shape != (n, k):
            raise ValueError(f"eigvecs must have shape ({n}, {k}), got {tuple(eigvecs.shape)}")
        if k > n:
            raise ValueError(f"eigvals must have at most n = {n} entries (len(g)), got {k}")
        named += [("eigvals", eigvals), ("eigvecs", eigvecs)]
        lam = eigvals.astype(np.float64)
        V = eigvecs.astype(np.float64)
        gam = V.T @ g64
    extra = V is not None and k < n  # B = 0 on the complement: one more "eigenvalue" 0, gradient ‖g_perp‖
    if extra:
        g_perp = g64 - V @ gam
        r_perp = xp.linalg.norm(g_perp)
        lam = xp.concatenate((lam, xp.zeros(1)))
        gam = xp.concatenate((gam, r_perp.reshape(1)))
    if n == 0:
        z = xp.zeros_like(g)
        return L2Result(z, 0.0, 0.0, 0.0, True, False, 0, True)

    # one read: finiteness of every input, λ_min, max|λ|, ‖g‖
    flags = [xp.all(xp.isfinite(x)) for _, x in named]
    stats = backend.to_numpy(xp.stack([xp.asarray(f, dtype=np.float64) for f in flags]
                                      + [xp.min(lam), xp.max(xp.abs(lam)), xp.linalg.norm(gam)]))
    bad = [name for (name, _), ok in zip(named, stats[:len(named)]) if not ok]
    if bad:
        raise ValueError(f"{', '.join(bad)} must be finite (no NaN or Inf); got non-finite entries")
    lam_min, scale, gnorm = (float(v) for v in stats[len(named):])
    scale = max(scale, 1e-300)
    bottom = lam <= lam_min + 1e-12 * scale
    small = xp.abs(gam) <= hard_tol * gnorm
    zero = bottom & small
    if extra:
        zero[-1] = zero[-1] | small[-1]
    gam = xp.where(zero, 0.0, gam)
    nz = gam != 0
    lower = max(0.0, -lam_min)
    c = lam + lower  # shifted eigenvalues: exactly 0 on the bottom eigenspace when λ_min < 0

    def secular(x: float) -> tuple[float, float]:
        d = c + x
        with np.errstate(divide="ignore", invalid="ignore"):  # γ ≠ 0 at the pole: F = +inf, by design
            t = xp.where(nz, gam / xp.where(nz, d, 1.0), 0.0)
            sums = xp.stack((xp.sum(t * t), xp.sum(xp.where(nz, t * t / xp.where(nz, d, 1.0), 0.0))))
        v = backend.to_numpy(sums)  # one device-to-host read per evaluation
        return 0.5 * float(v[0]), -float(v[1])

    target = 0.5 * delta * delta
    if gnorm == 0.0 and lam_min >= 0:
        z = xp.zeros_like(g)
        return L2Result(z, 0.0, 0.0, 0.0, True, False, 0, True)
    r = solve_decreasing(secular, target, lower=0.0, lower_point=0.0, rtol=rtol, max_iter=max_iter)
    x = r.x
    sig = lower + x
    with np.errstate(divide="ignore", invalid="ignore"):
        st = xp.where(nz, -gam / xp.where(nz, c + x, 1.0), 0.0)
    hard = bool(r.at_lower and lam_min < 0)
    first = bottom & (xp.cumsum(bottom) == 1)  # the first bottom index (hard case direction)
    # one read: ‖s‖², gᵀs, sᵀBs and the entries at the first bottom index
    ss, m1, m2, s_i, g_i, l_i = (float(v) for v in backend.to_numpy(xp.stack((
        xp.sum(st * st), xp.sum(gam * st), xp.sum(lam * st * st),
        xp.sum(xp.where(first, st, 0.0)), xp.sum(xp.where(first, gam, 0.0)), xp.sum(xp.where(first, lam, 0.0))))))
    if hard:
        tau = math.sqrt(max(delta * delta - ss, 0.0))
        st = st + xp.where(first, tau, 0.0)
        s_new = s_i + tau
        ss += s_new * s_new - s_i * s_i
        m1 += g_i * tau
        m2 += l_i * (s_new * s_new - s_i * s_i)
    if V is None:
        s = st
    else:
        s = V @ st[:k]
        if extra:  # the complement part: s_perp = −g_perp/σ (0 when it was counted as zero)
            with np.errstate(divide="ignore", invalid="ignore"):
                coef = xp.where(nz[-1], -1.0 / xp.where(nz[-1], c[-1] + x, 1.0), 0.0)
            s = s + coef * g_perp
    interior = bool(r.at_lower and not hard and sig == 0.0)
    res = L2Result(s.astype(g.dtype), float(sig), math.sqrt(max(ss, 0.0)), m1 + 0.5 * m2, interior, hard,
                   r.n_evals, r.converged, r.status)
    if not res.converged:
        msg = (f"status {res.status.value!r} after {res.n_evals} secular evaluations: sigma = {res.sigma:.6g}, "
               f"‖s‖/Δ − 1 = {res.norm / delta - 1:.3g}")
        if strict:
            raise ConvergenceError(f"solve_l2_subproblem: {msg}", res)
        warn_unconverged("solve_l2_subproblem", msg, warn=warn)
    return res
