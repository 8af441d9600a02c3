"""Pytest configuration at the repository root: the doctests of the package.

``pytest --doctest-modules curvlab`` (CI's doctest step) collects the examples in the
docstrings of every module of :mod:`curvlab` with the flags :data:`DOCTEST_OPTIONFLAGS`. A
module that needs an optional dependency which is not importable here (CuPy, PyTorch,
JAX/optax: :data:`OPTIONAL_DEPENDENCIES`) is skipped at collection, with the reason, never
reported as an error; any other import failure still errors.

``tests/test_doctests.py`` runs the same examples in the default run (``pytest``) through
the fixture :func:`run_module_doctests`: the same modules, flags and skip rule. A module
that a ``--doctest-modules`` session collects itself is skipped there, so that no example
runs twice. Without ``--doctest-modules`` (the default run) the hooks here do nothing.
"""

from __future__ import annotations

import doctest
import functools
import importlib
import importlib.util
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

#: the importable top-level name of each optional dependency -> the ``pip install curvlab[...]`` extra
OPTIONAL_DEPENDENCIES = {"cupy": "gpu", "cupyx": "gpu", "torch": "torch", "jax": "jax", "jaxlib": "jax",
                         "optax": "jax"}
#: the doctest flags of both doctest paths (pytest's default is ELLIPSIS alone)
DOCTEST_OPTIONFLAGS = ("NORMALIZE_WHITESPACE", "ELLIPSIS")
PACKAGE_DIR = Path(__file__).resolve().parent / "curvlab"


def module_name(path: Path) -> str | None:
    """The dotted name of the curvlab module in ``path`` (``None`` outside the package)."""
    path = Path(path).resolve()
    if path.suffix != ".py" or PACKAGE_DIR not in path.parents:
        return None
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.lru_cache(maxsize=None)
def _package_dir(dep: str) -> Path | None:
    """Where the optional dependency ``dep`` is installed (``None`` when it is not found)."""
    try:
        spec = importlib.util.find_spec(dep)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).resolve().parent


@functools.lru_cache(maxsize=None)
def dependency_importable(dep: str) -> bool:
    """Whether the optional dependency ``dep`` imports here."""
    try:
        importlib.import_module(dep)
    except Exception:  # ImportError, or a library that fails to load (CuPy without its CUDA runtime)
        return False
    return True


def _implicated(exc: BaseException) -> Iterator[str]:
    """The optional dependencies ``exc`` points at: a ``ModuleNotFoundError`` naming one in its
    ``__cause__``/``__context__`` chain, or a traceback frame inside one's installed package."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        name = e.name if isinstance(e, ModuleNotFoundError) else None
        if name and name.split(".")[0] in OPTIONAL_DEPENDENCIES:
            yield name.split(".")[0]
        for frame, _ in traceback.walk_tb(e.__traceback__):
            where = Path(frame.f_code.co_filename).resolve()
            for dep in OPTIONAL_DEPENDENCIES:
                root = _package_dir(dep)
                if root is not None and root in where.parents:
                    yield dep
        e = e.__cause__ or e.__context__


def missing_dependency(exc: BaseException) -> str | None:
    """The optional dependency that is not importable here and whose absence raised ``exc``, else
    ``None`` (an optional dependency that imports fine does not excuse a failure in its code)."""
    return next((dep for dep in _implicated(exc) if not dependency_importable(dep)), None)


def optional_skip_reason(name: str) -> str | None:
    """Import the curvlab module ``name``: ``None`` when it imports (or fails for a reason that
    must surface as an error), else why it is skipped (the optional dependency it misses)."""
    try:
        importlib.import_module(name)
    except Exception as exc:  # ImportError, or a library that fails to load (a CUDA runtime)
        dep = missing_dependency(exc)
        if dep is None:
            return None
        return (f"{name} needs the optional dependency {dep} (pip install curvlab[{OPTIONAL_DEPENDENCIES[dep]}]), "
                f"not importable here: {type(exc).__name__}: {exc}")
    return None


class _SkippedModule(pytest.File):
    """A module skipped at collection (its optional dependency is missing), with the reason."""

    def __init__(self, *, reason: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reason = reason

    def collect(self) -> list[pytest.Item]:
        pytest.skip(self.reason)


def _doctest_modules(config: pytest.Config) -> bool:
    return bool(config.getoption("doctestmodules", False))


def pytest_configure(config: pytest.Config) -> None:
    if _doctest_modules(config):
        flags = config.getini("doctest_optionflags")
        for flag in DOCTEST_OPTIONFLAGS:
            if flag not in flags:
                config.addinivalue_line("doctest_optionflags", flag)


@pytest.hookimpl(wrapper=True)
def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> Any:
    collectors = yield
    if not collectors or not _doctest_modules(parent.config):
        return collectors
    name = module_name(file_path)
    if name is None or not all(type(c).__name__ == "DoctestModule" for c in collectors):
        return collectors
    reason = optional_skip_reason(name)
    if reason is None:
        return collectors
    return [_SkippedModule.from_parent(parent, path=file_path, reason=reason)]


def _collected_here(config: pytest.Config, path: Path) -> bool:
    """Whether this session's ``--doctest-modules`` collection includes the file ``path``."""
    if not _doctest_modules(config):
        return False
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        p = (base / str(arg).split("::")[0]).resolve()
        if p == path or p in path.parents:
            return True
    return False


@pytest.fixture(scope="session")
def run_module_doctests(request: pytest.FixtureRequest) -> Callable[[str], doctest.TestResults]:
    """``run(name)``: the doctest results of the curvlab module ``name``, with the flags of
    ``--doctest-modules``; skips when an optional dependency it needs is missing, or when this
    session collects that module with ``--doctest-modules`` already."""
    config = request.config
    flags = 0
    for flag in DOCTEST_OPTIONFLAGS:
        flags |= doctest.OPTIONFLAGS_BY_NAME[flag]

    def run(name: str) -> doctest.TestResults:
        reason = optional_skip_reason(name)
        if reason is not None:
            pytest.skip(reason)
        module = importlib.import_module(name)   # a failure other than an optional dependency's errors here
        if module.__file__ and _collected_here(config, Path(module.__file__).resolve()):
            pytest.skip(f"{name}: its doctests are collected by --doctest-modules in this session")
        return doctest.testmod(module, optionflags=flags)

    return run
