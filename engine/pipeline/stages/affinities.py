"""``affinities``: nearest-neighbour affinities (3, z, y, x) from a label volume -- the ground-truth
oracle for ``segment`` until the ``predict`` stage makes them from a trained network.

``aff[a][z, y, x]`` is 255 where the voxel and its predecessor along axis ``a`` (z, y or x) carry the
same nonzero label, else 0 (also at the volume's first plane, which has no predecessor). Computed
blockwise with a one-voxel context, so the result does not depend on the blocks.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import Field, PrivateAttr

from engine.config import Config
from engine.geometry import Block, BlockGrid, Box
from engine.params import AffinitiesParams
from engine.pipeline.stage import StageContext
from engine.pipeline.stages._base import DeclaredStage, blockwise_options
from engine.runtime.op import BlockOp
from engine.storage import Volume, create_volume, open_volume


def label_affinities(labels: np.ndarray, write: Box, read: Box) -> np.ndarray:
    """The uint8 affinities of the voxels of ``write`` from ``labels`` read over ``read``."""
    start = tuple(w - r for w, r in zip(write.start, read.start, strict=True))
    sl = tuple(slice(s, s + n) for s, n in zip(start, write.shape, strict=True))
    cur = labels[sl]
    out = np.zeros((3, *write.shape), np.uint8)
    for ax in range(3):
        if start[ax] > 0:  # a predecessor plane was read
            prev_sl = list(sl)
            prev_sl[ax] = slice(start[ax] - 1, start[ax] - 1 + write.shape[ax])
            prev = labels[tuple(prev_sl)]
            out[ax] = np.where((cur == prev) & (cur != 0), 255, 0)
        else:  # the write box starts at the volume's first plane along ax
            inner = [slice(None)] * 3
            inner[ax] = slice(1, None)
            before = [slice(None)] * 3
            before[ax] = slice(0, -1)
            out[ax][tuple(inner)] = np.where((cur[tuple(inner)] == cur[tuple(before)]) & (cur[tuple(inner)] != 0), 255, 0)
    return out


class LabelAffinitiesOp(BlockOp, AffinitiesParams):
    """Affinities of a label volume, blockwise (context 1); the settings are :class:`~engine.params.AffinitiesParams`."""

    kind: ClassVar[str] = "label-affinities"
    input: str
    output: str
    overwrite: bool = Field(default=False, exclude=True)

    _in: Volume | None = PrivateAttr(default=None)
    _out: Volume | None = PrivateAttr(default=None)

    def prepare(self, grid: BlockGrid) -> None:
        src = open_volume(self.input)
        create_volume(self.output, (3, *src.spatial_shape), "uint8", (3, *self.chunks), voxel_size=src.voxel_size, overwrite=self.overwrite)

    def setup(self, grid: BlockGrid | None = None) -> None:
        self._in = open_volume(self.input)
        self._out = open_volume(self.output, mode="r+")

    def process(self, block: Block) -> dict[str, float]:
        assert self._in is not None and self._out is not None
        labels = self._in.read(block.read)
        affs = label_affinities(labels, block.write, block.read)
        self._out.write(block.write, affs)
        return {"voxels": float(block.write.size)}


class AffinitiesSection(AffinitiesParams, Config):
    """``affinities:`` -- ``input`` is a label volume, e.g. ``synth.neurons``; the settings are
    :class:`~engine.params.AffinitiesParams` (the op's, the same defaults)."""

    input: str


class AffinitiesStage(DeclaredStage, name="affinities", config=AffinitiesSection, order=50, inputs=("input",), outputs=("affinities",)):
    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.runtime import run_blockwise

        src = open_volume(ctx.input(cfg.input))
        chunks = tuple(min(c, s) for c, s in zip(cfg.chunks, src.spatial_shape, strict=True))
        op = LabelAffinitiesOp(input=src.url, output=str(ctx.dir / "affinities.zarr" / "affinities"), overwrite=ctx.overwrite, **{**cfg.settings(), "chunks": chunks})
        grid = BlockGrid(Box.from_shape(src.spatial_shape), write_shape=chunks, context=(1, 1, 1))
        run_blockwise(op, grid, name="affinities", **blockwise_options(ctx))
        return {"affinities": op.output}
