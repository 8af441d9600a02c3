"""Helpers of ``benchmarks/run_peers.py`` and ``benchmarks/benchmarks/bench_peers.py`` (issue 14, target 8).

Each group module (:mod:`._torch`, :mod:`._jax`, :mod:`._numpy`, :mod:`._eigen`,
:mod:`._methods`) has a ``measure(repeat, ...)`` returning ``(rows, ratios)``: the table rows
(:class:`Row`) and the headline ratios by key (what the asv ``track_`` benchmarks return).
Every figure is process CPU time (``time.process_time``: all threads of this process) per
call, the best of ``repeat`` round-robin repeats after one warm-up call, 1 BLAS thread, and
each ratio is taken between calls timed in the same round-robin loop (same machine load).
"""

from __future__ import annotations

import inspect
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

#: environment of a one-thread run; :func:`one_thread_env` sets it before NumPy/JAX/torch load
THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
}

_LIMITS: list[Any] = []


def one_thread_env() -> None:
    """Set :data:`THREAD_ENV` (only variables not already set; call before importing NumPy)."""
    for k, v in THREAD_ENV.items():
        os.environ.setdefault(k, v)


def one_thread() -> None:
    """1 BLAS thread (threadpoolctl, process-wide) and 1 torch intra-op thread (if torch loads)."""
    if not _LIMITS:
        try:
            from threadpoolctl import threadpool_limits

            _LIMITS.append(threadpool_limits(limits=1, user_api="blas"))
        except Exception:  # pragma: no cover - threadpoolctl missing: the env vars still apply
            _LIMITS.append(None)
    try:
        import torch

        torch.set_num_threads(1)
    except Exception:  # pragma: no cover - no torch
        pass


def best_cpu(fns: Mapping[str, Callable[[], Any]], repeat: int, warmup: int = 1) -> dict[str, float]:
    """Best process CPU seconds per call of each callable, ``repeat`` round-robin rounds after
    ``warmup`` calls of each (the warm-up builds caches and compiles)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.process_time()
            fn()
            best[k] = min(best[k], time.process_time() - t0)
    return best


def has_kwarg(fn: Any, name: str) -> bool:
    """Whether ``fn`` (a class: its ``__init__``) takes keyword ``name`` (feature detection)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False


def short_error(exc: BaseException, n: int = 90) -> str:
    """``TypeName: first line of the message`` cut to ``n`` characters, for a table cell."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    out = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    return out if len(out) <= n else out[: n - 1] + "…"


@dataclass
class Row:
    """One row of the table: product | curvlab | peers (same run) | target | met?."""

    product: str
    curvlab: str
    peers: str = "—"
    target: str = "—"
    met: str = "—"


def cell(t: float | None, ref: float | None, *, ms: bool = True) -> str:
    """``"1.23× (4.5 ms)"``: ``t / ref`` and the absolute time; ``"—"`` when unmeasured."""
    if t is None or ref is None or not (t < float("inf")):
        return "—"
    s = f"{t / ref:.2f}×"
    return f"{s} ({t * 1e3:.1f} ms)" if ms else s


def verdict(checks: list[tuple[str, bool | None]]) -> str:
    """``"yes"`` when every measured check holds, else ``"no: <failed parts>"``; unmeasured
    checks (``None``) are listed as "n/a"."""
    failed = [name for name, ok in checks if ok is False]
    unknown = [name for name, ok in checks if ok is None]
    if failed:
        out = "no: " + "; ".join(failed)
    elif checks and len(unknown) == len(checks):
        return "n/a"
    else:
        out = "yes"
    if unknown:
        out += " (n/a: " + "; ".join(unknown) + ")"
    return out


def flat(x: Any) -> Any:
    """A product's result as one float64 NumPy vector: NumPy arrays, torch tensors, JAX arrays,
    and tuples/lists/dicts of them (concatenated in order), or a scalar."""
    import numpy as np

    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (tuple, list)):
        return np.concatenate([flat(a) for a in x]) if x else np.zeros(0)
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64).ravel()


def agreement(results: Mapping[str, Any], ref: str) -> dict[str, float]:
    """``‖r_k − r_ref‖ / ‖r_ref‖`` for every result ``k`` (flattened with :func:`flat`)."""
    import numpy as np

    b = flat(results[ref])
    nb = float(np.linalg.norm(b)) or 1.0
    return {k: float(np.linalg.norm(flat(v) - b)) / nb for k, v in results.items() if k != ref}


def agreement_row(product: str, groups: Mapping[str, tuple[Mapping[str, Any], str]], tol: float = 1e-3) -> Row:
    """A row checking that curvlab and the peers computed the same numbers: per product name,
    the largest relative difference of any result to the reference result ``ref``."""
    worst: dict[str, float] = {}
    for name, (results, ref) in groups.items():
        d = agreement(results, ref)
        worst[name] = max(d.values()) if d else 0.0
    text = "; ".join(f"{n} {v:.1e}" for n, v in worst.items())
    refs = ", ".join(f"{n}: {ref}" for n, (_, ref) in groups.items())
    return Row(product, "max rel. difference " + text, f"references — {refs}", f"≤ {tol:g} (same numbers)",
               verdict([(f"{n} agrees", v <= tol) for n, v in worst.items()]))


def le(a: float | None, b: float | None, slack: float = 1.0) -> bool | None:
    """``a <= slack * b``, or ``None`` when either is unmeasured."""
    if a is None or b is None or not (a < float("inf") and b < float("inf")):
        return None
    return bool(a <= slack * b)


def markdown(rows: list[Row]) -> str:
    """The rows as a markdown table."""
    head = "| product | curvlab | peers (same run) | target | met? |\n|---|---|---|---|---|\n"
    return head + "\n".join(f"| {r.product} | {r.curvlab} | {r.peers} | {r.target} | {r.met} |" for r in rows)
