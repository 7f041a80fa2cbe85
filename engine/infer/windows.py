"""The global set of sliding windows over a volume, exactly as MONAI's ``sliding_window_inference`` lays it out.

Per axis (one axis drawn; ``roi`` 8, overlap 0.5, so ``stride`` 4; volume of 18 voxels)::

    0   4   8   12  16 18
    [=======]                 window 0 starts at 0
        [=======]             window 1 at 4
            [=======]         window 2 at 8
                [=======]     window 3 at 12 ... would end at 20 > 18,
                  [=======]   so the last window is clamped to 18 - 8 = 10  (MONAI: start -= overshoot)

The stride is ``int(roi * (1 - overlap))`` (at least 1; ``roi`` where the axis is exactly ``roi`` long),
windows start at ``i * stride`` until one reaches the end, and that last one is clamped to ``size - roi``.
An axis shorter than ``roi`` is zero-padded to ``roi`` (``diff // 2`` before, the rest after), as MONAI
pads its input; here the padding shows as window starts below 0 (or stops past the end).

A block evaluates exactly the global windows that overlap its write box, and reads their union (its
*read box*). Write boxes whose faces lie on the stride grid are crossed by as few windows as possible
(one per cut per axis at overlap 0.5): see :func:`aligned_write_shape` and :meth:`WindowGrid.redundancy`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.errors import ConfigError
from engine.geometry import BlockGrid, Box
from engine.geometry.box import Coord


def scan_interval(image_size: Sequence[int], roi: Sequence[int], overlap: Sequence[float]) -> Coord:
    """MONAI's ``_get_scan_interval``: ``int(roi * (1 - overlap))`` (at least 1), ``roi`` where the
    (padded) image is exactly ``roi`` long.

    >>> scan_interval((64, 512, 500), (16, 128, 128), (0.5, 0.5, 0.5))
    (8, 64, 64)
    """
    out = []
    for size, r, o in zip(image_size, roi, overlap, strict=True):
        if r == size:
            out.append(int(r))
        else:
            out.append(max(1, int(r * (1 - o))))
    return tuple(out)


def axis_starts(size: int, roi: int, stride: int) -> list[int]:
    """Window starts along one axis of a (padded) image, as MONAI's ``dense_patch_slices``.

    >>> axis_starts(18, 8, 4)
    [0, 4, 8, 10]
    >>> axis_starts(8, 8, 8)
    [0]
    """
    num = math.ceil(size / stride)
    count = next((d + 1 for d in range(num) if d * stride + roi >= size), 1)
    return [min(i * stride, size - roi) for i in range(count)]


@dataclass(frozen=True)
class WindowGrid:
    """The windows of ``roi`` with ``overlap`` over a volume of ``shape`` (z, y, x)."""

    shape: Coord
    roi: Coord
    overlap: tuple[float, ...]

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        roi = tuple(int(r) for r in self.roi)
        overlap = tuple(float(o) for o in self.overlap)
        if len(overlap) == 1:
            overlap = overlap * len(shape)
        if not (len(shape) == len(roi) == len(overlap)):
            raise ConfigError(f"window {roi}, overlap {overlap} and volume shape {shape} must have the same number of axes")
        if any(r < 1 for r in roi):
            raise ConfigError(f"the window must be at least 1 voxel on every axis, got {roi}")
        if any(s < 1 for s in shape):
            raise ConfigError(f"the volume is empty: shape {shape}")
        for o in overlap:
            if not 0.0 <= o < 1.0:
                raise ConfigError(f"overlap must be in [0, 1) but {o} was given", "e.g. overlap 0.5")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "roi", roi)
        object.__setattr__(self, "overlap", overlap)

    # -- the global layout -------------------------------------------------------------------------
    @property
    def padded(self) -> Coord:
        """The image size MONAI scans: the volume, padded up to ``roi`` where it is smaller."""
        return tuple(max(s, r) for s, r in zip(self.shape, self.roi, strict=True))

    @property
    def pad_before(self) -> Coord:
        """Zero padding before the volume on each axis (MONAI pads ``diff // 2`` before)."""
        return tuple(max(r - s, 0) // 2 for s, r in zip(self.shape, self.roi, strict=True))

    @property
    def stride(self) -> Coord:
        return scan_interval(self.padded, self.roi, self.overlap)

    def starts(self, axis: int) -> np.ndarray:
        """Window starts along ``axis`` in volume coordinates (negative only where the axis is padded)."""
        s = axis_starts(self.padded[axis], self.roi[axis], self.stride[axis])
        return np.asarray(s, dtype=np.int64) - self.pad_before[axis]

    @property
    def counts(self) -> Coord:
        """Windows per axis."""
        return tuple(len(self.starts(a)) for a in range(len(self.shape)))

    @property
    def num_windows(self) -> int:
        return math.prod(self.counts)

    # -- per block ---------------------------------------------------------------------------------
    def starts_overlapping(self, axis: int, lo: int, hi: int) -> np.ndarray:
        """Starts of the windows along ``axis`` that overlap ``[lo, hi)``."""
        s = self.starts(axis)
        return s[(s < hi) & (s + self.roi[axis] > lo)]

    def windows_for(self, write: Box) -> list[np.ndarray]:
        """Per axis, the starts of the windows that overlap ``write`` (their product is the block's windows,
        in the same order as the global list)."""
        return [self.starts_overlapping(a, write.start[a], write.stop[a]) for a in range(write.ndim)]

    def read_box(self, write: Box) -> Box:
        """The union of the windows that overlap ``write`` (may extend past the volume where it is padded)."""
        per_axis = self.windows_for(write)
        if any(p.size == 0 for p in per_axis):
            raise ValueError(f"no window overlaps {write}; is it inside the volume {self.shape}?")
        return Box(tuple(int(p[0]) for p in per_axis), tuple(int(p[-1]) + r for p, r in zip(per_axis, self.roi, strict=True)))

    def window_boxes(self, write: Box) -> list[Box]:
        """The boxes of the windows that overlap ``write``, in global order (z slowest)."""
        per_axis = self.windows_for(write)
        return [Box.from_shape(self.roi, tuple(int(v) for v in s)) for s in itertools.product(*per_axis)]

    def context_for(self, grid: BlockGrid) -> Coord:
        """The smallest grid context such that every block's read box (clipped to the volume) holds
        the windows of its write box."""
        need = [0] * len(self.shape)
        for axis in range(len(self.shape)):
            t0, t1, w = grid.total.start[axis], grid.total.stop[axis], grid.write_shape[axis]
            for lo in range(t0, t1, w):
                hi = min(lo + w, t1)
                s = self.starts_overlapping(axis, lo, hi)
                first = max(int(s[0]), 0)
                last = min(int(s[-1]) + self.roi[axis], self.shape[axis])
                need[axis] = max(need[axis], lo - first, last - hi)
        return tuple(need)

    def windows_computed(self, grid: BlockGrid) -> int:
        """How many windows all blocks of ``grid`` evaluate together (at least :attr:`num_windows`)."""
        total = 1
        for axis in range(len(self.shape)):
            t0, t1, w = grid.total.start[axis], grid.total.stop[axis], grid.write_shape[axis]
            total *= sum(int(self.starts_overlapping(axis, lo, min(lo + w, t1)).size) for lo in range(t0, t1, w))
        return total

    def redundancy(self, grid: BlockGrid) -> float:
        """Windows evaluated blockwise over windows in one pass (1.0: none is computed twice)."""
        return self.windows_computed(grid) / self.num_windows


def aligned_write_shape(windows: WindowGrid, target: Sequence[int], unit: Sequence[int] = (1, 1, 1)) -> Coord:
    """A write shape near ``target`` whose faces lie on the stride grid (a multiple of the stride) and
    that covers whole storage ``unit`` s (a multiple of lcm(stride, unit)), capped at the volume.

    >>> w = WindowGrid((64, 512, 512), (16, 128, 128), (0.5,))
    >>> aligned_write_shape(w, (64, 256, 200), (8, 64, 64))
    (64, 256, 192)
    """
    out = []
    for axis, (t, u) in enumerate(zip(target, unit, strict=True)):
        step = math.lcm(windows.stride[axis], int(u))
        n = max(1, round(int(t) / step))
        size = n * step
        cap = -(-windows.shape[axis] // int(u)) * int(u)  # whole units covering the volume
        out.append(min(size, cap) if size >= windows.shape[axis] else size)
    return tuple(out)
