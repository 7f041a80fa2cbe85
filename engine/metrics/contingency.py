"""Sparse contingency tables of two labellings: only the pairs of labels that overlap are kept.

>>> import numpy as np
>>> t = contingency(np.array([1, 1, 2, 2]), np.array([5, 5, 5, 0]), ignore_b=(0,))
>>> t.a_ids.tolist(), t.b_ids.tolist(), t.rows.tolist(), t.cols.tolist(), t.counts.tolist()
([1, 2], [5], [0, 1], [0, 0], [2, 1])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Contingency:
    """Overlaps of labellings ``a`` and ``b``: ``counts[k]`` voxels carry label ``a_ids[rows[k]]`` in
    ``a`` and ``b_ids[cols[k]]`` in ``b``. ``a_sizes``/``b_sizes`` are the row and column sums."""

    a_ids: np.ndarray
    b_ids: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def a_sizes(self) -> np.ndarray:
        return np.bincount(self.rows, weights=self.counts, minlength=self.a_ids.size).astype(np.int64)

    @property
    def b_sizes(self) -> np.ndarray:
        return np.bincount(self.cols, weights=self.counts, minlength=self.b_ids.size).astype(np.int64)


def contingency(a: np.ndarray, b: np.ndarray, *, ignore_a: Sequence[int] = (), ignore_b: Sequence[int] = ()) -> Contingency:
    """The contingency table of ``a`` and ``b`` (same shape), leaving out voxels whose label is in
    ``ignore_a`` (in ``a``) or ``ignore_b`` (in ``b``). Linear in the voxels (hash-based renumbering,
    no dense table)."""
    import fastremap

    if a.shape != b.shape:
        raise ValueError(f"the labellings differ in shape: {a.shape} and {b.shape}")
    a, b = a.ravel(), b.ravel()
    keep = np.ones(a.shape, bool)
    if len(ignore_a):
        keep &= ~np.isin(a, np.asarray(ignore_a))
    if len(ignore_b):
        keep &= ~np.isin(b, np.asarray(ignore_b))
    if not keep.all():
        a, b = a[keep], b[keep]
    ra, ma = fastremap.renumber(np.ascontiguousarray(a), start=0, preserve_zero=False)
    rb, mb = fastremap.renumber(np.ascontiguousarray(b), start=0, preserve_zero=False)
    a_ids = _ids(ma, a.dtype)
    b_ids = _ids(mb, b.dtype)
    key = ra.astype(np.int64) * max(1, b_ids.size) + rb.astype(np.int64)
    uniq, counts = np.unique(key, return_counts=True)
    return Contingency(a_ids, b_ids, (uniq // max(1, b_ids.size)).astype(np.int64), (uniq % max(1, b_ids.size)).astype(np.int64), counts.astype(np.int64))


def _ids(mapping: dict[Any, Any], dtype: np.dtype) -> np.ndarray:
    """The original label of each new (0-based) label of a fastremap renumbering."""
    out = np.empty(len(mapping), dtype)
    out[np.fromiter(mapping.values(), np.int64, len(mapping))] = np.fromiter(mapping.keys(), dtype, len(mapping))
    return out
