"""Sphinx configuration of the curvlab documentation.

Build (from the repository root): ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.

Offline by default: intersphinx links to NumPy, SciPy, PyTorch, JAX and optax need those
projects' ``objects.inv`` inventories, fetched over the network at build time, so they are
configured only when ``CURVLAB_DOCS_INTERSPHINX=1`` is set. Without it, references to those
projects render as plain code and the build emits no warning for them.

``CURVLAB_DOCS_GALLERY=0`` skips executing the gallery examples (their pages then show the
code without output or figures; ``docs/check_rendered.py`` fails on such a build).
"""

from __future__ import annotations

import os
import sys
import warnings

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
os.environ.setdefault("MPLBACKEND", "Agg")
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")           # the examples are timed on 2 shared cores

import curvlab  # noqa: E402

project = "curvlab"
author = "curvlab developers"
copyright = "2026, curvlab developers"
release = curvlab.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "examples/README.txt", "**/*.ipynb", "reference/_generated"]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
default_role = "code"

# ---------------------------------------------------------------- autodoc / autosummary / numpydoc
autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "none"                  # the numpydoc Parameters sections carry the types
autodoc_default_options = {"inherited-members": False}
numpydoc_show_class_members = False         # attributes are documented in the class docstrings
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks: set[str] = set()   # docstring parse errors still warn (and fail -W)

# ---------------------------------------------------------------- intersphinx (opt-in, needs network)
intersphinx_mapping: dict[str, tuple[str, None]] = {}
if os.environ.get("CURVLAB_DOCS_INTERSPHINX") == "1":
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "scipy": ("https://docs.scipy.org/doc/scipy", None),
        "torch": ("https://pytorch.org/docs/stable", None),
        "jax": ("https://docs.jax.dev/en/latest", None),
        "optax": ("https://optax.readthedocs.io/en/latest", None),
    }

# ---------------------------------------------------------------- sphinx-gallery
# numpydoc also parses each docstring straight from the object (for the signature), where the
# section fix below does not apply: its "Unknown section" UserWarning there is noise (the
# rendered text went through _fix_sections, which turns a real loss into a Sphinx warning).
warnings.filterwarnings("ignore", category=UserWarning, message="Unknown section")
warnings.filterwarnings("ignore", category=UserWarning,
                        message="Matplotlib is currently using agg, which is a non-GUI backend")
sphinx_gallery_conf = {
    "examples_dirs": ["examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/plot_",
    "plot_gallery": os.environ.get("CURVLAB_DOCS_GALLERY", "1") != "0",
    "download_all_examples": False,
    "remove_config_comments": True,
    "image_scrapers": ("matplotlib",),
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "show_memory": False,
    "min_reported_time": 1,
}

# ---------------------------------------------------------------- tables generated from the code
# reference/policies.rst includes the Status vocabulary (values and messages) as the code has it.
def _write_status_table() -> None:
    from curvlab import Status

    rows = [(f"``{s.value}``", "yes" if s.ok else "no", s.message) for s in Status]
    w0, w1 = max(len(r[0]) for r in rows), max(len("ok"), 3)
    w2 = max(len(r[2]) for r in rows)
    rule = f"{'=' * w0}  {'=' * w1}  {'=' * w2}"
    lines = [rule, f"{'value':{w0}}  {'ok':{w1}}  meaning (``status.message``)", rule]
    lines += [f"{a:{w0}}  {b:{w1}}  {c}" for a, b, c in rows] + [rule, ""]
    out = os.path.join(os.path.dirname(__file__), "reference", "_generated")
    os.makedirs(out, exist_ok=True)
    text = "\n".join(lines)
    path = os.path.join(out, "status_table.rst")
    if not os.path.exists(path) or open(path, encoding="utf-8").read() != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


_write_status_table()

# ---------------------------------------------------------------- HTML
html_theme = "pydata_sphinx_theme"
html_title = f"curvlab {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
# no left sidebar where it would list nothing (single pages without children)
html_sidebars = {page: [] for page in ("index", "install", "guides/*", "reference/support_matrix",
                                       "reference/policies", "reference/sources")}
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}


# ---------------------------------------------------------------- docstring sections numpydoc lacks
# numpydoc drops an unknown section's text with only a Python UserWarning. Before numpydoc
# parses a docstring (priority 400 < numpydoc's 500): the singular "Example" is a Sphinx warning
# (which fails the -W build); any other unknown heading becomes a rubric opening a "Notes"
# section (when the docstring has none), else a Sphinx warning names it.
import re  # noqa: E402

_NUMPYDOC_SECTIONS = {
    "Parameters", "Returns", "Yields", "Receives", "Raises", "Warns", "Other Parameters",
    "Attributes", "Methods", "See Also", "Notes", "Warnings", "References", "Examples",
    "Summary", "Extended Summary",
}
_renamed: list[str] = []


def _fix_sections(app, what, name, obj, options, lines):  # noqa: ANN001
    from sphinx.util import logging as _logging

    if what == "module":                 # numpydoc leaves module docstrings as reST
        return
    heads = [i for i in range(len(lines) - 1)
             if lines[i].strip() and re.fullmatch(r"\s*-{3,}\s*", lines[i + 1])
             and len(lines[i + 1].strip()) == len(lines[i].strip())
             and (i == 0 or not lines[i - 1].strip())]
    titles = {lines[i].strip() for i in heads}
    for i in reversed(heads):            # inserting lines below i keeps earlier indices valid
        title = lines[i].strip()
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        if title == "Example":            # numpydoc would drop it: fail the -W build instead
            _logging.getLogger(__name__).warning(f"{name}: docstring section 'Example' must be 'Examples'")
        elif title not in _NUMPYDOC_SECTIONS:
            if "Notes" in titles:
                _logging.getLogger(__name__).warning(
                    f"{name}: docstring section {title!r} is not a numpydoc section and would be dropped")
                continue
            titles.add("Notes")
            lines[i], lines[i + 1] = indent + "Notes", indent + "-----"
            lines.insert(i + 2, "")
            lines.insert(i + 2, f"{indent}.. rubric:: {title}")
            _renamed.append(f"{name}: {title} -> Notes")


def _report_sections(app, exc):  # noqa: ANN001
    from sphinx.util import logging as _logging

    if exc is None and _renamed:
        _logging.getLogger(__name__).info(
            f"curvlab docs: {len(set(_renamed))} docstring section(s) adapted for numpydoc: "
            + "; ".join(sorted(set(_renamed))))


def setup(app):  # noqa: ANN001
    app.connect("autodoc-process-docstring", _fix_sections, priority=400)
    app.connect("build-finished", _report_sections)
