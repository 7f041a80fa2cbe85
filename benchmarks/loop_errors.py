#!/usr/bin/env python
"""What a review round can fix: the errors of each round's segmentation in a run's test region, split
into object-level errors (what a True/False answer on an object addresses) and boundary errors (what
it cannot).

    .venv/bin/python benchmarks/loop_errors.py RUN [RUN ...]        # a connectile demo / run folder each
    .venv/bin/python benchmarks/loop_errors.py --smoke               # seconds: a constructed case

For every round ``r`` with a ``label[r]`` output, in the test region (``z >= test_from_z``), against the
ground truth of ``score[r]`` (binary: foreground > 0):

* false-object voxels: predicted objects (the label stage's, ``min_size`` applied) that touch no true
  foreground: a reviewer's False answer removes them;
* missed-object voxels: true objects (6-connected) that no predicted object touches: the queries never
  show them (queries are drawn from predicted objects);
* boundary voxels: the other false positives and false negatives within ``--band`` voxels (in-plane
  and across sections, Euclidean) of the true boundary: a True/False answer leaves them as they are;
* other: the rest (false positives or negatives far from any true boundary inside touched objects).

Prints one JSON line per run and round, with the IoU of the segmentation (labels > 0).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def breakdown(seg: np.ndarray, truth: np.ndarray, band: float) -> dict[str, Any]:
    """The error voxels of the segmentation ``seg`` (object ids, 0 background) against the boolean
    ``truth``, split as the module docstring says."""
    import cc3d
    from scipy import ndimage as ndi

    pred = seg > 0
    fp, fn = pred & ~truth, ~pred & truth
    ids = np.unique(seg[pred])
    touched = np.unique(seg[pred & truth])
    false_ids = np.setdiff1d(ids, touched)
    false_obj = np.isin(seg, false_ids) & pred
    gt_lab = cc3d.connected_components(truth, connectivity=6)
    gt_ids = np.unique(gt_lab[truth])
    missed_ids = np.setdiff1d(gt_ids, np.unique(gt_lab[truth & pred]))
    missed_obj = np.isin(gt_lab, missed_ids) & truth
    # the band around the true boundary: inside voxels within `band` of the background, outside voxels within `band` of the truth
    near = np.zeros_like(truth)
    if truth.any():
        near = np.where(truth, ndi.distance_transform_edt(truth) <= band, ndi.distance_transform_edt(~truth) <= band)
    boundary = ((fp & ~false_obj) | (fn & ~missed_obj)) & near
    tp = int((pred & truth).sum())
    return {
        "iou": tp / max(1, int((pred | truth).sum())), "fp": int(fp.sum()), "fn": int(fn.sum()),
        "objects": len(ids), "false_objects": len(false_ids), "false_object_voxels": int(false_obj.sum()),
        "true_objects": len(gt_ids), "missed_objects": len(missed_ids), "missed_object_voxels": int(missed_obj.sum()),
        "boundary_voxels": int(boundary.sum()), "other_voxels": int((fp | fn).sum() - false_obj.sum() - missed_obj.sum() - boundary.sum()),
    }


def run_rows(run: Path, band: float) -> list[dict[str, Any]]:
    import yaml

    from engine.geometry import Box
    from engine.pipeline.manifest import Manifest
    from engine.storage import open_volume

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    z0 = int(cfg.get("test_from_z") or 0)
    stages = Manifest(run).stages
    rows = []
    for r in range(1, 100):
        label, score = stages.get(f"label[{r}]"), stages.get(f"score[{r}]")
        if label is None or label.get("status") != "done":
            break
        truth_url = cfg["rounds"]["score"]["truth"]
        truth_url = stages[truth_url.split(".")[0]]["outputs"][truth_url.split(".")[1]] if "." in truth_url and not truth_url.startswith("/") else truth_url
        lab = open_volume(label["outputs"]["labels"])
        box = Box((z0, 0, 0), lab.spatial_shape)
        truth = open_volume(truth_url).read(box) > 0
        row = {"run": str(run), "round": r, "test_from_z": z0, "band": band, **breakdown(lab.read(box), truth, band)}
        if score is not None and score.get("status") == "done":
            row["score_iou"] = json.loads(Path(score["outputs"]["metrics"]).read_text()).get("iou")
        rows.append(row)
    return rows


def smoke() -> list[dict[str, Any]]:
    truth = np.zeros((4, 32, 32), bool)
    truth[:, 4:12, 4:12] = True  # found, one voxel too small on one side
    truth[:, 20:24, 20:24] = True  # missed
    seg = np.zeros(truth.shape, np.uint32)
    seg[:, 4:12, 4:11] = 1
    seg[:, 26:30, 2:6] = 2  # a false object
    got = breakdown(seg, truth, 2.0)
    assert (got["false_objects"], got["false_object_voxels"]) == (1, 64), got
    assert (got["missed_objects"], got["missed_object_voxels"]) == (1, 64), got
    assert got["boundary_voxels"] == 32 and got["other_voxels"] == 0, got
    return [{"smoke": True, **got}]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", help="run folders")
    ap.add_argument("--band", type=float, default=3.0, help="boundary band, voxels (default 3)")
    ap.add_argument("--smoke", action="store_true", help="a constructed case, checked")
    args = ap.parse_args(argv)
    rows = smoke() if args.smoke else [row for run in args.runs for row in run_rows(Path(run), args.band)]
    for row in rows:
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
