"""Optimizer transforms: the four papers and first-order baselines, optax-shaped.

Every method is a :class:`Transform` with ``init(params) -> state``,
``update(grads, state, params, **extras) -> (updates, state)`` and
``update_with_info(...) -> (updates, state, info)`` (the state holds what the next step
needs, the info what the step reports); ``direction(...)`` gives the search direction where
the method has one. Params are pytrees (:mod:`curvlab.tree`) and keep their structure; an
``update`` leaves its input state unchanged unless the transform declares ``inplace``.
Building blocks: :func:`chain`, :func:`scale_by_lr` (number or schedule),
:func:`add_decayed_weights` (coupled/decoupled, masked), :func:`scale_by_adam`,
:func:`trace`. The methods:

- :class:`ExactNewton` — exact stochastic Newton with spectral adjustment
  (method inspired by arXiv 2104.03804);
- :class:`ArTuRO` — KL trust region with an RLS curvature filter (arXiv 2310.20574);
- :class:`DSGD` — duality structure gradient descent (method inspired by arXiv 1708.00523);
- :class:`CurvatureLR` — curvature-rescaled learning rate around a base transform
  (method inspired by arXiv 2210.14520);
- :class:`SGD`, :class:`Momentum`, :class:`Adam`, :class:`AdamW` — baselines.

All share one numerical-trouble policy (``nan_policy="skip"|"raise"|"propagate"``,
``max_consecutive_skips``; see :mod:`curvlab.methods._transform`): by default a step with a
non-finite gradient or curvature is skipped and counted, and no state is ever poisoned.
"""

from ._transform import (
    AddDecayedWeights,
    Chain,
    ChainInfo,
    ChainState,
    ScaleByLR,
    StepInfo,
    Transform,
    TransformState,
    add_decayed_weights,
    apply_updates,
    chain,
    scale_by_lr,
    tree_map,
    tree_vdot,
)
from .arturo import ARTURO_PRESETS, ArTuRO, ArTuROState, ArTuROStepInfo
from .baselines import (
    SGD,
    Adam,
    AdamState,
    AdamW,
    Momentum,
    MomentumState,
    ScaleByAdam,
    SGDState,
    Trace,
    scale_by_adam,
    trace,
)
from .curvature_lr import (
    ConstantSchedule,
    CurvatureLR,
    CurvatureLRState,
    ExpFloorSchedule,
    GeometricSchedule,
    as_schedule,
)
from .dsgd import DSGD, DSGDHistory, DSGDState, dsgd_train, mlp_layer_smoothness_bound
from .exact_newton import ExactNewton, ExactNewtonState, exact_newton_directions

__all__ = [
    # protocol
    "Transform", "TransformState", "StepInfo", "apply_updates", "tree_map", "tree_vdot",
    # building blocks
    "chain", "scale_by_lr", "add_decayed_weights", "scale_by_adam", "trace",
    "Chain", "ChainState", "ChainInfo", "ScaleByLR", "AddDecayedWeights", "ScaleByAdam", "Trace",
    # baselines
    "SGD", "Momentum", "Adam", "AdamW", "SGDState", "MomentumState", "AdamState",
    # exact stochastic Newton, arXiv 2104.03804
    "ExactNewton", "ExactNewtonState", "exact_newton_directions",
    # arTuRO, arXiv 2310.20574
    "ArTuRO", "ArTuROState", "ArTuROStepInfo", "ARTURO_PRESETS",
    # duality structure gradient descent, arXiv 1708.00523
    "DSGD", "DSGDState", "DSGDHistory", "dsgd_train", "mlp_layer_smoothness_bound",
    # curvature-rescaled learning rates, arXiv 2210.14520
    "CurvatureLR", "CurvatureLRState", "ConstantSchedule", "GeometricSchedule", "ExpFloorSchedule", "as_schedule",
]
