"""Second-order Taylor mode (jets) for ``dᵀHd`` forward-only (arXiv 2210.14520, Taylor mode).

Every value of the model's forward pass at ``θ + t d`` is carried as a jet
``(x0, x1, x2)`` = the value and its first and second derivatives in ``t`` at 0 (``None``
for a zero coefficient). The loss's second coefficient is ``d²/dt² L(θ + t d) = dᵀHd``
and its first ``gᵀd``. Nested forward mode (``jvp`` of ``jvp``) carries four coefficients,
two of them equal; a jet carries three: a dense layer ``W x`` costs ``W x0``, ``W x1 + D
x0``, ``W x2 + 2 D x1`` — 5 matmuls (2 on the first layer, whose input has no tangent)
against nested forward mode's 8–9, and nothing is stored for a backward pass.

The model is traced once with ``torch.fx.symbolic_trace``; ``nn.Linear``, ``nn.ConvNd``
(zero padding) and ``nn.Tanh`` / ``torch.tanh`` have jet rules; every other node (the loss,
pooling, normalisation, reshapes, any function) is propagated exactly by nested ``jvp`` on
that node alone (``f(x0)``, ``f'(x0) x1``, ``f'(x0) x2 + f''(x0)[x1, x1]``). A model that
does not trace (data-dependent control flow), has module hooks or returns a non-tensor
raises :class:`TaylorUnavailable` and the caller uses nested forward mode.
"""

from __future__ import annotations

import operator
import threading
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

__all__ = ["TaylorUnavailable", "trace_model", "taylor_loss"]

Jet = tuple[Any, Any, Any]

#: held while ``trace_model`` replaces ``torch.autograd.Function.apply``
_TRACE_LOCK = threading.Lock()


class TaylorUnavailable(RuntimeError):
    """The jet interpreter cannot run this model (the caller falls back to nested jvp)."""


def _has_hooks(model: nn.Module) -> bool:
    for m in model.modules():
        if m._forward_hooks or m._forward_pre_hooks or getattr(m, "_backward_hooks", None):
            return True
    return False


def trace_model(model: nn.Module) -> fx.GraphModule:
    """``model`` traced by ``torch.fx`` (raises :class:`TaylorUnavailable` when it cannot be)."""
    if _has_hooks(model):
        raise TaylorUnavailable("the model has forward hooks (torch.fx would drop them)")
    tracer = threading.get_ident()
    descriptor: Any = None  # the original classmethod, read under the lock

    def refuse(cls: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != tracer:  # another thread's Function runs as usual meanwhile
            return descriptor.__func__(cls, *args, **kwargs)
        # fx would inline the Function's forward and lose its custom derivative rules
        raise TaylorUnavailable(f"the model calls the custom autograd.Function {cls.__name__}")

    with _TRACE_LOCK:  # one patch at a time: a second tracing thread never restores the wrong apply
        descriptor = torch.autograd.Function.__dict__["apply"]
        try:
            setattr(torch.autograd.Function, "apply", classmethod(refuse))
            return fx.symbolic_trace(model)
        except TaylorUnavailable:
            raise
        except Exception as e:  # data-dependent control flow, unsupported Python
            raise TaylorUnavailable(f"torch.fx cannot trace the model ({type(e).__name__})") from e
        finally:
            setattr(torch.autograd.Function, "apply", descriptor)


def _is_jet(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 3 and isinstance(x[0], torch.Tensor) and getattr(x, "_jet", False)


class _J(tuple):  # a jet: a tagged 3-tuple, so plain tuples in args (shapes) are left alone
    _jet = True


def _jet(x0: Any, x1: Any = None, x2: Any = None) -> _J:
    return _J((x0, x1, x2))


def _active(j: Any) -> bool:
    return _is_jet(j) and (j[1] is not None or j[2] is not None)


def _map(fn: Callable[[Any], Any], tree: Any) -> Any:
    if _is_jet(tree):
        return fn(tree)
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map(fn, t) for t in tree) if not hasattr(tree, "_fields") else \
            type(tree)(*(_map(fn, t) for t in tree))
    if isinstance(tree, dict):
        return {k: _map(fn, v) for k, v in tree.items()}
    return tree


def _generic(f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``f(*args, **kwargs)`` on jets by nested ``jvp`` of this one node."""
    slots: list[Any] = []

    def collect(j: Any) -> Any:
        if _active(j):
            slots.append(j)
            return ("__jet__", len(slots) - 1)
        return j[0]

    a = _map(collect, args)
    k = _map(collect, kwargs)
    if not slots:
        out = f(*a, **k)
        return _jet(out) if isinstance(out, torch.Tensor) else out

    def fill(xs: tuple[torch.Tensor, ...], tree: Any) -> Any:
        if isinstance(tree, tuple) and len(tree) == 2 and tree[0] == "__jet__" and isinstance(tree[1], int):
            return xs[tree[1]]
        if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
            return type(tree)(fill(xs, t) for t in tree)
        if isinstance(tree, dict):
            return {kk: fill(xs, v) for kk, v in tree.items()}
        return tree

    def g(*xs: torch.Tensor) -> torch.Tensor:
        out = f(*fill(xs, a), **fill(xs, k))
        if not isinstance(out, torch.Tensor):
            raise _NotTensor(out)
        return out

    x0 = tuple(j[0] for j in slots)
    x1 = tuple(torch.zeros_like(j[0]) if j[1] is None else j[1] for j in slots)
    x2 = tuple(torch.zeros_like(j[0]) if j[2] is None else j[2] for j in slots)

    def first(xs: tuple[torch.Tensor, ...], us: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        y0, y1 = torch.func.jvp(g, xs, us)[:2]
        return y0, y1

    try:
        (y0, y1), (_, y2) = torch.func.jvp(first, (x0, x1), (x1, x2))[:2]
    except _NotTensor:  # x.size(0), x.dim(), ...: no t-dependence
        out = f(*fill(x0, a), **fill(x0, k))
        if any(isinstance(o, torch.Tensor) for o in (out if isinstance(out, (tuple, list)) else ())):
            raise TaylorUnavailable(f"{getattr(f, '__name__', f)} returns several tensors") from None
        return out
    return _jet(y0, y1, y2)


class _NotTensor(Exception):
    pass


def _add(a: Any, b: Any) -> Any:
    return b if a is None else (a if b is None else a + b)


def _bilinear(op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: Jet, w: Jet) -> _J:
    """``op(x, w)`` bilinear: ``y1 = op(x1, w0) + op(x0, w1)``, ``y2 = op(x2, w0) + 2 op(x1, w1) + op(x0, w2)``."""
    x0, x1, x2 = x
    w0, w1, w2 = w
    y0 = op(x0, w0)
    y1 = _add(None if x1 is None else op(x1, w0), None if w1 is None else op(x0, w1))
    y2 = _add(None if x2 is None else op(x2, w0), None if w2 is None else op(x0, w2))
    if x1 is not None and w1 is not None:
        cross = op(x1, w1)
        y2 = cross.mul_(2) if y2 is None else y2.add_(cross, alpha=2)  # y2 is a fresh tensor here
    return _jet(y0, y1, y2)


def _linear_op(op: Callable[[torch.Tensor], Any], x: Jet) -> _J:
    """An op linear in its tensor (pooling, reshapes): applied to every coefficient."""
    return _jet(op(x[0]), None if x[1] is None else op(x[1]), None if x[2] is None else op(x[2]))


def _relu(x: Jet) -> _J:
    m = x[0] > 0
    return _jet(torch.relu(x[0]), None if x[1] is None else x[1] * m, None if x[2] is None else x[2] * m)


def _batch_norm_eval(mod: Any, x: Jet, own: dict[str, Jet | None]) -> _J:
    """Eval-mode BatchNorm ``x s + t``: ``s = w / sqrt(var + eps)``, ``t = b - mean s`` (linear in w, b)."""
    r = torch.rsqrt(mod.running_var + mod.eps)
    w = own.get("weight") or (_jet(mod.weight) if mod.weight is not None else _jet(torch.ones_like(r)))
    b = own.get("bias") or (_jet(mod.bias) if mod.bias is not None else _jet(torch.zeros_like(r)))
    shape = (1, -1) + (1,) * (x[0].ndim - 2)
    sj = _jet(*(None if c is None else (c * r).reshape(shape) for c in w))
    tj = _jet(*(None if c is None else c.reshape(shape) for c in (
        b[0] - mod.running_mean * r * w[0], _add(b[1], None if w[1] is None else -mod.running_mean * r * w[1]), None)))
    y = _bilinear(torch.mul, x, sj)
    return _jet(y[0] + tj[0], _add(y[1], tj[1]), y[2])


def _plus_bias(y: _J, b: Jet | None, shape: tuple[int, ...]) -> _J:
    if b is None:
        return y
    return _jet(y[0] + b[0].reshape(shape), _add(y[1], None if b[1] is None else b[1].reshape(shape)),
                _add(y[2], None if b[2] is None else b[2].reshape(shape)))


def _tanh(x: Jet) -> _J:
    t = torch.tanh(x[0])
    if x[1] is None and x[2] is None:
        return _jet(t)
    s = torch.addcmul(torch.ones_like(t), t, t, value=-1)  # 1 - t²
    y1 = None if x[1] is None else s * x[1]
    y2 = None if x[2] is None else s * x[2]
    if x[1] is not None:
        q = (x[1] * x[1]).mul_(t).mul_(s)  # σ''(x0) x1² = -2 t s x1²
        y2 = q.mul_(-2) if y2 is None else y2.add_(q, alpha=-2)
    return _jet(t, y1, y2)


_LINEAR_METHODS = ("view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze")
_CONV: dict[type, Any] = {nn.Conv1d: F.conv1d, nn.Conv2d: F.conv2d, nn.Conv3d: F.conv3d}


def taylor_loss(gm: fx.GraphModule, params: dict[str, torch.Tensor], tangents: dict[str, torch.Tensor],
                X: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor]) -> Jet:
    """``(L, gᵀd, dᵀHd)`` of ``loss(model(X))`` at ``params + t tangents`` by jets (no graph).

    ``params``/``tangents``: by ``named_parameters`` names (the trainable ones); other
    parameters and buffers are read from the module.
    """
    env: dict[fx.Node, Any] = {}
    last: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        for a in node.all_input_nodes:
            last[a] = node
    frees: dict[fx.Node, list[fx.Node]] = {}
    for a, user in last.items():
        frees.setdefault(user, []).append(a)

    def param(name: str) -> Jet | None:
        if name in params:
            return _jet(params[name], tangents.get(name), None)
        return None

    def load(n: Any) -> Any:
        return fx.node.map_arg(n, lambda m: env[m])

    out: Any = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = _jet(X)
        elif node.op == "get_attr":
            p = param(node.target)
            env[node] = p if p is not None else _attr(gm, node.target)
        elif node.op == "call_module":
            env[node] = _module(gm, node, load(node.args), load(node.kwargs), param)
        elif node.op in ("call_function", "call_method"):
            args, kwargs = load(node.args), load(node.kwargs)
            if node.op == "call_function" and node.target is torch.tanh and len(args) == 1 and not kwargs:
                env[node] = _tanh(args[0])
            elif node.op == "call_function" and node.target in (torch.relu, F.relu) and len(args) == 1 \
                    and not kwargs and _is_jet(args[0]):
                env[node] = _relu(args[0])
            elif node.op == "call_method" and node.target in _LINEAR_METHODS and args and _is_jet(args[0]) \
                    and not any(_is_jet(a) for a in args[1:]) and not any(_is_jet(v) for v in kwargs.values()):
                method, rest = node.target, args[1:]
                env[node] = _linear_op(lambda t: getattr(t, method)(*rest, **kwargs), args[0])
            elif node.op == "call_function" and node.target in (operator.add, torch.add) and len(args) == 2 \
                    and not kwargs and all(_is_jet(a) for a in args):
                a0, a1 = args
                env[node] = _jet(a0[0] + a1[0], _add(a0[1], a1[1]), _add(a0[2], a1[2]))
            elif node.op == "call_function":
                env[node] = _generic(node.target, args, kwargs)
            else:
                method = node.target
                env[node] = _generic(lambda self_, *a, **k: getattr(self_, method)(*a, **k), args, kwargs)
        elif node.op == "output":
            out = load(node.args[0])
        for a in frees.get(node, ()):
            env.pop(a, None)  # free what no later node reads
    if not _is_jet(out):
        raise TaylorUnavailable("the model must return one tensor")
    return _generic(loss, (out,), {})


def _attr(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return _jet(obj) if isinstance(obj, torch.Tensor) else obj


def _module(gm: fx.GraphModule, node: fx.Node, args: tuple[Any, ...], kwargs: dict[str, Any],
            param: Callable[[str], Jet | None]) -> Any:
    mod: Any = gm.get_submodule(str(node.target))
    prefix = f"{node.target}."
    own = {n: param(prefix + n) for n, _ in mod.named_parameters()}
    if not kwargs and len(args) == 1 and _is_jet(args[0]):
        x = args[0]
        w = own.get("weight")
        if isinstance(mod, nn.Linear) and w is not None:
            y = _bilinear(lambda a, b: F.linear(a, b), x, w)
            b = own.get("bias") if mod.bias is not None else None
            if mod.bias is not None and b is None:
                b = _jet(mod.bias)
            return _plus_bias(y, b, (-1,))
        conv: Any = _CONV.get(type(mod))
        if conv is not None and mod.padding_mode == "zeros" and w is not None:
            st, pad, dil, grp = mod.stride, mod.padding, mod.dilation, mod.groups
            y = _bilinear(lambda a, b: conv(a, b, None, st, pad, dil, grp), x, w)
            b = own.get("bias") if mod.bias is not None else None
            if mod.bias is not None and b is None:
                b = _jet(mod.bias)
            return _plus_bias(y, b, (1, -1) + (1,) * (x[0].ndim - 2))
        if isinstance(mod, nn.Tanh):
            return _tanh(x)
        if isinstance(mod, nn.ReLU):
            return _relu(x)
        if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.Flatten, nn.Identity)) or (
                isinstance(mod, nn.Dropout) and not mod.training):
            return _linear_op(mod, x)
        if (isinstance(mod, nn.modules.batchnorm._BatchNorm) and not mod.training and mod.track_running_stats
                and mod.running_mean is not None):
            return _batch_norm_eval(mod, x, own)
    # any other module: its trainable parameters are jet inputs of one nested-jvp node
    names = [n for n, j in own.items() if j is not None]
    pj = [own[n] for n in names]

    def call(*a: Any, __ps: Any = None, **k: Any) -> Any:
        return torch.func.functional_call(mod, dict(zip(names, __ps)), a, k)

    def f(*a: Any, **k: Any) -> Any:
        ps = a[len(a) - len(names):] if names else ()
        return call(*a[:len(a) - len(names)], __ps=ps, **k)

    return _generic(f, tuple(args) + tuple(pj), kwargs)
