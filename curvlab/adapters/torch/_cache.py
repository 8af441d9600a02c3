"""The product cache of :class:`~curvlab.adapters.torch.TorchCurvature` (issue 14).

What an operator product needs besides the vector — the gradient's differentiable graph
(``create_graph=True``) for ``H v``, the outputs ``z`` with their graph and the graph of
``u -> Jᵀ u`` for ``J v`` (the double-vjp trick) for the GGN and the Fisher kinds — is built
at the first product on each batch and kept, batch by batch in data order, while the
byte bound ``cache_bytes`` allows (a prefix of the dataset); later batches are recomputed
at every product. The bytes are counted honestly: every storage autograd saves during the
build (``torch.autograd.graph.saved_tensors_hooks``) and every tensor the entry holds,
each storage once, the parameters' own storages excepted (the source holds them anyway).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from ...sources import DEFAULT_CACHE_BYTES, check_cache_bytes

__all__ = ["check_cache_bytes", "SavedBytes", "CacheEntry", "ProductCache", "DEFAULT_CACHE_BYTES"]


def _storage_key(t: torch.Tensor) -> tuple[int, int] | None:
    try:
        s = t.untyped_storage()
        return s.data_ptr(), s.nbytes()
    except Exception:  # a tensor without a plain storage (a functorch wrapper, sparse): not counted
        return None


class SavedBytes:
    """Context counting the bytes autograd saves for backward while it is active (each
    storage once), plus tensors added with :meth:`add`; ``exclude``'s storages are not
    counted. The pack hook returns ``t.detach()`` (same storage; autograd restores the
    graph metadata on unpack), which avoids the reference cycle an identity hook makes on
    saved outputs."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._skip = {k[0] for k in map(_storage_key, exclude) if k is not None}
        self._seen: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.add(t)
        return t.detach()

    def add(self, *tensors: Any) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                k = _storage_key(t)
                if k is not None and k[0] and k[0] not in self._skip:
                    self._seen[k[0]] = max(self._seen.get(k[0], 0), k[1])

    @property
    def bytes(self) -> int:
        return sum(self._seen.values())

    def __enter__(self) -> "SavedBytes":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)


@dataclass
class CacheEntry:
    """One batch's vector-independent part of a product (``payload``), with the batch it
    was built on (checked at reuse) and its size in bytes."""

    X: torch.Tensor
    y: torch.Tensor
    payload: tuple[Any, ...]
    nbytes: int


@dataclass
class ProductCache:
    """Entries by ``(kind, batch index)``, at most ``limit`` bytes in all (None: no bound).

    ``kind``: ``"H"`` (the gradient's graph) or ``"J"`` (the outputs' graph and that of
    ``Jᵀ``). Each kind caches a prefix of the batches: the first entry that does not fit
    closes the kind (it is used for its product, then dropped), so the later batches are
    recomputed at every product. A kind whose build or cached product raised an autograd
    error (an op without a double backward) is marked failed and never built again.
    """

    limit: int | None
    entries: dict[tuple[str, int], CacheEntry] = field(default_factory=dict)
    bytes: int = 0
    closed: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    seen: int = 0  # batches met by cached products so far (the count of a stream's pass)

    def may_build(self, kind: str) -> bool:
        return self.limit != 0 and kind not in self.closed and kind not in self.failed

    def lookup(self, kind: str, i: int, X: torch.Tensor, y: torch.Tensor) -> CacheEntry | None:
        """The entry of batch ``i`` if it was built on this batch (the same tensors, or
        equal ones: a stream yields fresh tensors at every pass); a stale one is dropped."""
        e = self.entries.get((kind, i))
        if e is None:
            return None
        if (e.X is X and e.y is y) or (e.X.shape == X.shape and e.y.shape == y.shape and e.X.dtype == X.dtype
                                       and e.y.dtype == y.dtype and bool(torch.equal(e.X, X))
                                       and bool(torch.equal(e.y, y))):
            return e
        self.drop(kind, i)
        return None

    def offer(self, kind: str, i: int, entry: CacheEntry) -> bool:
        """Keep ``entry`` if it fits the bound; otherwise close ``kind`` (prefix ends here)."""
        if self.limit is None or self.bytes + entry.nbytes <= self.limit:
            self.entries[(kind, i)] = entry
            self.bytes += entry.nbytes
            return True
        self.closed.add(kind)
        return False

    def drop(self, kind: str, i: int) -> None:
        e = self.entries.pop((kind, i), None)
        if e is not None:
            self.bytes -= e.nbytes

    def fail(self, kind: str) -> None:
        self.failed.add(kind)
        for key in [k for k in self.entries if k[0] == kind]:
            self.drop(*key)

    def info(self, batches: int) -> dict[str, Any]:
        return {"bytes": int(self.bytes), "batches_cached": len({i for _, i in self.entries}),
                "batches": int(batches), "limit": self.limit}
