"""sensitivity to the damping λ and step η (placeholder: the experiment lands with its method module)."""

from __future__ import annotations

from ._common import FigureSkipped, FigureSpec

SPEC = FigureSpec(
    name='000_lambda',
    paper='000',
    claims=('C1',),
    title='sensitivity to the damping λ and step η',
    substitution='scikit-learn digits, tanh MLP 64-32-10, one seed',
    columns=('lam', 'eta', 'final_train_loss', 'test_acc', 'diverged'),
    requires=('curvlab.models.mlp:MLP', 'curvlab.methods.exact_newton'),
)


def run(ctx):
    raise FigureSkipped("experiment not written yet")
