"""Shared pieces of the figure modules: the spec/result types, the run context, data,
training loops, tuning on a validation split, and plotting helpers.

A figure module defines ``SPEC`` (a :class:`FigureSpec`) and ``run(ctx) -> FigureResult``.
The runner (:mod:`paper_figures._runner`) checks ``SPEC.requires`` before calling ``run``:
a figure whose curvlab module is not importable yet is *skipped*, not failed.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import time
from typing import Any, Callable, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MODES = ("tiny", "quick", "full")
DEFAULT_SEEDS = {"tiny": 1, "quick": 3, "full": 5}

#: The verdict vocabulary of the report: every claim a figure tests gets exactly one of these.
VERDICTS = ("supported", "not supported", "mixed", "inconclusive in this surrogate")

ARXIV = {
    "000": "2104.03804",
    "001": "2310.20574",
    "002": "1708.00523",
    "003": "2210.14520",
}
PAPER_TITLES = {
    "000": "Exact Stochastic Second Order Deep Learning",
    "001": "Information-Theoretic Trust Regions for Stochastic Gradient-Based Optimization (arTuRO)",
    "002": "The duality structure gradient descent algorithm (DSGD)",
    "003": "Adaptive scaling of the learning rate by second order automatic differentiation",
    "core": "curvlab core (no paper)",
}


#: The claims of each paper, in the abstract's own words (quoted from ``shared/papers/NNN-*.md`` §1).
CLAIMS: dict[str, dict[str, str]] = {
    "000": {
        "C1": 'The long-standing problem of second-order methods (cost, poor performance, non-convexity) "could be '
              'solved in the stochastic case, given a suitable regularization of the neural network"',
        "C2": '"an expression of the stochastic Hessian and its exact eigenvalues"',
        "C3": '"a closed-form formula for the exact stochastic second-order Newton direction"',
        "C4": '"we solve the non-convexity issue"',
        "C5": '"adjust our exact solution to favor flat minima through regularization and spectral adjustment"',
        "C6": 'tested "on popular datasets", showing "its adequacy for Deep Learning"',
    },
    "001": {
        "C1": 'Parameters modelled as a Gaussian; a KL-divergence trust region gives "bounded steps accounting for '
              'the objective\'s curvature and uncertainty in the parameters"',
        "C2": '"Before each update, it solves the trust region problem for an optimal step size, resulting in a more '
              'stable and faster optimization process."',
        "C3": 'The diagonal Hessian is approximated "from stochastic gradients using a simple recursive least squares '
              'approach", building "a model of the expected Hessian over time using only first-order information"',
        "C4": 'arTuRO "combines the fast convergence of adaptive moment-based optimization with the generalization '
              'capabilities of SGD"',
    },
    "002": {
        "C1": 'Existing analyses assume gradient smoothness, which is "too strong to be applicable in the case of deep '
              'neural networks"',
        "C2": 'DSGD is "amenable to non-asymptotic performance analysis, under mild assumptions on the training set '
              'and network architecture"',
        "C3": 'It is "a form of layer-wise coordinate descent": each iteration updates one layer',
        "C4": 'The layer is chosen greedily "based on a rigorous lower bound on the improvement of the objective '
              'function for each choice of layer"',
        "C5": 'The time to reach approximate stationary points is bounded "in both the deterministic and stochastic '
              'settings"',
        "C6": 'Convergence is measured in "a parameter-dependent family of norms that is derived from the network '
              'architecture", designed to give a smoothness-like property of the gradient',
        "C7": '"We empirically demonstrate the effectiveness of DSGD in several neural network training scenarios"',
    },
    "003": {
        "C1": 'The learning rate is rescaled using "the computation of the curvature, a second order information whose '
              'computational complexity is in between the computation of the gradient and the one of the '
              'Hessian-vector product"',
        "C2": '"the new technique increase the overall cost to either (1.5C,2M) or (2C,1M)"',
        "C3": 'The rescaling "has a natural interpretation, it allows the practitioner to choose between exploration '
              'of the parameters set and convergence of the algorithm"',
        "C4": 'The rescaling "is adaptive, it depends on the data and on the direction of descent"',
        "C5": '"The numerical experiments highlight the different exploration/convergence regimes."',
        "C6": '"The rescaling is tested using the simple strategy of exponential decay, a method with comprehensive '
              'hyperparameters that requires no tuning."',
        "C7": '"When compared to standard algorithm with optimized hyperparameters, this algorithm exhibit similar '
              'convergence rates"',
        "C8": '"and is also empirically shown to be more stable than standard method."',
    },
}


def arxiv_url(paper: str) -> str | None:
    """The arXiv abstract page of ``paper`` ("000".."003"), or None."""
    a = ARXIV.get(paper)
    return f"https://arxiv.org/abs/{a}" if a else None


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The outcome of one claim in one figure.

    claim : label of the paper's spec (``"C5"``).
    verdict : one of :data:`VERDICTS` ("... in this surrogate" is implied for every verdict).
    criterion : the rule, in words, that maps the numbers to the verdict (shown in the caption).
    evidence : the numbers the rule used, with their spread (mean ± std over seeds, or an interval).
    """

    claim: str
    verdict: str
    criterion: str
    evidence: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if not self.criterion.strip() or not self.evidence.strip():
            raise ValueError(f"verdict of {self.claim}: criterion and evidence must be non-empty")

    def asdict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def vote(passes: Sequence[bool], need: float = 2 / 3) -> str:
    """'supported' when at least ``need`` of the cases pass, 'not supported' when at least ``need``
    fail, 'mixed' otherwise ('inconclusive in this surrogate' when there are no cases)."""
    passes = [bool(p) for p in passes]
    if not passes:
        return "inconclusive in this surrogate"
    k, n = sum(passes), len(passes)
    if k >= math.ceil(need * n - 1e-9):
        return "supported"
    if n - k >= math.ceil(need * n - 1e-9):
        return "not supported"
    return "mixed"


def combine(*verdicts: str) -> str:
    """All parts supported -> supported; all not supported -> not supported; otherwise mixed."""
    vs = set(verdicts)
    if vs == {"supported"}:
        return "supported"
    if vs == {"not supported"}:
        return "not supported"
    if vs == {"inconclusive in this surrogate"}:
        return "inconclusive in this surrogate"
    return "mixed"


def pm(values: Sequence[float], digits: int = 3) -> str:
    """'mean ± std (n = k)' of the finite values; non-finite ones are counted as diverged."""
    v = np.asarray([float(x) for x in values], dtype=float)
    ok = v[np.isfinite(v)]
    if len(ok) == 0:
        return f"diverged in all {len(v)}"
    s = f"{fmt(float(ok.mean()), digits)} ± {fmt(float(ok.std()), 2)} (n = {len(ok)})"
    if len(ok) < len(v):
        s += f", {len(v) - len(ok)} diverged"
    return s


def edge_note(value: float, grid: Sequence[float], what: str) -> str:
    """A warning when the tuned ``value`` is the first or last point of its ``grid`` (else '')."""
    g = list(grid)
    if len(g) > 1 and (np.isclose(value, g[0]) or np.isclose(value, g[-1])):
        side = "lower" if np.isclose(value, g[0]) else "upper"
        return f"tuned {what} = {value:g} is at the {side} edge of its grid {[float(f'{x:.3g}') for x in g]}"
    return ""


class FigureSkipped(Exception):
    """Raised inside ``run`` when a needed curvlab piece is missing: the figure is skipped."""


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """Static description of one figure.

    name : registry name, e.g. ``"000_exactness"``.
    paper : ``"000"`` .. ``"003"`` or ``"core"``.
    claims : claim labels of the paper's spec (``("C2", "C3")``); empty for ``core``.
    title : short title of the plot.
    substitution : what replaces the paper's setting (dataset, scale).
    columns : the CSV header, checked by the smoke test.
    requires : importable ``"module"`` or ``"module:attr"`` strings; missing -> skipped.
    """

    name: str
    paper: str
    claims: tuple[str, ...]
    title: str
    substitution: str
    columns: tuple[str, ...]
    requires: tuple[str, ...] = ()

    @property
    def arxiv(self) -> str | None:
        return ARXIV.get(self.paper)

    def claim_quotes(self) -> dict[str, str]:
        """``{label: the abstract's words}`` for the claims this figure tests."""
        table = CLAIMS.get(self.paper, {})
        return {c: table.get(c, "(claim text not in the table)") for c in self.claims}

    def claim_text(self) -> str:
        if self.paper == "core":
            return "Library validation experiment (no paper claim): " + self.title
        claims = ", ".join(self.claims)
        word = "claims" if len(self.claims) > 1 else "claim"
        return f"Surrogate experiment testing {word} {claims} of arXiv {self.arxiv}"


@dataclasses.dataclass
class Check:
    """A sanity assertion of a figure: ``ok`` False marks the figure failed."""

    name: str
    ok: bool
    detail: str = ""


@dataclasses.dataclass
class FigureResult:
    """What ``run`` returns: the figure, the plotted data, the outcome and the checks."""

    fig: Any
    rows: list[Sequence[Any]]
    outcome: str
    checks: list[Check] = dataclasses.field(default_factory=list)
    hyperparameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    scale: str = ""
    #: one :class:`Verdict` per claim in ``SPEC.claims`` (the runner fails a paper figure that lacks one)
    verdicts: list[Verdict] = dataclasses.field(default_factory=list)
    #: the seeds this figure actually used (None: all of ``ctx.seeds``; [] for a deterministic figure)
    seeds_used: list[int] | None = None


class Context:
    """Run settings handed to every figure: mode, seeds, progress bars.

    ``ctx.pick(tiny=..., quick=..., full=...)`` selects a size by mode
    (``tiny`` defaults to ``quick``'s value if omitted).
    """

    def __init__(self, mode: str = "quick", seeds: int | None = None, progress: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        n = DEFAULT_SEEDS[mode] if seeds is None else int(seeds)
        if n < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        self.mode = mode
        self.seeds = list(range(n))
        self.show_progress = progress

    @property
    def tiny(self) -> bool:
        return self.mode == "tiny"

    @property
    def full(self) -> bool:
        return self.mode == "full"

    def pick(self, *, quick: Any, full: Any, tiny: Any = None) -> Any:
        if self.mode == "full":
            return full
        if self.mode == "tiny":
            return quick if tiny is None else tiny
        return quick

    def progress(self, iterable: Iterable[Any], desc: str = "", total: int | None = None, leave: bool = False):
        """A tqdm bar over ``iterable`` (plain iteration with progress off)."""
        if not self.show_progress:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=f"  {desc}", total=total, leave=leave, dynamic_ncols=True)


# ----------------------------------------------------------------------------- requirements
def missing_requirements(requires: Iterable[str]) -> list[str]:
    """The entries of ``requires`` that cannot be imported (``module`` or ``module:attr``)."""
    missing = []
    for req in requires:
        mod, _, attr = req.partition(":")
        try:
            m = importlib.import_module(mod)
            if attr and not hasattr(m, attr):
                missing.append(req)
        except Exception:  # ImportError, or a half-written module raising anything
            missing.append(req)
    return missing


def need(module: str, attr: str | None = None) -> Any:
    """Import ``module`` (and ``attr``) or raise :class:`FigureSkipped`."""
    try:
        m = importlib.import_module(module)
    except Exception as exc:
        raise FigureSkipped(f"module {module} not available ({type(exc).__name__})") from exc
    if attr is None:
        return m
    if not hasattr(m, attr):
        raise FigureSkipped(f"{module}.{attr} not available")
    return getattr(m, attr)


# ----------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=None)
def dataset(name: str = "digits", dtype: str = "float64"):
    """The fixed train/test split of ``curvlab.data`` (cached per process)."""
    from curvlab import data

    if name == "digits":
        return data.load_digits(dtype=dtype)
    if name == "mnist":
        return data.load_mnist_subset(dtype=dtype)
    if name == "mnist1d":
        return load_mnist1d(dtype)
    raise ValueError(f"dataset must be 'digits', 'mnist' or 'mnist1d', got {name!r}")


def load_mnist1d(dtype: str = "float64"):
    """MNIST-1D (Greydanus 2020), *generated* offline by the ``mnist1d`` package from its ten built-in
    templates with the package's default arguments (5,000 sequences of length 40, 10 classes, seed 42,
    the package's own 4,000/1,000 split); ``make_dataset`` never downloads (``get_dataset`` would).
    Harder than digits for an MLP (linear models reach ~0.3 test accuracy, MLPs ~0.6-0.7). The package
    reseeds NumPy's global RNG; its state is restored afterwards."""
    from curvlab import data

    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except Exception as exc:  # optional dependency of the figures extra
        raise FigureSkipped(f"module mnist1d not available ({type(exc).__name__})") from exc
    state = np.random.get_state()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(state)
    dt = np.dtype(dtype)
    return data.Dataset(np.asarray(d["x"], dt), np.asarray(d["y"], np.int64), np.asarray(d["x_test"], dt),
                        np.asarray(d["y_test"], np.int64), 10, "mnist1d")


def subsample(X: np.ndarray, y: np.ndarray, n: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """At most ``n`` rows chosen with a fixed seed (all rows when ``n`` is None)."""
    if n is None or n >= len(X):
        return X, y
    idx = np.random.default_rng(seed).choice(len(X), n, replace=False)
    return X[idx], y[idx]


def validation_split(X: np.ndarray, y: np.ndarray, frac: float = 0.1, seed: int = 0):
    """Split the training set into (fit, validation) parts; the test set is never used to tune."""
    perm = np.random.default_rng(1000 + seed).permutation(len(X))
    n_val = max(1, int(round(frac * len(X))))
    v, t = perm[:n_val], perm[n_val:]
    return X[t], y[t], X[v], y[v]


def fit_eval_split(ds, n_train: int | None = None, val: bool = False):
    """(X, y, X_eval, y_eval): ``n_train`` rows of ``ds``'s training set (:func:`subsample`) and its test set, or,
    with ``val``, 90%/10% of those rows (:func:`validation_split`, for tuning without the test set)."""
    X, y = subsample(ds.X_train, ds.y_train, n_train)
    if val:
        return validation_split(X, y, 0.1, seed=0)
    return X, y, ds.X_test, ds.y_test


# ----------------------------------------------------------------------------- models and training
def make_mlp(sizes: Sequence[int], activation: str = "tanh", loss: str = "cross_entropy", dtype: Any = np.float64):
    MLP = need("curvlab.models.mlp", "MLP")
    return MLP(list(sizes), activation=activation, loss=loss, dtype=dtype)


def accuracy(model, params, X, y) -> float:
    return float(np.mean(np.argmax(np.asarray(model.forward(params, X)), axis=1) == y))


def diverged(loss: float, loss0: float, factor: float = 50.0) -> bool:
    return not np.isfinite(loss) or loss > factor * max(loss0, 1.0)


@dataclasses.dataclass
class History:
    """Per-epoch record of one training run (index 0 = before training)."""

    train_loss: list[float]
    test_acc: list[float]
    test_loss: list[float]
    wall: list[float]
    diverged: bool = False
    extra: dict[str, list[Any]] = dataclasses.field(default_factory=dict)

    def final_loss(self) -> float:
        return self.train_loss[-1] if not self.diverged else float("inf")


def train_epochs(model, params, stepper: Callable[..., Any], state: Any, X, y, Xte, yte, epochs: int,
                 batch: int, seed: int, eval_n: int | None = None, on_epoch: Callable[..., None] | None = None
                 ) -> tuple[np.ndarray, History]:
    """Mini-batch training: ``stepper(params, state, Xb, yb) -> (params, state)`` per batch.

    Losses are evaluated on the full training set (or its first ``eval_n`` rows) after every
    epoch; a non-finite or exploding loss stops the run and flags it diverged.
    """
    from curvlab.data import minibatches

    rng = np.random.default_rng(seed)
    Xe, ye = (X, y) if eval_n is None else (X[:eval_n], y[:eval_n])
    l0 = model.loss(params, Xe, ye)
    h = History([l0], [accuracy(model, params, Xte, yte)], [model.loss(params, Xte, yte)], [0.0])
    t0 = time.perf_counter()
    for ep in range(epochs):
        bad = False
        with np.errstate(all="ignore"):
            for Xb, yb in minibatches(X, y, batch, rng):
                try:
                    params, state = stepper(params, state, Xb, yb)
                except FloatingPointError:  # a transform's nan_policy: too many non-finite steps in a row
                    bad = True
                    break
                if not np.all(np.isfinite(params)):
                    bad = True
                    break
            loss = model.loss(params, Xe, ye) if not bad else float("nan")
        if bad or diverged(loss, l0):
            h.diverged = True
            break
        h.train_loss.append(float(loss))
        h.test_acc.append(accuracy(model, params, Xte, yte))
        h.test_loss.append(float(model.loss(params, Xte, yte)))
        h.wall.append(time.perf_counter() - t0)
        if on_epoch is not None:
            on_epoch(ep, params, state, h)
    return params, h


def transform_stepper(model, opt) -> Callable[..., Any]:
    """A ``stepper`` for a first-order transform: gradient on the batch, then ``opt.step``."""

    def step(params, state, Xb, yb):
        _, g = model.loss_and_grad(params, Xb, yb)
        return opt.step(params, g, state)

    return step


def baseline(name: str, lr: float, **kw: Any):
    """A first-order baseline transform by name: sgd, momentum, adam, adamw."""
    from curvlab.methods import baselines as b

    if name == "sgd":
        return b.SGD(lr=lr, weight_decay=kw.get("weight_decay", 0.0))
    if name == "momentum":
        return b.Momentum(lr=lr, momentum=kw.get("momentum", 0.9), weight_decay=kw.get("weight_decay", 0.0))
    if name == "adam":
        return b.Adam(lr=lr, **{k: v for k, v in kw.items() if k in ("b1", "b2", "eps", "weight_decay")})
    if name == "adamw":
        return b.AdamW(lr=lr, **{k: v for k, v in kw.items() if k in ("b1", "b2", "eps", "weight_decay")})
    raise ValueError(f"unknown baseline {name!r}")


def tune(configs: Sequence[dict[str, Any]], score: Callable[[dict[str, Any]], float]) -> tuple[dict[str, Any], list[float]]:
    """Pick the configuration of smallest ``score`` (non-finite scores lose). Returns (best, scores)."""
    scores = [float(score(c)) for c in configs]
    finite = [s if np.isfinite(s) else np.inf for s in scores]
    return dict(configs[int(np.argmin(finite))]), scores


def log_grid(lo: float, hi: float, n: int) -> list[float]:
    return [float(v) for v in np.geomspace(lo, hi, n)]


# ----------------------------------------------------------------------------- aggregation and plotting
def stack_ragged(curves: Sequence[Sequence[float]]) -> np.ndarray:
    """Seeds x T array, NaN-padded where a run stopped early (diverged)."""
    T = max(len(c) for c in curves)
    out = np.full((len(curves), T), np.nan)
    for i, c in enumerate(curves):
        out[i, : len(c)] = c
    return out


def mean_std(curves: Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    A = stack_ragged(curves)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(A, axis=0), np.nan_to_num(np.nanstd(A, axis=0))


def band(ax, x, curves: Sequence[Sequence[float]], label: str, color=None, ls="-", log: bool = False):
    """Plot mean ± std over seeds (geometric for ``log``). Returns (x, mean, std) plotted."""
    m, s = mean_std(curves)
    x = np.asarray(x)[: len(m)]
    (line,) = ax.plot(x, m, ls=ls, color=color, label=label, lw=1.6)
    lo, hi = m - s, m + s
    if log:
        lo = np.maximum(lo, m * 0.05)
    ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    return x, m, s


def new_figure(ncols: int, nrows: int = 1, w: float = 4.6, h: float = 3.5):
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=False)
    return fig, axes.ravel()


MIN_LEGEND_FONT = 7.5


def _tidy_log_axis(axis) -> None:
    """Readable tick labels on a log axis: over less than two decades label 2x and 5x minor ticks
    with plain numbers (the default writes overlapping '3x10^0 4x10^0'), else no minor labels."""
    from matplotlib import ticker

    lo, hi = sorted(axis.get_view_interval())
    if lo <= 0 or not np.isfinite(lo) or not np.isfinite(hi):
        return
    if np.log10(hi / lo) < 2:
        axis.set_minor_locator(ticker.LogLocator(subs=(2.0, 5.0)))
        axis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
        axis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    else:
        axis.set_minor_formatter(ticker.NullFormatter())


def finish_figure(fig, title: str):
    """Title, legible legends (font >= 7.5 pt), readable log-axis labels, tight layout."""
    for ax in fig.axes:
        if ax.get_xscale() == "log":
            _tidy_log_axis(ax.xaxis)
        if ax.get_yscale() == "log":
            _tidy_log_axis(ax.yaxis)
        leg = ax.get_legend()
        if leg is not None:
            for t in leg.get_texts():
                t.set_fontsize(max(t.get_fontsize(), MIN_LEGEND_FONT))
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def fmt(x: float, digits: int = 3) -> str:
    if x is None or not np.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) < 1e-2 or abs(x) >= 1e4):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def finite_rows(rows: list[Sequence[Any]]) -> list[Sequence[Any]]:
    """Drop rows with a non-finite number (points after a divergence are not plotted)."""
    out = []
    for r in rows:
        if all(not isinstance(v, float) or math.isfinite(v) for v in r):
            out.append(r)
    return out
