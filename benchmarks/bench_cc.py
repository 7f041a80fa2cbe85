#!/usr/bin/env python
"""Connected-components benchmark: Connectile's blockwise labelling vs cc3d on the whole volume.

    .venv/bin/python benchmarks/bench_cc.py            # 512^3, blocks of 128^3, 2 Ray workers, 3 repeats
    .venv/bin/python benchmarks/bench_cc.py --quick    # 256^3, blocks of 64^3, 3 repeats
    .venv/bin/python benchmarks/bench_cc.py --smoke    # 64^3, blocks of 32^3, 1 repeat: checks that the script runs
    .venv/bin/python benchmarks/bench_cc.py --size 768 --repeats 1 --variants uint64

Input: blobby uint8 probabilities (Gaussian-smoothed noise, sigma 3 voxels, mapped so that
``--foreground`` of the voxels, default 20%, are above 0.5: thousands of separate objects, many
crossing block faces) in a zarr v2 array (chunks 64^3, blosc-zstd 3). Both sides read it from the
zarr, threshold at 0.5, label with 26-connectivity and write the labels to a zarr of the same chunks
and compression (Connectile's label codec: blosc zstd 1, bit shuffle), uint64 (the project's label type) or uint32 (variant ``uint32``, both sides):

connectile  ``label_volume(..., backend="ray", workers=2)``: pass A (label each block; its local ids,
            faces and counts to the scratch), face pairs on the same workers, the driver's union-find,
            pass C (final ids from the kept local ids, written). One set of Ray workers serves every pass; their
            start is included; Ray's cluster start (``ray.init``) is reported apart. *Kept*: the same
            call again on workers already started (``RayBackend(keep_workers=True)``, as a pipeline
            keeps them), reported beside (``connectile_kept_s``, ``ratio_kept``); ``ratio`` is the cold one.
cc3d        one process: TensorStore read of the whole array, ``cc3d.connected_components`` at its
            fastest documented setting (``out_dtype=uint32``; for the uint64 variants the labels are then
            cast to uint64, the cast timed as part of labelling), TensorStore write of the whole array.
gpu         the same as connectile with ``device="gpu"``, only where CuPy sees a GPU.

Each side runs in a fresh child process (this script with ``--child``), after the file system's dirty pages are
flushed (``os.sync``: no side pays for the write-back of the previous side's output) and after ``--gap`` seconds idle
(10 by default). Why the gap: on a VM with a memory balloon's free-page reporting (Firecracker's virtio-balloon here),
memory a process frees goes back to the host within seconds, and touching it again costs host page faults. cc3d
allocates about 7 GiB at 1024^3: right after its own run it labelled in 6.5-7.5 s, after 5 s idle in 12.3 s and after
30 s (or after Connectile's run) in 14.1-14.9 s (RESULTS, fifteenth session). Without a gap the rotated order puts
cc3d after itself in some repeats and after Connectile in others, so its median measured the order. The order of the sides is
rotated every repeat (``engine.bench.harness.side_orders``: Connectile first, then cc3d first, ...) and
medians of the repeats (3 by default) are reported with every run. Memory, sampled every 50 ms with the same code on both sides: RSS
(each process's resident pages; shared library pages count once per process) and PSS (shared pages
split between the processes sharing them). For cc3d also its VmHWM (exact peak RSS). For Connectile
the sum over the driver and its Ray actor processes (cmdline ``ray::_Actor...``); idle Ray workers
(``ray::IDLE``) and Ray's daemons (raylet, GCS, ...) are reported apart. The outputs are checked to be
the same partition. One JSON line per measurement on stdout; ``ratio`` is cc3d's time / Connectile's
(above 1: Connectile is faster), ``memory_fraction`` Connectile's peak RSS / cc3d's VmHWM.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine.bench import harness  # noqa: E402 - benchmarks are scripts, not a package
from engine.bench.harness import MIB, RssSampler, emit, machine_info, side_orders  # noqa: E402 - RssSampler: bench_infer imported it from here
from engine.bench.harness import median as _median  # noqa: E402
from engine.bench.harness import version as _version  # noqa: E402

TARGET_RATIO = 1.0  # Connectile throughput / cc3d throughput
TARGET_MEMORY = 0.25  # Connectile peak / cc3d peak
SIZES = {"full": {"size": 512, "block": 128, "chunk": 64}, "quick": {"size": 256, "block": 64, "chunk": 64}, "smoke": {"size": 64, "block": 32, "chunk": 32}}


def run_child(name: str, params: dict[str, Any], ray_tmp: Path | None = None, timeout: float = 1800) -> dict[str, Any]:
    return harness.run_child(__file__, name, params, ray_tmp=ray_tmp, timeout=timeout, cwd=ROOT)


# -- children ----------------------------------------------------------------------------------
def child_connectile(p: dict[str, Any]) -> dict[str, Any]:
    from engine.ops.label import label_volume
    from engine.runtime import connect, shutdown

    t0 = time.perf_counter()
    connect(num_cpus=p["workers"], dashboard=False)
    cluster_s = time.perf_counter() - t0
    time.sleep(1.0)  # let Ray's prestarted idle workers settle, so they are not counted as work
    sampler = RssSampler()
    sampler.start()
    t1 = time.perf_counter()
    r = label_volume(
        p["input"], p["output"], threshold=0.5, connectivity=26, block=(p["block"],) * 3, chunks=(p["chunk"],) * 3,
        device=p.get("device", "cpu"), backend="ray", workers=p["workers"], progress=False, state_dir=p["state_dir"], overwrite=True,
        dtype=p["dtype"],
    )
    run_s = time.perf_counter() - t1
    peak = sampler.stop()
    kept_s = kept_seconds(p) if p.get("kept", True) else None
    shutdown()
    return {
        "run_s": run_s, "kept_s": kept_s, "cluster_start_s": cluster_s, "objects": r.objects, "blocks": r.blocks, "boundary_labels": r.boundary_labels,
        "pairs": r.pairs, "local_objects": r.local_objects, "seconds": r.seconds, "peak": peak, "rss_samples": sampler.samples,
    }


def kept_seconds(p: dict[str, Any]) -> float:
    """The same labelling on workers already started (``RayBackend(keep_workers=True)``, as a pipeline
    of several ops keeps them): a first call starts them, the second is timed. What a run costs once
    its workers are up, beside the cold figure (worker start included) that the ratio uses."""
    from engine.ops.label import label_volume
    from engine.runtime.backends import RayBackend

    kw = {"threshold": 0.5, "connectivity": 26, "block": (p["block"],) * 3, "chunks": (p["chunk"],) * 3, "device": p.get("device", "cpu"),
          "progress": False, "state_dir": p["state_dir"], "overwrite": True, "dtype": p["dtype"]}
    with RayBackend(p["workers"], keep_workers=True) as kept:
        label_volume(p["input"], p["output"], backend=kept, **kw)
        t = time.perf_counter()
        label_volume(p["input"], p["output"], backend=kept, **kw)
        return time.perf_counter() - t


def _zarr_metadata(shape: list[int], chunk: int, dtype: str) -> dict[str, Any]:
    """What Connectile's create_volume writes for a uint64/uint32 segmentation zarr v2 array (its
    label codec, ``SEGMENTATION_ZARR2``: blosc zstd 1, bit shuffle)."""
    from engine.storage.create import SEGMENTATION_ZARR2

    return {
        "shape": shape, "chunks": [chunk] * 3, "dtype": "<u8" if dtype == "uint64" else "<u4", "fill_value": 0, "dimension_separator": "/",
        "compressor": dict(SEGMENTATION_ZARR2),
    }


def child_cc3d(p: dict[str, Any]) -> dict[str, Any]:
    import cc3d
    import numpy as np
    import tensorstore as ts

    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    src = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": p["input"]}}, read=True).result()
    data = src.read().result()
    t1 = time.perf_counter()
    # cc3d's fastest path: uint32 labels (uint64 output is its slow path), cast afterwards if uint64 is wanted
    labels, n = cc3d.connected_components(data > 127, connectivity=26, return_N=True, out_dtype=np.uint32)
    del data
    t_cast = time.perf_counter()
    if p["dtype"] != "uint32":
        labels = labels.astype(np.dtype(p["dtype"]))
    t2 = time.perf_counter()
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": p["output"]}, "metadata": _zarr_metadata(list(labels.shape), p["chunk"], p["dtype"])}
    dst = ts.open(spec, create=True, delete_existing=True).result()
    dst.write(labels).result()
    t3 = time.perf_counter()
    peak = sampler.stop()
    peak["vmhwm"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"read_s": t1 - t0, "label_s": t2 - t1, "cast_s": t2 - t_cast, "write_s": t3 - t2, "run_s": t3 - t0, "objects": int(n), "peak": peak}


CHILDREN = {"connectile": child_connectile, "cc3d": child_cc3d}


# -- driver side -------------------------------------------------------------------------------
def make_input(url: str, size: int, chunk: int, foreground: float) -> float:
    """Blobby probabilities: Gaussian-smoothed noise (sigma 3 voxels) mapped so that about
    ``foreground`` of the voxels are above 0.5, written in slabs (seams between slabs do not matter).
    Returns the foreground fraction measured."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    from engine.geometry import Box
    from engine.storage import create_volume

    vol = create_volume(url, (size,) * 3, "uint8", (chunk,) * 3)
    rng = np.random.default_rng(0)
    step, pad, sigma = 64, 12, 3.0
    level = None
    fg = 0
    for z in range(0, size, step):
        noise = rng.random((step + 2 * pad, size, size), dtype=np.float32)
        smooth = gaussian_filter(noise, sigma)[pad:-pad]
        if level is None:  # the value above which ``foreground`` of the smoothed noise lies
            level = float(np.quantile(smooth[:, ::4, ::4], 1.0 - foreground))
            spread = float(smooth.std())
        # a steep ramp around the level: probabilities near 0 or 1 except at object borders
        prob = np.clip((smooth - level) / spread * 160 + 128, 0, 255).astype(np.uint8)
        box = Box((z, 0, 0), (min(z + step, size), size, size))
        part = prob[: box.shape[0]]
        fg += int((part > 127).sum())
        vol.write(box, part)
    return fg / size**3


def same_partition(a_url: str, b_path: str, size: int) -> bool:
    """True if the two label volumes are the same partition (slab by slab, pairs merged globally)."""
    import numpy as np
    import tensorstore as ts

    from engine.geometry import Box
    from engine.storage import open_volume

    a = open_volume(a_url)
    b = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": b_path}}, read=True).result()
    pairs = []
    for z in range(0, size, 64):
        box = Box((z, 0, 0), (min(z + 64, size), size, size))
        x, y = a.read(box), b[box.to_slices()].read().result()
        if not np.array_equal(x == 0, y == 0):
            return False
        m = x != 0
        pairs.append(np.unique(np.stack([x[m], y[m]], axis=1), axis=0))
    allp = np.unique(np.concatenate(pairs), axis=0)
    return len(allp) == len(np.unique(allp[:, 0])) == len(np.unique(allp[:, 1]))


VARIANTS = {
    # name: (connectile params, peer output dtype)
    "uint64": ({"dtype": "uint64"}, "uint64"),
    "uint32": ({"dtype": "uint32"}, "uint32"),
}


def bench(cfg: dict[str, Any], wd: Path, m: dict[str, Any], gpu: bool) -> list[dict[str, Any]]:
    size, block, chunk, workers = cfg["size"], cfg["block"], cfg["chunk"], cfg["workers"]
    root = wd / "cc.zarr"
    inp = str(root / "prob")
    t = time.perf_counter()
    fg = make_input(inp, size, chunk, cfg["foreground"])
    print(f"[bench] input {size}^3 written in {time.perf_counter() - t:.0f} s, foreground {fg:.3f}", file=sys.stderr, flush=True)
    ray_tmp = wd / "ray" if len(str(wd)) <= 32 else Path(tempfile.mkdtemp(prefix="cbr-"))
    base = {"input": inp, "block": block, "chunk": chunk, "workers": workers}
    variants = [v for v in cfg["variants"] if v in VARIANTS]
    runs: dict[str, list[dict[str, Any]]] = {}
    # the jobs of one repeat: each Connectile variant and each cc3d output type once; their order is
    # rotated every repeat, so a slow moment of the shared VM does not always hit the same side
    jobs = variants + ([] if cfg.get("no_peer") else sorted({f"cc3d_{VARIANTS[v][1]}" for v in variants}))
    for rep, order in enumerate(side_orders(jobs, cfg["repeats"])):
        print(f"[bench] repeat {rep + 1}: {', '.join(order)}", file=sys.stderr, flush=True)
        for job in order:
            time.sleep(cfg.get("gap", 0.0))  # the same idle time before every run (the docstring: memory a VM handed back)
            try:  # a child killed from outside (the shared VM short of memory) costs one run, not the benchmark
                if job.startswith("cc3d_"):
                    dtype = job.removeprefix("cc3d_")
                    runs.setdefault(job, []).append(run_child("cc3d", {**base, "dtype": dtype, "output": str(root / job)}))
                else:
                    params = VARIANTS[job][0]
                    out_c = str(root / f"cc_connectile_{job}")
                    kept = not cfg.get("no_peer")  # alone (the largest sizes): the cold run only
                    runs.setdefault(job, []).append(run_child("connectile", {**base, **params, "output": out_c, "state_dir": str(wd / f"state-{job}"), "kept": kept},
                                                              ray_tmp))
            except RuntimeError as err:
                print(f"[bench] {job}, repeat {rep + 1}: {err}", file=sys.stderr, flush=True)
                emit({"bench": "connected_components", "variant": job, "repeat": rep + 1, "failed": str(err)})
    lines = []
    if cfg.get("no_peer"):
        lines = [alone_line(cfg, name, runs.get(name, []), fg, m) for name in variants if runs.get(name)]
        for ln in lines:
            emit(ln)
        variants = []
    for name in variants:
        params, peer_dtype = VARIANTS[name]
        cs, ps = runs.get(name, []), runs.get(f"cc3d_{peer_dtype}", [])
        if not cs or not ps:
            continue
        c_s, p_s = _median([r["run_s"] for r in cs]), _median([r["run_s"] for r in ps])
        kept = [r["kept_s"] for r in cs if r.get("kept_s") is not None]
        c_rss = max(r["peak"]["work_rss"] for r in cs)
        c_pss = max(r["peak"]["work_pss"] for r in cs)
        p_rss = max(r["peak"]["work_rss"] for r in ps)
        p_pss = max(r["peak"]["work_pss"] for r in ps)
        p_hwm = max(r["peak"]["vmhwm"] for r in ps)
        agree = same_partition(str(root / f"cc_connectile_{name}"), str(root / f"cc3d_{peer_dtype}"), size) and cs[-1]["objects"] == ps[-1]["objects"]
        ratio = p_s / c_s
        mem = c_rss / p_hwm
        c0 = cs[len(cs) // 2]
        line = {
            "bench": "connected_components",
            "variant": name,
            "shape": [size] * 3,
            "input": f"uint8 blobby probabilities ({fg:.1%} of voxels > 0.5), zarr v2 chunks {chunk}^3 blosc-zstd 3; threshold 0.5, 26-connectivity",
            "output": f"{params['dtype']} zarr v2 chunks {chunk}^3 blosc-zstd 1 bit shuffle, Connectile's label codec (both sides)",
            "write_block": [block] * 3,
            "blocks": c0["blocks"],
            "workers": workers,
            "objects": c0["objects"],
            "local_objects": c0["local_objects"],
            "boundary_labels": c0["boundary_labels"],
            "repeats": len(cs),
            "order": "rotated every repeat", "gap_s": cfg.get("gap", 0.0),
            "connectile_s": round(c_s, 2),
            "connectile_runs_s": [round(r["run_s"], 2) for r in cs],
            "connectile_kept_s": round(_median(kept), 2) if kept else None,
            "ratio_kept": round(p_s / _median(kept), 2) if kept else None,
            "ratio_kept_def": "median peer_s / median connectile_kept_s: the same call on workers already started (RayBackend(keep_workers=True))",
            "connectile_pass_s": {k: round(v, 2) for k, v in c0["seconds"].items()},
            "connectile_cluster_start_s": round(_median([r["cluster_start_s"] for r in cs]), 2),
            **memory_mib(cs),
            "connectile_peak_pss_mib": round(c_pss / MIB),
            "peer": f"cc3d {_version('connected-components-3d')} uint32 (its fastest){', cast to ' + peer_dtype if peer_dtype != 'uint32' else ''}, whole array, one process",
            "peer_s": round(p_s, 2),
            "peer_runs_s": [round(r["run_s"], 2) for r in ps],
            "peer_read_s": round(_median([r["read_s"] for r in ps]), 2),
            "peer_label_s": round(_median([r["label_s"] for r in ps]), 2),
            "peer_cast_s": round(_median([r["cast_s"] for r in ps]), 2),
            "peer_write_s": round(_median([r["write_s"] for r in ps]), 2),
            "peer_peak_rss_mib": round(p_hwm / MIB),
            "peer_peak_rss_sampled_mib": round(p_rss / MIB),
            "peer_peak_pss_mib": round(p_pss / MIB),
            "ratio": round(ratio, 2),
            "ratio_def": "median peer_s / median connectile_s (throughput ratio); both read the input zarr and write the labels zarr; Ray's cluster start not included, starting the workers included",
            "memory_fraction": round(mem, 3),
            "memory_fraction_pss": round(c_pss / p_pss, 3),
            "memory_fraction_def": "connectile peak summed RSS (driver + Ray actor workers, sampled every 50 ms) / cc3d VmHWM; _pss: the same with PSS on both sides (sampled)",
            "meets_target": ratio >= TARGET_RATIO and mem <= TARGET_MEMORY,
            "target": f"ratio >= {TARGET_RATIO} and memory_fraction <= {TARGET_MEMORY}",
            "agree": agree,
            "machine": harness.machine_short(m),
            "load_avg_1m_before": m["load_avg_1m"],
            "load_avg_1m_after": round(os.getloadavg()[0], 2),
        }
        emit(line)
        lines.append(line)
    if gpu:
        g = run_child("connectile", {**base, "dtype": "uint64", "output": str(root / "cc_gpu"), "state_dir": str(wd / "state-gpu"), "device": "gpu"}, ray_tmp)
        if "cc3d_uint64" not in runs:
            runs["cc3d_uint64"] = [run_child("cc3d", {**base, "dtype": "uint64", "output": str(root / "cc3d_uint64")})]
        p_s = _median([r["run_s"] for r in runs["cc3d_uint64"]])
        gline = {
            "bench": "connected_components_gpu", "shape": [size] * 3, "connectile_gpu_s": round(g["run_s"], 2), "peer_s": round(p_s, 2),
            "ratio": round(p_s / g["run_s"], 2), "objects": g["objects"], "agree": same_partition(str(root / "cc_gpu"), str(root / "cc3d_uint64"), size),
            "connectile_peak_rss_mib": round(g["peak"]["work_rss"] / MIB),
        }
        emit(gline)
        lines.append(gline)
    else:
        emit({"bench": "connected_components_gpu", "skipped": "no GPU visible to CuPy on this machine"})
    if ray_tmp.parent != wd:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return lines


def memory_mib(cs: list[dict[str, Any]]) -> dict[str, int]:
    """Connectile's peak memory over its runs, in MiB: all its processes, the driver, the workers, the largest single
    worker, Ray's idle workers and daemons (``RssSampler``)."""
    keys = {"connectile_peak_rss_mib": "work_rss", "connectile_driver_peak_rss_mib": "driver_rss", "connectile_workers_peak_rss_mib": "workers_rss",
            "connectile_one_worker_peak_rss_mib": "worker_max_rss", "ray_idle_workers_peak_rss_mib": "idle_rss", "ray_daemons_peak_rss_mib": "daemons_rss"}
    return {name: round(max(r["peak"].get(key, 0) for r in cs) / MIB) for name, key in keys.items()}


def alone_line(cfg: dict[str, Any], name: str, cs: list[dict[str, Any]], fg: float, m: dict[str, Any]) -> dict[str, Any]:
    """Connectile alone (``--no-peer``): where cc3d cannot run (its whole input and uint32 output at once: 5 bytes
    a voxel, 40 GiB at 2048^3), the time and every process's peak memory, to show the memory flat as the volume grows."""
    size, c0 = cfg["size"], cs[len(cs) // 2]
    kept = [r["kept_s"] for r in cs if r.get("kept_s") is not None]
    return {
        "bench": "connected_components_alone", "variant": name, "shape": [size] * 3, "write_block": [cfg["block"]] * 3, "workers": cfg["workers"],
        "input": f"uint8 blobby probabilities ({fg:.1%} of voxels > 0.5), zarr v2 chunks {cfg['chunk']}^3", "blocks": c0["blocks"], "objects": c0["objects"],
        "repeats": len(cs), "connectile_s": round(_median([r["run_s"] for r in cs]), 2), "connectile_runs_s": [round(r["run_s"], 2) for r in cs],
        "connectile_kept_s": round(_median(kept), 2) if kept else None, "connectile_pass_s": {k: round(v, 2) for k, v in c0["seconds"].items()},
        "voxels_per_s": round(size**3 / _median([r["run_s"] for r in cs])),
        **memory_mib(cs),
        "peer": f"not run: cc3d holds the whole input and its uint32 output at once ({5 * size**3 / 2**30:.1f} GiB)",
        "machine": harness.machine_short(m), "load_avg_1m_before": m["load_avg_1m"], "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="256^3 with blocks of 64^3, 3 repeats")
    ap.add_argument("--smoke", action="store_true", help="seconds: 64^3, blocks of 32^3, variant uint64, 1 repeat (tests run this; no meaningful numbers)")
    ap.add_argument("--size", type=int, help="edge of the cubic volume (default 512; 256 with --quick)")
    ap.add_argument("--block", type=int, help="edge of a write block (default 128; 64 with --quick)")
    ap.add_argument("--workers", type=int, default=2, help="Ray workers (default 2)")
    ap.add_argument("--foreground", type=float, default=0.2, help="fraction of voxels above 0.5 in the input (default 0.2)")
    ap.add_argument("--repeats", type=int, help="runs per side, order alternating; medians reported (default 3; 1 with --smoke)")
    ap.add_argument("--variants", default=None, help=f"comma-separated, of {', '.join(VARIANTS)} (default: all; uint64 with --smoke)")
    ap.add_argument("--gap", type=float, default=None, help="seconds idle before every run (default 10; 0 with --smoke): see the docstring")
    ap.add_argument("--no-peer", action="store_true", help="Connectile only (sizes where cc3d's whole array does not fit: 2048^3 needs 40 GiB)")
    ap.add_argument("--workdir", help="make the temporary folder inside this one")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return harness.child_main(CHILDREN, args.child, args.params)
    cfg: dict[str, Any] = dict(SIZES["smoke" if args.smoke else "quick" if args.quick else "full"])
    if args.size:
        cfg["size"] = args.size
    if args.block:
        cfg["block"] = args.block
    cfg["workers"] = args.workers
    cfg["foreground"] = args.foreground
    cfg["no_peer"] = args.no_peer
    cfg["gap"] = args.gap if args.gap is not None else (0.0 if args.smoke else 10.0)
    cfg["repeats"] = args.repeats or (1 if args.smoke else 3)
    cfg["variants"] = [v.strip() for v in (args.variants or ("uint64" if args.smoke else ",".join(VARIANTS))).split(",") if v.strip()]
    from engine.kernels import gpu_available

    m = machine_info()
    emit({"bench": "machine", **m, "quick": args.quick, "smoke": args.smoke, "config": cfg})
    wd = Path(tempfile.mkdtemp(prefix="cc-", dir=args.workdir))
    try:
        lines = bench(cfg, wd, m, gpu_available())
    finally:
        if not args.keep:
            shutil.rmtree(wd, ignore_errors=True)
    bad = [ln["bench"] for ln in lines if ln.get("agree") is False]
    if bad:
        print(f"[bench] outputs disagree: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
