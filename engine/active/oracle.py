"""Answers from ground truth: an annotator that is never wrong (for benchmarks and tests).

A ROI is correct when its predicted object matches a ground-truth object. The paper's rule
(``criterion="cover"``): the prediction covers more than ``threshold`` (one half) of a ground-truth
object it touches. ``criterion="iou"``: the intersection over union with the best ground-truth object
exceeds ``threshold``. Both are measured in 3D, inside the object's bounding box grown by ``margin``
(a ground-truth object that sticks out of that box is measured by its part inside it).

Ground truth is either an instance volume (ids, 0 outside) or a binary / semantic one
(``gt_binary=True``: its connected components are the objects, 26-connected).

>>> import numpy as np
>>> pred = np.zeros((1, 8, 8), np.uint64); pred[0, 1:4, 1:4] = 1; pred[0, 5:7, 5:7] = 2
>>> gt = np.zeros((1, 8, 8), np.uint64); gt[0, 1:4, 1:5] = 7
>>> [object_correct(pred, gt, i) for i in (1, 2)]
[True, False]
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import numpy as np

from engine.errors import ConfigError, StorageError

log = logging.getLogger(__name__)

Criterion = Literal["cover", "iou"]


def object_correct(pred: np.ndarray, gt: np.ndarray, object_id: int, criterion: Criterion = "cover", threshold: float = 0.5,
                   gt_binary: bool = False) -> bool:
    """Whether object ``object_id`` of the label crop ``pred`` matches an object of the ground-truth crop ``gt``."""
    p = pred == np.asarray(object_id, pred.dtype)
    if gt_binary:
        import cc3d

        g_lab = cc3d.connected_components(gt > 0, connectivity=26)
    else:
        g_lab = gt
    touched = np.unique(g_lab[p])
    touched = touched[touched != 0]
    if touched.size == 0:
        return False
    n_p = int(p.sum())
    for g in touched:
        gm = g_lab == g
        inter = int((gm & p).sum())
        n_g = int(gm.sum())
        if criterion == "cover":
            ok = inter > threshold * n_g
        elif criterion == "iou":
            ok = inter > threshold * (n_p + n_g - inter)
        else:
            raise ConfigError(f"unknown oracle criterion {criterion!r}", "use 'cover' or 'iou'")
        if ok:
            return True
    return False


def oracle_answers(
    run_dir: str | os.PathLike[str],
    gt: str,
    roi_ids: np.ndarray | None = None,
    *,
    criterion: Criterion = "cover",
    threshold: float = 0.5,
    gt_binary: bool = False,
    margin: tuple[int, int, int] = (2, 16, 16),
) -> dict[int, bool]:
    """The true answer of every ROI in ``roi_ids`` (default: all) of a run, from the ground-truth volume ``gt``."""
    from pathlib import Path

    from engine.active.rois import read_meta
    from engine.geometry import Box
    from engine.storage import open_volume

    meta = read_meta(run_dir)
    objects_file = Path(run_dir) / "rois" / "objects.npz"
    if not objects_file.exists():
        raise StorageError(f"{objects_file} is missing", "extract the ROIs again with connectile rois --overwrite")
    with np.load(objects_file) as z:
        ids, bbox = z["id"], z["bbox"]
    labels = open_volume(meta["params"]["labels"])
    truth = open_volume(gt)
    if truth.spatial_shape != labels.spatial_shape:
        raise StorageError(f"the ground truth {truth.url} has shape {truth.spatial_shape}, the labels {labels.spatial_shape}",
                           "give the ground truth of the predicted volume")
    rois = np.arange(ids.size) if roi_ids is None else np.asarray(roi_ids, np.int64)
    out: dict[int, bool] = {}
    for r in rois.tolist():
        b = bbox[r]
        box = Box(tuple(b[:3]), tuple(b[3:])).grow(margin).intersect(labels.box)
        out[int(r)] = object_correct(labels.read(box), truth.read(box), int(ids[r]), criterion, threshold, gt_binary)
    return out


def objects_correct(labels: str, table: str | os.PathLike[str], gt: str, *, criterion: Criterion = "cover", threshold: float = 0.5,
                    gt_binary: bool = False, margin: tuple[int, int, int] = (2, 16, 16), min_voxels: int = 0, z_from: int = 0) -> np.ndarray:
    """Whether each object of an object table (rows in table order, objects smaller than
    ``min_voxels`` or not wholly in sections ``z >= z_from`` left out) is correct: the ROI accuracy of a
    prediction is the mean of this."""
    from engine.geometry import Box
    from engine.storage import open_volume
    from engine.storage.object_table import read_object_table

    cols = read_object_table(table)
    lab, truth = open_volume(labels), open_volume(gt)
    if truth.spatial_shape != lab.spatial_shape:
        raise StorageError(f"the ground truth {truth.url} has shape {truth.spatial_shape}, the labels {lab.spatial_shape}",
                           "give the ground truth of the predicted volume")
    keep = np.flatnonzero((cols["voxels"] >= max(1, min_voxels)) & (cols["z0"] >= z_from))
    out = np.zeros(keep.size, bool)
    for j, i in enumerate(keep.tolist()):
        box = Box(tuple(int(cols[c][i]) for c in ("z0", "y0", "x0")), tuple(int(cols[c][i]) for c in ("z1", "y1", "x1")))
        box = box.grow(margin).intersect(lab.box)
        out[j] = object_correct(lab.read(box), truth.read(box), int(cols["id"][i]), criterion, threshold, gt_binary)
    return out


def answer_round(run_dir: str | os.PathLike[str], round_number: int, gt: str, **kwargs: object) -> dict[int, bool]:
    """Answer the queries of a round from ground truth into its answer store (source 'oracle') and
    finish the round. Returns the answers."""
    from engine.active.answers import AnswerStore, answers_path
    from engine.active.query import read_queries
    from engine.active.rois import round_dir

    d = round_dir(run_dir, round_number)
    q = d / "queries.parquet"
    if not q.exists():
        raise StorageError(f"round {round_number} of {run_dir} has no queries ({q})", "run connectile query first")
    ids = read_queries(q)["roi_id"]
    answers = oracle_answers(run_dir, gt, ids, **kwargs)  # type: ignore[arg-type]
    with AnswerStore(answers_path(d)) as store:
        for r, ok in answers.items():
            store.set(r, ok, source="oracle")
        store.finish()
    log.info("round %d: oracle answered %d queries, %d accepted", round_number, len(answers), sum(answers.values()))
    return answers
