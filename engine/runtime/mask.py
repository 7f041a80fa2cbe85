"""Block masks: skip blocks that hold nothing to process (e.g. outside the tissue).

The mask is a volume, usually at a lower resolution than the grid (one mask voxel covers ``factor``
grid voxels per axis). A block is empty when no mask voxel under its write box is nonzero. Workers
check the mask themselves, so the driver never reads it; empty blocks are recorded as *skipped*, not
done, so a changed mask is honoured on the next run.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from engine.errors import ConfigError
from engine.geometry import Block, Coord
from engine.storage import Volume, open_volume


class BlockMask:
    """A mask volume and its downsampling factor relative to the grid."""

    def __init__(self, url: str | os.PathLike[str], factor: Coord = (1, 1, 1)) -> None:
        self.url = os.fspath(url)
        self.factor: Coord = tuple(int(f) for f in factor)
        if len(self.factor) != 3 or any(f < 1 for f in self.factor):
            raise ConfigError(f"mask factor must be three positive integers (z, y, x), got {factor}")
        self._volume: Volume | None = None

    @classmethod
    def for_volume(cls, url: str | os.PathLike[str], data: Volume) -> BlockMask:
        """A mask for ``data``, its factor derived from the two voxel sizes (or else the shapes)."""
        mask = open_volume(url)
        factor = []
        for ax in range(3):
            by_size = mask.voxel_size[ax] / data.voxel_size[ax]
            by_shape = data.spatial_shape[ax] / mask.spatial_shape[ax]
            f = by_size if mask.voxel_size != (1.0, 1.0, 1.0) or data.voxel_size == (1.0, 1.0, 1.0) else by_shape
            if f < 1:
                raise ConfigError(f"mask {url} is finer than the data on axis {'zyx'[ax]}", "give a mask at the data's resolution or coarser")
            factor.append(round(f))
        return cls(url, tuple(factor))

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "factor": self.factor, "_volume": None}

    def setup(self) -> None:
        self._volume = open_volume(self.url)

    def is_empty(self, block: Block) -> bool:
        if self._volume is None:
            self.setup()
        assert self._volume is not None
        box = block.write.scale_down(self.factor).intersect(self._volume.box)
        if box.empty:
            return True
        return not bool(np.any(self._volume.read(box)))

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "factor": list(self.factor)}
