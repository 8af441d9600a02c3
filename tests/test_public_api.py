"""The top-level namespace: every public name resolves and is documented; `import curvlab`
stays light (no torch, no JAX)."""

from __future__ import annotations

import inspect
import subprocess
import sys
import types

import pytest

import curvlab

NAMES = [n for n in curvlab.__all__ if n != "__version__"]

#: names whose summary runs over more than one line (numpydoc: one line, then a blank line);
#: each is owned by another module's author. Remove a name once its summary fits one line.
MULTILINE_SUMMARY: dict[str, str] = {}


def test_all_is_unique_and_every_name_resolves():
    assert len(curvlab.__all__) == len(set(curvlab.__all__)), "duplicate names in curvlab.__all__"
    missing = [n for n in curvlab.__all__ if not hasattr(curvlab, n)]
    assert not missing, f"curvlab.__all__ names that do not resolve: {missing}"
    assert isinstance(curvlab.__version__, str)


@pytest.mark.parametrize("name", NAMES)
def test_every_public_name_has_a_summary_line(name):
    obj = getattr(curvlab, name)
    doc = inspect.getdoc(obj)
    assert doc and doc.strip(), f"curvlab.{name} has no docstring"
    summary = doc.split("\n\n")[0]
    first = summary.splitlines()[0].strip()
    assert len(first.split()) >= 3, f"curvlab.{name}: the first docstring line is not a summary: {first!r}"
    if name in MULTILINE_SUMMARY:
        assert "\n" in summary, f"curvlab.{name} now has a one-line summary: remove it from MULTILINE_SUMMARY"
    else:
        assert "\n" not in summary, (f"curvlab.{name}: the summary runs over {len(summary.splitlines())} lines "
                                     f"(numpydoc: one line, then a blank line): {summary!r}")


def test_reexports_are_the_objects_of_their_home_modules():
    import curvlab.layout
    import curvlab.linalg.results
    import curvlab.methods
    import curvlab.sources

    homes = {
        curvlab.methods: ["chain", "scale_by_lr", "add_decayed_weights", "scale_by_adam", "trace",
                          "Transform", "apply_updates", "ArTuRO", "ExactNewton", "DSGD", "CurvatureLR"],
        curvlab.linalg.results: ["ConvergenceWarning", "ConvergenceError"],
        curvlab.layout: ["Layout"],
        curvlab.sources: ["CurvatureSource", "DenseLayer", "LayerStructureUnavailable"],
    }
    for mod, names in homes.items():
        for n in names:
            assert n in curvlab.__all__, f"{n} is not in curvlab.__all__"
            assert getattr(curvlab, n) is getattr(mod, n), f"curvlab.{n} is not {mod.__name__}.{n}"
    assert isinstance(curvlab.tree, types.ModuleType) and curvlab.tree.__name__ == "curvlab.tree"
    assert "tree" in curvlab.__all__
    assert issubclass(curvlab.ConvergenceWarning, Warning)
    assert issubclass(curvlab.LayerStructureUnavailable, Exception)


def test_docstring_names_every_topic_of_the_reexports():
    doc = curvlab.__doc__
    for n in ("chain", "scale_by_lr", "add_decayed_weights", "scale_by_adam", "trace", "ConvergenceWarning",
              "ConvergenceError", "Layout", "CurvatureSource", "DenseLayer", "LayerStructureUnavailable",
              "curvlab.tree"):
        assert n in doc, f"the curvlab package docstring does not mention {n}"


def test_import_curvlab_imports_neither_torch_nor_jax():
    code = ("import sys, curvlab; heavy = sorted(m for m in ('torch', 'jax', 'jaxlib', 'optax') "
            "if m in sys.modules); print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import curvlab imported {out.stdout.strip()}"


def test_deprecated_names_are_not_public():
    """``ParamLayout`` is gone: the MLP's layout is :func:`curvlab.models.dense_layout`, a
    :class:`curvlab.layout.Layout`."""
    import curvlab.models
    import curvlab.models.mlp

    assert "ParamLayout" not in curvlab.__all__
    for mod in (curvlab.models, curvlab.models.mlp):
        assert "ParamLayout" not in mod.__all__ and not hasattr(mod, "ParamLayout"), mod.__name__
    assert not hasattr(curvlab, "ParamLayout")
