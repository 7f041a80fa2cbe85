"""Halo-needing filters, computed blockwise and equal to the whole-volume result."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from engine.errors import ConfigError
from engine.geometry import Block, BlockGrid
from engine.ops.volume_op import VolumeOp
from engine.storage import check_write_alignment, create_volume, open_volume


class GaussianFilter(VolumeOp):
    """Gaussian smoothing (``scipy.ndimage.gaussian_filter``, reflect at the volume edge) to float32.

    The grid's context must be at least :meth:`halo` so that every written voxel sees the same
    neighbourhood as in a whole-volume filter: where the read box is cut by the volume edge, the
    filter reflects there exactly as scipy does on the whole array; elsewhere the reflection happens at
    least ``halo`` voxels away from the write box and never reaches it.
    """

    kind: ClassVar[str] = "gaussian"
    sigma: tuple[float, float, float] = (1.0, 1.0, 1.0)
    truncate: float = 4.0
    chunks: tuple[int, int, int] = (32, 64, 64)

    def halo(self) -> tuple[int, int, int]:
        """The context each block needs: the filter radius per axis, as scipy computes it."""
        r = tuple(int(self.truncate * float(s) + 0.5) for s in self.sigma)
        return (r[0], r[1], r[2])

    def prepare(self, grid: BlockGrid) -> None:
        src = open_volume(self.input)
        if any(c < h for c, h in zip(grid.context, self.halo(), strict=True)):
            raise ConfigError(f"grid context {grid.context} is smaller than the filter radius {self.halo()}", f"use context >= {self.halo()}")
        out = create_volume(
            self.output, src.spatial_shape, "float32", self.chunks, voxel_size=src.voxel_size, offset=src.offset, overwrite=self.overwrite,
            inputs=(self.input,),
        )
        check_write_alignment(out, grid.write_shape, grid.total.start)

    def process(self, block: Block) -> dict[str, float] | None:
        from scipy.ndimage import gaussian_filter

        src, dst = self.volumes()
        data = src.read(block.read).astype(np.float32)
        if not np.isfinite(data).all():
            raise ValueError(f"the input holds NaN or infinite values in {block.read}")
        smooth = gaussian_filter(data, sigma=self.sigma, mode="reflect", truncate=self.truncate)
        dst.write(block.write, smooth[block.write.to_slices(block.read)])
        return None
