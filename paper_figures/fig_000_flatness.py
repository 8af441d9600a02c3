"""top Hessian eigenvalue at the end of training per method (placeholder: the experiment lands with its method module)."""

from __future__ import annotations

from ._common import FigureSkipped, FigureSpec

SPEC = FigureSpec(
    name='000_flatness',
    paper='000',
    claims=('C5',),
    title='top Hessian eigenvalue at the end of training per method',
    substitution='scikit-learn digits, tanh MLP 64-32-10; sharpness = top eigenvalue of the training-loss Hessian by Lanczos',
    columns=('method', 'seed', 'top_eig', 'trace', 'test_acc', 'final_train_loss'),
    requires=('curvlab.models.mlp:MLP', 'curvlab.methods.exact_newton', 'curvlab.linalg.lanczos'),
)


def run(ctx):
    raise FigureSkipped("experiment not written yet")
