"""Progress bars and per-iteration callbacks shared by the long-running solvers (private).

Every long routine of :mod:`curvlab.linalg` (``eigsh``, ``lanczos``,
``lobpcg``, ``power_iteration``, ``slq`` and its trace functions, the trace
and diagonal estimators) takes the same two arguments and hands them to one
:class:`Monitor`:

``callback``
    ``None`` (default) or a callable ``callback(info) -> bool | None`` called
    once per iteration (a Lanczos step, a restart cycle, a probe round: the
    routine's docstring says which) with a small ``dict``: ``"who"`` (the
    routine), ``"iteration"`` (1, 2, ...), ``"n_matvecs"`` (operator products
    so far) and the routine's current values (estimate, error, eigenvalues,
    residuals, all host floats/arrays: the callback costs no device sync).
    Returning ``True`` or raising :class:`StopIteration` stops the routine
    after that iteration; the result then says so (status "max_iter", a
    message "stopped by callback ..." and a :class:`ConvergenceWarning` unless
    what was computed already meets the routine's own tolerance).
``progress``
    ``False`` (default: silent), ``True`` (a tqdm bar on stderr) or a dict of
    ``tqdm`` keyword arguments (``{"desc": ..., "leave": False, "file": ...}``).
    tqdm is imported only when asked for; without it, :class:`ImportError`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import numpy as np

__all__ = ["Monitor", "check_callback", "check_progress"]


def check_callback(callback: Any) -> Callable[[dict[str, Any]], Any] | None:
    """``callback`` if None or callable, else :class:`TypeError`."""
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be None or a callable taking one info dict, got {type(callback).__name__}")
    return callback


def check_progress(progress: Any) -> dict[str, Any] | None:
    """``None`` (no bar) for False/None, the tqdm keyword arguments for True or a dict, else :class:`TypeError`."""
    if progress is None or progress is False:
        return None
    if progress is True:
        return {}
    if isinstance(progress, dict):
        return dict(progress)
    raise TypeError(f"progress must be a bool or a dict of tqdm keyword arguments, got {type(progress).__name__}: {progress!r}")


def _short(v: Any) -> Any:
    """A compact postfix value for the bar (floats to 4 significant digits, arrays to their first entries)."""
    if isinstance(v, (bool, np.bool_)):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return f"{float(v):.4g}" if math.isfinite(float(v)) else str(float(v))
    if isinstance(v, np.ndarray) and v.ndim == 1 and v.size:
        head = ", ".join(f"{float(x):.4g}" for x in v[:3])
        return f"[{head}{', ...' if v.size > 3 else ''}]"
    return None


class Monitor:
    """Callback and progress bar of one routine run (see the module docstring).

    ``update(**info)`` after each iteration: calls the callback, advances the
    bar, and returns True when the callback asked to stop (then
    :attr:`stopped` is True and :attr:`message` says when). ``close()`` closes
    the bar (also on exceptions when used as a context manager). A monitor
    with neither callback nor bar costs one attribute test per iteration.
    """

    def __init__(self, who: str, callback: Any = None, progress: Any = False, *, total: int | None = None,
                 unit: str = "it", postfix: tuple[str, ...] = ()) -> None:
        self.who = who
        self.callback = check_callback(callback)
        kw = check_progress(progress)
        self.iteration = 0
        self.stopped = False
        self.message = ""
        self._postfix = postfix
        self._bar = None
        if kw is not None:
            try:
                from tqdm.auto import tqdm
            except ImportError as exc:  # pragma: no cover - tqdm is installed in the test environment
                raise ImportError(f"{who}: progress=True needs tqdm (pip install tqdm); pass progress=False") from exc
            opts: dict[str, Any] = {"total": total, "desc": who, "unit": unit, "dynamic_ncols": True}
            opts.update(kw)
            self._bar = tqdm(**opts)
        self.active = self.callback is not None or self._bar is not None

    def update(self, n: int = 1, **info: Any) -> bool:
        """Record ``n`` more iterations with ``info``; True when the callback asked to stop."""
        self.iteration += n
        if self._bar is not None:
            self._bar.update(n)
            post = {k: _short(info[k]) for k in self._postfix if k in info}
            post = {k: v for k, v in post.items() if v is not None}
            if post:
                self._bar.set_postfix(post, refresh=False)
        if self.callback is None:
            return False
        payload = {"who": self.who, "iteration": self.iteration, **info}
        try:
            stop = self.callback(payload)
        except StopIteration:
            stop = True
        if stop is True or (isinstance(stop, (bool, np.bool_)) and bool(stop)):
            self.stopped = True
            where = f"iteration {self.iteration}"
            if "n_matvecs" in info:
                where += f", {int(info['n_matvecs'])} matvecs"
            self.message = f"stopped by callback after {where}"
            self.close()
            return True
        return False

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
