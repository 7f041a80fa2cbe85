"""A tiny run directory that follows the active-learning contract (rois/ and rounds/round-NN/)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from engine.geometry import Box
from engine.storage import create_volume


def make_rois(run: Path, n: int = 12, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``RUN/rois/rois.zarr/{image,mask}`` and ``RUN/rois/index.parquet``: noise with a bright disc, the
    disc as mask (radius varies by ROI). Returns the image and mask arrays written."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = rng.integers(0, 120, size=(n, size, size), dtype=np.uint8)
    mask = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        r = 4 + i % (size // 4)
        disc = (yy - size // 2) ** 2 + (xx - size // 2) ** 2 <= r * r
        mask[i][disc] = 1
        image[i][disc] = 200
    root = run / "rois"
    root.mkdir(parents=True, exist_ok=True)
    for name, data in (("image", image), ("mask", mask)):
        vol = create_volume(root / "rois.zarr" / name, (n, size, size), "uint8", (1, size, size), overwrite=True)
        vol.write(Box((0, 0, 0), (n, size, size)), data)
    table = pa.table(
        {
            "roi_id": pa.array(np.arange(n), pa.int64()),
            "object_id": pa.array(np.arange(n) + 100, pa.uint64()),
            "z": pa.array(2 * np.arange(n) + 1, pa.int64()),
            "y": pa.array(rng.integers(8, 56, n), pa.int64()),
            "x": pa.array(rng.integers(8, 56, n), pa.int64()),
            "area": pa.array(mask.reshape(n, -1).sum(1), pa.int64()),
            "angle": pa.array(rng.uniform(-90, 90, n), pa.float64()),
            "score": pa.array([float("nan") if i == 0 else 0.5 + i / (4 * n) for i in range(n)], pa.float64()),
        }
    )
    pq.write_table(table, root / "index.parquet")
    return image, mask


def write_queries(run: Path, round_no: int, roi_ids: list[int], clusters: list[int]) -> Path:
    """``RUN/rounds/round-NN/queries.parquet``; ``rank`` is the order given (grouped by cluster by the caller)."""
    path = run / "rounds" / f"round-{round_no:02d}"
    path.mkdir(parents=True, exist_ok=True)
    q = len(roi_ids)
    table = pa.table(
        {
            "roi_id": pa.array(roi_ids, pa.int64()),
            "cluster": pa.array(clusters, pa.int32()),
            "subcluster": pa.array([-1] * q, pa.int32()),
            "rank": pa.array(list(range(q)), pa.int32()),
            "method": pa.array(["two-stream"] * q, pa.string()),
        }
    )
    # stored in another order than rank, so a reader must sort by rank
    order = np.random.default_rng(round_no).permutation(q)
    pq.write_table(table.take(pa.array(order)), path / "queries.parquet")
    return path


# the queries of round 1 in display order: three clusters, ROI ids not in id order
ROUND1_ROIS = [7, 2, 9, 4, 0, 11, 5, 3]
ROUND1_CLUSTERS = [2, 2, 2, 0, 0, 1, 1, 1]


def make_run(root: Path, n: int = 12, size: int = 32) -> Path:
    """A run with ``n`` ROIs and one round of 8 queries in 3 clusters."""
    run = root / "run"
    make_rois(run, n, size)
    write_queries(run, 1, ROUND1_ROIS, ROUND1_CLUSTERS)
    return run
