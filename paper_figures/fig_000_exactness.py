"""closed-form layer eigenvalues and Newton directions vs dense float64 (placeholder: the experiment lands with its method module)."""

from __future__ import annotations

from ._common import FigureSkipped, FigureSpec

SPEC = FigureSpec(
    name='000_exactness',
    paper='000',
    claims=('C2', 'C3'),
    title='closed-form layer eigenvalues and Newton directions vs dense float64',
    substitution="random tanh and ReLU nets 8-n-5 (n = 2..32) and one depth-3 net on synthetic inputs, B in {1, 4}, instead of the paper's networks",
    columns=('width', 'activation', 'batch', 'quantity', 'max_rel_error', 'time_closed_ms', 'time_dense_ms'),
    requires=('curvlab.models.mlp:MLP', 'curvlab.methods.exact_newton'),
)


def run(ctx):
    raise FigureSkipped("experiment not written yet")
