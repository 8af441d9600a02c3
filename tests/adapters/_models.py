"""Small torch models shared by the adapter tests (imported only when torch is present)."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv 3x3 -> BatchNorm (use in eval mode) -> tanh -> linear; input (B, 1, 6, 6)."""

    def __init__(self, n_classes: int = 3, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, dtype=dtype)
        self.bn = nn.BatchNorm2d(2, dtype=dtype)
        self.fc = nn.Linear(2 * 4 * 4, n_classes, dtype=dtype)
        with torch.no_grad():  # non-trivial running statistics and affine parameters
            self.bn.running_mean.copy_(torch.tensor([0.1, -0.2], dtype=dtype))
            self.bn.running_var.copy_(torch.tensor([0.5, 2.0], dtype=dtype))
            self.bn.weight.copy_(torch.tensor([1.3, 0.7], dtype=dtype))
            self.bn.bias.copy_(torch.tensor([0.05, -0.1], dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.bn(self.conv(x))).flatten(1))


class TransformerBlock(nn.Module):
    """Pre-LN block: LayerNorm -> multi-head self-attention (``nn.MultiheadAttention``) ->
    residual -> LayerNorm -> GELU MLP -> residual -> linear head per token.
    Input (B, T, D), output (B, T, C)."""

    def __init__(self, d: int = 4, heads: int = 2, hidden: int = 6, n_classes: int = 3,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d, dtype=dtype)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True, dtype=dtype)
        self.ln2 = nn.LayerNorm(d, dtype=dtype)
        self.mlp = nn.Sequential(nn.Linear(d, hidden, dtype=dtype), nn.GELU(), nn.Linear(hidden, d, dtype=dtype))
        self.head = nn.Linear(d, n_classes, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp(self.ln2(x))
        return self.head(x)


def mlp(sizes: list[int], dtype: torch.dtype = torch.float64) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], dtype=dtype))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class FoldedMLP(nn.Module):
    """tanh MLP in the reference layout: parameter ``W{l}`` of shape (n_l, n_{l-1} + 1),
    bias as the last column, so its parameter list *is* :class:`curvlab.models.mlp.MLP`'s tree."""

    def __init__(self, mats: list) -> None:
        super().__init__()
        self.Ws = nn.ParameterList([nn.Parameter(torch.as_tensor(W).clone()) for W in mats])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, W in enumerate(self.Ws):
            x = x @ W[:, :-1].T + W[:, -1]
            if i < len(self.Ws) - 1:
                x = torch.tanh(x)
        return x


class DigitsCNN(nn.Module):
    """conv 3x3 (1 -> 2) -> BatchNorm (use in eval mode) -> tanh -> linear(2*6*6 -> 10);
    input (B, 1, 8, 8): sklearn's digits. P = 20 + 4 + 730 = 754."""

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, dtype=dtype)
        self.bn = nn.BatchNorm2d(2, dtype=dtype)
        self.fc = nn.Linear(2 * 6 * 6, 10, dtype=dtype)
        with torch.no_grad():
            self.bn.running_mean.copy_(torch.tensor([0.2, -0.1], dtype=dtype))
            self.bn.running_var.copy_(torch.tensor([1.5, 0.8], dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.bn(self.conv(x))).flatten(1))


def digits(n: int | None = None, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 8x8 digits as ``(X (N, 1, 8, 8) scaled to [0, 1], y (N,) int64)``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.as_tensor(d.images[:n] / 16.0, dtype=dtype).unsqueeze(1)
    return X, torch.as_tensor(d.target[:n], dtype=torch.int64)


class ResidualBlock(nn.Module):
    """linear -> tanh -> linear with a skip connection, then a linear head; input (B, d)."""

    def __init__(self, d: int = 3, hidden: int = 4, out: int = 2, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(d, hidden, dtype=dtype), nn.Tanh(), nn.Linear(hidden, d, dtype=dtype))
        self.head = nn.Linear(d, out, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + self.inner(x))


def act_mlp(sizes: list[int], act: type[nn.Module], dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """An MLP with activation ``act`` (e.g. ``nn.SiLU``, ``nn.GELU``) between the layers."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], dtype=dtype))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)
