"""untuned exponential decay of λ vs tuned SGD, momentum and Adam (placeholder: the experiment lands with its method module)."""

from __future__ import annotations

from ._common import FigureSkipped, FigureSpec

SPEC = FigureSpec(
    name='003_decay',
    paper='003',
    claims=('C6', 'C7', 'C8'),
    title='untuned exponential decay of λ vs tuned SGD, momentum and Adam',
    substitution='scikit-learn digits, tanh MLP 64-32-10, batch 64',
    columns=('method', 'epoch', 'train_loss_mean', 'train_loss_std', 'test_acc_mean', 'test_acc_std', 'n_seeds'),
    requires=('curvlab.models.mlp:MLP', 'curvlab.methods.curvature_lr'),
)


def run(ctx):
    raise FigureSkipped("experiment not written yet")
