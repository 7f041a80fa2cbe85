#!/usr/bin/env python
"""Connected-components benchmark: Connectile's blockwise labelling vs cc3d on the whole volume.

    .venv/bin/python benchmarks/bench_cc.py            # 512^3, blocks of 128^3, 2 Ray workers
    .venv/bin/python benchmarks/bench_cc.py --quick    # 256^3, blocks of 64^3: a smoke run

Input: a blobby uint8 probability volume (smoothed noise; objects cross many blocks) in a zarr v2
array (chunks 64^3, blosc-zstd). Both sides read it from the zarr, threshold at 0.5, label with
26-connectivity and write uint64 labels to a zarr (chunks 64^3, blosc-zstd):

connectile  ``label_volume(..., backend="ray", workers=2)``: all three passes (local labels, face
            pairs, relabel) and the driver's union-find; Ray's cluster start reported apart.
cc3d        one process: TensorStore read of the whole array, ``cc3d.connected_components`` (uint64
            out), TensorStore write of the whole array.
gpu         the same as connectile with ``device="gpu"``, only where CuPy sees a GPU.

Each side runs in a fresh child process (this script with ``--child``). Peak memory: for cc3d the
VmHWM of its process; for Connectile the peak of the summed RSS of the driver and the Ray worker
processes (cmdline ``ray::…``), sampled every 50 ms; Ray's daemons are reported apart. The outputs
are checked to be the same partition. One JSON line per measurement on stdout; ``ratio`` is cc3d's
time / Connectile's (above 1: Connectile is faster), ``memory_fraction`` Connectile's peak / cc3d's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULT_PREFIX = "@@bench-result "
MIB = 1024 * 1024
TARGET_RATIO = 1.0  # Connectile throughput / cc3d throughput
TARGET_MEMORY = 0.25  # Connectile peak / cc3d peak
SIZES = {"full": {"size": 512, "block": 128, "chunk": 64}, "quick": {"size": 256, "block": 64, "chunk": 64}}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    import psutil

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ("connectile", "ray", "tensorstore", "numpy", "connected-components-3d", "fastremap")},
    }


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


def run_child(name: str, params: dict[str, Any], ray_tmp: Path | None = None, timeout: float = 1800) -> dict[str, Any]:
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    if ray_tmp is not None:
        ray_tmp.mkdir(parents=True, exist_ok=True)
        env["RAY_TMPDIR"] = str(ray_tmp)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--params", json.dumps(params)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
        elif line.strip():
            print(line, file=sys.stderr)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"benchmark child {name!r} failed (exit {proc.returncode}); see its output above")
    return result


class RssSampler(threading.Thread):
    """Peak summed RSS of this process plus its Ray worker processes (cmdline ``ray::…``), and
    separately of its other descendants (Ray's daemons)."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        import psutil

        self.me = psutil.Process()
        self.interval = interval
        self.peak_work = 0
        self.peak_daemons = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        while not self._halt.is_set():
            work, daemons = int(self.me.memory_info().rss), 0
            try:
                children = self.me.children(recursive=True)
            except psutil.Error:
                children = []
            for c in children:
                try:
                    rss = int(c.memory_info().rss)
                    is_worker = (c.cmdline() or [""])[0].startswith("ray::")
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
                if is_worker:
                    work += rss
                else:
                    daemons += rss
            self.peak_work = max(self.peak_work, work)
            self.peak_daemons = max(self.peak_daemons, daemons)
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


# -- children ----------------------------------------------------------------------------------
def child_connectile(p: dict[str, Any]) -> dict[str, Any]:
    from engine.ops.label import label_volume
    from engine.runtime import connect, shutdown

    t0 = time.perf_counter()
    connect(num_cpus=p["workers"], dashboard=False)
    cluster_s = time.perf_counter() - t0
    sampler = RssSampler()
    sampler.start()
    t1 = time.perf_counter()
    r = label_volume(
        p["input"], p["output"], threshold=0.5, connectivity=26, block=(p["block"],) * 3, chunks=(p["chunk"],) * 3,
        device=p.get("device", "cpu"), backend="ray", workers=p["workers"], progress=False, state_dir=p["state_dir"], overwrite=True,
    )
    run_s = time.perf_counter() - t1
    sampler.stop()
    shutdown()
    return {
        "run_s": run_s, "cluster_start_s": cluster_s, "objects": r.objects, "blocks": r.blocks, "boundary_labels": r.boundary_labels,
        "pairs": r.pairs, "local_objects": r.local_objects, "seconds": r.seconds, "peak_rss_bytes": sampler.peak_work,
        "ray_daemons_peak_rss_bytes": sampler.peak_daemons, "rss_samples": sampler.samples,
    }


def _zarr_u64_metadata(shape: list[int], chunk: int) -> dict[str, Any]:
    """What Connectile's create_volume writes for a uint64 zarr v2 array (blosc zstd 3)."""
    return {
        "shape": shape, "chunks": [chunk] * 3, "dtype": "<u8", "fill_value": 0, "dimension_separator": "/",
        "compressor": {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 1},
    }


def child_cc3d(p: dict[str, Any]) -> dict[str, Any]:
    import cc3d
    import numpy as np
    import tensorstore as ts

    t0 = time.perf_counter()
    src = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": p["input"]}}, read=True).result()
    data = src.read().result()
    t1 = time.perf_counter()
    labels, n = cc3d.connected_components(data > 127, connectivity=26, return_N=True, out_dtype=np.uint64)
    del data
    t2 = time.perf_counter()
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": p["output"]}, "metadata": _zarr_u64_metadata(list(labels.shape), p["chunk"])}
    dst = ts.open(spec, create=True, delete_existing=True).result()
    dst.write(labels).result()
    t3 = time.perf_counter()
    return {
        "read_s": t1 - t0, "label_s": t2 - t1, "write_s": t3 - t2, "run_s": t3 - t0, "objects": int(n),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


CHILDREN = {"connectile": child_connectile, "cc3d": child_cc3d}


# -- driver side -------------------------------------------------------------------------------
def make_input(url: str, size: int, chunk: int) -> None:
    """Blobby probabilities: Gaussian-smoothed noise, in slabs (seams between slabs do not matter)."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    from engine.geometry import Box
    from engine.storage import create_volume

    vol = create_volume(url, (size,) * 3, "uint8", (chunk,) * 3)
    rng = np.random.default_rng(0)
    step, pad, sigma = 64, 12, 3.0
    for z in range(0, size, step):
        noise = rng.random((step + 2 * pad, size, size), dtype=np.float32)
        smooth = gaussian_filter(noise, sigma)[pad:-pad]
        # map the narrow distribution of smoothed noise onto 0..255 around its median
        prob = np.clip((smooth - 0.5) * 255 * 12 + 128, 0, 255).astype(np.uint8)
        box = Box((z, 0, 0), (min(z + step, size), size, size))
        vol.write(box, prob[: box.shape[0]])


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


def bench(cfg: dict[str, Any], wd: Path, m: dict[str, Any], gpu: bool) -> list[dict[str, Any]]:
    size, block, chunk, workers = cfg["size"], cfg["block"], cfg["chunk"], cfg["workers"]
    root = wd / "cc.zarr"
    inp = str(root / "prob")
    t = time.perf_counter()
    make_input(inp, size, chunk)
    print(f"[bench] input {size}^3 written in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    ray_tmp = wd / "ray" if len(str(wd)) <= 32 else Path(tempfile.mkdtemp(prefix="cbr-"))
    out_c, out_p = str(root / "cc_connectile"), str(root / "cc_cc3d")
    base = {"input": inp, "block": block, "chunk": chunk, "workers": workers}
    c = run_child("connectile", {**base, "output": out_c, "state_dir": str(wd / "state")}, ray_tmp)
    s = run_child("cc3d", {**base, "output": out_p})
    agree = same_partition(out_c, out_p, size) and c["objects"] == s["objects"]
    ratio = s["run_s"] / c["run_s"]
    mem = c["peak_rss_bytes"] / s["peak_rss_bytes"]
    line = {
        "bench": "connected_components",
        "shape": [size] * 3,
        "input": f"uint8 probabilities, zarr v2 chunks {chunk}^3 blosc-zstd; output uint64 zarr v2 chunks {chunk}^3; threshold 0.5, 26-connectivity",
        "write_block": [block] * 3,
        "blocks": c["blocks"],
        "workers": workers,
        "objects": c["objects"],
        "local_objects": c["local_objects"],
        "boundary_labels": c["boundary_labels"],
        "connectile_s": round(c["run_s"], 2),
        "connectile_pass_s": {k: round(v, 2) for k, v in c["seconds"].items()},
        "connectile_cluster_start_s": round(c["cluster_start_s"], 2),
        "connectile_peak_rss_mib": round(c["peak_rss_bytes"] / MIB),
        "ray_daemons_peak_rss_mib": round(c["ray_daemons_peak_rss_bytes"] / MIB),
        "peer": f"cc3d {_version('connected-components-3d')} on the whole array, one process (TensorStore {_version('tensorstore')} read/write)",
        "peer_s": round(s["run_s"], 2),
        "peer_read_s": round(s["read_s"], 2),
        "peer_label_s": round(s["label_s"], 2),
        "peer_write_s": round(s["write_s"], 2),
        "peer_peak_rss_mib": round(s["peak_rss_bytes"] / MIB),
        "ratio": round(ratio, 2),
        "ratio_def": "peer_s / connectile_s (throughput ratio); both read the input zarr and write the labels zarr; Ray's cluster start not included",
        "memory_fraction": round(mem, 3),
        "memory_fraction_def": "connectile peak (driver + Ray workers, summed RSS sampled every 50 ms) / cc3d peak (VmHWM)",
        "meets_target": ratio >= TARGET_RATIO and mem <= TARGET_MEMORY,
        "target": f"ratio >= {TARGET_RATIO} and memory_fraction <= {TARGET_MEMORY}",
        "agree": agree,
        "machine": f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB",
        "load_avg_1m_before": m["load_avg_1m"],
        "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }
    emit(line)
    lines = [line]
    if gpu:
        g = run_child("connectile", {**base, "output": str(root / "cc_gpu"), "state_dir": str(wd / "state-gpu"), "device": "gpu"}, ray_tmp)
        gline = {
            "bench": "connected_components_gpu", "shape": [size] * 3, "connectile_gpu_s": round(g["run_s"], 2), "peer_s": round(s["run_s"], 2),
            "ratio": round(s["run_s"] / g["run_s"], 2), "objects": g["objects"], "agree": same_partition(str(root / "cc_gpu"), out_p, size),
            "connectile_peak_rss_mib": round(g["peak_rss_bytes"] / MIB),
        }
        emit(gline)
        lines.append(gline)
    else:
        emit({"bench": "connected_components_gpu", "skipped": "no GPU visible to CuPy on this machine"})
    if ray_tmp.parent != wd:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="256^3 with blocks of 64^3 (smoke run)")
    ap.add_argument("--size", type=int, help="edge of the cubic volume (default 512; 256 with --quick)")
    ap.add_argument("--block", type=int, help="edge of a write block (default 128; 64 with --quick)")
    ap.add_argument("--workers", type=int, default=2, help="Ray workers (default 2)")
    ap.add_argument("--workdir", help="make the temporary folder inside this one")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(RESULT_PREFIX + json.dumps(CHILDREN[args.child](json.loads(args.params))), flush=True)
        return 0
    cfg: dict[str, Any] = dict(SIZES["quick" if args.quick else "full"])
    if args.size:
        cfg["size"] = args.size
    if args.block:
        cfg["block"] = args.block
    cfg["workers"] = args.workers
    from engine.segment import gpu_available

    m = machine_info()
    emit({"bench": "machine", **m, "quick": args.quick, "config": cfg})
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
