"""``diag(A_1, ..., A_L)``: :class:`BlockDiagonalOperator`, one operator per parameter block.

Re-exported by :mod:`curvlab.linalg.operators`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import LinearOperator, _check_operand, _common_backend, _inherit_stochastic, _label


class BlockDiagonalOperator(LinearOperator):
    """``diag(A_1, ..., A_L)``: one operator per parameter block (e.g. per layer).

    Parameters
    ----------
    blocks : sequence of LinearOperator
        Non-empty; one backend; blocks may be rectangular (the operator is then
        ``(Σ m_i, Σ n_i)``). Tags: symmetric/PSD when every block is.
    name : str, optional

    ``matvec``/``matmat`` split the input rows by block and apply each block once
    (its own counter counts). :meth:`eigvalsh` is blockwise and exact when every block
    has one (``TypeError`` naming the first block without); :meth:`solve` is blockwise,
    exact for blocks with a closed form and by :func:`curvlab.linalg.solve` (strict) otherwise.
    """

    def __init__(self, blocks: Any, *, name: str | None = None) -> None:
        if isinstance(blocks, LinearOperator) or not hasattr(blocks, "__iter__"):
            raise TypeError(f"blocks must be a sequence of LinearOperator, got {type(blocks).__name__}")
        blocks = tuple(blocks)
        if not blocks:
            raise ValueError("blocks must hold at least one LinearOperator, got an empty sequence")
        for i, B in enumerate(blocks):
            _check_operand(B, f"blocks[{i}]", "BlockDiagonalOperator")
        m = sum(B.shape[0] for B in blocks)
        n = sum(B.shape[1] for B in blocks)
        dt = blocks[0].dtype
        for B in blocks[1:]:
            dt = np.promote_types(dt, B.dtype)
        square = all(B.shape[0] == B.shape[1] for B in blocks)
        super().__init__(
            (m, n), dt, symmetric=square and all(B.symmetric for B in blocks),
            psd=square and all(B.psd for B in blocks), xp=_common_backend(*blocks),
            name=name if name is not None else f"blockdiag({len(blocks)} blocks: {_label(blocks[0])}, ...)"
            if len(blocks) > 1 else f"blockdiag({_label(blocks[0])})",
        )
        self.blocks = blocks
        _inherit_stochastic(self, *blocks)
        self._rows = np.cumsum([0] + [B.shape[0] for B in blocks])
        self._cols = np.cumsum([0] + [B.shape[1] for B in blocks])

    def _matmat(self, V: Any) -> Any:
        out = self.xp.empty((self.shape[0], V.shape[1]), dtype=self.dtype)
        for i, B in enumerate(self.blocks):
            out[self._rows[i]:self._rows[i + 1]] = B.matmat(V[self._cols[i]:self._cols[i + 1]])
        return out

    def _matvec(self, v: Any) -> Any:
        out = self.xp.empty(self.shape[0], dtype=self.dtype)
        for i, B in enumerate(self.blocks):
            out[self._rows[i]:self._rows[i + 1]] = B.matvec(v[self._cols[i]:self._cols[i + 1]])
        return out

    def to_dense(self) -> Any:
        out = self.xp.zeros(self.shape, dtype=self.dtype)
        for i, B in enumerate(self.blocks):
            out[self._rows[i]:self._rows[i + 1], self._cols[i]:self._cols[i + 1]] = B.to_dense()
        return out

    def _adjoint(self) -> LinearOperator:
        return BlockDiagonalOperator([B.adjoint() for B in self.blocks])

    def _need(self, method: str) -> None:
        for i, B in enumerate(self.blocks):
            if not callable(getattr(B, method, None)):
                raise TypeError(
                    f"BlockDiagonalOperator.{method}: blocks[{i}] ({type(B).__name__}) has no exact {method}; "
                    f"use curvlab.linalg.solve / eigsh for an iterative answer"
                )

    def eigvalsh(self) -> Any:
        """All eigenvalues, ascending: the blocks' exact ``eigvalsh`` joined (square symmetric blocks)."""
        if not self.symmetric:
            raise ValueError("eigvalsh needs every block symmetric")
        self._need("eigvalsh")
        xp = self.xp
        return xp.sort(xp.concatenate([xp.asarray(B.eigvalsh()).astype(np.float64) for B in self.blocks]))

    def solve(self, b: Any, *, tol: float = 1e-10) -> Any:
        """``A⁻¹ b`` blockwise, ``b`` of shape ``(n,)`` or ``(n, k)``: a block's own closed-form
        ``solve`` where it has one, else :func:`curvlab.linalg.solve` with ``tol`` and
        ``strict=True`` (``ConvergenceError`` rather than an inaccurate block)."""
        # imported here: curvlab.linalg.solve imports this module (through curvlab.linalg.operators)
        from ..solve import solve as krylov_solve

        if self.shape[0] != self.shape[1] or any(B.shape[0] != B.shape[1] for B in self.blocks):
            raise ValueError(f"solve needs square blocks, got {[B.shape for B in self.blocks]}")
        b = self._check_input(b, getattr(b, "ndim", 1), "b")
        out = self.xp.empty(b.shape, dtype=self.dtype)
        for i, B in enumerate(self.blocks):
            bi = b[self._cols[i]:self._cols[i + 1]]
            own = getattr(B, "solve", None)
            xi = own(bi) if callable(own) else krylov_solve(B, bi, tol=tol, strict=True).x
            out[self._rows[i]:self._rows[i + 1]] = xi
        return out
