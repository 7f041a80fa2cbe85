"""The blockwise passes of :func:`engine.ops.label.label_volume` (see there for how they fit):
A labels each block on its own, B pairs the ids that touch across block faces, C writes the final ids
(also pass C of :func:`engine.ops.segment.segment_volume`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, PrivateAttr

from engine.errors import StorageError
from engine.geometry import Block, BlockGrid, Box
from engine.kernels.components import Device, foreground, label_block
from engine.kernels.objects import ObjectStats, block_stats
from engine.kernels.stitch import Faces, block_faces, block_lut, face_pairs, owned_mask
from engine.ops.scratch import Scratch
from engine.params import LABEL_CHUNKS, LabelDtype
from engine.runtime import BlockOp
from engine.runtime.op import PendingWrites
from engine.storage import Volume, check_write_alignment, create_volume, open_volume
from engine.values import to_unit

Connectivity = Literal[6, 18, 26]
OutDtype = LabelDtype
DEFAULT_CHUNKS = LABEL_CHUNKS
#: memory for the faces pass B keeps per worker
CACHE_BYTES = 256 * 2**20


# -- pass A --------------------------------------------------------------------------------------
class LocalLabelOp(BlockOp):
    """Pass A: label one block on its own; keep its local ids (:func:`put_local`), count, faces and
    statistics in the scratch."""

    kind: ClassVar[str] = "cc-local"
    input: str
    scratch: str
    threshold: float | None = None
    connectivity: Connectivity = 26
    table: bool = False
    #: measure each label's voxel count (needed for ``min_size`` and the table); without it the
    #: statistics hold only the number of labels (counts of -1)
    sizes: bool = True
    device: Device = "cpu"
    overwrite: bool = Field(default=False, exclude=True)

    _in: Volume | None = PrivateAttr(default=None)
    _scratch: Scratch | None = PrivateAttr(default=None)

    def setup(self, grid: BlockGrid | None = None) -> None:
        self._in = open_volume(self.input)
        self._scratch = Scratch(self.scratch)

    def process(self, block: Block) -> dict[str, float]:
        assert self._in is not None and self._scratch is not None
        data = self._in.read(block.write)
        labels, n = local_labels(data, self.threshold, self.connectivity, self.device, f"the input {self._in.url}", block)
        if n:
            put_local(self._scratch, block.id, labels, n)
            values = data if self.threshold is None and data.dtype != bool else None
            self._scratch.put(f"faces/{block.id}", block_faces(labels, values).to_bytes())
        prob = None
        if self.table and self.threshold is not None:
            prob = to_unit(data)
        if self.sizes or self.table:
            stats = block_stats(labels, n, block.write.start, prob, full=self.table)
        else:
            stats = ObjectStats(np.full(n + 1, -1, np.int64))
        self._scratch.put(f"stats/{block.id}", stats.to_bytes())  # its length gives the count
        out = {"local_objects": float(n)}
        if self.sizes or self.table:
            out["foreground_voxels"] = float(stats.counts[1:].sum())
        return out


def put_local(scratch: Scratch, block_id: int, labels: np.ndarray, n: int) -> None:
    """Store a block's local ids ``1..n`` for pass C, in the narrowest unsigned type that holds ``n``
    (about 4 ms a 128^3 block there and back, against about 11 ms to read and label it again)."""
    scratch.put_arrays(f"local/{block_id}", {"ids": labels.astype(np.min_scalar_type(n), copy=False)}, compress=True)


def get_local(scratch: Scratch, block_id: int) -> np.ndarray:
    """The local ids :func:`put_local` stored (a clear error when they are missing)."""
    return scratch.need_arrays(f"local/{block_id}")["ids"]


def provisional_ids(scratch: Scratch, grid: BlockGrid) -> np.ndarray:
    """The whole volume of provisional ids (local ids + the block's offset) from the local ids kept
    in ``scratch`` (``offsets`` written): a check for small volumes, in tests and benchmarks."""
    offsets = scratch.need_arrays("offsets")["offsets"]
    out = np.zeros(grid.total.shape, np.uint64)
    for bid in range(grid.num_blocks):
        if offsets[bid + 1] == offsets[bid]:
            continue
        w = grid.block(bid).write
        local = get_local(scratch, bid).astype(np.uint64)
        out[w.to_slices(relative_to=grid.total)] = np.where(local > 0, local + np.uint64(offsets[bid]), 0)
    return out


def local_labels(data: np.ndarray, threshold: float | None, connectivity: int, device: Device, what: str, block: Block) -> tuple[np.ndarray, int]:
    """The local ids ``1..n`` of one block and ``n``."""
    if data.dtype.kind == "f" and np.isnan(data).any():
        raise StorageError(f"{what} holds NaN values in {block.write}", "fill or mask them before labelling")
    return label_block(foreground(data, threshold), connectivity, device)


class GpuLocalLabelOp(LocalLabelOp):
    """Pass A with one GPU per worker (``device='gpu'``). UNTESTED here: no GPU on the dev machines."""

    kind: ClassVar[str] = "cc-local-gpu"
    wants_gpu: ClassVar[bool] = True


# -- pass B --------------------------------------------------------------------------------------
class FacePairsOp(BlockOp):
    """Pass B: the pairs of provisional ids that touch across a block's contacts with its forward
    neighbours (higher ids), written to ``pairs/<id>``."""

    kind: ClassVar[str] = "cc-pairs"
    scratch: str
    shape: tuple[int, int, int]
    block: tuple[int, int, int]
    connectivity: Connectivity = 26
    #: faces kept in memory (least recently used dropped); default: enough for one plane of blocks and a
    #: row (every forward neighbour of a block is then read once per worker), at most ``CACHE_BYTES``
    cache_blocks: int | None = Field(default=None, exclude=True)

    _scratch: Scratch | None = PrivateAttr(default=None)
    _offsets: np.ndarray | None = PrivateAttr(default=None)
    _counts: np.ndarray | None = PrivateAttr(default=None)
    _grid: BlockGrid | None = PrivateAttr(default=None)
    _cache: OrderedDict[int, Faces] = PrivateAttr(default_factory=OrderedDict)
    _limit: int = PrivateAttr(default=2)

    def setup(self, grid: BlockGrid | None = None) -> None:
        self._scratch = Scratch(self.scratch)
        offsets = self._scratch.need_arrays("offsets")["offsets"]
        self._offsets, self._counts = offsets[:-1], np.diff(offsets)
        self._limit = self._capacity()  # once per worker, not per face read

    def is_empty(self, block: Block) -> bool:
        assert self._counts is not None
        return bool(self._counts[block.id] == 0)

    def _faces(self, bid: int) -> Faces:
        assert self._scratch is not None
        got = self._cache.get(bid)
        if got is None:
            got = Faces.from_bytes(self._scratch.need(f"faces/{bid}"))
            self._cache[bid] = got
            while len(self._cache) > self._limit:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(bid)
        return got

    def _capacity(self) -> int:
        if self.cache_blocks is not None:
            return self.cache_blocks
        grid = self._grid_of()
        bz, by, bx = self.block
        face_bytes = 2 * 4 * (by * bx + bz * bx + bz * by)  # six uint32 faces (values too for label volumes: a rough bound)
        return int(max(2, min(grid.grid_shape[1] * grid.grid_shape[2] + grid.grid_shape[2] + 2, CACHE_BYTES // face_bytes)))

    def process(self, block: Block) -> dict[str, float]:
        assert self._scratch is not None and self._offsets is not None and self._counts is not None
        grid = self._grid_of()
        a = block.id
        out = []
        for b in grid.neighbours(a, self.connectivity):
            if b < a or self._counts[b] == 0:
                continue
            local = face_pairs(grid, a, self._faces(a), b, self._faces(b), self.connectivity)
            if local.size:
                local[:, 0] += np.uint64(self._offsets[a])
                local[:, 1] += np.uint64(self._offsets[b])
                out.append(local)
        pairs = np.concatenate(out) if out else np.zeros((0, 2), np.uint64)
        self._scratch.put_arrays(f"pairs/{a}", {"pairs": pairs})
        return {"pairs": float(len(pairs))}

    def _grid_of(self) -> BlockGrid:
        if self._grid is None:
            self._grid = BlockGrid(Box.from_shape(self.shape), write_shape=self.block)
        return self._grid


# -- pass C --------------------------------------------------------------------------------------
class RelabelOp(BlockOp):
    """Pass C: write final ids (``dtype``, uint64 by default) for one block through its lookup
    table, from the local ids pass A kept in the scratch (:func:`put_local`)."""

    kind: ClassVar[str] = "cc-relabel"
    scratch: str
    output: str
    like: str
    min_size: int = 0
    dtype: OutDtype = "uint64"
    chunks: tuple[int, int, int] = DEFAULT_CHUNKS
    overwrite: bool = Field(default=False, exclude=True)

    _scratch: Scratch | None = PrivateAttr(default=None)
    _map: dict[str, np.ndarray] = PrivateAttr(default_factory=dict)
    _out: Volume | None = PrivateAttr(default=None)
    #: the output is compressed and stored while the next block is labelled (waited for per batch)
    _writes: PendingWrites | None = PrivateAttr(default=None)

    def prepare(self, grid: BlockGrid) -> None:
        src = open_volume(self.like)  # shape, voxel size and offset of the input
        out = create_volume(
            self.output, src.spatial_shape, self.dtype, self.chunks, voxel_size=src.voxel_size, offset=src.offset,
            overwrite=self.overwrite, layer_type="segmentation", inputs=(self.like,),
        )
        check_write_alignment(out, grid.write_shape, grid.total.start)

    def setup(self, grid: BlockGrid | None = None) -> None:
        self._scratch = Scratch(self.scratch)
        self._map = self._scratch.need_arrays("mapping")
        self._out = open_volume(self.output, "r+")
        self._writes = PendingWrites()

    def process(self, block: Block) -> dict[str, float]:
        assert self._scratch is not None and self._out is not None and self._writes is not None
        m = self._map
        b = block.id
        n = int(m["offsets"][b + 1] - m["offsets"][b])
        if n == 0:  # nothing here: write zeros (cheap: chunks equal to the fill value are not stored)
            self._writes.add(b, self._out.write_async(block.write, np.zeros(block.write.shape, self.dtype)))
            return {"objects_owned": 0.0}
        lo, hi = np.searchsorted(m["keys"], [m["offsets"][b] + 1, m["offsets"][b] + n + 1])
        local_bnd = (m["keys"][lo:hi] - np.uint64(m["offsets"][b])).astype(np.int64)
        counts = None
        if self.min_size > 1:
            from engine.kernels.objects import ObjectStats

            counts = ObjectStats.from_bytes(self._scratch.need(f"stats/{b}")).counts
        mask = owned_mask(n, local_bnd, m["owned"][lo:hi], counts, self.min_size)
        lut = block_lut(n, mask, int(m["kept_offsets"][b]), local_bnd, m["final"][lo:hi]).astype(self.dtype, copy=False)
        local = get_local(self._scratch, block.id)
        self._writes.add(b, self._out.write_async(block.write, np.take(lut, local.astype(np.intp))))  # intp first: take casts narrow indices slowly
        return {"objects_owned": float(mask.sum())}

    def flush(self) -> dict[int, BaseException]:
        return self._writes.wait() if self._writes is not None else {}
