"""Arrays across the torch boundary: DLPack crossing and the reference MLP's torch twin.

* :func:`to_torch` / :func:`from_torch` — NumPy (CPU) or CuPy (CUDA) arrays as torch
  tensors and back, sharing memory (DLPack, no copy);
* :func:`from_reference_mlp` — the ``nn.Sequential`` twin of a
  :class:`curvlab.models.mlp.MLP` with the same weights, and the permutation between the
  two flat layouts.

Examples
--------
>>> import numpy as np
>>> a = np.zeros(3)
>>> t = to_torch(a); _ = t.add_(1)       # the tensor shares a's memory
>>> a.tolist(), from_torch(t).tolist()
([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ... import backend

__all__ = ["to_torch", "from_torch", "from_reference_mlp"]


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



_ACTIVATIONS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "softplus": torch.nn.Softplus,
                "sigmoid": torch.nn.Sigmoid, "identity": torch.nn.Identity}


def from_reference_mlp(model: Any, params: Any) -> tuple[torch.nn.Sequential, np.ndarray]:
    """The ``nn.Sequential`` twin of a :class:`curvlab.models.mlp.MLP` with weights ``params``.

    Returns ``(net, perm)`` with ``torch_flat = mlp_flat[perm]``: the reference
    layout stores ``W_l`` (bias as its last column) row-major, torch stores
    ``weight`` then ``bias`` per ``nn.Linear``. Hence
    ``H_torch = H_mlp[perm][:, perm]``.

    Examples
    --------
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
