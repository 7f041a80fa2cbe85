#!/usr/bin/env python
"""Pyramid benchmark: ``connectile downsample`` (blockwise, resumable) vs TensorStore's downsample driver.

    .venv/bin/python benchmarks/bench_downsample.py            # 128x512x512, image (mean) and labels (mode)
    .venv/bin/python benchmarks/bench_downsample.py --quick    # 64x256x256
    .venv/bin/python benchmarks/bench_downsample.py --smoke    # 32x128x128, one repeat: checks that the script runs
    .venv/bin/python benchmarks/bench_downsample.py --backend ray --workers 2

Input: a zarr v2 array (chunks 64^3, blosc-zstd) of smooth uint8 noise (``image``, mean) or of uint64
labels (blocks of constant id, ``labels``, mode), voxel size 40x4x4 nm, so the levels are 1x2x2, 1x2x2,
then 2x2x2 (``level_factors``), down to 64 voxels per axis.

connectile   ``build_pyramid(..., backend, kernel)``: s0 copied into ``NAME_pyramid``, then each level
             blockwise from the one before (blocks of 128x256x256 output voxels), done-markers, OME-Zarr
             metadata; per block TensorStore's downsample on the block in memory (``--kernel tensorstore``,
             default) or Connectile's NumPy kernels (``--kernel numpy``).
tensorstore  the same chain of levels, each written in one call from ``ts.downsample(previous, factors,
             method)`` into a zarr of the same chunks and compression (TensorStore's own thread pool);
             s0 copied the same way. No done-markers, no resume.

Both run in this process, who goes first alternating over the repeats (3 by default); medians are
reported with every run. The outputs are checked
to be identical level by level. One JSON line per measurement; ``ratio`` is TensorStore's time /
Connectile's (above 1: Connectile is faster).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import tensorstore as ts  # noqa: E402

from engine.bench.harness import emit, machine_info, median, side_orders, version  # noqa: E402
from engine.geometry import Box  # noqa: E402
from engine.ops.downsample import build_pyramid, default_method, level_factors  # noqa: E402
from engine.storage import create_volume, open_volume  # noqa: E402

VOXEL = (40.0, 4.0, 4.0)
CHUNKS = (64, 64, 64)


def make_input(path: Path, kind: str, shape: tuple[int, int, int], seed: int = 0) -> str:
    from scipy.ndimage import gaussian_filter, zoom

    rng = np.random.default_rng(seed)
    if kind == "image":
        coarse = gaussian_filter(rng.random((shape[0] // 4, shape[1] // 8, shape[2] // 8)).astype(np.float32), 1.0)
        data = zoom(coarse, (4, 8, 8), order=1)[: shape[0], : shape[1], : shape[2]]
        data = ((data - data.min()) / (np.ptp(data) + 1e-9) * 255).astype(np.uint8)
        data = np.clip(data.astype(np.int16) + rng.integers(-20, 21, shape), 0, 255).astype(np.uint8)
    else:
        ids = rng.integers(1, 2**40, (shape[0] // 4 + 1, shape[1] // 16 + 1, shape[2] // 16 + 1), dtype=np.uint64)
        data = np.repeat(np.repeat(np.repeat(ids, 4, 0), 16, 1), 16, 2)[: shape[0], : shape[1], : shape[2]]
        data[rng.random(shape) < 0.05] = 0  # speckle: ties and changes inside bins
    vol = create_volume(path, shape, data.dtype, CHUNKS, voxel_size=VOXEL, overwrite=True)
    vol.write(Box.from_shape(shape), data)
    return vol.url


def run_tensorstore(src: str, out: Path, method: str, steps: list[tuple[int, int, int]]) -> float:
    t0 = time.perf_counter()
    prev = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": src + "/"}}, read=True).result()
    spec_meta = {"chunks": list(CHUNKS), "compressor": {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 1}, "dimension_separator": "/"}
    for i, f in enumerate([(1, 1, 1), *steps]):
        view = ts.downsample(prev, list(f), method) if f != (1, 1, 1) else prev
        dst = ts.open(
            {"driver": "zarr", "kvstore": {"driver": "file", "path": str(out / f"s{i}") + "/"},
             "metadata": {**spec_meta, "shape": list(view.shape), "dtype": prev.dtype.numpy_dtype.str, "chunks": [min(c, s) for c, s in zip(CHUNKS, view.shape, strict=True)]}},
            create=True, delete_existing=True,
        ).result()
        dst.write(view).result()
        prev = dst
    return time.perf_counter() - t0


def compare(a: Path, b: Path, levels: int) -> bool:
    for i in range(levels):
        x = open_volume(a / f"s{i}")
        y = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(b / f"s{i}") + "/"}}, read=True).result()
        if not np.array_equal(x.read(x.box), np.asarray(y.read().result())):
            return False
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="64x256x256")
    ap.add_argument("--smoke", action="store_true", help="seconds: 32x128x128, 1 repeat (tests run this)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per side, who goes first alternating (default 3; 1 with --smoke)")
    ap.add_argument("--kinds", default="image,labels")
    ap.add_argument("--backend", choices=("serial", "ray"), default="serial")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kernel", choices=("tensorstore", "numpy"), default="tensorstore")
    args = ap.parse_args()
    shape = (32, 128, 128) if args.smoke else (64, 256, 256) if args.quick else (128, 512, 512)
    repeats = args.repeats or (1 if args.smoke else 3)
    workdir = Path(tempfile.mkdtemp(prefix="bench-downsample-"))
    info = machine_info()
    emit({"bench": "machine", **info, "quick": args.quick, "smoke": args.smoke})
    address = None
    if args.backend == "ray":
        from engine.runtime import connect

        address = connect(num_cpus=args.workers, dashboard=False).address
    try:
        for kind in args.kinds.split(","):
            src = make_input(workdir / "in.zarr" / kind, kind, shape)
            vol = open_volume(src)
            method = default_method(vol.dtype)
            steps = level_factors(vol.voxel_size, vol.spatial_shape, 64)
            times: dict[str, list[float]] = {"connectile": [], "tensorstore": []}
            for r, order in enumerate(side_orders(["connectile", "tensorstore"], repeats)):
                for side in order:
                    if side == "connectile":
                        shutil.rmtree(workdir / "in.zarr" / f"{kind}_pyramid", ignore_errors=True)
                        t0 = time.perf_counter()
                        build_pyramid(src, kernel=args.kernel, backend=args.backend, workers=args.workers if args.backend == "ray" else None, address=address, progress=False)
                        times["connectile"].append(time.perf_counter() - t0)
                    else:
                        shutil.rmtree(workdir / "ts", ignore_errors=True)
                        times["tensorstore"].append(run_tensorstore(src, workdir / "ts", method, steps))
                print(f"# {kind} repeat {r + 1}: connectile {times['connectile'][-1]:.2f} s, tensorstore {times['tensorstore'][-1]:.2f} s", file=sys.stderr)
            same = compare(workdir / "in.zarr" / f"{kind}_pyramid", workdir / "ts", len(steps) + 1)
            c, t = median(times["connectile"]), median(times["tensorstore"])
            voxels = int(np.prod(shape))
            result: dict[str, Any] = {
                "bench": "downsample", "kind": kind, "method": method, "shape": list(shape), "levels": len(steps) + 1,
                "backend": args.backend, "kernel": args.kernel, "repeats": repeats, "order": "alternating", "connectile_s": round(c, 3), "tensorstore_s": round(t, 3),
                "connectile_runs_s": [round(v, 3) for v in times["connectile"]], "peer_runs_s": [round(v, 3) for v in times["tensorstore"]],
                "peer": f"tensorstore {version('tensorstore')} downsample driver", "peer_s": round(t, 3),
                "connectile_mvox_s": round(voxels / c / 1e6, 2), "tensorstore_mvox_s": round(voxels / t / 1e6, 2),
                "ratio": round(t / c, 3), "identical": same, "agree": same, "load_avg_1m_before": info["load_avg_1m"],
            }
            emit(result)
            if not same:
                print(f"# {kind}: the pyramids differ", file=sys.stderr)
                return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if address is not None:
            from engine.runtime import shutdown

            shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
