#!/usr/bin/env python
"""Learned affinities and neuron segmentation on FlyEM medulla sample 2 (issue 3 point 5, issue 4 point 4).

    .venv/bin/python benchmarks/quality_flyem.py --minutes 15 --seed 0 --out /tmp/qf
    .venv/bin/python benchmarks/quality_flyem.py --smoke --out /tmp/qf-smoke       # seconds: checks that the script runs

A 3D isotropic affinity U-Net (``engine.models``, trained with ``engine.learn.Trainer``: its crop
sampler, augmentations and affinity targets) is trained on one half of the volume (z < 125) for
``--minutes`` of wall-clock time, then predicted (``engine.learn.validate.predict_volume``, Gaussian-
blended sliding windows) on the other half (z >= 125, 125 x 250 x 250 voxels). The loss is class-
rebalanced BCE: positive (connected) affinities weighted by ``(1 - f) / f`` with ``f`` the share of
positive targets in the training half, so boundary and inside edges weigh the same in total (no Dice;
the plain loss learns "everything connected" in a short budget). After ``--check-minutes`` a check
predicts a small test crop and prints the mean affinity and balanced accuracy, so a run that only
learned "everything connected" shows it early.

Scores on the test half:

* affinity accuracy per offset (z, y, x), thresholded at 0.5, against two ground truths: ``plain``
  (1 where a voxel and its predecessor have the same non-zero body, as in quality_segment.py) and
  ``train`` (the training targets: bodies first eroded by one voxel in-plane where they touch).
  Balanced accuracy, F1 of the boundary class (affinity 0), F1 of the inside class, and the mean
  affinity.
* segmentation: the affinities are stored as uint8 zarr and segmented by ``segment_volume`` (what
  ``connectile segment`` runs: blockwise watershed fragments, blocks of 64^3), agglomerated at
  thresholds 0.1 / 0.2 / 0.3 / 0.5 / 0.7 / 0.9 by the ``threshold`` and ``mean`` rules (the fragment sweep of
  quality_segment.py); VOI split / merge (bits) and adapted Rand error, gt 0 ignored. The same for
  the ``raw_intensity`` baseline of quality_segment.py on the same test half, side by side.

Output: JSON lines on stdout; ``results.json`` and ``quality_flyem.png`` (loss curve; a slice of raw,
predicted affinity, segmentation, ground truth) in ``--out``. Torch uses ``--threads`` (1 by default).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import quality_segment as qseg  # noqa: E402  (benchmarks/quality_segment.py: loading, baseline, sweep)

SPLIT = 125  # train z < SPLIT, test z >= SPLIT
THRESHOLDS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.9)  # agglomeration thresholds (quality_segment.py's and two lower)


def emit(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


def affinity_scores(pred: np.ndarray, truth: np.ndarray, name: str) -> list[dict[str, Any]]:
    rows = []
    for k, axis in enumerate("zyx"):
        p, t = pred[k] >= 0.5, truth[k] >= 0.5
        tp, tn = float((p & t).sum()), float((~p & ~t).sum())
        fp, fn = float((p & ~t).sum()), float((~p & t).sum())
        tpr, tnr = tp / max(tp + fn, 1), tn / max(tn + fp, 1)
        rows.append({"kind": "affinity", "truth": name, "offset": axis, "balanced_accuracy": round((tpr + tnr) / 2, 4),
                     "f1_boundary": round(2 * tn / max(2 * tn + fn + fp, 1), 4), "f1_inside": round(2 * tp / max(2 * tp + fp + fn, 1), 4),
                     "boundary_recall": round(tnr, 4), "inside_recall": round(tpr, 4), "boundary_share": round(float((~t).mean()), 4),
                     "mean_affinity": round(float(pred[k].mean()), 4)})
    return rows


def truth_affinities(gt: np.ndarray, widen: bool) -> np.ndarray:
    from engine.learn.targets import affinity_target

    if not widen:
        return qseg.gt_affinities(gt)
    target, _ = affinity_target(gt, np.ones(gt.shape, bool), [[1, 0, 0], [0, 1, 0], [0, 0, 1]], widen=True)
    return target.astype(np.float32)


def segment_sweep(name: str, affs_f: np.ndarray, gt: np.ndarray, tmp: Path) -> tuple[list[dict[str, Any]], np.ndarray]:
    """segment_volume on uint8 affinities, then the threshold / mean sweep of quality_segment.py.
    Returns the rows and the segmentation of the best mean-agglomeration threshold (for the figure)."""
    from engine.kernels.agglomerate import edge_sums
    from engine.kernels.watershed import as_float, block_contacts
    from engine.metrics import contingency
    from engine.storage import create_volume

    block = (64, 64, 64)
    vol = create_volume(str(tmp / "affs.zarr" / name), affs_f.shape, "uint8", block, overwrite=True)
    vol.write(vol.box, np.round(np.clip(affs_f, 0, 1) * 255).astype(np.uint8))
    affs = as_float(vol.read(vol.box))
    seg0, frag, info = qseg.pipeline_fragments(vol.url, str(tmp / "affs.zarr" / f"{name}_seg"), block, qseg.THRESHOLDS[0])
    graph = edge_sums(*block_contacts(frag, affs))
    table = contingency(frag, gt, ignore_b=(0,))
    n = int(frag.max()) + 1
    rows, best, best_seg = [], np.inf, seg0
    for rule in ("threshold", "mean"):
        for t in THRESHOLDS:
            seg_of = qseg.agglomerate(n, rule, t, graph)
            row = {"kind": "segmentation", "affinities": name, "method": "connectile_blockwise", "agglomeration": rule, "threshold": t, **info, **qseg.table_scores(table, seg_of)}
            if rule == "threshold" and t == qseg.THRESHOLDS[0]:
                row["pipeline_output_matches"] = qseg.same_partition(seg_of[frag], seg0)
            if rule == "mean" and row["voi"] < best:
                best, best_seg = row["voi"], seg_of[frag]
            rows.append(row)
            emit(row)
    return rows, best_seg


def build(args: argparse.Namespace, tmp: Path, raw: np.ndarray, gt: np.ndarray) -> Any:
    from engine.config import parse_config
    from engine.learn import TrainConfig
    from engine.learn.sampler import CropSampler
    from engine.learn.trainer import Trainer

    raw_url, lab_url = qseg_write(f"{tmp}/flyem.zarr/raw", raw), qseg_write(f"{tmp}/flyem.zarr/gt", gt.astype(np.uint64))
    d: dict[str, Any] = {
        "model": {"filters": args.filters, "anisotropic_stages": 0, "head": "affinity", "norm": "group", "input_kernel_xy": 3},
        "target": {"kind": "affinity"},
        "data": {"raw": raw_url, "labels": lab_url, "roi": {"start": [0, 0, 0], "stop": [SPLIT, 250, 250]}},
        "crop": args.crop, "batch_size": args.batch,
        "augment": {"elastic": 0.0, "misalign": 0.0, "missing_section": 0.0},
        "loss": {"bce": 1.0, "dice": 0.0},
        "sampling": {"reject_empty": 0.0, "pos_weight": "none"},
        "optimizer": {"lr": args.lr},
        "seed": args.seed, "output": str(tmp / "run"), "progress": False, "num_threads": args.threads,
        "steps": 10**9, "log_every": 10**6, "checkpoint_every": 10**6,
    }
    sampler = CropSampler(parse_config(TrainConfig, d))
    f = sampler.foreground_fraction()
    pos_weight = (1 - f) / f
    d["sampling"]["pos_weight"] = pos_weight
    cfg = parse_config(TrainConfig, d)
    return Trainer(cfg, sampler=CropSampler(cfg)), f, pos_weight


def qseg_write(url: str, arr: np.ndarray) -> str:
    from engine.geometry import Box
    from engine.storage import create_volume

    chunks = tuple(min(n, c) for n, c in zip(arr.shape, (32, 128, 128), strict=True))
    v = create_volume(url, shape=arr.shape, dtype=arr.dtype, chunks=chunks)
    v.write(Box((0, 0, 0), arr.shape), arr)
    return v.url


def plot(losses: list[float], raw: np.ndarray, pred: np.ndarray, seg: np.ndarray, gt: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = raw.shape[0] // 2
    fig, ax = plt.subplots(1, 5, figsize=(17, 3.4))
    ax[0].plot(losses, lw=0.5, color="#bbb")
    w = max(1, len(losses) // 30)
    if len(losses) >= w:
        ax[0].plot(np.arange(w - 1, len(losses)), np.convolve(losses, np.ones(w) / w, "valid"), color="k")
    ax[0].set_title(f"training loss ({len(losses)} steps)", fontsize=9)
    ax[0].set_xlabel("step")
    rng = np.random.default_rng(0)

    def colour(lab: np.ndarray) -> np.ndarray:
        ids, inv = np.unique(lab, return_inverse=True)
        lut = rng.random((ids.size, 3))
        lut[ids == 0] = 0
        return lut[inv.reshape(lab.shape)]

    for a, img, title in ((ax[1], raw[z], "raw (test half)"), (ax[2], pred[1:].mean(0)[z], "predicted affinity (mean y, x)"),
                          (ax[3], colour(seg[z]), "segmentation (best mean)"), (ax[4], colour(gt[z]), "ground truth")):
        a.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0 if img.ndim == 2 else None, vmax=(255 if a is ax[1] else 1) if img.ndim == 2 else None)
        a.set_title(title, fontsize=9)
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=25.0, help="training wall-clock time")
    p.add_argument("--check-minutes", type=float, default=3.0, help="when to print the early check on a test crop")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--filters", type=lambda s: [int(x) for x in s.split(",")], default=[8, 16, 32])
    p.add_argument("--crop", type=lambda s: [int(x) for x in s.split(",")], default=[24, 64, 64])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/quality_flyem")
    p.add_argument("--smoke", action="store_true", help="seconds: 1.2 s of training (the early check after 0.3 s), scored on a 32 x 128 x 128 corner of the test half (checks that the script runs)")
    args = p.parse_args()
    if args.smoke:
        args.minutes, args.check_minutes = 0.02, 0.005
    import torch

    torch.set_num_threads(args.threads)
    if not qseg.DATA.is_dir():
        print(f"the real data sets are not at {qseg.DATA}", file=sys.stderr)
        return 2
    from engine.learn.validate import predict_volume

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="quality_flyem_") as tmp_s:
        tmp = Path(tmp_s)
        raw, gt = qseg.load_volume("flyem", tmp)
        trainer, f, pos_weight = build(args, tmp, raw, gt)
        test_raw, test_gt = raw[SPLIT:], gt[SPLIT:]
        if args.smoke:
            test_raw, test_gt = test_raw[:32, :128, :128], test_gt[:32, :128, :128]
        head = {"kind": "setup", "train_z": [0, SPLIT], "test_z": [SPLIT, 250], "positive_share": round(f, 4), "pos_weight": round(pos_weight, 4),
                "filters": args.filters, "crop": args.crop, "batch": args.batch, "lr": args.lr, "seed": args.seed, "minutes": args.minutes,
                "threads": args.threads, "load_average": os.getloadavg()}
        emit(head)
        rows.append(head)
        losses: list[float] = []
        budget, checked = args.minutes * 60.0, False
        t0 = time.perf_counter()
        while (el := time.perf_counter() - t0) < budget:
            losses.append(trainer.step(trainer.batch_fn(trainer.step_count, 0))["loss"])
            if len(losses) % 50 == 0:
                emit({"kind": "progress", "step": len(losses), "seconds": round(el, 1), "loss_mean_last50": round(float(np.mean(losses[-50:])), 4)})
            if not checked and el > args.check_minutes * 60:
                checked = True
                crop = (slice(0, 32), slice(0, 96), slice(0, 96))
                pc = predict_volume(trainer.model, test_raw[crop].astype(np.float32) / 255.0, window=[32, 96, 96])
                ba = affinity_scores(pc, qseg.gt_affinities(test_gt[crop]), "plain")
                emit({"kind": "check", "step": len(losses), "seconds": round(el, 1), "mean_affinity": round(float(pc.mean()), 4),
                      "balanced_accuracy": [r["balanced_accuracy"] for r in ba], "f1_boundary": [r["f1_boundary"] for r in ba]})
        train_s = time.perf_counter() - t0
        row = {"kind": "training", "steps": len(losses), "train_s": round(train_s, 1), "loss_first50": round(float(np.mean(losses[:50])), 4),
               "loss_last50": round(float(np.mean(losses[-50:])), 4), "load_average": os.getloadavg()}
        emit(row)
        rows.append(row)
        t1 = time.perf_counter()
        pred = predict_volume(trainer.model, test_raw.astype(np.float32) / 255.0, window=[32, 96, 96], overlap=0.25)
        emit({"kind": "predict", "seconds": round(time.perf_counter() - t1, 1), "shape": list(pred.shape)})
        for name, widen in (("plain", False), ("train", True)):
            for r in affinity_scores(pred, truth_affinities(test_gt, widen), name):
                emit(r)
                rows.append(r)
        seg_rows, seg = segment_sweep("learned", pred, test_gt, tmp)
        rows += seg_rows
        base = qseg.make_affinities("raw_intensity", test_raw, test_gt)
        for r in affinity_scores(base, qseg.gt_affinities(test_gt), "plain"):
            r["affinities"] = "raw_intensity"
            emit(r)
            rows.append(r)
        base_rows, _ = segment_sweep("raw_intensity", base, test_gt, tmp)
        rows += base_rows
        rows.append({"kind": "losses", "values": [round(x, 5) for x in losses]})
        (out / "results.json").write_text(json.dumps(rows, indent=1))
        plot(losses, test_raw, pred, seg, test_gt, out / "quality_flyem.png")
    emit({"kind": "done", "seconds": round(time.perf_counter() - t0, 1), "load_average": os.getloadavg()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
