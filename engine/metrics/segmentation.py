"""Neuron segmentation scores against ground truth: variation of information (split, merge) and the
adapted Rand error (SNEMI3D / CREMI). Voxels labelled 0 in the ground truth are ignored by default.

>>> import numpy as np
>>> gt = np.array([1, 1, 1, 1]); seg = np.array([1, 1, 2, 2])   # one object cut in two
>>> split, merge = voi(seg, gt)
>>> split, merge
(1.0, 0.0)
>>> r = adapted_rand(seg, gt)
>>> round(r.error, 4), r.precision, round(r.recall, 4)
(0.5, 1.0, 0.3333)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.metrics.contingency import contingency


def _entropy_terms(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def voi(seg: np.ndarray, gt: np.ndarray, *, ignore_gt: Sequence[int] = (0,), ignore_seg: Sequence[int] = (), base: float = 2.0) -> tuple[float, float]:
    """Variation of information ``(split, merge)``: ``H(seg | gt)`` (over-segmentation) and
    ``H(gt | seg)`` (under-segmentation), in bits (``base=2``, as scikit-image and CREMI;
    ``base=math.e`` gives nats)."""
    t = contingency(seg, gt, ignore_a=ignore_seg, ignore_b=ignore_gt)
    n = t.total
    if n == 0:
        return 0.0, 0.0
    h_joint = _entropy_terms(t.counts / n)
    h_seg = _entropy_terms(t.a_sizes / n)
    h_gt = _entropy_terms(t.b_sizes / n)
    scale = math.log(base)
    return max(0.0, (h_joint - h_gt) / scale), max(0.0, (h_joint - h_seg) / scale)


@dataclass
class AdaptedRand:
    """``error = 1 - F``, F the harmonic mean (for ``alpha = 0.5``) of ``precision`` (pairs of voxels
    together in both / together in the segmentation) and ``recall`` (/ together in the ground truth)."""

    error: float
    precision: float
    recall: float


def adapted_rand(seg: np.ndarray, gt: np.ndarray, *, ignore_gt: Sequence[int] = (0,), alpha: float = 0.5) -> AdaptedRand:
    """The adapted Rand error of ``seg`` against ``gt`` (SNEMI3D's definition). The error equals
    scikit-image's ``adapted_rand_error(gt, seg)``; its precision and recall are swapped there with
    respect to its own documentation (and to SNEMI3D), here they follow the definitions above.

    ``alpha`` weighs precision against recall: ``F = sum p_ij^2 / (alpha sum s_k^2 + (1 - alpha) sum t_k^2)``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    t = contingency(seg, gt, ignore_b=ignore_gt)
    c = t.counts.astype(np.float64)
    s, g = t.a_sizes.astype(np.float64), t.b_sizes.astype(np.float64)
    n = c.sum()
    both = float(c @ c - n)
    in_seg = float(s @ s - n)
    in_gt = float(g @ g - n)
    precision = both / in_seg if in_seg else 1.0
    recall = both / in_gt if in_gt else 1.0
    denom = alpha * in_seg + (1 - alpha) * in_gt
    return AdaptedRand(1.0 - (both / denom if denom else 1.0), precision, recall)
