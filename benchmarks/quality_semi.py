#!/usr/bin/env python
"""Label-efficient training on real EM: supervised only vs spatial mixing vs contrastive pretraining.

    .venv/bin/python benchmarks/quality_semi.py --minutes 1 --seeds 0,1,2          # both data sets
    .venv/bin/python benchmarks/quality_semi.py --datasets lucchi --minutes 4 --out /tmp/qs
    .venv/bin/python benchmarks/quality_semi.py --merge /tmp/qs /tmp/qs2 --out DIR  # summary + plot of several runs
    .venv/bin/python benchmarks/quality_semi.py --smoke --out /tmp/qs-smoke          # seconds: checks that the script runs

Same labels and the same training time for the three methods (per data set and seed). The time is
``--clock cpu`` by default: the CPU time of this process (``time.process_time()``; torch runs
``--threads`` threads, 1 by default, so it is the compute the method got), which keeps the budget equal
when other jobs share the machine and the wall-clock time a minute buys varies; ``--clock wall`` measures
wall-clock time instead. Every row records both, the steps made and the load average before and after.

* ``supervised``: the supervised loss on the labelled crops only (the semi-supervised trainer with every
  mixing weight 0, so the loss is exactly the one the other two start from).
* ``mixing``: spatial mixing in a Siamese network (Zhang, Zhai et al. 2024): supervised warm-up for
  ``--warmup`` of the steps the supervised run made, then labelled/labelled, unlabelled/unlabelled and
  labelled/unlabelled mixing (weights 1, 0.2, 0.2) until the time is up. It makes fewer steps than
  ``supervised`` in the same time (about 6 forward passes per step instead of 1).
* ``contrastive``: supervised local contrastive pretraining (Hu et al. 2021; stride and 3D tiles) for
  ``--pretrain`` of the time, then supervised fine-tuning for the rest (``--simclr`` adds the global
  SimCLR stage inside the pretraining time).

Data sets (from ``../shared/data``; nothing is copied into the repository):

* ``flyem``: FlyEM medulla sample 2 (250^3, 10 nm isotropic), dense neuron labels. Training region
  z < 190; ``--flyem-boxes`` labelled sub-volumes of 24 x 96 x 96 voxels at fixed places in it (the same
  for every method and seed); every other voxel of the region is unlabelled. Test: z >= 200. A 3D
  isotropic affinity U-Net trained with class-rebalanced BCE (no Dice; positive = connected affinities
  weighted by ``(1 - f) / f``, ``f`` their share in the labelled boxes, as in quality_flyem.py: the plain
  loss learns "everything connected" in a CPU budget) and no elastic / misalignment / missing-section
  augmentation; scores after watershed fragments + mean agglomeration at 0.5: VOI split + merge (bits)
  and adapted Rand error, gt 0 ignored, on the central 50 x 192 x 192 voxels of z >= 200; also the mean
  predicted affinity and the balanced accuracy of the affinities (mean over z, y, x) there, which show
  whether a model left the "everything connected" regime.
* ``lucchi``: Lucchi++ training half (165 x 768 x 1024, ~5 nm), mitochondria, downsampled 2x in-plane
  (mean of 2x2 pixels; labels by majority) to fit this CPU. Training slices z < 125, of which 5% (6
  slices, evenly spaced) are labelled; test slices z >= 125 (every 2nd). A 2D mask U-Net; IoU at 0.5.

Output: one JSON line per run on stdout, ``results.json``, ``summary.json`` and ``quality_semi.png`` in
``--out``. Torch uses ``--threads`` threads (1 by default; the machine is shared).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"
METHODS = ("supervised", "mixing", "contrastive")


# -- data ------------------------------------------------------------------------------------------------


def load_flyem(tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    import h5py
    from PIL import Image

    d = DATA / "flyem_medulla_sample2"
    files = sorted(glob.glob(str(d / "grayscale_maps" / "iso.*.png")))
    raw = np.stack([np.asarray(Image.open(f).convert("L")) for f in files])
    h5 = tmp / "flyem_gt.h5"
    with gzip.open(d / "groundtruth.h5.gz") as src, open(h5, "wb") as dst:
        shutil.copyfileobj(src, dst)
    with h5py.File(h5) as f:
        stack, tr = f["stack"][:], f["transforms"][:]
    lut = np.zeros(int(max(stack.max(), tr[:, 0].max())) + 1, np.uint64)
    lut[tr[:, 0]] = tr[:, 1]
    return raw, lut[stack]


def load_lucchi(downsample: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Lucchi++'s training stack (165 sections) and its mitochondria (255), 2x downsampled in-plane unless not ``downsample``."""
    from PIL import Image

    d = DATA / "lucchi_pp"

    def numeric(p: str) -> int:
        return int(re.findall(r"\d+", Path(p).stem)[-1])

    imgs = sorted(glob.glob(str(d / "Train_In" / "*.png")), key=numeric)
    labs = sorted(glob.glob(str(d / "Train_Out" / "*.png")), key=numeric)
    raw = np.stack([np.asarray(Image.open(f).convert("L")) for f in imgs]).astype(np.float32)
    lab = np.stack([np.asarray(Image.open(f).convert("L")) > 127 for f in labs])
    if not downsample:
        return raw.astype(np.uint8), (lab * 255).astype(np.uint8)
    raw, lab = half_in_plane(raw, lab)
    return np.round(raw).astype(np.uint8), (lab * 255).astype(np.uint8)


def half_in_plane(raw: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``raw`` (float) and the mask ``lab`` 2x downsampled in y and x: the mean, and the majority."""
    z, h, w = raw.shape

    def pool(a: np.ndarray) -> np.ndarray:
        return a[:, : h // 2 * 2, : w // 2 * 2].reshape(z, h // 2, 2, w // 2, 2).mean(axis=(2, 4))

    return pool(raw), pool(lab) >= 0.5


def load_cardona(downsample: bool = True, repeat: int = 5, like: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cardona_vnc stack 1 (ssTEM, 20 sections of 1024 x 1024 at 4.6 nm, about 50 nm apart) and its mitochondria
    (``stack1/mitochondria``, anti-aliased: > 127), 2x downsampled in-plane unless not ``downsample`` (9.2 nm: the
    half-resolution Lucchi++ grid's 10 nm). Each section ``repeat`` times along z: a 2.5D model reads neighbours 5 nm
    apart on Lucchi++ (nearly the same image), 50 nm apart here. ``like``: (mean, std) the raw is mapped linearly to
    (another volume's, which needs none of its labels)."""
    from PIL import Image

    d = DATA / "cardona_vnc" / "stack1"
    imgs, labs = sorted(glob.glob(str(d / "raw" / "*.tif"))), sorted(glob.glob(str(d / "mitochondria" / "*.png")))
    if len(imgs) != len(labs) or not imgs:
        raise SystemExit(f"cardona_vnc: {len(imgs)} raw sections and {len(labs)} mitochondria masks in {d}; expected 20 of each")
    raw = np.stack([np.asarray(Image.open(f).convert("L")) for f in imgs]).astype(np.float32)
    lab = np.stack([np.asarray(Image.open(f).convert("L")) > 127 for f in labs])
    if downsample:
        raw, lab = half_in_plane(raw, lab)
    if like is not None:
        raw = (raw - raw.mean()) / raw.std() * like[1] + like[0]
    raw, lab = np.repeat(raw, repeat, axis=0), np.repeat(lab, repeat, axis=0)
    return np.clip(np.round(raw), 0, 255).astype(np.uint8), (lab * 255).astype(np.uint8)


def write(url: str, arr: np.ndarray) -> str:
    from engine.geometry import Box
    from engine.storage import create_volume

    chunks = tuple(min(n, c) for n, c in zip(arr.shape, (16, 128, 128), strict=True))
    v = create_volume(url, shape=arr.shape, dtype=arr.dtype, chunks=chunks)
    v.write(Box((0, 0, 0), arr.shape), arr)
    return v.url


def setup(name: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Volumes on disk, the base config (a dict) and the test arrays of a data set."""
    if name == "flyem":
        raw, gt = load_flyem(tmp)
        train_z, test_z = 190, 200
        raw_url, lab_url = write(f"{tmp}/flyem.zarr/raw", raw), write(f"{tmp}/flyem.zarr/gt", gt.astype(np.uint64))
        rng = np.random.default_rng(1234)  # the labelled boxes: the same for every method and seed
        boxes: list[dict[str, list[int]]] = []
        while len(boxes) < args.flyem_boxes:
            s = [int(rng.integers(0, train_z - 24)), int(rng.integers(0, 250 - 96)), int(rng.integers(0, 250 - 96))]
            b = {"start": s, "stop": [s[0] + 24, s[1] + 96, s[2] + 96]}
            if all(any(b["stop"][a] <= o["start"][a] or o["stop"][a] <= b["start"][a] for a in range(3)) for o in boxes):
                boxes.append(b)
        (tmp / "flyem_boxes.json").write_text(json.dumps(boxes))
        cfg = {
            "model": {"filters": [8, 16, 32], "anisotropic_stages": 0, "head": "affinity", "norm": "group", "input_kernel_xy": 3},
            "target": {"kind": "affinity"},
            "data": {"raw": raw_url, "labels": lab_url, "boxes": str(tmp / "flyem_boxes.json"), "roi": {"start": [0, 0, 0], "stop": [train_z, 250, 250]}, "unlabelled": [{"raw": raw_url, "roi": {"start": [0, 0, 0], "stop": [train_z, 250, 250]}}]},
            "crop": [16, 64, 64],
            "batch_size": 2,
            "augment": {"elastic": 0.0, "misalign": 0.0, "missing_section": 0.0},
            "loss": {"bce": 1.0, "dice": 0.0},
            "sampling": {"reject_empty": 0.0, "pos_weight": "none"},
            "semi": {"box": [36, 36]},
            "contrastive": {"labels": "instances", "stride": [2, 4, 4], "block": [8, 32, 32], "temperature": 0.1},
        }
        f = positive_share(cfg)
        cfg["sampling"]["pos_weight"] = (1 - f) / f  # class-rebalanced BCE (quality_flyem.py)
        labelled = int(sum(np.prod(np.subtract(b["stop"], b["start"])) for b in boxes))
        test = (slice(test_z, 250), slice(29, 221), slice(29, 221))  # 50 x 192 x 192, to keep the scoring cheap
        return {"cfg": cfg, "test_raw": raw[test].astype(np.float32) / 255.0, "test_gt": gt[test], "window": [32, 96, 96], "labelled_voxels": labelled, "train_voxels": train_z * 250 * 250, "positive_share": f}
    raw, lab = load_lucchi()
    train_z, test_z = 125, 125
    raw_url, lab_url = write(f"{tmp}/lucchi.zarr/raw", raw), write(f"{tmp}/lucchi.zarr/mito", lab)
    n_lab = max(1, round(0.05 * train_z))
    zs = [round((i + 0.5) * train_z / n_lab) for i in range(n_lab)]
    boxes = [{"start": [z, 0, 0], "stop": [z + 1, raw.shape[1], raw.shape[2]]} for z in zs]
    (tmp / "lucchi_boxes.json").write_text(json.dumps(boxes))
    cfg = {
        "model": {"dims": 2, "filters": [8, 16, 32, 48], "norm": "group"},
        "data": {"raw": raw_url, "labels": lab_url, "boxes": str(tmp / "lucchi_boxes.json"), "roi": {"start": [0, 0, 0], "stop": [train_z, *raw.shape[1:]]}, "unlabelled": [{"raw": raw_url, "roi": {"start": [0, 0, 0], "stop": [train_z, *raw.shape[1:]]}}]},
        "crop": [1, 128, 128],
        "batch_size": 4,
        "augment": {"misalign": 0.0, "missing_section": 0.0},
        "semi": {"box": [72, 72]},
        "contrastive": {"labels": "target", "stride": [1, 4, 4], "block": [1, 32, 32], "temperature": 0.1},
    }
    return {"cfg": cfg, "test_raw": raw[test_z::2].astype(np.float32) / 255.0, "test_gt": lab[test_z::2] > 0, "window": None, "labelled_slices": zs, "train_slices": train_z}


def smoke_cut(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """``--smoke``: a corner of the test volume (FlyEM 16 x 64 x 64 with windows of that size, Lucchi++ 2
    slices of 128 x 128), so that scoring takes a second; everything else is the real run's."""
    if name == "flyem":
        data["test_raw"], data["test_gt"], data["window"] = data["test_raw"][:16, :64, :64], data["test_gt"][:16, :64, :64], [16, 64, 64]
    else:
        data["test_raw"], data["test_gt"] = data["test_raw"][:2, :128, :128], data["test_gt"][:2, :128, :128]
    return data


def positive_share(base: dict[str, Any]) -> float:
    """The share of positive (connected) affinity targets among the labelled voxels of the boxes."""
    from engine.config import parse_config
    from engine.learn import TrainConfig
    from engine.learn.sampler import CropSampler

    d = json.loads(json.dumps(base))
    d.pop("semi")
    d.pop("contrastive")
    d.update({"output": tempfile.mkdtemp(prefix="quality_semi_f_"), "steps": 1})
    return float(CropSampler(parse_config(TrainConfig, d)).foreground_fraction())


# -- training under a time budget -------------------------------------------------------------------------


def make_clock(kind: str) -> Callable[[], float]:
    """``cpu``: this process's CPU time (all its threads); ``wall``: wall-clock time."""
    return time.process_time if kind == "cpu" else time.perf_counter


def make_cfg(base: dict[str, Any], method: str, seed: int, out: Path, args: argparse.Namespace, warmup: int = 0) -> Any:
    from engine.config import parse_config
    from engine.learn import TrainConfig

    d = json.loads(json.dumps(base))
    d.update({"seed": seed, "output": str(out), "progress": False, "num_threads": args.threads, "steps": 10**9, "log_every": 10**6, "checkpoint_every": 10**6})
    d["optimizer"] = {"lr": args.lr}
    semi = d.pop("semi")
    contrastive = d.pop("contrastive")
    if method == "mixing":
        d["semi"] = {**semi, "warmup_steps": warmup}
    else:
        d["semi"] = {**semi, "labelled_mix": 0.0, "unlabelled": 0.0, "inter": 0.0}
    if method == "contrastive":
        d["contrastive"] = {**contrastive, **({"simclr": {"batch_size": 8}} if args.simclr else {})}
    return parse_config(TrainConfig, d)


def timed_pretrain(cfg: Any, seconds: float, now: Callable[[], float]) -> dict[str, Any]:
    """:func:`engine.learn.contrastive.pretrain` under a time budget instead of a step count."""
    import torch

    from engine.learn.contrastive import EmbeddingNet, _plot, contrastive_batch, local_contrastive_loss, pretrain_dir
    from engine.learn.sampler import CropSampler
    from engine.models import build_model, save_checkpoint

    c = cfg.contrastive
    torch.manual_seed(cfg.seed)
    unet = build_model(cfg.model)
    sampler = CropSampler(cfg)
    t0 = now()
    record: dict[str, list[float]] = {}
    if c.simclr is not None:
        from engine.learn.semi import UnlabelledSource
        from engine.learn.simclr import SimCLRNet, nt_xent, two_views

        unl = UnlabelledSource(cfg)
        net_g = SimCLRNet(unet, c.simclr.hidden, c.simclr.dim)
        opt_g = torch.optim.Adam(net_g.parameters(), lr=c.simclr.lr)
        record["simclr"] = []
        step = 0
        while now() - t0 < seconds / 3:
            rng = np.random.default_rng([cfg.seed, step, 0x5C1])
            views = [two_views(unl.draw(rng), cfg.augment, rng) for _ in range(c.simclr.batch_size)]
            loss = nt_xent(net_g(torch.from_numpy(np.stack([v[0] for v in views]))), net_g(torch.from_numpy(np.stack([v[1] for v in views]))), c.simclr.temperature)
            opt_g.zero_grad()
            loss.backward()
            opt_g.step()
            record["simclr"].append(float(loss.detach()))
            step += 1
    net = EmbeddingNet(unet, c.dim)
    opt = torch.optim.Adam(net.parameters(), lr=c.lr or cfg.optimizer.lr)
    size = c.batch_size or cfg.batch_size
    losses: list[float] = []
    step = 0
    while now() - t0 < seconds:
        x1, x2, lab = contrastive_batch(sampler, cfg, np.random.default_rng([cfg.seed, step, 0xC0]), size)
        emb = net(torch.cat([x1, x2]))
        loss = local_contrastive_loss([emb[:size], emb[size:]], lab, c.temperature, c.stride, c.block, c.background_anchors)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
    record["contrastive"] = losses
    out = pretrain_dir(cfg)
    save_checkpoint(out, unet, cfg.model, {"stage": "contrastive pretraining", "steps": step})
    (out / "loss.json").write_text(json.dumps(record))
    _plot(record, out / "loss.png")
    return {"pretrain_steps": step, "simclr_steps": len(record.get("simclr", [])), "contrastive_loss_first": losses[0] if losses else None, "contrastive_loss_last": losses[-1] if losses else None}


def timed_fit(cfg: Any, seconds: float, now: Callable[[], float]) -> tuple[Any, dict[str, Any]]:
    from engine.learn.semi import build_trainer

    trainer = build_trainer(cfg)
    t0 = now()
    last: dict[str, float] = {}
    while now() - t0 < seconds:
        last = trainer.step(trainer.batch_fn(trainer.step_count, 0))
    return trainer.model, {"steps": trainer.step_count, "last": {k: round(v, 5) for k, v in last.items()}}


# -- evaluation -------------------------------------------------------------------------------------------


def segment(affs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from engine.kernels.agglomerate import edge_sums, mean_agglomeration
    from engine.kernels.watershed import block_contacts, fragments

    frag, _ = fragments(affs, seed_threshold=threshold)
    a, b, s, c = edge_sums(*block_contacts(frag, affs))
    merges = mean_agglomeration(a, b, s, c, threshold)
    n = int(frag.max()) + 1
    g = coo_matrix((np.ones(len(merges)), (merges[:, 0].astype(np.int64), merges[:, 1].astype(np.int64))), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    out = (comp + 1).astype(np.uint64)[frag]
    out[frag == 0] = 0
    return out


def evaluate(name: str, model: Any, data: dict[str, Any], cfg: Any) -> dict[str, float]:
    from engine.learn.validate import predict_volume
    from engine.metrics import adapted_rand, jaccard, voi

    window = data["window"] or cfg.crop
    prob = predict_volume(model, data["test_raw"], window=window, overlap=0.25)
    if name == "lucchi":
        return {"iou": round(float(jaccard(prob[0] > 0.5, data["test_gt"])), 4)}
    seg = segment(prob)
    split, merge = voi(seg, data["test_gt"])
    return {"voi_split": round(split, 4), "voi_merge": round(merge, 4), "voi": round(split + merge, 4), "arand": round(float(adapted_rand(seg, data["test_gt"]).error), 4),
            "segments": len(np.unique(seg[seg > 0])), "mean_affinity": round(float(prob.mean()), 4), "balanced_accuracy": balanced_accuracy(prob, data["test_gt"])}


def balanced_accuracy(prob: np.ndarray, gt: np.ndarray) -> float:
    """Mean over the z, y, x affinities of the balanced accuracy at 0.5 against the plain ground-truth
    affinities (1 where a voxel and its predecessor have the same non-zero body; pairs touching gt 0 ignored)."""
    out = []
    for k in range(3):
        sl_a = tuple(slice(1, None) if a == k else slice(None) for a in range(3))
        sl_b = tuple(slice(None, -1) if a == k else slice(None) for a in range(3))
        a, b = gt[sl_a], gt[sl_b]
        known = (a != 0) & (b != 0)
        t = (a == b)[known]
        p = prob[k][sl_a][known] >= 0.5
        tpr = float((p & t).sum()) / max(int(t.sum()), 1)
        tnr = float((~p & ~t).sum()) / max(int((~t).sum()), 1)
        out.append((tpr + tnr) / 2)
    return round(float(np.mean(out)), 4)


# -- the run ----------------------------------------------------------------------------------------------


def run_dataset(name: str, args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    data = setup(name, tmp, args)
    if getattr(args, "smoke", False):
        data = smoke_cut(name, data)
    budget = (args.flyem_minutes if name == "flyem" and args.flyem_minutes is not None else args.minutes) * 60.0
    if name == "lucchi" and args.lucchi_minutes is not None:
        budget = args.lucchi_minutes * 60.0
    now = make_clock(args.clock)
    rows = []
    for seed in args.seeds:
        sup_steps = 0
        for method in args.methods:
            out = tmp / f"{name}-{method}-{seed}"
            cfg = make_cfg(data["cfg"], method, seed, out, args, warmup=int(args.warmup * sup_steps))
            load0 = round(os.getloadavg()[0], 2)
            t0, w0, c0 = now(), time.perf_counter(), time.process_time()
            info: dict[str, Any] = {}
            fit_seconds = budget
            if method == "contrastive":
                info |= timed_pretrain(cfg, args.pretrain * budget, now)
                fit_seconds = budget - (now() - t0)
            model, fit = timed_fit(cfg, fit_seconds, now)
            train_wall, train_cpu = time.perf_counter() - w0, time.process_time() - c0
            if method == "supervised":
                sup_steps = fit["steps"]
            t1 = time.perf_counter()
            score = evaluate(name, model, data, cfg)
            row = {"dataset": name, "method": method, "seed": seed, "clock": args.clock, "budget_s": budget, "train_s": round(train_wall, 1), "train_cpu_s": round(train_cpu, 1),
                   "eval_s": round(time.perf_counter() - t1, 1), "load_before": load0, "load_after": round(os.getloadavg()[0], 2), **fit, **info, **score}
            if "positive_share" in data:
                row["positive_share"], row["pos_weight"] = round(data["positive_share"], 4), round(cfg.sampling.pos_weight, 4)
            if method == "mixing":
                row["warmup_steps"] = cfg.semi.warmup_steps
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in rows:
        metrics = [k for k in ("iou", "voi", "voi_split", "voi_merge", "arand", "balanced_accuracy", "mean_affinity") if k in r]
        d = out.setdefault(r["dataset"], {}).setdefault(r["method"], {m: [] for m in (*metrics, "steps")})
        for m in (*metrics, "steps"):
            d[m].append(r[m])
    for ds in out.values():
        for method, d in ds.items():
            ds[method] = {m: {"mean": round(float(np.mean(v)), 4), "std": round(float(np.std(v)), 4), "values": v} for m, v in d.items()}
    return out


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(ds, m) for ds, methods in summary.items() for m in next(iter(methods.values())) if m in ("iou", "voi", "arand")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5), squeeze=False)
    for ax, (ds, m) in zip(axes[0], panels, strict=True):
        names = list(summary[ds])
        means = [summary[ds][k][m]["mean"] for k in names]
        stds = [summary[ds][k][m]["std"] for k in names]
        ax.bar(names, means, yerr=stds, color=["#888", "#3a7", "#37a"][: len(names)], capsize=4)
        for i, k in enumerate(names):
            ax.scatter([i] * len(summary[ds][k][m]["values"]), summary[ds][k][m]["values"], color="k", s=10, zorder=3)
        ax.set_title(f"{ds}: {m} ({'higher' if m == 'iou' else 'lower'} is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="flyem,lucchi")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (at least 3 for the report)")
    p.add_argument("--minutes", type=float, default=4.0, help="training time of each method per data set and seed (CPU or wall minutes, see --clock)")
    p.add_argument("--flyem-minutes", type=float, default=None, help="FlyEM only: its own budget instead of --minutes")
    p.add_argument("--lucchi-minutes", type=float, default=None, help="Lucchi++ only: its own budget instead of --minutes")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="cpu: the budget is this process's CPU time (default); wall: wall-clock time")
    p.add_argument("--merge", nargs="+", default=None, metavar="DIR", help="only merge the results.json of these --out folders into --out (summary and plot)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of supervised,mixing,contrastive (mixing's warm-up needs supervised before it)")
    p.add_argument("--warmup", type=float, default=0.3, help="mixing: supervised warm-up steps as a share of the supervised run's steps")
    p.add_argument("--pretrain", type=float, default=0.35, help="contrastive: share of the time spent pretraining")
    p.add_argument("--simclr", action="store_true", help="contrastive: a global SimCLR stage first (a third of the pretraining time)")
    p.add_argument("--flyem-boxes", type=int, default=3)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/quality_semi")
    p.add_argument("--smoke", action="store_true", help="seconds: seed 0, 1.8 CPU-s per method, a corner of each test volume (checks that the script runs)")
    args = p.parse_args()
    if args.smoke:
        args.seeds, args.minutes, args.flyem_minutes, args.lucchi_minutes = "0", 0.03, None, None
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.methods = [m for m in args.methods.split(",") if m]
    if not set(args.methods) <= set(METHODS):
        p.error(f"--methods: choose among {METHODS}")
    out = Path(args.out)
    if args.merge:
        merged = [r for d in args.merge for r in json.loads((Path(d) / "results.json").read_text())]
        return report(merged, args, out)
    import torch

    torch.set_num_threads(args.threads)
    if not DATA.is_dir():
        print(f"the real data sets are not at {DATA}", file=sys.stderr)
        return 2
    rows: list[dict[str, Any]] = []
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quality_semi_") as tmp:
        for name in args.datasets.split(","):
            rows += run_dataset(name, args, Path(tmp))
            (out / "results.json").write_text(json.dumps(rows, indent=1))
    return report(rows, args, out)


def report(rows: list[dict[str, Any]], args: argparse.Namespace, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    summary = summarise(rows)
    (out / "summary.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "summary": summary}, indent=1))
    plot(summary, out / "quality_semi.png")
    for ds, methods in summary.items():
        for method, d in methods.items():
            print(ds, method, {m: f"{v['mean']:.4f} +- {v['std']:.4f}" for m, v in d.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
