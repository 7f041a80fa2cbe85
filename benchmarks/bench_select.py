#!/usr/bin/env python
"""Coverage selection benchmark: Connectile's selection vs the brute-force reference algorithm.

    .venv/bin/python benchmarks/bench_select.py                    # N = 2,500 and 10,000 (both), 10^5 and 10^6 (Connectile)
    .venv/bin/python benchmarks/bench_select.py --sizes 10000,100000 --exact-max 10000
    .venv/bin/python benchmarks/bench_select.py --embed            # also embedding throughput vs the raw forward pass
    .venv/bin/python benchmarks/bench_select.py --quick            # N = 2,500 and 10,000, exact kNN only where the reference runs
    .venv/bin/python benchmarks/bench_select.py --smoke            # seconds: tiny sizes, every code path (tests run this)

Input: synthetic patch embeddings with the structure of real ones: D = 80, eight smooth random fields
over the patch grid (Gaussian, sigma 3 patches) mixed by a random 8 x 80 matrix through tanh, plus
noise -- neighbouring patches are alike, as overlapping EM patches are. k = 30, windows of 1 x 9 x 9
patches (the paper's 18 x 480 x 480 sub-volumes), budget 4, every window position a candidate.

reference   the authors' algorithm as a careful brute force writes it, vectorised with numpy: the full
            N x N Euclidean distance matrix (float64), kNN balls as a dense N x N boolean matrix, and
            for every step every non-overlapping candidate scored as the union of the chosen balls
            (computed once per step: it is constant within a step) with the window's balls
            (``engine.select.reference.reference_greedy_hoisted``). Memory 9 N^2 bytes: N = 10^5
            needs 90 GB.
connectile  exact kNN in row chunks (memory chunk x N) or faiss's IVF index (approximate, nprobe
            raised until the recall on a sample reaches 0.95; recall measured on 500 other patches),
            then sparse coverage gains and incremental updates (``engine.select.greedy_select``).
            Reported: kNN seconds, greedy seconds, total.

Each side runs ``--repeats`` times (default 3), the order of the sides alternating; medians are
reported with the runs. Where both sides are exact the picks must be identical (the script exits 1
otherwise). ``ratio`` = reference median / Connectile median. At sizes the reference cannot hold, its
time is extrapolated as c N^2 from the largest size it ran (``reference_s_extrapolated``,
``ratio_extrapolated``, ``extrapolated: true``; not measured). Also measured: the hierarchical mode at the largest size (time, and the
coverage its picks reach over the whole fine grid against flat selection's). One JSON line per
measurement on stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.bench.harness import emit as _emit
from engine.bench.harness import machine_info, median, side_orders
from engine.select.candidates import Windows
from engine.select.greedy import coverage_curve, greedy_select
from engine.select.knn import approx_knn, exact_knn, knn_recall
from engine.select.patches import PatchGrid
from engine.select.reference import dense_balls, reference_greedy_hoisted

GRIDS = {900: (1, 30, 30), 2500: (4, 25, 25), 10_000: (4, 50, 50), 100_000: (10, 100, 100), 1_000_000: (16, 250, 250)}
TARGET_RECALL = 0.95


def grid_for(n: int) -> tuple[int, int, int]:
    if n in GRIDS:
        return GRIDS[n]
    side = round((n / 10) ** 0.5)
    return (10, side, side)


def embeddings(shape: tuple[int, int, int], dim: int = 80, seed: int = 0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    fields = np.stack([gaussian_filter(rng.normal(size=shape), (1, 3, 3)) for _ in range(8)], axis=-1)
    fields /= fields.std()
    mix = rng.normal(size=(8, dim))
    x = np.tanh(fields.reshape(-1, 8) @ mix / 2.0) + 0.1 * rng.normal(size=(int(np.prod(shape)), dim))
    return x.astype(np.float32)


def emit(**row: Any) -> None:
    _emit(row)


def run_reference(windows: Windows, x: np.ndarray, k: int, budget: int) -> tuple[list[int], float]:
    t = time.perf_counter()
    dense = dense_balls(x, k)
    picks, _ = reference_greedy_hoisted(windows, dense, budget)
    return picks, time.perf_counter() - t


def run_connectile(windows: Windows, x: np.ndarray, k: int, budget: int, knn: str, nprobe: int) -> tuple[list[int], dict[str, Any], np.ndarray]:
    t0 = time.perf_counter()
    balls = exact_knn(x, k) if knn == "exact" else approx_knn(x, k, nprobe=nprobe, target_recall=TARGET_RECALL)
    t1 = time.perf_counter()
    sel = greedy_select(windows, balls, budget)
    t2 = time.perf_counter()
    info: dict[str, Any] = {"knn": knn, "knn_s": round(t1 - t0, 3), "greedy_s": round(t2 - t1, 3), "total_s": round(t2 - t0, 3),
                            "coverage": sel.coverage[-1]}
    return sel.picks, info, balls


def bench_embed(shape_text: str, threads: int = 1, *, ray: bool = True, workers: int = 1) -> None:
    """Connectile's blockwise embedding vs the encoder's raw forward pass over the same patches.

    raw         all patches cut out beforehand (not timed) into one float32 array; the PatchEncoder
                (default filters 28-36-48-64-80, random weights) in batches of 32 under inference_mode,
                torch on ``--threads`` threads (1 by default: the machine is shared).
    connectile  ``embed_volume`` from the zarr volume to the embedding zarr: reading, patch cutting,
                the same batches, writing, done-markers; serial backend (torch on the same threads)
                and Ray backend (``--embed-workers`` actors x the same threads, 1 by default: the
                raw pass's resources; Ray start and actor start-up included).
    ratio       raw seconds / Connectile seconds (throughput fraction; goal >= 0.8).
    """
    import shutil
    import tempfile

    import torch
    from scipy.ndimage import gaussian_filter

    from engine.learn.sampler import to_unit
    from engine.models.checkpoint import save_checkpoint
    from engine.models.config import ModelConfig
    from engine.models.encoder import PatchEncoder
    from engine.ops.embed import embed_volume
    from engine.runtime import connect, shutdown
    from engine.storage import create_volume

    shape = tuple(int(v) for v in shape_text.split(","))
    patch, stride = (8, 64, 64), (4, 16, 16)
    tmp = tempfile.mkdtemp(prefix="bench_embed_")
    try:
        rng = np.random.default_rng(0)
        vol = gaussian_filter(rng.normal(size=shape), (1, 2, 2))
        vol = ((vol - vol.min()) / (vol.max() - vol.min()) * 255).astype(np.uint8)
        url = os.path.join(tmp, "d.zarr", "raw")
        v = create_volume(url, vol.shape, "uint8", (8, 64, 64), voxel_size=(40, 4, 4))
        v.write(v.box, vol)
        cfg = ModelConfig()
        torch.manual_seed(0)
        enc = PatchEncoder(cfg).eval()
        save_checkpoint(os.path.join(tmp, "enc"), enc, cfg, {"kind": "patch_encoder"})
        grid = PatchGrid(vol.shape, patch, stride)
        data = to_unit(vol)
        patches = np.stack([data[grid.patch_box(np.unravel_index(i, grid.shape)).to_slices()] for i in range(grid.size)])[:, None]
        torch.set_num_threads(threads)
        with torch.inference_mode():  # one untimed batch: first-call costs go to neither side
            enc(torch.from_numpy(patches[:32]))
        t = time.perf_counter()
        with torch.inference_mode():
            raw_out = np.concatenate([enc(torch.from_numpy(patches[s : s + 32])).numpy() for s in range(0, len(patches), 32)])
        raw_s = time.perf_counter() - t
        emit(embed="raw", patches=grid.size, patch=list(patch), seconds=round(raw_s, 2), patches_per_s=round(grid.size / raw_s, 1))
        for backend in ("serial", "ray")[: 2 if ray else 1]:
            out = os.path.join(tmp, f"emb_{backend}.zarr")
            t = time.perf_counter()
            if backend == "ray":
                connect(num_cpus=max(2, workers * threads), dashboard=False)
            embed_volume(url, out, os.path.join(tmp, "enc"), patch=patch, stride=stride, block=(2, 8, 8), batch=32,
                         backend=backend, workers=workers if backend == "ray" else 1, progress=False, threads=threads)  # type: ignore[arg-type]
            sec = time.perf_counter() - t
            if backend == "ray":
                shutdown()
            from engine.select.embeddings import load_embeddings

            emb = load_embeddings(out)[1]
            emit(embed=f"connectile-{backend}", workers=workers if backend == "ray" else 1, threads=threads, patches=grid.size, seconds=round(sec, 2), patches_per_s=round(grid.size / sec, 1),
                 ratio=round(raw_s / sec, 2), max_abs_diff=float(np.abs(emb - raw_out).max()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_size(n: int, args: argparse.Namespace, ref_fit: tuple[int, float] | None) -> tuple[bool, tuple[int, float] | None]:
    """One size: the reference (where it fits) and Connectile's modes, sides alternating over the
    repeats. Returns (picks identical wherever both sides are exact, the reference's (N, median s))."""
    shape = grid_for(n)
    grid = PatchGrid(tuple(s + 1 for s in shape), (2, 2, 2), (1, 1, 1))  # a grid of exactly `shape` patches
    windows = Windows(grid, (1, 9, 9))
    x = embeddings(grid.shape)
    n = grid.size
    row: dict[str, Any] = {"N": n, "grid": list(grid.shape), "candidates": windows.size}
    modes = ["exact", "approx"] if n <= args.exact_max else ["approx"]
    sides = (["reference"] if n <= args.reference_max else []) + modes
    times: dict[str, list[float]] = {s: [] for s in sides}
    infos: dict[str, list[dict[str, Any]]] = {s: [] for s in modes}
    picks: dict[str, list[int]] = {}
    balls: dict[str, np.ndarray] = {}
    for order in side_orders(sides, args.repeats):
        for side in order:
            if side == "reference":
                p, sec = run_reference(windows, x, args.k, args.budget)
            else:
                p, info, balls[side] = run_connectile(windows, x, args.k, args.budget, side, args.nprobe)
                sec = info["total_s"]
                infos[side].append(info)
            if side in picks and picks[side] != p and side != "approx":
                raise SystemExit(f"{side} picks changed between repeats at N={n}: {picks[side]} vs {p}")
            picks[side] = p
            times[side].append(sec)
    if "reference" in times:
        row["reference_s"] = round(median(times["reference"]), 3)
        row["reference_runs_s"] = [round(t, 3) for t in times["reference"]]
        ref_fit = (n, row["reference_s"])
    elif ref_fit is not None:
        row["reference_s_extrapolated"] = round(ref_fit[1] * (n / ref_fit[0]) ** 2, 1)
        row["extrapolated"] = True
        row["extrapolated_from"] = f"c N^2 through the reference's median at N={ref_fit[0]} (not measured at this N)"
    ok = True
    for knn in modes:
        runs = infos[knn]
        out: dict[str, Any] = {**row, **runs[len(runs) // 2], "repeats": len(runs), "order": "alternating"}
        out.update({key: round(median([r[key] for r in runs]), 3) for key in ("knn_s", "greedy_s", "total_s")})
        out["total_runs_s"] = [r["total_s"] for r in runs]
        if knn == "approx" and "exact" in balls:  # the approximation's cost in coverage, measured with exact balls
            out["approx_picks_exact_coverage"] = coverage_curve(windows, balls["exact"], picks["approx"])[1][-1]
        if "reference" in picks:
            out["identical_picks"] = picks[knn] == picks["reference"]
            if knn == "exact" and not out["identical_picks"]:
                ok = False  # both sides exact: the picks must be the same
            out["ratio"] = round(out["reference_s"] / out["total_s"], 2)
        elif "reference_s_extrapolated" in row:
            out["ratio_extrapolated"] = round(row["reference_s_extrapolated"] / out["total_s"], 2)
        if knn == "approx":
            out["recall"] = round(knn_recall(x, balls["approx"], sample=500), 4)
            out["target_recall"] = TARGET_RECALL
        emit(bench="selection", **out)
    if args.hierarchical and n == max(int(s) for s in args.sizes.split(",")):
        bench_hierarchical(grid, windows, x, args, balls["approx" if "approx" in balls else "exact"], infos)
    return ok, ref_fit


def bench_hierarchical(grid: PatchGrid, windows: Windows, x: np.ndarray, args: argparse.Namespace, balls: np.ndarray, infos: dict[str, Any]) -> None:
    from engine.select.hierarchical import hierarchical_select

    def knn_fn(y: np.ndarray, k: int) -> np.ndarray:
        return exact_knn(y, k) if len(y) <= 50_000 else approx_knn(y, k, nprobe=args.nprobe, target_recall=TARGET_RECALL)

    t = time.perf_counter()
    sel = hierarchical_select(grid, x, (1, 9, 9), args.budget, args.k, knn_fn, factor=(1, 4, 4), regions_per_pick=2)
    h_s = time.perf_counter() - t
    flat = infos["approx" if "approx" in infos else "exact"][-1]
    emit(bench="selection_hierarchical", N=grid.size, mode="hierarchical", total_s=round(h_s, 3), coarse_s=round(sel.extra["coarse_seconds"], 3),
         fine_s=round(sel.extra["fine_seconds"], 3), fine_population=sel.extra["fine_population"],
         coverage_on_full_grid=coverage_curve(windows, balls, sel.picks)[1][-1], flat_coverage=flat["coverage"], flat_total_s=flat["total_s"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=None, help="comma-separated N (default 2500,10000,100000,1000000)")
    ap.add_argument("--quick", action="store_true", help="N = 2,500 and 10,000; exact kNN only where the reference runs")
    ap.add_argument("--smoke", action="store_true", help="seconds: N = 900 and 2,500, one repeat, hierarchical and (serial) embedding on tiny inputs")
    ap.add_argument("--repeats", type=int, default=None, help="runs per side, order alternating, medians reported (default 3; 1 with --smoke)")
    ap.add_argument("--reference-max", type=int, default=10_000, help="largest N the reference runs at (memory 9 N^2 bytes)")
    ap.add_argument("--k", type=int, default=30)
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--nprobe", type=int, default=16, help="first nprobe of the approximate index (raised until recall 0.95 on a sample)")
    ap.add_argument("--exact-max", type=int, default=100_000, help="largest N for Connectile's exact kNN (N^2 D flops)")
    ap.add_argument("--no-exact-large", action="store_true", help="Connectile's exact kNN only up to --reference-max (where it is compared)")
    ap.add_argument("--hierarchical", action="store_true", help="also the hierarchical mode at the largest size")
    ap.add_argument("--embed", action="store_true", help="embedding throughput vs the raw forward pass")
    ap.add_argument("--embed-shape", default="24,256,256", help="volume for --embed (patches 8x64x64, stride 4x16x16)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the raw pass and the serial backend (--embed)")
    ap.add_argument("--no-embed-ray", action="store_true", help="--embed: the serial backend only")
    ap.add_argument("--embed-workers", type=int, default=1, help="--embed: Ray actors (each on --threads threads)")
    args = ap.parse_args()
    if args.smoke:
        args.sizes = args.sizes or "900,2500"
        args.reference_max, args.exact_max, args.hierarchical = 900, 900, True
        args.embed, args.embed_shape, args.no_embed_ray = True, "8,64,64", True
    elif args.quick:
        args.sizes = args.sizes or "2500,10000"
        args.no_exact_large = True
    args.sizes = args.sizes or "2500,10000,100000,1000000"
    args.repeats = args.repeats or (1 if args.smoke else 3)
    if args.no_exact_large:
        args.exact_max = min(args.exact_max, args.reference_max)
    emit(bench="machine", **machine_info(), k=args.k, budget=args.budget, repeats=args.repeats, quick=args.quick, smoke=args.smoke)
    ref_fit: tuple[int, float] | None = None
    ok = True
    for n in (int(s) for s in args.sizes.split(",")):
        same, ref_fit = bench_size(n, args, ref_fit)
        ok &= same
    if args.embed:
        bench_embed(args.embed_shape, args.threads, ray=not args.no_embed_ray, workers=args.embed_workers)
    if not ok:
        print("[bench_select] exact picks differ from the reference's", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
