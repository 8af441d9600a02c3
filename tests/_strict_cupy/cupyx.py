"""``cupyx`` of the strict stand-in: only what curvlab uses (nothing yet). ``cupyx.scipy``
is an empty namespace whose unknown attributes raise, naming this file."""

from __future__ import annotations

import types
from typing import Any


class _Empty(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"module {self.__name__!r} (strict CuPy stand-in) has no attribute {name!r}: "
                             "add what curvlab needs to tests/_strict_cupy/cupyx.py")


cupyx = _Empty("cupyx")
scipy = _Empty("cupyx.scipy")
cupyx.scipy = scipy
