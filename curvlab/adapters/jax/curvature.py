"""JAX adapter: a JAX model, a loss and a batch (or a whole dataset) as a curvature source.

:class:`JaxCurvature` implements :class:`curvlab.sources.CurvatureSource` (``layout``,
``params``, ``loss()``, ``gradient()``, ``per_sample_gradients()``, ``hessian()``,
``ggn()``, ``fisher()``, ``directional_curvature``, ``grad_and_curvature``,
``layer_structure()``, ``at()``). Given ``apply_fn(params, inputs) -> outputs``
(``params`` any pytree), a loss and a batch, it returns curvlab
:class:`~curvlab.linalg.operators.LinearOperator` s on the flat vector of a chosen
subtree of the parameters (``trainable``; layout: :class:`curvlab.layout.Layout` with
``"a/b/0"``-style key paths, leaves in ``jax.tree_util`` order, row-major):
Hessian (``jax.jvp`` of ``jax.grad``: forward-over-reverse, default; or
``jax.vjp`` of ``jax.grad``: reverse-over-reverse), GGN ``Jᵀ H_L J``, empirical
true (built-in losses: the GGN) and Monte-Carlo Fisher (explicit ``rng``), the gradient, ``dᵀHd``
forward-only (nested ``jax.jvp``) and ``(loss, g, dᵀHd)``. Every product is
``jax.jit``-compiled once per adapter and shared by every source :meth:`~JaxCurvature.at`
derives from it, so rebinding parameters or data of the same shapes does not retrace (the
Fisher operators take their output residuals as an argument, so they compile once per kind
too); ``matmat`` is a ``jax.vmap`` of the matvec, and the flat vector is split inside the
compiled function.

Product cache (``cache_bytes``, default 1 GiB; :meth:`JaxCurvature.cache_info`): the first
Hessian / GGN / Fisher product on a batch keeps what does not depend on the vector -- the
residuals of ``jax.linearize`` of the gradient (Hessian, forward-over-reverse), of
``jax.vjp`` of the gradient (reverse-over-reverse), or of ``jax.linearize`` of the model
output and of the loss gradient in the output (GGN and every Fisher kind share them, the
transposed map by ``jax.linear_transpose``) -- and every later product of the source, from
any operator, applies the cached linear map (compiled once: the residual pytree is an
argument; ``matmat`` is its ``jax.vmap``). On the 784-512-512-10 MLP this takes a Hessian
product from ≈2.0× to ≈1.55× the gradient's time and a GGN product from ≈1.6× to ≈1.25×
(``benchmarks/run_jax_products.py``). Over a dataset the batches are cached in order while
the bound allows, the others recomputed; :meth:`JaxCurvature.at` starts empty.

Arrays cross through DLPack: NumPy vectors on the CPU, CuPy on a GPU. JAX's CPU
client imports a NumPy buffer without a copy only when it is 64-byte aligned
(otherwise one copy is made; results always come back without a copy).
float64 needs ``jax.config.update("jax_enable_x64", True)``.

Datasets: ``data`` is one batch ``(inputs, targets)`` or any form of
:class:`curvlab.batches.Batches` (a list of array pairs, a re-iterable, a zero-argument
callable returning a fresh iterator). Loss, gradient, every operator (matvec and matmat),
``dᵀHd`` and ``grad_and_curvature`` are then the exact sample-weighted average
``Σ_b (n_b/N) q_b`` over one pass of the batches, which equals one batch holding all
samples up to rounding; ``per_sample_gradients`` concatenates the batches' rows. Each
product is one ``jax.jit`` function: it compiles once per distinct batch shape (a dataset
of equal batches and a smaller last one: two compilations per product kind; a ``matmat``
once per batch shape and number of columns), and every source :meth:`~JaxCurvature.at`
derives shares them. Every argument is committed to the parameters' device (or the mesh),
so a vector imported by DLPack and one copied compile the same program. One batch is computed exactly as
before (bit for bit).

Data parallelism: ``devices=`` (a count or a list of devices) shards every batch
along axis 0 over a 1-D mesh; parameters and vectors are replicated and XLA
inserts the all-reduce, so products equal those on one device (for a dataset: every
batch size must be a multiple of the device count).

The loss is ``"cross_entropy"`` (integer targets, logits on the last axis),
``"mse"`` (``0.5 ||z - y||²`` over the last axis), averaged over all other
axes as in :mod:`curvlab.models.mlp`, or a callable ``loss(outputs, targets)``
returning a scalar mean over axis 0.

Examples
--------
>>> import jax, jax.numpy as jnp, numpy as np
>>> def apply(p, X): return jnp.tanh(X @ p["w"].T) @ p["v"].T
>>> rng = np.random.default_rng(0)
>>> p = {"w": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
...      "v": jnp.asarray(rng.standard_normal((2, 4)), jnp.float32)}
>>> X = jnp.asarray(rng.standard_normal((8, 3)), jnp.float32); y = jnp.asarray(rng.integers(0, 2, 8))
>>> curv = JaxCurvature(apply, p, "cross_entropy", (X, y))
>>> curv.layout.names
('v', 'w')
>>> H = curv.hessian(); H.shape
(20, 20)
>>> H                                        # doctest: +ELLIPSIS
<Hessian of apply on 8 samples, P=20, hvp_mode=forward_over_reverse: CurvatureOperator ...>
>>> curv.at(params=curv.params * 0.5).loss() != curv.loss()   # no recompilation
True
"""

from __future__ import annotations

import copy
import itertools
import weakref
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ... import backend
from ...batches import Batches, as_batches, default_fingerprint
from ...layout import Layout
from ...linalg.operators import LinearOperator
from .._common import FISHER_KINDS, CurvatureOperator, check_nan_policy
from .._fisher import mc_fisher_draws
from ._cache import DEFAULT_CACHE_BYTES, ProductCache, check_cache_bytes, tree_nbytes
from .convert import from_jax, to_jax

__all__ = ["JaxCurvature", "hessian_operator", "ggn_operator", "fisher_operator", "HVP_MODES", "FISHER_KINDS"]

HVP_MODES = ("forward_over_reverse", "reverse_over_reverse")


def _key_name(k: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _path_name(path: Sequence[Any]) -> str:
    return "/".join(_key_name(k) for k in path) or "."


# --------------------------------------------------------------------------- losses
def _builtin_loss(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    if name == "cross_entropy":

        def ce(z: jax.Array, y: jax.Array) -> jax.Array:
            lead = tuple(z.shape[:-1])
            if tuple(y.shape) not in (lead, lead + (1,)):  # static shapes: checked at trace time
                raise ValueError(f"cross_entropy targets must have the outputs' shape without the class axis, "
                                 f"{lead}, got {tuple(y.shape)}")
            y = y.reshape(lead)
            logp = jax.nn.log_softmax(z, axis=-1)
            return -jnp.mean(jnp.take_along_axis(logp, y[..., None].astype(jnp.int32), axis=-1))

        return ce
    if name == "mse":

        def mse(z: jax.Array, y: jax.Array) -> jax.Array:
            if tuple(y.shape) != tuple(z.shape):  # no broadcasting of (B,) or (B, 1) against (B, K)
                raise ValueError(f"mse targets must have the outputs' shape {tuple(z.shape)}, got {tuple(y.shape)}")
            return 0.5 * jnp.mean(jnp.sum((z - y) ** 2, axis=-1))

        return mse
    raise ValueError(f"loss must be 'cross_entropy', 'mse' or a callable, got {name!r}")


def _as_batch_array(b: Any, name: str) -> jax.Array:
    """One JAX array for ``batch``'s inputs or targets (NumPy/CuPy arrays convert; sequences refuse)."""
    if isinstance(b, (tuple, list, dict)):
        raise TypeError(f"batch {name} must be one array, got a {type(b).__name__}; a sequence is not stacked (a "
                        "model with several inputs: close over them or pass one array; labels: jnp.asarray(labels))")
    if not isinstance(b, jax.Array):
        if not (isinstance(b, np.ndarray) or hasattr(b, "__dlpack__")):
            raise TypeError(f"batch {name} must be a JAX or NumPy array, got {type(b).__module__}.{type(b).__name__}")
        if np.dtype(getattr(b, "dtype", np.float64)).kind in "OUSVM":
            raise TypeError(f"batch {name} must hold numbers, got an array of dtype {np.dtype(b.dtype)}")
        b = jnp.asarray(b)
    if jnp.issubdtype(b.dtype, jnp.complexfloating):
        raise TypeError(f"batch {name} have complex dtype {b.dtype}; curvlab's losses and operators are real")
    return b


class _Residuals(list):
    """Per-batch Fisher residuals in pass order; for a stream also the fingerprint of the batch
    each was drawn for, so that a product over a pass in another order raises instead of
    pairing residuals with the wrong samples (one host copy per batch and product)."""

    def __init__(self, batches: Batches) -> None:
        super().__init__()
        self.fingerprints: list[str] | None = None if batches.kind in ("batch", "sequence") else []

        self._seen: dict[int, tuple[Any, ...]] = {}  # weak references to the arrays last checked at each position

    def add(self, r: Any, batch: Any) -> None:
        self.append(r)
        if self.fingerprints is not None:
            self.fingerprints.append(default_fingerprint(batch))

    def check(self, i: int, batch: Any) -> None:
        """Batch ``i`` of a pass is the one residual ``i`` was drawn for, else ``ValueError``
        (a list of batches: nothing to check; the same arrays as last time: not re-read)."""
        if self.fingerprints is None:
            return
        last = self._seen.get(i)
        if last is not None and all(ref() is x for ref, x in zip(last, batch)):
            return
        if default_fingerprint(batch) != self.fingerprints[i]:
            raise ValueError(f"data: batch {i} of this pass differs from the batch {i} the Fisher's residuals were "
                             "drawn for (a shuffling loader?); the products of a stream need the same batches "
                             "in the same order at every pass: pass a list of batches or a loader that does not "
                             "shuffle")
        self._seen[i] = tuple(weakref.ref(x) for x in batch)


class JaxCurvature:
    """A JAX model and its loss bound to parameters and one batch or a dataset: a
    :class:`curvlab.sources.CurvatureSource`.

    Parameters
    ----------
    apply_fn : callable ``(params, inputs) -> outputs``
    params : pytree of arrays
    loss : "cross_entropy" | "mse" | callable
    data : (inputs, targets), or a dataset of such batches
        One batch: two JAX (or NumPy) arrays with at least one sample and equal leading
        (batch) sizes; complex parts raise ``TypeError``, and a tuple/list/dict
        raises ``TypeError`` (never stacked). A dataset: a list/tuple of such pairs, a
        re-iterable of them, a zero-argument callable returning a fresh iterator, or a
        :class:`curvlab.batches.Batches` (a one-shot iterator is refused). ``"cross_entropy"`` targets are
        integer labels shaped like the outputs without the class axis (or with a
        trailing 1); their range ``[0, C)`` is read on the host **once per batch, when
        the batch is first seen** (one device-to-host copy of its labels, outside ``jit``,
        which stalls JAX's asynchronous dispatch once): for one batch or a list, here; for a
        re-iterable or a callable, during the first pass (later passes are assumed to
        yield the same batches: ``check_deterministic=True`` verifies it) — inside the
        compiled products an out-of-range label would give NaN or a wrapped index
        silently. ``"mse"`` targets must have the
        outputs' shape (no broadcasting). A callable loss must return a real
        float scalar.
    trainable : None | sequence of str | callable(name) -> bool
        The subtree to differentiate: all real float leaves (None; integer and
        complex leaves are then held fixed), the leaves whose key path
        (``"layer/w"``) equals or starts with ``prefix + "/"`` for one of the
        given prefixes, or those a predicate accepts. The others are held fixed.
        An explicit selection that includes a non-float leaf raises ``TypeError``.
    hvp_mode : "forward_over_reverse" (default) | "reverse_over_reverse"
    nan_policy : "propagate" (default) | "raise"
        ``"propagate"``: NaN/Inf in the parameters or the batch flow through (the
        loss and the products come back NaN); nothing is checked.
        ``"raise"``: the trainable parameters and the floating batch inputs and
        targets are checked on the host (each batch when first seen, like the labels),
        and ``FloatingPointError`` names the first non-finite one.
    devices : int or sequence of jax devices, optional
        Shard every batch over these devices (axis 0; every batch size must be a
        multiple of their number).
    num_data, check_deterministic, progress
        Dataset options of :class:`curvlab.batches.Batches`: the expected total sample
        count, a check that every pass yields the same batches (a hash of the first batch:
        one host copy per pass), a tqdm bar per pass (silent by default).
    cache_bytes : int or None, default 2**30 (1 GiB)
        Upper bound in bytes on the product cache: what a Hessian / GGN / Fisher product
        on a batch needs besides the vector (the residuals of ``jax.linearize`` of the
        gradient, of ``jax.vjp`` of the gradient for ``reverse_over_reverse``, or of
        ``jax.linearize`` of the model output and of the loss gradient for GGN and
        Fisher), built at the first operator product and reused by every later product
        of this source (any operator); over a dataset the batches are cached in pass
        order while the bound allows and the others are recomputed at every product.
        ``0`` disables it (every product recomputes the primal pass), ``None`` lifts the
        bound. :meth:`at` starts with an empty cache; ``loss``, ``gradient``,
        ``directional_curvature`` and ``grad_and_curvature`` never build it. See
        :meth:`cache_info`.

    Attributes
    ----------
    layout : curvlab.layout.Layout
        Key paths, shapes and offsets of the trainable leaves in the flat vector ``(P,)``.
    params : (P,) array
        The trainable parameters, flat (NumPy on the CPU, CuPy on a GPU).
    theta : jax.Array (P,)
        The same as a JAX array.
    batch_size : int or None
        The size of the one bound batch (None for a dataset).
    num_samples : int or None
        The samples of one pass (``num_data`` when given; None for a stream before its first pass).
    batches : curvlab.batches.Batches
        The data as checked (and, with ``devices``, sharded) batches.
    X, y : jax.Array or None
        The one bound batch (None for a dataset).
    """

    X: jax.Array | None
    y: jax.Array | None
    batch_size: int | None
    _batches: Batches

    def __init__(
        self,
        apply_fn: Callable[[Any, Any], Any],
        params: Any,
        loss: str | Callable[[Any, Any], Any],
        data: Any,
        *,
        trainable: Sequence[str] | Callable[[str], bool] | None = None,
        hvp_mode: str = "forward_over_reverse",
        devices: int | Sequence[Any] | None = None,
        nan_policy: str = "propagate",
        num_data: int | None = None,
        check_deterministic: bool = False,
        progress: Any = False,
        cache_bytes: int | None = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.nan_policy = check_nan_policy(nan_policy)
        self._cache = ProductCache(check_cache_bytes(cache_bytes))
        if not callable(apply_fn):
            raise TypeError(f"apply_fn must be callable, got {type(apply_fn).__name__}")
        if hvp_mode not in HVP_MODES:
            raise ValueError(f"hvp_mode must be one of {HVP_MODES}, got {hvp_mode!r}")
        leaves_p, treedef = jax.tree_util.tree_flatten_with_path(params)
        names = [_path_name(p) for p, _ in leaves_p]
        leaves = [leaf for _, leaf in leaves_p]
        if trainable is None:
            pick = lambda n: True  # noqa: E731
        elif callable(trainable):
            pick = trainable
        else:
            prefixes = [str(t).strip("/") for t in ([trainable] if isinstance(trainable, str) else trainable)]
            pick = lambda n: any(n == q or n.startswith(q + "/") for q in prefixes)  # noqa: E731
        kinds = [np.dtype(getattr(leaf, "dtype", np.asarray(leaf).dtype)).kind for leaf in leaves]
        if trainable is not None:
            odd = [f"{n} ({np.dtype(getattr(leaf, 'dtype', np.asarray(leaf).dtype))})"
                   for n, leaf, k in zip(names, leaves, kinds) if pick(n) and k != "f"]
            if odd:
                raise TypeError(f"trainable selects leaves that are not real floats: {odd}; only float32/float64 "
                                "leaves can be differentiated (leave the others out of trainable)")
        idx = [i for i, (n, k) in enumerate(zip(names, kinds)) if pick(n) and k == "f"]
        if not idx:
            raise ValueError(f"no trainable parameters: trainable={trainable!r} selects no float leaf of {names}")
        dts = {np.dtype(leaves[i].dtype) for i in idx}
        if len(dts) != 1 or next(iter(dts)) not in backend.FLOAT_DTYPES:
            raise TypeError(f"trainable leaves must all be float32 or all float64, got {sorted(map(str, dts))}")
        self.dtype = next(iter(dts))
        if self.dtype == np.float64 and not getattr(jax.config, "jax_enable_x64"):
            raise TypeError("float64 parameters need jax.config.update('jax_enable_x64', True) before use")
        leaves = [jnp.asarray(leaf) for leaf in leaves]
        self.layout = Layout([names[i] for i in idx], [tuple(leaves[i].shape) for i in idx], self.dtype)
        self.apply_fn = apply_fn
        self.loss_name = loss if isinstance(loss, str) else None
        self.loss_fn = _builtin_loss(loss) if isinstance(loss, str) else loss
        if not callable(self.loss_fn):
            raise TypeError(f"loss must be a string or a callable, got {type(loss).__name__}")
        self.hvp_mode = hvp_mode
        self._treedef: Any = treedef
        self._leaves, self._idx = leaves, idx
        self.theta = jnp.concatenate([leaves[i].reshape(-1) for i in idx])
        dev = next(iter(self.theta.devices()))
        # every argument of the compiled products is committed to a device (or the mesh): jit's
        # cache key holds committedness, so a mix (a DLPack-imported vector is committed, a copied
        # one not) would compile each product twice
        self._dev = dev
        self.theta = jax.device_put(self.theta, dev)
        self.xp = np if dev.platform == "cpu" else backend._import_cupy()
        if nan_policy == "raise" and not bool(jnp.all(jnp.isfinite(self.theta))):
            raise FloatingPointError("parameters contain NaN or Inf (nan_policy='raise')")
        self.mesh = None
        if devices is not None:
            devs = jax.devices()[: int(devices)] if isinstance(devices, int) else list(devices)
            if len(devs) < 1 or (isinstance(devices, int) and len(devs) < devices):
                raise ValueError(f"devices={devices!r} but only {len(jax.devices())} JAX devices exist")
            from jax.sharding import Mesh, NamedSharding, PartitionSpec

            self.mesh = Mesh(np.array(devs), ("batch",))
            self.theta = jax.device_put(self.theta, NamedSharding(self.mesh, PartitionSpec()))
        self._jit: dict[str, Any] = {}  # compiled functions (and their side tables), shared with at()
        self._out_shapes: dict[Any, Any] = {}  # batch shapes -> output shape (shared with at())
        self._bind_batches(as_batches(self._data_arg(data), num_data=num_data,
                                      check_deterministic=check_deterministic, progress=progress))

    # ------------------------------------------------------------------ batch checks
    @staticmethod
    def _data_arg(data: Any) -> Any:
        """``data`` as given, except that a bare array (no pair) keeps the one-batch message."""
        if not isinstance(data, (tuple, list, Batches)) and any(
                hasattr(data, a) for a in ("shape", "__array__", "__dlpack__")):
            raise ValueError(f"batch must be a pair (inputs, targets), got {type(data).__name__}")
        return data

    def _bind_batches(self, batches: Batches) -> None:
        """Bind checked data: every batch goes through :meth:`_prepare_batch` (one batch or a
        list: now, once; a stream: on every pass)."""
        self._binding = True  # read by _prepare_batch: a list's batches are being prepared
        try:
            self._batches = batches.prepared(self._prepare_batch)
        finally:
            self._binding = False
        if self._batches.single:
            ((_, (X, y)),) = tuple(self._batches)
            self.X, self.y, self.batch_size = X, y, int(X.shape[0])
        else:
            self.X = self.y = self.batch_size = None

    @property
    def batches(self) -> Batches:
        return self._batches

    @property
    def num_samples(self) -> int | None:
        b = self._batches
        return b.num_data if b.num_data is not None else b.n_samples

    def _prepare_batch(self, batch: Any) -> tuple[jax.Array, jax.Array]:
        """One batch checked, placed on the mesh, its output shape traced once per shape, and
        its labels (and under ``nan_policy="raise"`` its values) read on the host when first
        seen (a list: at binding; a stream: in the first pass)."""
        first = self._binding or self._batches.n_passes == 0
        X, y = self._check_batch(batch, host=first)
        X, y = self._place(X, y)
        self._check_outputs(X, y, labels=first)
        return X, y

    def _check_batch(self, batch: Any, host: bool = True) -> tuple[jax.Array, jax.Array]:
        """The batch's arrays, checked (values on the host under ``nan_policy="raise"`` when ``host``)."""
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"batch must be a pair (inputs, targets), got {type(batch).__name__}")
        X, y = _as_batch_array(batch[0], "inputs"), _as_batch_array(batch[1], "targets")
        if X.ndim == 0 or y.ndim == 0:
            raise ValueError("batch inputs and targets must have a leading batch axis, got a 0-d array")
        if X.shape[0] != y.shape[0]:
            raise ValueError(f"inputs and targets differ in batch size: {X.shape[0]} vs {y.shape[0]}")
        if X.shape[0] == 0:
            raise ValueError(f"batch is empty (inputs of shape {tuple(X.shape)}): the mean loss of no sample is "
                             "undefined; pass at least one sample")
        if self.loss_name == "cross_entropy" and not jnp.issubdtype(y.dtype, jnp.integer):
            raise TypeError(f"batch targets must be integer class labels for cross_entropy, got dtype {y.dtype}")
        if self.nan_policy == "raise" and host:
            for what, a in (("batch inputs", X), ("batch targets", y)):
                if jnp.issubdtype(a.dtype, jnp.floating) and not bool(jnp.all(jnp.isfinite(a))):
                    raise FloatingPointError(f"{what} contain NaN or Inf (nan_policy='raise')")
        if jnp.issubdtype(X.dtype, jnp.floating) and np.dtype(X.dtype) != self.dtype:
            raise TypeError(f"batch inputs have dtype {X.dtype} but the parameters {self.dtype}")
        return X, y

    def _place(self, X: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Shard the batch over the mesh (axis 0); without devices, commit it to the parameters' device."""
        if self.mesh is None:
            return jax.device_put(X, self._dev), jax.device_put(y, self._dev)
        from jax.sharding import NamedSharding, PartitionSpec

        n = self.mesh.devices.size
        if X.shape[0] % n:
            raise ValueError(f"batch size {X.shape[0]} is not a multiple of the {n} devices")
        spec = NamedSharding(self.mesh, PartitionSpec("batch"))
        return jax.device_put(X, spec), jax.device_put(y, spec)

    def _checked_out_shape(self, X: jax.Array, y: jax.Array) -> Any:
        """The model output's shape/dtype on ``X`` (``jax.eval_shape``: one trace, no compile);
        the loss must give a real floating scalar."""
        out = jax.eval_shape(self._outputs_of, self.theta, X)
        lval = jax.eval_shape(lambda z: self.loss_fn(z, y), out)
        if tuple(lval.shape) != ():
            raise ValueError(f"loss must return a scalar, got shape {tuple(lval.shape)}")
        if not jnp.issubdtype(lval.dtype, jnp.floating):
            raise TypeError(f"loss must return a real floating scalar, got dtype {lval.dtype}")
        return out

    def _check_outputs(self, X: jax.Array, y: jax.Array, labels: bool = True) -> None:
        """A checked batch's loss shape and dtype (traced once per batch shape), and with
        ``labels`` the label range (one host read)."""
        key = (tuple(X.shape), str(X.dtype), tuple(y.shape), str(y.dtype))
        out = self._out_shapes.get(key)
        if out is None:  # a new batch shape: one trace (no compile)
            out = self._out_shapes[key] = self._checked_out_shape(X, y)
        if self.loss_name == "cross_entropy" and labels:
            # the label range, read on the host once here (outside jit): an out-of-range label
            # would make take_along_axis return NaN (or wrap a negative index) silently
            C = int(out.shape[-1])
            yh = np.asarray(y)
            if yh.size and (int(yh.min()) < 0 or int(yh.max()) >= C):
                raise ValueError(f"batch targets (class labels) must lie in [0, {C - 1}] for cross_entropy (the "
                                 f"outputs have {C} classes), got values in [{int(yh.min())}, {int(yh.max())}]")

    def _mean(self, fn: Callable[..., Any], extras: Sequence[Any] | None = None,
              batches: Batches | None = None) -> Any:
        """``Σ_b (n_b/N) fn(X_b, y_b[, extras[b]])`` over one pass (one batch: ``fn``'s value)."""
        bs = self._batches if batches is None else batches
        if extras is None:
            return bs.mean(lambda b: fn(*b))
        it = iter(extras)
        n = len(extras)
        check = getattr(extras, "check", None)
        pos = itertools.count()

        def one(b: Any) -> Any:
            e = next(it, None)
            if e is None:
                raise ValueError(f"data: a pass yielded more than the {n} batches the residuals were drawn for")
            i = next(pos)
            if check is not None:
                check(i, b)
            return fn(*b, e)

        out = bs.mean(one)
        if next(it, None) is not None:
            raise ValueError(f"data: a pass yielded fewer than the {n} batches the residuals were drawn for")
        return out

    # ------------------------------------------------------------------ pure functions
    def _merge(self, theta: jax.Array) -> Any:
        leaves = list(self._leaves)
        for i, part in zip(self._idx, self.layout.unpack(theta)):
            leaves[i] = part
        return jax.tree_util.tree_unflatten(self._treedef, leaves)

    def _outputs_of(self, theta: jax.Array, X: jax.Array) -> jax.Array:
        return self.apply_fn(self._merge(theta), X)

    def _loss_flat(self, theta: jax.Array, X: jax.Array, y: jax.Array) -> jax.Array:
        return self.loss_fn(self._outputs_of(theta, X), y)

    def _compiled(self, key: str) -> Callable[..., Any]:
        if key in self._jit:
            return self._jit[key]
        L = self._loss_flat
        if key == "grad":
            f = jax.value_and_grad(L)
        elif key == "hvp_forward_over_reverse":
            def f(th, X, y, v):  # noqa: ANN001, ANN202
                return jax.jvp(lambda t: jax.grad(L)(t, X, y), (th,), (v,))[1]
        elif key == "hvp_reverse_over_reverse":
            def f(th, X, y, v):  # noqa: ANN001, ANN202
                return jax.vjp(lambda t: jax.grad(L)(t, X, y), th)[1](v)[0]
        elif key == "curvature":
            def f(th, X, y, d):  # noqa: ANN001, ANN202
                inner = lambda t: jax.jvp(lambda s: L(s, X, y), (t,), (d,))  # noqa: E731
                (val, gd), (_, c) = jax.jvp(inner, (th,), (d,))
                return jnp.stack([val, gd, c])
        elif key == "grad_and_curvature":
            def f(th, X, y, d):  # noqa: ANN001, ANN202
                def phi(t):  # noqa: ANN001, ANN202
                    inner = lambda s: jax.jvp(lambda r: L(r, X, y), (s,), (d,))  # noqa: E731
                    (val, _), (_, c) = jax.jvp(inner, (t,), (d,))
                    return val, jax.lax.stop_gradient(c)
                (val, c), g = jax.value_and_grad(phi, has_aux=True)(th)
                return val, g, c
        elif key == "ggn":
            lf = self.loss_fn

            def f(th, X, y, v):  # noqa: ANN001, ANN202
                z, Jv = jax.jvp(lambda t: self._outputs_of(t, X), (th,), (v,))
                u = jax.jvp(jax.grad(lambda zz: lf(zz, y)), (z,), (Jv,))[1]
                return jax.vjp(lambda t: self._outputs_of(t, X), th)[1](u)[0]
        else:  # pragma: no cover
            raise KeyError(key)
        self._jit[key] = f
        return f

    def _mv_fns(self, key: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
        if "mvmm_" + key not in self._jit:
            base = self._compiled(key)
            block = jax.vmap(base, in_axes=(None, None, None, 1), out_axes=1)
            self._jit["mvmm_" + key] = (jax.jit(base), jax.jit(block))
        return self._jit["mvmm_" + key]

    def _vec(self, v: Any, name: str = "v", ndim: int = 1) -> jax.Array:
        dt = getattr(v, "dtype", None)
        if dt is None or np.dtype(dt).kind != "f":
            raise TypeError(f"{name} must be a real float32/float64 array, got "
                            f"{'dtype ' + str(np.dtype(dt)) if dt is not None else type(v).__name__}")
        shape = tuple(getattr(v, "shape", ()))
        if len(shape) != ndim or shape[0] != self.layout.size:
            want = f"({self.layout.size},)" if ndim == 1 else f"({self.layout.size}, k)"
            raise ValueError(f"{name} must have shape {want}, got {shape}")
        a = to_jax(v)
        if np.dtype(a.dtype) != self.dtype:
            a = a.astype(self.dtype)
        if self.mesh is not None:
            from jax.sharding import NamedSharding, PartitionSpec

            a = jax.device_put(a, NamedSharding(self.mesh, PartitionSpec()))
        else:
            a = jax.device_put(a, self._dev)
        return a

    def _operator(self, key: str, *, psd: bool, what: str, detail: str = "") -> LinearOperator:
        ckind = "output" if key == "ggn" else key
        return self._wrap(*self._mv_fns(key), psd=psd, what=what, detail=detail,
                          cached=(ckind, *self._cached_fns(key)))

    # ------------------------------------------------------------------ product cache
    def _cache_builder(self, ckind: str) -> Callable[..., Any]:
        """The compiled ``(θ, X, y) -> residuals`` of a cache kind (a pytree of arrays: a
        ``jax.tree_util.Partial`` or a pair of them); one compilation per batch shape,
        shared by every source :meth:`at` derives, so the residuals' tree structure (and
        with it the compiled application) is the same for all of them."""
        key = "cache_build_" + ckind
        if key not in self._jit:
            L, out_of, lf = self._loss_flat, self._outputs_of, self.loss_fn
            if ckind == "hvp_forward_over_reverse":
                def build(th, X, y):  # noqa: ANN001, ANN202
                    return jax.linearize(lambda t: jax.grad(L)(t, X, y), th)[1]
            elif ckind == "hvp_reverse_over_reverse":
                def build(th, X, y):  # noqa: ANN001, ANN202
                    return jax.vjp(lambda t: jax.grad(L)(t, X, y), th)[1]
            elif ckind == "output":
                def build(th, X, y):  # noqa: ANN001, ANN202
                    z, lin = jax.linearize(lambda t: out_of(t, X), th)
                    return lin, jax.linearize(jax.grad(lambda zz: lf(zz, y)), z)[1]
            else:  # pragma: no cover
                raise KeyError(ckind)
            self._jit[key] = jax.jit(build)
        return self._jit[key]

    def _cache_nbytes(self, ckind: str, X: jax.Array, y: jax.Array) -> int:
        """The residuals' bytes of ``ckind`` on a batch of ``X``/``y``'s shapes (``jax.eval_shape``:
        one trace per kind and batch shape, no compile, no computation)."""
        sizes = self._jit.setdefault("cache_nbytes", {})
        key = (ckind, tuple(X.shape), str(X.dtype), tuple(y.shape), str(y.dtype))
        if key not in sizes:
            sizes[key] = tree_nbytes(jax.eval_shape(self._cache_builder(ckind), self.theta, X, y))
        return int(sizes[key])

    def _cached_fns(self, key: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """Compiled ``(residuals, v[, extra]) -> product`` matvec and matmat (``vmap``) of a
        product ``key`` from its cache kind's residuals (compiled once per batch shape: the
        residuals are an argument)."""
        name = "cache_apply_" + key
        if name not in self._jit:
            f: Callable[..., Any]
            if key.startswith("hvp_forward"):
                def f(lin, v):  # noqa: ANN001, ANN202
                    return lin(v)
            elif key.startswith("hvp_reverse"):
                def f(lin, v):  # noqa: ANN001, ANN202
                    return lin(v)[0]
            elif key == "ggn":
                def f(lin, v):  # noqa: ANN001, ANN202
                    jz, hl = lin
                    return jax.linear_transpose(jz, v)(hl(jz(v)))[0]
            else:  # fisher_empirical, fisher_mc: the residuals of the output and per-batch weights
                weight = self._weight_empirical if key == "fisher_empirical" else self._weight_mc

                def f(lin, v, a):  # noqa: ANN001, ANN202
                    jz = lin[0]
                    return jax.linear_transpose(jz, v)(weight(jz(v), a))[0]
            axes = (None, 1) if key.startswith(("hvp", "ggn")) else (None, 1, None)
            self._jit[name] = (jax.jit(f), jax.jit(jax.vmap(f, in_axes=axes, out_axes=1)))
        mv, mm = self._jit[name]
        return mv, mm

    def cache_info(self) -> dict[str, Any]:
        """The product cache of this source: ``{"bytes": int, "batches_cached": int,
        "batches": int, "limit": int | None}`` -- bytes held (residual pytrees of every
        kind built so far: Hessian, GGN/Fisher), the longest cached prefix of batches, the
        batches of one pass (for a stream: those seen so far) and ``cache_bytes``. No host sync."""
        return self._cache.info(self._batches.num_batches)

    def _product(self, plain: Callable[..., Any], fast: Callable[..., Any] | None, ckind: str | None,
                 th: jax.Array, bs: Batches, cache: ProductCache, vj: jax.Array, extra: Any) -> Any:
        """``Σ_b (n_b/N) product_b(vj)`` over one pass: ``fast(residuals_b, vj[, extra_b])`` on
        the batches whose ``ckind`` residuals are cached (built here on first use, while the
        bound allows), ``plain(θ, X_b, y_b, vj[, extra_b])`` on the others."""
        if fast is None or ckind is None or cache.limit == 0:
            return self._mean(lambda X, y, *e: plain(th, X, y, vj, *e), extra, bs)
        build = self._cache_builder(ckind)
        pos = itertools.count()
        kind: str = ckind

        def one(X: jax.Array, y: jax.Array, *e: Any) -> Any:
            res = cache.lookup(kind, next(pos), X, y, lambda: build(th, X, y),
                               lambda: self._cache_nbytes(kind, X, y))
            return plain(th, X, y, vj, *e) if res is None else fast(res, vj, *e)

        return self._mean(one, extra, bs)

    def _wrap(self, mv: Callable[..., Any], mm: Callable[..., Any], *, psd: bool, what: str,
              detail: str = "", extra: Any = None,
              cached: tuple[str, Callable[..., Any], Callable[..., Any]] | None = None) -> LinearOperator:
        """A symmetric named operator from compiled ``(θ, X, y, v[, extra])`` matvec and matmat;
        with ``cached = (kind, cmv, cmm)``, batches whose ``kind`` residuals are (or now get)
        cached use ``cmv``/``cmm(residuals, v[, extra])`` instead."""
        th, bs, cache = self.theta, self._batches, self._cache
        n = self.layout.size
        ckind, cmv, cmm = (None, None, None) if cached is None else cached

        def matvec(v: Any) -> Any:
            return from_jax(self._product(mv, cmv, ckind, th, bs, cache, self._vec(v), extra))

        def matmat(V: Any) -> Any:
            return from_jax(self._product(mm, cmm, ckind, th, bs, cache, self._vec(V, "V", 2), extra))

        return CurvatureOperator(matvec, (n, n), self.dtype, matmat=matmat,
                                 symmetric=True, psd=psd, xp=self.xp,
                                 description=f"{what} of {self._label()}{detail}")

    def _label(self) -> str:
        f = self.apply_fn
        name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None) or type(f).__name__
        name = name.rsplit("<locals>.", 1)[-1]  # a function defined in a function: its own name
        shard = "" if self.mesh is None else f" sharded over {self.mesh.devices.size} devices"
        return f"{name} on {self._batches.describe()}{shard}, P={self.layout.size}"

    def __repr__(self) -> str:
        return f"JaxCurvature({self._label()}, dtype={self.dtype}, hvp_mode={self.hvp_mode})"

    # ------------------------------------------------------------------ public API
    @property
    def params(self) -> Any:
        """The trainable parameters as a flat ``(P,)`` array (NumPy on the CPU, CuPy on a GPU;
        it shares the JAX buffer, read-only)."""
        return from_jax(self.theta)

    def at(self, params: Any = None, data: Any = None) -> "JaxCurvature":
        """The same model rebound to ``params`` and/or ``data``, reusing every compiled function.

        ``params``: a flat ``(P,)`` array of the trainable leaves, or a full pytree of the
        constructor's structure. ``data``: a batch ``(inputs, targets)`` or a dataset,
        checked like the constructor's (labels: one host read per batch when first seen);
        it keeps ``progress`` and ``check_deterministic`` but not ``num_data`` (pass a
        :class:`~curvlab.batches.Batches` to set it). Batches of the shapes and dtypes already
        compiled for run without retracing; this source is unchanged (operators built from
        it keep its parameters, data and product cache); the new source starts with an
        empty product cache of the same ``cache_bytes``. A pytree whose
        held-fixed leaves (not in ``trainable``) differ from this source's gives a source
        that compiles its own functions (the fixed leaves are constants of the programs).
        """
        new = copy.copy(self)
        new._cache = ProductCache(self._cache.limit)  # never the old parameters' or data's residuals
        if params is not None:
            th = jnp.array(self._params_in(params, new), copy=True)  # a snapshot, never an alias
            if self.mesh is not None:
                from jax.sharding import NamedSharding, PartitionSpec

                th = jax.device_put(th, NamedSharding(self.mesh, PartitionSpec()))
            else:
                th = jax.device_put(th, self._dev)
            new.theta = th
            if self.nan_policy == "raise" and not bool(jnp.all(jnp.isfinite(new.theta))):
                raise FloatingPointError("parameters contain NaN or Inf (nan_policy='raise')")
        if data is not None:
            new._bind_batches(self._batches.rebind(self._data_arg(data)))
        return new

    def _params_in(self, params: Any, new: "JaxCurvature") -> jax.Array:
        """``params`` (flat vector or full pytree) as the flat trainable vector; a pytree with
        other held-fixed leaves gives ``new`` those leaves and its own compiled functions."""
        if getattr(params, "ndim", None) == 1 and not isinstance(params, (dict, list, tuple)):
            return self._vec(params, "params")
        leaves, treedef = jax.tree_util.tree_flatten(params)
        if self._treedef != treedef:
            raise ValueError(f"params must be a flat ({self.layout.size},) vector or a pytree of the "
                             f"constructor's structure {self._treedef}, got {treedef}")
        fixed = [i for i in range(len(leaves)) if i not in set(self._idx)]
        same = all(leaves[i] is self._leaves[i] or (
            tuple(np.shape(leaves[i])) == tuple(self._leaves[i].shape)
            and bool(np.array_equal(np.asarray(leaves[i]), np.asarray(self._leaves[i])))) for i in fixed)
        if not same:
            new._leaves = [jnp.asarray(leaf) if i in fixed else self._leaves[i] for i, leaf in enumerate(leaves)]
            new._jit = {}
        flat = jnp.concatenate([jnp.asarray(leaves[i]).reshape(-1) for i in self._idx])
        return self._vec(flat, "params")

    def loss(self) -> float:
        """The mean loss on the data (a Python float; one compiled forward per batch, one host sync)."""
        if "loss_jit" not in self._jit:
            self._jit["loss_jit"] = jax.jit(self._loss_flat)
        f, th = self._jit["loss_jit"], self.theta
        return float(self._mean(lambda X, y: f(th, X, y)))

    def per_sample_gradients(self) -> Any:
        """The gradients ``(B, P)`` of the per-sample losses (``jax.vmap`` of ``jax.grad`` over
        the samples, compiled once); their mean is :meth:`gradient`'s ``g`` when the loss
        is a mean over the batch."""
        if "psg_jit" not in self._jit:
            def one(th, x, t):  # noqa: ANN001, ANN202
                return jax.grad(self._loss_flat)(th, x[None], t[None])

            self._jit["psg_jit"] = jax.jit(jax.vmap(one, in_axes=(None, 0, 0)))
        f, th = self._jit["psg_jit"], self.theta
        return self._batches.concat(lambda b: from_jax(f(th, *b)))

    def layer_structure(self) -> list:
        """One :class:`~curvlab.sources.DenseLayer` per dense layer that ``apply_fn`` tags with
        :func:`curvlab.adapters.jax.dense` and whose kernel is trainable (call order; layout
        names from ``weight=``/``bias=`` or the leaves' identity; ``bias_folded=False``;
        ``transposed=True``: kernels are ``(n, m)``): ``inputs`` ``a_b`` ``(B, n)``,
        ``output_grads`` ``δ_b`` ``(B, m)``, ``output_hessians`` ``M_b = ∂²ℓ_b/∂z_b²``
        ``(B, m, m)``, in the parameters' dtype, NumPy/CuPy. One compiled function per batch
        shape (a zero perturbation on each tagged output, ``m`` forward-over-reverse passes per
        layer: :mod:`curvlab.adapters.jax.layers`, method inspired by arXiv 2104.03804); one
        host sync per batch (the sample-coupling check), and for a callable loss one check
        that it is a mean of per-sample losses. Over a dataset the records of all batches are
        concatenated in pass order. Raises :class:`~curvlab.sources.LayerStructureUnavailable`
        when no layer is tagged, for a layer on non-``(B, n)`` inputs, a layer run twice, a
        kernel without a layout name, a model coupling the samples, and under ``devices=``
        sharding (not implemented).
        """
        from ...sources import DenseLayer, LayerStructureUnavailable  # noqa: PLC0415
        from .layers import check_mean_loss, layer_records  # noqa: PLC0415

        model = self._label().split(" on ")[0]
        if self.mesh is not None:
            raise LayerStructureUnavailable(
                f"JaxCurvature.layer_structure() of {model}: not implemented with devices= (sharded batches)")
        if "layers_jit" not in self._jit:
            full = jax.tree_util.tree_unflatten(self._treedef, self._leaves)
            leaf_names = [_path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(full)[0]]
            structure: dict[str, Any] = {}

            def f(th, X, y):  # noqa: ANN001, ANN202
                return layer_records(self.apply_fn, self._merge, leaf_names, frozenset(self.layout.names),
                                     self.loss_fn, th, X, y, structure)

            self._jit["layers_jit"] = (jax.jit(f), structure)
        f, structure = self._jit["layers_jit"]
        th = self.theta
        out_f = self._jit.setdefault("outputs_jit", jax.jit(self._outputs_of)) if self.loss_name is None else None

        def records(X: jax.Array, y: jax.Array) -> tuple[Any, ...]:
            recs, coupling = f(th, X, y)
            if not structure.get("order"):
                raise LayerStructureUnavailable(
                    f"JaxCurvature.layer_structure(): {model} has no tagged dense layer with a trainable kernel; write "
                    "its dense layers with curvlab.adapters.jax.dense(x, w, b, name=...) inside apply_fn")
            if float(coupling) > 0:  # one host sync
                raise LayerStructureUnavailable(
                    f"JaxCurvature.layer_structure(): {model} couples the samples (a perturbation of sample 0's "
                    "layer outputs changes other samples' output gradients, e.g. batch normalisation with batch "
                    "statistics): the per-sample factors M_b ⊗ a_b a_bᵀ do not exist")
            if out_f is not None:
                check_mean_loss(self.loss_fn, out_f(th, X), y)
            return tuple(from_jax(t) for k in structure["order"] for t in recs[k])

        if self._batches.single:
            assert self.X is not None and self.y is not None  # one batch: bound at construction
            recs = records(self.X, self.y)
        else:  # a dataset: the records of every batch, concatenated in pass order
            recs = self._batches.concat(lambda b: records(*b))
        out = []
        for i, k in enumerate(structure["order"]):
            w, b, _, _ = structure["info"][k]
            out.append(DenseLayer(name=k, weight=w, bias=b, bias_folded=False, inputs=recs[3 * i],
                                  output_grads=recs[3 * i + 1], output_hessians=recs[3 * i + 2], transposed=True))
        return out

    def unflatten(self, theta: Any) -> Any:
        """The full parameter pytree with the trainable leaves taken from ``theta`` (P,)."""
        return self._merge(self._vec(theta, "theta"))

    def gradient(self, params: Any = None) -> tuple[float, Any]:
        """``(loss, g)`` on the data; ``params`` (flat) evaluates elsewhere."""
        if "grad_jit" not in self._jit:
            self._jit["grad_jit"] = jax.jit(self._compiled("grad"))
        th = self.theta if params is None else self._vec(params, "params")
        f = self._jit["grad_jit"]
        val, g = self._mean(lambda X, y: f(th, X, y))
        return float(val), from_jax(g)

    def gradient_fn(self) -> Callable[[Any], tuple[float, Any]]:
        """A callable ``params (P,) -> (loss, g)``."""
        return lambda p: self.gradient(p)

    def hessian(self, hvp_mode: str | None = None) -> LinearOperator:
        """The loss Hessian (P × P, symmetric) as a LinearOperator."""
        mode = self.hvp_mode if hvp_mode is None else hvp_mode
        if mode not in HVP_MODES:
            raise ValueError(f"hvp_mode must be one of {HVP_MODES}, got {mode!r}")
        return self._operator("hvp_" + mode, psd=False, what="Hessian", detail=f", hvp_mode={mode}")

    def ggn(self) -> LinearOperator:
        """Generalized Gauss–Newton ``Jᵀ H_L J`` (symmetric PSD for convex losses)."""
        return self._operator("ggn", psd=True, what="GGN")

    def fisher(self, kind: str = "empirical", *, rng: Any = None, mc_samples: int = 1) -> LinearOperator:
        """Empirical, true or Monte-Carlo Fisher (``kind`` in :data:`FISHER_KINDS`); same
        definitions as :meth:`curvlab.adapters.torch.TorchCurvature.fisher` (explicit ``rng``
        for MC; ``"true"`` is the GGN's products for the built-in losses). Over a dataset,
        the output residuals of every batch (per-sample ``∇_z ℓ``; for MC the draws, taken
        batch after batch from ``rng``) are computed once here in one pass and reused, by
        batch position, by every product (memory: the outputs of the whole dataset, times
        ``mc_samples`` for MC). Over a stream each product checks that every batch is the one
        its residuals were drawn for (a fingerprint: one host copy per batch) and raises
        ``ValueError`` otherwise (a shuffling loader)."""
        if kind == "true":
            if self.loss_name is None:
                raise ValueError("fisher(kind='true') needs a built-in loss ('cross_entropy' or 'mse'): a callable "
                                 "loss defines no predictive distribution; use kind='empirical' or ggn()")
            op = self.ggn()
            op.description = op.description.replace("GGN of", "true Fisher (= GGN) of", 1)
            return op
        if "outputs_jit" not in self._jit:
            self._jit["outputs_jit"] = jax.jit(self._outputs_of)
        # the output residuals of every batch, computed (and for "mc" drawn) once here, in one
        # pass, and kept by batch position: every product then applies the same matrix
        out_f, th = self._jit["outputs_jit"], self.theta
        if kind == "empirical":
            def resid(X: jax.Array, y: jax.Array) -> jax.Array:
                z = out_f(th, X)
                return jax.grad(lambda zz: self.loss_fn(zz, y))(z) * z.shape[0]  # per-sample ∇_z ℓ_b

            rs = _Residuals(self._batches)
            for _, (X, y) in self._batches:
                rs.add(resid(X, y), (X, y))
            return self._fisher_op("empirical", rs, what="empirical Fisher")
        Rs, M = _Residuals(self._batches), None
        for _, (X, y) in self._batches:
            z = out_f(th, X)
            C = z.shape[-1]
            p = jax.nn.softmax(z, axis=-1) if self.loss_name == "cross_entropy" else None
            M, draws = mc_fisher_draws(kind, self.loss_name, rng, mc_samples, z.shape,
                                       None if p is None else np.asarray(p, dtype=np.float64))
            if p is not None:
                Rs.add(p[None] - jax.nn.one_hot(jnp.asarray(draws), C, dtype=z.dtype), (X, y))
            else:
                Rs.add(-jnp.asarray(draws, dtype=z.dtype), (X, y))
        return self._fisher_op("mc", Rs, what="Monte-Carlo Fisher", detail=f", mc_samples={M}")

    @staticmethod
    def _weight_empirical(u: jax.Array, r: jax.Array) -> jax.Array:
        """``(1/B) Σ_b r_b (r_b · u_b)``: ``r`` the per-sample output gradients ``(B, ...)``."""
        B = r.shape[0]
        s = jnp.sum((r * u).reshape(B, -1), axis=1)
        return r * s.reshape((B,) + (1,) * (r.ndim - 1)) / B

    @staticmethod
    def _weight_mc(u: jax.Array, R: jax.Array) -> jax.Array:
        """``(1/(N M)) Σ_m R_m (R_m · u)`` per output position: ``R`` ``(M, *z.shape)``."""
        M, npos = R.shape[0], u.size // u.shape[-1]
        s = jnp.sum(R * u[None], axis=-1, keepdims=True)
        return jnp.sum(R * s, axis=0) / (npos * M)

    def _fisher_op(self, kind: str, resid: list[jax.Array], *, what: str, detail: str = "") -> LinearOperator:
        """``v -> mean_b Jᵀ weight(J v, resid_b)``, compiled once per kind and batch shape (the
        residuals, one per batch in pass order, are an argument)."""
        key = "fisher_" + kind
        if key not in self._jit:
            L_out = self._outputs_of
            weight = self._weight_empirical if kind == "empirical" else self._weight_mc

            def f(th, X, y, v, a):  # noqa: ANN001, ANN202
                z, Jv = jax.jvp(lambda t: L_out(t, X), (th,), (v,))
                return jax.vjp(lambda t: L_out(t, X), th)[1](weight(Jv, a))[0]

            self._jit[key] = (jax.jit(f), jax.jit(jax.vmap(f, in_axes=(None, None, None, 1, None), out_axes=1)))
        mv, mm = self._jit[key]
        return self._wrap(mv, mm, psd=True, what=what, detail=detail, extra=resid,
                          cached=("output", *self._cached_fns(key)))

    def hvp(self, v: Any) -> Any:
        """``H v`` for a flat ``(P,)`` vector (default mode; through the product cache, like
        ``hessian() @ v``)."""
        key = "hvp_" + self.hvp_mode
        mv, _ = self._mv_fns(key)
        cmv, _ = self._cached_fns(key)
        return from_jax(self._product(mv, cmv, key, self.theta, self._batches, self._cache, self._vec(v), None))

    def directional_curvature(self, d: Any, *, params: Any = None, return_all: bool = False) -> Any:
        """``dᵀHd`` by forward-over-forward (nested ``jax.jvp``); ``return_all`` gives
        ``(loss, gᵀd, dᵀHd)``. One host sync."""
        if "curv_jit" not in self._jit:
            self._jit["curv_jit"] = jax.jit(self._compiled("curvature"))
        th = self.theta if params is None else self._vec(params, "params")
        f, dj = self._jit["curv_jit"], self._vec(d, "d")
        out = np.asarray(self._mean(lambda X, y: f(th, X, y, dj)))
        return (float(out[0]), float(out[1]), float(out[2])) if return_all else float(out[2])

    def curvature_fn(self) -> Callable[[Any], float]:
        """A callable ``d (P,) -> dᵀHd`` (forward-only)."""
        return lambda d: self.directional_curvature(d)

    def grad_and_curvature(self, d: Any, *, params: Any = None) -> tuple[float, Any, float]:
        """``(loss, g, dᵀHd)`` from one forward with second-order tangents and one backward."""
        if "gc_jit" not in self._jit:
            self._jit["gc_jit"] = jax.jit(self._compiled("grad_and_curvature"))
        th = self.theta if params is None else self._vec(params, "params")
        f, dj = self._jit["gc_jit"], self._vec(d, "d")
        val, g, c = self._mean(lambda X, y: f(th, X, y, dj))
        return float(val), from_jax(g), float(c)


# --------------------------------------------------------------------------- functional shortcuts
# The argument order of every ``*_operator`` shortcut in curvlab: the model, what the model
# does not hold (its parameters, its loss), then the data -- curvlab.hessian_operator(mlp,
# params, X, y), adapters.torch.hessian_operator(module, loss, batch), and here
# hessian_operator(apply_fn, params, loss, batch).
def hessian_operator(apply_fn: Callable[[Any, Any], Any], params: Any, loss: Any, batch: tuple[Any, Any],
                     **kwargs: Any) -> LinearOperator:
    """``JaxCurvature(apply_fn, params, loss, batch, **kwargs).hessian()``."""
    return JaxCurvature(apply_fn, params, loss, batch, **kwargs).hessian()


def ggn_operator(apply_fn: Callable[[Any, Any], Any], params: Any, loss: Any, batch: tuple[Any, Any],
                 **kwargs: Any) -> LinearOperator:
    """``JaxCurvature(apply_fn, params, loss, batch, **kwargs).ggn()``."""
    return JaxCurvature(apply_fn, params, loss, batch, **kwargs).ggn()


def fisher_operator(apply_fn: Callable[[Any, Any], Any], params: Any, loss: Any, batch: tuple[Any, Any],
                    kind: str = "empirical", *, rng: Any = None, mc_samples: int = 1, **kwargs: Any) -> LinearOperator:
    """``JaxCurvature(apply_fn, params, loss, batch, **kwargs).fisher(kind, rng=rng, mc_samples=mc_samples)``."""
    return JaxCurvature(apply_fn, params, loss, batch, **kwargs).fisher(kind, rng=rng, mc_samples=mc_samples)
