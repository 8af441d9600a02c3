"""Run the examples in every public module's docstrings.

A module that needs an optional dependency which is not installed (torch, jax,
cupy) is skipped, never failed, so the suite runs on a bare install.
"""

import doctest
import importlib
import pkgutil

import pytest

import curvlab

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(curvlab.__path__, prefix="curvlab.")
    if not any(part.startswith("_") for part in m.name.split(".")[1:]) or m.name.endswith("_transform")
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as exc:  # optional dependency missing
        pytest.skip(f"{name} needs an optional dependency: {exc}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
