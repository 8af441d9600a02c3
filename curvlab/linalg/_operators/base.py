"""The :class:`LinearOperator` base class and its algebra.

``A + B`` (:class:`SumOperator`), ``c * A`` / ``-A`` / ``A / c`` (:class:`ScaledOperator`),
``A.shift(lam)`` (:class:`ShiftedOperator`) and ``A @ B`` (:class:`ProductOperator`), with the
helpers that name derived operators and propagate their tags. Re-exported by
:mod:`curvlab.linalg.operators`, whose docstring states the conventions.
"""

from __future__ import annotations

import types
from typing import Any, Callable

import numpy as np

from ... import backend
from .checks import _check_shape, _finite_scalar


class LinearOperator:
    """A linear map ``R^n -> R^m`` on NumPy or CuPy arrays.

    Subclasses implement ``_matvec(v)`` for a 1-D ``v`` of shape ``(n,)`` and
    may override ``_matmat(V)`` for a block ``V`` of shape ``(n, k)`` (the
    default loops over columns). Public :meth:`matvec`/:meth:`matmat` check
    shapes and dtypes and count work.

    Parameters
    ----------
    shape : (m, n)
    dtype : float32 or float64
    symmetric, psd : bool
        Declared tags (the base class does not verify them; the concrete
        operators do, see the module docstring and :func:`symmetry_defect`).
    xp : module, optional
        ``numpy`` (default) or ``cupy``: the backend of the vectors.
    name : str, optional
        What the operator is, e.g. ``"Hessian of MLP[4-5-3, tanh] on 8 samples, P=43"``;
        it leads the ``repr`` (also readable as ``description``).

    Algebra (SciPy's reach): ``A @ B`` (:class:`ProductOperator`), ``A @ x`` /
    ``A @ X`` (= :meth:`matvec` / :meth:`matmat`), ``A.T``/``A.H``/:meth:`adjoint`
    (``A`` itself when symmetric), ``A + B``, ``A - B``, ``-A``, ``c * A``, ``A * c``,
    ``A / c``, ``sum([A, B])``, :meth:`shift`. Tags propagate conservatively.
    """

    # Optional instance attributes, declared for the type checker only (no class default:
    # code tests them with ``getattr``/``hasattr``): the operator this one is the transpose
    # of (set by :meth:`adjoint`), and the stochastic tag (a mini-batch operator and what is
    # built from one; the deterministic solvers refuse it).
    _transpose_of: LinearOperator
    stochastic: bool

    def __init__(
        self,
        shape: tuple[int, int],
        dtype: Any,
        *,
        symmetric: bool = False,
        psd: bool = False,
        xp: types.ModuleType | None = None,
        name: str | None = None,
    ) -> None:
        shape = _check_shape(shape)
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if dt not in backend.FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dt}")
        if symmetric and shape[0] != shape[1]:
            raise ValueError(f"shape must be square for an operator declared symmetric, got shape {shape}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = dt
        self.symmetric = bool(symmetric)
        self.psd = bool(psd)
        self.xp = np if xp is None else xp
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {type(name).__name__}")
        self.name = name
        self.n_matvecs = 0
        self.n_calls = 0

    @property
    def description(self) -> str:
        """What the operator is: its ``name``, else its class name."""
        return self.name if self.name else type(self).__name__

    @description.setter
    def description(self, text: str) -> None:
        self.name = str(text)

    # -- work counters -------------------------------------------------------
    def reset_counter(self) -> None:
        """Set ``n_matvecs`` and ``n_calls`` to zero."""
        self.n_matvecs = 0
        self.n_calls = 0

    # -- application ---------------------------------------------------------
    def _check_input(self, x: Any, ndim: int, name: str) -> Any:
        hint = backend.foreign_array_hint(x)
        if hint is not None:
            raise TypeError(f"{name} must be a {self.xp.__name__} array for this operator, got {hint}")
        if backend.get_namespace(x) is not self.xp and not isinstance(x, (list, tuple)):
            raise TypeError(
                f"{name} is a {type(x).__module__}.{type(x).__name__} but the operator works on "
                f"{self.xp.__name__} arrays"
            )
        x = self.xp.asarray(x)
        if x.dtype.kind not in "f":
            raise TypeError(f"{name} must be a real float32/float64 array, got dtype {x.dtype}")
        if x.ndim != ndim or x.shape[0] != self.shape[1]:
            want = f"({self.shape[1]},)" if ndim == 1 else f"({self.shape[1]}, k)"
            raise ValueError(
                f"{name} has shape {tuple(x.shape)}, expected {want} for an operator of shape {self.shape}"
            )
        if x.dtype != self.dtype:
            x = x.astype(self.dtype)
        return x

    def matvec(self, v: Any) -> Any:
        """Return ``A v`` for ``v`` of shape ``(n,)``; result shape ``(m,)``."""
        v = self._check_input(v, 1, "v")
        self.n_matvecs += 1
        self.n_calls += 1
        return self._matvec(v)

    def matmat(self, V: Any) -> Any:
        """Return ``A V`` for a block ``V`` of shape ``(n, k)`` in one call."""
        V = self._check_input(V, 2, "V")
        self.n_matvecs += V.shape[1]
        self.n_calls += 1
        return self._matmat(V)

    def _matvec(self, v: Any) -> Any:
        return self._matmat(v[:, None])[:, 0]

    def _matmat(self, V: Any) -> Any:
        if type(self)._matvec is LinearOperator._matvec:
            raise NotImplementedError(f"{type(self).__name__} implements neither _matvec nor _matmat")
        out = self.xp.empty((self.shape[0], V.shape[1]), dtype=self.dtype)
        for j in range(V.shape[1]):
            out[:, j] = self._matvec(V[:, j])
        return out

    def __matmul__(self, x: Any) -> Any:
        if isinstance(x, LinearOperator):
            return ProductOperator(self, x)
        ndim = getattr(x, "ndim", None)
        if ndim is None:
            if np.isscalar(x) or not isinstance(x, (list, tuple)):
                raise TypeError(
                    "the right operand of A @ x must be a LinearOperator, a (n,) vector or a (n, k) block, "
                    f"got {type(x).__name__} (use A * c for a scalar)"
                )
            ndim = np.ndim(x)
        if ndim == 1:
            return self.matvec(x)
        if ndim == 2:
            return self.matmat(x)
        raise ValueError(f"the right operand of A @ x must be 1-D (n,) or 2-D (n, k), got ndim {ndim}")

    def __call__(self, x: Any) -> Any:
        return self @ x

    # -- algebra -------------------------------------------------------------
    def __add__(self, other: Any) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return _scalar_add(self, other)
        return SumOperator(self, other)

    def __radd__(self, other: Any) -> LinearOperator:
        # ``sum([A, B])`` starts from 0; ``0 + A`` is ``A``
        if isinstance(other, LinearOperator):
            return SumOperator(other, self)
        return _scalar_add(self, other)

    def __sub__(self, other: Any) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return _scalar_add(self, other)
        if other.shape != self.shape:
            raise ValueError(
                f"A - B: the right operand has shape {other.shape}, expected {self.shape} (the left operand's)"
            )
        return SumOperator(self, ScaledOperator(other, -1.0))

    def __truediv__(self, c: Any) -> LinearOperator:
        if isinstance(c, LinearOperator) or not np.isscalar(c):
            return NotImplemented
        c = _finite_scalar(c, "c")
        if c == 0:
            raise ValueError("A / c needs a nonzero scalar c, got c = 0.0")
        return ScaledOperator(self, 1.0 / c)

    # -- transpose -----------------------------------------------------------
    def adjoint(self) -> LinearOperator:
        """``Aᵀ`` (real operators: the adjoint is the transpose).

        A symmetric operator is its own adjoint; :class:`DenseOperator`, sums,
        products, scalings, shifts and block-diagonal operators transpose their
        parts; a :class:`CallableOperator` needs ``rmatvec=``. ``TypeError`` otherwise.
        """
        if self.symmetric:
            return self
        AT = self._adjoint()
        AT._transpose_of = self  # lets ``A.T @ A`` and ``A @ A.T`` know they are symmetric PSD
        return AT

    def _adjoint(self) -> LinearOperator:
        raise TypeError(
            f"{self.description} ({type(self).__name__}) has no transpose: it is not declared symmetric and "
            "knows no rmatvec; build it as CallableOperator(matvec, shape, rmatvec=...) or declare it symmetric"
        )

    def transpose(self) -> LinearOperator:
        """Same as :meth:`adjoint` (real operators)."""
        return self.adjoint()

    @property
    def T(self) -> LinearOperator:
        """``Aᵀ``, see :meth:`adjoint`."""
        return self.adjoint()

    @property
    def H(self) -> LinearOperator:
        """``Aᴴ = Aᵀ`` (real operators), see :meth:`adjoint`."""
        return self.adjoint()

    def __mul__(self, alpha: Any) -> LinearOperator:
        if not np.isscalar(alpha) or isinstance(alpha, (bool, complex, np.complexfloating)):
            return NotImplemented
        return ScaledOperator(self, float(alpha))

    __rmul__ = __mul__

    def __neg__(self) -> LinearOperator:
        return ScaledOperator(self, -1.0)

    def shift(self, lam: float) -> LinearOperator:
        """Return ``A + lam * I`` (square operators only)."""
        return ShiftedOperator(self, lam)

    # -- conversions ---------------------------------------------------------
    def to_dense(self) -> Any:
        """Materialise the ``(m, n)`` matrix by one ``matmat`` on the identity (small sizes)."""
        return self.matmat(self.xp.eye(self.shape[1], dtype=self.dtype))

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` view (NumPy vectors).

        For a CuPy operator each product copies host <-> device. ``rmatvec``
        is available for symmetric operators (``Aᵀ = A``).
        """
        from scipy.sparse.linalg import LinearOperator as ScipyLO

        def mv(v: np.ndarray) -> np.ndarray:
            v = np.asarray(v).reshape(-1)
            return backend.to_numpy(self.matvec(self.xp.asarray(v.astype(self.dtype, copy=False))))

        def mm(V: np.ndarray) -> np.ndarray:
            V = np.asarray(V)
            return backend.to_numpy(self.matmat(self.xp.asarray(V.astype(self.dtype, copy=False))))

        kw: dict[str, Callable[..., Any]] = {"matvec": mv, "matmat": mm}
        if self.symmetric:
            kw["rmatvec"] = mv
            kw["rmatmat"] = mm
        else:
            try:
                AT = self.adjoint()
            except TypeError:
                AT = None
            if AT is not None:
                def rmv(v: np.ndarray) -> np.ndarray:
                    v = np.asarray(v).reshape(-1)
                    return backend.to_numpy(AT.matvec(self.xp.asarray(v.astype(self.dtype, copy=False))))

                def rmm(V: np.ndarray) -> np.ndarray:
                    return backend.to_numpy(AT.matmat(self.xp.asarray(np.asarray(V).astype(self.dtype, copy=False))))

                kw["rmatvec"] = rmv
                kw["rmatmat"] = rmm
        return ScipyLO(shape=self.shape, dtype=self.dtype, **kw)

    def __repr__(self) -> str:
        tags = [t for t in ("symmetric", "psd") if getattr(self, t)]
        head = f"{_clip(self.name)}: " if self.name else ""
        return (
            f"<{head}{type(self).__name__} shape={self.shape} dtype={self.dtype} "
            f"backend={self.xp.__name__}{' ' + ','.join(tags) if tags else ''}>"
        )


class SumOperator(LinearOperator):
    """``A + B`` for operators of equal shape; dtype is the wider of the two."""

    def __init__(self, A: LinearOperator, B: LinearOperator) -> None:
        _check_operand(A, "left operand", "A + B")
        _check_operand(B, "right operand", "A + B")
        if A.shape != B.shape:
            raise ValueError(
                f"A + B: the right operand has shape {B.shape}, expected {A.shape} (the left operand's); "
                f"cannot add operators of shapes {A.shape} and {B.shape}"
            )
        super().__init__(
            A.shape,
            np.promote_types(A.dtype, B.dtype),
            symmetric=A.symmetric and B.symmetric,
            psd=A.psd and B.psd,
            xp=_common_backend(A, B),
            name=f"{_label(A)} + {_label(B)}",
        )
        self.terms = (A, B)
        _inherit_stochastic(self, A, B)

    def _adjoint(self) -> LinearOperator:
        return SumOperator(self.terms[0].adjoint(), self.terms[1].adjoint())

    def _matvec(self, v: Any) -> Any:
        A, B = self.terms
        return A.matvec(v) + B.matvec(v)

    def _matmat(self, V: Any) -> Any:
        A, B = self.terms
        return A.matmat(V) + B.matmat(V)


class ScaledOperator(LinearOperator):
    """``alpha * A`` for a real scalar ``alpha``."""

    def __init__(self, A: LinearOperator, alpha: float) -> None:
        alpha = _finite_scalar(alpha, "alpha")
        super().__init__(A.shape, A.dtype, symmetric=A.symmetric, psd=A.psd and alpha >= 0, xp=A.xp,
                         name=f"{alpha:.6g} * {_label(A)}")
        self.base, self.alpha = A, float(alpha)
        _inherit_stochastic(self, A)

    def _adjoint(self) -> LinearOperator:
        return ScaledOperator(self.base.adjoint(), self.alpha)

    def _matvec(self, v: Any) -> Any:
        return self.dtype.type(self.alpha) * self.base.matvec(v)

    def _matmat(self, V: Any) -> Any:
        return self.dtype.type(self.alpha) * self.base.matmat(V)


class ShiftedOperator(LinearOperator):
    """``A + lam * I`` for a square ``A`` (damping, spectral shifts)."""

    def __init__(self, A: LinearOperator, lam: float) -> None:
        if A.shape[0] != A.shape[1]:
            raise ValueError(f"shift needs a square operator, got shape {A.shape}")
        lam = _finite_scalar(lam, "lam")
        super().__init__(A.shape, A.dtype, symmetric=A.symmetric, psd=A.psd and lam >= 0, xp=A.xp,
                         name=f"{_label(A)} + {lam:.6g} I")
        self.base, self.lam = A, float(lam)
        _inherit_stochastic(self, A)

    def _adjoint(self) -> LinearOperator:
        return ShiftedOperator(self.base.adjoint(), self.lam)

    def _matvec(self, v: Any) -> Any:
        return self.base.matvec(v) + self.dtype.type(self.lam) * v

    def _matmat(self, V: Any) -> Any:
        return self.base.matmat(V) + self.dtype.type(self.lam) * V


class ProductOperator(LinearOperator):
    """``A @ B``: applies ``B`` then ``A`` (each counts its own products); dtype the wider.

    Tags are conservative: symmetric and PSD only for ``A @ A`` with ``A`` symmetric
    and for ``Bᵀ @ B`` (the transpose object of ``B``); otherwise neither.
    """

    def __init__(self, A: LinearOperator, B: LinearOperator) -> None:
        _check_operand(A, "left operand", "A @ B")
        _check_operand(B, "right operand", "A @ B")
        if A.shape[1] != B.shape[0]:
            raise ValueError(
                f"A @ B: the right operand has shape {B.shape}, expected ({A.shape[1]}, k) to follow the left "
                f"operand of shape {A.shape}"
            )
        gram = (A is B and A.symmetric) or getattr(A, "_transpose_of", None) is B or (
            getattr(B, "_transpose_of", None) is A)
        super().__init__(
            (A.shape[0], B.shape[1]),
            np.promote_types(A.dtype, B.dtype),
            symmetric=gram,
            psd=gram,
            xp=_common_backend(A, B),
            name=f"({_label(A)}) @ ({_label(B)})",
        )
        self.factors = (A, B)
        _inherit_stochastic(self, A, B)

    def _matvec(self, v: Any) -> Any:
        A, B = self.factors
        return A.matvec(B.matvec(v))

    def _matmat(self, V: Any) -> Any:
        A, B = self.factors
        return A.matmat(B.matmat(V))

    def _adjoint(self) -> LinearOperator:
        A, B = self.factors
        return ProductOperator(B.adjoint(), A.adjoint())


def _common_backend(*ops: LinearOperator) -> types.ModuleType:
    xps = {op.xp for op in ops}
    if len(xps) != 1:
        raise TypeError(f"operators live on different backends: {[op.xp.__name__ for op in ops]}")
    return ops[0].xp


def _inherit_stochastic(op: LinearOperator, *parts: LinearOperator) -> None:
    """An operator built from a stochastic one is stochastic (the deterministic solvers refuse it)."""
    if any(getattr(p, "stochastic", False) for p in parts):
        op.stochastic = True


def _check_operand(A: Any, name: str, what: str) -> None:
    if not isinstance(A, LinearOperator):
        raise TypeError(f"{what}: the {name} must be a curvlab LinearOperator, got {type(A).__name__}")


def _clip(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _label(A: LinearOperator) -> str:
    """A short label of ``A`` for derived operators' names."""
    return _clip(A.name, 60) if A.name else type(A).__name__


def _scalar_add(A: LinearOperator, c: Any) -> LinearOperator:
    """``0 + A`` is ``A`` (so ``sum`` works); any other non-operator raises ``TypeError``."""
    if np.isscalar(c) and not isinstance(c, (str, bytes)) and c == 0:
        return A
    raise TypeError(
        f"cannot add {type(c).__name__} {c!r} to a LinearOperator: add another operator, or use "
        "A.shift(lam) for A + lam I"
    )
