"""Run the examples in the docstrings of every curvlab module (the default run's doctest step).

The same examples as ``pytest --doctest-modules curvlab`` (CI's doctest step), by the same
rules, which live in the root ``conftest.py`` (fixture ``run_module_doctests``): every module
of the package, private ones included; flags NORMALIZE_WHITESPACE and ELLIPSIS; a module that
needs an optional dependency which is not importable (CuPy, torch, JAX/optax) is skipped with
the reason, never failed, so the suite runs on a bare install, while any other import error
fails. In a session that also collects the package with ``--doctest-modules`` the modules it
collects are skipped here, so no example runs twice.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

import curvlab

PACKAGE_DIR = Path(curvlab.__file__).resolve().parent
#: every module file of the package, as ``--doctest-modules`` collects them (no import needed to list them)
MODULES = sorted(
    ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    for parts in (p.relative_to(PACKAGE_DIR.parent).with_suffix("").parts for p in PACKAGE_DIR.rglob("*.py"))
)


def test_every_module_listed():
    assert "curvlab" in MODULES and "curvlab.kernels.gpu" in MODULES and "curvlab.linalg._checks" in MODULES
    assert len(MODULES) == len(set(MODULES)) == len(list(PACKAGE_DIR.rglob("*.py")))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, run_module_doctests):
    result = run_module_doctests(name)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring example(s) failed in {name}"


class _FailingImports:
    """A meta-path finder under which two made-up curvlab modules fail to import: one for want of a
    dependency that is not optional, one for want of CuPy (an optional one)."""

    def find_spec(self, name, path=None, target=None):
        if name == "curvlab._missing_core_dependency":
            raise ModuleNotFoundError("No module named 'not_an_optional_dependency'", name="not_an_optional_dependency")
        if name == "curvlab._missing_cupy":
            raise ModuleNotFoundError("No module named 'cupy'", name="cupy")
        return None


def test_only_a_missing_optional_dependency_skips(run_module_doctests, monkeypatch):
    monkeypatch.setattr(sys, "meta_path", [_FailingImports(), *sys.meta_path])
    with pytest.raises(ModuleNotFoundError, match="not_an_optional_dependency"):
        run_module_doctests("curvlab._missing_core_dependency")   # an error, never a skip
    if importlib.util.find_spec("cupy") is None:
        with pytest.raises(pytest.skip.Exception, match=r"needs the optional dependency cupy \(pip install curvlab\[gpu\]\)"):
            run_module_doctests("curvlab._missing_cupy")
