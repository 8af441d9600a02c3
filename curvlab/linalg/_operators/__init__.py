"""Implementation of :mod:`curvlab.linalg.operators`, one module per kind of operator.

Import the names from :mod:`curvlab.linalg.operators` (or :mod:`curvlab`), which re-exports
all of them; the modules here are private:

* :mod:`.checks` -- argument checks and the verification of declared ``symmetric``/``psd`` tags;
* :mod:`.base` -- :class:`LinearOperator` and its algebra (sum, scaling, shift, product);
* :mod:`.wrappers` -- operators of a function, a dense matrix, a diagonal, a SciPy operator;
* :mod:`.lowrank` -- :class:`LowRankPlusDiagonal` (``D + U C Uᵀ``, exact eigenvalues, Woodbury solve);
* :mod:`.blockdiag` -- :class:`BlockDiagonalOperator` (one block per layer);
* :mod:`.conversion` -- :func:`aslinearoperator` and :func:`symmetry_defect`.
"""
