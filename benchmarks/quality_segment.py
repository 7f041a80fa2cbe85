#!/usr/bin/env python
"""Segmentation quality of ``segment_volume`` on real EM volumes with ground truth.

    .venv/bin/python benchmarks/quality_segment.py                 # FlyEM medulla sample 2 + both gala volumes
    .venv/bin/python benchmarks/quality_segment.py --volumes gala_train,gala_test --out /tmp/q
    .venv/bin/python benchmarks/quality_segment.py --smoke --out /tmp/q-smoke      # seconds: checks that the script runs

There is no trained affinity model yet, so the affinities scored here are made, two ways:

* **from the ground truth** (an upper-bound setting with controlled damage): the nearest-neighbour
  affinities of the ground truth (1 inside a neuron, 0 across two neurons or at a gt boundary voxel),
  then corrupted: Gaussian noise of std ``s`` (clipped to [0, 1]); Gaussian blur (sigma 1 voxel) and
  noise; boundary dropout (a fraction of the 0-affinities set to 1 — holes in the membranes) and noise.
* **from the raw EM intensities** (the baseline a user has without a model): intensities smoothed
  (sigma 1), normalised by their 1st and 99th percentiles to [0, 1], affinity of two neighbours = the
  smaller of their two normalised intensities (membranes are dark, so affinities are low across them).

Affinities are stored as uint8 zarr (as a model's would be). For each volume and condition:

* ``blockwise``: ``segment_volume`` with blocks of ``--block`` voxels (the pipeline as a user runs
  it), ``keep_scratch`` so that its fragments (with their provisional global ids) can be agglomerated
  again at every threshold; the output of the pipeline run itself (at the first threshold) is checked
  to be the same partition as the sweep's result at that threshold.
* ``whole``: the same pipeline with one block covering the whole volume (single process).
* ``peer``: scikit-image on the whole volume, what a user might write: seeds = connected components
  (cc3d, 26) of the voxels whose mean neighbour affinity exceeds the threshold, then
  ``skimage.segmentation.watershed`` of ``1 - mean affinity`` from those seeds.

Two agglomeration rules per fragment set: ``threshold`` (merge every edge whose mean affinity reaches
the threshold) and ``mean`` (hierarchical mean-affinity agglomeration down to the threshold). Scores:
VOI split / merge (bits) and adapted Rand error, gt label 0 ignored. One JSON line per result on
stdout; ``results.json`` and ``quality_segment.png`` in ``--out``.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data"
THRESHOLDS = (0.3, 0.5, 0.7, 0.9)  # agglomeration thresholds
PEER_THRESHOLDS = (0.3, 0.5, 0.7, 0.9)  # seed thresholds of the scikit-image peer
CONDITIONS = ("gt_clean", "gt_noise0.2", "gt_noise0.4", "gt_blur1_noise0.2", "gt_dropout0.2_noise0.1", "raw_intensity")


def load_volume(name: str, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """(raw uint8, ground truth uint64) of a named volume, both (z, y, x)."""
    import h5py

    if name == "flyem":
        from PIL import Image

        d = DATA / "flyem_medulla_sample2"
        files = sorted(glob.glob(str(d / "grayscale_maps" / "iso.*.png")))
        raw = np.stack([np.asarray(Image.open(f)) for f in files])
        h5 = tmp / "flyem_gt.h5"
        with gzip.open(d / "groundtruth.h5.gz") as src, open(h5, "wb") as dst:
            shutil.copyfileobj(src, dst)
        with h5py.File(h5) as f:
            stack, tr = f["stack"][:], f["transforms"][:]
        lut = np.zeros(int(max(stack.max(), tr[:, 0].max())) + 1, np.uint64)
        lut[tr[:, 0]] = tr[:, 1]  # supervoxel -> body (the data README's recipe: 526 bodies)
        return raw, lut[stack]
    part = {"gala_train": "train", "gala_test": "test"}[name]
    d = DATA / "gala_fibsem"
    with h5py.File(d / f"{part}-image.h5") as f:
        raw = f["stack"][:]
    with h5py.File(d / f"{part}-gt.lzf.h5") as f:
        gt = f["stack"][:].astype(np.uint64)  # 0 = boundary
    return raw, gt


def gt_affinities(gt: np.ndarray) -> np.ndarray:
    affs = np.zeros((3, *gt.shape), np.float32)
    for ax in range(3):
        cur = [slice(None)] * 3
        prev = [slice(None)] * 3
        cur[ax], prev[ax] = slice(1, None), slice(0, -1)
        a, b = gt[tuple(cur)], gt[tuple(prev)]
        affs[ax][tuple(cur)] = (a == b) & (a != 0)
        first = [slice(None)] * 3
        first[ax] = slice(0, 1)
        affs[ax][tuple(first)] = gt[tuple(first)] != 0  # no predecessor: inside unless boundary
    return affs


def neighbour_min_affinities(img: np.ndarray) -> np.ndarray:
    """(3, z, y, x) affinities from a map that is high inside objects: the smaller value of a voxel and its
    predecessor along z, y and x (a voxel of the first plane: its own value)."""
    affs = np.empty((3, *img.shape), np.float32)
    for ax in range(3):
        prev = np.roll(img, 1, axis=ax)
        first = [slice(None)] * 3
        first[ax] = slice(0, 1)
        prev[tuple(first)] = img[tuple(first)]
        affs[ax] = np.minimum(img, prev)
    return affs


def make_affinities(condition: str, raw: np.ndarray, gt: np.ndarray, seed: int = 0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    if condition == "raw_intensity":
        img = gaussian_filter(raw.astype(np.float32), 1.0)
        lo, hi = np.percentile(img, [1, 99])
        return neighbour_min_affinities(np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1))
    affs = gt_affinities(gt)
    noise = 0.0
    for part in condition.split("_")[1:]:
        if part.startswith("noise"):
            noise = float(part[5:])
        elif part.startswith("blur"):
            affs = np.stack([gaussian_filter(a, float(part[4:])) for a in affs])
        elif part.startswith("dropout"):
            holes = (affs < 0.5) & (rng.random(affs.shape) < float(part[7:]))
            affs[holes] = 1.0
    if noise:
        affs = affs + rng.normal(0, noise, affs.shape).astype(np.float32)
    return np.clip(affs, 0, 1)


def scores(seg: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    from engine.metrics import adapted_rand, voi

    split, merge = voi(seg, gt)
    return {"voi_split": round(split, 4), "voi_merge": round(merge, 4), "voi": round(split + merge, 4), "arand": round(adapted_rand(seg, gt).error, 4)}


def agglomerate(n: int, rule: str, threshold: float, graph: tuple[np.ndarray, ...]) -> np.ndarray:
    """Fragment id (0..n-1) -> segment id (0 for 0) by one rule at one threshold (the same functions
    the pipeline's driver uses), as connected components of the merges."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from engine.kernels.agglomerate import mean_agglomeration, threshold_merges

    a, b, s, c = graph
    merges = mean_agglomeration(a, b, s, c, threshold) if rule == "mean" else threshold_merges(a, b, s, c, threshold)
    g = coo_matrix((np.ones(len(merges)), (merges[:, 0].astype(np.int64), merges[:, 1].astype(np.int64))), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    out = (comp + 1).astype(np.uint64)
    out[0] = 0
    return out


def table_scores(table: Any, seg_of: np.ndarray) -> dict[str, Any]:
    """VOI split/merge and adapted Rand error of ``seg_of[frag]`` against the ground truth, from the
    fragments' contingency table ``table`` (the same formulas as :mod:`engine.metrics`, which the
    caller checks on one segmentation per fragment set), without touching the voxels again."""
    import math

    rows = seg_of[table.a_ids.astype(np.int64)][table.rows].astype(np.int64)
    nb = max(1, table.b_ids.size)
    uniq, inv = np.unique(rows * nb + table.cols, return_inverse=True)
    c = np.bincount(inv.ravel(), weights=table.counts).astype(np.float64)
    seg_rows = uniq // nb
    _, seg_inv = np.unique(seg_rows, return_inverse=True)
    s = np.bincount(seg_inv.ravel(), weights=c).astype(np.float64)
    g = table.b_sizes.astype(np.float64)
    n = c.sum()

    def ent(p: np.ndarray) -> float:
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    hj, hs, hg = ent(c / n), ent(s / n), ent(g / n)
    split, merge = max(0.0, (hj - hg) / math.log(2)), max(0.0, (hj - hs) / math.log(2))
    both, in_seg, in_gt = float(c @ c - n), float(s @ s - n), float(g @ g - n)
    denom = 0.5 * in_seg + 0.5 * in_gt
    arand = 1.0 - (both / denom if denom else 1.0)
    return {"voi_split": round(split, 4), "voi_merge": round(merge, 4), "voi": round(split + merge, 4), "arand": round(arand, 4), "segments": int(s.size - (seg_rows == 0).any())}


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    if not np.array_equal(a == 0, b == 0):
        return False
    m = a != 0
    pairs = np.unique(np.stack([a[m].astype(np.uint64), b[m].astype(np.uint64)], axis=1), axis=0)
    return len(pairs) == len(np.unique(a[m])) == len(np.unique(b[m]))


def pipeline_fragments(url: str, out: str, block: tuple[int, int, int], threshold: float) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Run the pipeline (threshold agglomeration at ``threshold``) and return its output, its
    fragments with provisional global ids, and its numbers."""
    from engine.geometry import BlockGrid, Box
    from engine.ops.label_passes import provisional_ids
    from engine.ops.scratch import Scratch
    from engine.ops.segment import segment_volume
    from engine.storage import open_volume

    t = time.perf_counter()
    r = segment_volume(url, out, threshold=threshold, block=block, chunks=block, keep_scratch=True, overwrite=True, progress=False)
    seconds = time.perf_counter() - t
    vol = open_volume(out)
    seg = vol.read(vol.box)
    scratch = Scratch.beside(out, "segment-scratch")
    frag = provisional_ids(scratch, BlockGrid(Box.from_shape(seg.shape), write_shape=block))
    scratch.remove()
    return seg, frag, {"seconds": round(seconds, 1), "fragments": r.local_objects, "blocks": r.blocks}


def peer(affs: np.ndarray, threshold: float) -> np.ndarray:
    import cc3d
    from skimage.segmentation import watershed

    from engine.kernels.watershed import neighbour_affinities

    mean = neighbour_affinities(affs, (0, 1, 2)).mean(axis=0)
    seeds = cc3d.connected_components(mean > threshold, connectivity=26, out_dtype=np.uint32)
    return watershed(1.0 - mean, seeds).astype(np.uint64)


def run_volume(name: str, conditions: list[str], block: int, tmp: Path, emit: Any, crop: Any = None) -> list[dict[str, Any]]:
    from engine.kernels.agglomerate import edge_sums
    from engine.kernels.watershed import as_float, block_contacts
    from engine.metrics import contingency
    from engine.storage import create_volume

    raw, gt = load_volume(name, tmp)
    if crop is not None:  # --smoke: a corner of the volume
        raw, gt = raw[crop], gt[crop]
    rows: list[dict[str, Any]] = []
    print(f"[quality] {name}: {raw.shape}, {np.unique(gt[gt > 0]).size} gt bodies", file=sys.stderr, flush=True)
    for cond in conditions:
        affs_f = make_affinities(cond, raw, gt)
        chunk = tuple(min(block, s) for s in gt.shape)
        vol = create_volume(str(tmp / f"{name}.zarr" / cond), affs_f.shape, "uint8", chunk, overwrite=True)
        vol.write(vol.box, np.round(affs_f * 255).astype(np.uint8))
        affs = as_float(vol.read(vol.box))  # exactly what the pipeline reads
        del affs_f
        for mode, blk in (("blockwise", (block,) * 3), ("whole", gt.shape)):
            blk_t = tuple(min(b, s) for b, s in zip(blk, gt.shape, strict=True))
            out = str(tmp / f"{name}.zarr" / f"{cond}_{mode}")
            seg0, frag, info = pipeline_fragments(vol.url, out, blk_t, THRESHOLDS[0])  # type: ignore[arg-type]
            graph = edge_sums(*block_contacts(frag, affs))
            table = contingency(frag, gt, ignore_b=(0,))
            n = int(frag.max()) + 1
            for rule in ("threshold", "mean"):
                for t in THRESHOLDS:
                    t0 = time.perf_counter()
                    seg_of = agglomerate(n, rule, t, graph)
                    row = {"volume": name, "condition": cond, "method": f"connectile_{mode}", "agglomeration": rule, "threshold": t, **info,
                           **table_scores(table, seg_of), "agglomerate_s": round(time.perf_counter() - t0, 2)}
                    if rule == "threshold" and t == THRESHOLDS[0]:  # the pipeline's own output, scored on its voxels
                        seg = seg_of[frag]
                        row["pipeline_output_matches"] = same_partition(seg, seg0)
                        exact = scores(seg0, gt)
                        row["table_scores_match_voxel_scores"] = all(abs(exact[k] - row[k]) < 2e-4 for k in ("voi_split", "voi_merge", "arand"))
                    rows.append(row)
                    emit(row)
        for t in PEER_THRESHOLDS:
            t0 = time.perf_counter()
            seg = peer(affs, t)
            row = {"volume": name, "condition": cond, "method": "skimage_watershed_whole", "agglomeration": "seeds above threshold", "threshold": t,
                   "seconds": round(time.perf_counter() - t0, 1), "segments": int(np.unique(seg[seg > 0]).size), **scores(seg, gt)}
            rows.append(row)
            emit(row)
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vols = list(dict.fromkeys(r["volume"] for r in rows))
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    fig, axes = plt.subplots(len(vols), len(conds), figsize=(3.2 * len(conds), 3.0 * len(vols)), squeeze=False)
    for i, v in enumerate(vols):
        for j, c in enumerate(conds):
            ax = axes[i][j]
            sel = [r for r in rows if r["volume"] == v and r["condition"] == c]
            for key in dict.fromkeys((r["method"], r["agglomeration"]) for r in sel):
                pts = sorted((r["voi_merge"], r["voi_split"]) for r in sel if (r["method"], r["agglomeration"]) == key)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label=f"{key[0].replace('connectile_', '')} {key[1][:9]}")
            ax.set_title(f"{v} {c}", fontsize=7)
            ax.set_xlabel("VOI merge", fontsize=7)
            ax.set_ylabel("VOI split", fontsize=7)
            ax.tick_params(labelsize=6)
    axes[0][0].legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--volumes", default="flyem,gala_train,gala_test", help="comma-separated: flyem, gala_train, gala_test (default: all)")
    ap.add_argument("--conditions", default=",".join(CONDITIONS), help=f"comma-separated, of {', '.join(CONDITIONS)} (default: all)")
    ap.add_argument("--block", type=int, default=64, help="edge of a block of the blockwise run (default 64)")
    ap.add_argument("--out", help="folder for results.json and the plot (default: a new temporary folder)")
    ap.add_argument("--smoke", action="store_true", help="seconds: a 48 x 80 x 80 corner of FlyEM and gala_train, two conditions, blocks of 32 (checks that the script runs)")
    args = ap.parse_args(argv)
    crop = None
    if args.smoke:
        args.volumes, args.conditions, args.block, crop = "flyem,gala_train", "gt_noise0.2,raw_intensity", 32, np.s_[:48, :80, :80]
    if not DATA.is_dir():
        print(f"[quality] {DATA} is missing: this benchmark needs the shared EM data sets", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="quality-seg-"))
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="qs-"))
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        print(json.dumps(row), flush=True)

    try:
        for name in [v.strip() for v in args.volumes.split(",") if v.strip()]:
            rows += run_volume(name, [c.strip() for c in args.conditions.split(",") if c.strip()], args.block, tmp, emit, crop)
            (out / "results.json").write_text(json.dumps(rows, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    plot(rows, out / "quality_segment.png")
    print(f"[quality] {len(rows)} results in {out / 'results.json'}, plot {out / 'quality_segment.png'}", file=sys.stderr)
    bad = [r for r in rows if r.get("pipeline_output_matches") is False or r.get("table_scores_match_voxel_scores") is False]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
