"""What the base model learns from a review: training targets from reviewed ROIs.

An accepted ROI says "this object is right": its voxels are foreground. A rejected ROI says "this is
not an object": its voxels become background. Only the object's own voxels are known; the rest of its
box is left unknown (``known`` is False there), because a neighbouring object may or may not be right.

>>> import numpy as np
>>> labels = np.zeros((1, 4, 6), np.uint64); labels[0, 1:3, 1:3] = 5; labels[0, 1:3, 4:6] = 9
>>> t = targets_from_answers(labels, {5: True, 9: False})
>>> t.target[0].astype(int).tolist(), int(t.known.sum())
([[0, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], 8)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np


@dataclass
class Targets:
    target: np.ndarray  # bool: foreground where known
    known: np.ndarray  # bool: where the review says something


def targets_from_answers(labels: np.ndarray, answers_by_object: Mapping[int, bool]) -> Targets:
    """Targets over a label array from answers keyed by object id (accepted: 1, rejected: 0)."""
    ids = np.fromiter(answers_by_object, np.uint64) if answers_by_object else np.zeros(0, np.uint64)
    acc = np.fromiter((bool(answers_by_object[int(i)]) for i in ids), bool, ids.size)
    lab = labels.astype(np.uint64, copy=False)
    known = np.isin(lab, ids)
    target = np.isin(lab, ids[acc]) if acc.any() else np.zeros(lab.shape, bool)
    return Targets(target, known)


def review_targets(run_dir: str | os.PathLike[str], answers: Mapping[int, bool]) -> Targets:
    """Targets over the whole label volume of a run from answers keyed by ``roi_id`` (small volumes;
    for large ones use :func:`targets_from_answers` per block)."""
    from engine.active.rois import read_index, read_meta
    from engine.storage import open_volume

    index = read_index(run_dir)
    by_object = {int(index["object_id"][r]): bool(ok) for r, ok in answers.items()}
    vol = open_volume(read_meta(run_dir)["params"]["labels"])
    return targets_from_answers(vol.read(vol.box), by_object)
