#!/usr/bin/env python
"""Inference benchmark, like with like: Connectile's ``predict_volume`` vs MONAI's
``sliding_window_inference`` on the same converted model, vs a Ray Data peer, and the conversion's own gain.

    .venv/bin/python benchmarks/bench_infer.py            # 32 x 512 x 512, 3 rounds, 2 Ray workers
    .venv/bin/python benchmarks/bench_infer.py --quick    # 16 x 512 x 512
    .venv/bin/python benchmarks/bench_infer.py --smoke    # 16 x 192 x 192, narrow model, 1 round: checks that the script runs

One model (the papers' base residual SE U-Net of ``engine.models``, default ``ModelConfig``, random
weights, eval mode, sigmoid), window 16 x 128 x 128, overlap 0.5, Gaussian blending (sigma 0.125 of the
window, MONAI's map), zarr in (uint8), uint8 zarr out (``round(255 p)``) on every side:

conversion  the plain model vs the converted one (``engine.infer.TorchPredictor(model, channels_last=True)``,
            what predict's workers build on the CPU: batch norms folded, channels-last 3D, 1x1x1
            convolutions as matrix products) on the same non-overlapping windows, batch 1, with 2 torch
            threads and with 1; outputs asserted equal within 1e-4. Its own line: the conversion's gain
            is not the engine's. These figures are also each side's forward *limit*: the converted
            forward with 2 threads (one process: MONAI's limit) or twice its 1-thread rate (two
            single-thread workers on two free cores), whichever is higher (Connectile's limit).
connectile  ``predict_volume(..., backend="ray", workers=2, threads=1)`` with its default block shape
            (``engine.ops.predict.DEFAULT_BLOCK``, nothing hand-picked) in a fresh process: *cold* =
            ``ray.init`` + the first call (the cluster's start included); *warm* = a second call in the
            same process (cluster up; the call still starts its two workers: torch import, model load);
            *kept* = a third call on the workers the warm call started, held by the caller's
            ``RayBackend(keep_workers=True)`` (``backend=``): the model loaded, as MONAI's is. MONAI is
            compared with *kept* (like with like), and with warm and cold as well.
monai       ``sliding_window_inference`` with the *converted* model (the same ``TorchPredictor``), torch
            threads 2 (one process on two cores), ``sw_batch_size`` 1 (batch 1 is the fastest forward
            on this CPU), ``torch.inference_mode``, one warm-up window first; timed: reading the zarr,
            the inference, the uint8 conversion and the zarr write (``compute_s`` is the inference alone).
raydata     what a Ray user would write without Connectile: ``ray.data.from_items`` over the same global
            windows (MONAI's grid), ``map_batches`` with a callable class on a fixed actor pool
            (``compute=ray.data.ActorPoolStrategy(size=workers)``, ``num_cpus=1`` each: concurrency =
            cores) that reads each window with TensorStore, runs the same converted model (1 thread,
            windows one at a time: batch 1) and returns the window's prediction times MONAI's Gaussian
            map; the driver adds them into whole-volume accumulators, divides and writes the uint8 zarr
            with TensorStore. ``batch_size`` rows (windows) per call: 4 by default (``--peer-batch``).
            Cold and warm as for Connectile (Ray Data starts its actor pool in every execution: no kept
            figure); compared with Connectile's warm and cold.

Every round runs each side in a fresh child process (this script with ``--child``), the sides' order
reversed each round (``engine.bench.harness.reversed_orders``: every pair of sides swaps); medians of the rounds (3 by default) are
reported with the runs. The outputs are asserted equal: Connectile vs MONAI and vs the Ray Data peer
within one uint8 step (the same float sums in another order can round the other way at a .5). Memory:
peak summed RSS of each side's processes (driver + Ray actors, sampled every 0.5 s; MONAI its VmHWM).
"Of its limit" = windows x window voxels / seconds / the side's forward limit (1.0: all the time in the
model's forward, no overhead). One JSON line per measurement on stdout (``ratio`` above 1: Connectile
faster); a short table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.bench import harness  # noqa: E402 - benchmarks are scripts, not a package
from engine.bench.harness import MIB, RssSampler, emit, machine_info, reversed_orders  # noqa: E402
from engine.bench.harness import median as _median  # noqa: E402

SIZES = {"full": (32, 512, 512), "quick": (16, 512, 512), "smoke": (16, 192, 192)}
WINDOW = (16, 128, 128)
OVERLAP = 0.5
CHUNKS = (16, 128, 128)
GOAL_OF_LIMIT = 0.95
GOAL_OVER_MONAI = 1.1
#: outputs equal within one uint8 step (255 p rounded: equal sums in another order can round apart)
UINT8_TOL = 1
#: plain vs converted model, probabilities (float rounding of the fold and the GEMMs: ~1e-7)
FORWARD_TOL = 1e-4


def run_child(name: str, params: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
    return harness.run_child(__file__, name, params, timeout=timeout, cwd=ROOT)


def _converted(model: Any) -> Any:
    """The forward predict's CPU workers run (``PredictOp.setup`` -> ``model_window``): the same class, options."""
    from engine.infer import TorchPredictor

    return TorchPredictor(model, channels_last=True, fold_norms=True)


def _load_model(ckpt: str) -> Any:
    from engine.models import load_checkpoint

    model, _, _ = load_checkpoint(ckpt, device="cpu")
    return model


def _zarr_spec(path: str) -> dict[str, Any]:
    return {"driver": "zarr", "kvstore": {"driver": "file", "path": path}}


def _read(path: str) -> Any:
    import tensorstore as ts

    return ts.open(_zarr_spec(path)).result().read().result()


def _write_uint8(path: str, data: Any) -> None:
    import tensorstore as ts

    spec = {**_zarr_spec(path), "metadata": {"dtype": "|u1", "shape": list(data.shape), "chunks": list(CHUNKS)}, "create": True, "delete_existing": True}
    ts.open(spec).result().write(data).result()


def _to_uint8(prob: Any) -> Any:
    import numpy as np

    return np.round(np.clip(prob, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)


def global_windows(shape: tuple[int, ...], window: tuple[int, ...], overlap: float) -> list[tuple[int, int, int]]:
    """MONAI's window starts (``dense_patch_slices``): stride ``int(w (1 - overlap))``, the last start
    clamped to ``size - w``; what a Ray Data user writes in a few lines.

    >>> global_windows((16, 192, 192), (16, 128, 128), 0.5)
    [(0, 0, 0), (0, 0, 64), (0, 64, 0), (0, 64, 64)]
    """
    import itertools

    axes = []
    for s, w in zip(shape, window, strict=True):
        step = max(1, int(w * (1 - overlap)))
        n = -(-(s - w) // step) + 1 if s > w else 1
        axes.append(sorted({min(i * step, s - w) for i in range(n)}))
    return [(int(z), int(y), int(x)) for z, y, x in itertools.product(*axes)]


# -- children ----------------------------------------------------------------------------------
def child_forward(p: dict[str, Any]) -> dict[str, Any]:
    """Plain vs converted forward on the same non-overlapping windows (batch 1), 2 threads and 1 thread,
    the variants' order alternating; wall and CPU seconds per window; outputs asserted equal."""
    import numpy as np
    import torch

    model = _load_model(p["checkpoint"])
    raw = _read(p["input"])
    wz, wy, wx = p["window"]
    starts = [(z, y, x) for z in range(0, raw.shape[0] - wz + 1, wz) for y in range(0, raw.shape[1] - wy + 1, wy) for x in range(0, raw.shape[2] - wx + 1, wx)]
    xs = [torch.from_numpy(raw[z : z + wz, y : y + wy, x : x + wx].astype(np.float32) / 255)[None, None] for z, y, x in starts[: p["windows"]]]
    fast = _converted(model)

    def plain(x: Any) -> Any:
        with torch.inference_mode():
            return torch.sigmoid(model(x))

    forwards = {"plain": plain, "converted": fast}
    diff = max(float((plain(x) - fast(x)).abs().max()) for x in xs[:2])
    assert diff <= FORWARD_TOL, f"the converted model differs from the plain one by {diff:.2e} (> {FORWARD_TOL})"
    out: dict[str, Any] = {"windows": len(xs), "max_abs_diff_prob": diff}
    for i, threads in enumerate((2, 1)):
        torch.set_num_threads(threads)
        for name in (("plain", "converted") if i % 2 == 0 else ("converted", "plain")):
            forward = forwards[name]
            forward(xs[0])  # warm-up (oneDNN primitives for this thread count)
            t0, c0 = time.perf_counter(), time.process_time()
            for x in xs:
                forward(x)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            out[f"{name}_t{threads}_vox_s"] = len(xs) * wz * wy * wx / dt
            out[f"{name}_t{threads}_s_per_window"] = dt / len(xs)
            out[f"{name}_t{threads}_cpu_s_per_window"] = cpu / len(xs)
    return out


def child_monai(p: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    torch.set_num_threads(2)
    net = _converted(_load_model(p["checkpoint"]))
    net(torch.zeros(1, 1, *p["window"]))  # warm-up: MONAI gets its first forward's set-up outside the timer
    t0 = time.perf_counter()
    vol = torch.from_numpy(_read(p["input"]).astype(np.float32) / 255)[None, None]
    t1, c1 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        out = sliding_window_inference(vol, p["window"], 1, net, overlap=p["overlap"], mode="gaussian", sigma_scale=0.125)
    t2, c2 = time.perf_counter(), time.process_time()
    assert isinstance(out, torch.Tensor)
    _write_uint8(p["output"], _to_uint8(out[0, 0].numpy()))
    t3 = time.perf_counter()
    return {"run_s": t3 - t0, "read_s": t1 - t0, "compute_s": t2 - t1, "compute_cpu_s": c2 - c1, "write_s": t3 - t2, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its Ray actor processes (``ray::`` but not idle
    workers or Ray's daemons) so far: the kept workers live across the call, so a difference is the call's."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for c in me.children(recursive=True):
        try:
            cmd = (c.cmdline() or [""])[0]
            if cmd.startswith("ray::") and not cmd.startswith("ray::IDLE"):
                total += sum(c.cpu_times()[:2])
        except psutil.Error:
            continue
    return float(total)


def child_connectile(p: dict[str, Any]) -> dict[str, Any]:
    """Three calls in one process: cold (``ray.init`` + a call), warm (cluster up, the call starts its
    workers: the same as a plain second call), kept (the workers the warm call started, held by the
    caller's ``RayBackend(keep_workers=True)``: torch imported, only the op set up again)."""
    from engine.ops.predict import DEFAULT_BLOCK, predict_volume
    from engine.runtime import connect, shutdown
    from engine.runtime.backends import RayBackend

    def once(tag: str, backend: Any) -> tuple[float, Any, dict[str, int]]:
        sampler = RssSampler(interval=0.5)  # reading smaps costs CPU that the two workers need
        sampler.start()
        t = time.perf_counter()
        r = predict_volume(
            p["checkpoint"], p["input"], p["output"] + tag, block=DEFAULT_BLOCK, window=tuple(p["window"]), overlap=p["overlap"], blend="gaussian",
            chunks=tuple(CHUNKS), batch_size=1, threads=1, device="cpu", backend=backend, workers=p["workers"], progress=False,
            state_dir=p["state_dir"] + tag, overwrite=True,
        )
        return time.perf_counter() - t, r, sampler.stop()

    t0 = time.perf_counter()
    connect(num_cpus=p["workers"], dashboard=False)
    cluster_s = time.perf_counter() - t0
    cold_s, _, _ = once("_cold", "ray")
    with RayBackend(p["workers"], keep_workers=True) as kept:
        warm_s, _, _ = once("_warm", kept)
        cpu0 = _cpu_seconds()
        kept_s, r, peak = once("", kept)
        cpu_s = _cpu_seconds() - cpu0
    shutdown()
    return {
        "cold_s": cluster_s + cold_s, "warm_s": warm_s, "kept_s": kept_s, "cluster_start_s": cluster_s, "blocks": r.blocks,
        "block_shape": list(r.block_shape), "windows": r.windows, "windows_computed": r.windows_computed, "pass_seconds": r.pass_seconds,
        "peak_rss": peak["work_rss"], "peak_pss": peak["work_pss"], "kept_cpu_s": cpu_s,
    }


class _WindowPredictor:
    """The Ray Data peer's callable class: one per actor; reads its windows, runs the model, weighs."""

    def __init__(self, checkpoint: str, source: str, window: tuple[int, int, int]) -> None:
        import tensorstore as ts
        import torch
        from monai.data.utils import compute_importance_map

        torch.set_num_threads(1)  # one actor per core
        self.net = _converted(_load_model(checkpoint))
        self.src = ts.open(_zarr_spec(source)).result()
        self.window = window
        self.weight = compute_importance_map(window, mode="gaussian", sigma_scale=0.125, device="cpu").numpy().astype("float32")

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np
        import torch

        wz, wy, wx = self.window
        preds = []
        for z, y, x in zip(batch["z"], batch["y"], batch["x"], strict=True):
            raw = self.src[z : z + wz, y : y + wy, x : x + wx].read().result()
            prob = self.net(torch.from_numpy(raw.astype(np.float32) / 255)[None, None])[0, 0].numpy()
            preds.append(prob * self.weight)
        return {"z": batch["z"], "y": batch["y"], "x": batch["x"], "pred": np.stack(preds)}


def raydata_predict(checkpoint: str, source: str, output: str, window: tuple[int, int, int], overlap: float, workers: int, batch_size: int) -> int:
    """Blended sliding-window inference with Ray Data (the peer); returns the number of windows."""
    import numpy as np
    import ray
    import tensorstore as ts
    from monai.data.utils import compute_importance_map

    shape = tuple(ts.open(_zarr_spec(source)).result().shape)
    starts = global_windows(shape, window, overlap)
    ds = ray.data.from_items([{"z": z, "y": y, "x": x} for z, y, x in starts]).map_batches(
        _WindowPredictor, fn_constructor_args=(checkpoint, source, window), batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1, batch_format="numpy",
    )
    weight = compute_importance_map(window, mode="gaussian", sigma_scale=0.125, device="cpu").numpy().astype(np.float32)
    acc = np.zeros(shape, np.float32)
    wsum = np.zeros(shape, np.float32)
    wz, wy, wx = window
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for z, y, x, pred in zip(batch["z"], batch["y"], batch["x"], batch["pred"], strict=True):
            acc[z : z + wz, y : y + wy, x : x + wx] += pred
            wsum[z : z + wz, y : y + wy, x : x + wx] += weight
    _write_uint8(output, _to_uint8(acc / wsum))
    return len(starts)


def child_raydata(p: dict[str, Any]) -> dict[str, Any]:
    import logging

    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=p["workers"], include_dashboard=False, logging_level=logging.WARNING, _system_config={"worker_niceness": 0})
    cluster_s = time.perf_counter() - t0
    ray.data.DataContext.get_current().enable_progress_bars = False
    def once(output: str) -> int:
        wz, wy, wx = p["window"]
        return raydata_predict(p["checkpoint"], p["input"], output, (wz, wy, wx), p["overlap"], p["workers"], p["batch_size"])

    t = time.perf_counter()
    once(p["output"] + "_cold")
    cold_s = time.perf_counter() - t
    sampler = RssSampler(interval=0.5)
    sampler.start()
    t = time.perf_counter()
    n = once(p["output"])
    warm_s = time.perf_counter() - t
    peak = sampler.stop()
    ray.shutdown()
    return {"cold_s": cluster_s + cold_s, "warm_s": warm_s, "cluster_start_s": cluster_s, "windows": n, "peak_rss": peak["work_rss"], "peak_pss": peak["work_pss"]}


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"forward": child_forward, "monai": child_monai, "connectile": child_connectile, "raydata": child_raydata}


# -- driver side -------------------------------------------------------------------------------
def make_inputs(d: Path, shape: tuple[int, int, int], smoke: bool = False) -> tuple[str, str]:
    import numpy as np
    import torch

    from engine.models import ModelConfig, build_model, save_checkpoint
    from engine.storage import create_volume

    torch.manual_seed(0)
    cfg = ModelConfig(filters=[4, 4, 4, 4, 4]) if smoke else ModelConfig()  # smoke: the same architecture, narrow
    model = build_model(cfg)
    with torch.no_grad():  # batch norms with non-trivial statistics, so that folding them is tested
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None and m.running_var is not None:
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ckpt = str(d / "checkpoint")
    save_checkpoint(ckpt, model, cfg, {"note": "bench_infer random weights"})
    path = str(d / "raw.zarr")
    v = create_volume(path, shape, "uint8", CHUNKS)
    v.write(v.box, np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
    return ckpt, path


def _compare(a: str, b: str, what: str) -> int:
    """Max |a - b| of two uint8 zarrs, asserted within :data:`UINT8_TOL`."""
    import numpy as np

    x, y = _read(a), _read(b)
    assert x.shape == y.shape, f"{what}: shapes {x.shape} vs {y.shape}"
    diff = int(np.abs(x.astype(np.int16) - y.astype(np.int16)).max())
    assert diff <= UINT8_TOL, f"{what}: outputs differ by {diff} uint8 steps (> {UINT8_TOL})"
    return diff


def run_rounds(args: argparse.Namespace, d: Path, shape: tuple[int, int, int], ckpt: str, url: str) -> dict[str, list[dict[str, Any]]]:
    common = {"checkpoint": ckpt, "input": url, "window": WINDOW, "overlap": OVERLAP}
    params = {
        "forward": {**common, "windows": args.limit_windows},
        "monai": {**common, "output": str(d / "monai.zarr")},
        "connectile": {**common, "output": str(d / "connectile.zarr"), "workers": args.workers, "state_dir": str(d / "state")},
        "raydata": {**common, "output": str(d / "raydata.zarr"), "workers": args.workers, "batch_size": args.peer_batch},
    }
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in params}
    for rnd, order in enumerate(reversed_orders(list(params), args.repeats)):
        for side in order:
            r = run_child(side, params[side])
            runs[side].append(r)
            # each run on stderr (chatter for `connectile bench`); the medians' lines carry the runs too
            print(json.dumps({"run": rnd + 1, "side": side, **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}}), file=sys.stderr, flush=True)
        runs["connectile"][-1]["diff_monai"] = _compare(params["connectile"]["output"], params["monai"]["output"], "connectile vs monai")
        runs["connectile"][-1]["diff_raydata"] = _compare(params["connectile"]["output"], params["raydata"]["output"], "connectile vs ray data")
    return runs


def report(shape: tuple[int, int, int], runs: dict[str, list[dict[str, Any]]], workers: int, peer_batch: int) -> list[dict[str, Any]]:
    """The JSON lines of the medians (conversion, MONAI on the same model, Ray Data)."""
    import numpy as np

    def med(side: str, key: str) -> float:
        return _median([float(r[key]) for r in runs[side]])

    def runs_of(side: str, key: str) -> list[float]:
        return [round(float(r[key]), 2) for r in runs[side]]

    c = runs["connectile"][-1]
    n_windows = int(c["windows"])
    work = n_windows * float(np.prod(WINDOW))  # window voxels the model must see once
    limit_2t = med("forward", "converted_t2_vox_s")
    limit_conn = max(limit_2t, workers * med("forward", "converted_t1_vox_s"))
    kept, warm, cold = med("connectile", "kept_s"), med("connectile", "warm_s"), med("connectile", "cold_s")
    monai_s, monai_compute = med("monai", "run_s"), med("monai", "compute_s")
    peer_warm, peer_cold = med("raydata", "warm_s"), med("raydata", "cold_s")
    diff_monai = max(int(r["diff_monai"]) for r in runs["connectile"])
    diff_peer = max(int(r["diff_raydata"]) for r in runs["connectile"])
    base = {"shape": list(shape), "window": list(WINDOW), "overlap": OVERLAP, "windows": n_windows, "workers": workers, "repeats": len(runs["connectile"])}
    conv = {
        "bench": "infer_conversion", **base, "peer": "the plain model (same windows, batch 1)",
        "connectile_kvox_per_s": round(med("forward", "converted_t1_vox_s") / 1e3, 1), "peer_kvox_per_s": round(med("forward", "plain_t1_vox_s") / 1e3, 1),
        "ratio": round(med("forward", "plain_t1_cpu_s_per_window") / med("forward", "converted_t1_cpu_s_per_window"), 3),
        "ratio_def": "plain / converted CPU seconds per window at 1 thread",
        "ratio_2threads_wall": round(med("forward", "converted_t2_vox_s") / med("forward", "plain_t2_vox_s"), 3),
        "s_per_window": {k: round(med("forward", f"{v}_s_per_window"), 3) for k, v in
                         (("plain_2t", "plain_t2"), ("plain_1t", "plain_t1"), ("converted_2t", "converted_t2"), ("converted_1t", "converted_t1"))},
        "max_abs_diff_prob": max(float(r["max_abs_diff_prob"]) for r in runs["forward"]), "agree": True,
        "limit_monai_kvox_s": round(limit_2t / 1e3, 1), "limit_connectile_kvox_s": round(limit_conn / 1e3, 1),
    }
    monai = {
        "bench": "infer", "variant": "monai_same_model", **base, "peer": "MONAI sliding_window_inference, same converted model, 2 threads",
        "connectile_s": round(kept, 2), "peer_s": round(monai_s, 2), "ratio": round(monai_s / kept, 3),
        "ratio_warm": round(monai_s / warm, 3), "ratio_cold": round(monai_s / cold, 3),
        "ratio_def": "median MONAI s (read + infer + write; model loaded, warmed up) / median Connectile s with its workers up (kept: model "
                     "loaded, as MONAI's); warm: the call starts its workers; cold: ray.init + the first call",
        "connectile_warm_s": round(warm, 2), "connectile_cold_s": round(cold, 2), "connectile_kept_runs_s": runs_of("connectile", "kept_s"),
        "connectile_warm_runs_s": runs_of("connectile", "warm_s"), "connectile_cold_runs_s": runs_of("connectile", "cold_s"),
        "peer_runs_s": runs_of("monai", "run_s"), "peer_compute_s": round(monai_compute, 2), "cluster_start_s": round(med("connectile", "cluster_start_s"), 2),
        "connectile_of_limit": round(work / kept / limit_conn, 3), "connectile_of_limit_warm": round(work / warm / limit_conn, 3),
        "connectile_of_limit_cold": round(work / cold / limit_conn, 3),
        "monai_of_limit": round(work / monai_compute / limit_2t, 3), "blocks": c["blocks"], "block_shape": c["block_shape"],
        # CPU seconds (less sensitive to other jobs on the cores than wall time): the same windows' forward
        # at its cheapest (converted, 1 thread; MONAI's at 2 threads) over what each side spent
        "connectile_cpu_s": round(med("connectile", "kept_cpu_s"), 2), "monai_cpu_s": round(med("monai", "compute_cpu_s"), 2),
        "connectile_of_limit_cpu": round(n_windows * med("forward", "converted_t1_cpu_s_per_window") / med("connectile", "kept_cpu_s"), 3),
        "monai_of_limit_cpu": round(n_windows * med("forward", "converted_t2_cpu_s_per_window") / med("monai", "compute_cpu_s"), 3),
        "cpu_ratio": round(med("monai", "compute_cpu_s") / med("connectile", "kept_cpu_s"), 3),
        "windows_computed": c["windows_computed"], "pass_seconds": c["pass_seconds"],
        "connectile_peak_mib": round(med("connectile", "peak_rss") / MIB), "peer_peak_mib": round(med("monai", "peak_rss") / MIB),
        "max_abs_diff_uint8": diff_monai, "max_abs_diff_uint8_vs_monai": diff_monai / 255, "agree": True,
        "meets_target": work / kept / limit_conn >= GOAL_OF_LIMIT and monai_s / kept >= GOAL_OVER_MONAI,
        "meets_target_warm": work / warm / limit_conn >= GOAL_OF_LIMIT and monai_s / warm >= GOAL_OVER_MONAI,
    }
    peer = {
        "bench": "infer", "variant": "ray_data", **base,
        "peer": f"ray.data map_batches, ActorPoolStrategy(size={workers}), batch_size {peer_batch}, same converted model",
        "connectile_s": round(warm, 2), "peer_s": round(peer_warm, 2), "ratio": round(peer_warm / warm, 3), "ratio_cold": round(peer_cold / cold, 3),
        "ratio_def": "median Ray Data s / median Connectile s, warm: cluster up, each call starts its workers (cold: both with ray.init and the first call)",
        "peer_cold_s": round(peer_cold, 2), "connectile_cold_s": round(cold, 2), "peer_warm_runs_s": runs_of("raydata", "warm_s"),
        "peer_cold_runs_s": runs_of("raydata", "cold_s"), "peer_of_limit_warm": round(work / peer_warm / limit_conn, 3),
        "connectile_peak_mib": monai["connectile_peak_mib"], "peer_peak_mib": round(med("raydata", "peak_rss") / MIB),
        "max_abs_diff_uint8": diff_peer, "agree": True,
    }
    return [conv, monai, peer]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 x 512 x 512")
    ap.add_argument("--smoke", action="store_true", help="seconds: 16 x 192 x 192 (4 windows), 4 filters per stage, 1 round; checks that the script runs")
    ap.add_argument("--shape", default=None, help="volume z,y,x (default 32,512,512: 4 default blocks of 147 windows, 75/72 per worker)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, help="rounds, the sides' order rotating; medians reported (default 3; 1 with --smoke)")
    ap.add_argument("--peer-batch", type=int, default=4, help="Ray Data map_batches batch_size (windows per call)")
    ap.add_argument("--limit-windows", type=int, default=8, help="windows timed per forward variant")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return harness.child_main(CHILDREN, args.child, args.params)
    if args.smoke:
        args.limit_windows = min(args.limit_windows, 2)
        args.peer_batch = min(args.peer_batch, 2)
    args.repeats = args.repeats or (1 if args.smoke else 3)

    shape = tuple(int(v) for v in args.shape.split(",")) if args.shape else SIZES["smoke" if args.smoke else "quick" if args.quick else "full"]
    assert len(shape) == 3
    machine = machine_info()
    emit({"bench": "machine", **machine, "shape": list(shape), "window": list(WINDOW), "overlap": OVERLAP, "quick": args.quick, "smoke": args.smoke})
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
        d = Path(tmp)
        ckpt, url = make_inputs(d, shape, args.smoke)  # type: ignore[arg-type]
        runs = run_rounds(args, d, shape, ckpt, url)  # type: ignore[arg-type]
    conv, monai, peer = report(shape, runs, args.workers, args.peer_batch)  # type: ignore[arg-type]
    for line in (conv, monai, peer):
        emit(line)
    load_end = round(os.getloadavg()[0], 2)
    print(
        f"\n{harness.machine_short(machine)} (load at the end {load_end}); volume {shape}, window {WINDOW}, overlap {OVERLAP}, gaussian, "
        f"{monai['windows']} windows, {monai['blocks']} default blocks of {tuple(monai['block_shape'])}; medians of {monai['repeats']} rounds\n"
        f"conversion (same windows, batch 1): plain {conv['s_per_window']['plain_1t']:.3f} s/window at 1 thread, converted "
        f"{conv['s_per_window']['converted_1t']:.3f}: plain / converted CPU s = {conv['ratio']:.2f}x; wall with 2 threads {conv['ratio_2threads_wall']:.2f}x\n"
        f"limits: MONAI's (converted, 2 threads) {conv['limit_monai_kvox_s']:.0f} kvox/s, Connectile's ({args.workers} x 1 thread or 2 threads) "
        f"{conv['limit_connectile_kvox_s']:.0f} kvox/s\n"
        f"connectile  kept {monai['connectile_s']:7.2f} s ({monai['connectile_of_limit']:.2f} of its limit, goal {GOAL_OF_LIMIT})   "
        f"warm {monai['connectile_warm_s']:7.2f} s ({monai['connectile_of_limit_warm']:.2f})   "
        f"cold {monai['connectile_cold_s']:7.2f} s ({monai['connectile_of_limit_cold']:.2f}; ray.init {monai['cluster_start_s']:.1f} s)   "
        f"peak {monai['connectile_peak_mib']} MiB\n"
        f"monai       {monai['peer_s']:7.2f} s (inference {monai['peer_compute_s']:.2f} s = {monai['monai_of_limit']:.2f} of its limit)   "
        f"peak {monai['peer_peak_mib']} MiB\n"
        f"ray data    warm {peer['peer_s']:7.2f} s   cold {peer['peer_cold_s']:7.2f} s   peak {peer['peer_peak_mib']} MiB\n"
        f"CPU seconds (driver + workers, kept call / MONAI's inference): {monai['connectile_cpu_s']:.1f} vs {monai['monai_cpu_s']:.1f} = "
        f"{monai['cpu_ratio']:.2f}x; of the forward's CPU cost: connectile {monai['connectile_of_limit_cpu']:.2f}, monai {monai['monai_of_limit_cpu']:.2f}\n"
        f"connectile / monai (same model) = {monai['ratio']:.2f}x kept, {monai['ratio_warm']:.2f}x warm, {monai['ratio_cold']:.2f}x cold "
        f"(goals: {GOAL_OVER_MONAI}x and {GOAL_OF_LIMIT} of the limit): {'met' if monai['meets_target'] else 'NOT met'} kept, "
        f"{'met' if monai['meets_target_warm'] else 'NOT met'} warm\n"
        f"connectile / ray data = {peer['ratio']:.2f}x warm, {peer['ratio_cold']:.2f}x cold\n"
        f"outputs: within {monai['max_abs_diff_uint8']} uint8 step(s) of MONAI's, {peer['max_abs_diff_uint8']} of Ray Data's (asserted <= {UINT8_TOL})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
