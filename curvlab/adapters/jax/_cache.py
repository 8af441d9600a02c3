"""The product cache of :class:`curvlab.adapters.jax.JaxCurvature` (issue 14, target 1).

What a Hessian / GGN / Fisher product on one batch needs besides the vector -- the
residuals of ``jax.linearize`` of the gradient (Hessian, forward-over-reverse), of
``jax.vjp`` of the gradient (Hessian, reverse-over-reverse) or of ``jax.linearize`` of the
model output and of the loss gradient in the output (GGN and the Fisher kinds) -- is a
pytree of arrays (a :class:`jax.tree_util.Partial`). :class:`ProductCache` keeps these
pytrees per *kind* and per batch position, in pass order, while their total size stays
within ``limit`` bytes: a prefix of the batches is cached, the others are recomputed at
every product. The contract (names, semantics) is shared with the torch adapter and the
reference MLP: ``cache_bytes`` on the constructor, ``cache_info()`` on the source.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from ...sources import DEFAULT_CACHE_BYTES, check_cache_bytes

__all__ = ["DEFAULT_CACHE_BYTES", "ProductCache", "check_cache_bytes", "tree_nbytes"]


def _same_batch(X0: Any, y0: Any, X: Any, y: Any) -> bool:
    """Whether ``(X, y)`` is the batch ``(X0, y0)``: the same arrays (a list of batches, no
    sync), or equal shapes, dtypes and values (a stream's fresh arrays; one host sync)."""
    if X is X0 and y is y0:
        return True
    if X.shape != X0.shape or y.shape != y0.shape or X.dtype != X0.dtype or y.dtype != y0.dtype:
        return False
    return bool(jax.numpy.array_equal(X, X0)) and bool(jax.numpy.array_equal(y, y0))


def tree_nbytes(tree: Any) -> int:
    """Bytes held by the array leaves of ``tree`` (arrays or ``jax.ShapeDtypeStruct``; the
    logical size: a sharded array counts once)."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        shape = getattr(leaf, "shape", None)
        if shape is None:
            continue
        total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


class ProductCache:
    """Per-kind, per-batch residual pytrees of one source, within ``limit`` bytes in total.

    A kind's batches are cached in pass order: batch ``i`` is kept only after batches
    ``0..i-1`` and only while the total stays within ``limit``; the first batch that does
    not fit closes the kind (it and every later batch are recomputed at each product),
    so a product never errs for lack of room. ``limit=0`` caches nothing; ``None`` has
    no bound. The object is owned by one source: :meth:`JaxCurvature.at` gives the new
    source a fresh one, and an operator keeps the cache of the source that built it.
    """

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.entries: dict[str, list[Any]] = {}
        self.batches_of: dict[str, list[tuple[Any, Any, int]]] = {}  # (X, y, bytes) each entry was built on
        self.closed: set[str] = set()
        self.bytes = 0
        self.batches_seen = 0

    def lookup(self, kind: str, i: int, X: Any, y: Any, build: Callable[[], Any],
               nbytes: Callable[[], int]) -> Any | None:
        """The cached residuals of ``kind`` on batch ``i`` = ``(X, y)``, built now by
        ``build()`` when batch ``i`` is the next of the prefix and ``nbytes()`` (their size,
        known before building) fits; None when the batch is not (and will not be) cached.

        An entry is served only for the batch it was built on (the same arrays, or equal
        ones: one host sync per comparison of fresh arrays). A stream that yields another
        batch at position ``i`` (a shuffling loader) drops the entries from ``i`` on and
        rebuilds them, so stale residuals are never used."""
        self.batches_seen = max(self.batches_seen, i + 1)
        got = self.entries.setdefault(kind, [])
        on = self.batches_of.setdefault(kind, [])
        if i < len(got):
            X0, y0, _ = on[i]
            if _same_batch(X0, y0, X, y):
                return got[i]
            self.bytes -= sum(n for _, _, n in on[i:])
            del got[i:], on[i:]
            self.closed.discard(kind)
        if self.limit == 0 or kind in self.closed or i != len(got):
            return None
        n = nbytes() + tree_nbytes((X, y))  # the batch is kept too, for the comparison above
        if self.limit is not None and self.bytes + n > self.limit:
            self.closed.add(kind)
            return None
        res = build()
        got.append(res)
        on.append((X, y, n))
        self.bytes += n
        return res

    def info(self, batches: int | None) -> dict[str, Any]:
        """``{"bytes", "batches_cached", "batches", "limit"}`` (``batches_cached``: the
        longest cached prefix over the kinds; ``batches``: one pass's batches as far as known -- a stream's, those seen so far)."""
        cached = max((len(v) for v in self.entries.values()), default=0)
        n = max(batches if batches is not None else 0, self.batches_seen)
        return {"bytes": int(self.bytes), "batches_cached": int(cached), "batches": int(n),
                "limit": self.limit}
