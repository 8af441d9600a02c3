"""which layer DSGD chooses over time (placeholder: the experiment lands with its method module)."""

from __future__ import annotations

from ._common import FigureSkipped, FigureSpec

SPEC = FigureSpec(
    name='002_layer_choice',
    paper='002',
    claims=('C4',),
    title='which layer DSGD chooses over time',
    substitution='scikit-learn digits, tanh MLP 64-32-32-10, full batch, seed 0',
    columns=('norm', 's', 'iteration', 'layer', 'score_1', 'score_2', 'score_3'),
    requires=('curvlab.models.mlp:MLP', 'curvlab.methods.dsgd'),
)


def run(ctx):
    raise FigureSkipped("experiment not written yet")
