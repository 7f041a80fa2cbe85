"""CREMI's synaptic-cleft distances, in nm with an anisotropic voxel size.

- ADGT: the mean distance of each ground-truth voxel to the nearest predicted voxel (misses cost);
- ADF: the mean distance of each predicted voxel to the nearest ground-truth voxel (false alarms cost);
- the CREMI score is their mean.

>>> import numpy as np
>>> gt = np.zeros((3, 1, 5), bool); gt[0, 0, 0] = True
>>> pred = np.zeros((3, 1, 5), bool); pred[2, 0, 0] = pred[0, 0, 3] = True
>>> d = cremi_distances(pred, gt, voxel_size=(40, 4, 4))
>>> d.adgt, d.adf, d.score
(12.0, 46.0, 29.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class CremiDistances:
    """ADGT and ADF (nm), their mean, and the voxel counts behind them. With nothing predicted ADGT
    is infinite; with no ground truth ADF is; both empty gives 0."""

    adgt: float
    adf: float
    score: float
    gt_voxels: int
    pred_voxels: int


def _mean_distance_to(target: np.ndarray, at: np.ndarray, voxel_size: Sequence[float]) -> float:
    """Mean over the voxels ``at`` of the distance to the nearest voxel of ``target``."""
    from scipy.ndimage import distance_transform_edt

    if not at.any():
        return 0.0
    if not target.any():
        return float("inf")
    dist = distance_transform_edt(~target, sampling=tuple(float(v) for v in voxel_size))
    return float(np.asarray(dist)[at].mean())


def cremi_distances(pred: np.ndarray, gt: np.ndarray, voxel_size: Sequence[float] = (40.0, 4.0, 4.0)) -> CremiDistances:
    """ADGT, ADF and the CREMI score of a predicted mask against a ground-truth mask (nonzero is
    foreground), with ``voxel_size`` (z, y, x nm; CREMI's is 40, 4, 4)."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    if len(voxel_size) != pred.ndim or any(v <= 0 for v in voxel_size):
        raise ValueError(f"voxel_size needs {pred.ndim} positive values, got {tuple(voxel_size)}")
    p, g = np.asarray(pred) != 0, np.asarray(gt) != 0
    adgt = _mean_distance_to(p, g, voxel_size)
    adf = _mean_distance_to(g, p, voxel_size)
    return CremiDistances(adgt, adf, 0.5 * (adgt + adf), int(g.sum()), int(p.sum()))
