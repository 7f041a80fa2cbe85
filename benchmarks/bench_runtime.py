#!/usr/bin/env python
"""Runtime benchmarks: Connectile side by side with the tool a user would otherwise pick.

    .venv/bin/pip install -r benchmarks/requirements.txt
    .venv/bin/python benchmarks/bench_runtime.py            # full run (about 3 minutes on 2 cores)
    .venv/bin/python benchmarks/bench_runtime.py --quick    # smaller sizes
    .venv/bin/python benchmarks/bench_runtime.py --smoke    # tiny sizes, one run: checks that the script runs
    .venv/bin/python benchmarks/bench_runtime.py --only dispatch --blocks 20000
    .venv/bin/python benchmarks/bench_runtime.py --only scale --blocks 10000000 > scale.jsonl   # about 10 minutes

Prints one JSON line per measurement on stdout (the first line describes the machine); everything
else (Ray's and daisy's chatter) goes to stderr. ``ratio`` is always "Connectile's advantage": above 1
means Connectile did better (see ``ratio_def`` in each line).

dispatch  no-op blocks through the Ray backend with durable done-markers (SQLite) in a real state
          folder, vs daisy 2 (Rust scheduler, TCP workers) with its block tracking on disk.
gaussian  blockwise Gaussian filter over a zarr volume on Ray workers vs ``scipy.ndimage.gaussian_filter``
          on the whole array in one process; both read the input zarr and write an output zarr. Wall
          time, peak memory (summed RSS of the processes doing the work) and agreement of the outputs.
storage   ``Volume.read`` / ``Volume.write`` vs plain TensorStore on the same zarr, box by box.
scale     (only when named: ``--only scale --blocks 10000000``; small in ``--smoke``) one no-op run over
          10^7 blocks of 128^3 with done-markers: the driver's peak memory, its CPU per block, the
          sustained rate after warm-up, the marker store's bytes, then a resume of the finished run in a
          fresh process (time to find every block done). No peer: the targets of issue 17 pt 6.
          ``benchmarks/projection.py --driver-scale FILE`` reads its line for the 1 PB projection.

Every side runs in a fresh child process (this same script with ``--child``), so no measurement
inherits another's memory, threads or Ray cluster. Data, done-markers and Ray's session files go to a
temporary folder (or one inside ``--workdir``), removed at the end unless ``--keep``.
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
from engine.bench.harness import MIB, emit, machine_short, side_orders  # noqa: E402
from engine.bench.harness import median as _median  # noqa: E402
from engine.bench.harness import version as _version  # noqa: E402

DISPATCH_TARGET = 2000.0  # blocks/s the issue asks of the Ray backend on a 2-core machine
STORAGE_TARGET = 0.9  # Connectile / TensorStore throughput
#: Issue 17 pt 6: a no-op run over 10^7 blocks with done-markers, on 2 cores
SCALE_TARGETS = {"driver_peak_rss_mib": 1024, "sustained_blocks_per_s": 30_000, "resume_s": 30}
AGREE_TOL = 1e-4

SIZES: dict[str, dict[str, Any]] = {
    "full": {"blocks": 100_000, "scale_blocks": 10_000_000, "gauss_size": 512, "gauss_block": 128, "storage_shape": (256, 512, 512), "reps": 9, "runs": 3},
    "quick": {"blocks": 10_000, "scale_blocks": 1_000_000, "gauss_size": 128, "gauss_block": 64, "storage_shape": (128, 256, 256), "reps": 3, "runs": 3},
    "smoke": {"blocks": 500, "scale_blocks": 2000, "gauss_size": 32, "gauss_block": 16, "storage_shape": (32, 64, 64), "storage_box": 32, "reps": 1, "runs": 1},
}


# -- helpers ------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    return harness.machine_info((*harness.VERSIONS, "daisy", "psutil"))


def _grid_shape(n: int) -> tuple[int, int, int]:
    """A near-cubic 3D grid of exactly ``n`` blocks (100,000 -> 40 x 50 x 50)."""
    best = (1, 1, n)
    for a in range(1, round(n ** (1 / 3)) + 2):
        if n % a:
            continue
        m = n // a
        for b in range(int(m**0.5), 0, -1):
            if m % b == 0:
                cand = tuple(sorted((a, b, m // b)))
                if cand[-1] < best[-1]:
                    best = (cand[0], cand[1], cand[2])
                break
    return best


_EXTRA_DIRS: list[Path] = []  # temporary folders outside the work folder, removed at the end too


def _ray_tmpdir(wd: Path) -> Path:
    """Ray's session folder: inside the work folder if its path is short enough for Ray's unix
    sockets (about 107 bytes in all), else a short folder of its own under the system temp folder."""
    if len(str(wd)) <= 32:
        return wd / "ray"
    extra = Path(tempfile.mkdtemp(prefix="cbr-"))
    _EXTRA_DIRS.append(extra)
    return extra


def run_child(name: str, params: dict[str, Any], ray_tmp: Path | None = None, timeout: float = 1200) -> dict[str, Any]:
    """Run one side of a benchmark in a fresh interpreter; return the dict it reported."""
    return harness.run_child(__file__, name, params, ray_tmp=ray_tmp, timeout=timeout, cwd=ROOT)


# -- child side: each function runs in its own process and returns a dict ------------------------
def _timed_ray_backend(workers: int) -> Any:
    """A RayBackend that notes when its actors were ready, when the first and last results arrived,
    the blocks returned over time (at most one mark per ``mark_every`` s), and (just before the actors
    are stopped) each actor's peak RSS and CPU seconds."""
    from engine.runtime import RayBackend

    class TimedRayBackend(RayBackend):
        t_start = t_ready = t_first = t_last = None
        first_blocks = 0
        returned = 0
        mark_every = 1.0
        pids: list[int]
        worker_hwm: dict[int, int]
        worker_cpu_s: dict[int, float]
        marks: list[tuple[float, int]]

        def start(self, op: Any, grid: Any, mask: Any) -> None:
            self.t_start = time.perf_counter()
            super().start(op, grid, mask)
            self.t_ready = time.perf_counter()
            self.pids = [int(str(w["name"]).rsplit(":", 1)[1]) for w in self.workers()]
            self.worker_hwm, self.worker_cpu_s, self.marks = {}, {}, []

        def wait(self, timeout: float) -> list[Any]:
            out = super().wait(timeout)
            if out:
                now = time.perf_counter()
                self.returned += sum(len(c.ids) for c in out)
                if self.t_first is None:
                    self.t_first = now
                    self.first_blocks = self.returned
                if not self.marks or now - self.marks[-1][0] >= self.mark_every:
                    self.marks.append((now, self.returned))
                self.t_last = now
            return out

        def stop(self) -> None:
            import psutil

            for pid in getattr(self, "pids", []):
                hwm = _vm_hwm(pid)
                if hwm:
                    self.worker_hwm[pid] = hwm
                try:
                    cpu = psutil.Process(pid).cpu_times()
                    self.worker_cpu_s[pid] = cpu.user + cpu.system
                except psutil.Error:
                    pass
            if self.t_last is not None:
                self.marks.append((self.t_last, self.returned))
            super().stop()

    return TimedRayBackend(workers)


def _vm_hwm(pid: int) -> int:
    """Peak RSS (VmHWM) of a live process in bytes; 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _self_peak_rss() -> int:
    """Peak RSS of this process. VmHWM, not ``ru_maxrss``: Linux carries the parent's high-water mark
    across fork + exec into ``ru_maxrss``, so a child of a big parent would report the parent's peak."""
    return _vm_hwm(os.getpid()) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _noop_block(block: Any) -> None:
    """daisy's process function: does nothing, like Connectile's NoOp."""


def child_dispatch_connectile(p: dict[str, Any]) -> dict[str, Any]:
    import sqlite3

    from engine.geometry import BlockGrid, Box
    from engine.ops.noop import NoOp
    from engine.runtime import connect, run_blockwise, shutdown

    t0 = time.perf_counter()
    connect(num_cpus=p["workers"])
    cluster_s = time.perf_counter() - t0
    g = p["grid"]
    s = p["block_shape"]
    grid = BlockGrid(Box.from_shape(tuple(gi * s for gi in g)), write_shape=(s, s, s))
    be = _timed_ray_backend(p["workers"])
    t1 = time.perf_counter()
    summary = run_blockwise(NoOp(), grid, state_dir=p["state_dir"], backend=be, progress=False)
    run_s = time.perf_counter() - t1
    with sqlite3.connect(Path(p["state_dir"]) / "markers.sqlite") as db:
        markers = int(db.execute("SELECT COUNT(*) FROM blocks WHERE status=1").fetchone()[0])
    t2 = time.perf_counter()
    again = run_blockwise(NoOp(), grid, state_dir=p["state_dir"], backend="ray", workers=p["workers"], progress=False)
    resume_s = time.perf_counter() - t2
    shutdown()
    n = grid.num_blocks
    return {
        "blocks": n,
        "done": summary.done,
        "markers_on_disk": markers,
        "cluster_start_s": cluster_s,
        "actor_start_s": be.t_ready - be.t_start,
        "run_s": run_s,
        "time_to_first_result_s": be.t_first - t1,
        "steady_s": be.t_last - be.t_first,
        "steady_blocks": n - be.first_blocks,
        "resume_s": resume_s,
        "resume_already_done": again.already_done,
    }


def _rss() -> int:
    """Resident memory of this process now (VmRSS), in bytes."""
    try:
        for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _scale_grid(p: dict[str, Any]) -> Any:
    from engine.geometry import BlockGrid, Box

    s = p["block_shape"]
    return BlockGrid(Box.from_shape(tuple(gi * s for gi in p["grid"])), write_shape=(s, s, s))


def _sustained(marks: list[tuple[float, int]], n: int, lo: float = 0.1, hi: float = 0.9) -> float | None:
    """Blocks per second between the marks where ``lo`` and ``hi`` of the ``n`` blocks had returned
    (the warm-up and the tail left out); None when the marks are too few (tiny runs)."""
    a = next((m for m in marks if m[1] >= lo * n), None)
    b = next((m for m in marks if m[1] >= hi * n), None)
    if a is None or b is None or b[0] <= a[0]:
        return None
    return (b[1] - a[1]) / (b[0] - a[0])


def child_scale_run(p: dict[str, Any]) -> dict[str, Any]:
    """No-op blocks over a big grid through the Ray backend with done-markers: the driver's memory,
    CPU and rate, Ray's processes' memory, the marker store's size."""
    from engine.ops.noop import NoOp
    from engine.runtime import connect, run_blockwise, shutdown

    load0 = os.getloadavg()[0]
    sampler = harness.RssSampler(interval=p.get("sample_s", 0.5))  # driver, Ray's actors, Ray's daemons
    sampler.start()
    connect(num_cpus=p["workers"])
    grid = _scale_grid(p)
    rss0 = _rss()
    be = _timed_ray_backend(p["workers"])
    cpu0, t0 = time.process_time(), time.perf_counter()
    summary = run_blockwise(NoOp(), grid, state_dir=p["state_dir"], backend=be, progress=False)
    run_s, driver_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    peak = sampler.stop()
    driver_hwm = _self_peak_rss()
    shutdown()
    marker_files = sorted(Path(p["state_dir"]).glob("markers.sqlite*"))
    n = grid.num_blocks
    return {
        "blocks": n,
        "done": summary.done,
        "run_s": run_s,
        "actor_start_s": be.t_ready - be.t_start,
        "sustained_blocks_per_s": _sustained(be.marks, n),
        "steady_blocks_per_s": (n - be.first_blocks) / (be.t_last - be.t_first) if be.t_last > be.t_first else None,
        "driver_cpu_s": driver_cpu_s,
        "worker_cpu_s": sorted(be.worker_cpu_s.values()),
        "driver_rss_before_run_bytes": rss0,
        "driver_peak_rss_bytes": driver_hwm,
        "sampled_peaks_bytes": peak,
        "worker_peak_rss_bytes": sorted(be.worker_hwm.values()),
        "marker_bytes": sum(f.stat().st_size for f in marker_files),
        "marker_files": [f.name for f in marker_files],
        "load_avg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


def child_scale_resume(p: dict[str, Any]) -> dict[str, Any]:
    """The finished run again, in a fresh process: the time to find every block done (nothing is
    dispatched, no worker started) and the memory it takes."""
    from engine.ops.noop import NoOp
    from engine.runtime import run_blockwise

    grid = _scale_grid(p)
    rss0 = _rss()
    t0 = time.perf_counter()
    again = run_blockwise(NoOp(), grid, state_dir=p["state_dir"], backend="ray", workers=p["workers"], progress=False)
    resume_s = time.perf_counter() - t0
    return {"resume_s": resume_s, "already_done": again.already_done, "done": again.done, "workers_started": len(again.workers),
            "rss_before_bytes": rss0, "peak_rss_bytes": _self_peak_rss(), "load_avg_1m": round(os.getloadavg()[0], 2)}


def child_dispatch_daisy(p: dict[str, Any]) -> dict[str, Any]:
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)
    import daisy
    import daisy.logging
    from funlib.geometry import Roi

    # daisy's per-worker log files (on by default) go beside its tracking, not into the current folder
    daisy.logging.set_log_basedir(Path(p["state_dir"]).parent / "daisy_logs")

    class FirstResult:
        """A progress observer that notes when the first completed block shows up."""

        t_first: float | None = None
        first_completed = 0
        t_finish = 0.0

        def on_start(self, states: Any) -> None:
            pass

        def on_progress(self, states: Any) -> None:
            if self.t_first is None:
                done = sum(st.completed_count for st in states.values())
                if done:
                    self.t_first = time.perf_counter()
                    self.first_completed = done

        def on_finish(self, states: Any) -> None:
            self.t_finish = time.perf_counter()

    g = p["grid"]
    s = p["block_shape"]
    block = Roi((0, 0, 0), (s, s, s))

    def task() -> Any:
        return daisy.Task(
            "noop",
            total_roi=Roi((0, 0, 0), tuple(gi * s for gi in g)),
            read_roi=block,
            write_roi=block,
            process_function=_noop_block,
            read_write_conflict=False,
            num_workers=p["workers"],
            done_marker_path=p["state_dir"],
        )

    obs = FirstResult()
    t1 = time.perf_counter()
    states = daisy.run_blockwise([task()], progress=obs, summary=False, return_states=True)
    run_s = time.perf_counter() - t1
    st = states["noop"]
    t2 = time.perf_counter()
    again = daisy.run_blockwise([task()], progress=False, summary=False, return_states=True)["noop"]
    resume_s = time.perf_counter() - t2
    n = int(st.total_block_count)
    first = obs.t_first if obs.t_first is not None else t1
    return {
        "blocks": n,
        "done": int(st.completed_count),
        "failed": int(st.failed_count),
        "run_s": run_s,
        "time_to_first_result_s": first - t1,
        "steady_s": obs.t_finish - first,
        "steady_blocks": n - obs.first_completed,
        "resume_s": resume_s,
        "resume_already_done": int(again.skipped_count),
    }


def child_gaussian_connectile(p: dict[str, Any]) -> dict[str, Any]:
    from engine.geometry import BlockGrid, Box
    from engine.ops.filters import GaussianFilter
    from engine.runtime import connect, run_blockwise, shutdown

    sampler = harness.RssSampler()  # driver + Ray's actor processes (cmdline ray::...), Ray's daemons apart
    sampler.start()
    t0 = time.perf_counter()
    connect(num_cpus=p["workers"])
    cluster_s = time.perf_counter() - t0
    sig = float(p["sigma"])
    # overwrite: the output is re-created (emptied) first, as the scipy side does with its own
    op = GaussianFilter(input=p["input"], output=p["output"], sigma=(sig, sig, sig), chunks=tuple(p["chunks"]), overwrite=True)
    n, b = p["size"], p["block"]
    grid = BlockGrid(Box.from_shape((n, n, n)), write_shape=(b, b, b), context=op.halo())

    be = _timed_ray_backend(p["workers"])
    t1 = time.perf_counter()
    summary = run_blockwise(op, grid, state_dir=p["state_dir"], backend=be, progress=False)
    run_s = time.perf_counter() - t1
    peak = sampler.stop()
    driver_hwm = _self_peak_rss()
    shutdown()
    return {
        "blocks": grid.num_blocks,
        "done": summary.done,
        "halo": list(op.halo()),
        "cluster_start_s": cluster_s,
        "actor_start_s": be.t_ready - be.t_start,
        "run_s": run_s,
        "peak_rss_bytes": peak["work_rss"],
        "peak_rss_upper_bytes": driver_hwm + sum(be.worker_hwm.values()),
        "driver_peak_rss_bytes": driver_hwm,
        "worker_peak_rss_bytes": sorted(be.worker_hwm.values()),
        "ray_daemons_peak_rss_bytes": peak["daemons_rss"] + peak["idle_rss"],
        "rss_samples": sampler.samples,
    }


def _zarr_f32_metadata(shape: list[int], chunks: list[int]) -> dict[str, Any]:
    """What Connectile's create_volume writes for a float32 zarr v2 array (blosc zstd 3)."""
    return {
        "shape": shape,
        "chunks": chunks,
        "dtype": "<f4",
        "compressor": {"id": "blosc", "cname": "zstd", "clevel": 3, "shuffle": 1},
        "fill_value": 0,
        "dimension_separator": "/",
    }


def child_gaussian_scipy(p: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import tensorstore as ts
    from scipy.ndimage import gaussian_filter

    t0 = time.perf_counter()
    src = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": p["input"]}}, read=True).result()
    data = src.read().result()
    t1 = time.perf_counter()
    # output=float32 straight from the uint8 array: no float copy of the input (the leanest call)
    smooth = gaussian_filter(data, sigma=float(p["sigma"]), output=np.float32, mode="reflect", truncate=4.0)
    t2 = time.perf_counter()
    spec = {
        "driver": "zarr",
        "kvstore": {"driver": "file", "path": p["output"]},
        "metadata": _zarr_f32_metadata(list(smooth.shape), list(p["chunks"])),
    }
    dst = ts.open(spec, create=True, delete_existing=True).result()
    dst.write(smooth).result()
    t3 = time.perf_counter()
    return {"read_s": t1 - t0, "filter_s": t2 - t1, "write_s": t3 - t2, "run_s": t3 - t0, "peak_rss_bytes": _self_peak_rss()}


def child_storage(p: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import tensorstore as ts

    from engine.geometry import BlockGrid, Box
    from engine.storage import create_volume, open_volume

    shape = tuple(p["shape"])
    vol = create_volume(p["path"], shape, "uint8", (p["chunk"],) * 3)
    rng = np.random.default_rng(0)
    # EM-like statistics (about 6 bits of entropy per voxel, compresses like raw EM with zstd)
    data = np.clip(rng.normal(128, 20, size=shape), 0, 255).astype(np.uint8)
    vol.write(vol.box, data)
    boxes = [b.write for b in BlockGrid(Box.from_shape(shape), write_shape=(p["box"],) * 3).blocks()]
    conn = open_volume(p["path"], mode="r+")
    plain = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": p["path"]}}, read=True, write=True).result()
    pieces = [np.ascontiguousarray(data[b.to_slices()]) for b in boxes]

    sides: dict[str, Any] = {
        "c_read": lambda i: conn.read(boxes[i]),
        "t_read": lambda i: plain[boxes[i].to_slices()].read().result(),
        "c_write": lambda i: conn.write(boxes[i], pieces[i]),
        "t_write": lambda i: plain[boxes[i].to_slices()].write(pieces[i]).result(),
    }
    # check both paths see the same bytes before timing them
    for b in boxes[:2]:
        assert np.array_equal(conn.read(b), plain[b.to_slices()].read().result())
    for i in range(len(boxes)):  # warm-up: page cache, thread pools
        sides["c_read"](i), sides["t_read"](i)
    times: dict[str, list[float]] = {key: [] for key in sides}
    for rep in range(p["reps"]):
        # Box by box, Connectile and TensorStore take turns (who goes first alternates), so a
        # slow spell of the machine hits both sides alike; a repetition's time is the sum over boxes.
        total = dict.fromkeys(sides, 0.0)
        for op in ("read", "write"):
            for i in range(len(boxes)):
                pair = [f"c_{op}", f"t_{op}"] if (rep + i) % 2 == 0 else [f"t_{op}", f"c_{op}"]
                for key in pair:
                    t = time.perf_counter()
                    sides[key](i)
                    total[key] += time.perf_counter() - t
        for key, value in total.items():
            times[key].append(value)
    return {"bytes": int(data.nbytes), "boxes": len(boxes), "times": times}


CHILDREN = {
    "dispatch-connectile": child_dispatch_connectile,
    "dispatch-daisy": child_dispatch_daisy,
    "gaussian-connectile": child_gaussian_connectile,
    "gaussian-scipy": child_gaussian_scipy,
    "storage": child_storage,
    "scale-run": child_scale_run,
    "scale-resume": child_scale_resume,
}


# -- driver side: one function per benchmark -----------------------------------------------------
def bench_dispatch(cfg: dict[str, Any], wd: Path, m: dict[str, Any]) -> list[dict[str, Any]]:
    n, workers, runs = cfg["blocks"], cfg["workers"], cfg["runs"]
    grid = _grid_shape(n)
    base = {"grid": list(grid), "block_shape": 64, "workers": workers}
    cs: list[dict[str, Any]] = []
    ds: list[dict[str, Any]] = []
    import importlib.util

    if importlib.util.find_spec("daisy") is None:  # the peer is not installed: Connectile's side alone, the peer marked skipped
        emit({"bench": "dispatch_daisy", "skipped": "daisy is not installed (pip install -r benchmarks/requirements.txt)"})
        for k in range(runs):
            cs.append(run_child("dispatch-connectile", {**base, "state_dir": str(wd / f"dispatch{k}" / "connectile")}, _ray_tmpdir(wd)))
        ok = all(r["done"] == n and r["markers_on_disk"] == n and r["resume_already_done"] == n for r in cs)
        line = {"bench": "dispatch", "blocks": n, "workers": workers, "runs": runs, "connectile_blocks_per_s": round(_median([r["blocks"] / r["run_s"] for r in cs]), 1),
                "connectile_resume_s": round(_median([r["resume_s"] for r in cs]), 3), "peer": "daisy (not installed)", "all_done_and_resumable": ok,
                "machine": machine_short(m)}
        emit(line)
        return [line]
    for k, order in enumerate(side_orders(["connectile", "daisy"], runs)):  # who goes first alternates
        for side in order:
            if side == "connectile":
                cs.append(run_child("dispatch-connectile", {**base, "state_dir": str(wd / f"dispatch{k}" / "connectile")}, _ray_tmpdir(wd)))
            else:
                ds.append(run_child("dispatch-daisy", {**base, "state_dir": str(wd / f"dispatch{k}" / "daisy")}))

    def med(rs: list[dict[str, Any]], f: Any, nd: int = 3) -> float:
        return round(_median([f(r) for r in rs]), nd)

    c_rates = [r["blocks"] / r["run_s"] for r in cs]
    d_rates = [r["blocks"] / r["run_s"] for r in ds]
    c_rate, d_rate = _median(c_rates), _median(d_rates)
    # steady: blocks after the first result / time from the first to the last (0 where all came at once: tiny runs)
    c_steady = _median([r["steady_blocks"] / r["steady_s"] if r["steady_s"] > 0 else 0.0 for r in cs])
    d_steady = _median([r["steady_blocks"] / r["steady_s"] if r["steady_s"] > 0 else 0.0 for r in ds])
    ok = all(r["done"] == n and r["markers_on_disk"] == n and r["resume_already_done"] == n for r in cs) and all(
        r["done"] == n and r["resume_already_done"] == n for r in ds
    )
    line = {
        "bench": "dispatch",
        "blocks": n,
        "grid": list(grid),
        "workers": workers,
        "runs": runs,
        "done_markers": "connectile: SQLite in the run's state folder; daisy: done_marker_path (its zarr block tracking)",
        "connectile_blocks_per_s": round(c_rate, 1),
        "connectile_steady_blocks_per_s": round(c_steady, 1),
        "connectile_blocks_per_s_runs": [round(x) for x in c_rates],
        "connectile_run_s": med(cs, lambda r: r["run_s"]),
        "connectile_actor_start_s": med(cs, lambda r: r["actor_start_s"]),
        "connectile_time_to_first_result_s": med(cs, lambda r: r["time_to_first_result_s"]),
        "connectile_cluster_start_s": med(cs, lambda r: r["cluster_start_s"]),
        "connectile_blocks_per_s_with_cluster_start": round(_median([n / (r["run_s"] + r["cluster_start_s"]) for r in cs]), 1),
        "connectile_resume_s": med(cs, lambda r: r["resume_s"]),
        "peer": f"daisy {_version('daisy')}",
        "peer_blocks": n,
        "peer_blocks_per_s": round(d_rate, 1),
        "peer_steady_blocks_per_s": round(d_steady, 1),
        "peer_blocks_per_s_runs": [round(x) for x in d_rates],
        "peer_run_s": med(ds, lambda r: r["run_s"]),
        "peer_time_to_first_result_s": med(ds, lambda r: r["time_to_first_result_s"]),
        "peer_resume_s": med(ds, lambda r: r["resume_s"]),
        "ratio": round(c_rate / d_rate, 2),
        "steady_ratio": round(c_steady / d_steady, 2) if d_steady > 0 else None,
        "ratio_def": (
            f"connectile_blocks_per_s / peer_blocks_per_s, medians of {runs} runs (who goes first alternates), each in a fresh process "
            "(worker start-up included on both sides; Ray's cluster start reported apart); steady = blocks after the "
            "first result / time from first to last result"
        ),
        "target_blocks_per_s": DISPATCH_TARGET,
        "meets_target": c_rate >= DISPATCH_TARGET,
        "all_done_and_resumable": ok,
        "machine": machine_short(m),
    }
    emit(line)
    return [line]


def _make_gauss_input(url: str, size: int, chunk: int) -> None:
    import numpy as np

    from engine.storage import create_volume

    vol = create_volume(url, (size, size, size), "uint8", (chunk, chunk, chunk))
    rng = np.random.default_rng(1)
    step = max(chunk, 64)
    for z in range(0, size, step):  # slabs: keeps this process small
        from engine.geometry import Box

        box = Box((z, 0, 0), (min(z + step, size), size, size))
        vol.write(box, np.clip(rng.normal(128, 30, size=box.shape), 0, 255).astype(np.uint8))


def _max_abs_diff(a_url: str, b_path: str, size: int) -> float:
    import numpy as np
    import tensorstore as ts

    from engine.storage import open_volume

    a = open_volume(a_url)
    b = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": b_path}}, read=True).result()
    worst = 0.0
    for z in range(0, size, 64):
        from engine.geometry import Box

        box = Box((z, 0, 0), (min(z + 64, size), size, size))
        x = a.read(box)
        y = b[box.to_slices()].read().result()
        worst = max(worst, float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()))
    return worst


def bench_gaussian(cfg: dict[str, Any], wd: Path, m: dict[str, Any]) -> list[dict[str, Any]]:
    size, block, workers, sigma, runs = cfg["gauss_size"], cfg["gauss_block"], cfg["workers"], cfg["sigma"], cfg["runs"]
    chunk = min(64, block)
    root = wd / "gauss.zarr"
    inp, out_c, out_s = str(root / "raw"), str(root / "smooth_connectile"), str(root / "smooth_scipy")
    _make_gauss_input(inp, size, chunk)
    common = {"input": inp, "sigma": sigma, "chunks": [chunk] * 3, "size": size}
    cs: list[dict[str, Any]] = []
    ss: list[dict[str, Any]] = []
    for k, order in enumerate(side_orders(["connectile", "scipy"], runs)):  # who goes first alternates; each run rewrites its output
        for side in order:
            if side == "connectile":
                params = {**common, "output": out_c, "block": block, "workers": workers, "state_dir": str(wd / f"gauss-state{k}")}
                cs.append(run_child("gaussian-connectile", params, _ray_tmpdir(wd)))
            else:
                ss.append(run_child("gaussian-scipy", {**common, "output": out_s}))
    diff = _max_abs_diff(out_c, out_s, size)

    def med(rs: list[dict[str, Any]], key: str, nd: int = 2) -> float:
        return round(_median([r[key] for r in rs]), nd)

    def peak_mib(rs: list[dict[str, Any]], key: str) -> int:
        return round(max(r[key] for r in rs) / MIB)

    c_s, s_s = _median([r["run_s"] for r in cs]), _median([r["run_s"] for r in ss])
    c_peak, s_peak = max(r["peak_rss_bytes"] for r in cs), max(r["peak_rss_bytes"] for r in ss)
    line = {
        "bench": "gaussian",
        "shape": [size] * 3,
        "input": f"uint8 zarr v2, chunks {chunk}^3, blosc-zstd; output float32 zarr v2, chunks {chunk}^3",
        "sigma": sigma,
        "write_block": [block] * 3,
        "halo": cs[0]["halo"],
        "blocks": cs[0]["blocks"],
        "workers": workers,
        "runs": runs,
        "connectile_s": round(c_s, 2),
        "connectile_s_runs": [round(r["run_s"], 2) for r in cs],
        "connectile_actor_start_s": med(cs, "actor_start_s"),
        "connectile_cluster_start_s": med(cs, "cluster_start_s"),
        "connectile_peak_rss_mib": round(c_peak / MIB),
        "connectile_peak_rss_upper_mib": peak_mib(cs, "peak_rss_upper_bytes"),
        "connectile_driver_peak_rss_mib": peak_mib(cs, "driver_peak_rss_bytes"),
        "connectile_worker_peak_rss_mib": [round(x / MIB) for x in max((r["worker_peak_rss_bytes"] for r in cs), key=sum)],
        "ray_daemons_peak_rss_mib": peak_mib(cs, "ray_daemons_peak_rss_bytes"),
        "peer": f"scipy {_version('scipy')} ndimage.gaussian_filter, one process (TensorStore {_version('tensorstore')} read/write)",
        "peer_s": round(s_s, 2),
        "peer_s_runs": [round(r["run_s"], 2) for r in ss],
        "peer_read_s": med(ss, "read_s"),
        "peer_filter_s": med(ss, "filter_s"),
        "peer_write_s": med(ss, "write_s"),
        "peer_peak_rss_mib": round(s_peak / MIB),
        "ratio": round(s_s / c_s, 2),
        "ratio_def": (
            f"peer_s / connectile_s (speed-up), medians of {runs} runs (who goes first alternates); connectile_s includes starting its "
            "workers, not Ray's cluster start (reported apart); both include reading and writing the zarrs"
        ),
        "memory_ratio": round(s_peak / c_peak, 2),
        "memory_ratio_def": (
            "peer_peak_rss / connectile_peak_rss; peer: VmHWM of its process; connectile: peak of the summed RSS of "
            "driver + Ray workers sampled every 50 ms (upper bound: sum of their VmHWM); max over runs"
        ),
        "max_abs_diff": diff,
        "agree": diff <= AGREE_TOL,
        "machine": machine_short(m),
    }
    emit(line)
    return [line]


def _stats(times: list[float], nbytes: int) -> dict[str, float]:
    return {"median": nbytes / _median(times) / MIB, "best": nbytes / min(times) / MIB}


def bench_storage(cfg: dict[str, Any], wd: Path, m: dict[str, Any]) -> list[dict[str, Any]]:
    shape, box, reps = cfg["storage_shape"], cfg.get("storage_box", 128), cfg["reps"]
    chunk = min(64, box)
    r = run_child("storage", {"path": str(wd / "storage.zarr" / "raw"), "shape": list(shape), "box": box, "chunk": chunk, "reps": reps})
    lines = []
    for op in ("read", "write"):
        c = _stats(r["times"][f"c_{op}"], r["bytes"])
        t = _stats(r["times"][f"t_{op}"], r["bytes"])
        ratio = c["median"] / t["median"]
        line = {
            "bench": f"storage_{op}",
            "shape": list(shape),
            "dtype": "uint8",
            "chunks": [chunk] * 3,
            "box": [box] * 3,
            "boxes": r["boxes"],
            "reps": reps,
            "connectile_mib_per_s": round(c["median"], 1),
            "connectile_best_mib_per_s": round(c["best"], 1),
            "peer": f"tensorstore {_version('tensorstore')}",
            "peer_mib_per_s": round(t["median"], 1),
            "peer_best_mib_per_s": round(t["best"], 1),
            "ratio": round(ratio, 3),
            "ratio_best": round(c["best"] / t["best"], 3),
            "ratio_def": f"connectile / peer throughput, medians (ratio_best: best passes) of {reps} interleaved repetitions",
            "target_ratio": STORAGE_TARGET,
            "meets_target": ratio >= STORAGE_TARGET,
            "machine": machine_short(m),
        }
        emit(line)
        lines.append(line)
    return lines


def bench_scale(cfg: dict[str, Any], wd: Path, m: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 17 pt 6: one no-op run over ``scale_blocks`` blocks of 128^3 with done-markers, then a
    resume of the finished run in a fresh process. One run (at 10^7 blocks it takes minutes)."""
    n, workers = cfg["scale_blocks"], cfg["workers"]
    grid = _grid_shape(n)
    params = {"grid": list(grid), "block_shape": 128, "workers": workers, "state_dir": str(wd / "scale" / "state")}
    r = run_child("scale-run", params, _ray_tmpdir(wd), timeout=7200)
    q = run_child("scale-resume", params, timeout=3600)
    sustained = r["sustained_blocks_per_s"]
    peak = r["sampled_peaks_bytes"]
    meets = {
        "driver_peak_rss": r["driver_peak_rss_bytes"] <= SCALE_TARGETS["driver_peak_rss_mib"] * MIB,
        "sustained_blocks_per_s": sustained is not None and sustained >= SCALE_TARGETS["sustained_blocks_per_s"],
        "resume_s": q["resume_s"] <= SCALE_TARGETS["resume_s"],
    }
    line = {
        "bench": "scale",
        "blocks": n,
        "grid": list(grid),
        "block_shape": [128] * 3,
        "workers": workers,
        "op": "NoOp (touches no voxels): the runtime's own cost per block",
        "done_markers": "SQLite (WAL) in a real state folder",
        "run_s": round(r["run_s"], 1),
        "actor_start_s": round(r["actor_start_s"], 2),
        "blocks_per_s": round(n / r["run_s"], 1),
        "sustained_blocks_per_s": None if sustained is None else round(sustained, 1),
        "sustained_def": "blocks returned between 10% and 90% of the run / the time between (warm-up and tail left out)",
        "driver_peak_rss_mib": round(r["driver_peak_rss_bytes"] / MIB, 1),
        "driver_rss_before_run_mib": round(r["driver_rss_before_run_bytes"] / MIB, 1),
        "driver_peak_def": "VmHWM of the driver process (Python, the markers, Ray's core worker inside it); the run's growth = peak - before",
        "ray_workers_peak_rss_mib": [round(x / MIB, 1) for x in r["worker_peak_rss_bytes"]],
        "ray_daemons_peak_rss_mib": round((peak["daemons_rss"] + peak["idle_rss"]) / MIB, 1),
        "driver_cpu_s": round(r["driver_cpu_s"], 1),
        "driver_cpu_us_per_block": round(r["driver_cpu_s"] / n * 1e6, 2),
        "worker_cpu_us_per_block": round(sum(r["worker_cpu_s"]) / n * 1e6, 2),
        "marker_bytes": r["marker_bytes"],
        "marker_bytes_per_block": round(r["marker_bytes"] / n, 2),
        "resume_s": round(q["resume_s"], 2),
        "resume_peak_rss_mib": round(q["peak_rss_bytes"] / MIB, 1),
        "resume_rss_before_mib": round(q["rss_before_bytes"] / MIB, 1),
        "load_avg_1m_run": r["load_avg_1m"],
        "load_avg_1m_resume": q["load_avg_1m"],
        "targets": SCALE_TARGETS,
        "meets": meets,
        "meets_target": all(meets.values()),
        "all_done_and_resumable": r["done"] == n and q["already_done"] == n and q["done"] == 0 and q["workers_started"] == 0,
        "machine": machine_short(m),
    }
    emit(line)
    return [line]


BENCHES = {"dispatch": bench_dispatch, "gaussian": bench_gaussian, "storage": bench_storage, "scale": bench_scale}
DEFAULT_BENCHES = ["dispatch", "gaussian", "storage"]  # scale runs when named (--only scale) and in --smoke


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes (10,000 blocks, 128^3, ...), 3 runs")
    ap.add_argument("--smoke", action="store_true", help="seconds: tiny sizes (500 blocks, 32^3, ...), 1 run; checks that the script runs")
    ap.add_argument("--only", action="append", choices=sorted(BENCHES), help="run only this benchmark (repeatable)")
    ap.add_argument("--workdir", help="make the temporary folder inside this one (default: the system temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--workers", type=int, default=2, help="Ray workers / daisy workers (default 2)")
    ap.add_argument("--blocks", type=int, help="no-op blocks for dispatch (default 100,000; 10,000 with --quick); with --only scale alone, "
                    "the blocks of the scale run (default 10^7; 10^6 with --quick)")
    ap.add_argument("--gaussian-size", type=int, help="edge of the cubic gaussian volume (default 512; 128 with --quick)")
    ap.add_argument("--gaussian-block", type=int, help="edge of a gaussian write block (default 128; 64 with --quick)")
    ap.add_argument("--sigma", type=float, default=2.0, help="gaussian sigma in voxels (default 2)")
    ap.add_argument("--reps", type=int, help="storage repetitions (default 9; 3 with --quick, 1 with --smoke)")
    ap.add_argument("--runs", type=int, help="runs of each side of dispatch and gaussian, medians reported (default 3; 1 with --smoke)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return harness.child_main(CHILDREN, args.child, args.params)
    cfg = dict(SIZES["smoke" if args.smoke else "quick" if args.quick else "full"])
    if args.blocks is not None and args.only == ["scale"]:
        cfg["scale_blocks"] = args.blocks
    for key, value in (("blocks", args.blocks), ("gauss_size", args.gaussian_size), ("gauss_block", args.gaussian_block), ("reps", args.reps), ("runs", args.runs)):
        if value is not None:
            cfg[key] = value
    cfg["workers"], cfg["sigma"] = args.workers, args.sigma
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    wd = Path(tempfile.mkdtemp(prefix="cb-", dir=args.workdir))
    m = machine_info()
    emit({"bench": "machine", **m, "quick": args.quick, "smoke": args.smoke, "config": cfg, "command": " ".join([Path(sys.executable).name, *sys.argv])})
    lines: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    try:
        for name in args.only or [*DEFAULT_BENCHES, *(["scale"] if args.smoke else [])]:
            print(f"[bench] {name} ...", file=sys.stderr, flush=True)
            lines += BENCHES[name](cfg, wd, m)
    finally:
        if args.keep:
            print(f"[bench] kept {wd}", file=sys.stderr)
        else:
            shutil.rmtree(wd, ignore_errors=True)
        for extra in _EXTRA_DIRS:
            shutil.rmtree(extra, ignore_errors=True)
    print(f"[bench] done in {time.perf_counter() - t0:.0f} s (1-minute load average now {os.getloadavg()[0]:.2f})", file=sys.stderr)
    bad = [ln["bench"] for ln in lines if ln.get("agree") is False or ln.get("all_done_and_resumable") is False]
    missed = [ln["bench"] for ln in lines if ln.get("meets_target") is False]
    if missed:
        print(f"[bench] below target: {', '.join(missed)}", file=sys.stderr)
    if bad:
        print(f"[bench] WRONG RESULTS: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
