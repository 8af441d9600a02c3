"""Forward-AD-safe replacements of fused ``torch.nn.functional`` kernels.

:func:`forward_mode_safe_ops` swaps ``layer_norm``, ``batch_norm``, ``instance_norm``,
``group_norm``, ``scaled_dot_product_attention``, ``mse_loss``, ``silu`` and ``mish`` for compositions of elementary ops (same values) whose
nested forward mode and double backward are right in torch 2.13.

Examples
--------
>>> import torch
>>> import torch.nn.functional as F
>>> x = torch.randn(2, 4, dtype=torch.float64)
>>> with forward_mode_safe_ops():
...     y = F.layer_norm(x, (4,))
>>> bool(torch.allclose(y, F.layer_norm(x, (4,))))
True
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch
import torch.nn.functional as F

__all__ = ["forward_mode_safe_ops", "safe_callable"]


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
        # eval mode is a per-channel affine map x * s + t: the scale and shift are folded on
        # the (C,) vectors, so the (B, C, ...) tensor sees one multiply and one add (the
        # stored graphs of issue 14's cached products hold and differentiate half as much)
        shape = (1, -1) + (1,) * (input.ndim - 2)
        s = torch.rsqrt(running_var + eps)
        if weight is not None:
            s = s * weight
        t = -running_mean * s
        if bias is not None:
            t = t + bias
        return input * s.reshape(shape) + t.reshape(shape)
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


_ORIGINAL_MSE = F.mse_loss
_ORIGINAL_SILU = F.silu


def _mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):  # noqa: ANN001, ANN202
    # the fused kernel's forward-mode rule writes into a ZeroTensor when the target has no
    # tangent ("ZeroTensors are immutable", torch 2.13): the textbook formula instead
    if weight is not None or not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor):
        return _ORIGINAL_MSE(input, target, size_average, reduce, reduction, weight=weight)
    if size_average is not None or reduce is not None:
        from torch.nn import _reduction  # noqa: PLC0415

        reduction = _reduction.legacy_get_string(size_average, reduce)
    if input.shape != target.shape:  # same broadcasting (and warning) as the original
        _ORIGINAL_MSE(input.detach(), target.detach(), reduction=reduction)
    diff = input - target
    sq = diff * diff
    if reduction == "mean":
        return sq.mean()
    if reduction == "sum":
        return sq.sum()
    if reduction == "none":
        return sq
    raise ValueError(f"{reduction} is not a valid value for reduction")


def _silu(input, inplace=False):  # noqa: ANN001, ANN202
    # silu_backward has no forward-mode rule in torch 2.13 (H v, dᵀHd raise NotImplementedError)
    if inplace:
        return _ORIGINAL_SILU(input, inplace=True)
    return input * torch.sigmoid(input)


_ORIGINAL_MISH = F.mish


def _mish(input, inplace=False):  # noqa: ANN001, ANN202
    # mish_backward has no forward-mode rule in torch 2.13
    if inplace:
        return _ORIGINAL_MISH(input, inplace=True)
    return input * torch.tanh(F.softplus(input))


def _group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):  # noqa: ANN001, ANN202
    # native_group_norm has no forward-mode rule in torch 2.13
    N, C = input.shape[0], input.shape[1]
    if C % num_groups:
        raise RuntimeError(f"Expected number of channels in input to be divisible by num_groups, but got input of "
                           f"shape {tuple(input.shape)} and num_groups={num_groups}")
    out = _normalize_over(input.reshape(N, num_groups, -1), (2,), eps).reshape(input.shape)
    return _affine_channels(out, weight, bias)


_COMPOSITES = {"layer_norm": _layer_norm, "batch_norm": _batch_norm, "instance_norm": _instance_norm,
               "group_norm": _group_norm, "scaled_dot_product_attention": _sdpa, "mse_loss": _mse_loss,
               "silu": _silu, "mish": _mish}


@contextlib.contextmanager
def forward_mode_safe_ops(enabled: bool = True) -> Iterator[None]:
    """Swap a few fused ``torch.nn.functional`` kernels for compositions of elementary ops.

    In torch 2.13 nested forward mode (``jvp`` of ``jvp``) is wrong for the
    fused ``layer_norm`` and training-mode ``batch_norm``/``instance_norm``
    kernels, and the CPU flash-attention kernel behind
    ``scaled_dot_product_attention`` (used by ``nn.MultiheadAttention``) has no
    forward-mode rule at all (nor a double backward); ``silu``'s backward has no forward-mode
    rule (nor have ``mish_backward`` and ``native_group_norm``) and ``mse_loss``'s forward-over-reverse writes into an immutable ZeroTensor. Inside this context those functions are the
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


def safe_callable(fn: Any) -> Any:
    """``fn``, or its forward-AD-safe composite when ``fn`` *is* one of the swapped
    ``torch.nn.functional`` functions passed by reference (``loss=F.mse_loss``: the
    module-attribute swap of :func:`forward_mode_safe_ops` cannot reach a reference taken
    before it)."""
    return {_ORIGINAL_MSE: _mse_loss, _ORIGINAL_SILU: _silu, _ORIGINAL_MISH: _mish}.get(fn, fn)

