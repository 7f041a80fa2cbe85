"""Candidate sub-volumes: windows of adjacent patches on the patch grid.

A window of ``window = (wz, wy, wx)`` patches placed at grid position ``p`` holds the patches
``p .. p + window - 1``; its voxels run from the first patch's start to the last patch's stop, e.g.
1x9x9 patches of 18x160x160 at stride 8x40x40 make an 18x480x480 sub-volume. Windows are placed every
``step`` grid positions (1: every position, as in the paper). Candidate ids are the C-order ravel of
the window position index on the candidate grid.

Two windows overlap in voxels when, on every axis, their positions differ by less than
``window - 1 + patch / stride`` grid steps; :meth:`Windows.exclusion` gives that radius, which is
how the greedy search rules out every candidate that would overlap a pick (the authors' code only
compared patch ids, so its picks could share voxels).

>>> from engine.select.patches import PatchGrid
>>> g = PatchGrid((40, 400, 400), (18, 160, 160), (8, 40, 40))
>>> w = Windows(g, (1, 3, 3))
>>> g.shape, w.shape, w.box(0), w.exclusion
((3, 7, 7), (3, 5, 5), Box([0, 0, 0]:[18, 240, 240]), (2, 5, 5))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.errors import ConfigError
from engine.geometry import Box, Coord
from engine.select.patches import PatchGrid


@dataclass(frozen=True)
class Windows:
    """All window positions of ``window`` patches on ``grid``, every ``step`` positions."""

    grid: PatchGrid
    window: Coord
    step: Coord = (1, 1, 1)

    def __post_init__(self) -> None:
        window = tuple(int(w) for w in self.window)
        step = tuple(int(s) for s in self.step)
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "step", step)
        if len(window) != 3 or any(w < 1 for w in window):
            raise ConfigError(f"window (--window) must be three positive numbers of patches z,y,x, got {window}", "e.g. window 1,9,9")
        if len(step) != 3 or any(s < 1 for s in step):
            raise ConfigError(f"step (--step) must be three positive numbers of patches z,y,x, got {step}", "e.g. step 1,1,1")
        if any(w > g for w, g in zip(window, self.grid.shape, strict=True)):
            raise ConfigError(
                f"window (--window) of {window} patches does not fit on the patch grid {self.grid.shape}",
                "use a smaller window, or embed with a smaller stride",
            )

    @property
    def shape(self) -> Coord:
        """Window positions per axis."""
        return tuple((g - w) // s + 1 for g, w, s in zip(self.grid.shape, self.window, self.step, strict=True))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def voxel_shape(self) -> Coord:
        return tuple((w - 1) * s + p for w, s, p in zip(self.window, self.grid.stride, self.grid.patch, strict=True))

    @property
    def exclusion(self) -> Coord:
        """Largest difference of grid positions (per axis) at which two windows still share voxels."""
        return tuple(
            -(-(v) // s) - 1 for v, s in zip(self.voxel_shape, self.grid.stride, strict=True)
        )

    def positions(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Patch-grid index (z, y, x) of the first patch of each candidate, shape (n, 3)."""
        idx = np.stack(np.unravel_index(np.asarray(ids, dtype=np.int64), self.shape), axis=1)
        return idx * np.asarray(self.step)

    def box(self, cid: int) -> Box:
        start = self.grid.patch_box(tuple(self.positions([cid])[0])).start
        return Box.from_shape(self.voxel_shape, start)

    def patches(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Patch ids of each candidate's window, shape (n, wz*wy*wx), C order inside the window."""
        pos = self.positions(ids)
        offs = np.stack(np.meshgrid(*(np.arange(w) for w in self.window), indexing="ij"), axis=-1).reshape(-1, 3)
        cells = pos[:, None, :] + offs[None, :, :]
        _, gy, gx = self.grid.shape
        return (cells[..., 0] * gy + cells[..., 1]) * gx + cells[..., 2]

    def overlapping(self, cid: int) -> tuple[slice, slice, slice]:
        """Slices of the candidate grid holding every candidate that shares voxels with ``cid``."""
        pos = self.positions([cid])[0]
        out = []
        for p, r, s, n in zip(pos, self.exclusion, self.step, self.shape, strict=True):
            lo = max(0, -(-(int(p) - r) // s))
            hi = min(n, (int(p) + r) // s + 1)
            out.append(slice(lo, hi))
        return (out[0], out[1], out[2])

    def membership(self, ids: np.ndarray | None = None) -> object:
        """Sparse (n candidates x N patches) 0/1 matrix: which patches each candidate holds."""
        import scipy.sparse as sp

        ids = np.arange(self.size) if ids is None else np.asarray(ids, dtype=np.int64)
        cols = self.patches(ids)
        n, w = cols.shape
        indptr = np.arange(0, n * w + 1, w, dtype=np.int64)
        return sp.csr_matrix((np.ones(n * w, dtype=bool), cols.ravel(), indptr), shape=(n, self.grid.size))


def containing(windows: Windows, patch_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (k, candidate id) pairs such that candidate's window holds patch ``patch_ids[k]``.

    Candidate position ``q`` (on the candidate grid) holds patch index ``i`` when
    ``q * step <= i <= q * step + window - 1``.
    """
    patch_ids = np.asarray(patch_ids, dtype=np.int64)
    pos = np.stack(np.unravel_index(patch_ids, windows.grid.shape), axis=1)  # (n, 3)
    step = np.asarray(windows.step)
    win = np.asarray(windows.window)
    shape = np.asarray(windows.shape)
    lo = -(-(pos - win + 1) // step)  # ceil
    lo = np.maximum(lo, 0)
    hi = np.minimum(pos // step, shape - 1)  # inclusive
    span = [-(-int(w) // int(s)) for w, s in zip(win, step, strict=True)]
    offs = np.stack(np.meshgrid(*(np.arange(s) for s in span), indexing="ij"), axis=-1).reshape(-1, 3)
    q = lo[:, None, :] + offs[None, :, :]  # (n, span, 3)
    ok = (q <= hi[:, None, :]).all(axis=2)
    owner = np.broadcast_to(np.arange(len(patch_ids))[:, None], ok.shape)[ok]
    qz, qy, qx = q[ok].T
    cids = (qz * shape[1] + qy) * shape[2] + qx
    return owner, cids
