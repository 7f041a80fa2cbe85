#!/usr/bin/env python
"""The checks ``benchmarks/gpu_check.sh`` runs, one per call: each GPU path against its CPU path.

    .venv/bin/python benchmarks/gpu_check.py machine        # what this machine has (GPUs, CuPy, faiss GPUs)
    .venv/bin/python benchmarks/gpu_check.py cupy_cc        # connected components: CuPy vs CPU, same partition
    .venv/bin/python benchmarks/gpu_check.py faiss_gpu      # kNN: faiss IVF on the GPU vs on the CPU, recall vs exact
    .venv/bin/python benchmarks/gpu_check.py predict_amp    # predict on CUDA with AMP (fp16, bf16) vs CPU float32
    .venv/bin/python benchmarks/gpu_check.py ray_train_gpu  # Ray Train, 1 GPU worker vs 1 CPU worker, same steps
    .venv/bin/python benchmarks/gpu_check.py bench_knn      # faiss GPU vs CPU search time at N = 10^6

Each call prints JSON lines: ``{"check": NAME, "agree": true/false, ...}`` where it ran, or
``{"check": NAME, "skipped": "no GPU: ..."}`` where the path's GPU (or its library) is absent, and exits
0 (1 when a GPU result disagrees with the CPU's). Nothing is installed; nothing leaves the machine.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import numpy as np  # noqa: E402

from engine.bench.harness import emit, machine_info  # noqa: E402


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _cupy() -> str | None:
    """None where CuPy sees a GPU, else why not."""
    from engine.kernels import gpu_available

    try:
        import cupy  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return "CuPy is not installed in this environment"
    return None if gpu_available() else "no GPU visible to CuPy"


def check_machine() -> bool:
    from engine.select.knn import faiss_gpus

    m = machine_info()
    emit({"check": "machine", **m, "torch_cuda": _torch_cuda(), "cupy": _cupy() or "ok", "faiss_gpus": faiss_gpus()})
    return True


def check_cupy_cc() -> bool:
    why = _cupy()
    if why:
        emit({"check": "cupy_cc", "skipped": f"no GPU: {why}"})
        return True
    from bench_cc import make_input, same_partition

    from engine.ops.label import label_volume

    with tempfile.TemporaryDirectory(prefix="gpu-cc-") as tmp:
        inp = f"{tmp}/cc.zarr/prob"
        make_input(inp, 256, 64, 0.2)
        out: dict[str, Any] = {"check": "cupy_cc", "shape": [256] * 3}
        for device in ("cpu", "gpu"):
            t = time.perf_counter()
            r = label_volume(inp, f"{tmp}/cc.zarr/{device}", threshold=0.5, block=(128,) * 3, chunks=(64,) * 3, device=device, backend="serial",  # type: ignore[arg-type]
                             progress=False, state_dir=f"{tmp}/state-{device}")
            out[f"{device}_s"], out[f"{device}_objects"] = round(time.perf_counter() - t, 2), r.objects
        # same_partition reads the second volume with TensorStore's zarr driver (a path, not a URL)
        out["agree"] = bool(same_partition(f"{tmp}/cc.zarr/cpu", f"{tmp}/cc.zarr/gpu", 256)) and out["cpu_objects"] == out["gpu_objects"]
    emit(out)
    return bool(out["agree"])


def _structured(n: int, dim: int = 80, seed: int = 0) -> np.ndarray:
    from bench_select import embeddings, grid_for

    return embeddings(grid_for(n), dim, seed)


def check_faiss_gpu() -> bool:
    from engine.select.knn import IVFIndex, _balls_from_hits, exact_knn, faiss_gpus

    if faiss_gpus() == 0:
        emit({"check": "faiss_gpu", "skipped": "no GPU: faiss sees none (faiss-cpu is installed; faiss-gpu needs its own wheel)"})
        return True
    x = _structured(100_000)
    index = IVFIndex.build(x, seed=0)
    rows = np.arange(0, len(x), 97)
    index.index.nprobe = 16
    t = time.perf_counter()
    d, ids = index.index.search(index.x[rows], 31)  # the CPU index itself
    cpu = _balls_from_hits(d, ids, rows, 30, True)
    cpu_s = time.perf_counter() - t
    t = time.perf_counter()
    gpu = index.search(rows, 30, 16)  # through the GPU copy
    gpu_s = time.perf_counter() - t
    exact = exact_knn(x, 30, rows=rows)
    same = float(np.mean([len(np.intersect1d(a, b)) / 30 for a, b in zip(cpu, gpu, strict=True)]))
    recall = float(np.mean([len(np.intersect1d(a, b)) / 30 for a, b in zip(exact, gpu, strict=True)]))
    emit({"check": "faiss_gpu", "queries": len(rows), "cpu_s": round(cpu_s, 3), "gpu_s": round(gpu_s, 3), "overlap_with_cpu": round(same, 4),
          "recall_vs_exact": round(recall, 4), "agree": same >= 0.99 and recall >= 0.95})
    return same >= 0.99 and recall >= 0.95


def check_predict_amp() -> bool:
    if not _torch_cuda():
        emit({"check": "predict_amp", "skipped": "no GPU: torch sees no CUDA device"})
        return True
    import torch

    from engine.models import ModelConfig, build_model, save_checkpoint
    from engine.ops.predict import predict_volume
    from engine.storage import create_volume, open_volume

    ok = True
    with tempfile.TemporaryDirectory(prefix="gpu-predict-") as tmp:
        torch.manual_seed(0)
        cfg = ModelConfig()
        save_checkpoint(f"{tmp}/ckpt", build_model(cfg), cfg, {"note": "gpu_check random weights"})
        shape = (32, 256, 256)
        v = create_volume(f"{tmp}/d.zarr/raw", shape, "uint8", (16, 128, 128))
        v.write(v.box, np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8))
        outs: dict[str, np.ndarray] = {}
        for name, device, amp in (("cpu", "cpu", "none"), ("cuda_fp32", "cuda", "none"), ("cuda_fp16", "cuda", "fp16"), ("cuda_bf16", "cuda", "bf16")):
            t = time.perf_counter()
            predict_volume(f"{tmp}/ckpt", v.url, f"{tmp}/d.zarr/{name}", window=(16, 128, 128), overlap=0.5, backend="serial", device=device, amp=amp,
                           progress=False, state_dir=f"{tmp}/state-{name}", overwrite=True, block=(32, 128, 128))
            sec = time.perf_counter() - t
            got = open_volume(f"{tmp}/d.zarr/{name}")
            outs[name] = got.read(got.box).astype(np.int16)
            diff = int(np.abs(outs[name] - outs["cpu"]).max())
            tol = {"cpu": 0, "cuda_fp32": 1, "cuda_fp16": 3, "cuda_bf16": 8}[name]  # uint8 steps
            emit({"check": "predict_amp", "variant": name, "shape": list(shape), "seconds": round(sec, 2), "mvox_per_s": round(np.prod(shape) / sec / 1e6, 3),
                  "max_abs_diff_uint8_steps_vs_cpu": diff, "tolerance": tol, "agree": diff <= tol})
            ok &= diff <= tol
    return ok


def check_ray_train_gpu() -> bool:
    if not _torch_cuda():
        emit({"check": "ray_train_gpu", "skipped": "no GPU: torch sees no CUDA device"})
        return True
    from scipy import ndimage

    from engine.config import parse_config
    from engine.geometry import Box
    from engine.learn import TrainConfig, train
    from engine.learn.history import read_history
    from engine.runtime import connect, shutdown
    from engine.storage import create_volume

    with tempfile.TemporaryDirectory(prefix="gpu-train-") as tmp:
        rng = np.random.default_rng(0)
        labels = ((ndimage.gaussian_filter(rng.standard_normal((12, 64, 64)), (1, 3, 3)) > 0.15) * 255).astype(np.uint8)
        raw = (np.clip(0.3 + 0.4 * (labels > 0) + 0.1 * rng.standard_normal(labels.shape), 0, 1) * 255).astype(np.uint8)
        urls = []
        for name, arr in (("raw", raw), ("labels", labels)):
            vol = create_volume(f"{tmp}/data.zarr/{name}", shape=arr.shape, dtype=arr.dtype, chunks=(4, 32, 32))
            vol.write(Box((0, 0, 0), arr.shape), arr)
            urls.append(vol.url)
        connect(num_cpus=4, dashboard=False)  # Ray finds the GPU itself
        losses = {}
        try:
            for name, gpu in (("cpu", False), ("gpu", True)):
                cfg = parse_config(TrainConfig, {
                    "model": {"filters": [4, 8, 8], "anisotropic_stages": 1}, "data": {"raw": urls[0], "labels": urls[1]}, "crop": [4, 32, 32],
                    "batch_size": 2, "steps": 6, "checkpoint_every": 6, "log_every": 1, "output": f"{tmp}/{name}", "progress": False, "seed": 0,
                    "augment": {"flip": False, "transpose": False, "rot90": False, "intensity": 0, "noise": 0, "blur": 0, "missing_section": 0, "misalign": 0, "elastic": 0},
                    "ray": {"num_workers": 1, "use_gpu": gpu},
                })
                t = time.perf_counter()
                summary = train(cfg)
                losses[name] = [r["loss"] for r in read_history(Path(tmp) / name / "history.jsonl") if "loss" in r]
                emit({"check": "ray_train_gpu", "side": name, "steps": summary["step"], "seconds": round(time.perf_counter() - t, 1), "losses": [round(v, 5) for v in losses[name]]})
        finally:
            shutdown()
    first = abs(losses["gpu"][0] - losses["cpu"][0]) / max(abs(losses["cpu"][0]), 1e-9)
    ok = len(losses["gpu"]) == len(losses["cpu"]) == 6 and bool(np.isfinite(losses["gpu"]).all()) and first <= 0.02
    emit({"check": "ray_train_gpu", "first_loss_rel_diff": round(first, 5), "agree": ok})
    return ok


def bench_knn() -> bool:
    from engine.select.knn import IVFIndex, _balls_from_hits, faiss_gpus, knn_recall

    if faiss_gpus() == 0:
        emit({"bench": "knn_gpu", "skipped": "no GPU: faiss sees none"})
        return True
    x = _structured(1_000_000)
    t = time.perf_counter()
    index = IVFIndex.build(x, seed=0)
    build_s = time.perf_counter() - t
    rows = np.arange(len(x))
    t = time.perf_counter()
    gpu = np.concatenate([index.search(rows[s : s + 65536], 30, 16) for s in range(0, len(x), 65536)])
    gpu_s = time.perf_counter() - t
    index.index.nprobe = 16
    t = time.perf_counter()
    sub = rows[:: 10]  # the CPU on a tenth of the queries (its time scaled by 10)
    d, ids = index.index.search(index.x[sub], 31)
    _balls_from_hits(d, ids, sub, 30, True)
    cpu_s = (time.perf_counter() - t) * 10
    emit({"bench": "knn_gpu", "N": len(x), "k": 30, "nprobe": 16, "build_s": round(build_s, 1), "connectile_gpu_search_s": round(gpu_s, 2),
          "peer": f"the same faiss index on the CPU ({os.cpu_count()} threads; a tenth of the queries, time x 10: extrapolated)",
          "peer_cpu_search_s_extrapolated": round(cpu_s, 2), "ratio_extrapolated": round(cpu_s / gpu_s, 2), "recall": round(knn_recall(x, gpu, sample=500), 4)})
    return True


CHECKS = {"machine": check_machine, "cupy_cc": check_cupy_cc, "faiss_gpu": check_faiss_gpu, "predict_amp": check_predict_amp,
          "ray_train_gpu": check_ray_train_gpu, "bench_knn": bench_knn}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in CHECKS:
        print(f"usage: gpu_check.py {{{','.join(CHECKS)}}}", file=sys.stderr)
        return 2
    return 0 if CHECKS[argv[0]]() else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
