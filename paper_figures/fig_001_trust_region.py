"""multiplier η, root-finder iterations and achieved KL, reference vs exact mode (placeholder: the experiment lands with its method module)."""

from __future__ import annotations

from ._common import FigureSkipped, FigureSpec

SPEC = FigureSpec(
    name='001_trust_region',
    paper='001',
    claims=('C1', 'C2'),
    title='multiplier η, root-finder iterations and achieved KL, reference vs exact mode',
    substitution='scikit-learn digits, ReLU MLP 64-128-10, preset cifar10_cnn (active constraint), ε x0.006 at half time',
    columns=('mode', 'step', 'eta', 'iterations', 'kl_ratio', 'epoch'),
    requires=('curvlab.models.mlp:MLP', 'curvlab.methods.arturo'),
)


def run(ctx):
    raise FigureSkipped("experiment not written yet")
