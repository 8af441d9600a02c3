"""DSGD (spectral, Frobenius) vs full-batch gradient descent (placeholder: the experiment lands with its method module)."""

from __future__ import annotations

from ._common import FigureSkipped, FigureSpec

SPEC = FigureSpec(
    name='002_training',
    paper='002',
    claims=('C3', 'C4', 'C7'),
    title='DSGD (spectral, Frobenius) vs full-batch gradient descent',
    substitution='scikit-learn digits, tanh MLP 64-32-32-10, full batch',
    columns=('method', 'iteration', 'train_loss_mean', 'train_loss_std', 'n_seeds'),
    requires=('curvlab.models.mlp:MLP', 'curvlab.methods.dsgd'),
)


def run(ctx):
    raise FigureSkipped("experiment not written yet")
