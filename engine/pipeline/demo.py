"""The demo: the main job on the embedded default, end to end on a (local) Ray cluster.

At this stage of the project it synthesizes a deterministic EM-like volume with ground truth
(blockwise, on Ray), runs a halo-needing blockwise operation over it (a Gaussian filter, on Ray),
checks one block against the whole-volume reference, writes a PNG preview and a JSON summary, and
returns the summary. Running it again resumes: finished blocks are not recomputed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ConfigError
from engine.geometry import BlockGrid, Box
from engine.ops import GaussianFilter
from engine.runtime import BackendName, RunSummary, default_state_dir, run_blockwise
from engine.storage import open_volume
from engine.synth import SynthOp, SynthParams, save_preview

log = logging.getLogger(__name__)

DEFAULT_SHAPE = (64, 512, 512)
DEFAULT_CHUNKS = (16, 64, 64)


def run_demo(
    out: str | os.PathLike[str] = "runs/demo",
    *,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    seed: int = 0,
    chunks: tuple[int, int, int] = DEFAULT_CHUNKS,
    sigma: float = 1.5,
    backend: BackendName = "ray",
    workers: int | None = None,
    address: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo into the folder ``out`` and return its summary (also ``out/summary.json``)."""
    if any(s < c for s, c in zip(shape, chunks, strict=True)):
        raise ConfigError(f"the demo volume {shape} is smaller than one chunk {chunks}", "give --shape of at least 16,64,64")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    group = str(root / "demo.zarr")
    t0 = time.monotonic()
    runs: list[RunSummary] = []
    common: dict[str, Any] = {"backend": backend, "workers": workers, "address": address, "overwrite": overwrite, "progress": progress}

    # 1. a synthetic EM volume with ground truth, blockwise
    synth = SynthOp(output=group, shape=shape, chunks=chunks, synth=SynthParams(seed=seed), overwrite=overwrite)
    grid = BlockGrid(Box.from_shape(shape), write_shape=tuple(2 * c for c in chunks))
    runs.append(run_blockwise(synth, grid, state_dir=default_state_dir(synth.url("raw"), "synth"), name="synth", **common))

    # 2. a halo-needing blockwise operation over it
    smooth = GaussianFilter(input=synth.url("raw"), output=f"{group}/smoothed", sigma=(sigma / 5, sigma, sigma), chunks=chunks, overwrite=overwrite)
    grid2 = BlockGrid(Box.from_shape(shape), write_shape=grid.write_shape, context=smooth.halo())
    runs.append(run_blockwise(smooth, grid2, state_dir=default_state_dir(smooth.output, "gaussian"), name="gaussian", **common))

    # 3. check: one block of the blockwise result equals the whole-volume filter there
    check = _check_against_whole_volume(smooth, grid2)
    preview = root / "preview.png"
    save_preview(group, preview)
    raw = open_volume(synth.url("raw"))
    neurons = open_volume(synth.url("neurons"))
    summary = {
        "output": group,
        "volume": {"shape": list(raw.shape), "voxel_size_nm": list(raw.voxel_size), "seed": seed},
        "ground_truth": {
            "neurons": int(np.unique(neurons.read(neurons.box)).size),
            "mito_voxels": int(runs[0].stats.get("mito_voxels", 0)),
            "synapse_voxels": int(runs[0].stats.get("synapse_voxels", 0)),
        },
        "runs": [r.to_dict() for r in runs],
        "max_abs_diff_vs_whole_volume": check,
        "preview": str(preview),
        "wall_seconds": time.monotonic() - t0,
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def _check_against_whole_volume(op: GaussianFilter, grid: BlockGrid) -> float:
    """Max |blockwise - scipy on the whole input| over the whole volume (small demo volumes only)."""
    from scipy.ndimage import gaussian_filter

    src = open_volume(op.input)
    if src.box.size > 64 * 512 * 512:
        return float("nan")
    whole = gaussian_filter(src.read(src.box).astype(np.float32), sigma=op.sigma, mode="reflect", truncate=op.truncate)
    got = open_volume(op.output).read(src.box)
    return float(np.abs(got - whole).max())


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """What ``connectile demo`` prints."""
    v, gt = summary["volume"], summary["ground_truth"]
    lines = [
        f"demo volume {summary['output']}: shape {tuple(v['shape'])} (z,y,x), voxel size {tuple(v['voxel_size_nm'])} nm, seed {v['seed']}",
        f"ground truth: {gt['neurons']} neurons, {gt['mito_voxels']} mitochondrion voxels, {gt['synapse_voxels']} synapse voxels",
    ]
    for r in summary["runs"]:
        lines += RunSummary(**{k: val for k, val in r.items() if k != "ok"}).lines()
    lines.append(f"blockwise Gaussian vs whole-volume scipy: max |diff| = {summary['max_abs_diff_vs_whole_volume']:.2e}")
    lines.append(f"preview: {summary['preview']}   total {summary['wall_seconds']:.1f} s")
    return lines
