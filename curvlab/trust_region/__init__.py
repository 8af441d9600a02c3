"""Trust-region subproblems: KL (arTuRO, arXiv 2310.20574) and l2 (secular equation).

Examples
--------
>>> import numpy as np
>>> from curvlab.trust_region import solve_l2_subproblem
>>> round(solve_l2_subproblem(np.array([3.0]), 1.0, diag=np.array([1.0])).norm, 12)
1.0
"""

from .kl import REFERENCE_DEFAULTS, KLDual, KLSolveResult, kl_mean, kl_of_step, kl_precision, solve_kl, steady_state_eta
from .l2 import L2Result, solve_l2_subproblem

__all__ = ["KLDual", "KLSolveResult", "solve_kl", "kl_mean", "kl_precision", "kl_of_step", "steady_state_eta",
           "REFERENCE_DEFAULTS", "L2Result", "solve_l2_subproblem"]
