"""The embedding array: one vector per patch of the patch grid, stored as zarr.

Layout: a zarr array of shape ``(gz, gy, gx, D)`` (grid position, then feature), float16 or
float32, chunked along the grid only (every chunk holds whole vectors). Its attributes hold the
patch grid (``volume_shape``, ``patch``, ``stride``, ``origin``, ``grid_shape``), the ``volume``
URL, its ``voxel_size`` and the ``encoder`` checkpoint that made it.

>>> import tempfile, os
>>> from engine.select.patches import PatchGrid
>>> g = PatchGrid((20, 200, 200), (18, 160, 160), (8, 40, 40))
>>> path = os.path.join(tempfile.mkdtemp(), "emb.zarr")
>>> arr = create_embeddings(path, g, dim=4, volume="raw.zarr")
>>> arr[:] = 1.0
>>> grid, emb, attrs = load_embeddings(path)
>>> grid == g, emb.shape, attrs["volume"]
(True, (4, 4), 'raw.zarr')
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.errors import StorageError
from engine.select.patches import PatchGrid


def create_embeddings(
    path: str | os.PathLike[str],
    grid: PatchGrid,
    dim: int,
    *,
    volume: str = "",
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    dtype: str = "float32",
    chunks: Sequence[int] | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> Any:
    """Create the embedding array (zarr v3) with its grid attributes; returns the zarr array."""
    import zarr

    if dtype not in ("float16", "float32"):
        raise StorageError(f"embedding dtype must be float16 or float32, got {dtype!r}")
    chunks = tuple(chunks) if chunks is not None else tuple(min(g, c) for g, c in zip(grid.shape, (8, 32, 32), strict=True))
    try:
        arr = zarr.open_array(
            str(path), mode="w" if overwrite else "w-", shape=(*grid.shape, int(dim)), chunks=(*chunks, int(dim)), dtype=dtype, fill_value=np.nan
        )
    except (OSError, ValueError) as err:
        raise StorageError(f"cannot create the embedding array at {path}: {err}", "check the path, or pass --overwrite") from err
    arr.attrs.update({**grid.to_attrs(), "volume": str(volume), "voxel_size": [float(v) for v in voxel_size], "dim": int(dim), **(extra or {})})
    return arr


def open_embeddings(path: str | os.PathLike[str], mode: str = "r") -> Any:
    import zarr

    if not os.path.exists(str(path)):
        raise StorageError(f"no embedding array at {path}", "run connectile embed first")
    try:
        arr = zarr.open_array(str(path), mode=mode)  # type: ignore[arg-type]
    except Exception as err:  # zarr raises several unrelated types for a bad store
        raise StorageError(f"{path} is not a readable zarr array ({type(err).__name__}: {err})", "give the output of connectile embed") from err
    if arr.ndim != 4:
        raise StorageError(f"{path} has shape {arr.shape}; an embedding array is (gz, gy, gx, D)", "give the output of connectile embed")
    return arr


def load_embeddings(path: str | os.PathLike[str]) -> tuple[PatchGrid, np.ndarray, dict[str, Any]]:
    """(patch grid, ``(N, D)`` float32 embeddings in patch-id order, attributes)."""
    arr = open_embeddings(path)
    attrs = dict(arr.attrs)
    grid = PatchGrid.from_attrs(attrs)
    if tuple(arr.shape[:3]) != grid.shape:
        raise StorageError(f"{path} has grid shape {arr.shape[:3]} but its attributes say {grid.shape}", "re-run connectile embed")
    emb = np.asarray(arr[:], dtype=np.float32).reshape(grid.size, arr.shape[3])
    if not np.isfinite(emb).all():
        missing = int((~np.isfinite(emb).all(axis=1)).sum())
        raise StorageError(f"{path} has {missing} patches without an embedding (NaN)", "finish the embedding run (connectile embed resumes)")
    return grid, emb, attrs
