"""Hessian spectral density (SLQ) at initialisation and after training; top eigenvalues vs dense (placeholder: the experiment lands with its method module)."""

from __future__ import annotations

from ._common import FigureSkipped, FigureSpec

SPEC = FigureSpec(
    name='core_spectrum',
    paper='core',
    claims=(),
    title='Hessian spectral density (SLQ) at initialisation and after training; top eigenvalues vs dense',
    substitution='scikit-learn digits (subset), tanh MLP 64-32-10',
    columns=('stage', 'kind', 'x', 'y'),
    requires=('curvlab.models.mlp:MLP', 'curvlab.linalg.slq', 'curvlab.linalg.lanczos'),
)


def run(ctx):
    raise FigureSkipped("experiment not written yet")
