"""The patch grid: patches of a fixed size laid over a volume at a fixed stride.

Patch ``(a, b, c)`` of the grid covers voxels ``origin + (a, b, c) * stride`` to that plus ``patch``.
Only patches that lie entirely inside the volume are on the grid ("valid" fit; the authors' code pads
the volume by reflection instead, which makes patches of invented data at the far edges)::

    volume  |=========================|
    patches [----]                       patch 4, stride 2: 1 + (size - patch) // stride patches
              [----]
                [----] ...

Patch ids are the C-order ravel of the grid index, like block ids.

>>> g = PatchGrid(volume_shape=(20, 200, 200), patch=(18, 160, 160), stride=(8, 40, 40))
>>> g.shape, g.size
((1, 2, 2), 4)
>>> g.patch_box((0, 1, 1))
Box([0, 40, 40]:[18, 200, 200])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import ConfigError
from engine.geometry import Box, Coord
from engine.params import ANISOTROPIC_PATCH, ANISOTROPIC_STRIDE, ISOTROPIC_PATCH, ISOTROPIC_STRIDE


def default_patch_and_stride(voxel_size: Sequence[float]) -> tuple[Coord, Coord]:
    """Paper defaults for anisotropic voxels (z at least 2x coarser than y, x), cubic ones otherwise."""
    z, y, x = (float(v) for v in voxel_size)
    if z >= 2.0 * max(y, x):
        return ANISOTROPIC_PATCH, ANISOTROPIC_STRIDE
    return ISOTROPIC_PATCH, ISOTROPIC_STRIDE


@dataclass(frozen=True)
class PatchGrid:
    """Patches of ``patch`` voxels every ``stride`` voxels inside ``volume_shape`` (from ``origin``)."""

    volume_shape: Coord
    patch: Coord
    stride: Coord
    origin: Coord = (0, 0, 0)

    def __post_init__(self) -> None:
        for name in ("volume_shape", "patch", "stride", "origin"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 3:
                raise ConfigError(f"{name} must have three values z,y,x, got {value}")
            object.__setattr__(self, name, value)
        if any(p <= 0 for p in self.patch) or any(s <= 0 for s in self.stride):
            raise ConfigError(f"patch {self.patch} and stride {self.stride} must be positive", "e.g. patch 18,160,160 stride 8,40,40")
        room = [v - o for v, o in zip(self.volume_shape, self.origin, strict=True)]
        if any(r < p for r, p in zip(room, self.patch, strict=True)):
            raise ConfigError(
                f"the patch {self.patch} does not fit in the volume {self.volume_shape} from origin {self.origin}",
                "use a smaller --patch",
            )

    @property
    def shape(self) -> Coord:
        """Patches per axis."""
        return tuple(
            1 + (v - o - p) // s for v, o, p, s in zip(self.volume_shape, self.origin, self.patch, self.stride, strict=True)
        )

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def patch_box(self, index: Sequence[int]) -> Box:
        start = tuple(o + int(i) * s for o, i, s in zip(self.origin, index, self.stride, strict=True))
        return Box.from_shape(self.patch, start)

    def patch_starts(self, ids: np.ndarray) -> np.ndarray:
        """Voxel start (z, y, x) of each patch id, shape (n, 3)."""
        idx = np.stack(np.unravel_index(np.asarray(ids, dtype=np.int64), self.shape), axis=1)
        return idx * np.asarray(self.stride) + np.asarray(self.origin)

    def to_attrs(self) -> dict[str, Any]:
        return {
            "volume_shape": list(self.volume_shape),
            "patch": list(self.patch),
            "stride": list(self.stride),
            "origin": list(self.origin),
            "grid_shape": list(self.shape),
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> PatchGrid:
        try:
            return cls(tuple(attrs["volume_shape"]), tuple(attrs["patch"]), tuple(attrs["stride"]), tuple(attrs.get("origin", (0, 0, 0))))
        except KeyError as err:
            raise ConfigError(
                f"the embedding array has no {err.args[0]!r} attribute: it was not written by connectile embed",
                "embed the volume with connectile embed",
            ) from err
