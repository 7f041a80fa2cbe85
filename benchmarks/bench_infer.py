#!/usr/bin/env python
"""Inference benchmark: Connectile's blockwise sliding-window inference vs MONAI's sliding_window_inference.

    .venv/bin/python benchmarks/bench_infer.py            # 32 x 384 x 384, window 16 x 128 x 128, 2 Ray workers
    .venv/bin/python benchmarks/bench_infer.py --shape 64,512,512   # bigger
    .venv/bin/python benchmarks/bench_infer.py --quick    # 32 x 256 x 256
    .venv/bin/python benchmarks/bench_infer.py --smoke    # 16 x 192 x 192: checks that the script runs (seconds)

Same model (the papers' base residual SE U-Net of ``engine.models``, default ``ModelConfig``, random
weights, eval mode, sigmoid output), same window, overlap 0.5 and Gaussian blending on both sides:

connectile  ``predict_volume(..., backend="ray", workers=2, threads=1)`` (default forward: folded norms,
            channels-last, 1x1x1 convolutions as matrix products; MONAI gets the model as it is): zarr in, uint8 zarr out, blocks aligned to
            the stride grid, y and x cut once (4 blocks); Ray's cluster start reported apart. Each
            window is computed once (``share_borders``, the default): pass 1 runs every block's own
            windows (those starting in its write box) and finishes the voxels no other block's window
            reaches; pass 2 sums the partial sums that neighbouring blocks left in scratch for the
            border slabs. Why 4 blocks and not 2: with 2 blocks the block holding 3 of the 5 window
            rows (45 of 75 windows) bounds the wall time; with 4 blocks (27, 18, 18, 12 windows) the two
            workers get 39 and 36.
            Two Connectile numbers: the headline ``total`` (the whole ``predict_volume`` call: the
            workers' start, both passes), and ``steady state``, which leaves out the workers' start-up
            (process start, torch import, model load) and dispatch: the busiest worker's summed
            per-block seconds of pass 1 (from the run's done-markers) plus the wall time of pass 2.
monai       ``sliding_window_inference`` on the volume already in memory (float32 tensor), torch
            threads 2, ``sw_batch_size`` 1 (MONAI's default; batch 1 is also the fastest on this CPU),
            under ``torch.inference_mode``; full-volume float output.
limit       the raw forward throughput on non-overlapping windows (batch 1) with 2 torch threads in one
            process, and with 1 thread (times 2: two workers' ideal on two free cores), of the plain
            model (MONAI's forward: its limit) and of Connectile's CPU predictor (folded norms,
            channels-last 3D, 1x1x1 convolutions as GEMMs: Connectile's limit); wall and CPU seconds.
            Each side's "of its limit" is its throughput over its own forward's limit.

Each side runs in a fresh child process (this script with ``--child``); peak memory is the VmHWM of the
MONAI process, and for Connectile the peak of the summed RSS of the driver and the Ray actors (sampled,
see ``bench_cc.RssSampler``). The outputs are checked against each other (uint8 vs MONAI's float).
Voxel throughput counts the volume's voxels once (overlap and block borders are the engine's cost).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from engine.bench import harness  # noqa: E402 - benchmarks are scripts, not a package
from engine.bench.harness import MIB, RssSampler, machine_info  # noqa: E402

SIZES = {"full": (32, 384, 384), "quick": (32, 256, 256), "smoke": (16, 192, 192)}
WINDOW = (16, 128, 128)


def run_child(name: str, params: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    return harness.run_child(__file__, name, params, timeout=timeout, cwd=ROOT)


def _load_model(ckpt: str) -> Any:
    from engine.models import load_checkpoint

    model, _, _ = load_checkpoint(ckpt)
    return model


def _read(url: str) -> Any:
    from engine.storage import open_volume

    v = open_volume(url)
    return v.read(v.box)


# -- children ----------------------------------------------------------------------------------
def child_limit(p: dict[str, Any]) -> dict[str, Any]:
    """Forward passes on non-overlapping windows (batch 1), with 2 threads and with 1 thread, of the
    plain model (what MONAI runs) and of Connectile's predictor as predict builds it on the CPU (batch
    norms folded, channels-last, 1x1x1 convolutions as matrix products): the limit of each forward on
    this hardware. CPU time per window too (less sensitive to other jobs on the cores)."""
    import torch

    from engine.infer import TorchPredictor

    model = _load_model(p["checkpoint"])
    raw = _read(p["input"])
    wz, wy, wx = p["window"]
    windows = [(z, y, x) for z in range(0, raw.shape[0] - wz + 1, wz) for y in range(0, raw.shape[1] - wy + 1, wy) for x in range(0, raw.shape[2] - wx + 1, wx)]
    windows = windows[: p["limit_windows"]]
    out: dict[str, Any] = {"windows": len(windows)}
    fast = TorchPredictor(model, channels_last=True)  # the predictor PredictOp builds on the CPU

    def plain(x: Any) -> Any:
        with torch.inference_mode():
            return torch.sigmoid(model(x))

    for name, forward in (("plain", plain), ("fast", fast)):
        for threads in (2, 1):
            torch.set_num_threads(threads)
            forward(torch.zeros(1, 1, wz, wy, wx))  # warm-up
            t0, c0 = time.perf_counter(), time.process_time()
            for z, y, x in windows:
                forward(torch.from_numpy(raw[z : z + wz, y : y + wy, x : x + wx].astype("float32") / 255)[None, None])
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            out[f"{name}_threads{threads}_vox_s"] = len(windows) * wz * wy * wx / dt
            out[f"{name}_threads{threads}_s_per_window"] = dt / len(windows)
            out[f"{name}_threads{threads}_cpu_s_per_window"] = cpu / len(windows)
    return out


def child_monai(p: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    torch.set_num_threads(2)
    model = _load_model(p["checkpoint"])
    raw = _read(p["input"])
    vol = torch.from_numpy(raw.astype(np.float32) / 255)[None, None]

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model(x))

    t0 = time.perf_counter()
    with torch.inference_mode():
        out = sliding_window_inference(vol, p["window"], 1, predictor, overlap=0.5, mode="gaussian")
    run_s = time.perf_counter() - t0
    assert isinstance(out, torch.Tensor)
    np.save(p["monai_out"], out[0, 0].numpy())
    return {"run_s": run_s, "vmhwm": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def child_connectile(p: dict[str, Any]) -> dict[str, Any]:
    from engine.ops.predict import predict_volume
    from engine.runtime import connect, shutdown

    t0 = time.perf_counter()
    connect(num_cpus=p["workers"], dashboard=False)
    cluster_s = time.perf_counter() - t0
    time.sleep(1.0)
    sampler = RssSampler(interval=0.5)  # reading smaps costs CPU that the two workers need
    sampler.start()
    t1 = time.perf_counter()
    r = predict_volume(
        p["checkpoint"], p["input"], p["output"], window=tuple(p["window"]), overlap=0.5, blend="gaussian", block=tuple(p["block"]),
        chunks=tuple(p["chunks"]), batch_size=1, threads=1, device="cpu", backend="ray", workers=p["workers"], progress=False,
        state_dir=p["state_dir"], overwrite=True,
    )
    run_s = time.perf_counter() - t1
    peak = sampler.stop()
    shutdown()
    # per worker, the seconds its blocks of pass 1 took (process() only: no start-up, no dispatch)
    import sqlite3

    with sqlite3.connect(Path(p["state_dir"]) / "windows" / "markers.sqlite") as db:
        busy = {str(w): float(t) for w, t in db.execute("SELECT worker, SUM(seconds) FROM blocks WHERE status=1 GROUP BY worker")}
        blocks = [(int(b), float(t), str(w)) for b, t, w in db.execute("SELECT id, seconds, worker FROM blocks ORDER BY id")]
    return {
        "run_s": run_s, "cluster_start_s": cluster_s, "blocks": r.blocks, "block_shape": list(r.block_shape), "windows": r.windows,
        "windows_computed": r.windows_computed, "stats": r.stats, "peak": peak, "pass_seconds": r.pass_seconds,
        "worker_busy_s": busy, "block_seconds": blocks,
    }


CHILDREN = {"limit": child_limit, "monai": child_monai, "connectile": child_connectile}


# -- driver side -------------------------------------------------------------------------------
def make_inputs(d: Path, shape: tuple[int, int, int], smoke: bool = False) -> tuple[str, str]:
    import numpy as np
    import torch

    from engine.models import ModelConfig, build_model, save_checkpoint
    from engine.storage import create_volume

    torch.manual_seed(0)
    cfg = ModelConfig(filters=[4, 4, 4, 4, 4]) if smoke else ModelConfig()  # smoke: the same architecture, narrow
    ckpt = str(d / "checkpoint")
    save_checkpoint(ckpt, build_model(cfg), cfg, {"note": "bench_infer random weights"})
    v = create_volume(f"{d}/bench.zarr/raw", shape, "uint8", (16, 128, 128))
    v.write(v.box, np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
    return ckpt, v.url


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small volume: 32 x 256 x 256")
    ap.add_argument("--smoke", action="store_true", help="seconds: 16 x 192 x 192 (4 windows), 1 window for the limit, 4 filters per stage; checks that the script runs")
    ap.add_argument("--shape", default=None, help="volume z,y,x (default: 32,384,384; quick: 32,256,256)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit-windows", type=int, default=8, help="windows timed for the raw forward limit")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return harness.child_main(CHILDREN, args.child, args.params)
    if args.smoke:
        args.limit_windows = 1

    import numpy as np

    from engine.geometry import Box
    from engine.infer import WindowGrid
    from engine.storage import open_volume

    shape = tuple(int(v) for v in args.shape.split(",")) if args.shape else SIZES["smoke" if args.smoke else "quick" if args.quick else "full"]
    assert len(shape) == 3
    # cut y and x once, on the stride grid (4 blocks: see the docstring)
    block = (shape[0], -(-shape[1] // 2 // 64) * 64, -(-shape[2] // 2 // 64) * 64)
    print(json.dumps({"machine": machine_info(), "shape": shape, "window": WINDOW, "overlap": 0.5, "block": block}), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
        d = Path(tmp)
        ckpt, url = make_inputs(d, shape, args.smoke)  # type: ignore[arg-type]
        common = {"checkpoint": ckpt, "input": url, "window": WINDOW}
        limit = run_child("limit", {**common, "limit_windows": args.limit_windows})
        print(json.dumps({"side": "limit", **limit}), flush=True)
        monai = run_child("monai", {**common, "monai_out": str(d / "monai.npy")})
        print(json.dumps({"side": "monai", **monai}), flush=True)
        conn = run_child("connectile", {**common, "output": f"{d}/bench.zarr/prob", "block": block, "chunks": (8, 64, 128),
                                        "workers": args.workers, "state_dir": str(d / "state")})
        print(json.dumps({"side": "connectile", **conn}), flush=True)
        got = open_volume(f"{d}/bench.zarr/prob").read(Box.from_shape(shape)).astype(np.float32) / 255
        ref = np.load(d / "monai.npy")
        diff = float(np.abs(got - np.clip(ref, 0, 1)).max())
    voxels = float(np.prod(shape))
    w = WindowGrid(shape, WINDOW, (0.5,))
    monai_vs = voxels / monai["run_s"]
    conn_vs = voxels / conn["run_s"]
    # steady state: the busiest worker's pass-1 block seconds + pass 2's wall time (no start-up)
    steady_s = max(conn["worker_busy_s"].values()) + conn["pass_seconds"].get("borders", 0.0)
    steady_vs = voxels / steady_s
    # the limit of each side's forward on this hardware: MONAI's plain model with 2 threads; Connectile's
    # predictor in 2 single-thread workers (twice the 1-thread rate) or with 2 threads, whichever is faster
    limit_monai = limit["plain_threads2_vox_s"]
    limit_conn = max(limit["fast_threads2_vox_s"], 2 * limit["fast_threads1_vox_s"])
    # seconds of forward per voxel of the volume: every whole-volume window once, at the raw rate
    per_window = w.num_windows * np.prod(WINDOW) / voxels
    summary = {
        "voxels": voxels, "windows": w.num_windows, "windows_computed_blockwise": conn["windows_computed"],
        "redundancy": conn["windows_computed"] / w.num_windows, "limit": limit,
        "limit_plain_vox_s_2threads": limit_monai, "limit_fast_vox_s": limit_conn,
        "monai_vox_s": monai_vs, "connectile_vox_s": conn_vs, "connectile_over_monai": conn_vs / monai_vs,
        "connectile_steady_s": steady_s, "connectile_steady_vox_s": steady_vs, "connectile_steady_over_monai": steady_vs / monai_vs,
        "pass_seconds": conn["pass_seconds"], "worker_busy_s": conn["worker_busy_s"],
        "monai_over_its_limit": monai_vs * per_window / limit_monai, "connectile_over_its_limit": conn_vs * per_window / limit_conn,
        "monai_peak_mib": monai["vmhwm"] / MIB, "connectile_peak_mib": conn["peak"]["work_rss"] / MIB,
        "connectile_peak_pss_mib": conn["peak"]["work_pss"] / MIB, "max_abs_diff_uint8_vs_monai": diff,
        "cluster_start_s": conn["cluster_start_s"],
        "fast_over_plain_cpu_1thread": limit["fast_threads1_cpu_s_per_window"] / limit["plain_threads1_cpu_s_per_window"],
    }
    print(json.dumps({"summary": summary}), flush=True)
    print(
        f"\nvolume {shape}, window {WINDOW}, overlap 0.5, gaussian; {w.num_windows} windows ({conn['windows_computed']} computed blockwise "
        f"in {conn['blocks']} blocks of {tuple(conn['block_shape'])}, {100 * (summary['redundancy'] - 1):.0f}% twice)\n"
        "limit (raw forward on non-overlapping windows, batch 1):\n"
        f"  plain model (MONAI's forward)  {limit['plain_threads2_vox_s'] / 1e3:6.1f} kvox/s with 2 threads, "
        f"{2 * limit['plain_threads1_vox_s'] / 1e3:6.1f} as 2 x 1 thread; {limit['plain_threads1_cpu_s_per_window']:.2f} CPU s/window at 1 thread\n"
        f"  Connectile's predictor         {limit['fast_threads2_vox_s'] / 1e3:6.1f} kvox/s with 2 threads, "
        f"{2 * limit['fast_threads1_vox_s'] / 1e3:6.1f} as 2 x 1 thread; {limit['fast_threads1_cpu_s_per_window']:.2f} CPU s/window at 1 thread "
        f"({summary['fast_over_plain_cpu_1thread']:.2f} of plain)\n"
        f"monai      {monai_vs / 1e3:8.1f} kvox/s  ({monai['run_s']:.1f} s)  = {summary['monai_over_its_limit']:.2f} of its forward's limit   "
        f"peak {summary['monai_peak_mib']:.0f} MiB\n"
        f"connectile {conn_vs / 1e3:8.1f} kvox/s  ({conn['run_s']:.1f} s)  = {summary['connectile_over_its_limit']:.2f} of its forward's limit   "
        f"peak {summary['connectile_peak_mib']:.0f} MiB RSS ({summary['connectile_peak_pss_mib']:.0f} MiB PSS), driver + 2 workers\n"
        f"connectile steady state (no worker start-up: busiest worker's pass-1 blocks {max(conn['worker_busy_s'].values()):.1f} s + pass 2 "
        f"{conn['pass_seconds'].get('borders', 0.0):.1f} s = {steady_s:.1f} s): {steady_vs / 1e3:.1f} kvox/s\n"
        f"connectile / monai = {summary['connectile_over_monai']:.2f}x total (goal 1.2x); steady state {summary['connectile_steady_over_monai']:.2f}x; "
        f"outputs differ by at most {diff:.4f} (uint8 step 0.0039)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
