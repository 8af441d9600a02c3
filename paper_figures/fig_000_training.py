"""exact Newton per spectral adjustment vs SGD and Adam (placeholder: the experiment lands with its method module)."""

from __future__ import annotations

from ._common import FigureSkipped, FigureSpec

SPEC = FigureSpec(
    name='000_training',
    paper='000',
    claims=('C1', 'C4', 'C6'),
    title='exact Newton per spectral adjustment vs SGD and Adam',
    substitution="scikit-learn digits (X/16, 80/20 split), tanh MLP 64-32-10, instead of the paper's datasets",
    columns=('method', 'epoch', 'train_loss_mean', 'train_loss_std', 'test_acc_mean', 'test_acc_std', 'neg_kappa_frac_mean', 'n_seeds'),
    requires=('curvlab.models.mlp:MLP', 'curvlab.methods.exact_newton'),
)


def run(ctx):
    raise FigureSkipped("experiment not written yet")
