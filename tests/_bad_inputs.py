"""The bad-input engine behind ``tests/test_bad_inputs.py`` and ``benchmarks/run_bad_inputs.py``.

A registry: one :class:`Entry` per public name (``curvlab.__all__`` and the adapters' public
classes), with its *good call* (a factory per argument) and the *kind* of each argument. A
kind names the mutations generated for it (wrong shapes and dtypes, NaN/Inf, empty, negative
and huge values, wrong ``rng`` types, torch tensors and JAX arrays into the NumPy core).

Each mutated call is classified (:func:`classify`):

* ``clear_error`` -- a ``ValueError``/``TypeError`` raised inside curvlab whose message names
  the argument (or one of the entry's aliases for it);
* ``policy`` -- a documented policy: ``FloatingPointError``, ``LinAlgError``,
  ``ConvergenceError``, a ``ConvergenceWarning``/curvlab warning, a flagged result
  (``converged=False``, a skip counter, NaN propagated where the entry documents
  ``nan_policy="propagate"``);
* ``confirmed`` -- accepted, and an independent check agrees: the entry's own check (a dense
  float64 twin, a closed form), and for the conversions a user may expect to work (integer,
  float32, list, float16 data) the same call on the float64 version of the value;
* failures: ``unclear_error`` (a ``ValueError``/``TypeError`` that names no argument or is
  raised outside curvlab), ``crash`` (any other exception), ``silent`` (accepted, unflagged,
  unconfirmed: a possible silent wrong answer).
"""

from __future__ import annotations

import dataclasses
import math
import re
import traceback
import warnings
from typing import Any, Callable

import numpy as np

import curvlab
from curvlab import backend
from curvlab.linalg.operators import LinearOperator

FAILURES = ("unclear_error", "crash", "silent")
OUTCOMES = ("clear_error", "policy", "confirmed") + FAILURES

try:  # optional frameworks
    import torch
except Exception:  # pragma: no cover
    torch = None
try:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
except Exception:  # pragma: no cover
    jax = jnp = None


# ---------------------------------------------------------------------------------------------
# mutations per kind
# ---------------------------------------------------------------------------------------------
#: conversions a user may expect to work: accepted only with a result equal to the float64 twin
TWIN = {"int": 0.0, "float32": 2e-3, "list": 1e-9, "float16": 2e-2, "object": 1e-9, "torch": 1e-9, "jax": 1e-9}

_ARRAY = ("int", "float32", "list", "float16", "object", "complex", "nan", "inf", "torch", "jax",
          "ndim+", "shape", "empty", "string", "none")
KINDS: dict[str, tuple[str, ...]] = {
    "array": _ARRAY,
    "array?": tuple(m for m in _ARRAY if m != "none"),  # optional array: None is the default
    "symop": ("nonsym", "int", "float32", "list", "complex", "nan", "inf", "torch", "jax", "nonsquare",
              "empty", "string"),
    "sqop": ("nonsym", "int", "float32", "list", "complex", "nan", "inf", "torch", "jax", "nonsquare", "empty",
             "string"),
    "pos": ("zero", "neg", "nan", "inf", "str", "bool", "complex", "none"),
    "pos?": ("zero", "neg", "nan", "inf", "str", "bool", "complex"),
    "nonneg": ("neg", "nan", "inf", "str", "bool", "complex", "none"),
    "real": ("nan", "inf", "str", "complex", "none"),
    "layout": ("neg", "frac", "str", "onedim", "none"),
    "count": ("zero", "neg", "frac", "str", "bool", "none", "huge"),
    "count?": ("zero", "neg", "frac", "str", "bool"),
    "rng": ("float", "str", "randomstate", "negseed", "torchgen", "bool"),
    "choice": ("bogus", "int", "none"),
    "callable": ("int", "str", "none"),
    "symfn": ("int", "str", "none", "nonsym", "nanout", "wrongshape"),
    "labels": ("oob", "negative", "fraction", "nan", "shape", "torch", "ndim+", "none", "complex"),
    "dtype": ("int32", "complex", "bogus", "float16"),
    "shape2": ("negdim", "fracdim", "str", "short"),
    "sizes": ("frac", "neg", "zero", "short", "str"),
    "model": ("str", "none", "int"),
    "transform": ("str", "none", "sgdclass"),
    "fixed": (),
}


def _twin_value(kind_mut: str, x: Any) -> Any:
    """The float64 value a user means by the converted ``x`` (for the twin call)."""
    if kind_mut in ("list", "torch", "jax"):
        return np.asarray(x, dtype=np.float64)
    return np.asarray(x).astype(np.float64)


def good_n(f: Any) -> int:
    """The size a good ``v -> A v`` callable acts on (probed with growing sizes)."""
    for n in range(1, 64):
        try:
            f(np.zeros(n))
            return n
        except Exception:  # noqa: BLE001
            continue
    return 1


def mutate(kind: str, mut: str, good: Any, rng: np.random.Generator) -> Any:
    """The bad value for mutation ``mut`` of a good value of ``kind``."""
    if kind in ("array", "array?", "symop", "sqop"):
        x = np.asarray(good, dtype=np.float64) if not isinstance(good, LinearOperator) else good.to_dense()
        idx = tuple(int(rng.integers(0, s)) for s in x.shape) if x.size else None
        if mut == "int":
            return np.round(3 * x).astype(np.int64)
        if mut == "float32":
            return x.astype(np.float32)
        if mut == "float16":
            return x.astype(np.float16)
        if mut == "list":
            return x.tolist()
        if mut == "object":
            return x.astype(object)
        if mut == "complex":
            return x + 1j * (x != 0)
        if mut in ("nan", "inf"):
            y = x.copy()
            y[idx] = np.nan if mut == "nan" else (np.inf if rng.random() < 0.5 else -np.inf)
            return y
        if mut == "torch":
            return torch.from_numpy(x.copy()) if torch is not None else None
        if mut == "jax":
            return jnp.asarray(x) if jnp is not None else None
        if mut == "ndim+":
            return x[None]
        if mut == "shape":
            return x[:-1] if x.ndim else x
        if mut == "empty":
            return x[:0] if x.ndim == 1 else np.zeros((0,) * x.ndim)
        if mut == "string":
            return "abc"
        if mut == "none":
            return None
        if mut == "nonsym":
            y = x.copy()
            y[0, -1] += 1.0 + abs(x).max()
            return y
        if mut == "nonsquare":
            return x[:-1]
    if kind == "layout":
        return {"neg": [(4, -4), (2, 5)], "frac": [(4, 2.5)], "str": "abc", "onedim": [(4,)], "none": None}[mut]
    if kind in ("pos", "pos?", "nonneg", "real"):
        return {"zero": 0.0, "neg": -float(rng.uniform(0.1, 10)), "nan": math.nan,
                "inf": math.inf if rng.random() < 0.5 else -math.inf, "str": "1", "bool": True,
                "complex": 1 + 1j, "none": None}[mut]
    if kind in ("count", "count?"):
        return {"zero": 0, "neg": -int(rng.integers(1, 5)), "frac": 2.5, "str": "3", "bool": True, "none": None,
                "huge": 10**12}[mut]
    if kind == "rng":
        if mut == "torchgen":
            return torch.Generator() if torch is not None else None
        return {"float": 1.5, "str": "seed", "randomstate": np.random.RandomState(0), "negseed": -3,
                "bool": True}[mut]
    if kind == "choice":
        return {"bogus": "__nope__", "int": 3, "none": None}[mut]
    if kind == "symfn":
        N = np.asarray(rng.standard_normal((good_n(good), good_n(good))))
        return {"int": 3, "str": "f", "none": None, "nonsym": lambda v: N @ v, "nanout": lambda v: v * np.nan,
                "wrongshape": lambda v: v[:-1]}[mut]
    if kind == "callable":
        return {"int": 3, "str": "f", "none": None}[mut]
    if kind == "labels":
        y = np.asarray(good)
        if mut == "oob":
            z = y.copy()
            z[int(rng.integers(0, y.size))] = int(y.max()) + 7
            return z
        if mut == "negative":
            z = y.copy()
            z[int(rng.integers(0, y.size))] = -1
            return z
        if mut == "fraction":
            return y + 0.5
        if mut == "nan":
            z = y.astype(np.float64)
            z[0] = np.nan
            return z
        if mut == "complex":
            return y + 1j
        return mutate("array", {"shape": "shape", "torch": "torch", "ndim+": "ndim+", "none": "none"}[mut], y, rng) \
            if mut != "torch" else (torch.from_numpy(y.copy()) if torch is not None else None)
    if kind == "dtype":
        return {"int32": np.int32, "complex": np.complex128, "bogus": "foo", "float16": np.float16}[mut]
    if kind == "shape2":
        return {"negdim": (-1, 3), "fracdim": (2.5, 3), "str": "ab", "short": (3,)}[mut]
    if kind == "sizes":
        s = list(good)
        return {"frac": [s[0], 2.9, s[-1]], "neg": [s[0], -2, s[-1]], "zero": [s[0], 0, s[-1]], "short": [s[0]],
                "str": "abc"}[mut]
    if kind == "model":
        return {"str": "mlp", "none": None, "int": 3}[mut]
    if kind == "transform":
        return {"str": "sgd", "none": None, "sgdclass": curvlab.SGD}[mut]
    raise KeyError((kind, mut))


# ---------------------------------------------------------------------------------------------
# registry entries
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Entry:
    """One public name: its good call and how to judge a returned result.

    ``args``: name -> (factory of the good value, kind). ``run(kw)`` makes the call and returns
    the result (default: ``target(**kw)``). ``check(result, kw)``: an independent check of a
    returned result (raise ``AssertionError`` when it is wrong), run on every accepted call.
    ``aliases``: more words an error message may use to name an argument. ``skip``: mutations
    not generated, each with its reason. ``nan_propagates``: NaN/Inf data may come back as
    NaN (a documented ``nan_policy="propagate"``).
    """

    target: Any
    args: dict[str, tuple[Callable[[], Any], str]]
    run: Callable[[dict], Any] | None = None
    check: Callable[[Any, dict], None] | None = None
    aliases: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    skip: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    nan_propagates: bool = False
    needs: str | None = None  # "torch" / "jax"
    twin: bool = True  # False: a random estimator, judged by its check (error bars), not bit-close to a twin

    def call(self, kw: dict) -> Any:
        return self.run(kw) if self.run is not None else self.target(**kw)

    def mutations(self) -> list[tuple[str, str]]:
        out = []
        for name, (_, kind) in self.args.items():
            for mut in KINDS[kind]:
                if (name, mut) in self.skip or (name, "*") in self.skip:
                    continue
                if mut == "torch" and torch is None or mut == "jax" and jnp is None:
                    continue
                out.append((name, mut))
        return out


def _digest(obj: Any, depth: int = 0) -> np.ndarray:
    """A numeric fingerprint of a result, for twin comparisons (float64, host)."""
    if depth > 4 or obj is None:
        return np.zeros(0)
    if isinstance(obj, LinearOperator):
        return np.asarray(backend.to_numpy(obj.to_dense()), dtype=np.float64).ravel() if obj.shape[1] <= 400 else np.zeros(0)
    if isinstance(obj, (bool, np.bool_, str)):
        return np.zeros(0)
    if isinstance(obj, (int, float, np.integer, np.floating)):
        return np.array([float(obj)])
    if isinstance(obj, np.ndarray) or backend.is_cupy_array(obj):
        a = backend.to_numpy(obj)
        return a.astype(np.float64).ravel() if a.dtype.kind in "fiub" else np.zeros(0)
    if torch is not None and isinstance(obj, torch.Tensor):
        return obj.detach().cpu().double().numpy().ravel()
    if isinstance(obj, (list, tuple)):
        parts = [_digest(o, depth + 1) for o in obj]
        return np.concatenate(parts) if parts else np.zeros(0)
    if isinstance(obj, dict):
        return _digest([obj[k] for k in sorted(obj, key=str)], depth + 1)
    if dataclasses.is_dataclass(obj):
        keep = ("eigenvalues", "estimate", "std_error", "eta", "s", "x", "value", "lam", "nodes", "weights",
                "a", "h", "P00", "P01", "P11", "alpha", "beta")
        return _digest([getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name in keep], depth + 1)
    return np.zeros(0)


def _flagged(obj: Any, depth: int = 0) -> bool:
    """A result that says something went wrong: unconverged, a status other than converged,
    a skip counter > 0, or a message about NaN."""
    if depth > 3 or obj is None:
        return False
    if isinstance(obj, (list, tuple)):
        return any(_flagged(o, depth + 1) for o in obj)
    for name in ("converged", "all_converged"):
        v = getattr(obj, name, None)
        if v is not None and not callable(v):
            try:
                if not bool(np.all(backend.to_numpy(v))):
                    return True
            except Exception:
                pass
    st = getattr(obj, "status", None)
    if st is not None and "converged" not in str(st).lower() and "ok" not in str(st).lower():
        return True
    for name in ("n_skipped", "n_skipped_steps", "consecutive_skips", "n_nonfinite"):
        v = getattr(obj, name, None)
        if isinstance(v, (int, np.integer)) and v > 0:
            return True
    msg = getattr(obj, "message", None)
    if isinstance(msg, str) and re.search(r"nan|non-?finite|inf\b", msg, re.I):
        return True
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return any(_flagged(getattr(obj, f.name), depth + 1) for f in dataclasses.fields(obj)
                   if f.name in ("info", "state"))
    return False


def _raised_in_curvlab(exc: BaseException) -> bool:
    tb = traceback.extract_tb(exc.__traceback__)
    return bool(tb) and "/curvlab/" in tb[-1].filename.replace("\\", "/")


#: words that name an argument of a kind in any message (an operator's size is its ``n``)
KIND_ALIASES = {"symop": ("n",), "sqop": ("n",)}


def _names_argument(msg: str, name: str, aliases: tuple[str, ...]) -> bool:
    words = (name,) + tuple(aliases)
    return any(re.search(rf"(?<![A-Za-z0-9_]){re.escape(w)}(?![A-Za-z0-9_])", msg) for w in words)


def _close(a: np.ndarray, b: np.ndarray, rtol: float) -> bool:
    if a.shape != b.shape:
        return False
    if a.size == 0:
        return True
    scale = max(float(np.max(np.abs(b[np.isfinite(b)]))) if np.any(np.isfinite(b)) else 0.0, 1e-300)
    same_nan = np.array_equal(np.isnan(a), np.isnan(b))
    fa, fb = np.nan_to_num(a, nan=0.0), np.nan_to_num(b, nan=0.0)
    return bool(same_nan and np.all(np.abs(fa - fb) <= rtol * scale + 1e-12 * scale))


@dataclasses.dataclass
class Outcome:
    name: str
    arg: str
    mut: str
    kind: str  # one of OUTCOMES
    detail: str


def good_kwargs(entry: Entry) -> dict:
    return {k: f() for k, (f, _) in entry.args.items()}


def classify(entry_name: str, entry: Entry, arg: str, mut: str, seed: int) -> Outcome:
    """Run one mutated call of ``entry`` and classify what happened."""
    rng = np.random.default_rng(seed)
    kw = good_kwargs(entry)
    kind = entry.args[arg][1]
    bad = mutate(kind, mut, kw[arg], rng)
    kw[arg] = bad
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = entry.call(kw)
        except (ValueError, TypeError) as exc:
            if isinstance(exc, np.linalg.LinAlgError):
                return Outcome(entry_name, arg, mut, "policy", f"LinAlgError: {exc}"[:200])
            msg = str(exc)
            named = _names_argument(msg, arg, entry.aliases.get(arg, ()) + KIND_ALIASES.get(kind, ()))
            ok = named and _raised_in_curvlab(exc)
            return Outcome(entry_name, arg, mut, "clear_error" if ok else "unclear_error",
                           f"{type(exc).__name__}: {msg}"[:300])
        except (FloatingPointError, np.linalg.LinAlgError) as exc:
            return Outcome(entry_name, arg, mut, "policy", f"{type(exc).__name__}: {exc}"[:200])
        except Exception as exc:  # noqa: BLE001 - classified as a crash
            if type(exc).__name__ == "ConvergenceError":
                return Outcome(entry_name, arg, mut, "policy", f"ConvergenceError: {exc}"[:200])
            return Outcome(entry_name, arg, mut, "crash", f"{type(exc).__name__}: {exc}"[:300])
    curv_warn = [w for w in caught if "/curvlab/" in str(w.filename).replace("\\", "/")
                 or type(w.message).__name__ == "ConvergenceWarning"]
    if mut in ("nan", "inf") and entry.nan_propagates:
        try:
            if not np.all(np.isfinite(_digest(res))):
                return Outcome(entry_name, arg, mut, "policy", "NaN propagated (documented nan_policy='propagate')")
        except Exception:  # noqa: BLE001
            pass
    try:
        if entry.check is not None:
            entry.check(res, kw)
    except AssertionError as exc:
        if curv_warn or _flagged(res):
            return Outcome(entry_name, arg, mut, "policy", f"flagged (check failed: {exc})"[:200])
        return Outcome(entry_name, arg, mut, "silent", f"independent check failed: {exc}"[:300])
    except Exception as exc:  # the result cannot even be inspected
        if curv_warn or _flagged(res):
            return Outcome(entry_name, arg, mut, "policy", "flagged")
        return Outcome(entry_name, arg, mut, "silent", f"result unusable: {type(exc).__name__}: {exc}"[:300])
    if curv_warn or _flagged(res):
        return Outcome(entry_name, arg, mut, "policy",
                       f"flagged{': ' + str(curv_warn[0].message)[:120] if curv_warn else ''}")
    dig = _digest(res)
    if mut in ("nan", "inf") and entry.nan_propagates and not np.all(np.isfinite(dig)):
        return Outcome(entry_name, arg, mut, "policy", "NaN propagated (documented nan_policy='propagate')")
    if mut in TWIN and not (entry.twin is False and entry.check is not None and getattr(entry.check, "confirms", False)):
        kw2 = good_kwargs(entry)
        kw2[arg] = _twin_value(mut, bad)
        try:
            ref = entry.call(kw2)
        except Exception as exc:  # noqa: BLE001
            return Outcome(entry_name, arg, mut, "silent", f"accepted, but the float64 twin raised {exc!r}"[:300])
        if _close(dig, _digest(ref), max(TWIN[mut], 1e-9)):
            return Outcome(entry_name, arg, mut, "confirmed", "equals the float64 twin")
        return Outcome(entry_name, arg, mut, "silent", "differs from the float64 twin")
    if entry.check is not None and getattr(entry.check, "confirms", False):
        return Outcome(entry_name, arg, mut, "confirmed", "independent check passed")
    return Outcome(entry_name, arg, mut, "silent", f"accepted without a flag; digest {dig[:4]}")


def run_entry(entry_name: str, entry: Entry, seeds: list[int]) -> list[Outcome]:
    """Every mutation of ``entry`` once per seed (the seed varies positions, signs, magnitudes)."""
    return [classify(entry_name, entry, arg, mut, s) for s in seeds for arg, mut in entry.mutations()]
