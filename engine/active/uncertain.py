"""Boxes where a model is least sure: what a round asks a person to paint densely.

A window is a box of ``box`` voxels (z, y, x) placed at every ``stride`` in-plane and every section; its
score is the mean binary entropy (bits) of the model's foreground probability over it. The picks are
the windows of the highest score that overlap no box already labelled (annotated, held out, or asked
in an earlier round) and lie no closer than ``gap`` sections to one at an overlapping place: neighbouring
sections look alike, and a second pick there would teach the model little the first does not.

On Lucchi++ (``benchmarks/quality_loop.py`` method f, 3 seeds), half the labelled windows chosen this way
from a first model's probability, the other half random, scored 0.612 +- 0.021 IoU on the held-out
sections at 0.5% of the training voxels against 0.575 +- 0.033 for random windows alone, better in every
seed (benchmarks/RESULTS.md, eleventh session).

:func:`window_entropy` reads the probability volume a slab of sections at a time; memory is one slab and
one float per window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Boxes = list[dict[str, list[int]]]


def entropy_windows(prob: np.ndarray, box: Sequence[int], stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Every in-plane window of ``box`` (one section deep) at ``stride`` in ``prob`` (z, y, x; 0-1): its corner
    (z, y, x) and the mean binary entropy of the probability over it (bits).

    >>> c, h = entropy_windows(np.full((1, 4, 4), 0.5), [1, 2, 2], 2)
    >>> c.tolist(), h.round(3).tolist()
    ([[0, 0, 0], [0, 0, 2], [0, 2, 0], [0, 2, 2]], [1.0, 1.0, 1.0, 1.0])
    """
    p = np.clip(prob.astype(np.float64), 1e-6, 1 - 1e-6)
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    s = np.pad(h.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))  # integral image per section
    ys, xs = np.arange(0, h.shape[1] - box[1] + 1, stride), np.arange(0, h.shape[2] - box[2] + 1, stride)
    y0, x0 = np.meshgrid(ys, xs, indexing="ij")
    sums = s[:, y0 + box[1], x0 + box[2]] - s[:, y0, x0 + box[2]] - s[:, y0 + box[1], x0] + s[:, y0, x0]
    z = np.broadcast_to(np.arange(h.shape[0])[:, None, None], sums.shape)
    corners = np.stack([z.ravel(), np.broadcast_to(y0, sums.shape).ravel(), np.broadcast_to(x0, sums.shape).ravel()], axis=1)
    return corners, sums.ravel() / (box[1] * box[2])


def as_probability(a: np.ndarray) -> np.ndarray:
    """A prediction's foreground probability in 0-1: uint8 is scaled by 1/255, the first channel of a
    (c, z, y, x) array is taken."""
    a = np.asarray(a)
    if a.ndim == 4:
        a = a[0]
    return a / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)


def window_entropy(prob: Any, box: Sequence[int], stride: int, z_stop: int | None = None, slab: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The windows of ``box`` (``box[0]`` sections deep) wholly above section ``z_stop`` of ``prob`` (a
    volume with ``read``/``box``, or an array) and their mean entropy, ``slab`` sections read at a time."""
    from engine.geometry import Box

    if isinstance(prob, np.ndarray):
        arr = as_probability(prob)
        shape = arr.shape
        def read(z0: int, z1: int) -> np.ndarray:
            return arr[z0:z1]
    else:
        shape = tuple(prob.spatial_shape)
        def read(z0: int, z1: int) -> np.ndarray:
            return as_probability(prob.read(Box((z0, 0, 0), (z1, *shape[1:]))))
    z_end = shape[0] if z_stop is None else min(int(z_stop), shape[0])
    corners, per_section = [], []
    for z0 in range(0, z_end, slab):
        c, h = entropy_windows(read(z0, min(z_end, z0 + slab)), box, stride)
        c[:, 0] += z0
        corners.append(c)
        per_section.append(h)
    if not corners:
        return np.zeros((0, 3), np.int64), np.zeros(0)
    c, h = np.concatenate(corners), np.concatenate(per_section)
    depth = int(box[0])
    if depth > 1:  # the mean over the box's sections: the same in-plane window in depth consecutive sections
        per_z = h.reshape(z_end, -1)
        if z_end < depth:
            return np.zeros((0, 3), np.int64), np.zeros(0)
        s = np.pad(per_z.cumsum(0), ((1, 0), (0, 0)))
        h = ((s[depth:] - s[:-depth]) / depth).ravel()
        c = c[: h.size]
    return c, h


def pick_windows(corners: np.ndarray, score: np.ndarray, taken: Boxes, n: int, box: Sequence[int], gap: int = 2) -> Boxes:
    """The ``n`` windows of the highest ``score`` that overlap no ``taken`` box in-plane within ``gap``
    sections, nor an earlier pick (ties: the first corner).

    >>> c = np.array([[0, 0, 0], [1, 0, 0], [5, 0, 0], [0, 8, 0]]); s = np.array([0.9, 0.8, 0.7, 0.1])
    >>> [b["start"] for b in pick_windows(c, s, [], 3, [1, 8, 8])]
    [[0, 0, 0], [5, 0, 0], [0, 8, 0]]
    """
    picked: Boxes = []
    for i in np.argsort(-score, kind="stable"):
        if len(picked) == n:
            break
        z, y, x = (int(v) for v in corners[i])
        if any(z < b["stop"][0] + gap and b["start"][0] < z + box[0] + gap and y < b["stop"][1] and b["start"][1] < y + box[1]
               and x < b["stop"][2] and b["start"][2] < x + box[2] for b in taken + picked):
            continue
        picked.append({"start": [z, y, x], "stop": [z + int(box[0]), y + int(box[1]), x + int(box[2])]})
    return picked


def least_sure(prob: Any, taken: Boxes, n: int, box: Sequence[int], stride: int = 64, gap: int = 2, z_stop: int | None = None,
               random_seed: int | list[int] | None = None) -> Boxes:
    """The ``n`` boxes of ``box`` voxels above section ``z_stop`` where the probability ``prob`` (volume or
    array) is least sure (module docstring); fewer where the volume holds fewer free windows. With
    ``random_seed``, windows in a random order instead, under the same rules (the control: as many labelled
    voxels, placed without the model)."""
    corners, score = window_entropy(prob, box, stride, z_stop)
    if random_seed is not None:
        score = np.random.default_rng(random_seed).random(score.size)
    return pick_windows(corners, score, taken, n, box, gap)
