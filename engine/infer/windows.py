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

Blockwise, each window is computed by exactly one block, the one whose write box holds its start
(:class:`WindowOwnership`, what ``predict`` does by default); the block reads the union of its own
windows, and the parts of its write box that lower blocks' windows reach are summed with their partial
sums in a second pass. The older scheme, kept in :meth:`WindowGrid.read_box` and
:meth:`WindowGrid.redundancy`, has each block evaluate every window that overlaps its write box, so
windows straddling a cut are computed twice. Write boxes whose faces lie on the stride grid
(:func:`aligned_write_shape`) keep both the spill and the redundancy small.
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


@dataclass(frozen=True)
class _AxisPlan:
    """Ownership along one axis: per block (by grid index on this axis) its range, its own window
    starts, the extent of those windows (clipped to the covered range) and where the lower blocks'
    windows stop reaching into it."""

    lo: tuple[int, ...]
    hi: tuple[int, ...]
    own: tuple[tuple[int, ...], ...]
    foot: tuple[tuple[int, int] | None, ...]
    reach: tuple[int, ...]


class WindowOwnership:
    """Each window of ``windows`` computed by exactly one block of ``grid``: the block whose write box
    holds the window's start (per axis; starts before the grid go to the first block, MONAI's clamped
    last window to the block that holds its clamped start).

    A block accumulates its own windows over its *footprint* (their union: its write box plus what
    spills past its upper faces, ``window - stride`` voxels on a stride-aligned grid). Per axis, the
    windows of lower blocks reach into a block up to :meth:`reach`; the voxels beyond that on every
    axis are covered by the block's own windows only, so it can finish them alone (:meth:`final_part`).
    The rest of its write box (:meth:`shared_parts`, at most ``2**ndim - 1`` boxes: the lower slabs of
    the write box and their edges and corner) gets partial sums ``sum(w * p)``, ``sum(w)`` from several
    blocks: :meth:`pieces` says which boxes of its footprint a block hands to which other block (and
    to itself), and every voxel of a shared part receives the pieces of exactly the blocks that own
    windows over it. Windows that reach past the next block (blocks thinner than ``window - stride``)
    simply make more pairs; nothing assumes immediate neighbours.

    >>> w = WindowGrid((32, 384, 384), (16, 128, 128), (0.5,))
    >>> g = BlockGrid(Box.from_shape((32, 384, 384)), (32, 192, 192))
    >>> o = WindowOwnership(w, g)
    >>> [o.num_own(b.index) for b in g.blocks()], o.windows_computed == w.num_windows
    ([27, 18, 18, 12], True)
    >>> o.final_part((0, 1, 1)), o.shared_parts((0, 0, 1))
    (Box([0, 256, 256]:[32, 384, 384]), [Box([0, 0, 192]:[32, 192, 256])])
    >>> [k for k, _ in o.targets((0, 0, 0))], [j for j, _ in o.sources((0, 1, 1))]
    ([(0, 0, 1), (0, 1, 0), (0, 1, 1)], [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)])
    """

    def __init__(self, windows: WindowGrid, grid: BlockGrid) -> None:
        self.windows = windows
        self.grid = grid
        covered = grid.covered.intersect(Box.from_shape(windows.shape))
        self._covered = covered
        axes = []
        for a in range(len(windows.shape)):
            t0, t1, w, n = covered.start[a], covered.stop[a], grid.write_shape[a], grid.grid_shape[a]
            lo = tuple(min(t0 + k * w, t1) for k in range(n))
            hi = tuple(min(t0 + (k + 1) * w, t1) for k in range(n))
            starts = windows.starts_overlapping(a, t0, t1)
            owner = np.clip((starts - t0) // w, 0, n - 1)
            own = tuple(tuple(int(s) for s in starts[owner == k]) for k in range(n))
            r = windows.roi[a]
            foot = tuple((max(s[0], t0), min(s[-1] + r, t1)) if s else None for s in own)
            reach = []
            end = t0  # how far the windows of the blocks below reach
            for k in range(n):
                reach.append(min(max(end, lo[k]), hi[k]))
                if own[k]:
                    end = max(end, own[k][-1] + r)
            axes.append(_AxisPlan(lo, hi, own, foot, tuple(reach)))
        self._axes = tuple(axes)

    # -- per block (by grid index) -----------------------------------------------------------------
    def own_starts(self, index: Sequence[int]) -> list[tuple[int, ...]]:
        return [ax.own[i] for ax, i in zip(self._axes, index, strict=True)]

    def num_own(self, index: Sequence[int]) -> int:
        return math.prod(len(s) for s in self.own_starts(index))

    def own_windows(self, index: Sequence[int]) -> list[Box]:
        """The boxes of the block's own windows, in global order (z slowest)."""
        return [Box.from_shape(self.windows.roi, s) for s in itertools.product(*self.own_starts(index))]

    def read_box(self, index: Sequence[int]) -> Box | None:
        """The union of the block's own windows (may extend past the volume where it is padded); None
        if it owns none."""
        starts = self.own_starts(index)
        if any(not s for s in starts):
            return None
        return Box(tuple(s[0] for s in starts), tuple(s[-1] + r for s, r in zip(starts, self.windows.roi, strict=True)))

    def footprint(self, index: Sequence[int]) -> Box | None:
        """Where the block's own windows add weight, inside the grid's covered box; None if it owns none."""
        feet = [ax.foot[i] for ax, i in zip(self._axes, index, strict=True)]
        if any(f is None for f in feet):
            return None
        return Box(tuple(f[0] for f in feet if f is not None), tuple(f[1] for f in feet if f is not None))

    def write_box(self, index: Sequence[int]) -> Box:
        return Box(tuple(ax.lo[i] for ax, i in zip(self._axes, index, strict=True)), tuple(ax.hi[i] for ax, i in zip(self._axes, index, strict=True)))

    def accumulator_box(self, index: Sequence[int]) -> Box:
        """The write box and the footprint together (their bounding box): what a block accumulates."""
        write = self.write_box(index)
        foot = self.footprint(index)
        if foot is None:
            return write
        return Box(tuple(map(min, write.start, foot.start)), tuple(map(max, write.stop, foot.stop)))

    def _split(self, index: Sequence[int]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """Per axis the lower (shared) range and the upper range of the write box."""
        return [((ax.lo[i], ax.reach[i]), (ax.reach[i], ax.hi[i])) for ax, i in zip(self._axes, index, strict=True)]

    def final_part(self, index: Sequence[int]) -> Box:
        """The voxels of the write box that only the block's own windows cover (may be empty)."""
        split = self._split(index)
        return Box(tuple(u[0] for _, u in split), tuple(u[1] for _, u in split))

    def shared_parts(self, index: Sequence[int]) -> list[Box]:
        """The rest of the write box, as disjoint non-empty boxes in a fixed order."""
        split = self._split(index)
        parts = []
        for pattern in itertools.product((0, 1), repeat=len(split)):
            if all(pattern):
                continue  # the final part
            rng = [split[a][p] for a, p in enumerate(pattern)]
            box = Box(tuple(r[0] for r in rng), tuple(r[1] for r in rng))
            if not box.empty:
                parts.append(box)
        return parts

    def pieces(self, source: Sequence[int], target: Sequence[int]) -> list[Box]:
        """The boxes of ``target``'s shared parts that ``source``'s own windows add weight to."""
        foot = self.footprint(source)
        if foot is None:
            return []
        return [p for p in (part.intersect(foot) for part in self.shared_parts(target)) if not p.empty]

    def _overlapping(self, axis: int, k: int, upward: bool) -> list[int]:
        ax = self._axes[axis]
        if upward:  # blocks at or above k whose range the footprint of k reaches
            f = ax.foot[k]
            return [m for m in range(k, len(ax.lo)) if f is not None and ax.lo[m] < f[1] and f[0] < ax.hi[m]]
        return [j for j in range(k + 1) if (f := ax.foot[j]) is not None and f[0] < ax.hi[k] and ax.lo[k] < f[1]]

    def targets(self, index: Sequence[int]) -> list[tuple[tuple[int, ...], list[Box]]]:
        """The blocks (the block itself included) that get pieces of this block's sums, with the pieces."""
        return self._partners(index, upward=True)

    def sources(self, index: Sequence[int]) -> list[tuple[tuple[int, ...], list[Box]]]:
        """The blocks (the block itself included) whose pieces a block sums for its shared parts."""
        return self._partners(index, upward=False)

    def _partners(self, index: Sequence[int], upward: bool) -> list[tuple[tuple[int, ...], list[Box]]]:
        """The blocks that exchange pieces with ``index``, each with its non-empty pieces: upward, those
        that get pieces from it (its targets); else those it gets pieces from (its sources)."""
        cands = [self._overlapping(a, int(i), upward) for a, i in enumerate(index)]
        out = []
        for other in itertools.product(*cands):
            got = self.pieces(index, other) if upward else self.pieces(other, index)
            if got:
                out.append((tuple(other), got))
        return out

    # -- whole grid --------------------------------------------------------------------------------
    @property
    def windows_computed(self) -> int:
        """Windows all blocks compute together: each window of the covered box once."""
        return math.prod(sum(len(s) for s in ax.own) for ax in self._axes)

    @property
    def any_shared(self) -> bool:
        """Whether any block has a shared part (else one pass finishes every block)."""
        return any(r > lo for ax in self._axes for r, lo in zip(ax.reach, ax.lo, strict=True))
