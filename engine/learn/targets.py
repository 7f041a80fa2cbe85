"""Training targets from label crops: binary masks, synapse polarity and nearest-neighbour affinities.

Each function takes a label crop ``(Z, Y, X)`` and a boolean ``known`` crop (False where the labels are
unknown: outside the labelled boxes, or an ignore id) and returns ``(target, weight)``, float32 arrays of
shape ``(K, Z, Y, X)``; ``weight`` is 0 where the target is unknown.

>>> import numpy as np
>>> lab = np.array([[[1, 1, 2, 0]]]); known = np.ones_like(lab, bool)
>>> t, w = affinity_target(lab, known, [[0, 0, 1]], widen=False)
>>> t[0, 0, 0].tolist(), w[0, 0, 0].tolist()
([0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from engine.learn.config import TargetConfig


def mask_target(labels: np.ndarray, known: np.ndarray, label_ids: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """One channel: 1 where the label is in ``label_ids`` (any non-zero label if empty)."""
    fg = np.isin(labels, list(label_ids)) if len(label_ids) else labels != 0
    return fg[None].astype(np.float32), known[None].astype(np.float32)


def polarity_target(labels: np.ndarray, known: np.ndarray, pre_ids: Sequence[int], post_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Three channels: pre-synaptic, post-synaptic, and their union."""
    pre = np.isin(labels, list(pre_ids))
    post = np.isin(labels, list(post_ids))
    target = np.stack([pre, post, pre | post]).astype(np.float32)
    return target, np.broadcast_to(known[None], target.shape).astype(np.float32)


def widen_boundaries(labels: np.ndarray) -> np.ndarray:
    """Set to 0 the voxels whose in-plane 4-neighbourhood holds another label (objects shrink by one voxel
    where they touch each other or the background), as the papers' affinity targets do."""
    out = labels.copy()
    fp = np.zeros((1, 3, 3), bool)
    fp[0, 1, :] = fp[0, :, 1] = True
    hi = ndimage.maximum_filter(labels, footprint=fp, mode="nearest")
    lo = ndimage.minimum_filter(labels, footprint=fp, mode="nearest")
    out[(hi != labels) | (lo != labels)] = 0
    return out


def _shift_pairs(shape: tuple[int, ...], offset: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices (here, there) so that ``a[here]`` and ``a[there]`` pair each voxel with its neighbour at ``-offset``."""
    here, there = [], []
    for n, o in zip(shape, offset, strict=True):
        if o >= 0:
            here.append(slice(o, n))
            there.append(slice(0, n - o))
        else:
            here.append(slice(0, n + o))
            there.append(slice(-o, n))
    return tuple(here), tuple(there)


def affinity_target(labels: np.ndarray, known: np.ndarray, offsets: Sequence[Sequence[int]], widen: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One channel per offset: 1 where a voxel and its neighbour at ``-offset`` share a non-zero label.

    The weight is 0 where the neighbour lies outside the crop or either voxel is unknown.
    """
    lab = widen_boundaries(labels) if widen else labels
    k = len(offsets)
    target = np.zeros((k, *labels.shape), np.float32)
    weight = np.zeros((k, *labels.shape), np.float32)
    for c, off in enumerate(offsets):
        here, there = _shift_pairs(labels.shape, off)
        a, b = lab[here], lab[there]
        target[c][here] = (a == b) & (a != 0)
        weight[c][here] = known[here] & known[there]
    return target, weight


def make_target(labels: np.ndarray, known: np.ndarray, cfg: TargetConfig, offsets: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """The target and weight for ``cfg.kind``; voxels with an ``ignore_ids`` label count as unknown."""
    if cfg.ignore_ids:
        known = known & ~np.isin(labels, cfg.ignore_ids)
    if cfg.kind == "mask":
        target, weight = mask_target(labels, known, cfg.label_ids)
    elif cfg.kind == "polarity":
        target, weight = polarity_target(labels, known, cfg.pre_ids, cfg.post_ids)
    else:
        return affinity_target(labels, known, offsets, widen=cfg.widen_boundaries)
    scaled = {int(i): float(w) for i, w in cfg.weights.items() if w != 1.0}
    if scaled:
        factor = np.ones(labels.shape, np.float32)
        for i, w in scaled.items():
            factor[labels == i] = w
        weight = weight * factor[None].astype(weight.dtype)
    return target, weight


def has_foreground(target: np.ndarray, weight: np.ndarray, kind: str) -> bool:
    """Whether a crop holds any positive (for affinities: any boundary, i.e. a zero) known target voxel."""
    known = weight > 0
    if kind == "affinity":
        return bool(np.any(known & (target == 0))) and bool(np.any(known & (target > 0)))
    return bool(np.any(known & (target > 0)))
