"""PyTorch adapter: curvature operators of an ``nn.Module`` on flat parameter vectors.

Given a module, a loss and a batch, :class:`TorchCurvature` returns curvlab
:class:`~curvlab.linalg.operators.LinearOperator` s acting on the flat vector of
the parameters that require gradients (layout: :class:`NamedLayout`, the
module's ``named_parameters()`` order, each tensor row-major):

* :meth:`~TorchCurvature.hessian` — ``H v`` by forward-over-reverse (default:
  dual-number parameters ``θ + ε v`` through one backward pass, so the gradient's
  tangent is ``H v``; blocks by ``torch.func.vmap`` of ``jvp(grad)``) or
  reverse-over-reverse (double backward, ``hvp_mode="reverse_over_reverse"``);
* :meth:`~TorchCurvature.ggn` — generalized Gauss–Newton ``Jᵀ H_L J v``;
* :meth:`~TorchCurvature.fisher` — empirical Fisher ``(1/B) Σ_i g_i g_iᵀ v``
  (``g_i`` per-sample gradients) or Monte-Carlo Fisher with labels sampled from
  the model's predictive distribution by an explicit ``rng``;

and callables: :meth:`~TorchCurvature.gradient` ``-> (loss, g)``,
:meth:`~TorchCurvature.curvature` ``d -> dᵀHd`` computed forward-only
(``torch.func.jvp`` nested: forward-over-forward, no backward graph stored) and
:meth:`~TorchCurvature.grad_and_curvature` ``d -> (loss, g, dᵀHd)`` (one
forward-over-reverse pass by default; or a backward pass plus the forward-only
curvature).

Arrays cross between torch and curvlab through DLPack without copies: NumPy
vectors for CPU modules, CuPy vectors for CUDA modules. Dtype: the parameters'
(float32 or float64). The loss is ``"cross_entropy"`` (integer targets, logits
on the last axis), ``"mse"`` (``0.5 ||z - y||²`` summed over the last axis) —
both averaged over every other axis, as in :mod:`curvlab.models.mlp` — or a
callable ``loss(outputs, targets) -> scalar tensor`` that is a mean over the
batch (axis 0).

Data parallelism: with ``process_group`` (a ``torch.distributed`` group, or
``True`` for the default one) every matvec, gradient and curvature is the
batch-size-weighted average over ranks (``all_reduce``), so ranks holding
shards of a dataset see the operator of the whole dataset.

Example
-------
>>> import torch, numpy as np
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<...>
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
>>> X, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
>>> curv = TorchCurvature(net, "cross_entropy", (X, y))
>>> H = curv.hessian()
>>> H.shape
(26, 26)
>>> v = np.ones(26)
>>> bool(np.isclose(v @ (H @ v), curv.curvature(v)))
True
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.func import functional_call

from .. import backend
from ..linalg.operators import CallableOperator, LinearOperator
from ..methods._transform import Transform
from ._fisher import mc_fisher_draws
from ._layout import NamedLayout

__all__ = [
    "TorchCurvature",
    "NamedLayout",
    "CurvlabOptimizer",
    "to_torch",
    "from_torch",
    "hessian_operator",
    "ggn_operator",
    "fisher_operator",
    "HVP_MODES",
    "from_reference_mlp",
    "forward_mode_safe_ops",
]

HVP_MODES = ("forward_over_reverse", "reverse_over_reverse")
_FLOAT_TORCH = (torch.float32, torch.float64)


# --------------------------------------------------------------------------- DLPack crossing
def to_torch(x: Any) -> torch.Tensor:
    """A NumPy (CPU) or CuPy (CUDA) array as a torch tensor sharing its memory (DLPack).

    Read-only NumPy arrays (which DLPack cannot export) are copied once.
    """
    if isinstance(x, torch.Tensor):
        return x
    try:
        return torch.from_dlpack(x)
    except (BufferError, TypeError, RuntimeError):
        return torch.from_dlpack(np.array(x))


def from_torch(t: torch.Tensor) -> Any:
    """A torch tensor as a NumPy (CPU) or CuPy (CUDA) array sharing its memory (DLPack)."""
    return backend.from_dlpack(t.detach())


# --------------------------------------------------------------------------- forward-mode-safe ops
def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):  # noqa: ANN001, ANN202
    dims = tuple(range(-len(tuple(normalized_shape)), 0))
    mu = input.mean(dims, keepdim=True)
    xc = input - mu
    out = xc * torch.rsqrt((xc * xc).mean(dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    return out if bias is None else out + bias


def _affine_channels(out: torch.Tensor, weight: Any, bias: Any) -> torch.Tensor:
    shape = (1, -1) + (1,) * (out.ndim - 2)
    if weight is not None:
        out = out * weight.reshape(shape)
    return out if bias is None else out + bias.reshape(shape)


def _normalize_over(x: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
    mu = x.mean(dims, keepdim=True)
    xc = x - mu
    return xc * torch.rsqrt((xc * xc).mean(dims, keepdim=True) + eps)


def _batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,  # noqa: ANN001, ANN202
                momentum=0.1, eps=1e-5):
    if not training and running_mean is not None:
        shape = (1, -1) + (1,) * (input.ndim - 2)
        out = (input - running_mean.reshape(shape)) * torch.rsqrt(running_var.reshape(shape) + eps)
    else:  # batch statistics; running statistics are left untouched while curvature is evaluated
        out = _normalize_over(input, (0,) + tuple(range(2, input.ndim)), eps)
    return _affine_channels(out, weight, bias)


def _instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,  # noqa: ANN001, ANN202
                   use_input_stats=True, momentum=0.1, eps=1e-5):
    if not use_input_stats and running_mean is not None:
        return _batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    return _affine_channels(_normalize_over(input, tuple(range(2, input.ndim)), eps), weight, bias)


def _sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,  # noqa: ANN001, ANN202
          enable_gqa=False):
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        rep = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(rep, -3), value.repeat_interleave(rep, -3)
    s = (query @ key.transpose(-2, -1)) * (scale if scale is not None else 1.0 / math.sqrt(query.shape[-1]))
    L, S = query.shape[-2], key.shape[-2]
    if is_causal:
        s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool, device=s.device).tril(), float("-inf"))
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask
    p = torch.softmax(s, dim=-1)
    if dropout_p > 0.0:
        p = F.dropout(p, dropout_p)
    return p @ value


_COMPOSITES = {"layer_norm": _layer_norm, "batch_norm": _batch_norm, "instance_norm": _instance_norm,
               "scaled_dot_product_attention": _sdpa}


@contextlib.contextmanager
def forward_mode_safe_ops(enabled: bool = True) -> Iterator[None]:
    """Swap a few fused ``torch.nn.functional`` kernels for compositions of elementary ops.

    In torch 2.13 nested forward mode (``jvp`` of ``jvp``) is wrong for the
    fused ``layer_norm`` and training-mode ``batch_norm``/``instance_norm``
    kernels, and the CPU flash-attention kernel behind
    ``scaled_dot_product_attention`` (used by ``nn.MultiheadAttention``) has no
    forward-mode rule at all (nor a double backward). Inside this context those functions are the
    textbook formulas (same values; training-mode batch norm does not update the
    running statistics) and the MultiheadAttention fast path is off. The swap
    patches module attributes, so it is not thread-safe.
    """
    if not enabled:
        yield
        return
    saved = {k: getattr(F, k) for k in _COMPOSITES}
    mha = getattr(torch.backends, "mha", None)
    fast = mha.get_fastpath_enabled() if mha is not None else None
    try:
        for k, f in _COMPOSITES.items():
            setattr(F, k, f)
        if mha is not None:
            mha.set_fastpath_enabled(False)
        yield
    finally:
        for k, f in saved.items():
            setattr(F, k, f)
        if mha is not None:
            mha.set_fastpath_enabled(fast)


# --------------------------------------------------------------------------- losses
def _check_labels(y: torch.Tensor, C: int) -> None:
    """Labels in ``[0, C)``: one host sync (a boolean); two more only to word the error."""
    if bool(((y < 0) | (y >= C)).any()):
        lo, hi = int(y.min()), int(y.max())
        raise ValueError(f"batch targets (class labels) must lie in [0, {C - 1}] for cross_entropy "
                         f"(the outputs have {C} classes), got values in [{lo}, {hi}]")


def _builtin_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if name == "cross_entropy":
        checked: list[torch.Tensor] = []  # the targets tensor whose label range was verified

        def ce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            lead = tuple(z.shape[:-1])
            if tuple(y.shape) not in (lead, lead + (1,)):
                raise ValueError(f"cross_entropy targets must have the outputs' shape without the class axis, "
                                 f"{lead}, got {tuple(y.shape)}")
            if not checked or checked[0] is not y:  # once per targets tensor, not per product
                _check_labels(y, int(z.shape[-1]))
                checked[:] = [y]
            # torch's ignore_index (-100) cannot occur: the labels were checked to lie in [0, C)
            return F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1))

        return ce
    if name == "mse":

        def mse(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            if y.shape != z.shape:
                raise ValueError(f"mse targets must have the outputs' shape {tuple(z.shape)}, got {tuple(y.shape)}")
            return 0.5 * ((z - y) ** 2).sum(-1).mean()

        return mse
    raise ValueError(f"loss must be 'cross_entropy', 'mse' or a callable, got {name!r}")


def _checked_loss(fn: Callable[[torch.Tensor, torch.Tensor], Any]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A user's loss callable whose result must be a real 0-d tensor (every use: gradient, operators)."""

    def loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        val = fn(z, y)
        if not isinstance(val, torch.Tensor):
            raise TypeError(f"loss must return a 0-d torch tensor (the batch mean), got {type(val).__name__}")
        if val.ndim != 0:
            raise ValueError(f"loss must return a scalar (0-d) tensor, the mean over the batch, got shape "
                             f"{tuple(val.shape)} (a per-sample loss? use reduction='mean')")
        if not val.is_floating_point():
            raise TypeError(f"loss must return a real floating tensor, got dtype {val.dtype}")
        return val

    return loss


def _as_batch_tensor(t: Any, name: str) -> torch.Tensor:
    """One tensor (or a NumPy/CuPy array, via DLPack) for ``batch``'s inputs or targets."""
    if isinstance(t, (tuple, list, dict)):
        raise TypeError(f"batch {name} must be one tensor (or a NumPy/CuPy array), got a {type(t).__name__}; a "
                        "sequence is not stacked (a model taking several inputs needs a wrapper module taking one "
                        "tensor; plain label lists: torch.as_tensor(labels))")
    if not isinstance(t, torch.Tensor):
        if not (hasattr(t, "__dlpack__") or isinstance(t, np.ndarray)):
            raise TypeError(f"batch {name} must be a torch tensor (or a NumPy/CuPy array), "
                            f"got {type(t).__module__}.{type(t).__name__}")
        if np.dtype(getattr(t, "dtype", np.float64)).kind in "OUSVM":
            raise TypeError(f"batch {name} must hold numbers, got an array of dtype {np.dtype(t.dtype)}")
        t = to_torch(t)
    if t.is_complex():
        raise TypeError(f"batch {name} have complex dtype {t.dtype}; curvlab's losses and operators are real")
    return t


def _resolve_group(process_group: Any) -> Any:
    if process_group is None or process_group is False:
        return None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("process_group was given but torch.distributed is not initialized "
                           "(call torch.distributed.init_process_group first)")
    return dist.group.WORLD if process_group is True else process_group


# --------------------------------------------------------------------------- the adapter
class TorchCurvature:
    """Curvature operators and callables of a torch model on one batch.

    Parameters
    ----------
    model : torch.nn.Module
        Evaluated with ``torch.func.functional_call``; put BatchNorm/Dropout in
        ``eval()`` mode for a deterministic, per-sample-separable function.
    loss : "cross_entropy" | "mse" | callable
        See the module docstring; a callable must return a 0-d tensor.
    batch : (inputs, targets)
        Two tensors (NumPy/CuPy arrays cross by DLPack) on the model's device,
        with at least one sample and equal leading (batch) sizes. Floating inputs
        must have the parameters' dtype; complex parts raise ``TypeError``. A
        tuple/list/dict as inputs or targets raises ``TypeError`` (it is never
        stacked: a model with several inputs needs a wrapper module taking one
        tensor). ``"cross_entropy"`` targets are integer labels shaped like the
        outputs without the class axis (or with a trailing 1); their range
        ``[0, C)`` is checked once per targets tensor, at the first evaluation
        (one host sync), so torch's ``ignore_index`` (-100) cannot drop samples
        silently. A callable loss must return a real 0-d tensor, checked at every
        use (gradient and every operator).
    params : iterable of (name, tensor), optional
        The parameters to differentiate; default: every ``named_parameters()``
        entry with ``requires_grad``.
    hvp_mode : "forward_over_reverse" (default) | "reverse_over_reverse"
    nan_policy : "propagate" (default) | "raise"
        ``"propagate"``: NaN/Inf in the parameters or the batch flow through (the
        loss and the products come back NaN); nothing is checked, no host sync.
        ``"raise"``: the parameters, the floating batch inputs and targets are
        checked once here (one host sync each) and ``FloatingPointError`` names
        the first non-finite one.
    process_group : torch.distributed group, True (default group) or None
        Average matvecs and gradients over ranks, weighted by batch size.
    composite_ops : bool
        Run forward-mode products under :func:`forward_mode_safe_ops` (default
        True) and reverse-over-reverse products too: works around torch kernels
        whose nested forward mode is wrong or missing (LayerNorm, training-mode
        BatchNorm, fused attention, which also lacks a double backward on the CPU).

    The operators are evaluated at a snapshot of the parameters taken at
    construction (updating the model afterwards does not change them).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        batch: tuple[Any, Any],
        *,
        params: Iterable[tuple[str, torch.Tensor]] | None = None,
        hvp_mode: str = "forward_over_reverse",
        process_group: Any = None,
        composite_ops: bool = True,
        nan_policy: str = "propagate",
    ) -> None:
        if nan_policy not in ("propagate", "raise"):
            raise ValueError(f"nan_policy must be 'propagate' or 'raise', got {nan_policy!r}")
        self.nan_policy = nan_policy
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if hvp_mode not in HVP_MODES:
            raise ValueError(f"hvp_mode must be one of {HVP_MODES}, got {hvp_mode!r}")
        named = list(model.named_parameters() if params is None else params)
        named = [(n, p) for n, p in named if p.requires_grad]
        if not named:
            raise ValueError("model has no trainable parameters (none with requires_grad=True)")
        dtypes = {p.dtype for _, p in named}
        if len(dtypes) != 1 or next(iter(dtypes)) not in _FLOAT_TORCH:
            raise TypeError(f"trainable parameters must all be float32 or all float64, got {sorted(map(str, dtypes))}")
        devices = {p.device for _, p in named}
        if len(devices) != 1:
            raise ValueError(f"trainable parameters live on several devices: {sorted(map(str, devices))}")
        for mname, m in model.named_modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training:
                name = mname or type(m).__name__
                raise ValueError(f"BatchNorm module {name!r} is in training mode: its output couples "
                                 "the samples and every evaluation would update its running statistics; call "
                                 "model.eval() (or that module's .eval()) before building curvature operators")
        self.model = model
        self.device = next(iter(devices))
        self.torch_dtype = next(iter(dtypes))
        self.dtype = np.dtype("float32" if self.torch_dtype == torch.float32 else "float64")
        self.xp = np if self.device.type == "cpu" else backend._import_cupy()
        if self.xp is None:
            raise RuntimeError(f"parameters live on {self.device} but CuPy is not available for the vectors")
        self.layout = NamedLayout([n for n, _ in named], [tuple(p.shape) for _, p in named], self.dtype)
        self.params: tuple[torch.Tensor, ...] = tuple(p.detach().clone() for _, p in named)
        self.loss_name = loss if isinstance(loss, str) else None
        if not isinstance(loss, str) and not callable(loss):
            raise TypeError(f"loss must be a string or a callable, got {type(loss).__name__}")
        self.loss_fn = _builtin_loss(loss) if isinstance(loss, str) else _checked_loss(loss)
        self.hvp_mode = hvp_mode
        self.composite_ops = bool(composite_ops)
        self.group = _resolve_group(process_group)
        self.X, self.y = self._check_batch(batch)
        if nan_policy == "raise":
            named_t = [(f"parameter {n!r}", p) for n, p in zip(self.layout.names, self.params)]
            for what, t in named_t + [("batch inputs", self.X), ("batch targets", self.y)]:
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise FloatingPointError(f"{what} contain NaN or Inf (nan_policy='raise')")
        self.batch_size = int(self.X.shape[0])
        self._weight, self._total = self._rank_weight()
        self._vmap_ok = True

    # ------------------------------------------------------------------ checks and helpers
    def _check_batch(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"batch must be a pair (inputs, targets), got {type(batch).__name__}")
        X, y = batch
        out = []
        for name, t in (("inputs", X), ("targets", y)):
            t = _as_batch_tensor(t, name)
            if t.device != self.device:
                raise ValueError(f"batch {name} live on {t.device} but the model's parameters on {self.device}; "
                                 f"move them with .to({str(self.device)!r})")
            if t.is_floating_point() and t.dtype != self.torch_dtype and name == "inputs":
                raise TypeError(f"batch inputs have dtype {t.dtype} but the parameters {self.torch_dtype}")
            if t.ndim == 0:
                raise ValueError(f"batch {name} must have a leading batch axis, got a 0-d tensor")
            out.append(t)
        if out[0].shape[0] != out[1].shape[0]:
            raise ValueError(f"inputs and targets differ in batch size: {out[0].shape[0]} vs {out[1].shape[0]}")
        if out[0].shape[0] == 0:
            raise ValueError(f"batch is empty (inputs of shape {tuple(out[0].shape)}): the mean loss of no "
                             "sample is undefined; pass at least one sample")
        if self.loss_name == "cross_entropy" and (out[1].is_floating_point() or out[1].dtype == torch.bool):
            raise TypeError(f"batch targets must be integer class labels for cross_entropy, got dtype {out[1].dtype}")
        return out[0], out[1]

    def _rank_weight(self) -> tuple[float, float]:
        if self.group is None:
            return 1.0, float(self.batch_size)
        import torch.distributed as dist

        n = torch.tensor([float(self.batch_size)], dtype=torch.float64,
                         device=self.device if dist.get_backend(self.group) == "nccl" else "cpu")
        dist.all_reduce(n, group=self.group)
        total = float(n.item())
        return self.batch_size / total, total

    def _allreduce(self, t: torch.Tensor) -> torch.Tensor:
        """Batch-size-weighted sum over ranks (identity without a group)."""
        if self.group is None:
            return t
        import torch.distributed as dist

        t = t * self._weight
        dist.all_reduce(t, group=self.group)
        return t

    def _forward(self, plist: Sequence[torch.Tensor], X: torch.Tensor | None = None) -> torch.Tensor:
        X = self.X if X is None else X
        try:
            out = functional_call(self.model, dict(zip(self.layout.names, plist)), (X,))
        except RuntimeError as e:
            if X.is_floating_point():
                raise
            raise TypeError(f"the model failed on the batch inputs of dtype {X.dtype} ({e}); cast them with "
                            f"inputs.to({self.torch_dtype}) unless the model takes integer indices "
                            "(e.g. nn.Embedding)") from e
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"model must return a tensor, got {type(out).__name__}")
        return out

    def _loss_of(self, plist: Sequence[torch.Tensor]) -> torch.Tensor:
        val = self.loss_fn(self._forward(plist), self.y)
        if not isinstance(val, torch.Tensor) or val.ndim != 0:
            shape = tuple(val.shape) if isinstance(val, torch.Tensor) else type(val).__name__
            raise ValueError(f"loss must return a scalar (0-d) tensor, got {shape}")
        return val

    def _vec_in(self, v: Any, name: str = "v") -> tuple[torch.Tensor, ...]:
        if isinstance(v, (list, tuple)):  # a tree: one array per parameter, in layout order
            if len(v) != len(self.layout):
                raise ValueError(f"{name} must hold {len(self.layout)} arrays (one per parameter), got {len(v)}")
            v = torch.cat([self._real(to_torch(a), name).reshape(-1) for a in v])
        t = self._real(to_torch(v), name)
        if t.ndim != 1 or t.shape[0] != self.layout.size:
            raise ValueError(f"{name} must have shape ({self.layout.size},), got {tuple(t.shape)}")
        if t.device != self.device:
            raise ValueError(f"{name} lives on {t.device} but the model on {self.device}")
        if t.dtype != self.torch_dtype:
            t = t.to(self.torch_dtype)
        return tuple(self.layout.unpack(t))

    @staticmethod
    def _real(t: torch.Tensor, name: str) -> torch.Tensor:
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a real float32/float64 array, got dtype {t.dtype}")
        return t

    def _block_in(self, V: Any) -> tuple[torch.Tensor, ...]:
        T = self._real(to_torch(V), "V")
        if T.ndim != 2 or T.shape[0] != self.layout.size:
            raise ValueError(f"V must have shape ({self.layout.size}, k), got {tuple(T.shape)}")
        T = T.to(self.torch_dtype).T  # (k, P) view
        k = T.shape[0]
        return tuple(T[:, a:b].reshape((k,) + s) for a, b, s in
                     zip(self.layout.offsets[:-1], self.layout.offsets[1:], self.layout.shapes))

    def _flat(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([p.reshape(-1) for p in parts])

    def _flat_block(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        k = parts[0].shape[0]
        return torch.cat([p.reshape(k, -1) for p in parts], dim=1).T  # (P, k)

    def _out(self, t: torch.Tensor) -> Any:
        return from_torch(self._allreduce(t.detach()))

    def _columns(self, single: Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]],
                 parts: tuple[torch.Tensor, ...]) -> Any:
        """The block product one column at a time (ops without a batching rule)."""
        cols = [self._flat(single(tuple(p[j] for p in parts))) for j in range(parts[0].shape[0])]
        return self._out(torch.stack(cols, dim=1))

    def _apply_block(self, single: Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]], V: Any) -> Any:
        parts = self._block_in(V)
        if self._vmap_ok:
            try:
                res = torch.func.vmap(single)(parts)
                return self._out(self._flat_block(res))
            except Exception:  # some ops have no batching rule: fall back to a loop
                self._vmap_ok = False
        return self._columns(single, parts)

    def _operator(self, single: Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]],
                  *, psd: bool, block: Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]] | None = None
                  ) -> LinearOperator:
        n = self.layout.size

        def mv(v: Any) -> Any:
            return self._out(self._flat(single(self._vec_in(v))))

        def mm(V: Any) -> Any:
            if block is None:
                return self._apply_block(single, V)
            parts = self._block_in(V)
            try:
                return self._out(self._flat_block(block(parts)))
            except Exception:  # no batching rule for some op: one column at a time
                return self._columns(single, parts)

        return CallableOperator(mv, (n, n), self.dtype, matmat=mm, symmetric=True, psd=psd, xp=self.xp)

    # ------------------------------------------------------------------ gradient
    def gradient(self, params: Any = None) -> tuple[float, Any]:
        """``(loss, g)``: the batch loss and its gradient, a ``(P,)`` array (rank-averaged).

        ``params`` (a flat ``(P,)`` vector) evaluates at other parameter values.
        """
        plist = self.params if params is None else self._vec_in(params, "params")
        with torch.enable_grad():
            ps = [p.detach().requires_grad_(True) for p in plist]
            val = self._loss_of(ps)
            g = torch.autograd.grad(val, ps)
        val = self._allreduce(val.detach().reshape(1))
        return float(val[0]), self._out(self._flat(g))

    def gradient_fn(self) -> Callable[[Any], tuple[float, Any]]:
        """A callable ``params (P,) -> (loss, g)`` on this batch."""
        return lambda p: self.gradient(p)

    # ------------------------------------------------------------------ Hessian
    def _hvp_single(self, mode: str) -> Callable[[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...]]:
        params = self.params
        if mode == "forward_over_reverse":
            # dual parameters (primal θ, tangent v) through one autograd backward: the
            # gradient comes out as a dual number whose tangent is H v
            def hv(v: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
                with forward_mode_safe_ops(self.composite_ops), fwAD.dual_level(), torch.enable_grad():
                    leaves = [p.detach().requires_grad_(True) for p in params]
                    duals = [fwAD.make_dual(q, t) for q, t in zip(leaves, v)]
                    g = torch.autograd.grad(self._loss_of(duals), leaves)
                    tans = [fwAD.unpack_dual(x).tangent for x in g]
                return tuple(torch.zeros_like(q) if t is None else t for q, t in zip(params, tans))

            return hv

        def hv_rr(v: tuple[torch.Tensor, ...], batched: bool = False) -> tuple[torch.Tensor, ...]:
            with torch.enable_grad(), forward_mode_safe_ops(self.composite_ops):
                ps = [p.detach().requires_grad_(True) for p in params]
                g = torch.autograd.grad(self._loss_of(ps), ps, create_graph=True)
                return torch.autograd.grad(g, ps, grad_outputs=v, is_grads_batched=batched)

        return hv_rr

    def hessian(self, hvp_mode: str | None = None, *, cache_graph: bool = False) -> LinearOperator:
        """The loss Hessian ``H`` (P × P, symmetric) as a LinearOperator.

        ``hvp_mode`` overrides the adapter's default (forward-over-reverse).
        ``cache_graph=True`` (reverse-over-reverse only) builds the gradient's
        differentiable graph once, at the first product, and keeps it for the
        operator's lifetime: each further product is one double-backward pass
        (faster for iterative solvers; holds the graph's memory meanwhile).
        """
        mode = self.hvp_mode if hvp_mode is None else hvp_mode
        if mode not in HVP_MODES:
            raise ValueError(f"hvp_mode must be one of {HVP_MODES}, got {mode!r}")
        if cache_graph:
            if mode != "reverse_over_reverse":
                raise ValueError("cache_graph=True needs hvp_mode='reverse_over_reverse'")
            return self._cached_rr_operator()
        single = self._hvp_single(mode)
        if mode == "forward_over_reverse":
            grad_fn = torch.func.grad(self._loss_of)

            def hv_func(v: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
                with forward_mode_safe_ops(self.composite_ops):
                    return torch.func.jvp(grad_fn, (self.params,), (v,))[1]

            # a block of vectors: torch.func.jvp of torch.func.grad, vmapped over the columns
            return self._operator(single, psd=False, block=lambda parts: torch.func.vmap(hv_func)(parts))
        # one double-backward graph, all columns through one batched backward
        return self._operator(single, psd=False, block=lambda parts: single(parts, batched=True))

    def _cached_rr_operator(self) -> LinearOperator:
        cache: dict[str, Any] = {}

        def graph() -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
            if "g" not in cache:
                with torch.enable_grad(), forward_mode_safe_ops(self.composite_ops):
                    ps = [p.detach().requires_grad_(True) for p in self.params]
                    cache["ps"] = ps
                    cache["g"] = torch.autograd.grad(self._loss_of(ps), ps, create_graph=True)
            return cache["ps"], cache["g"]

        def single(v: tuple[torch.Tensor, ...], batched: bool = False) -> tuple[torch.Tensor, ...]:
            ps, g = graph()
            with torch.enable_grad():
                return torch.autograd.grad(g, ps, grad_outputs=v, retain_graph=True, is_grads_batched=batched)

        return self._operator(single, psd=False, block=lambda parts: single(parts, batched=True))

    def hvp(self, v: Any) -> Any:
        """``H v`` for a flat ``(P,)`` vector (default mode)."""
        return self._out(self._flat(self._hvp_single(self.hvp_mode)(self._vec_in(v))))

    # ------------------------------------------------------------------ GGN and Fisher
    def _outputs(self) -> torch.Tensor:
        with torch.no_grad():
            return self._forward(self.params)

    def _jtuj(self, weight: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
              ) -> Callable[..., tuple[torch.Tensor, ...]]:
        """``v -> Jᵀ weight(z, J v)``: J the Jacobian of the outputs w.r.t. the parameters."""
        params = self.params

        def single(v: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            with forward_mode_safe_ops(self.composite_ops):
                z, Jv = torch.func.jvp(self._forward, (params,), (v,))
            _, vjp_fn = torch.func.vjp(self._forward, params)
            return vjp_fn(weight(z, Jv))[0]

        return single

    def ggn(self) -> LinearOperator:
        """Generalized Gauss–Newton ``G = Jᵀ H_L J`` (P × P, symmetric PSD for convex losses)."""
        y = self.y

        def weight(z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            g_z = torch.func.grad(lambda zz: self.loss_fn(zz, y))
            return torch.func.jvp(g_z, (z,), (u,))[1]

        return self._operator(self._jtuj(weight), psd=True)

    def fisher(self, kind: str = "empirical", *, rng: Any = None, mc_samples: int = 1) -> LinearOperator:
        """Fisher operator (P × P, symmetric PSD).

        ``kind="empirical"``: ``(1/B) Σ_i g_i g_iᵀ`` with ``g_i`` the gradient of
        sample ``i``'s loss (``loss`` a mean over axis 0).
        ``kind="mc"``: Monte-Carlo Fisher ``(1/(N M)) Σ_n Σ_m J_nᵀ r_nm r_nmᵀ J_n`` with
        ``r_nm = ∇_z ℓ(z_n, ỹ_nm)``, labels ``ỹ`` drawn from the model's predictive
        distribution (categorical for cross-entropy, ``N(z, I)`` for mse) with the
        explicit ``rng`` (NumPy Generator or seed), ``mc_samples`` draws per output
        position ``n``; its expectation is the GGN. Built-in losses only.
        """
        z = self._outputs()
        if kind == "empirical":
            B = z.shape[0]
            with torch.enable_grad():
                zz = z.detach().requires_grad_(True)
                r = torch.autograd.grad(self.loss_fn(zz, self.y), zz)[0] * B  # per-sample ∇_z ℓ_i

            def weight(_z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
                s = (r * u).reshape(B, -1).sum(1)
                return r * s.reshape((B,) + (1,) * (r.ndim - 1)) / B

            return self._operator(self._jtuj(weight), psd=True)
        C = z.shape[-1]
        p = torch.softmax(z, dim=-1) if self.loss_name == "cross_entropy" else None
        M, draws = mc_fisher_draws(kind, self.loss_name, rng, mc_samples, z.shape,
                                   None if p is None else backend.to_numpy(from_torch(p)).astype(np.float64))
        if p is not None:
            onehot = torch.nn.functional.one_hot(torch.as_tensor(draws, device=self.device), C).to(self.torch_dtype)
            R = p.unsqueeze(0) - onehot  # (M, *z.shape)
        else:
            R = -torch.as_tensor(draws, dtype=self.torch_dtype, device=self.device)
        npos = z.numel() // C

        def weight_mc(_z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            s = (R * u.unsqueeze(0)).sum(-1, keepdim=True)
            return (R * s).sum(0) / (npos * M)

        return self._operator(self._jtuj(weight_mc), psd=True)

    # ------------------------------------------------------------------ directional curvature
    def curvature(self, d: Any, *, params: Any = None, return_all: bool = False) -> Any:
        """``dᵀ H d`` by forward-over-forward (nested ``torch.func.jvp``); no backward pass.

        With ``return_all=True`` returns ``(loss, gᵀd, dᵀHd)`` as floats.
        """
        plist = self.params if params is None else self._vec_in(params, "params")
        dv = self._vec_in(d, "d")

        def inner(p: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.func.jvp(self._loss_of, (p,), (dv,))

        with torch.no_grad(), forward_mode_safe_ops(self.composite_ops):
            (val, gd), (_, c) = torch.func.jvp(inner, (tuple(plist),), (dv,))
        vals = self._allreduce(torch.stack([val, gd, c]).detach())
        if return_all:
            return float(vals[0]), float(vals[1]), float(vals[2])
        return float(vals[2])

    def curvature_fn(self) -> Callable[[Any], float]:
        """A callable ``d (P,) -> dᵀHd`` (forward-only) on this batch."""
        return lambda d: self.curvature(d)

    def grad_and_curvature(self, d: Any, *, params: Any = None, mode: str = "forward_over_reverse"
                           ) -> tuple[float, Any, float]:
        """``(loss, g, dᵀHd)`` on the batch.

        ``mode="forward_over_reverse"`` (default): one ``jvp`` of the gradient gives
        ``g`` and ``H d`` together, ``c = ⟨d, H d⟩`` (the HVP's cost).
        ``mode="separate"``: the gradient by one backward pass, then ``c`` forward-only
        (:meth:`curvature`); peak memory is the larger of the two, not their sum.
        ``mode="shared"``: one forward pass carrying the second-order tangents
        under reverse mode, one backward pass (records the tangent work too).
        """
        if mode == "separate":
            val, g = self.gradient(params)
            return val, g, self.curvature(d, params=params)
        plist = self.params if params is None else self._vec_in(params, "params")
        dv = self._vec_in(d, "d")
        if mode == "forward_over_reverse":
            with forward_mode_safe_ops(self.composite_ops), fwAD.dual_level(), torch.enable_grad():
                leaves = [p.detach().requires_grad_(True) for p in plist]
                loss = self._loss_of([fwAD.make_dual(q, t) for q, t in zip(leaves, dv)])
                gd = torch.autograd.grad(loss, leaves)
                val = fwAD.unpack_dual(loss).primal.detach()
                g = [fwAD.unpack_dual(x).primal.detach() for x in gd]
                hd = [fwAD.unpack_dual(x).tangent for x in gd]
            zero = torch.zeros((), dtype=val.dtype, device=val.device)
            c = sum(((h * t).sum() for h, t in zip(hd, dv) if h is not None), zero)
        elif mode == "shared":
            def f(p: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
                def inner(q: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
                    return torch.func.jvp(self._loss_of, (q,), (dv,))

                (val, _), (_, c) = torch.func.jvp(inner, (p,), (dv,))
                return val, c.detach()

            with forward_mode_safe_ops(self.composite_ops):
                g, (val, c) = torch.func.grad_and_value(f, has_aux=True)(tuple(plist))
        else:
            raise ValueError(f"mode must be 'forward_over_reverse', 'separate' or 'shared', got {mode!r}")
        vals = self._allreduce(torch.stack([val.detach(), c.detach()]))
        return float(vals[0]), self._out(self._flat(g)), float(vals[1])

    # ------------------------------------------------------------------ parameters
    def flat_params(self) -> Any:
        """The snapshot of the trainable parameters as a flat ``(P,)`` array (a copy)."""
        return from_torch(self._flat(self.params))


# --------------------------------------------------------------------------- functional shortcuts
def hessian_operator(model: torch.nn.Module, loss: Any, batch: tuple[Any, Any], **kwargs: Any) -> LinearOperator:
    """``TorchCurvature(model, loss, batch, **kwargs).hessian()``."""
    return TorchCurvature(model, loss, batch, **kwargs).hessian()


def ggn_operator(model: torch.nn.Module, loss: Any, batch: tuple[Any, Any], **kwargs: Any) -> LinearOperator:
    """``TorchCurvature(model, loss, batch, **kwargs).ggn()``."""
    return TorchCurvature(model, loss, batch, **kwargs).ggn()


def fisher_operator(model: torch.nn.Module, loss: Any, batch: tuple[Any, Any], kind: str = "empirical", *,
                    rng: Any = None, mc_samples: int = 1, **kwargs: Any) -> LinearOperator:
    """``TorchCurvature(model, loss, batch, **kwargs).fisher(kind, rng=rng, mc_samples=mc_samples)``."""
    return TorchCurvature(model, loss, batch, **kwargs).fisher(kind, rng=rng, mc_samples=mc_samples)


# --------------------------------------------------------------------------- optimizer wrapper
#: hyperparameters mirrored into ``param_groups`` when the group's transform has them as numbers
_HYPER = ("lr", "momentum", "weight_decay")


def _hyper_of(transform: Transform) -> dict[str, float]:
    out = {}
    for k in _HYPER:
        v = getattr(transform, k, None)
        if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, (bool, np.bool_)):
            out[k] = float(v)
    return out


def _check_hyper_value(gi: int, k: str, v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"param_groups[{gi}][{k!r}] must be a real number, got {type(v).__name__}") from None
    if not math.isfinite(f) or f < 0 or (k == "momentum" and f >= 1):
        want = "in [0, 1)" if k == "momentum" else "finite and >= 0"
        raise ValueError(f"param_groups[{gi}][{k!r}] must be {want}, got {v!r}")
    return f


@contextlib.contextmanager
def _hyper_applied(transform: Transform, group: dict[str, Any], gi: int) -> Iterator[None]:
    """Set the transform's hyperparameters to the group's values for one update, then restore."""
    saved = {}
    try:
        for k in _hyper_of(transform):
            if k in group:
                v = _check_hyper_value(gi, k, group[k])
                saved[k] = getattr(transform, k)
                if v != saved[k]:
                    setattr(transform, k, v)
        yield
    finally:
        for k, v in saved.items():
            setattr(transform, k, v)


def _state_to_tensors(d: dict[str, Any], where: str) -> dict[str, Any]:
    """A transform state dict (NumPy values) as CPU tensors and Python strings (``weights_only`` loadable)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        a = np.asarray(v)
        if a.dtype.kind in "US" and a.ndim == 0:
            out[k] = str(a.item())
            continue
        if a.dtype.kind in "OUSV":
            raise TypeError(f"{where}: state field {k!r} has dtype {a.dtype}, which cannot be stored as a tensor")
        out[k] = torch.from_numpy(np.array(a, copy=True, order="C"))
    return out


def _state_from_tensors(d: dict[str, Any]) -> dict[str, np.ndarray]:
    """Inverse of :func:`_state_to_tensors` (NumPy arrays of the saved dtypes); NumPy values pass."""
    return {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in d.items()}


class CurvlabOptimizer(torch.optim.Optimizer):
    """Any curvlab :class:`~curvlab.methods._transform.Transform` as a ``torch.optim.Optimizer``.

    Each parameter group holds a ``"transform"`` (default: the constructor's)
    and a ``"flat"`` flag. The transform sees the group's parameters and
    gradients as NumPy (CPU) / CuPy (CUDA) arrays that share memory with the
    tensors (DLPack, no copy): a list of per-tensor arrays, or with
    ``flat=True`` one concatenated ``(P,)`` vector (a copy; use it for methods
    whose extras act on flat vectors, e.g. an HVP from :class:`TorchCurvature`).
    Updates are added to the parameters in place.

    Skipped parameters (as torch's optimizers): a parameter with
    ``requires_grad=False`` or ``grad is None`` is not moved (bitwise). The
    transform's state is built on the parameters that have a gradient at the
    group's first step, in group order (the tree or flat vector the transform and
    its extras see); at a later step such a parameter without a gradient gets a zero
    gradient and its update is discarded, and a parameter that was not in the state
    but now has a gradient raises ``ValueError`` (put it in its own param group).
    A group with no gradient at all is skipped.

    Hyperparameters: ``lr``, ``momentum`` and ``weight_decay``, where the
    group's transform has them as numbers, are copied into the group at
    construction and read each step (the transform's attribute is set for that
    update and restored), so ``torch.optim.lr_scheduler`` schedulers work.

    ``step(closure=None, **extras)``: the closure (re-evaluates the loss and
    calls ``backward``) is run first when given; ``extras`` (an HVP or
    curvature callable, ...) go to every group's ``transform.update``; a
    callable ``extras_fn(optimizer, group_index) -> dict`` given to the
    constructor is consulted each step for per-group extras.

    ``state_dict()`` holds only tensors, Python numbers, strings and lists
    (each group's transform state is :meth:`TransformState.to_dict` with its
    arrays as CPU tensors), so ``torch.load(..., weights_only=True)`` (the
    default) reads it back, and ``load_state_dict`` restores the state and the
    groups' hyperparameters exactly: training continues bit for bit.

    Example
    -------
    >>> import torch
    >>> from curvlab.methods.baselines import SGD
    >>> w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    >>> opt = CurvlabOptimizer([w], SGD(lr=0.5))
    >>> opt.param_groups[0]["lr"]
    0.5
    >>> (w ** 2).sum().backward(); _ = opt.step()
    >>> w.detach().tolist()
    [0.0, 0.0, 0.0]
    """

    def __init__(self, params: Any, transform: Transform, *, flat: bool = False,
                 extras_fn: Callable[["CurvlabOptimizer", int], dict[str, Any]] | None = None) -> None:
        if not isinstance(transform, Transform):
            raise TypeError(f"transform must be a curvlab Transform, got {type(transform).__name__}")
        self.extras_fn = extras_fn
        super().__init__(params, {"transform": transform, "flat": bool(flat)})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its transform's ``lr``/``momentum``/``weight_decay`` become group entries."""
        gi = len(self.param_groups)
        tr = param_group.get("transform", self.defaults["transform"])
        if not isinstance(tr, Transform):
            raise TypeError(f"param_groups[{gi}]['transform'] must be a curvlab Transform, got {type(tr).__name__}")
        for k, v in _hyper_of(tr).items():
            param_group[k] = _check_hyper_value(gi, k, param_group.get(k, v))
        super().add_param_group(param_group)

    # -- helpers
    def _state_key(self, group: dict[str, Any]) -> torch.Tensor:
        return group["params"][0]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, **extras: Any) -> Any:  # type: ignore[override]
        """One update of every group; returns the closure's loss (or None)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            ps = group["params"]
            live = {i for i, p in enumerate(ps) if p.requires_grad and p.grad is not None}
            if not live:
                continue
            tr: Transform = group["transform"]
            st = self.state[self._state_key(group)]
            members = st.get("members", sorted(live))
            extra = sorted(live.difference(members))
            if extra:
                raise ValueError(f"param group {gi}: parameters {extra} have a gradient but had none when the "
                                 f"transform state was built (it covers {members}); give them their own param group")
            arrs = [from_torch(ps[i].detach()) for i in members]
            grads = [from_torch(ps[i].grad.detach()) if i in live else backend.get_namespace(a).zeros_like(a)
                     for i, a in zip(members, arrs)]
            if group["flat"]:
                xp = backend.get_namespace(*arrs)
                params, grads = (xp.concatenate([a.reshape(-1) for a in t]) for t in (arrs, grads))
            else:
                params = arrs
            if "transform_state" not in st:
                st["transform_state"] = tr.init(params)
                st["step"] = 0
                st["members"] = list(members)
            kw = dict(extras)
            if self.extras_fn is not None:
                kw.update(self.extras_fn(self, gi))
            with _hyper_applied(tr, group, gi):
                updates, st["transform_state"] = tr.update(grads, st["transform_state"], params, **kw)
            st["step"] += 1
            if group["flat"]:
                u = to_torch(updates)
                off = 0
                ups = []
                for i in members:
                    n = ps[i].numel()
                    ups.append(u[off:off + n])
                    off += n
            else:
                ups = [to_torch(x) for x in updates]
            for i, x in zip(members, ups):
                if i in live:
                    p = ps[i]
                    p.add_(x.reshape(p.shape).to(p.dtype))
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """``{"state": {group_index: {"step", "members", "transform_state"}}, "param_groups": [...]}``.

        ``transform_state`` maps the :meth:`TransformState.to_dict` keys to CPU tensors (0-d
        string fields to ``str``); the groups hold parameter indices, ``flat``, the
        transform's class name and the hyperparameters (Python numbers). Readable by
        ``torch.load(..., weights_only=True)``.
        """
        state: dict[int, Any] = {}
        groups = []
        idx = 0
        for gi, g in enumerate(self.param_groups):
            st = self.state.get(self._state_key(g), {}) if g["params"] else {}
            if "transform_state" in st:
                state[gi] = {"step": int(st["step"]), "members": [int(i) for i in st["members"]],
                             "transform_state": _state_to_tensors(st["transform_state"].to_dict(),
                                                                  f"param group {gi}")}
            n = len(g["params"])
            saved = {k: v for k, v in g.items() if k not in ("params", "transform")
                     and (v is None or isinstance(v, (bool, int, float, str)))}
            saved.update({"params": list(range(idx, idx + n)), "flat": bool(g["flat"]),
                          "transform": type(g["transform"]).__name__})
            groups.append(saved)
            idx += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        """Restore what :meth:`state_dict` saved (group structure must match); older
        dicts holding NumPy arrays are accepted too."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, the optimizer {len(self.param_groups)}")
        for gi, (saved, g) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(g["params"]):
                raise ValueError(f"param group {gi}: state_dict has {len(saved['params'])} params, "
                                 f"the optimizer {len(g['params'])}")
            if saved.get("transform") != type(g["transform"]).__name__:
                raise ValueError(f"param group {gi}: state_dict is for {saved.get('transform')}, "
                                 f"the optimizer uses {type(g['transform']).__name__}")
        for gi, (saved, g) in enumerate(zip(groups, self.param_groups)):
            for k, v in saved.items():
                if k not in ("params", "transform"):
                    g[k] = _check_hyper_value(gi, k, v) if k in _HYPER else v
        for gi, g in enumerate(self.param_groups):
            saved = state_dict["state"].get(gi, state_dict["state"].get(str(gi)))
            if not g["params"]:
                continue
            key = self._state_key(g)
            self.state.pop(key, None)
            if saved is not None:
                xp = np if key.device.type == "cpu" else backend._import_cupy()
                members = [int(i) for i in saved.get("members", range(len(g["params"])))]
                self.state[key] = {"step": int(saved["step"]), "members": members,
                                   "transform_state": g["transform"].load_state(
                                       _state_from_tensors(saved["transform_state"]), xp=xp)}


# --------------------------------------------------------------------------- reference MLP bridge
_ACTIVATIONS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "softplus": torch.nn.Softplus,
                "sigmoid": torch.nn.Sigmoid, "identity": torch.nn.Identity}


def from_reference_mlp(model: Any, params: Any) -> tuple[torch.nn.Sequential, np.ndarray]:
    """The ``nn.Sequential`` twin of a :class:`curvlab.models.mlp.MLP` with weights ``params``.

    Returns ``(net, perm)`` with ``torch_flat = mlp_flat[perm]``: the reference
    layout stores ``W_l`` (bias as its last column) row-major, torch stores
    ``weight`` then ``bias`` per ``nn.Linear``. Hence
    ``H_torch = H_mlp[perm][:, perm]``.

    Example
    -------
    >>> import numpy as np
    >>> from curvlab.models.mlp import MLP
    >>> m = MLP([3, 4, 2]); p = m.init_params(np.random.default_rng(0))
    >>> net, perm = from_reference_mlp(m, p)
    >>> net(torch.zeros(1, 3, dtype=torch.float64)).shape
    torch.Size([1, 2])
    >>> perm[:4].tolist(), perm[12:16].tolist()
    ([0, 1, 2, 4], [3, 7, 11, 15])
    """
    mats = model.layout.unpack(backend.to_numpy(params))
    tdtype = torch.float64 if np.dtype(model.dtype) == np.float64 else torch.float32
    layers: list[torch.nn.Module] = []
    perm: list[np.ndarray] = []
    off = 0
    for l, W in enumerate(mats):
        n, m1 = W.shape
        lin = torch.nn.Linear(m1 - 1, n, dtype=tdtype)
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(np.ascontiguousarray(W[:, :-1])))
            lin.bias.copy_(torch.as_tensor(np.ascontiguousarray(W[:, -1])))
        layers.append(lin)
        if l < len(mats) - 1:
            layers.append(_ACTIVATIONS[model.activation]())
        rows = off + np.arange(n)[:, None] * m1
        perm.append((rows + np.arange(m1 - 1)[None, :]).ravel())
        perm.append(rows[:, 0] + m1 - 1)
        off += n * m1
    return torch.nn.Sequential(*layers), np.concatenate(perm)
