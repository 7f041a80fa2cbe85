"""How stored numbers are read as intensities or probabilities in [0, 1], defined once.

An integer volume is read as value / the largest value of its type (uint8: ``v / 255``, uint16:
``v / 65535``), booleans as 0 and 1, floats as they are. Training crops, prediction windows, label
thresholds, object statistics and affinities all go through :func:`to_unit` (the torch side of
prediction divides by the same :func:`unit_max`), so a probability written as uint8 reads back the same
everywhere.

>>> to_unit(np.array([0, 51, 255], np.uint8)).tolist()
[0.0, 0.20000000298023224, 1.0]
>>> unit_max(np.dtype("uint16")), unit_max(np.dtype("float32"))
(65535.0, None)
"""

from __future__ import annotations

from typing import Any

import numpy as np


def unit_max(dtype: Any) -> float | None:
    """What ``dtype``'s values are divided by to lie in [0, 1]: its largest value for integers, None
    (as they are) for floats and booleans."""
    dt = np.dtype(dtype)
    return float(np.iinfo(dt).max) if np.issubdtype(dt, np.integer) else None


def to_unit(raw: np.ndarray, scale: float | None = None, dtype: Any = np.float32) -> np.ndarray:
    """``raw`` as floats (``dtype``, float32 by default) in [0, 1]: integers divided by their type's
    largest value (or by ``scale``), booleans as 0/1, floats unchanged."""
    out_dtype = np.dtype(dtype)
    div = scale if scale is not None else unit_max(raw.dtype)
    if div is None:
        return raw.astype(out_dtype)  # a copy: callers may change it in place
    return np.asarray(raw.astype(out_dtype) / out_dtype.type(div), out_dtype)


__all__ = ["to_unit", "unit_max"]
