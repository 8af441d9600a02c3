"""Implementation of :mod:`curvlab.linalg.operators`, one module per kind of operator (the split is under way).

Import the names from :mod:`curvlab.linalg.operators` (or :mod:`curvlab`), which re-exports
all of them; the modules here are private:

* :mod:`.checks` -- argument checks and the verification of declared ``symmetric``/``psd`` tags;
* :mod:`.base` -- :class:`LinearOperator` and its algebra (sum, scaling, shift, product).
"""
