"""rigorous vs estimated smoothness constants: guaranteed vs actual decrease (placeholder: the experiment lands with its method module)."""

from __future__ import annotations

from ._common import FigureSkipped, FigureSpec

SPEC = FigureSpec(
    name='002_constants',
    paper='002',
    claims=('C4', 'C6'),
    title='rigorous vs estimated smoothness constants: guaranteed vs actual decrease',
    substitution='scikit-learn digits, tanh MLP 64-32-32-10, full batch',
    columns=('norm', 'iteration', 'layer', 'guaranteed', 'actual', 'L_bound', 'L_empirical'),
    requires=('curvlab.models.mlp:MLP', 'curvlab.methods.dsgd'),
)


def run(ctx):
    raise FigureSkipped("experiment not written yet")
