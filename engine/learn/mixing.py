"""Spatial mixing masks and mixes for semi-supervised training (Zhang, Zhai et al. 2024).

Every mask is *axial-through*: an in-plane ``(Y, X)`` pattern repeated along z, so a mix never cuts a
z-affinity. ``1`` marks voxels taken from the first crop, ``0`` from the second.

- :func:`box_mask`: a box (``size`` y, x; clipped to the crop) at a random in-plane place.
- :func:`quadrant_mask`: 2 of the 4 in-plane quadrants, drawn at random.
- :func:`mix`: ``mask * a + (1 - mask) * b`` on numpy arrays of shape ``(..., Z, Y, X)``; used alike for
  images and targets, so both are mixed by the same mask.
- :func:`seam_weight`: for affinity targets, 0 on the voxel pairs that the mask's edge splits between the
  two crops (their mixed target would describe a pair that is not in the mixed image); an axial-through
  mask never splits a pair along z.

>>> rng = np.random.default_rng(0)
>>> m = box_mask((3, 8, 8), (4, 4), rng)
>>> m.shape, int(m.sum()), bool((m == m[:1]).all())
((3, 8, 8), 48, True)
>>> int(quadrant_mask((2, 8, 8), rng)[0].sum())
32
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def box_mask(shape: Sequence[int], size: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A float32 ``(Z, Y, X)`` mask: 1 inside an in-plane box of ``size`` (y, x) at a uniformly random
    position (the whole box inside the crop; sizes above the crop are clipped), the same in every section."""
    z, h, w = (int(s) for s in shape)
    by, bx = min(int(size[0]), h), min(int(size[1]), w)
    y0 = int(rng.integers(0, h - by + 1))
    x0 = int(rng.integers(0, w - bx + 1))
    plane = np.zeros((h, w), np.float32)
    plane[y0 : y0 + by, x0 : x0 + bx] = 1.0
    return np.ascontiguousarray(np.broadcast_to(plane, (z, h, w)))


def quadrant_mask(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A float32 ``(Z, Y, X)`` mask: 1 on 2 of the 4 in-plane quadrants (chosen at random), for every section.

    Quadrants split at ``Y // 2`` and ``X // 2``.
    """
    z, h, w = (int(s) for s in shape)
    picks = rng.choice(4, size=2, replace=False)
    plane = np.zeros((h, w), np.float32)
    hy, hx = h // 2, w // 2
    for q in picks:
        ys = slice(0, hy) if q < 2 else slice(hy, h)
        xs = slice(0, hx) if q % 2 == 0 else slice(hx, w)
        plane[ys, xs] = 1.0
    return np.ascontiguousarray(np.broadcast_to(plane, (z, h, w)))


def inter_mask(shape: Sequence[int], size: Sequence[int], p_box: float, rng: np.random.Generator) -> np.ndarray:
    """The labelled part of a labelled/unlabelled mix: a box with probability ``p_box``, else 2 quadrants."""
    if rng.random() < p_box:
        return box_mask(shape, size, rng)
    return quadrant_mask(shape, rng)


def mix(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask * a + (1 - mask) * b`` with ``mask`` ``(Z, Y, X)`` broadcast over leading (channel) axes."""
    if a.shape != b.shape or a.shape[-3:] != mask.shape:
        raise ValueError(f"mix needs equal shapes ending in the mask's {mask.shape}, got {a.shape} and {b.shape}")
    out = mask * a + (1.0 - mask) * b
    return out.astype(np.result_type(a.dtype, np.float32), copy=False)


def seam_weight(mask: np.ndarray, offsets: Sequence[Sequence[int]]) -> np.ndarray:
    """``(K, Z, Y, X)`` float32: per affinity offset, 1 where a voxel and its neighbour at ``-offset`` come
    from the same crop (or the neighbour is outside the crop), 0 where the mask's edge splits them.

    >>> m = np.zeros((2, 1, 4), np.float32); m[..., 2:] = 1
    >>> seam_weight(m, [[1, 0, 0], [0, 0, 1]])[:, 0, 0].tolist()
    [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0]]
    """
    out = np.ones((len(offsets), *mask.shape), np.float32)
    for c, off in enumerate(offsets):
        here, there = [], []
        for n, o in zip(mask.shape, off, strict=True):
            here.append(slice(o, n) if o >= 0 else slice(0, n + o))
            there.append(slice(0, n - o) if o >= 0 else slice(-o, n))
        out[c][tuple(here)] = mask[tuple(here)] == mask[tuple(there)]
    return out
