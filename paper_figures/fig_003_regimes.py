"""step size, curvature and loss for constant λ (placeholder: the experiment lands with its method module)."""

from __future__ import annotations

from ._common import FigureSkipped, FigureSpec

SPEC = FigureSpec(
    name='003_regimes',
    paper='003',
    claims=('C3', 'C5'),
    title='step size, curvature and loss for constant λ',
    substitution='scikit-learn digits, tanh MLP 64-32-10, batch 64, SGD direction',
    columns=('lam', 'step', 't_mean', 'c_mean', 'loss_mean', 'loss_std', 'n_seeds'),
    requires=('curvlab.models.mlp:MLP', 'curvlab.methods.curvature_lr'),
)


def run(ctx):
    raise FigureSkipped("experiment not written yet")
