"""Run libpecos 1.2.8 (which declares numpy<2, scipy<1.14) on constraints.txt's numpy 2.4.6 / scipy 1.17.1.

Its XR-Linear path (PIFA, hierarchical k-means, train, predict, save/load) trips on exactly two API changes,
both inside `pecos.utils.smat_util`, which builds every CSR/CSC matrix the C++ core hands back:
- `scipy.sparse.sputils.get_index_dtype` / `upcast` left the public (deprecated) `sputils` module in scipy 1.14;
  they live on in `scipy.sparse._sputils` with the same signatures;
- numpy 2 made `np.array(x, copy=False)` raise when a copy is needed; numpy 1 copied (today's `np.asarray`).
`patch()` gives that one module views with the old behaviour; nothing else in scipy, numpy or pecos changes.
Checked by tests/baselines/test_peers.py (a fit, predict, save and load per run).
"""

from __future__ import annotations

import types

import numpy as np
import scipy.sparse
import scipy.sparse._sputils as sputils


def _array(obj, *args, copy=True, **kwargs):
    """numpy 1's `np.array`: copy=False means copy only if needed."""
    return np.asarray(obj, *args, **kwargs) if copy is False else np.array(obj, *args, copy=copy, **kwargs)


def _view(module: types.ModuleType, **overrides) -> types.ModuleType:
    """A module that is `module` except for `overrides` (PEP 562 `__getattr__` forwards every other name)."""
    view = types.ModuleType(module.__name__)
    view.__getattr__ = lambda name: getattr(module, name)
    view.__dict__.update(overrides)
    return view


def patch() -> None:
    from pecos.utils import smat_util

    if not getattr(smat_util, "_xlc_patched", False):
        smat_util.np = _view(np, array=_array)
        smat_util.smat = _view(scipy.sparse, sputils=sputils)
        smat_util._xlc_patched = True
