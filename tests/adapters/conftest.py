"""Adapter tests: one intra-op thread for torch (tiny models; avoids oversubscribed CPUs)."""

try:
    import torch
except ImportError:  # pragma: no cover - torch tests are skipped
    torch = None

if torch is not None:
    torch.set_num_threads(1)
