"""Per-layer Hessian factors of a torch model's ``nn.Linear`` layers (``layer_structure()``).

For every ``torch.nn.Linear`` ``z = W a + b`` whose weight is a trainable parameter of a
:class:`~curvlab.adapters.torch.TorchCurvature`, on the bound batch of ``B`` samples:

* ``inputs`` ``a_b`` ``(B, n)``: the layer's input, captured by a forward hook;
* ``output_grads`` ``δ_b = ∂ℓ_b/∂z_b`` ``(B, m)``;
* ``output_hessians`` ``M_b = ∂²ℓ_b/∂z_b²`` ``(B, m, m)``, by second-order backpropagation
  through the rest of the network (σ'' terms and every layer above included).

How: a forward hook adds a zero perturbation ``ε`` ``(B, m)`` (requiring grad) to each
layer's output; with ``L`` the bound (mean) loss and ``ℓ_b`` the loss of sample ``b``,
``B·L = Σ_b ℓ_b``, so ``δ = ∂(B·L)/∂ε`` (one backward, graph kept) and, because sample ``b``'s
loss depends on ``ε_b`` only, ``M_b[i, :] = ∂(Σ_b δ_b[i])/∂ε_b``: ``m`` double-backward passes,
batched over the basis vectors ``e_i`` (``is_grads_batched``; a loop where an op has no
batching rule). The double backward only runs through the layers *above* each Linear. This
is the per-sample factorisation of arXiv 2104.03804 (the block ``(1/B) Σ_b M_b ⊗ ã_b ã_bᵀ``,
``ã = [a; 1]``, is the layer's exact block of the loss Hessian).

Requirements, each refused with :class:`~curvlab.sources.LayerStructureUnavailable` naming the
layer: the layer's input is 2-D ``(B, n)`` with ``B`` the batch size (a Linear on a sequence
``(B, T, n)`` is not a per-sample outer product), the layer runs once per forward (a shared
layer sums several factor pairs), and no module couples the samples (BatchNorm in training
mode). The loss must be the mean over axis 0 of per-sample losses (built-in losses are; a
callable loss is checked once: the mean of its values on the single samples must equal its
value on the batch, else ``ValueError``). Linear layers whose weight is frozen (not in the
layout) are skipped (their trainable bias goes to a method's fallback); a layer the forward
never calls is left out of the records here (the adapter gives it zero factors). Records are in the model's dtype (float32 models: float32 ``M``; methods cast to
float64 afterwards).

Cost: one forward, one backward with ``create_graph``, and per layer one batched double
backward over ``m`` basis vectors through the layers above it; memory ``O(B Σ m_l²)`` for the
``M`` plus ``m`` copies of the upper network's activations during the batched pass.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch

from ...sources import LayerStructureUnavailable

__all__ = ["linear_layer_records", "find_linear_layers"]


def find_linear_layers(model: torch.nn.Module, names: list[str]) -> list[tuple[str, torch.nn.Linear, str, str | None]]:
    """``(module name, module, weight layout name, bias layout name or None)`` for every
    ``nn.Linear`` of ``model`` whose weight is in the layout ``names`` (``named_modules`` order)."""
    have = set(names)
    out = []
    for mname, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        prefix = f"{mname}." if mname else ""
        w = prefix + "weight"
        if w not in have:
            continue
        b = prefix + "bias"
        out.append((mname, mod, w, b if (mod.bias is not None and b in have) else None))
    return out


def _check_coupling(model: torch.nn.Module) -> None:
    for mname, m in model.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training:
            raise LayerStructureUnavailable(
                f"layer_structure(): module {mname or type(m).__name__!r} (BatchNorm) is in training mode, which "
                "couples the samples: the loss is not a sum of per-sample losses, so the per-sample factors "
                "M_b ⊗ a_b a_bᵀ do not exist; call model.eval()")


def _check_mean_loss(loss_fn: Callable[[Any, Any], Any], z: torch.Tensor, y: torch.Tensor, L: torch.Tensor) -> None:
    """A callable loss must be the mean of per-sample losses (one host sync)."""
    B = z.shape[0]
    with torch.no_grad():
        per = torch.stack([loss_fn(z[b:b + 1], y[b:b + 1]) for b in range(B)])
        mean = per.mean()
    tol = 1e-10 if z.dtype == torch.float64 else 1e-4
    if not bool(torch.isclose(mean, L.detach(), rtol=tol, atol=tol * (1 + float(per.abs().max())))):
        raise ValueError(
            f"layer_structure() needs the loss to be the mean over the batch (axis 0) of per-sample losses: the "
            f"loss on the batch is {float(L):.6g} but the mean of its values on the single samples is "
            f"{float(mean):.6g} (a sum reduction, or a loss coupling the samples?)")


def linear_layer_records(model: torch.nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
                         loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], X: torch.Tensor,
                         y: torch.Tensor, layers: list[tuple[str, torch.nn.Linear, str, str | None]], *,
                         check_loss: bool = False, context: Any = None
                         ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``{module name: (a (B, n), δ (B, m), M (B, m, m))}`` for the ``layers`` the forward
    pass calls, on the batch ``(X, y)``.

    ``forward(X)`` runs ``model`` (for example through ``functional_call`` with the bound
    parameters) so that its modules' forward hooks fire; ``loss_fn(outputs, y)`` is the batch
    mean. ``check_loss``: verify that the loss is a mean of per-sample losses (callables).
    ``context``: a zero-argument callable returning a context manager entered around the
    forward and the backward passes (safe ops). Detached tensors in
    the model's dtype and device. See the module docstring for the method and what is refused.
    """
    _check_coupling(model)
    B = int(X.shape[0])
    calls: dict[str, int] = {n: 0 for n, *_ in layers}
    inputs: dict[str, torch.Tensor] = {}
    eps: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Callable[..., Any]:
        label = name or "<model>"

        def hook(_mod: torch.nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
            calls[name] += 1
            if calls[name] > 1:
                raise LayerStructureUnavailable(
                    f"layer_structure(): the Linear layer {label!r} runs more than once per forward pass (a "
                    "shared layer): its Hessian block is a sum over its uses, not one per-sample factor pair")
            a = args[0]
            if a.ndim != 2 or a.shape[0] != B:
                raise LayerStructureUnavailable(
                    f"layer_structure(): the Linear layer {label!r} gets an input of shape {tuple(a.shape)}, not "
                    f"(B, n) = ({B}, n) with one row per sample (a Linear on a sequence or on merged samples): its "
                    "Hessian block is not a per-sample Kronecker product M_b ⊗ a_b a_bᵀ")
            inputs[name] = a.detach()
            e = torch.zeros_like(out, requires_grad=True)
            eps[name] = e
            return out + e

        return hook

    handles = [mod.register_forward_hook(hook_for(n)) for n, mod, *_ in layers]
    ctx = context if context is not None else contextlib.nullcontext
    try:
        with ctx(), torch.enable_grad():
            z = forward(X)
            L = loss_fn(z, y)
    finally:
        for h in handles:
            h.remove()
    with ctx(), torch.enable_grad():
        if check_loss:
            _check_mean_loss(loss_fn, z.detach(), y, L)
        called = [n for n, *_ in layers if n in eps]
        if not called:
            return {}
        grads = torch.autograd.grad(L * B, [eps[n] for n in called], create_graph=True, allow_unused=True)
        out: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for n, g in zip(called, grads):
            e = eps[n]
            m = e.shape[1]
            if g is None:  # the loss does not depend on this layer's output
                g = torch.zeros_like(e)
            if not g.requires_grad:  # the loss is linear in this output: M = 0
                M = torch.zeros((B, m, m), dtype=e.dtype, device=e.device)
            else:
                basis = torch.eye(m, dtype=e.dtype, device=e.device).unsqueeze(1).expand(m, B, m)
                try:
                    R = torch.autograd.grad(g, e, grad_outputs=basis, retain_graph=True, allow_unused=True,
                                            is_grads_batched=True)[0]
                    if R is None:
                        R = torch.zeros((m, B, m), dtype=e.dtype, device=e.device)
                except RuntimeError:  # an op without a batching rule: one basis vector at a time
                    rows = []
                    for i in range(m):
                        r = torch.autograd.grad(g, e, grad_outputs=basis[i], retain_graph=True, allow_unused=True)[0]
                        rows.append(torch.zeros_like(e) if r is None else r)
                    R = torch.stack(rows)
                M = R.detach().permute(1, 0, 2)  # M[b, i, j] = ∂δ_b[i]/∂z_b[j]
                M = 0.5 * (M + M.transpose(1, 2))  # exact symmetry (equal up to rounding)
            out[n] = (inputs[n], g.detach(), M.contiguous())
    return out
