"""RLS/Kalman filter tracking the diagonal curvature of a noisy quadratic (placeholder: the experiment lands with its method module)."""

from __future__ import annotations

from ._common import FigureSkipped, FigureSpec

SPEC = FigureSpec(
    name='001_filter_tracking',
    paper='001',
    claims=('C3',),
    title='RLS/Kalman filter tracking the diagonal curvature of a noisy quadratic',
    substitution='synthetic separable quadratic, H = [0.5, 1, 2, 4, 8], unit gradient noise',
    columns=('scenario', 'coord', 'step', 'h_mean', 'h_std', 'H_true'),
    requires=('curvlab.estimators.rls',),
)


def run(ctx):
    raise FigureSkipped("experiment not written yet")
