"""The README's Python examples run as written (the quickstart and the three journeys)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def _needs(code: str) -> list[str]:
    return [m for m in ("torch", "jax", "optax", "sklearn") if re.search(rf"^\s*(import|from) {m}\b", code, re.M)]


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs_without_warnings(code, tmp_path, monkeypatch):
    for mod in _needs(code):
        pytest.importorskip(mod)
    monkeypatch.chdir(tmp_path)
    code = code.replace('"/tmp/ckpt.pt"', repr(str(tmp_path / "ckpt.pt")))
    with warnings.catch_warnings():
        warnings.simplefilter("error", category=Warning)  # a README example must not warn (no unconverged result)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="(torch|jax|optax).*")
        exec(compile(code, f"README.md:{code[:30]!r}", "exec"), {"__name__": "__readme__"})


def test_readme_has_the_three_journeys():
    assert len(BLOCKS) >= 4
    text = README.read_text(encoding="utf-8")
    for heading in ("### PyTorch", "### JAX and optax", "### NumPy and SciPy"):
        assert heading in text
