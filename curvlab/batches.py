"""The data of a curvature source: one batch or a whole dataset of batches.

A curvature source (:mod:`curvlab.sources`) is bound to ``data``, which may be

* **one batch** ``(inputs, targets)`` (a tuple or list of two; the source's numbers are
  then exactly those of the batch, bit for bit);
* **a list or tuple of batches** ``[(X1, y1), (X2, y2), ...]`` (every element a pair);
* **any re-iterable of batches**: an object whose ``iter()`` gives a fresh iterator each
  time, such as a ``torch.utils.data.DataLoader`` (duck-typed: torch is not imported);
* **a zero-argument callable returning a fresh iterator** of batches (wrap a generator
  function this way: ``lambda: gen(...)``);
* a :class:`Batches` (which carries the options below).

A one-shot iterator or generator is refused (``TypeError``): the products need many passes.
A pair whose two elements are themselves pairs, ``((x1, x2), (y1, y2))``, reads as a list of
two batches; bind one such batch as ``[((x1, x2), (y1, y2))]``.

Every quantity over a dataset is the **exact average over samples**: for per-batch means
``q_b`` (the loss, the gradient, ``H V``, ``GGN V``, empirical ``Fisher V``, ``dᵀ H d``)
of batches of ``n_b`` samples, ``q = Σ_b (n_b / N) q_b`` with ``N = Σ_b n_b``, which is the
mean over one batch holding all samples (up to rounding). :meth:`Batches.mean` does this
in one pass, :meth:`Batches.concat` concatenates per-sample records.

Options
-------
``num_data``
    The total number of samples when known: checked against the count of every pass
    (``ValueError`` naming ``num_data`` otherwise). The count of the first pass is also
    remembered and every later pass must see the same (this check is free: batch sizes are
    read from shapes, no host sync).
``check_deterministic``
    Every pass after the first must yield the same first batch (a hash of its bytes, one
    device-to-host copy of that batch per pass) and the same batch sizes, else
    ``ValueError`` naming ``data``: a ``DataLoader`` with ``shuffle=True`` or random
    augmentation is the usual culprit; a Lanczos or CG solve over such data mixes
    different matrices. Off by default.
``progress``
    ``False`` (default, silent), ``True`` (a tqdm bar over the batches of each pass, on
    stderr) or a dict of tqdm keyword arguments. tqdm is imported only when asked for.
``reduce``
    ``None``, or a callable ``reduce(sums, count) -> (sums, count)`` summing the per-process
    weighted sums ``Σ_b n_b q_b`` (a tuple of arrays) and sample counts over a process group
    (each process iterating its own shard); the average is then over all processes' samples
    and ``num_data`` is the global count.

How a framework adapter adopts it
---------------------------------
The adapter wraps its ``data`` once and computes per-batch means with its own code::

    self._batches = Batches(data, num_data=num_data, progress=progress,
                            check_deterministic=check_deterministic,
                            reduce=all_reduce_sum if distributed else None)
    self._batches = self._batches.prepared(lambda b: (to_device(b[0]), to_device(b[1])))
    if self._batches.single:                 # one batch: today's code path, bit for bit
        ...
    loss, g = self._batches.mean(lambda b: self._batch_loss_and_grad(*b))
    HV = self._batches.mean(lambda b: self._batch_hvp(*b, V))

:meth:`Batches.mean` accepts any array type with ``*`` by a Python int, ``+`` and ``/``
(NumPy, CuPy, torch, JAX; accumulation is out of place, so immutable JAX arrays work),
a single array or a tuple of them. ``at(data=...)`` builds a new :class:`Batches` with
:meth:`Batches.rebind`, which keeps the options (``progress``, ``check_deterministic``,
``reduce``) and drops ``num_data``.
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Mapping
from typing import Any, Callable, Iterator

import numpy as np

__all__ = ["Batches", "as_batches"]

_WHAT = ("data must be one batch (inputs, targets), a list/tuple of such batches, a re-iterable of batches "
         "(e.g. a torch DataLoader) or a zero-argument callable returning a fresh iterator of batches")


def _is_pair(x: Any) -> bool:
    return isinstance(x, (tuple, list)) and len(x) == 2


def _is_array(x: Any) -> bool:
    return any(hasattr(x, a) for a in ("shape", "__array__", "__dlpack__", "__array_interface__"))


def _first_leaf(x: Any) -> Any:
    """The first array leaf of a batch element (through tuples, lists and dicts)."""
    while True:
        if isinstance(x, (tuple, list)) and len(x) > 0:
            x = x[0]
        elif isinstance(x, Mapping) and len(x) > 0:
            x = next(iter(x.values()))
        else:
            return x


def _leaves(x: Any) -> Iterator[Any]:
    if isinstance(x, (tuple, list)):
        for e in x:
            yield from _leaves(e)
    elif isinstance(x, Mapping):
        for k in sorted(x, key=str):
            yield from _leaves(x[k])
    else:
        yield x


def default_batch_size(batch: Any) -> int:
    """``shape[0]`` of the first array leaf of ``batch[0]`` (the inputs), else ``len`` of it."""
    leaf = _first_leaf(batch[0])
    shape = getattr(leaf, "shape", None)
    if shape is not None and len(shape) > 0:
        return int(shape[0])
    try:
        return len(leaf)
    except TypeError:
        raise TypeError(f"cannot read the batch size of inputs of type {type(leaf).__name__}: "
                        "give Batches(..., batch_size=callable)") from None


def _host_bytes(x: Any) -> tuple[str, tuple[int, ...], bytes]:
    """A leaf as (dtype, shape, bytes) on the host: NumPy, CuPy (``.get()``), torch
    (``.detach().cpu().numpy()``, duck-typed), JAX and Python scalars."""
    if type(x).__module__.startswith("cupy"):
        a = x.get()
    elif hasattr(x, "detach") and hasattr(x, "cpu"):
        a = x.detach().cpu().numpy()
    else:
        a = np.asarray(x)
    a = np.ascontiguousarray(a)
    return str(a.dtype), a.shape, a.tobytes()


def default_fingerprint(batch: Any) -> str:
    """A hash of the dtypes, shapes and bytes of every leaf of ``batch`` (one device-to-host
    copy of the batch)."""
    h = hashlib.blake2b(digest_size=16)
    for leaf in _leaves(batch):
        dt, sh, by = _host_bytes(leaf)
        h.update(f"{dt}{sh}".encode())
        h.update(by)
    return h.hexdigest()


def _check_progress(progress: Any) -> dict[str, Any] | None:
    if progress is None or progress is False:
        return None
    if progress is True:
        return {}
    if isinstance(progress, dict):
        return dict(progress)
    raise TypeError(f"progress must be a bool or a dict of tqdm keyword arguments, got {type(progress).__name__}: "
                    f"{progress!r}")


def _check_num_data(num_data: Any) -> int | None:
    if num_data is None:
        return None
    if isinstance(num_data, (bool, np.bool_)) or not isinstance(num_data, numbers.Integral):
        raise TypeError(f"num_data must be None or a positive integer, got {type(num_data).__name__}: {num_data!r}")
    if int(num_data) <= 0:
        raise ValueError(f"num_data must be a positive integer, got {int(num_data)}")
    return int(num_data)


class Batches:
    """``data`` normalised to re-iterable batches with exact sample-weighted averaging.

    Parameters
    ----------
    data : one batch, a list/tuple of batches, a re-iterable, a callable, or a Batches
        See the module docstring. A :class:`Batches` is refused here (``TypeError``): use
        :func:`as_batches`, which returns it as is, or :meth:`rebind`.
    num_data : int, optional
        The total number of samples; checked against every pass.
    check_deterministic : bool
        Compare every pass with the first (first-batch hash and batch sizes).
    progress : bool or dict
        A tqdm bar per pass (silent by default).
    reduce : callable, optional
        ``reduce(sums, count) -> (sums, count)`` over a process group (module docstring).
    batch_size : callable, optional
        ``batch -> int``; default :func:`default_batch_size` (``inputs.shape[0]``).
    fingerprint : callable, optional
        ``batch -> hashable`` for ``check_deterministic``; default :func:`default_fingerprint`.

    Attributes
    ----------
    data : the object given.
    kind : ``"batch"``, ``"sequence"``, ``"iterable"`` or ``"callable"``.
    single : bool
        One batch (``kind == "batch"``) and no ``reduce``: :meth:`mean` returns the batch's
        values unchanged (bit for bit).
    n_passes : int
        Complete passes so far.
    """

    def __init__(self, data: Any, *, num_data: int | None = None, check_deterministic: bool = False,
                 progress: Any = False, reduce: Callable[[Any, int], tuple[Any, int]] | None = None,
                 batch_size: Callable[[Any], int] | None = None,
                 fingerprint: Callable[[Any], Any] | None = None) -> None:
        self.data = data
        self.kind = _classify(data)
        self.num_data = _check_num_data(num_data)
        if not isinstance(check_deterministic, (bool, np.bool_)):
            raise TypeError(f"check_deterministic must be a bool, got {type(check_deterministic).__name__}")
        self.check_deterministic = bool(check_deterministic)
        self.progress = progress
        self._bar_kw = _check_progress(progress)
        for name, f in (("reduce", reduce), ("batch_size", batch_size), ("fingerprint", fingerprint)):
            if f is not None and not callable(f):
                raise TypeError(f"{name} must be None or a callable, got {type(f).__name__}")
        self.reduce = reduce
        self._size = batch_size or default_batch_size
        self._fingerprint = fingerprint or default_fingerprint
        self._prepare: Callable[[Any], Any] | None = None
        self._cached: tuple[Any, ...] | None = None  # the batches of one batch or a list (prepared)
        self._sizes: tuple[int, ...] | None = None  # their sizes, read on first use
        self._signature: tuple[Any, tuple[int, ...]] | None = None  # (first-batch hash, sizes) of pass 1
        self._count: int | None = None  # samples of the first complete pass
        self.n_passes = 0
        if self.kind == "batch":
            self._cached = (data,)
        elif self.kind == "sequence":
            self._cached = tuple(_check_batch(b, i) for i, b in enumerate(data))

    def _cached_sizes(self) -> tuple[int, ...]:
        """Sizes of the kept batches (read once; ``num_data`` checked here)."""
        if self._sizes is None:
            assert self._cached is not None, "called only for one batch or a list (kept batches)"
            sizes = tuple(self._batch_size(b, i) for i, b in enumerate(self._cached))
            n = sum(sizes)
            if self.num_data is not None and self.reduce is None and n != self.num_data:
                raise ValueError(f"num_data={self.num_data} but data holds {n} samples in {len(sizes)} batches")
            self._sizes, self._count = sizes, n
        return self._sizes

    # -- construction helpers ----------------------------------------------------
    def _options(self) -> dict[str, Any]:
        return dict(check_deterministic=self.check_deterministic, progress=self.progress, reduce=self.reduce,
                    batch_size=None if self._size is default_batch_size else self._size,
                    fingerprint=None if self._fingerprint is default_fingerprint else self._fingerprint)

    def rebind(self, data: Any) -> "Batches":
        """New ``data`` with the same options (``num_data`` dropped); a :class:`Batches` is
        returned as is."""
        if isinstance(data, Batches):
            return data
        return Batches(data, **self._options())

    def prepared(self, prepare: Callable[[Any], Any]) -> "Batches":
        """A view whose batches are ``prepare(batch)`` (checked, cast, moved to a device).

        For one batch or a list of batches ``prepare`` runs **now**, once per batch, and
        the prepared batches are kept (later passes do no checking); for a re-iterable or a
        callable it runs on every batch of every pass. Batch sizes are read from the
        prepared batches; the determinism hash from the raw ones.
        """
        if not callable(prepare):
            raise TypeError(f"prepare must be a callable, got {type(prepare).__name__}")
        new = Batches.__new__(Batches)
        new.__dict__.update(self.__dict__)
        prev = self._prepare
        new._prepare = prepare if prev is None else (lambda b: prepare(prev(b)))
        if self._cached is not None:
            new._cached = tuple(prepare(b) for b in self._cached)
            new._sizes = new._count = None
            new._cached_sizes()
        return new

    def _batch_size(self, batch: Any, i: int) -> int:
        n = self._size(batch)
        if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or int(n) <= 0:
            raise ValueError(f"data: batch {i} has {n!r} samples; every batch needs at least one sample")
        return int(n)

    # -- facts -------------------------------------------------------------------
    @property
    def single(self) -> bool:
        return self.kind == "batch" and self.reduce is None

    @property
    def num_batches(self) -> int | None:
        """The number of batches of a pass when known (a list; ``len(data)`` of an iterable), else None."""
        if self._cached is not None:
            return len(self._cached)
        if self.kind == "iterable":
            try:
                return int(len(self.data))
            except TypeError:
                return None
        return None

    @property
    def n_samples(self) -> int | None:
        """Samples per pass (this process): known for one batch or a list, after the first
        pass otherwise (None before)."""
        if self._cached is not None:
            self._cached_sizes()
        return self._count

    def __repr__(self) -> str:
        n = "?" if self.n_samples is None else self._count
        k = self.num_batches
        return f"Batches({self.kind}, {n} samples, {'?' if k is None else k} batches)"

    def describe(self) -> str:
        """``"7 samples"``, ``"1797 samples in 8 batches"`` or ``"a stream of batches"``."""
        if self.single:
            return f"{self.n_samples} samples"
        n = self.num_data if self.num_data is not None else (self.n_samples if self.reduce is None else None)
        k = self.num_batches
        if n is None:
            return "a stream of batches" if k is None else f"a stream of {k} batches"
        return f"{n} samples" + (f" in {k} batches" if k is not None else " in batches")

    # -- passes ------------------------------------------------------------------
    def _raw(self) -> Iterator[Any]:
        if self.kind == "iterable":
            it = iter(self.data)
        else:
            it = self.data()
            if not hasattr(it, "__next__"):
                try:
                    it = iter(it)
                except TypeError:
                    raise TypeError(f"data: the callable returned {type(it).__name__}, expected an iterator "
                                    "of batches") from None
        return it

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        """One pass: ``(n_b, batch)`` pairs (prepared batches), with the progress bar and the
        end-of-pass checks (sample count, determinism)."""
        bar = None
        if self._bar_kw is not None:
            try:
                from tqdm.auto import tqdm  # noqa: PLC0415
            except ImportError as exc:  # pragma: no cover - tqdm is installed in the test environment
                raise ImportError("progress=True needs tqdm (pip install tqdm); pass progress=False") from exc
            opts: dict[str, Any] = {"total": self.num_batches, "desc": "batches", "unit": "batch", "leave": False}
            opts.update(self._bar_kw)
            bar = tqdm(**opts)
        try:
            if self._cached is not None:
                for nb, b in zip(self._cached_sizes(), self._cached):
                    yield nb, b
                    if bar is not None:
                        bar.update(1)
                self.n_passes += 1
                return
            sizes: list[int] = []
            first = None
            for i, raw in enumerate(self._raw()):
                _check_batch(raw, i)
                if i == 0 and self.check_deterministic:
                    first = self._fingerprint(raw)
                    if self._signature is not None and first != self._signature[0]:
                        raise ValueError(self._nondeterministic("a different first batch"))
                b = raw if self._prepare is None else self._prepare(raw)
                nb = self._batch_size(b, i)
                sizes.append(nb)
                yield nb, b
                if bar is not None:
                    bar.update(1)
            self._end_pass(first, tuple(sizes))
        finally:
            if bar is not None:
                bar.close()

    def _nondeterministic(self, what: str) -> str:
        return (f"data is not deterministic: pass {self.n_passes + 1} gave {what} than pass 1; products over a "
                "dataset need every pass to yield the same samples in the same batches (a DataLoader with "
                "shuffle=True or random augmentation is the usual culprit: use shuffle=False for curvature)")

    def _end_pass(self, first: Any, sizes: tuple[int, ...]) -> None:
        n = sum(sizes)
        if not sizes:
            raise ValueError(f"data yielded no batches ({type(self.data).__name__}); need at least one batch")
        if self.num_data is not None and self.reduce is None and n != self.num_data:
            raise ValueError(f"num_data={self.num_data} but a pass over data gave {n} samples in {len(sizes)} batches")
        if self.check_deterministic:
            if self._signature is None:
                self._signature = (first, sizes)
            elif sizes != self._signature[1]:
                raise ValueError(self._nondeterministic(f"batch sizes {list(sizes)[:8]}... "
                                                        f"(total {n}) other"))
        if self._count is None:
            self._count = n
        elif n != self._count:
            raise ValueError(f"data is not deterministic: pass {self.n_passes + 1} gave {n} samples, pass 1 gave "
                             f"{self._count}; every pass must yield the same samples")
        self.n_passes += 1

    # -- accumulation --------------------------------------------------------------
    def mean(self, fn: Callable[[Any], Any]) -> Any:
        """``Σ_b (n_b / N) fn(batch_b)`` over one pass: ``fn`` returns the batch's mean
        quantity (an array, a Python/0-d scalar, or a tuple of them); the result has the
        same structure. One batch (``single``) or a pass of one batch: ``fn``'s values
        unchanged, bit for bit. Host syncs: none added (the weights are Python ints)."""
        total = None
        count = 0
        first = None
        for nb, b in self:
            v = fn(b)
            if count == 0:
                first = v
            else:
                if total is None:
                    total = _scale(first, count)
                total = _add(total, _scale(v, nb))
            count += nb
        if self.reduce is None and total is None:
            return first
        if total is None:
            total = _scale(first, count)
        if self.reduce is not None:
            total, count = self.reduce(total, count)
            count = int(count)
            if self.num_data is not None and count != self.num_data:
                raise ValueError(f"num_data={self.num_data} but the process group's passes gave {count} samples")
        return _div(total, count)

    def concat(self, fn: Callable[[Any], Any], concatenate: Callable[[list[Any]], Any] | None = None) -> Any:
        """Per-sample records of one pass: ``fn(batch)`` returns an array ``(n_b, ...)`` or a
        tuple/list of them; the result concatenates along axis 0 (``concatenate``: default
        the arrays' own ``xp.concatenate`` for NumPy/CuPy). One batch: ``fn``'s value."""
        outs = [fn(b) for _, b in self]
        if len(outs) == 1:
            return outs[0]
        cat = concatenate or _concatenate
        if isinstance(outs[0], (tuple, list)):
            return type(outs[0])(cat([o[i] for o in outs]) for i in range(len(outs[0])))
        return cat(outs)


def as_batches(data: Any, **options: Any) -> Batches:
    """``data`` as a :class:`Batches` with ``options``; a :class:`Batches` is returned as
    is when no option is given (``TypeError`` when options would be ignored)."""
    if isinstance(data, Batches):
        given = {k: v for k, v in options.items() if v is not None and v is not False}
        if given:
            raise TypeError(f"data is already a Batches: give the options {sorted(given)} to Batches(...) instead")
        return data
    return Batches(data, **options)


def _classify(data: Any) -> str:
    if isinstance(data, Batches):
        raise TypeError("data is already a Batches: use curvlab.batches.as_batches(data) (returns it as is) or "
                        "data.rebind(...) to change the data")
    if isinstance(data, (str, bytes, Mapping)) or data is None:
        raise TypeError(f"{_WHAT}; got {type(data).__name__}")
    if isinstance(data, (tuple, list)):
        if len(data) == 0:
            raise ValueError("data is an empty list of batches; need at least one batch")
        if all(_is_pair(e) for e in data):
            return "sequence"
        if len(data) == 2:
            return "batch"
        raise TypeError(f"{_WHAT}; got {type(data).__name__} of length {len(data)}")
    if _is_array(data):
        raise TypeError(f"{_WHAT}; got the array {type(data).__module__}.{type(data).__name__} (give (inputs, targets))")
    if hasattr(data, "__next__"):
        raise TypeError(f"data is a one-shot iterator ({type(data).__name__}): products need many passes over the "
                        "data; pass a list of batches, a re-iterable (DataLoader) or a zero-argument callable "
                        "returning a fresh iterator (e.g. lambda: make_batches())")
    if hasattr(data, "__iter__"):
        return "iterable"
    if callable(data):
        return "callable"
    raise TypeError(f"{_WHAT}; got {type(data).__name__}")


def _check_batch(b: Any, i: int) -> Any:
    if not _is_pair(b):
        what = f"{type(b).__name__}" + (f" of length {len(b)}" if isinstance(b, (tuple, list)) else "")
        raise TypeError(f"data: batch {i} must be a pair (inputs, targets), got {what}")
    return b


def _scale(v: Any, n: int) -> Any:
    if isinstance(v, tuple):
        return tuple(_scale(e, n) for e in v)
    return v * n


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, tuple):
        return tuple(_add(x, y) for x, y in zip(a, b))
    return a + b


def _div(a: Any, n: int) -> Any:
    if isinstance(a, tuple):
        return tuple(_div(x, n) for x in a)
    return a / n


def _concatenate(arrays: list[Any]) -> Any:
    from . import backend  # noqa: PLC0415

    return backend.get_namespace(arrays[0]).concatenate(arrays, axis=0)
