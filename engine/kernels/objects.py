"""Object statistics per block, merged over blocks: voxel count, bounding box, centroid, mean
probability. Sums and extrema merge exactly, so an object cut by block faces is measured whole.

>>> import numpy as np
>>> labels = np.array([[[1, 1, 0, 2]]], np.uint32)
>>> s = block_stats(labels, 2, origin=(0, 5, 10), prob=np.array([[[0.5, 1.0, 0.0, 0.25]]]))
>>> s.counts.tolist(), s.bbox[1].tolist(), s.centroid()[1].tolist(), float(s.mean_probability()[2])
([1, 2, 1], [0, 5, 10, 1, 6, 12], [0.0, 5.0, 10.5], 0.25)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.storage.kv import pack_arrays, unpack_arrays

_BIG = np.iinfo(np.int64).max


@dataclass
class ObjectStats:
    """Statistics of labels ``0..n`` (row 0 is background and unused). ``bbox`` rows are
    ``z0, y0, x0, z1, y1, x1`` (half-open, volume coordinates); ``coord_sum`` sums the voxel
    coordinates (for the centroid), ``prob_sum`` the probabilities (None without a probability input).
    ``bbox``/``coord_sum`` are None where only counts were kept."""

    counts: np.ndarray
    bbox: np.ndarray | None = None
    coord_sum: np.ndarray | None = None
    prob_sum: np.ndarray | None = None

    @classmethod
    def empty(cls, n: int, full: bool, prob: bool) -> ObjectStats:
        bbox = np.empty((n, 6), np.int64) if full else None
        if bbox is not None:
            bbox[:, :3] = _BIG
            bbox[:, 3:] = -_BIG
        return cls(
            np.zeros(n, np.int64),
            bbox,
            np.zeros((n, 3), np.float64) if full else None,
            np.zeros(n, np.float64) if full and prob else None,
        )

    @property
    def full(self) -> bool:
        return self.bbox is not None

    def take(self, index: np.ndarray) -> ObjectStats:
        return ObjectStats(
            self.counts[index],
            None if self.bbox is None else self.bbox[index],
            None if self.coord_sum is None else self.coord_sum[index],
            None if self.prob_sum is None else self.prob_sum[index],
        )

    def add_into(self, target: ObjectStats, rows: np.ndarray, index: np.ndarray | None = None) -> None:
        """Merge this block's labels ``index`` (default: all) into rows ``rows`` of ``target``."""
        src = self if index is None else self.take(index)
        np.add.at(target.counts, rows, src.counts)
        if target.bbox is not None and src.bbox is not None:
            np.minimum.at(target.bbox[:, :3], rows, src.bbox[:, :3])
            np.maximum.at(target.bbox[:, 3:], rows, src.bbox[:, 3:])
        if target.coord_sum is not None and src.coord_sum is not None:
            np.add.at(target.coord_sum, rows, src.coord_sum)
        if target.prob_sum is not None and src.prob_sum is not None:
            np.add.at(target.prob_sum, rows, src.prob_sum)

    def centroid(self) -> np.ndarray:
        assert self.coord_sum is not None
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.coord_sum / self.counts[:, None]

    def mean_probability(self) -> np.ndarray:
        if self.prob_sum is None:
            return np.full(self.counts.size, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.prob_sum / self.counts

    def to_bytes(self) -> bytes:
        arrays = {"counts": self.counts}
        for name in ("bbox", "coord_sum", "prob_sum"):
            value = getattr(self, name)
            if value is not None:
                arrays[name] = value
        return pack_arrays(arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> ObjectStats:
        z = unpack_arrays(data)
        return cls(z["counts"], *(z.get(k) for k in ("bbox", "coord_sum", "prob_sum")))

    @staticmethod
    def counts_from_bytes(data: bytes) -> int:
        """The number of rows (labels + 1) of serialised statistics."""
        return int(unpack_arrays(data)["counts"].size)

    def table_columns(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The object-table columns (see :data:`engine.storage.object_table.COLUMNS`) of all rows, with ``ids``."""
        assert self.bbox is not None
        c = self.centroid()
        cols: dict[str, np.ndarray] = {"id": ids.astype(np.uint64), "voxels": self.counts.astype(np.int64)}
        for k, name in enumerate(("z0", "y0", "x0", "z1", "y1", "x1")):
            cols[name] = self.bbox[:, k].astype(np.int64)
        for k, name in enumerate(("cz", "cy", "cx")):
            cols[name] = c[:, k]
        cols["mean_probability"] = self.mean_probability()
        return cols


def block_stats(labels: np.ndarray, n: int, origin: Sequence[int], prob: np.ndarray | None = None, full: bool = True) -> ObjectStats:
    """Statistics of the labels ``0..n`` of one block whose first voxel is at ``origin``."""
    if not full:
        return ObjectStats(np.bincount(labels.ravel(), minlength=n + 1).astype(np.int64))
    import cc3d

    st = cc3d.statistics(labels, no_slice_conversion=True)
    counts = np.zeros(n + 1, np.int64)
    got = np.asarray(st["voxel_counts"], np.int64)
    counts[: got.size] = got[: n + 1]
    raw = np.asarray(st["bounding_boxes"], np.int64)[: n + 1]  # z0, z1, y0, y1, x0, x1 (inclusive)
    org = np.asarray(origin, np.int64)
    bbox = np.empty((n + 1, 6), np.int64)
    bbox[: raw.shape[0], :3] = raw[:, 0::2] + org
    bbox[: raw.shape[0], 3:] = raw[:, 1::2] + 1 + org
    coord_sum = np.zeros((n + 1, 3), np.float64)
    cent = np.asarray(st["centroids"], np.float64)[: n + 1]
    coord_sum[: cent.shape[0]] = (cent + org) * counts[: cent.shape[0], None]
    prob_sum = None
    if prob is not None:
        prob_sum = np.bincount(labels.ravel(), weights=prob.ravel().astype(np.float64), minlength=n + 1)
    return ObjectStats(counts, bbox, coord_sum, prob_sum)
