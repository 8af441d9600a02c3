"""predicted vs realised loss change per step (placeholder: the experiment lands with its method module)."""

from __future__ import annotations

from ._common import FigureSkipped, FigureSpec

SPEC = FigureSpec(
    name='003_fidelity',
    paper='003',
    claims=('C3', 'C4'),
    title='predicted vs realised loss change per step',
    substitution='scikit-learn digits, tanh MLP 64-32-10, batch 64, SGD direction, same batch',
    columns=('lam', 'step', 'predicted', 'realised', 't', 'c'),
    requires=('curvlab.models.mlp:MLP', 'curvlab.methods.curvature_lr'),
)


def run(ctx):
    raise FigureSkipped("experiment not written yet")
