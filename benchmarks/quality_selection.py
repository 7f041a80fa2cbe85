#!/usr/bin/env python
"""Does coverage selection help? A model trained on coverage-selected sub-volumes vs random vs k-center.

    .venv/bin/python benchmarks/quality_selection.py --minutes 1 --seeds 0,1,2          # both data sets
    .venv/bin/python benchmarks/quality_selection.py --datasets lucchi --minutes 0.2 --seeds 0 --out /tmp/qsel
    .venv/bin/python benchmarks/quality_selection.py --smoke --out /tmp/qsel-smoke     # seconds: checks that the script runs

For every data set and seed:

1. **Embedding** (Connectile's own code): ``engine.learn.simsiam.train_simsiam`` trains a small patch
   encoder (the encoder half of the residual U-Net, filters 8-16-32, projector/predictor 64-32-32)
   with SimSiam for ``--simsiam-steps`` steps on patches of the training region only; then
   ``engine.ops.embed.embed_volume`` (serial backend) embeds every patch of the patch grid of the
   training region.
2. **Selection** (``engine.select.run.select``, k = 30, exact kNN): the same budget of
   non-overlapping sub-volumes (windows of adjacent patches) by coverage (greedy), random and k-center
   greedy (core-set); the seed drives SimSiam, random and k-center's first pick.
3. **Training**: for each method, the same supervised trainer as ``quality_semi.py``'s ``supervised``
   run (the semi-supervised trainer with every mixing weight 0) on the chosen boxes only, for the same
   wall-clock time (``--minutes``); the three methods of a seed run one after the other.
4. **Evaluation** on the held-out part, as in ``quality_semi.py``.

Data sets (from ``../shared/data``; nothing is copied into the repository):

* ``flyem``: FlyEM medulla sample 2 (250^3, 10 nm), dense neurons. Training region z < 190; patches
  24 x 32 x 32 every 12 x 16 x 16 voxels (14^3 = 2,744 patches), windows of 1 x 5 x 5 patches = sub-volumes
  of 24 x 96 x 96 voxels, budget 3 (the labelled volume of ``quality_semi.py``). A 3D affinity U-Net;
  watershed + mean agglomeration at 0.5; VOI (split + merge, bits) and adapted Rand error on the central
  50 x 192 x 192 voxels of z >= 200; also at the best of a few thresholds (``THRESHOLDS``, chosen on the
  test volume: an oracle, the same for every method).
* ``lucchi``: Lucchi++ training half, 2x downsampled in-plane (125 x 384 x 512 training slices), mitochondria.
  Patches 5 x 64 x 64 every 5 x 32 x 32 (25 x 11 x 15 = 4,125 patches), windows of 1 x 4 x 4 patches =
  sub-volumes of 5 x 160 x 160, budget 4. A 2D mask U-Net; IoU at 0.5 on slices z >= 125 (every 2nd).

Output: one JSON line per run on stdout; ``results.json`` and ``summary.json`` in ``--out``. Torch uses
``--threads`` threads (1 by default: the machine is shared).
"""

from __future__ import annotations

import argparse
import json
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

import quality_semi as qs  # noqa: E402  (data loading, trainer config, timed training, evaluation)

METHODS = ("coverage", "random", "kcenter")

#: patch, stride, window (patches), budget, encoder settings, train_z
SETTINGS: dict[str, dict[str, Any]] = {
    "flyem": {"patch": (24, 32, 32), "stride": (12, 16, 16), "window": (1, 5, 5), "budget": 3, "train_z": 190,
              "model": {"filters": [8, 16, 32], "anisotropic_stages": 0, "norm": "batch"}},
    "lucchi": {"patch": (5, 64, 64), "stride": (5, 32, 32), "window": (1, 4, 4), "budget": 4, "train_z": 125,
               "model": {"filters": [8, 16, 32], "anisotropic_stages": 3, "norm": "batch"}},
}


#: --smoke: the part of the training region that is embedded and selected from (FlyEM 5 x 7 x 7 patches,
#: Lucchi++ 4 x 5 x 5 patches)
SMOKE_REGION = {"flyem": np.s_[:72, :128, :128], "lucchi": np.s_[:20, :192, :192]}


def embed_and_select(name: str, raw_url: str, seed: int, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """SimSiam on the training region, blockwise embedding, then the three selections."""
    from engine.learn.simsiam import SimSiamConfig, train_simsiam
    from engine.models.config import ModelConfig
    from engine.ops.embed import embed_volume
    from engine.select.embeddings import load_embeddings
    from engine.select.run import SelectConfig, select

    s = SETTINGS[name]
    work = tmp / f"{name}-sel-{seed}"
    t0 = time.perf_counter()
    cfg = SimSiamConfig(volume=raw_url, out=str(work / "simsiam"), patch=s["patch"], steps=args.simsiam_steps, batch=8, seed=seed,
                        threads=args.threads, checkpoint_every=args.simsiam_steps, projector_hidden=64, projector_out=32, predictor_hidden=32,
                        model=ModelConfig(**s["model"]))
    sim = train_simsiam(cfg, progress=False)
    t1 = time.perf_counter()
    embed_volume(raw_url, str(work / "emb.zarr"), sim["encoder"], patch=s["patch"], stride=s["stride"], backend="serial", progress=False, threads=args.threads)
    t2 = time.perf_counter()
    grid, emb, _ = load_embeddings(work / "emb.zarr")
    sels, _ = select(grid, emb, SelectConfig(budget=s["budget"], k=args.k, window=s["window"], methods=list(METHODS), seed=seed, knn="exact"))
    t3 = time.perf_counter()
    return {
        "selections": {sel.method: sel for sel in sels},
        "info": {"simsiam_steps": sim["steps"], "simsiam_s": round(t1 - t0, 1), "simsiam_loss": [round(sim["first_loss"], 3), round(sim["last_loss"], 3)],
                 "embed_s": round(t2 - t1, 1), "select_s": round(t3 - t2, 1), "patches": grid.size, "grid": list(grid.shape)},
    }


#: FlyEM: seed thresholds of the watershed (and agglomeration thresholds) scored besides 0.5 -- a
#: briefly trained affinity model often predicts every affinity above 0.5 (one merged segment).
THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)


def evaluate(name: str, model: Any, data: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """Lucchi++: IoU at 0.5 (``quality_semi.evaluate``). FlyEM: VOI and adapted Rand at 0.5, and at the
    best of ``THRESHOLDS`` on the test volume itself (an oracle choice, the same for every method)."""
    if name == "lucchi":
        return qs.evaluate(name, model, data, cfg)
    from engine.learn.validate import predict_volume
    from engine.metrics import adapted_rand, voi

    prob = predict_volume(model, data["test_raw"], window=data["window"], overlap=0.25)
    scores = {}
    for t in THRESHOLDS:
        seg = qs.segment(prob, t)
        split, merge = voi(seg, data["test_gt"])
        scores[t] = {"voi_split": round(split, 4), "voi_merge": round(merge, 4), "voi": round(split + merge, 4), "arand": round(float(adapted_rand(seg, data["test_gt"]).error), 4)}
    best = min(THRESHOLDS, key=lambda t: scores[t]["voi"])
    return {**scores[0.5], "best_threshold": best, "best_voi": scores[best]["voi"], "best_arand": scores[best]["arand"],
            "by_threshold": {str(t): v for t, v in scores.items()}}


def run_dataset(name: str, args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    from engine.storage import open_volume

    data = qs.setup(name, tmp, args)  # volumes on disk, base trainer config, test arrays
    if args.smoke:
        data = qs.smoke_cut(name, data)
    s = SETTINGS[name]
    # the training region only, as its own volume: patches and windows never reach the test part
    full = open_volume(data["cfg"]["data"]["raw"])
    region = np.asarray(full.read(full.box))[: s["train_z"]]
    if args.smoke:  # a corner that still holds the budget's non-overlapping windows: embedding in seconds
        region = region[SMOKE_REGION[name]]
    raw_url = qs.write(str(tmp / f"{name}-train.zarr" / "raw"), region)
    labels = open_volume(data["cfg"]["data"]["labels"])
    rows = []
    for seed in args.seeds:
        chosen = embed_and_select(name, raw_url, seed, tmp, args)
        for method in METHODS:
            sel = chosen["selections"][method]
            boxes = [b.to_dict() for b in sel.boxes]
            bpath = tmp / f"{name}-{method}-{seed}-boxes.json"
            bpath.write_text(json.dumps(boxes))
            base = json.loads(json.dumps(data["cfg"]))
            base["data"]["boxes"] = str(bpath)
            cfg = qs.make_cfg(base, "supervised", seed, tmp / f"{name}-{method}-{seed}", args)
            t0 = time.perf_counter()
            model, fit = qs.timed_fit(cfg, args.minutes * 60.0, qs.make_clock("wall"))
            train_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            score = evaluate(name, model, data, cfg)
            row = {"dataset": name, "method": method, "seed": seed, "boxes": boxes, "coverage": sel.coverage[-1], "patches": sel.total,
                   "train_s": round(train_s, 1), "eval_s": round(time.perf_counter() - t1, 1), **fit, **score, **chosen["info"]}
            if name == "lucchi":  # how much mitochondria the chosen boxes hold
                row["foreground_fraction"] = round(float(np.mean([np.mean(labels.read(b) > 0) for b in sel.boxes])), 4)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in rows:
        metrics = [k for k in ("iou", "voi", "voi_split", "voi_merge", "arand", "best_voi", "best_arand", "coverage", "steps", "foreground_fraction") if k in r]
        d = out.setdefault(r["dataset"], {}).setdefault(r["method"], {m: [] for m in metrics})
        for m in metrics:
            d[m].append(r[m])
    for ds in out.values():
        for method, d in ds.items():
            ds[method] = {m: {"mean": round(float(np.mean(v)), 4), "std": round(float(np.std(v)), 4), "values": v} for m, v in d.items()}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="flyem,lucchi")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (at least 3 for the report)")
    p.add_argument("--minutes", type=float, default=1.0, help="training time of each method per data set and seed")
    p.add_argument("--simsiam-steps", type=int, default=150)
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/quality_selection")
    p.add_argument("--smoke", action="store_true", help="seconds: seed 0, 2 SimSiam steps, embedding and selection on a corner of the training region, 0.6 s of training per method, a corner of each test volume")
    args = p.parse_args()
    if args.smoke:
        args.seeds, args.minutes, args.simsiam_steps = "0", 0.01, 2
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.flyem_boxes, args.simclr = 3, False  # what quality_semi.setup / make_cfg read
    import torch

    torch.set_num_threads(args.threads)
    if not qs.DATA.is_dir():
        print(f"the real data sets are not at {qs.DATA}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="quality_selection_") as tmp:
        for name in args.datasets.split(","):
            rows += run_dataset(name, args, Path(tmp))
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    summary = summarise(rows)
    (out / "summary.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "summary": summary}, indent=1))
    for ds, methods in summary.items():
        for method, d in methods.items():
            print(ds, method, {m: f"{v['mean']:.4f} +- {v['std']:.4f}" for m, v in d.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
