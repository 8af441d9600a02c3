"""``cupy.random`` of the strict stand-in: the Generator API with only CuPy's methods.

Its bit stream is Philox (not NumPy's PCG64), so a CuPy generator never reproduces the numbers
of ``numpy.random.default_rng`` with the same seed, as on a GPU (CuPy's is XORWOW).
The legacy global-state functions (``cupy.random.standard_normal`` & co) are left out on
purpose: curvlab keeps randomness explicit.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._core import ndarray, unwrap, wrap

#: cupy.random.Generator's methods (cupy/random/_generator_api.pyx)
METHODS = """random uniform integers beta chisquare dirichlet exponential f geometric hypergeometric logseries
standard_exponential poisson power standard_normal gamma standard_gamma binomial""".split()


class BitGenerator:
    def __init__(self, seed: Any = None) -> None:
        if isinstance(seed, (np.random.Generator, np.random.BitGenerator, ndarray)) or (
                seed is not None and not isinstance(seed, (int, np.integer, np.random.SeedSequence, list, tuple))):
            raise TypeError(f"SeedSequence expects int or sequence of ints for entropy not {seed!r}")
        self._np = np.random.Philox(seed)


XORWOW = BitGenerator


class Generator:
    """``cupy.random.Generator``: only CuPy's methods; results are device arrays."""

    def __init__(self, bit_generator: BitGenerator) -> None:
        self.bit_generator = bit_generator
        self._g = np.random.Generator(bit_generator._np)

    def _draw(self, name: str, args: tuple, kwargs: dict) -> Any:
        out = kwargs.pop("out", None)
        r = getattr(self._g, name)(*unwrap(args, f"Generator.{name}"), **kwargs)
        if out is not None:
            if not isinstance(out, ndarray):
                raise TypeError(f"out must be a cupy.ndarray, got {type(out)}")
            out._a[...] = r
            return out
        return wrap(np.asarray(r))

    def __repr__(self) -> str:
        return "Generator(XORWOW) [strict CuPy stand-in]"


def _method(name: str):
    def m(self, *args: Any, **kwargs: Any) -> Any:
        return self._draw(name, args, kwargs)

    m.__name__ = name
    return m


for _n in METHODS:
    setattr(Generator, _n, _method(_n))
Generator.__module__ = "cupy.random"


def default_rng(seed: Any = None) -> Generator:
    """``cupy.random.default_rng``: seed int / sequence / SeedSequence / BitGenerator / Generator."""
    if isinstance(seed, Generator):
        return seed
    if isinstance(seed, BitGenerator):
        return Generator(seed)
    return Generator(XORWOW(seed))


def __getattr__(name: str) -> Any:
    raise AttributeError(f"module 'cupy.random' (strict CuPy stand-in) has no attribute {name!r} "
                         "(the legacy global-state API is left out: pass a Generator)")
