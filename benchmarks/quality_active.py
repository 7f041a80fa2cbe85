#!/usr/bin/env python
"""Quality of active query suggestion: the two protocols of Lin et al. (ECCV 2020) for every method.

    .venv/bin/python benchmarks/quality_active.py --quick                  # a short run (minutes)
    .venv/bin/python benchmarks/quality_active.py --smoke --out /tmp/qa    # seconds: checks that the script runs
    .venv/bin/python benchmarks/quality_active.py --shape 16,1536,1536     # synthetic, ~400 ROIs
    .venv/bin/python benchmarks/quality_active.py --data lucchi --lucchi-slices 165 --smooth 4 --threshold 0.8 --seeds 0,1,2
    .venv/bin/python benchmarks/quality_active.py --data cardona-mito --smooth 2 --threshold 0.7 --seeds 0,1,2
    .venv/bin/python benchmarks/quality_active.py --data cardona-syn --smooth 2 --threshold 0.7 --seeds 0,1,2
    .venv/bin/python benchmarks/quality_active.py --shape 16,2688,2688 --feature-dtype float16 --seeds 0,1,2  # ~1,000 ROIs

Data: a synthetic volume (``engine.synth``, every axon tries a mitochondrion), Lucchi++ mitochondria
(training half, ``--lucchi-slices``, ``--lucchi-downsample``), cardona_vnc stack 1 mitochondria or
synapses (``--cardona-downsample``; the binary label PNGs mix modes '1' and 'L' and are binarised per
slice). cardona's synapse labels have no polarity (no pre-synaptic map), so its synapse ROIs are aligned
by PCA only, not with the pre-synaptic side on the left.

Set-up. The base model is a deliberately weak pixel classifier (:mod:`engine.active.pixel`) trained on
the surroundings of two mitochondria in the left half of the volume. Its probability map is labelled
(threshold 0.5, objects of at least ``--min-size`` voxels) into ROI proposals; a proposal is correct when
it covers more than half of a ground-truth mitochondrion (the paper's rule, :mod:`engine.active.oracle`).
ROIs are aligned crops (``--roi-size``); the mask VAE (E_s) is trained on the masks, the image VAE (E_u)
on patches sampled uniformly over the volume.

Protocol A (the paper's Table 2): label propagation. For each annotation ratio, each method suggests
that many ROIs, the oracle answers them, and every ROI takes the majority answer of its cluster's
reviewed members (reviewed ROIs keep theirs; ROIs in clusters without one keep "correct"). Methods
without clusters (random, uncertainty) only correct what was reviewed; core-set propagates to the
nearest selected ROI in mask-feature space. ``hierarchical+active`` spends half the budget, tunes E_u
with the triplet loss on those answers, then spends the other half. Printed: accuracy of the labels of
all ROIs.

Protocol B (the paper's Table 1): ROI accuracy after fine-tuning. ROIs whose centroid lies in the left
half are candidates, those in the right half the test set. Two rounds, each with a budget of ``--budget``
(default 5%) of the candidate ROIs: suggest, answer, refit the base model on its initial labels plus the
reviewed ROIs (accepted: foreground, rejected: background), predict and label again, extract the new ROIs.
Printed: ROI accuracy on the right half after each round. Two-stream tunes E_u after round 1.

``--seeds`` repeats both protocols per run seed (VAE training, k-means, triplet sampling, queries) on the
same proposals and prints mean ± std per method (``random`` averages ``--repeats`` draws inside each
seed). ``--smooth`` / ``--threshold`` shape the proposals (an in-plane Gaussian on the probability map, the
cut-off); ``--feature-dtype float16`` computes the filter bank slab by slab into half the memory.

One JSON line per measurement; a PNG of both protocols, the JSON rows and a markdown table in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("quality_active")
METHODS_A = ("random", "uncertainty", "coreset", "mask", "image", "late-fusion", "hierarchical", "hierarchical+active")
METHODS_B = ("random", "uncertainty", "coreset", "mask", "hierarchical+active")


def emit(**rec: Any) -> None:
    print(json.dumps(rec, default=float), flush=True)


# -- data ------------------------------------------------------------------------------------------
def synthetic(out: Path, shape: tuple[int, int, int], seed: int) -> tuple[str, str, bool]:
    from engine.synth import synthesize

    stamp, want = out / "synthetic.json", {"shape": list(shape), "seed": seed}
    if not (stamp.exists() and json.loads(stamp.read_text()) == want):  # else made by an earlier process: reuse it
        import shutil

        shutil.rmtree(out / "run_base", ignore_errors=True)  # proposals of another volume
        synthesize(out / "data.zarr", shape, seed=seed, chunks=(shape[0], 128, 128), progress=False, mito_probability=1.0, overwrite=True)
        stamp.write_text(json.dumps(want))
    return f"{out}/data.zarr/raw", f"{out}/data.zarr/mito", False


def lucchi(out: Path, zslices: int, downsample: int) -> tuple[str, str, bool]:
    """Lucchi++ training half: images in Train_In (despite the name), labels in Train_Out (255 = mito)."""
    from PIL import Image

    from engine.storage import create_volume
    from engine.storage.slices import natural_sorted

    d = ROOT.parent / "shared" / "data" / "lucchi_pp"
    if not d.is_dir():
        raise SystemExit(f"{d} is absent: the real data sets are not on this machine")
    imgs = natural_sorted([str(p) for p in (d / "Train_In").iterdir() if p.suffix == ".png"])[:zslices]
    labs = natural_sorted([str(p) for p in (d / "Train_Out").iterdir() if p.suffix == ".png"])[:zslices]
    s = downsample
    raw = np.stack([np.asarray(Image.open(p).convert("L"))[::s, ::s] for p in imgs])
    gt = np.stack([(np.asarray(Image.open(p).convert("L")) > 127)[::s, ::s] for p in labs]).astype(np.uint8)
    for name, arr in (("raw", raw), ("mito", gt)):
        v = create_volume(f"{out}/data.zarr/{name}", arr.shape, arr.dtype, (arr.shape[0], 128, 128), overwrite=True)
        v.write(v.box, arr)
    return f"{out}/data.zarr/raw", f"{out}/data.zarr/mito", True


def cardona(out: Path, kind: str, downsample: int) -> tuple[str, str, bool]:
    """cardona_vnc stack 1: raw TIFF slices; ``kind`` (mitochondria or synapses) from the binary label folder,
    whose PNGs mix modes '1' and 'L' (binarised per slice: '1' -> nonzero, 'L' -> > 127). The synapse
    labels carry no polarity (no pre-synaptic map), so synapse ROIs are aligned by PCA only."""
    from PIL import Image

    from engine.storage import create_volume
    from engine.storage.slices import natural_sorted

    d = ROOT.parent / "shared" / "data" / "cardona_vnc" / "stack1"
    if not d.is_dir():
        raise SystemExit(f"{d} is absent: the real data sets are not on this machine")
    imgs = natural_sorted([str(p) for p in (d / "raw").iterdir() if p.suffix in (".tif", ".tiff")])
    labs = natural_sorted([str(p) for p in (d / kind).iterdir() if p.suffix == ".png"])
    if len(imgs) != len(labs):
        raise SystemExit(f"{len(imgs)} raw slices but {len(labs)} {kind} slices in {d}")
    s = downsample
    raw = np.stack([np.asarray(Image.open(p).convert("L"))[::s, ::s] for p in imgs])
    gt = np.stack([binarise(Image.open(p))[::s, ::s] for p in labs]).astype(np.uint8)
    for name, arr in (("raw", raw), ("gt", gt)):
        v = create_volume(f"{out}/data.zarr/{name}", arr.shape, arr.dtype, (arr.shape[0], 128, 128), overwrite=True)
        v.write(v.box, arr)
    return f"{out}/data.zarr/raw", f"{out}/data.zarr/gt", True


def binarise(im: Any) -> np.ndarray:
    """One binary label slice: mode '1' is already boolean; 'L' (anti-aliased 0..255) is foreground above 127."""
    a = np.asarray(im)
    return a > 0 if im.mode == "1" else np.asarray(im.convert("L")) > 127


# -- the weak base model and its proposals -----------------------------------------------------------
def features_by_slab(raw: np.ndarray, dtype: np.dtype, slab: int = 2) -> np.ndarray:
    """The filter bank of :mod:`engine.active.pixel`, ``slab`` z-slices at a time into one array of
    ``dtype`` (its filters are 2D, per slice, so slabs give the same features; float16 halves the
    memory that made a 16 x 4096 x 4096 volume too big)."""
    from engine.active.pixel import filter_bank

    z, y, x = raw.shape
    first = filter_bank(raw[:1])
    out = np.empty((z * y * x, first.shape[1]), dtype)
    for i in range(0, z, slab):
        out[i * y * x : min(z, i + slab) * y * x] = filter_bank(raw[i : i + slab])
    return out


class World:
    """The volume, its features, the base model's initial labels and helpers to predict and score."""

    def __init__(self, out: Path, raw_url: str, gt_url: str, gt_binary: bool, min_size: int, roi_size: int, max_samples: int,
                 feature_dtype: str = "float32", threshold: float = 0.5, smooth: float = 0.0) -> None:
        import cc3d

        from engine.storage import open_volume

        self.out, self.raw_url, self.gt_url, self.gt_binary, self.min_size, self.roi_size = out, raw_url, gt_url, gt_binary, min_size, roi_size
        self.threshold, self.smooth = threshold, smooth
        raw_v = open_volume(raw_url)
        self.shape = raw_v.spatial_shape
        self.gt = open_volume(gt_url).read(raw_v.box)
        self.feats = features_by_slab(raw_v.read(raw_v.box), np.dtype(feature_dtype))
        comp = cc3d.connected_components(self.gt > 0)
        st = cc3d.statistics(comp)
        half = self.shape[2] // 2
        region = np.zeros(self.shape, bool)
        big = [i for i in np.argsort(-st["voxel_counts"][1:]) + 1 if st["bounding_boxes"][i][2].stop <= half][:2]
        for i in big:
            _, ys, xs = st["bounding_boxes"][i]
            region[:, max(0, ys.start - 30) : ys.stop + 30, max(0, xs.start - 30) : min(half, xs.stop + 30)] = True
        self.init_idx = np.flatnonzero(region.ravel())
        if self.init_idx.size > max_samples:  # a fixed random subset of the initial labels: fits take seconds, not minutes
            self.init_idx = np.sort(np.random.default_rng(0).choice(self.init_idx, max_samples, replace=False))
        self.init_y = self.gt.ravel()[self.init_idx] > 0
        self.half = half

    def predict(self, tag: str, idx: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """Fit, predict, label, extract ROIs into run ``tag``; the truth of every ROI."""
        from engine.active.pixel import PixelClassifier
        from engine.ops.label import label_volume
        from engine.ops.rois import extract_rois
        from engine.storage import create_volume

        run = self.out / f"run_{tag}"
        if tag == "base" and (run / "rois" / "rois.json").exists():  # made by an earlier process: reuse it
            return self._result(run)
        p = PixelClassifier().fit(self.feats, idx, y).predict(self.feats, self.shape)
        if self.smooth > 0:  # in-plane smoothing: fewer fragments and fewer merges through thin gaps
            from scipy import ndimage as ndi

            p = ndi.gaussian_filter(p, (0, self.smooth, self.smooth))
        pv = create_volume(f"{self.out}/pred.zarr/prob_{tag}", self.shape, "uint8", (self.shape[0], 128, 128), overwrite=True)
        pv.write(pv.box, np.rint(p * 255).astype(np.uint8))
        cc, table = f"{self.out}/pred.zarr/cc_{tag}", self.out / f"objects_{tag}.parquet"
        label_volume(pv.url, cc, threshold=self.threshold, min_size=self.min_size, table=table, block=(self.shape[0], 512, 512),
                     chunks=(self.shape[0], 128, 128), progress=False, overwrite=True)
        extract_rois(run, cc, self.raw_url, table, size=self.roi_size, block=(self.shape[0], 512, 512), progress=False, overwrite=True)
        return self._result(run)

    def _result(self, run: Path) -> dict[str, Any]:
        from engine.active.oracle import oracle_answers
        from engine.active.rois import read_index

        index = read_index(run)
        truth = oracle_answers(run, self.gt_url, gt_binary=self.gt_binary)
        t = np.array([truth[i] for i in range(index["roi_id"].size)], bool)
        return {"run": run, "index": index, "truth": t, "train": index["x"] < self.half}


# -- features --------------------------------------------------------------------------------------
def feature_config(args: argparse.Namespace, seed: int = 0) -> Any:
    from engine.active.features import FeatureConfig, VaeConfig

    hidden = (16, 32, 64, 128) if args.roi_size >= 64 else (16, 32)
    return FeatureConfig(
        image_patches=args.patches, device="auto",
        mask=VaeConfig(latent_dim=16, hidden_dims=hidden, input_size=args.roi_size, epochs=args.epochs, batch_size=32, seed=seed),
        image=VaeConfig(latent_dim=args.image_latent, hidden_dims=hidden, input_size=args.roi_size, epochs=args.epochs, batch_size=32, seed=seed),
    )


def encode_run(run: Path, source: Path, mask_vae: Any = None, image_vae: Any = None) -> dict[str, np.ndarray]:
    """Features of ``run``'s ROIs with the VAEs of ``source`` (or the given models)."""
    from engine.active.features import encode, load_vae, mask_crops
    from engine.active.rois import read_crops

    e_s = mask_vae or load_vae(source / "features" / "mask_vae.pt")
    e_u = image_vae or load_vae(source / "features" / "image_vae.pt")
    return {"mask": encode(e_s, mask_crops(run)), "image": encode(e_u, read_crops(run, "image"))}


# -- protocol A --------------------------------------------------------------------------------------
def balanced_accuracy(labels: np.ndarray, truth: np.ndarray) -> float:
    """Mean of the recalls of correct and of wrong ROIs: 0.5 for labelling every ROI alike, whatever the
    share of correct ROIs (plain accuracy rewards "reject all" with 1 - share when few are correct)."""
    labels, truth = np.asarray(labels, bool), np.asarray(truth, bool)
    rec = [float((labels[truth == c] == c).mean()) for c in (True, False) if (truth == c).any()]
    return float(np.mean(rec))


def nearest_clusters(feats: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(feats[:, None, :] - feats[chosen][None], axis=-1)
    return np.argmin(d, axis=1)


def protocol_a(world: World, p0: dict[str, Any], f: dict[str, np.ndarray], ratios: list[float], args: argparse.Namespace,
               run_seed: int = 0) -> list[dict[str, Any]]:
    from engine.active.propagation import accuracy, full_clusters, propagate, random_expected_accuracy
    from engine.active.query import suggest
    from engine.active.triplet import TripletConfig, triplet_finetune

    truth, n = p0["truth"], p0["truth"].size
    scores = p0["index"]["score"]
    rows = []
    initial = float(truth.mean())
    emit(protocol="A", seed=run_seed, rois=n, initial_accuracy=initial)
    for ratio in ratios:
        budget = max(2, round(ratio * n))
        m = 2
        n_top = max(1, budget // m)
        for method in METHODS_A:
            t0 = time.perf_counter()
            seeds = range(run_seed * 1000, run_seed * 1000 + (args.repeats if method == "random" else 1))
            accs, bals = [], []
            for seed in seeds:
                if method == "hierarchical+active":
                    half = max(1, n_top // 2)
                    s1 = suggest("hierarchical", f["mask"], f["image"], n_clusters=half, n_sub=m, seed=seed)
                    ans = {int(r): bool(truth[r]) for r in s1.roi_id}
                    from engine.active.features import encode, load_vae
                    from engine.active.rois import read_crops

                    e_u = load_vae(p0["run"] / "features" / "image_vae.pt")
                    ids = np.asarray(sorted(ans), np.int64)
                    triplet_finetune(e_u, read_crops(p0["run"], "image", ids), np.array([ans[i] for i in ids.tolist()]),
                                     TripletConfig(steps=args.triplet_steps, batch_size=32, lr=1e-4, seed=seed))
                    fi = encode(e_u, read_crops(p0["run"], "image"))
                    s = suggest("hierarchical", f["mask"], fi, n_clusters=max(1, n_top - half), n_sub=m, reviewed=set(ans), seed=seed)
                    ans.update({int(r): bool(truth[r]) for r in s.roi_id})
                    clusters = full_clusters(s.assignment, s.candidates, n)
                elif method in ("random", "uncertainty", "coreset"):
                    s = suggest(method, f["mask"], f["image"], budget=budget, scores=scores, seed=seed)
                    ans = {int(r): bool(truth[r]) for r in s.roi_id}
                    clusters = nearest_clusters(f["mask"], s.roi_id) if method == "coreset" else None
                else:
                    k = (n_top, m) if method == "hierarchical" else (budget, 1)
                    s = suggest(method, f["mask"], f["image"], n_clusters=k[0], n_sub=k[1], seed=seed)
                    ans = {int(r): bool(truth[r]) for r in s.roi_id}
                    clusters = full_clusters(s.assignment, s.candidates, n)
                labels = propagate(clusters, ans, n)
                accs.append(accuracy(labels, truth))
                bals.append(balanced_accuracy(labels, truth))
            rec = {"protocol": "A", "seed": run_seed, "ratio": ratio, "initial": initial, "budget": len(ans), "method": method, "accuracy": float(np.mean(accs)),
                   "accuracy_sd": float(np.std(accs)),
                   "balanced": float(np.mean(bals)), "seconds": time.perf_counter() - t0}
            if method == "random":
                rec["expected"] = random_expected_accuracy(initial, budget, n)
            emit(**rec)
            rows.append(rec)
    return rows


# -- protocol B --------------------------------------------------------------------------------------
def protocol_b(world: World, p0: dict[str, Any], f0: dict[str, np.ndarray], args: argparse.Namespace, run_seed: int = 0) -> list[dict[str, Any]]:
    from engine.active.features import load_vae
    from engine.active.finetune import targets_from_answers
    from engine.active.query import suggest
    from engine.active.rois import read_crops, read_meta
    from engine.active.triplet import TripletConfig, triplet_finetune
    from engine.errors import StorageError
    from engine.storage import open_volume

    rows = []
    test0 = float(p0["truth"][~p0["train"]].mean())
    emit(protocol="B", seed=run_seed, round=0, method="base", test_accuracy=test0, test_rois=int((~p0["train"]).sum()), train_rois=int(p0["train"].sum()))
    budget = max(2, round(args.budget * int(p0["train"].sum())))
    for method in args.methods_b.split(","):
        t0 = time.perf_counter()
        idx, y = world.init_idx, world.init_y
        cur, f = p0, f0
        e_u = load_vae(p0["run"] / "features" / "image_vae.pt")
        accs = []
        for rnd in (1, 2):
            not_train = set(np.flatnonzero(~cur["train"]).tolist())
            base = "hierarchical" if method == "hierarchical+active" else method
            m = 2
            s = suggest(base, f["mask"], f["image"], n_clusters=max(1, budget // m) if base == "hierarchical" else budget,
                        n_sub=m if base == "hierarchical" else 1, budget=budget, reviewed=not_train, scores=cur["index"]["score"],
                        seed=run_seed * 10 + rnd)
            ans = {int(r): bool(cur["truth"][r]) for r in s.roi_id}
            labels_url = read_meta(cur["run"])["params"]["labels"]
            lab = open_volume(labels_url).read(open_volume(labels_url).box)
            t = targets_from_answers(lab, {int(cur["index"]["object_id"][r]): ok for r, ok in ans.items()})
            known = np.flatnonzero(t.known.ravel())
            idx, y = np.concatenate([idx, known]), np.concatenate([y, t.target.ravel()[known]])
            if method == "hierarchical+active" and rnd == 1:
                ids = np.asarray(sorted(ans), np.int64)
                triplet_finetune(e_u, read_crops(cur["run"], "image", ids), np.array([ans[i] for i in ids.tolist()]),
                                 TripletConfig(steps=args.triplet_steps, batch_size=32, lr=1e-4, seed=run_seed))
            try:
                cur = world.predict(f"{method}_{args.budget:g}_{rnd}", idx, y)
            except StorageError as e:  # the refit proposes no object at all: no ROI accuracy, no next round
                log.warning("%s round %d: %s", method, rnd, e)
                rec = {"protocol": "B", "seed": run_seed, "round": rnd, "base": test0, "method": method, "budget": budget,
                       "accepted": int(sum(ans.values())), "test_accuracy": float("nan"), "test_rois": 0, "test_true": 0, "no_proposals": True}
                emit(**rec)
                rows.append(rec)
                break
            f = encode_run(cur["run"], p0["run"], image_vae=e_u)
            acc = float(cur["truth"][~cur["train"]].mean()) if (~cur["train"]).any() else float("nan")
            accs.append(acc)
            rec = {"protocol": "B", "seed": run_seed, "round": rnd, "base": test0, "method": method, "budget": budget, "accepted": int(sum(ans.values())),
                   "test_accuracy": acc, "test_rois": int((~cur["train"]).sum()), "test_true": int(cur["truth"][~cur["train"]].sum()),
                   "seconds": time.perf_counter() - t0}
            emit(**rec)
            rows.append(rec)
    return rows


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation over seeds."""
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std())


def fmt(values: list[float]) -> str:
    """``mean ± std`` over the finite values; seeds without a value (no proposals) are counted after a dagger."""
    ok = [v for v in values if np.isfinite(v)]
    if not ok:
        return "none" if values else ""
    m, sd = mean_sd(ok)
    text = f"{m:.3f} ± {sd:.3f}" if len(ok) > 1 else f"{m:.3f}"
    return text + (f" †{len(values) - len(ok)}" if len(ok) < len(values) else "")


def summary(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]]) -> str:
    """Markdown tables, mean ± std over seeds: protocol A (ratio x method), protocol B (method x round)."""
    lines = []
    if rows_a:
        ratios = sorted({r["ratio"] for r in rows_a})
        methods = [m for m in METHODS_A if any(r["method"] == m for r in rows_a)]
        seeds = sorted({r["seed"] for r in rows_a})
        init = {r["seed"]: r["initial"] for r in rows_a}
        lines += [f"Protocol A, {len(seeds)} seed(s), initial accuracy {fmt(list(init.values()))} (all rejected: "
                  f"{1 - np.mean(list(init.values())):.3f}); accuracy (mean reviews)", "",
                  "| ratio | " + " | ".join(methods) + " |", "| --- |" + " --- |" * len(methods)]
        for ratio in ratios:
            cells = []
            for m in methods:
                rs = [r for r in rows_a if r["ratio"] == ratio and r["method"] == m]
                cells.append(f"{fmt([r['accuracy'] for r in rs])} ({np.mean([r['budget'] for r in rs]):.0f})")
            lines.append(f"| {ratio * 100:.1f}% | " + " | ".join(cells) + " |")
        lines.append("")
        if all("balanced" in r for r in rows_a):
            lines += ["Protocol A, balanced accuracy (mean recall of correct and wrong ROIs; 0.5 = all labelled alike)", "",
                      "| ratio | " + " | ".join(methods) + " |", "| --- |" + " --- |" * len(methods)]
            for ratio in ratios:
                cells = [fmt([r["balanced"] for r in rows_a if r["ratio"] == ratio and r["method"] == m]) for m in methods]
                lines.append(f"| {ratio * 100:.1f}% | " + " | ".join(cells) + " |")
            lines.append("")
    if rows_b:
        methods = list(dict.fromkeys(r["method"] for r in rows_b))
        base = {r["seed"]: r["base"] for r in rows_b}
        lines += [f"Protocol B, base test accuracy {fmt(list(base.values()))} (†n: n seeds whose refit proposed no object)", "",
                  "| method | budget/round | round 1 | round 2 | round 2: correct / test ROIs (mean) |", "| --- | --- | --- | --- | --- |"]
        for m in methods:
            r1 = [r for r in rows_b if r["method"] == m and r["round"] == 1]
            r2 = [r for r in rows_b if r["method"] == m and r["round"] == 2]
            r2 += [{"test_accuracy": float("nan")} for r in r1 if r.get("no_proposals")]  # no round 2 after an empty round 1
            counts = [r for r in r2 if "test_rois" in r]
            tally = f"{np.mean([r['test_true'] for r in counts]):.1f} / {np.mean([r['test_rois'] for r in counts]):.1f}" if counts else ""
            lines.append(f"| {m} | {r1[0]['budget']} | {fmt([r['test_accuracy'] for r in r1])} | {fmt([r['test_accuracy'] for r in r2])} | {tally} |")
    return "\n".join(lines)


def plot(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method in METHODS_A:
        ratios = sorted({r["ratio"] for r in rows_a if r["method"] == method})
        if ratios:
            ms = [mean_sd([r["accuracy"] for r in rows_a if r["method"] == method and r["ratio"] == q]) for q in ratios]
            axes[0].errorbar([q * 100 for q in ratios], [m for m, _ in ms], yerr=[sd for _, sd in ms], marker="o", capsize=2, label=method)
    axes[0].set_xlabel("annotation ratio (%)")
    axes[0].set_ylabel("label-propagation accuracy")
    axes[0].set_title("protocol A (Table 2)")
    axes[0].legend(fontsize=7)
    for method in METHODS_B:
        if any(r["method"] == method for r in rows_b):
            ms = [mean_sd([r["base"] for r in rows_b if r["method"] == method and r["round"] == 1])]
            ms += [mean_sd([r["test_accuracy"] for r in rows_b if r["method"] == method and r["round"] == k]) for k in (1, 2)]
            axes[1].errorbar([0, 1, 2], [m for m, _ in ms], yerr=[sd for _, sd in ms], marker="o", capsize=2, label=method)
    axes[1].set_xlabel("round")
    axes[1].set_ylabel("ROI accuracy (test half)")
    axes[1].set_title("protocol B (Table 1)")
    axes[1].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=("synthetic", "lucchi", "cardona-mito", "cardona-syn"), default="synthetic")
    ap.add_argument("--shape", default="16,1024,1024", help="synthetic volume z,y,x")
    ap.add_argument("--seed", type=int, default=4, help="synthetic volume")
    ap.add_argument("--seeds", default="0", help="comma-separated run seeds: VAE training, k-means, triplets, queries; mean ± std per method")
    ap.add_argument("--cardona-downsample", type=int, default=2)
    ap.add_argument("--feature-dtype", default="float32", choices=("float32", "float16"), help="filter-bank features (float16: half the memory)")
    ap.add_argument("--lucchi-slices", type=int, default=40)
    ap.add_argument("--lucchi-downsample", type=int, default=2)
    ap.add_argument("--min-size", type=int, default=20)
    ap.add_argument("--threshold", type=float, default=0.5, help="proposals: components of (smoothed) probability > this")
    ap.add_argument("--smooth", type=float, default=0.0, help="in-plane Gaussian sigma on the probability map before thresholding")
    ap.add_argument("--roi-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--patches", type=int, default=2000)
    ap.add_argument("--image-latent", type=int, default=64)
    ap.add_argument("--triplet-steps", type=int, default=100)
    ap.add_argument("--ratios", default="0.0223,0.0446,0.1")
    ap.add_argument("--budget", type=float, default=0.05, help="protocol B: queries per round as a fraction of the candidate ROIs")
    ap.add_argument("--repeats", type=int, default=5, help="random: seeds averaged")
    ap.add_argument("--skip-a", action="store_true")
    ap.add_argument("--skip-b", action="store_true")
    ap.add_argument("--methods-b", default=",".join(METHODS_B), help="protocol B methods (run several processes with one each to use more cores)")
    ap.add_argument("--max-samples", type=int, default=300_000, help="voxels the pixel classifier is fit on (random subset)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    ap.add_argument("--quick", action="store_true", help="small volume, few epochs")
    ap.add_argument("--smoke", action="store_true", help="seconds: a tiny synthetic volume, one epoch, one ratio, 2 random repeats (checks that the script runs)")
    ap.add_argument("--out", default="/tmp/connectile-quality-active")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    if args.quick:
        args.shape, args.epochs, args.patches, args.roi_size, args.triplet_steps = "16,512,512", 3, 300, 32, 20
    if args.smoke:
        args.data, args.shape, args.epochs, args.patches, args.roi_size, args.triplet_steps = "synthetic", "8,384,384", 1, 64, 32, 3
        args.ratios, args.repeats, args.seeds, args.max_samples = "0.1", 2, "0", 50_000
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    emit(machine=platform.node(), cpus=os.cpu_count(), gpu=torch.cuda.is_available(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
         args=vars(args))
    t0 = time.perf_counter()
    if args.data == "synthetic":
        shape = tuple(int(v) for v in args.shape.split(","))
        raw, gt, binary = synthetic(out, (shape[0], shape[1], shape[2]), args.seed)
    elif args.data == "lucchi":
        raw, gt, binary = lucchi(out, args.lucchi_slices, args.lucchi_downsample)
    else:
        raw, gt, binary = cardona(out, "mitochondria" if args.data == "cardona-mito" else "synapses", args.cardona_downsample)
    world = World(out, raw, gt, binary, args.min_size, args.roi_size, args.max_samples, args.feature_dtype,
                  args.threshold, args.smooth)
    p0 = world.predict("base", world.init_idx, world.init_y)
    emit(stage="proposals", rois=int(p0["truth"].size), correct=int(p0["truth"].sum()), train=int(p0["train"].sum()),
         shape=list(world.shape), seconds=time.perf_counter() - t0)
    from engine.active.features import compute_features

    ratios = [float(r) for r in args.ratios.split(",")]
    rows_a: list[dict[str, Any]] = []
    rows_b: list[dict[str, Any]] = []
    tag = "" if not args.skip_a else f"_b_{args.methods_b.replace(',', '_')}_{args.budget:g}"
    for seed in (int(v) for v in args.seeds.split(",")):
        t1 = time.perf_counter()
        f0 = compute_features(p0["run"], feature_config(args, seed), progress=False)
        emit(stage="features", seed=seed, rois=int(p0["truth"].size), seconds=time.perf_counter() - t1)
        rows_a += [] if args.skip_a else protocol_a(world, p0, f0, ratios, args, seed)
        rows_b += [] if args.skip_b else protocol_b(world, p0, f0, args, seed)
        (out / f"quality_active{tag}.json").write_text(json.dumps({"A": rows_a, "B": rows_b}, indent=1, default=float))
    plot(rows_a, rows_b, out / f"quality_active{tag}.png", f"{args.data}: {p0['truth'].size} ROIs, seeds {args.seeds}")
    table = summary(rows_a, rows_b)
    (out / f"quality_active{tag}.md").write_text(table + "\n")
    print(table, flush=True)
    emit(stage="done", seconds=time.perf_counter() - t0, plot=str(out / f"quality_active{tag}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
