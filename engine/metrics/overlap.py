"""Overlap scores of binary masks (semantic segmentation, e.g. mitochondria): Jaccard (IoU), Dice, and
VOC (the mean of the foreground and background Jaccard, as Lucchi et al. report).

>>> import numpy as np
>>> pred = np.array([1, 1, 0, 0], bool); gt = np.array([1, 0, 0, 0], bool)
>>> jaccard(pred, gt), round(dice(pred, gt), 4), round(voc(pred, gt), 4)
(0.5, 0.6667, 0.5833)
"""

from __future__ import annotations

import numpy as np


def _masks(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    p, g = np.asarray(pred) != 0, np.asarray(gt) != 0
    if mask is not None:
        m = np.asarray(mask, bool)
        p, g = p[m], g[m]
    return p, g


def jaccard(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """``|P and G| / |P or G|`` over nonzero voxels (inside ``mask`` if given); 1.0 when both are empty."""
    p, g = _masks(pred, gt, mask)
    union = int(np.count_nonzero(p | g))
    return 1.0 if union == 0 else int(np.count_nonzero(p & g)) / union


def dice(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """``2 |P and G| / (|P| + |G|)``; 1.0 when both are empty."""
    p, g = _masks(pred, gt, mask)
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(g))
    return 1.0 if total == 0 else 2 * int(np.count_nonzero(p & g)) / total


def voc(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The VOC score: the mean of the Jaccard index of the foreground and of the background."""
    p, g = _masks(pred, gt, mask)
    return 0.5 * (jaccard(p, g) + jaccard(~p, ~g))
