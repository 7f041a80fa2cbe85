"""The driver's step between passes B and C of :func:`engine.ops.label.label_volume`: union-find over
boundary labels, global sizes, consecutive final ids, small-object removal and the object table.

Memory: the labels that touch a block face (their pairs, representatives and merged statistics), plus
one block's statistics at a time; never a volume, never all objects at once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from engine.geometry import BlockGrid
from engine.kernels.objects import ObjectStats
from engine.kernels.stitch import owned_mask, resolve
from engine.ops.scratch import Scratch
from engine.storage.object_table import ObjectTableWriter

log = logging.getLogger(__name__)


@dataclass
class Resolved:
    objects: int
    removed: int
    boundary_labels: int
    pairs: int


def load_offsets(scratch: Scratch, num_blocks: int) -> np.ndarray:
    """Provisional id offsets: ``offsets[b]`` = labels in blocks before ``b`` (``num_blocks + 1``
    entries, the last the total); saved as ``offsets`` for pass B."""
    counts = np.zeros(num_blocks, np.int64)
    for start in range(0, num_blocks, 512):
        ids = range(start, min(num_blocks, start + 512))
        for b, data in zip(ids, scratch.get_many([f"stats/{b}" for b in ids]), strict=True):
            counts[b] = ObjectStats.counts_from_bytes(data) - 1
    offsets = np.zeros(num_blocks + 1, np.uint64)
    np.cumsum(counts, out=offsets[1:])
    scratch.put_arrays("offsets", {"offsets": offsets})
    return offsets


def resolve_labels(
    scratch: Scratch,
    grid: BlockGrid,
    offsets: np.ndarray,
    *,
    min_size: int = 0,
    table: str | os.PathLike[str] | None = None,
    table_metadata: dict[str, str] | None = None,
    pairs: np.ndarray | None = None,
) -> Resolved:
    """Resolve the pairs of pass B (the files ``pairs/<block>``, or ``pairs`` when given) into the
    lookup data of pass C (``mapping``)."""
    nb = grid.num_blocks
    counts = np.diff(offsets).astype(np.int64)
    with_labels = np.flatnonzero(counts)
    if pairs is None:
        parts = [p["pairs"] for p in scratch.need_arrays_many([f"pairs/{b}" for b in with_labels])]
        pairs = np.concatenate(parts) if parts else np.zeros((0, 2), np.uint64)
    res = resolve(pairs)
    keys, nk = res.keys, res.keys.size
    rep_pos = np.searchsorted(keys, res.rep)
    key_block = np.searchsorted(offsets[1:], keys, side="left")
    key_local = (keys - offsets[key_block]).astype(np.int64)
    lo_of = np.searchsorted(keys, offsets, side="right")  # keys of block b: lo_of[b]:lo_of[b + 1]
    is_rep = rep_pos == np.arange(nk)
    n_objects = int(offsets[-1]) - int(nk - is_rep.sum())
    log.info("resolve: %d pairs over %d boundary labels -> %d objects", len(pairs), nk, n_objects)

    need_stats = min_size > 1 or table is not None
    comp = _boundary_stats(scratch, with_labels, key_block, lo_of, rep_pos, key_local) if need_stats else None
    kept_key = np.ones(nk, bool) if comp is None or min_size <= 1 else comp.counts[rep_pos] >= min_size
    owned = is_rep & kept_key

    kept_offsets = np.zeros(nb + 1, np.uint64)
    final_rep = np.zeros(nk, np.uint64)
    writer = ObjectTableWriter(table, table_metadata) if table is not None else None
    try:
        for start in range(0, nb, 256):  # blocks in order, their statistics fetched 256 at a time
            ids = list(range(start, min(nb, start + 256)))
            stats_raw = scratch.get_many([f"stats/{b}" for b in ids if counts[b]]) if need_stats else []
            it = iter(stats_raw)
            for b in ids:
                n = int(counts[b])
                if n == 0:
                    kept_offsets[b + 1] = kept_offsets[b]
                    continue
                lo, hi = lo_of[b], lo_of[b + 1]
                local_bnd = key_local[lo:hi]
                st = ObjectStats.from_bytes(next(it)) if need_stats else None
                mask = owned_mask(n, local_bnd, owned[lo:hi], None if st is None else st.counts, min_size)
                rank = np.cumsum(mask, dtype=np.uint64)
                base = kept_offsets[b]
                mine = owned[lo:hi]
                final_rep[lo:hi][mine] = base + rank[local_bnd[mine]]
                kept_offsets[b + 1] = base + rank[-1]
                if writer is not None and st is not None and comp is not None:
                    idx = np.flatnonzero(mask)
                    rows = _table_rows(st, comp, idx, local_bnd, np.arange(lo, hi))
                    writer.append(rows.table_columns(base + np.arange(1, idx.size + 1, dtype=np.uint64)))
    finally:
        if writer is not None:
            writer.close()
    final = np.where(kept_key, final_rep[rep_pos], np.uint64(0)).astype(np.uint64)
    scratch.put_arrays("mapping", {"keys": keys, "final": final, "owned": owned, "offsets": offsets, "kept_offsets": kept_offsets})
    kept = int(kept_offsets[-1])
    return Resolved(objects=kept, removed=n_objects - kept, boundary_labels=int(nk), pairs=len(pairs))


def _boundary_stats(scratch: Scratch, with_labels: np.ndarray, key_block: np.ndarray, lo_of: np.ndarray, rep_pos: np.ndarray,
                    key_local: np.ndarray) -> ObjectStats:
    """Global statistics of the objects that cross faces (one row per boundary label's representative),
    merged from their pieces in every block."""
    first = scratch.need(f"stats/{int(with_labels[0])}") if with_labels.size else None
    proto = ObjectStats.from_bytes(first) if first is not None else ObjectStats(np.zeros(1, np.int64))
    comp = ObjectStats.empty(rep_pos.size, full=proto.full, prob=proto.prob_sum is not None)
    blocks_b = np.unique(key_block)
    for b, data in zip(blocks_b, scratch.get_many([f"stats/{b}" for b in blocks_b]), strict=True):
        lo, hi = lo_of[b], lo_of[b + 1]
        ObjectStats.from_bytes(data).add_into(comp, rep_pos[lo:hi], key_local[lo:hi])
    return comp


def _table_rows(st: ObjectStats, comp: ObjectStats, idx: np.ndarray, local_bnd: np.ndarray, key_pos: np.ndarray) -> ObjectStats:
    """The table rows of a block's kept labels ``idx``: the block's own statistics, or the merged
    ones (``comp`` at ``key_pos``) for its boundary labels ``local_bnd``."""
    rows = st.take(idx)
    where = np.full(len(st.counts), -1, np.int64)
    where[local_bnd] = key_pos
    sel = where[idx] >= 0
    if sel.any():
        merged = comp.take(where[idx][sel])
        rows.counts[sel] = merged.counts
        for name in ("bbox", "coord_sum", "prob_sum"):
            dst, src = getattr(rows, name), getattr(merged, name)
            if dst is not None and src is not None:
                dst[sel] = src
    return rows
