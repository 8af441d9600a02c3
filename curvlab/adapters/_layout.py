"""Deprecated alias: ``NamedLayout`` is now :class:`curvlab.layout.Layout`, the one layout class."""

from __future__ import annotations

import warnings

from ..layout import Layout


def named_layout(where: str) -> type[Layout]:
    """:class:`~curvlab.layout.Layout`, with a ``DeprecationWarning`` for the old name at ``where``."""
    warnings.warn(f"{where}.NamedLayout is deprecated; use curvlab.layout.Layout (the same class)",
                  DeprecationWarning, stacklevel=3)
    return Layout
