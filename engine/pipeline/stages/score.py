"""``score[r]`` (``rounds.score``): how good a round's prediction is, against ground truth.

- voxel IoU (Jaccard) and Dice of ``probability > threshold`` against the ground truth's foreground
  (``target`` as in ``annotate``: ``truth != 0``, or the objects' interiors), exact, slab by slab;
- VOI (split, merge; bits) of the round's objects against the ground-truth objects, over the voxels
  the prediction labels (over the whole volume up to ``voi_max_voxels``, else over a centred
  sub-volume of that size), and the adapted Rand error (``arand``, SNEMI3D's) over the same voxels;
- ROI accuracy: the share of predicted objects that are correct by the oracle's rule
  (:func:`engine.active.oracle.objects_correct`), and the object counts.

Writes ``RUN/round-NN/score/metrics.json``; the ``metrics`` stage puts the rounds side by side.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
from pydantic import Field

from engine.config import Config
from engine.pipeline.stage import StageContext
from engine.pipeline.stages._base import DeclaredStage


class ScoreSection(Config):
    """``rounds.score:`` -- ``truth`` (instance ground truth; binary with ``truth_binary``: its connected
    components are the objects); ``probability``, ``labels``, ``table`` are wired (the round's prediction)."""

    truth: str
    probability: str | None = None
    labels: str | None = None
    table: str | None = None
    truth_binary: bool = False
    target: Literal["mask", "interior"] = "mask"
    boundary: int = Field(default=1, ge=1, description="interior: as annotate.boundary")
    threshold: float = 0.5
    criterion: Literal["cover", "iou"] = "cover"
    voi_max_voxels: int = Field(default=1 << 25, ge=1)


def region_iou(prob: Any, truth: Any, target: Any, boundary: int, threshold: float, z_from: int) -> dict[str, Any]:
    """Voxel IoU and Dice of ``probability > threshold`` (volume ``prob``) against the truth's foreground
    (volume ``truth``) over sections ``z >= z_from``, read one chunk of sections at a time."""
    from engine.geometry import Box
    from engine.kernels.components import foreground
    from engine.pipeline.stages.annotate import read_foreground

    full = truth.spatial_shape
    inter = union = p_sum = t_sum = 0
    depth = max(1, prob.chunk_shape[0])
    for z in range(z_from, full[0], depth):
        box = Box((z, 0, 0), (min(z + depth, full[0]), *full[1:]))
        p = foreground(prob.read(box), threshold)
        t = read_foreground(truth, box, target, boundary)
        inter += int((p & t).sum())
        union += int((p | t).sum())
        p_sum += int(p.sum())
        t_sum += int(t.sum())
    return {"iou": inter / union if union else 1.0, "dice": 2 * inter / (p_sum + t_sum) if p_sum + t_sum else 1.0,
            "predicted_voxels": p_sum, "truth_voxels": t_sum}


def score_round(prob_url: str, labels_url: str, table: str, truth_url: str, cfg: ScoreSection, z_from: int = 0) -> dict[str, Any]:
    """The metrics of the module docstring, over sections ``z >= z_from`` (the run's test region; objects
    counted for the ROI accuracy when they lie wholly there)."""
    import cc3d

    from engine.active.oracle import objects_correct
    from engine.geometry import Box
    from engine.metrics.segmentation import adapted_rand, voi
    from engine.storage import open_volume

    prob, lab, truth = open_volume(prob_url), open_volume(labels_url), open_volume(truth_url)
    full = truth.spatial_shape
    if not 0 <= z_from < full[0]:
        from engine.errors import ConfigError

        raise ConfigError(f"test_from_z {z_from} is outside the volume's {full[0]} sections", "give a section inside the volume")
    shape = (full[0] - z_from, *full[1:])  # the scored region, from z_from
    out = region_iou(prob, truth, cfg.target, cfg.boundary, cfg.threshold, z_from)
    # VOI over a centred sub-volume of at most voi_max_voxels
    sub = list(shape)
    while int(np.prod(sub)) > cfg.voi_max_voxels:
        ax = int(np.argmax(sub))
        sub[ax] = max(1, sub[ax] // 2)
    start = tuple(o + (s - c) // 2 for o, s, c in zip((z_from, 0, 0), shape, sub, strict=True))
    vbox = Box(start, tuple(a + c for a, c in zip(start, sub, strict=True)))
    seg = lab.read(vbox)
    gt = truth.read(vbox)
    if cfg.truth_binary:
        gt = cc3d.connected_components(gt != 0, connectivity=26)
    split, merge = voi(seg, gt, ignore_seg=(0,))
    out.update(voi_split=split, voi_merge=merge, voi=split + merge, arand=adapted_rand(seg[seg != 0], gt[seg != 0]).error,
               voi_box={"start": list(vbox.start), "stop": list(vbox.stop)})
    gt_objects = int(np.unique(gt[gt != 0]).size)
    correct = objects_correct(labels_url, table, truth_url, criterion=cfg.criterion, gt_binary=cfg.truth_binary, z_from=z_from)
    out.update(objects=int(correct.size), objects_correct=int(correct.sum()), roi_accuracy=float(correct.mean()) if correct.size else None,
               truth_objects_in_voi_box=gt_objects)
    return out


class ScoreStage(DeclaredStage, kind="score", config=ScoreSection, order=120,
                 inputs=("probability", "labels", "table", "truth"), outputs=("metrics",)):
    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        m = score_round(ctx.input(cfg.probability), ctx.input(cfg.labels), ctx.input(cfg.table), ctx.input(cfg.truth), cfg, ctx.test_from_z or 0)
        m["round"] = ctx.round
        m["scored_from_z"] = ctx.test_from_z or 0
        path = ctx.dir / "metrics.json"
        path.write_text(json.dumps(m, indent=1))
        return {"metrics": str(path)}

