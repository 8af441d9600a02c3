"""Typed results of the iterative eigen-solvers and the stochastic estimators.

Every iterative routine in :mod:`curvlab.linalg` returns one of these
dataclasses instead of bare numbers: the values, their accuracy (residual
norms or standard errors), honest convergence flags, the work done (matvecs,
iterations) and optionally a history. An unconverged result is returned with
``converged`` false, never hidden; ``strict=True`` on a solver turns it into a
:class:`ConvergenceError`.

Every result carries a ``status`` from the one vocabulary :class:`Status` (a
``str`` enum: ``res.status == "converged"`` works) with ``status.message`` its
meaning in words, ``message`` the routine's specific text, ``all_converged`` (a
bool on every result type), and a short ``repr`` (at most 3 lines: values to 6
significant digits, error bars, status and work counts; never the raw samples,
history or Lanczos coefficients).

Arrays (``eigenvectors``, diagonal estimates) live on the operator's backend
(NumPy or CuPy); small per-value arrays (eigenvalues, residual norms, flags)
are host NumPy arrays.

Examples
--------
>>> import numpy as np
>>> r = TraceEstimate(estimate=3.0, std_error=0.1, n_matvecs=10, converged=True, method="hutchinson")
>>> r.interval(2.0)
(2.8, 3.2)
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Any, Callable, overload

import numpy as np

from ._probes import sample_se, t_factor

__all__ = [
    "Status",
    "ConvergenceError",
    "ConvergenceWarning",
    "warn_unconverged",
    "EIG_STATUS",
    "EigResult",
    "SpectralDensity",
    "TraceEstimate",
    "DiagonalEstimate",
    "StochasticEigResult",
]


class Status(str, enum.Enum):
    """Why an iterative routine stopped, or how far its answer can be trusted: one vocabulary for every result.

    A ``str`` enum (``Status.CONVERGED == "converged"``, ``str(s)`` is the
    value); each member knows its meaning in words (``status.message``) and
    whether the answer is usable as reported (``status.ok``: converged or
    exact). ``Status("max_iter")`` looks a member up by value.

    >>> Status.MAX_MATVECS == "max_matvecs", Status("exact").ok
    (True, True)
    >>> Status.UNRESOLVED.message
    'the error bar cannot be trusted (an error source could not be estimated): the value is unreliable'
    """

    message: str

    def __new__(cls, value: str, message: str) -> Status:
        obj = str.__new__(cls, value)
        obj._value_ = value
        obj.message = message
        return obj

    CONVERGED = "converged", "converged: the requested tolerance was met (or none was asked for) and the error bar covers every error source the routine knows of"
    EXACT = "exact", "computed exactly (e.g. n unit-vector products because the budget reached n): no estimation error"
    MAX_ITER = "max_iter", "the iteration limit was reached before the tolerance was met"
    MAX_MATVECS = "max_matvecs", "the matrix-vector product budget was exhausted before the tolerance was met"
    BREAKDOWN = "breakdown", "the iteration broke down (no further progress possible: a lost basis, no bracket, a zero product)"
    NONFINITE = "nonfinite", "the operator or the iteration produced NaN/Inf"
    STAGNATED = "stagnated", "the iteration stopped improving: the tolerance is below the precision the dtype can attain"
    UNRESOLVED = "unresolved", "the error bar cannot be trusted (an error source could not be estimated): the value is unreliable"

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @property
    def ok(self) -> bool:
        """True for :attr:`CONVERGED` and :attr:`EXACT`: the answer stands as reported."""
        return self in (Status.CONVERGED, Status.EXACT)

    @classmethod
    def of(cls, value: Any, who: str = "status") -> Status:
        """``value`` (a :class:`Status` or its string) as a :class:`Status`; ``ValueError`` naming ``who`` otherwise."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)  # type: ignore[call-arg]  # mypy types the call by the custom __new__; this is Enum's by-value lookup
        except ValueError:
            raise ValueError(f"{who} must be one of {tuple(s.value for s in cls)}, got {value!r}") from None


class StatusField:
    """A dataclass field that is set from a :class:`Status` or its string and reads as a :class:`Status`.

    ``status: StatusField = StatusField(default)`` in a result dataclass: the
    constructor (and assignment) accept ``Status | str``, so ``status="max_iter"``
    type-checks, while ``res.status`` is typed :class:`Status` (``.value``,
    ``.message``, ``.ok``). The value is stored under the field's own name in
    the instance ``__dict__`` (``vars``/pickles are those of a plain field); the
    dataclass's ``__post_init__`` converts it with :meth:`Status.of` (or derives
    it from an empty default), so a read after construction is a :class:`Status`.
    """

    def __init__(self, default: Status | str = "") -> None:
        self.default = default
        self.name = "status"

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> Status | str: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> Status: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> Status | str:
        if obj is None:  # the class attribute: the dataclass default
            return self.default
        value: Status = obj.__dict__[self.name]
        return value

    def __set__(self, obj: object, value: Status | str) -> None:
        obj.__dict__[self.name] = value


def _g(x: Any) -> str:
    """A number to 6 significant digits."""
    try:
        return f"{float(x):.6g}"
    except (TypeError, ValueError):
        return repr(x)


def _values(a: Any, shown: int = 6) -> str:
    """The first ``shown`` entries of an array to 6 significant digits, ``...`` beyond (one host read of ``shown`` values)."""
    if a is None:
        return "None"
    from ..backend import to_numpy

    size = int(getattr(a, "size", 1))
    flat = a.reshape(-1) if hasattr(a, "reshape") else np.atleast_1d(a)
    head = np.asarray(to_numpy(flat[:shown]))
    body = ", ".join(_g(x) if head.dtype.kind not in "bi" else str(x) for x in head.tolist())
    return f"[{body}{', ...' if size > shown else ''}]"


def _repr(name: str, *lines: list[str], message: str = "", limit: int = 100) -> str:
    """``name(`` + the non-empty item lines joined ``,\\n  `` + the message, clipped to ``limit`` characters + ``)``: at most 3 lines."""
    rows = [", ".join(items) for items in lines if items]
    if message:
        m = message if len(message) <= limit else message[: limit - 3] + "..."
        rows.append(f"message={m!r}")
    rows = rows[:2] + ([", ".join(rows[2:])] if len(rows) > 2 else [])
    return f"{name}(" + ",\n  ".join(rows) + ")"


class ConvergenceError(RuntimeError):
    """Raised by a solver called with ``strict=True`` when a value did not converge.

    The unconverged result is attached as ``.result``.
    """

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class ConvergenceWarning(RuntimeWarning):
    """Issued when an iterative routine returns a result that did not converge.

    Silence it with ``warnings.simplefilter("ignore", ConvergenceWarning)`` (or the
    routine's ``warn=False``); turn it into an error with the routine's ``strict=True``.
    """


def warn_unconverged(who: str, message: str, *, warn: bool = True, stacklevel: int = 3) -> None:
    """Issue one :class:`ConvergenceWarning` ``"{who}: {message}"`` unless ``warn`` is false."""
    if warn:
        import warnings

        warnings.warn(f"{who}: {message}", ConvergenceWarning, stacklevel=stacklevel)


@dataclass
class EigResult:
    """Eigenpairs of a symmetric operator from an iterative solver.

    Attributes
    ----------
    eigenvalues : numpy.ndarray ``(k,)`` float64
        Ritz values, in the order the solver was asked for (descending for
        ``which="LA"``, ascending for ``"SA"``; ``"BE"``: ascending).
    eigenvectors : array ``(n, k)`` or None
        Ritz vectors (operator backend and dtype), orthonormal columns.
    residual_norms : numpy.ndarray ``(k,)`` float64
        ``‖A v - λ v‖₂`` per pair: the true residual of the returned vector
        (computed, in float64), not a recurrence's estimate.
    converged : numpy.ndarray ``(k,)`` bool
        ``residual_norms[i] <= tol * scale_i`` (see the solver's docstring).
    n_matvecs, n_iterations : int
        Operator applications (a block of ``b`` columns counts ``b``) and
        outer iterations (restart cycles or block steps).
    history : list of dict or None
        One entry per check: ``{"n_matvecs", "eigenvalues", "residual_norms"}``.
    method, message : str
        Which solver, and why it stopped (in words).
    tol : float
        The relative tolerance used.
    status : Status
        Why it stopped (:class:`Status`, one of :data:`EIG_STATUS`): "converged"
        (every pair met ``tol``, checked on true residuals), "max_iter",
        "max_matvecs", "breakdown" (no further progress possible, e.g. a lost
        basis), "nonfinite" (NaN/Inf from the operator or the iteration),
        "stagnated" (the residuals stopped falling, e.g. ``tol`` below the
        precision the dtype can attain). A string is converted; when omitted it
        is "converged" if every pair converged, else "max_iter".
    """

    eigenvalues: np.ndarray
    eigenvectors: Any
    residual_norms: np.ndarray
    converged: np.ndarray
    n_matvecs: int
    n_iterations: int
    history: list[dict[str, Any]] | None = None
    method: str = ""
    message: str = ""
    tol: float = 0.0
    status: StatusField = StatusField("")

    def __post_init__(self) -> None:
        if self.status in ("", None):
            self.status = Status.CONVERGED if self.all_converged else Status.MAX_ITER
        self.status = Status.of(self.status, "EigResult.status")

    @property
    def all_converged(self) -> bool:
        """True when every requested value converged."""
        return bool(np.all(self.converged)) and len(self.converged) > 0

    @property
    def n_converged(self) -> int:
        return int(np.count_nonzero(self.converged))

    def __repr__(self) -> str:
        return _repr(
            "EigResult",
            [f"eigenvalues={_values(self.eigenvalues)}", f"residual_norms={_values(self.residual_norms)}"],
            [f"status={self.status.value!r}", f"converged={self.n_converged}/{len(self.converged)}",
             f"n_matvecs={self.n_matvecs}", f"n_iterations={self.n_iterations}", f"method={self.method!r}"],
            message="" if self.message == self.status.value else self.message,
        )


#: The stop reasons an :class:`EigResult` may carry (the values of those :class:`Status` members).
EIG_STATUS = tuple(s.value for s in (Status.CONVERGED, Status.MAX_ITER, Status.MAX_MATVECS, Status.BREAKDOWN,
                                     Status.NONFINITE, Status.STAGNATED))


def eig_result(who: str, strict: bool, warn: bool = True, **fields: Any) -> EigResult:
    """An :class:`EigResult` from ``fields``, flagged when not every pair converged.

    ``status`` must be one of :data:`EIG_STATUS`, and "converged" only when every
    pair converged. Unless every pair converged: with ``strict``, raise
    :class:`ConvergenceError` (``"{who}: c/k pairs converged (status: message)"``);
    otherwise issue a :class:`ConvergenceWarning` with that text (``warn=False``
    silences it).
    """
    if fields.get("status") not in EIG_STATUS:
        raise ValueError(f"{who}: status must be one of {EIG_STATUS}, got {fields.get('status')!r}")
    res = EigResult(**fields)
    if res.status == Status.CONVERGED and not res.all_converged:
        raise ValueError(f"{who}: status 'converged' with {res.n_converged}/{len(res.converged)} pairs converged")
    if not res.all_converged:
        text = f"{res.n_converged}/{len(res.converged)} pairs converged ({res.status.value}: {res.message})"
        if strict:
            raise ConvergenceError(f"{who}: {text}", res)
        warn_unconverged(who, text, warn=warn, stacklevel=4)
    return res


def _settle_status(res: Any, who: str, *, unresolved: bool) -> Status:
    """``res.status`` as a :class:`Status`, derived when empty, checked against ``res.converged``.

    Derived: "exact" when ``res.exact``, "converged" when ``res.converged``,
    else "unresolved" (``unresolved``: an infinite error bar) or "max_matvecs".
    """
    st = res.status
    if st in ("", None):
        if getattr(res, "exact", False):
            st = Status.EXACT
        elif res.converged:
            st = Status.CONVERGED
        else:
            st = Status.UNRESOLVED if unresolved else Status.MAX_MATVECS
    st = Status.of(st, f"{who}.status")
    if st.ok != bool(res.converged):
        raise ValueError(f"{who}: status {st.value!r} disagrees with converged={bool(res.converged)}")
    return st


@dataclass
class SpectralDensity:
    """Stochastic Lanczos quadrature of a symmetric ``n x n`` operator.

    Attributes
    ----------
    nodes, weights : numpy.ndarray ``(n_probes, m)`` float64
        Gauss quadrature nodes (Ritz values) and weights (squared first
        components of the Ritz vectors, summing to 1 per probe). Probes that
        stopped early (an invariant Krylov space) are padded with weight 0.
    probe_norms_sq : numpy.ndarray ``(n_probes,)``
        ``‖z‖²`` of each probe (``n`` for Rademacher probes).
    n : int
        Dimension of the operator.
    n_matvecs : int
    lanczos_steps : int
    probe : str
    alpha, beta : numpy.ndarray ``(n_probes, m)`` float64 or None
        Each probe's Lanczos coefficients (zero-padded; ``beta[p, k-1]`` is
        the residual norm after ``k = steps[p]`` steps): the shorter Gauss
        rules that estimate the quadrature error come from them.
    steps : numpy.ndarray ``(n_probes,)`` int or None
    breakdown : numpy.ndarray ``(n_probes,)`` bool or None
        True when a probe's Krylov space closed (its quadrature is exact).
    dtype : the operator's dtype (sets the rounding floor of the error estimate)
    status : Status
        "converged" once every probe ran its ``m`` steps (or closed early: an
        exact quadrature); the accuracy for a given ``f`` is judged by
        :meth:`trace`, whose :class:`TraceEstimate` may be "unresolved".

    Methods
    -------
    density(grid, sigma) : Gaussian-smoothed density on a grid.
    trace(f) : :class:`TraceEstimate` of ``tr f(A)`` with a standard error.
    """

    nodes: np.ndarray
    weights: np.ndarray
    probe_norms_sq: np.ndarray
    n: int
    n_matvecs: int
    lanczos_steps: int
    probe: str = "rademacher"
    alpha: np.ndarray | None = None
    beta: np.ndarray | None = None
    steps: np.ndarray | None = None
    breakdown: np.ndarray | None = None
    dtype: Any = np.float64
    status: StatusField = StatusField(Status.CONVERGED)

    def __post_init__(self) -> None:
        self.status = Status.of(self.status, "SpectralDensity.status")

    @property
    def n_probes(self) -> int:
        return int(self.nodes.shape[0])

    @property
    def all_converged(self) -> bool:
        """True when :attr:`status` is "converged" or "exact"."""
        return self.status.ok

    def __repr__(self) -> str:
        live = self.nodes[self.weights > 0] if self.nodes.size else self.nodes
        span = f"[{_g(live.min())}, {_g(live.max())}]" if live.size else "[]"
        n_closed = int(np.count_nonzero(self.breakdown)) if self.breakdown is not None else 0
        return _repr(
            "SpectralDensity",
            [f"n={self.n}", f"n_probes={self.n_probes}", f"lanczos_steps={self.lanczos_steps}", f"nodes in {span}",
             f"closed_early={n_closed}/{self.n_probes}"],
            [f"status={self.status.value!r}", f"n_matvecs={self.n_matvecs}", f"probe={self.probe!r}"],
        )

    def density(self, grid: Any, sigma: float) -> np.ndarray:
        """Density ``φ(t) = (1/P) Σ_p Σ_j w_pj N(t; θ_pj, σ²)`` on ``grid`` (host float64).

        Integrates to 1 over the real line: an estimate of the smoothed
        spectral density ``(1/n) Σ_i N(t; λ_i, σ²)``.
        """
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        t = np.asarray(grid, dtype=np.float64).reshape(-1)
        th = self.nodes.reshape(-1)
        w = self.weights.reshape(-1) / self.n_probes
        keep = w > 0
        th, w = th[keep], w[keep]
        z = (t[:, None] - th[None, :]) / sigma
        return (np.exp(-0.5 * z * z) @ w) / (sigma * np.sqrt(2.0 * np.pi))

    def probe_values(self, f: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Per-probe quadratures ``‖z‖² Σ_j w_j f(θ_j)`` ``(n_probes,)``: unbiased for ``tr f(A)``."""
        vals = np.zeros_like(self.nodes)
        mask = self.weights > 0
        vals[mask] = np.asarray(f(self.nodes[mask]), dtype=np.float64)
        return self.probe_norms_sq * np.sum(self.weights * vals, axis=1)

    def gauss(self, f: Callable[[np.ndarray], np.ndarray], k: np.ndarray) -> np.ndarray:
        """Per-probe ``k[p]``-step Gauss quadratures ``‖z‖² e₁ᵀ f(T_k) e₁`` ``(n_probes,)`` (host float64)."""
        from scipy.linalg import eigh_tridiagonal

        alpha, beta = self.alpha, self.beta
        if alpha is None or beta is None:
            raise ValueError("this SpectralDensity has no Lanczos coefficients (alpha/beta); build it with curvlab.linalg.slq")
        out = np.empty(self.n_probes)
        for p in range(self.n_probes):
            kp = int(k[p])
            a = alpha[p, :kp]
            if kp == 1:
                th, w = a.copy(), np.ones(1)
            else:
                th, S = eigh_tridiagonal(a, beta[p, : kp - 1], lapack_driver="stev")
                w = S[0] ** 2
            out[p] = np.sum(w * np.asarray(f(th), dtype=np.float64))
        return self.probe_norms_sq * out

    def quadrature_tails(self, f: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-probe quadrature-error estimates ``(tail, error, resolved)`` for ``tr f(A)``.

        From the Gauss rules of ``k``, ``k - d`` and ``k - 2d`` steps of the same
        recurrence (``k`` the probe's steps, ``d = max(1, k // 5)``): with
        ``δ₁ = I_k - I_{k-d}`` and ``δ₀ = I_{k-d} - I_{k-2d}`` of one sign and
        ``ρ = |δ₁/δ₀| < 1``, the geometric tail ``δ₁ ρ/(1-ρ)`` estimates the
        remaining error ``I - I_k`` (an over-estimate when the convergence is
        superlinear, as Lanczos quadrature for smooth ``f`` is). A closed Krylov
        space is exact (tail 0); differences below the rounding floor
        (``10³ eps‖z‖² Σ w|f(θ)|``) count as converged with error ``|δ₁|``.
        A probe is unresolved (``resolved`` False) when fewer than 3 steps
        were taken, or the differences do not shrink geometrically.
        """
        if self.alpha is None:
            raise ValueError("this SpectralDensity has no Lanczos coefficients (alpha/beta); build it with curvlab.linalg.slq")
        P = self.n_probes
        k = np.asarray(self.steps, dtype=int)
        brk = np.asarray(self.breakdown, dtype=bool)
        d = np.maximum(1, k // 5)
        tail, err = np.zeros(P), np.zeros(P)
        ok = brk | (k >= 2 * d + 1)
        kk = np.where(ok & ~brk, k, 1)
        I2 = self.gauss(f, kk)
        I1 = self.gauss(f, np.where(ok & ~brk, k - d, 1))
        I0 = self.gauss(f, np.where(ok & ~brk, k - 2 * d, 1))
        mask = self.weights > 0
        absf = np.zeros_like(self.nodes)
        absf[mask] = np.abs(np.asarray(f(self.nodes[mask]), dtype=np.float64))
        floor = 1e3 * np.finfo(np.dtype(self.dtype)).eps * self.probe_norms_sq * np.sum(self.weights * absf, axis=1)
        resolved = np.ones(P, dtype=bool)
        for p in range(P):
            if brk[p]:
                continue
            if not ok[p]:
                resolved[p] = False
                err[p] = np.inf
                continue
            d1, d0 = I2[p] - I1[p], I1[p] - I0[p]
            if not (np.isfinite(d1) and np.isfinite(d0)):
                resolved[p] = False
                err[p] = np.inf
            elif abs(d1) <= floor[p]:
                err[p] = abs(d1)
            elif d1 * d0 > 0 and abs(d1) < abs(d0):
                r = abs(d1) / abs(d0)
                tail[p] = d1 * r / (1.0 - r)
                err[p] = abs(tail[p])
            else:
                resolved[p] = False
                err[p] = np.inf
        return tail, err, resolved

    def trace(
        self, f: Callable[[np.ndarray], np.ndarray], name: str = "slq", *, warn: bool = True, strict: bool = False
    ) -> TraceEstimate:
        """Estimate ``tr f(A)`` with an error bar that covers the probe spread and the quadrature error.

        Per probe, the ``m``-step Gauss value plus its extrapolated tail (see
        :meth:`quadrature_tails`); the estimate is their mean,
        ``probe_std_error`` their sample standard error times
        ``t_{P-1,0.975}/z_{0.975}``, ``quadrature_error`` the mean per-probe
        tail error, and ``std_error = sqrt(probe_std_error² + quadrature_error²)``.
        When a probe's quadrature is unresolved the result has
        ``converged=False``, an infinite ``std_error``, a message and a
        :class:`ConvergenceWarning` (``warn=False`` silences it, ``strict=True``
        raises :class:`ConvergenceError`). Without Lanczos coefficients (a
        hand-built density) only the probe spread is reported.
        """
        s = self.probe_values(f)
        if self.alpha is None:
            return TraceEstimate(
                estimate=float(np.mean(s)), std_error=sample_se(s), n_matvecs=self.n_matvecs, converged=True, method=name, samples=s
            )
        tail, err, resolved = self.quadrature_tails(f)
        vals = s + tail
        pse = sample_se(vals) * t_factor(self.n_probes - 1)
        q = float(np.mean(err))
        conv = bool(np.all(resolved))
        msg = "" if conv else (
            f"quadrature unresolved in {int(np.count_nonzero(~resolved))} of {self.n_probes} probes: "
            f"m = {self.lanczos_steps} Lanczos steps are too few for this f and spectrum (increase m)"
        )
        res = TraceEstimate(
            estimate=float(np.mean(vals)),
            std_error=float(np.hypot(pse, q)) if conv else float("inf"),
            n_matvecs=self.n_matvecs,
            converged=conv,
            method=name,
            samples=vals,
            message=msg,
            probe_std_error=pse,
            quadrature_error=q if conv else float("inf"),
            status=Status.CONVERGED if conv else Status.UNRESOLVED,
        )
        if not conv:
            if strict:
                raise ConvergenceError(f"{name}: {msg}", res)
            warn_unconverged(name, msg, warn=warn)
        return res


@dataclass
class TraceEstimate:
    """A stochastic estimate of a trace.

    Attributes
    ----------
    estimate, std_error : float
        The estimate and its error bar. ``std_error`` covers every error
        source the routine knows of: the probe spread (Student-t calibrated,
        see each method) and, for SLQ, the quadrature error, combined as
        ``sqrt(probe_std_error² + quadrature_error²)``; ``0.0`` for an exact
        computation (``exact``). ``estimate ± 2 std_error`` is the interval the
        coverage tests check.
    n_matvecs : int
    converged : bool
        True when the error bar can be trusted and the requested target
        relative error (if any) was met. False (with a ``message`` and a
        :class:`ConvergenceWarning`) when the budget ran out before the target,
        or the quadrature error could not be resolved.
    method : str
    samples : numpy.ndarray or None
        The per-probe (or per-exchange) values the probe error came from.
    history : list of dict or None
        ``{"n_matvecs", "estimate", "std_error"}`` per adaptive round.
    message : str
    probe_std_error : float or None
        The probe-variance part of ``std_error`` (None: same as ``std_error``).
    quadrature_error : float
        The quadrature (Lanczos truncation) part, SLQ only; 0 otherwise.
    exact : bool
        True when the trace was computed exactly (``n`` unit-vector products,
        because the budget reached ``n``); then ``std_error`` is 0.
    status : Status
        "converged", "exact", "max_matvecs" (the budget ran out before the
        target) or "unresolved" (the quadrature error could not be estimated;
        infinite ``std_error``). Derived from ``exact``/``converged``/
        ``std_error`` when omitted; it must agree with ``converged``.
    """

    estimate: float
    std_error: float
    n_matvecs: int
    converged: bool
    method: str = ""
    samples: np.ndarray | None = None
    history: list[dict[str, Any]] | None = None
    message: str = ""
    probe_std_error: float | None = None
    quadrature_error: float = 0.0
    exact: bool = False
    status: StatusField = StatusField("")

    def __post_init__(self) -> None:
        self.status = _settle_status(self, "TraceEstimate", unresolved=not math.isfinite(float(self.std_error)))

    @property
    def all_converged(self) -> bool:
        """Same as ``converged`` (one scalar value)."""
        return bool(self.converged)

    @property
    def rel_std_error(self) -> float:
        return abs(self.std_error) / max(abs(self.estimate), 1e-300)

    def __repr__(self) -> str:
        parts = []
        if self.probe_std_error is not None:
            parts.append(f"probe_std_error={_g(self.probe_std_error)}")
        if self.quadrature_error:
            parts.append(f"quadrature_error={_g(self.quadrature_error)}")
        return _repr(
            "TraceEstimate",
            [f"estimate={_g(self.estimate)}", f"std_error={_g(self.std_error)}", *parts],
            [f"status={self.status.value!r}", f"n_matvecs={self.n_matvecs}", f"method={self.method!r}"],
            message=self.message,
        )

    def interval(self, k: float = 2.0) -> tuple[float, float]:
        """``(estimate - k se, estimate + k se)``."""
        return (self.estimate - k * self.std_error, self.estimate + k * self.std_error)


@dataclass
class DiagonalEstimate:
    """A stochastic estimate of ``diag(A)``.

    Attributes
    ----------
    estimate, std_error : array ``(n,)`` (operator backend, float64 accumulation cast to the operator dtype)
    n_matvecs : int
    converged : bool
        True when ``‖std_error‖₂ <= target * ‖estimate‖₂`` (or no target given);
        False comes with a ``message`` and a :class:`ConvergenceWarning`.
    method : str
    history : list of dict or None
    message : str
    exact : bool
        True when the diagonal was computed exactly (``n`` unit-vector
        products, because the budget reached ``n``); then ``std_error`` is 0.
    status : Status
        "converged", "exact" or "max_matvecs" (the budget ran out before the
        target); derived from ``exact``/``converged`` when omitted.
    """

    estimate: Any
    std_error: Any
    n_matvecs: int
    converged: bool
    method: str = ""
    history: list[dict[str, Any]] | None = None
    message: str = ""
    exact: bool = False
    status: StatusField = StatusField("")

    def __post_init__(self) -> None:
        self.status = _settle_status(self, "DiagonalEstimate", unresolved=False)

    @property
    def all_converged(self) -> bool:
        """Same as ``converged`` (one flag for the whole diagonal)."""
        return bool(self.converged)

    def __repr__(self) -> str:
        n = int(getattr(self.estimate, "size", 0))
        return _repr(
            "DiagonalEstimate",
            [f"n={n}", f"estimate={_values(self.estimate)}"],
            [f"std_error={_values(self.std_error)}"],
            [f"status={self.status.value!r}", f"n_matvecs={self.n_matvecs}", f"method={self.method!r}"],
            message=self.message,
        )

    @property
    def rel_std_error(self) -> float:
        from ..backend import get_namespace

        xp = get_namespace(self.estimate)
        return float(xp.linalg.norm(self.std_error) / max(float(xp.linalg.norm(self.estimate)), 1e-300))



@dataclass
class StochasticEigResult:
    """Top eigenpair of an expected operator ``Ā = E[A_t]`` from stochastic (mini-batch) products.

    Attributes
    ----------
    eigenvalue : float
        The Rayleigh quotient ``θ = vᵀĀv`` of the returned vector ``v``,
        estimated as the mean of ``vᵀA_j v`` over ``n_eval`` fresh batches not
        used to fit ``v`` (one exact product for a deterministic operator).
        ``θ <= λ_max``: it is biased low by ``λ_max − θ``, at most ``bias_bound``.
    std_error : float
        The error bar: ``sampling_error + bias_bound / 2`` (plus a rounding
        floor), so that ``eigenvalue ± 2 std_error`` contains
        ``[θ - 2 sampling_error, θ + bias_bound]``; infinite when unresolved.
    sampling_error : float
        Student-t calibrated standard error of the mean of ``vᵀA_j v`` (i.i.d.
        given ``v``); 0 for a deterministic operator.
    bias_bound : float
        ``√2 ‖Āv − θv‖`` with the residual norm taken at its upper 2-standard-
        error confidence limit: ``λ_max − θ <= ‖Āv − θv‖ / |cos∠(v, u_max)|``
        for any unit ``v``, so this holds when ``v`` carries at least half its
        weight on the top eigenvector (``cos² >= ½``, what the burn-in is for).
        Deterministic operators: at least the geometric tail of the power
        steps' Rayleigh quotients too.
    residual_norm : float
        Estimate of ``‖Āv − θv‖`` (unbiased for its square, from products with
        independent batches; exact for a deterministic operator).
    eigenvector : array ``(n,)`` (operator backend), unit norm
    n_matvecs, n_batches, n_steps, n_eval : int
        Products, batches drawn, steps taken (evaluation included), and
        evaluation products.
    converged : bool
        The run completed with a trustworthy error bar and, when a ``tol`` was
        given, ``std_error <= tol * |eigenvalue|``.
    status : Status
        "converged", "max_iter" (``tol`` not met in ``n_steps``),
        "nonfinite", "breakdown" (a zero product, or a Rayleigh quotient that
        is not positive: the top eigenvalue is not dominant) or "unresolved"
        (too few evaluation products for an error bar, or a deterministic
        run whose Rayleigh quotients still rise faster than geometrically).
    history : list of dict or None  ``{"step", "rayleigh", "eigenvalue"}``
    """

    eigenvalue: float
    std_error: float
    eigenvector: Any
    n_matvecs: int
    n_batches: int
    n_steps: int
    converged: bool
    history: list[dict[str, Any]] | None = None
    method: str = "stochastic power (Oja) with averaging"
    message: str = ""
    status: StatusField = StatusField("")
    sampling_error: float = float("nan")
    bias_bound: float = float("nan")
    residual_norm: float = float("nan")
    n_eval: int = 0

    def __post_init__(self) -> None:
        if self.status in ("", None):
            self.status = Status.CONVERGED if self.converged else Status.MAX_ITER
        self.status = Status.of(self.status, "StochasticEigResult.status")
        if self.status.ok != bool(self.converged):
            raise ValueError(f"StochasticEigResult: status {self.status.value!r} disagrees with converged={bool(self.converged)}")

    @property
    def all_converged(self) -> bool:
        """Same as ``converged`` (one eigenpair)."""
        return bool(self.converged)

    def __repr__(self) -> str:
        return _repr(
            "StochasticEigResult",
            [f"eigenvalue={_g(self.eigenvalue)}", f"std_error={_g(self.std_error)}",
             f"sampling_error={_g(self.sampling_error)}", f"bias_bound={_g(self.bias_bound)}",
             f"residual_norm={_g(self.residual_norm)}"],
            [f"status={self.status.value!r}", f"n_steps={self.n_steps}", f"n_eval={self.n_eval}",
             f"n_batches={self.n_batches}", f"n_matvecs={self.n_matvecs}"],
            message="" if self.message == "completed" else self.message,
        )
