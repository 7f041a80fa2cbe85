"""Scale on paper: the projected wall time and GPU-hours of the whole pipeline on a 1 PB volume.

    python benchmarks/projection.py --gpus 256
    python benchmarks/projection.py --gpus 64 --voxels 1e15 --json
    python benchmarks/projection.py --gpus 256 --costs benchmarks/results/my-h100.json
    python benchmarks/projection.py --gpus 256 --driver-scale scale.jsonl   # bench_runtime.py --only scale > scale.jsonl

Every number it uses is a *per-block cost* (worker-seconds per 10^9 voxels, on one GPU worker for the
GPU stages and one CPU worker for the CPU stages) or a stated assumption; the script prints them, where
each came from, and the projection per stage. Costs come from, in order of preference:

1. ``--costs FILE`` or the newest ``benchmarks/results/*.json`` that holds ``stage_costs`` (the
   format below; ``connectile bench`` writes these files, and any benchmark may);
2. the defaults in :data:`DEFAULT_COSTS`, copied from benchmarks/RESULTS.md where a benchmark
   measured them, else marked ``assumed`` with the reason.

The results format (JSON)::

    {"kind": "connectile-stage-costs", "machine": "...", "date": "2026-11-22",
     "stage_costs": {"label": {"worker_s_per_gvox": 61.0, "device": "cpu", "source": "bench_cc.py --quick"}, ...}}

The model (all assumptions are printed):

- A stage processes ``fraction`` of the volume's voxels at its cost; its workers are the GPUs (GPU
  stages) or ``cpus_per_gpu`` CPU workers per GPU node (CPU stages); workers scale with
  ``efficiency`` (default 0.8: stragglers, retries, uneven blocks).
- Each block's data must also move through storage: a stage takes at least
  ``voxels x bytes_per_voxel / (workers x storage MiB/s per worker)``.
- The driver dispatches at most ``dispatch_blocks_per_s`` blocks per second (measured on 2 cores; a
  bigger head node is faster), so a stage takes at least ``blocks / dispatch rate``. With
  ``--driver-scale FILE`` (the JSON lines of ``bench_runtime.py --only scale``) or
  ``--driver-us-per-block``/``--marker-bytes-per-block``, that rate is one driver core at the measured
  CPU per block (blocks of ``--driver-block``^3), and a driver section prints one pass over every
  block: the driver's time, the done-marker store's size, the resume time.
- Stages run one after the other; the cluster is held for the whole run, so GPU-hours are the wall
  time times the GPUs (busy GPU-hours, the GPU stages' compute only, are printed too).
- Training is a fixed cost (steps x seconds per step x rounds), independent of the volume size.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class StageCost:
    """The cost model of one stage."""

    worker_s_per_gvox: float
    device: str  # "gpu" or "cpu"
    fraction: float = 1.0  # of the volume's voxels the stage processes
    bytes_per_voxel: float = 2.0  # read + written per processed voxel
    source: str = "assumed"


#: Defaults. ``measured`` entries are copied from benchmarks/RESULTS.md (2-core AMD EPYC VM, no GPU);
#: the rest are assumptions, each with its reason.
DEFAULT_COSTS: dict[str, StageCost] = {
    "embed": StageCost(20.0, "gpu", fraction=1 / 64, bytes_per_voxel=1.0,
                       source="assumed: a patch encoder on 4x-downsampled raw (1/64 of the voxels) at about 50 Mvox/s per GPU"),
    "predict": StageCost(10.0, "gpu", bytes_per_voxel=4.0,
                         source="assumed: 3D U-Net sliding window with blending, fp16, about 100 Mvox/s per H100-class GPU (uint8 in, 3 uint8 affinities out)"),
    "label": StageCost(140.0, "cpu", fraction=0.1, bytes_per_voxel=9.0,
                       source="derived: cc3d on the whole array incl. zarr read/write measured 92 s per 10^9 voxels (bench_cc.py --quick, 256^3, "
                              "2026-11-22), x1.5 for Connectile's stitching passes (pairs, resolve, relabel: 2.9 of its 11 s there); "
                              "assumed: mitochondria are labelled in the 1/10 of the blocks that hold foreground"),
    "segment": StageCost(180.0, "cpu", bytes_per_voxel=11.0,
                         source="assumed: watershed + agglomeration at about 3x the cost of connected components per voxel"),
    "filter": StageCost(85.7, "cpu", fraction=0.0,
                        source="measured: bench_runtime.py gaussian 512^3, 2 workers, 5.75 s (RESULTS.md); not a pipeline stage (fraction 0), the CPU yardstick"),
    "query": StageCost(2.0, "gpu", fraction=0.001, bytes_per_voxel=1.0,
                       source="assumed: ROI crops (about 0.1% of the voxels) through two VAEs"),
}

#: Assumptions that are not per-voxel costs.
DEFAULT_ASSUMPTIONS: dict[str, Any] = {
    "cpus_per_gpu": 8,  # deploy/kuberay/raycluster.yaml: 8 CPUs per 1-GPU worker pod
    "efficiency": 0.8,
    "storage_mib_s_per_worker": 200.0,  # cloud object storage per worker process (local zarr measured 995 MiB/s read on 2 cores)
    "block_voxels": 256**3,
    "dispatch_blocks_per_s": 38375.0,  # measured: bench_runtime.py dispatch, 2 workers (RESULTS.md)
    "train_steps": 20000,
    "train_s_per_step": 0.25,  # assumed: batch of 2 x 128^3 crops on one GPU
    "train_gpus": 8,  # data-parallel Ray Train workers
    "rounds": 2,  # active-learning rounds: predict, label/segment and query run once per round
}


def load_costs(path: Path | None) -> tuple[dict[str, StageCost], str]:
    """The default costs, overridden by the ``stage_costs`` of ``path`` (or of the newest results file)."""
    costs = {k: StageCost(**asdict(v)) for k, v in DEFAULT_COSTS.items()}
    candidates = [path] if path is not None else sorted(RESULTS_DIR.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for p in candidates:
        if p is None or not p.is_file():
            if path is not None:
                raise SystemExit(f"projection: no costs file {path}")
            continue
        try:
            data = json.loads(p.read_text())
        except ValueError as err:
            raise SystemExit(f"projection: {p} is not JSON ({err})") from err
        measured = data.get("stage_costs") if isinstance(data, dict) else None
        if not measured:
            continue
        for name, c in measured.items():
            base = asdict(costs[name]) if name in costs else {"device": "cpu"}
            costs[name] = StageCost(**{**base, **c, "source": f"{c.get('source', 'measured')} ({p.name})"})
        return costs, str(p)
    return costs, "defaults (benchmarks/RESULTS.md and stated assumptions)"


@dataclass
class StageProjection:
    stage: str
    device: str
    workers: int
    compute_h: float
    io_h: float
    dispatch_h: float
    wall_h: float
    busy_gpu_h: float
    bound: str


def project(voxels: float, gpus: int, costs: dict[str, StageCost], a: dict[str, Any]) -> list[StageProjection]:
    """Per-stage projection for ``voxels`` on ``gpus`` GPUs (see the module docstring)."""
    out = []
    for name, c in costs.items():
        if c.fraction <= 0:
            continue
        rounds = a["rounds"] if name in ("predict", "label", "segment", "query") else 1
        workers = gpus if c.device == "gpu" else gpus * a["cpus_per_gpu"]
        vox = voxels * c.fraction * rounds
        compute_s = vox / 1e9 * c.worker_s_per_gvox / (workers * a["efficiency"])
        io_s = vox * c.bytes_per_voxel / 2**20 / (workers * a["storage_mib_s_per_worker"])
        dispatch_s = vox / a["block_voxels"] / a["dispatch_blocks_per_s"]
        wall_s = max(compute_s, io_s, dispatch_s)
        bound = "compute" if wall_s == compute_s else "storage" if wall_s == io_s else "dispatch"
        busy = compute_s * workers / 3600 if c.device == "gpu" else 0.0
        out.append(StageProjection(name, c.device, workers, compute_s / 3600, io_s / 3600, dispatch_s / 3600, wall_s / 3600, busy, bound))
    train_s = a["train_steps"] * a["train_s_per_step"] * a["rounds"]
    out.append(StageProjection("train", "gpu", a["train_gpus"], train_s / 3600, 0.0, 0.0, train_s / 3600, train_s * a["train_gpus"] / 3600, "fixed"))
    return out


def _fmt_h(h: float) -> str:
    if h < 1 / 60:
        return f"{h * 3600:.1f} s"
    if h < 1:
        return f"{h * 60:.1f} min"
    if h < 48:
        return f"{h:.1f} h"
    return f"{h / 24:.1f} d"


def report(voxels: float, gpus: int, costs: dict[str, StageCost], source: str, a: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    rows = project(voxels, gpus, costs, a)
    wall = sum(r.wall_h for r in rows)
    gpu_h = wall * gpus
    busy = sum(r.busy_gpu_h for r in rows)
    lines = [
        f"Projection: {voxels:.3g} voxels ({voxels / 1e15:.3g} PB at 1 byte/voxel) on {gpus} GPUs "
        f"({gpus * a['cpus_per_gpu']} CPU workers); costs from {source}",
        "",
        "| stage | device | workers | compute | storage | dispatch | wall | bound by |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r.stage} | {r.device} | {r.workers} | {_fmt_h(r.compute_h)} | {_fmt_h(r.io_h)} | {_fmt_h(r.dispatch_h)} | {_fmt_h(r.wall_h)} | {r.bound} |")
    lines += [
        "",
        f"total wall time: {_fmt_h(wall)}; GPU-hours (cluster held throughout): {gpu_h:,.0f}; busy GPU-hours (GPU stages' compute): {busy:,.0f}",
        "",
        "Costs (worker-seconds per 10^9 voxels processed):",
    ]
    lines += [f"- {n}: {c.worker_s_per_gvox:g} on {c.device}, fraction {c.fraction:g}, {c.bytes_per_voxel:g} B/voxel moved -- {c.source}" for n, c in costs.items()]
    lines += ["", "Assumptions:"] + [f"- {k} = {v}" for k, v in a.items()]
    lines.append(f"- stages run one after the other; {a['rounds']} rounds of predict/label/segment/query; embed once; train {a['rounds']} x {a['train_steps']} steps")
    data = {
        "voxels": voxels, "gpus": gpus, "source": source, "assumptions": a,
        "costs": {n: asdict(c) for n, c in costs.items()}, "stages": [asdict(r) for r in rows],
        "wall_hours": wall, "gpu_hours": gpu_h, "busy_gpu_hours": busy,
    }
    return "\n".join(lines), data


def load_driver_scale(path: Path | None, us_per_block: float | None, bytes_per_block: float | None) -> dict[str, Any] | None:
    """The driver's measured per-block costs: the last ``"bench": "scale"`` line of ``path`` (the JSON
    lines ``bench_runtime.py --only scale`` prints), each overridden by a flag; None when neither is given."""
    d: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise SystemExit(f"projection: no scale results file {path} (write one with: bench_runtime.py --only scale > FILE)")
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and row.get("bench") == "scale":
                d = dict(row)
        if not d:
            raise SystemExit(f"projection: {path} holds no line of bench_runtime.py --only scale")
        d["source"] = f"{path.name}: bench_runtime.py --only scale, {d['blocks']:,} blocks, {d.get('machine', '?')}"
    if us_per_block is not None:
        d["driver_cpu_us_per_block"], d["source"] = us_per_block, "flags"
    if bytes_per_block is not None:
        d["marker_bytes_per_block"], d["source"] = bytes_per_block, "flags"
    if not d:
        return None
    if "driver_cpu_us_per_block" not in d or "marker_bytes_per_block" not in d:
        raise SystemExit("projection: give both --driver-us-per-block and --marker-bytes-per-block (or --driver-scale FILE)")
    return d


def driver_report(voxels: float, d: dict[str, Any], edge: int) -> tuple[list[str], dict[str, Any]]:
    """One pass over every block of ``edge``^3: the driver's CPU, the marker store, the resume."""
    blocks = voxels / edge**3
    us = float(d["driver_cpu_us_per_block"])
    ceiling = 1e6 / us  # blocks/s one driver core can dispatch and mark, the workers elsewhere
    pass_h = blocks / ceiling / 3600
    store_gib = blocks * float(d["marker_bytes_per_block"]) / 2**30
    out: dict[str, Any] = {"blocks": blocks, "block_edge": edge, "driver_cpu_us_per_block": us, "driver_ceiling_blocks_per_s": ceiling,
                           "driver_pass_hours": pass_h, "marker_bytes_per_block": float(d["marker_bytes_per_block"]), "marker_store_gib": store_gib,
                           "source": d["source"]}
    lines = ["", f"Driver, one pass over {blocks:.3g} blocks of {edge}^3 (per-block costs from {d['source']}):",
             f"- driver CPU {us:g} us per block (dispatch + done-marker): at most {ceiling:,.0f} blocks/s on one driver core, "
             f"{_fmt_h(pass_h)} per pass when the workers keep up",
             f"- done-markers {float(d['marker_bytes_per_block']):g} B per block: {store_gib:,.1f} GiB per pass"]
    if d.get("sustained_blocks_per_s"):
        rate = float(d["sustained_blocks_per_s"])
        out["measured_blocks_per_s"], out["measured_pass_hours"] = rate, blocks / rate / 3600
        lines.append(f"- at the rate measured with driver and workers on the same {d.get('workers', '?')} cores ({rate:,.0f} blocks/s): {_fmt_h(blocks / rate / 3600)} per pass")
    if d.get("resume_s") is not None and d.get("blocks"):
        resume_s = float(d["resume_s"]) * blocks / float(d["blocks"])
        out["resume_s"] = resume_s
        lines.append(f"- resume of a finished pass (read every done-marker, linear in the blocks): about {_fmt_h(resume_s / 3600)}")
    if d.get("driver_peak_rss_mib") is not None:
        growth = float(d["driver_peak_rss_mib"]) - float(d.get("driver_rss_before_run_mib", 0.0))
        out["driver_run_growth_mib_measured"] = growth
        lines.append(f"- driver memory: {d['driver_peak_rss_mib']:g} MiB peak at {d['blocks']:,} blocks ({growth:.0f} MiB over its start; the blocks to run are "
                     "id ranges and the markers are read in chunks, so this does not grow with the blocks)")
    return lines, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, required=True, help="GPUs in the cluster (one GPU worker each)")
    ap.add_argument("--voxels", type=float, default=1e15, help="volume size in voxels (default 1e15: 1 PB at uint8)")
    ap.add_argument("--costs", type=Path, default=None, help="a results JSON with stage_costs (default: newest in benchmarks/results/, else the defaults)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=f"change an assumption ({', '.join(DEFAULT_ASSUMPTIONS)})")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument("--driver-scale", type=Path, help="JSON lines of bench_runtime.py --only scale: the driver's measured costs per block")
    ap.add_argument("--driver-us-per-block", type=float, help="driver CPU microseconds per block (dispatch + done-marker)")
    ap.add_argument("--marker-bytes-per-block", type=float, help="done-marker store bytes per block")
    ap.add_argument("--driver-block", type=int, default=128, help="block edge for the driver's pass (default 128: 1 PB is about 5 x 10^8 blocks)")
    args = ap.parse_args(argv)
    if args.gpus < 1 or not math.isfinite(args.voxels) or args.voxels <= 0:
        print("projection: error: --gpus must be >= 1 and --voxels a positive number", file=sys.stderr)
        return 2
    a = dict(DEFAULT_ASSUMPTIONS)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in a:
            print(f"projection: error: unknown assumption {key!r}; known: {', '.join(a)}", file=sys.stderr)
            return 2
        a[key] = type(a[key])(float(value)) if isinstance(a[key], int) else float(value)
    driver = load_driver_scale(args.driver_scale, args.driver_us_per_block, args.marker_bytes_per_block)
    if driver is not None:  # the stages' dispatch bound: one driver core at the measured cost per block
        a["block_voxels"] = args.driver_block**3
        a["dispatch_blocks_per_s"] = round(1e6 / float(driver["driver_cpu_us_per_block"]), 1)
    costs, source = load_costs(args.costs)
    text, data = report(args.voxels, args.gpus, costs, source, a)
    if driver is not None:
        lines, data["driver"] = driver_report(args.voxels, driver, args.driver_block)
        text += "\n" + "\n".join(lines)
    print(json.dumps(data, indent=1) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
