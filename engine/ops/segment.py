"""Neurons from affinities, blockwise: ``segment_volume``.

The same id machinery as :mod:`engine.ops.label`, with fragments for components::

    A  seg-fragments  watershed fragments of each block (seeds at distance-transform maxima, 3D or per
                      section) -> local ids 1..n_b in a uint32 scratch volume; the block's inner
                      region-adjacency edges with their scores; its fragment faces and low-face affinities
       (driver)       provisional ids: prefix sum of the fragment counts
    B  seg-edges      edges across the block's faces with its forward neighbours (an edge between two
                      blocks' fragments only ever lies on their common face, so its score is exact); the
                      edges scoring at least ``threshold`` (inner ones too) are merges
       (driver)       union-find over the merges (agglomeration at the threshold), consecutive ids
    C  cc-relabel     fragments -> neuron ids (uint64)

Agglomeration ``threshold`` merges every edge whose score (mean, or a quantile, of the affinities
across it) reaches ``threshold``; ``mean`` (hierarchical, like waterz) has pass B write every edge
with the sum and count of its affinities and the driver merge best-first, re-scoring merged regions
by their mean affinity, down to ``threshold`` (the driver then holds the whole region graph). Given the
fragments, either result is exactly what the same rule gives on the whole volume at once; with
``per_section`` and blocks spanning whole sections, the fragments are the whole volume's too (3D
fragments are seeded per block, so they differ from the whole volume's near block faces).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field, PrivateAttr
from typing_extensions import Unpack

from engine.errors import ConfigError, StorageError
from engine.faults import kill_point
from engine.geometry import Block, BlockGrid, Box
from engine.kernels.agglomerate import edge_sums, mean_agglomeration
from engine.kernels.objects import ObjectStats
from engine.kernels.stitch import block_faces
from engine.kernels.watershed import as_float, block_contacts, edge_scores, fragments
from engine.ops.label import LabelResult, label_grid, run_record
from engine.ops.label_passes import RelabelOp, put_local
from engine.ops.label_resolve import Resolved, load_offsets, resolve_labels
from engine.ops.scratch import Scratch
from engine.options import check_keys
from engine.params import Agglomeration, Scoring, SegmentParams
from engine.runtime import BlockOp
from engine.runtime.lock import one_driver
from engine.runtime.options import RuntimeOptions
from engine.runtime.session import CompletionRecord, Session
from engine.storage import Volume, open_volume

log = logging.getLogger(__name__)

#: the defaults of :func:`segment_volume` (declared once, in :class:`SegmentParams`)
_D = SegmentParams()


class FragmentsOp(BlockOp):
    """Pass A: fragments of one block, its inner edges, faces and counts."""

    kind: ClassVar[str] = "seg-fragments"
    input: str
    scratch: str
    per_section: bool = _D.per_section
    seed_threshold: float = _D.seed_threshold
    fg_threshold: float = _D.fg_threshold
    seed_sigma: float = _D.seed_sigma
    scoring: Scoring = _D.scoring
    quantile: float = _D.quantile
    overwrite: bool = Field(default=False, exclude=True)

    _in: Volume | None = PrivateAttr(default=None)
    _scratch: Scratch | None = PrivateAttr(default=None)

    def setup(self, grid: BlockGrid | None = None) -> None:
        self._in = open_volume(self.input)
        self._scratch = Scratch(self.scratch)

    def process(self, block: Block) -> dict[str, float]:
        assert self._in is not None and self._scratch is not None
        affs = self._in.read(block.write)
        if affs.dtype.kind == "f" and np.isnan(affs).any():
            raise StorageError(f"the affinities {self._in.url} hold NaN values in {block.write}", "fill or mask them first")
        frag, n = fragments(
            affs, seed_threshold=self.seed_threshold, fg_threshold=self.fg_threshold, per_section=self.per_section, seed_sigma=self.seed_sigma
        )
        if n:
            put_local(self._scratch, block.id, frag, n)
        ca, cb, cv = block_contacts(frag, affs)
        a, b, sums, counts = edge_sums(ca, cb, cv)  # the same edge order as edge_scores
        score = sums / np.maximum(counts, 1) if self.scoring == "mean" else edge_scores(ca, cb, cv, self.scoring, self.quantile)[2]
        aff = as_float(affs)
        low = {f"aff{d}": np.ascontiguousarray(np.take(aff[d], [0], axis=d)) for d in range(3)}
        self._scratch.put_arrays(f"faces/{block.id}", {**{f"l{k[0]}{k[1]}": v for k, v in block_faces(frag).labels.items()}, **low})
        self._scratch.put_arrays(f"edges/{block.id}", {"a": a, "b": b, "score": score, "sum": sums, "count": counts})
        self._scratch.put(f"stats/{block.id}", ObjectStats(np.bincount(frag.ravel(), minlength=n + 1).astype(np.int64)).to_bytes())
        return {"fragments": float(n), "inner_edges": float(a.size)}


class SegmentEdgesOp(BlockOp):
    """Pass B: the block's edges across faces to its forward neighbours, scored. With
    ``agglomeration='threshold'`` writes the merges (edges scoring at least ``threshold``, its inner
    edges included) as provisional id pairs (``pairs/<id>``); with ``'mean'`` writes every edge, inner
    and across faces, with the sum and count of its affinities (``graph/<id>``) for the driver's
    hierarchical agglomeration."""

    kind: ClassVar[str] = "seg-edges"
    scratch: str
    shape: tuple[int, int, int]
    block: tuple[int, int, int]
    threshold: float = 0.5
    scoring: Scoring = "mean"
    quantile: float = 0.5
    agglomeration: Agglomeration = "threshold"

    _scratch: Scratch | None = PrivateAttr(default=None)
    _offsets: np.ndarray | None = PrivateAttr(default=None)
    _grid: BlockGrid | None = PrivateAttr(default=None)

    def setup(self, grid: BlockGrid | None = None) -> None:
        self._scratch = Scratch(self.scratch)
        self._offsets = self._scratch.need_arrays("offsets")["offsets"]
        self._grid = BlockGrid(Box.from_shape(self.shape), write_shape=self.block)

    def _faces(self, bid: int) -> dict[str, np.ndarray]:
        assert self._scratch is not None
        return self._scratch.need_arrays(f"faces/{bid}")

    def process(self, block: Block) -> dict[str, float]:
        assert self._scratch is not None and self._offsets is not None and self._grid is not None
        off = self._offsets
        a_id = block.id
        z = self._scratch.need_arrays(f"edges/{a_id}")
        ea, eb, es, esum, ecount = z["a"], z["b"], z["score"], z["sum"], z["count"]
        if self.agglomeration == "mean":
            return self._graph(block, ea, eb, esum, ecount)
        keep = es >= self.threshold
        merges = [np.stack([ea[keep] + off[a_id], eb[keep] + off[a_id]], axis=1)]
        n_cross = 0
        for la, lb, vb in self._contacts(block):
            a, b, s = edge_scores(la, lb, vb, self.scoring, self.quantile)
            n_cross += a.size
            sel = s >= self.threshold
            merges.append(np.stack([a[sel], b[sel]], axis=1))
        pairs = np.concatenate(merges).astype(np.uint64)
        self._scratch.put_arrays(f"pairs/{a_id}", {"pairs": pairs})
        return {"merges": float(len(pairs)), "cross_edges": float(n_cross), "inner_edges": float(ea.size)}

    def _contacts(self, block: Block) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The touching fragments (provisional ids) across the block's faces with its forward
        neighbours, and the affinities between them."""
        assert self._offsets is not None and self._grid is not None
        off, a_id = self._offsets, block.id
        if off[a_id + 1] == off[a_id]:
            return
        fa = self._faces(a_id)
        for b_id in self._grid.neighbours(a_id, 6):
            if b_id < a_id or off[b_id + 1] == off[b_id]:
                continue
            d = next(ax for ax in range(3) if self._grid.index_of(b_id)[ax] != block.index[ax])
            fb = self._faces(b_id)
            la, lb, vb = fa[f"l{d}1"], fb[f"l{d}0"], fb[f"aff{d}"]
            touch = (la != 0) & (lb != 0)
            yield la[touch] + off[a_id], lb[touch] + off[b_id], vb[touch]

    def _graph(self, block: Block, ea: np.ndarray, eb: np.ndarray, esum: np.ndarray, ecount: np.ndarray) -> dict[str, float]:
        """Every edge of the block with its affinity sum and count, in provisional ids."""
        assert self._scratch is not None and self._offsets is not None and self._grid is not None
        off = self._offsets
        a_id = block.id
        parts = [(ea + off[a_id], eb + off[a_id], esum, ecount)]
        n_cross = 0
        for la, lb, vb in self._contacts(block):
            got = edge_sums(la, lb, vb)
            n_cross += got[0].size
            parts.append(got)
        a = np.concatenate([p[0] for p in parts]).astype(np.uint64)
        b = np.concatenate([p[1] for p in parts]).astype(np.uint64)
        self._scratch.put_arrays(
            f"graph/{a_id}",
            {"a": a, "b": b, "sum": np.concatenate([p[2] for p in parts]).astype(np.float64), "count": np.concatenate([p[3] for p in parts]).astype(np.int64)},
        )
        return {"cross_edges": float(n_cross), "inner_edges": float(ea.size)}


class SegmentRun(RuntimeOptions, total=False):
    """The fragments' watershed (pass A) and how a segmentation runs: the runtime options, and

    ``per_section``: 2D fragments per z section; ``seed_threshold``/``fg_threshold``/``seed_sigma``:
    see :func:`engine.kernels.watershed.fragments`; ``keep_scratch``: leave the scratch (and no
    ``result.json``).
    """

    per_section: bool
    seed_threshold: float
    fg_threshold: float
    seed_sigma: float
    keep_scratch: bool


@one_driver("segment")  # its passes, scratch and result.json belong to one driver
def segment_volume(
    affinities: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    threshold: float = _D.threshold,
    scoring: Scoring = _D.scoring,
    quantile: float = _D.quantile,
    agglomeration: Agglomeration = _D.agglomeration,
    block: Sequence[int] = _D.block,
    chunks: Sequence[int] = _D.chunks,
    **run: Unpack[SegmentRun],
) -> LabelResult:
    """Segment neurons from ``(3, z, y, x)`` affinities into ``output`` (uint64, ids ``1..objects``):
    blockwise watershed fragments, region-adjacency edges scored by the ``scoring`` of the affinities
    across them, agglomeration down to ``threshold``, relabel. ``agglomeration='threshold'`` merges
    every edge scoring at least ``threshold``; ``'mean'`` (with ``scoring='mean'``) is hierarchical
    mean-affinity agglomeration on the driver over the whole graph (see
    :mod:`engine.kernels.agglomerate`). ``run``: the fragments' settings and the runtime
    (:class:`SegmentRun`)."""
    check_keys(run, SegmentRun, "segment_volume")
    t0 = time.perf_counter()
    out_url = os.fspath(output)
    src = _check_segment_input(os.fspath(affinities), scoring, quantile, agglomeration)
    overwrite = run.get("overwrite", False)
    grid, chunks_t = label_grid(src.spatial_shape, block, chunks)
    scratch = Scratch.beside(out_url, "segment-scratch")
    op_a = FragmentsOp(
        input=src.url, scratch=scratch.url, per_section=run.get("per_section", _D.per_section), seed_threshold=run.get("seed_threshold", _D.seed_threshold),
        fg_threshold=run.get("fg_threshold", _D.fg_threshold), seed_sigma=run.get("seed_sigma", _D.seed_sigma), scoring=scoring, quantile=quantile, overwrite=overwrite,
    )
    op_b = SegmentEdgesOp(
        scratch=scratch.url, shape=src.spatial_shape, block=grid.write_shape, threshold=threshold, scoring=scoring, quantile=quantile,  # type: ignore[arg-type]
        agglomeration=agglomeration,
    )
    op_c = RelabelOp(scratch=scratch.url, output=out_url, like=src.url, chunks=chunks_t, overwrite=overwrite)
    session = Session(run, backend="serial")
    state = session.state(out_url, "segment")
    record = CompletionRecord(state / "result.json", {"grid": grid.layout(), "a": op_a.params(), "b": op_b.params(), "c": op_c.params()})
    saved = record.finished(overwrite, f"segment: {out_url}", f"{out_url} was segmented with other parameters", "pass --overwrite to segment it again")
    if saved is not None:
        return LabelResult(**saved)
    if overwrite:
        scratch.remove()
    session.overwrite = session.overwrite or record.forgotten  # the passes' markers of a run of which nothing is left
    op_c.prepare(grid)
    with session:
        res, offsets = _segment_passes(session, grid, state, scratch, op_a, op_b, op_c)
    result = LabelResult(
        output=open_volume(out_url).url, objects=res.objects, local_objects=int(offsets[-1]), boundary_labels=res.boundary_labels,
        pairs=res.pairs, blocks=grid.num_blocks, seconds={"total": time.perf_counter() - t0}, runs=[run_record(r) for r in session.runs],
    )
    if not run.get("keep_scratch", False):
        kill_point("segment:before-scratch-removal")
        scratch.remove()
        kill_point("segment:after-scratch-removal")
        record.save(result.to_dict(), {out_url: session.runs[-1].run_id})
    log.info("segment: %d neurons from %d fragments in %s", res.objects, int(offsets[-1]), out_url)
    return result


def _check_segment_input(url: str, scoring: Scoring, quantile: float, agglomeration: Agglomeration) -> Volume:
    src = open_volume(url)
    if len(src.shape) != 4 or src.shape[0] != 3:
        raise StorageError(f"{src.url} has shape {src.shape}; affinities are (3, z, y, x)", "give the z, y, x nearest-neighbour affinities")
    if src.dtype != np.uint8 and src.dtype.kind != "f":
        raise ConfigError(f"affinities must be uint8 (0-255) or float in [0, 1], not {src.dtype}", "convert them first")
    if scoring not in ("mean", "quantile") or not 0.0 <= quantile <= 1.0:
        raise ConfigError(f"scoring must be mean or quantile (with quantile in [0, 1]); got {scoring}, {quantile}")
    if agglomeration not in ("threshold", "mean"):
        raise ConfigError(f"agglomeration must be threshold or mean, got {agglomeration!r}")
    if agglomeration == "mean" and scoring != "mean":
        raise ConfigError("hierarchical mean agglomeration re-scores merged edges by their mean affinity", "use --scoring mean with --agglomeration mean")
    return src


def _segment_passes(session: Session, grid: BlockGrid, state: Path, scratch: Scratch, op_a: FragmentsOp, op_b: SegmentEdgesOp,
                    op_c: RelabelOp) -> tuple[Resolved, np.ndarray]:
    """Fragments, edges, the agglomeration on the driver, relabel."""
    session.run(op_a, grid, "segment-fragments", state_dir=state / "fragments")
    kill_point("segment:after-fragments")
    offsets = load_offsets(scratch, grid.num_blocks)
    session.run(op_b, grid, "segment-edges", state_dir=state / "edges")
    kill_point("segment:after-edges")
    merges = None
    if op_b.agglomeration == "mean":
        with_labels = np.flatnonzero(np.diff(offsets))
        graphs = scratch.need_arrays_many([f"graph/{b}" for b in with_labels])
        cat = {k: np.concatenate([g[k] for g in graphs]) if graphs else np.zeros(0) for k in ("a", "b", "sum", "count")}
        merges = mean_agglomeration(cat["a"], cat["b"], cat["sum"], cat["count"], op_b.threshold)
    res = resolve_labels(scratch, grid, offsets, pairs=merges)
    session.run(op_c, grid, "segment-relabel", state_dir=state / "relabel")
    return res, offsets
