#!/usr/bin/env python
"""Lucchi++ mitochondria: Connectile's training vs a plain MONAI UNet training loop, at equal time.

    .venv/bin/python benchmarks/quality_lucchi.py --minutes 5            # 5 CPU-minutes of training per side
    .venv/bin/python benchmarks/quality_lucchi.py --minutes 0.5 --evals 1 # a short run
    .venv/bin/python benchmarks/quality_lucchi.py --smoke --work /tmp/ql   # seconds: checks that the script runs
    .venv/bin/python benchmarks/quality_lucchi.py --variant 2d            # Connectile 2D instead of 2.5D

Data: ``../shared/data/lucchi_pp`` (165 x 768 x 1024, FIB-SEM ~5 nm; ``Train_In/mask*.png`` are the
images, ``Train_Out/N.png`` the labels, mitochondria = 255), ingested once with ``engine.ops.ingest``
into a zarr under ``--work`` (default ``/tmp/connectile-lucchi``; never into the repository). Both sides
train on sections 0-119 and are scored on sections 120-164: foreground IoU (Jaccard) and VOC (mean of
foreground and background Jaccard, as Lucchi et al. report), prediction thresholded at 0.5, whole
768 x 1024 sections, computed with ``engine.metrics``.

connectile  ``engine.learn.Trainer``: the residual SE U-Net (``--variant 2.5d``: 2D with one neighbouring
            section on each side as channels; ``2d``; or ``3d``: anisotropic 3D), strided input
            convolution, batch 4 of 256 x 256 crops (3 x 256 x 256 for 2.5D, the loss on the centre
            section), EM augmentation (flips, transposes, rot90, intensity, noise, blur), empty-crop
            rejection (p = 0.5), BCE (foreground weighted by the class ratio, at most 3) + Dice, Adam 1e-3.
monai       the plain loop a user writes: ``monai.networks.nets.UNet`` 2D (channels 16-32-64-128-256,
            strides 2, 2 residual units; a similar parameter count), batch 4 of random 256 x 256 crops
            of the training sections, random flips only, ``BCEWithLogitsLoss + DiceLoss(sigmoid=True)``,
            Adam 1e-3.

Time: the machine is shared with other jobs, so each side's training clock is its process CPU time
(one torch thread each; data sampling and augmentation count, evaluation does not); wall time and
iterations are recorded too. The two sides run at the same time in two child processes (one core
each). Each side is scored at ``--evals`` equally spaced points of its budget. One JSON line per score
on stdout, then the ratio of IoUs at each equal time; ``--plot`` (default
``benchmarks/quality_lucchi.png``) draws IoU and VOC against training time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "lucchi_pp"
TRAIN = (0, 120)
VAL = (120, 165)


def prepare(work: Path) -> tuple[str, str]:
    """Ingest Lucchi++ (images and labels) into ``work/lucchi.zarr`` once; return the two URLs."""
    from engine.ops.ingest import ingest

    raw, mito = work / "lucchi.zarr" / "raw", work / "lucchi.zarr" / "mito"
    for src, dst in ((DATA / "Train_In", raw), (DATA / "Train_Out", mito)):
        if not (dst / ".zarray").exists():
            ingest(src, dst, voxel_size=(5, 5, 5), chunks=(16, 256, 256), backend="serial", progress=False)
    return str(raw), str(mito)


def load(url: str, z: tuple[int, int]) -> np.ndarray:
    from engine.geometry import Box
    from engine.storage import open_volume

    v = open_volume(url)
    return v.read(Box((z[0], 0, 0), (z[1], *v.spatial_shape[1:])))


def score(prob: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    from engine.metrics import jaccard, voc

    pred = prob > 0.5
    return {"iou": jaccard(pred, gt), "voc": voc(pred, gt)}


class Clock:
    """Training time of this process: CPU seconds (and wall seconds) spent inside ``with clock:``."""

    def __init__(self) -> None:
        self.cpu = 0.0
        self.wall = 0.0

    def __enter__(self) -> Clock:
        self._c, self._w = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cpu += time.process_time() - self._c
        self.wall += time.perf_counter() - self._w


# -- the two sides --------------------------------------------------------------------------------------


def connectile_side(args: argparse.Namespace, raw_url: str, mito_url: str, val_raw: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    import torch

    from engine.config import parse_config
    from engine.learn import TrainConfig, Trainer, predict_volume

    model: dict[str, Any] = {"filters": [16, 32, 64, 128, 256], "input_kernel_xy": 3, "input_stride": 2}
    if args.variant == "2.5d":
        model |= {"dims": 2, "context_slices": 1}
        crop = [3, 256, 256]
    elif args.variant == "2d":
        model |= {"dims": 2}
        crop = [1, 256, 256]
    else:
        model |= {"dims": 3, "filters": [16, 32, 48, 64, 96], "anisotropic_stages": 5}
        crop = [8, 128, 128]
    cfg = parse_config(
        TrainConfig,
        {
            "model": model,
            "data": {"raw": raw_url, "labels": mito_url, "roi": {"start": [TRAIN[0], 0, 0], "stop": [TRAIN[1], 768, 1024]}},
            "crop": crop,
            "batch_size": 4,
            "augment": {"intensity": 0.3, "noise": 0.2, "blur": 0.1, "missing_section": 0.0, "misalign": 0.0, "elastic": 0.0},
            "sampling": {"reject_empty": 0.5, "max_pos_weight": 3.0},
            "optimizer": {"lr": args.lr},
            "steps": 10**9,
            "output": str(Path(args.work) / f"connectile-{args.variant}"),
            "seed": args.seed,
            "num_threads": 1,
            "progress": False,
        },
    )
    trainer = Trainer(cfg)
    params = sum(p.numel() for p in trainer.model.parameters())

    def evaluate() -> dict[str, float]:
        prob = predict_volume(trainer.model, (val_raw / 255.0).astype(np.float32), window=crop, device="cpu")
        return score(prob[0], gt)

    return _loop(args, "connectile", params, lambda step: trainer.step(trainer.batch_fn(step, 0))["loss"], evaluate, torch)


def monai_side(args: argparse.Namespace, train_raw: np.ndarray, train_gt: np.ndarray, val_raw: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    import torch
    from monai.losses import DiceLoss
    from monai.networks.nets import UNet

    torch.manual_seed(args.seed)
    net = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    bce, dice = torch.nn.BCEWithLogitsLoss(), DiceLoss(sigmoid=True)
    rng = np.random.default_rng(args.seed)
    x_all = train_raw.astype(np.float32) / 255.0
    y_all = (train_gt > 0).astype(np.float32)
    params = sum(p.numel() for p in net.parameters())

    def step(_: int) -> float:
        xs, ys = [], []
        for _ in range(4):
            z, y, x = int(rng.integers(x_all.shape[0])), int(rng.integers(x_all.shape[1] - 255)), int(rng.integers(x_all.shape[2] - 255))
            a, b = x_all[z, y : y + 256, x : x + 256], y_all[z, y : y + 256, x : x + 256]
            for axis in (0, 1):
                if rng.random() < 0.5:
                    a, b = np.flip(a, axis), np.flip(b, axis)
            xs.append(np.ascontiguousarray(a))
            ys.append(np.ascontiguousarray(b))
        xb, yb = torch.from_numpy(np.stack(xs))[:, None], torch.from_numpy(np.stack(ys))[:, None]
        net.train()
        logits = net(xb)
        loss = bce(logits, yb) + dice(logits, yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        net.eval()
        x = torch.from_numpy((val_raw / 255.0).astype(np.float32))[:, None]
        prob = torch.cat([torch.sigmoid(net(x[i : i + 4])) for i in range(0, x.shape[0], 4)])[:, 0].numpy()
        return score(prob, gt)

    return _loop(args, "monai", params, step, evaluate, torch)


def _loop(args: argparse.Namespace, side: str, params: int, step: Any, evaluate: Any, torch: Any) -> dict[str, Any]:
    torch.set_num_threads(1)
    budget = args.minutes * 60.0
    marks = [budget * (i + 1) / args.evals for i in range(args.evals)]
    clock, it, points, losses = Clock(), 0, [], []
    start = time.perf_counter()
    while marks:
        with clock:
            losses.append(step(it))
        it += 1
        if clock.cpu >= marks[0]:
            marks.pop(0)
            t0 = time.perf_counter()
            s = evaluate()
            point = {"side": side, "variant": args.variant if side == "connectile" else "2d", "cpu_s": round(clock.cpu, 1), "train_wall_s": round(clock.wall, 1),
                     "iters": it, "loss": round(float(np.mean(losses[-20:])), 4), **{k: round(v, 4) for k, v in s.items()}, "eval_s": round(time.perf_counter() - t0, 1)}
            points.append(point)
            print(json.dumps(point), flush=True)
    return {"side": side, "params": params, "points": points, "wall_s": round(time.perf_counter() - start, 1)}


def child(args: argparse.Namespace) -> None:
    raw_url, mito_url = prepare(Path(args.work))
    val = (VAL[0], VAL[0] + 2) if args.smoke else VAL
    val_raw, gt = load(raw_url, val), load(mito_url, val) > 0
    if args.child == "connectile":
        out = connectile_side(args, raw_url, mito_url, val_raw, gt)
    else:
        out = monai_side(args, load(raw_url, TRAIN), load(mito_url, TRAIN), val_raw, gt)
    Path(args.json).write_text(json.dumps(out))


# -- the driver -----------------------------------------------------------------------------------------------


def plot(results: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, res in results.items():
        pts = res["points"]
        label = f"{name} ({res['params'] / 1e6:.2f} M params)"
        for ax, key in zip(axes, ("iou", "voc"), strict=True):
            ax.plot([0] + [p["cpu_s"] / 60 for p in pts], [0] + [p[key] for p in pts], "o-", label=label)
    for ax, key in zip(axes, ("foreground IoU (Jaccard)", "VOC"), strict=True):
        ax.set_xlabel("training time (CPU minutes, 1 thread)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="training budget per side, CPU minutes (default: %(default)s)")
    ap.add_argument("--evals", type=int, default=3, help="scores per side, equally spaced over the budget (default: %(default)s)")
    ap.add_argument("--variant", choices=("2.5d", "2d", "3d"), default="2.5d", help="Connectile's model (default: %(default)s)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/connectile-lucchi", help="scratch folder for the ingested zarr and runs")
    ap.add_argument("--plot", default=str(REPO / "benchmarks" / "quality_lucchi.png"))
    ap.add_argument("--sides", default="connectile,monai")
    ap.add_argument("--smoke", action="store_true", help="seconds: 1.2 CPU-s per side, one score on 2 sections, the plot into --work (checks that the script runs)")
    ap.add_argument("--child", choices=("connectile", "monai"), help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.smoke:
        args.minutes, args.evals = 0.02, 1
        if args.plot == ap.get_default("plot"):
            args.plot = str(Path(args.work) / "quality_lucchi_smoke.png")
    if args.child:
        child(args)
        return
    if not DATA.is_dir():
        sys.exit(f"quality_lucchi: {DATA} is absent; the Lucchi++ data set is needed")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    prepare(work)
    sys.path.insert(0, str(REPO))
    from engine.bench.harness import machine_info

    print(json.dumps({"ingest_s": round(time.perf_counter() - t0, 1), "machine": machine_info(), "load_1min": os.getloadavg()[0]}), flush=True)
    procs = {}
    for side in args.sides.split(","):
        cmd = [sys.executable, __file__, "--child", side, "--json", str(work / f"{side}.json"), "--minutes", str(args.minutes), "--evals", str(args.evals),
               "--variant", args.variant, "--lr", str(args.lr), "--seed", str(args.seed), "--work", str(work), *(["--smoke"] if args.smoke else [])]
        procs[side] = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    for side, p in procs.items():
        if p.wait() != 0:
            sys.exit(f"quality_lucchi: the {side} side failed (exit {p.returncode})")
    results = {side: json.loads((work / f"{side}.json").read_text()) for side in procs}
    if "connectile" in results and "monai" in results:
        for a, b in zip(results["connectile"]["points"], results["monai"]["points"], strict=True):
            print(json.dumps({"cpu_min": round(a["cpu_s"] / 60, 2), "iou_connectile": a["iou"], "iou_monai": b["iou"], "ratio_iou": round(a["iou"] / max(b["iou"], 1e-9), 3),
                              "voc_connectile": a["voc"], "voc_monai": b["voc"], "iters_connectile": a["iters"], "iters_monai": b["iters"]}))
    for side, res in results.items():
        print(json.dumps({"side": side, "params": res["params"], "wall_s": res["wall_s"], "load_1min_end": os.getloadavg()[0]}))
    plot(results, Path(args.plot), f"Lucchi++ mitochondria, sections 120-164 (connectile {args.variant} vs MONAI UNet 2D)")


if __name__ == "__main__":
    main()
