"""``objects``: the object table (Parquet: id, voxels, bounding box, centroid, mean probability) of
a label volume, measured whole: per z-slab statistics merged exactly over slabs."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.config import Config
from engine.pipeline.stage import StageContext
from engine.pipeline.stages._base import DeclaredStage
from engine.values import to_unit


class ObjectsSection(Config):
    """``objects:`` -- ``labels`` (e.g. ``label.labels``) and optionally ``probability`` (same shape)."""

    labels: str
    probability: str | None = None


class ObjectsStage(DeclaredStage, name="objects", config=ObjectsSection, order=80,
                   inputs=("labels", "probability"), outputs=("table",)):
    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        path = ctx.dir / "objects.parquet"
        object_table(ctx.input(cfg.labels), path, None if cfg.probability is None else ctx.input(cfg.probability), progress=ctx.runtime.progress)
        return {"table": str(path)}


def object_table(labels_url: str, path: Any, prob_url: str | None = None, progress: bool = False) -> int:
    """Write the object table of the label volume ``labels_url`` to ``path``; return the object count.

    Reads one z-chunk slab at a time (the labels of a slab are renumbered to 1..k for the statistics,
    then merged by id), so memory is one slab plus a few numbers per object.
    """
    import fastremap
    from tqdm import tqdm

    from engine.errors import ConfigError, StorageError
    from engine.geometry import Box
    from engine.kernels.objects import ObjectStats, block_stats
    from engine.ops.objects import ObjectTableWriter
    from engine.storage import open_volume

    vol = open_volume(labels_url)
    if vol.dtype.kind not in "iu" or len(vol.shape) != 3:
        raise ConfigError(f"{vol.url} is {vol.dtype} {vol.shape}; the object table needs a (z, y, x) integer label volume", "give the labels, e.g. label.labels")
    prob = open_volume(prob_url) if prob_url else None
    if prob is not None and prob.spatial_shape != vol.spatial_shape:
        raise StorageError(f"probability {prob.url} has shape {prob.spatial_shape}, labels {vol.spatial_shape}", "give volumes of the same shape")
    depth = vol.chunk_shape[0]
    ids: list[np.ndarray] = []
    parts: list[ObjectStats] = []
    for z in tqdm(range(0, vol.spatial_shape[0], depth), desc="objects", disable=not progress, unit="slab"):
        box = Box((z, 0, 0), (min(z + depth, vol.spatial_shape[0]), *vol.spatial_shape[1:]))
        lab = vol.read(box)
        uniq = fastremap.unique(lab)
        uniq = uniq[uniq != 0]
        if not uniq.size:
            continue
        local, _ = fastremap.renumber(lab, preserve_zero=True, in_place=False)
        remap = fastremap.component_map(local, lab)
        p = None
        if prob is not None:
            p = to_unit(prob.read(box), dtype=np.float64)
        stats = block_stats(local.astype(np.uint32), int(local.max()), origin=box.start, prob=p)
        order = np.arange(1, int(local.max()) + 1)
        ids.append(np.array([remap[int(i)] for i in order], np.uint64))
        parts.append(stats.take(order))
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.uint64)
    uniq_ids, rows = np.unique(all_ids, return_inverse=True)
    total = ObjectStats.empty(uniq_ids.size, full=True, prob=prob is not None)
    start = 0
    for part in parts:
        n = part.counts.size
        part.add_into(total, rows[start : start + n])
        start += n
    meta = {"labels": vol.url, "probability": prob.url if prob is not None else "", "voxel_size": str(list(vol.voxel_size))}
    with ObjectTableWriter(path, meta) as writer:
        writer.append(total.table_columns(uniq_ids))
    return int(uniq_ids.size)
