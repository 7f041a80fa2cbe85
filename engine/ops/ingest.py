"""Ingest: PNG/TIFF slices, multi-page TIFF and HDF5 (also ``.h5.gz``) into zarr, zarr v3 or n5.

The copy is blockwise: the output is cut into slabs of whole z-chunks spanning y and x, and each
block reads only its own z-range of the source, so memory is bounded by one slab (chunk depth x y x
x), never the whole volume.

>>> import tempfile, numpy as np
>>> from PIL import Image
>>> d = tempfile.mkdtemp()
>>> for z in (1, 2, 10):
...     Image.fromarray(np.full((4, 6), z, np.uint8)).save(f"{d}/{z}.png")
>>> vol = ingest(d, f"{d}/out.zarr/raw", voxel_size=(40, 4, 4), progress=False)
>>> vol.shape, vol.voxel_size, vol.read(vol.box)[:, 0, 0].tolist()
((3, 4, 6), (40.0, 4.0, 4.0), [1, 2, 10])
>>> import shutil; shutil.rmtree(d)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, ClassVar, get_args

import numpy as np
from pydantic import PrivateAttr
from typing_extensions import Unpack

from engine.errors import ConfigError, StorageError
from engine.geometry import Block, BlockGrid, Box
from engine.options import check_keys
from engine.params import INGEST_CHUNKS, IngestFormat, IngestParams
from engine.runtime import BlockOp
from engine.runtime.options import RuntimeOptions
from engine.runtime.session import Session
from engine.storage import Volume, check_write_alignment, create_volume, open_volume
from engine.storage.sources import Source, open_source

log = logging.getLogger(__name__)

INGEST_FORMATS: tuple[str, ...] = get_args(IngestFormat)
#: Storage chunks (z, y, x) unless asked otherwise; each is clipped to the volume.
DEFAULT_CHUNKS = INGEST_CHUNKS
#: the defaults of :func:`ingest`'s keywords (declared once, in :class:`~engine.params.IngestParams`)
_D = IngestParams()


class IngestOp(BlockOp):
    """Copy the z-range of each block from ``source`` into the volume at ``output``.

    ``dtype`` is the output dtype (values that do not fit it are an error, not wrapped); ``binarize``
    turns every nonzero voxel into 1 first.
    """

    kind: ClassVar[str] = "ingest"

    source: Source
    output: str
    dtype: str
    binarize: bool = False
    _out: Volume | None = PrivateAttr(default=None)

    def prepare(self, grid: BlockGrid) -> None:
        out = open_volume(self.output, "r+")
        if out.spatial_shape != self.source.shape or out.dtype != np.dtype(self.dtype):
            raise StorageError(
                f"{out.url} is {out.spatial_shape} {out.dtype} but {self.source.describe()} gives {self.source.shape} {self.dtype}",
                "pass --overwrite to replace it, or choose another output",
            )
        if grid.total != Box.from_shape(self.source.shape):
            raise ValueError(f"the ingest grid {grid} must cover the whole source {self.source.shape}")
        check_write_alignment(out, grid.write_shape, grid.total.start)

    def setup(self, grid: BlockGrid | None = None) -> None:
        self._out = open_volume(self.output, "r+")

    def process(self, block: Block) -> dict[str, float]:
        z0, z1 = block.write.start[0], block.write.stop[0]
        data = self.source.read(z0, z1)[(slice(None), *block.write.to_slices()[1:])]
        data = self._convert(data, z0, z1)
        if self._out is None:
            self._out = open_volume(self.output, "r+")
        self._out.write(block.write, data)
        return {"voxels": float(data.size), "nonzero": float(np.count_nonzero(data))}

    def _convert(self, data: np.ndarray, z0: int, z1: int) -> np.ndarray:
        target = np.dtype(self.dtype)
        if self.binarize:
            data = data != 0
        if data.dtype == target:
            return data
        if target.kind in "ui" and data.size and data.dtype.kind in "uif":
            lo, hi = data.min(), data.max()
            info = np.iinfo(target)
            if lo < info.min or hi > info.max:
                raise StorageError(
                    f"slices {z0}..{z1 - 1} of {self.source.describe()} hold values {lo}..{hi}, which do not fit {target}",
                    "choose a wider dtype (--dtype), or leave it out to keep the source dtype",
                )
        return data.astype(target)

    def teardown(self) -> None:
        """Release the source's open files."""
        self.source.close()


def ingest_grid(shape: Sequence[int], chunks: Sequence[int]) -> BlockGrid:
    """The grid of an ingest: slabs one z-chunk deep spanning y and x (rounded up to whole chunks).

    >>> ingest_grid((165, 768, 1024), (64, 256, 256))
    BlockGrid(total=Box([0, 0, 0]:[165, 768, 1024]), write_shape=(64, 768, 1024), context=(0, 0, 0), fit='shrink', blocks=(3, 1, 1))
    """
    write = (chunks[0], *(-(-s // c) * c for s, c in zip(shape[1:], chunks[1:], strict=True)))
    return BlockGrid(Box.from_shape(shape), write_shape=write)


def _triple(values: Sequence[Any] | None, what: str, kind: type, example: str) -> tuple[Any, ...] | None:
    if values is None:
        return None
    try:
        out = tuple(kind(v) for v in values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{what} must be three numbers z,y,x, got {values!r}", f"e.g. {example}") from err
    if len(out) != 3 or any(v <= 0 for v in out):
        raise ConfigError(f"{what} must be three positive numbers z,y,x, got {values!r}", f"e.g. {example}")
    return out


def ingest(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    voxel_size: Sequence[float] | None = _D.voxel_size,
    chunks: Sequence[int] = _D.chunks,
    format: IngestFormat = _D.format,  # noqa: A002 - the natural name for users
    binarize: bool = _D.binarize,
    lut: str | bool | None = _D.lut,
    rgb_to_label: bool = _D.rgb_to_label,
    dtype: Any = _D.dtype,
    **runtime: Unpack[RuntimeOptions],
) -> Volume:
    """Convert ``src`` into the volume ``dst`` blockwise and return the volume.

    ``src`` is a folder or glob of PNG/TIFF slices (numeric order), a multi-page TIFF, or
    ``FILE.h5[:DATASET]`` (``.h5.gz`` too). ``voxel_size`` (z, y, x nm) is stored as metadata.
    ``chunks`` (z, y, x) are clipped to the volume. ``binarize`` maps nonzero to 1 (uint8).
    ``lut`` (HDF5): an Nx2 (supervoxel, body) dataset, None to use ``transforms`` when it sits beside
    the dataset, False for none; mapped ids are uint64. ``rgb_to_label`` turns colours into ids.
    ``dtype`` overrides the output dtype (default: the source's). An existing ``dst`` of the same
    layout is written again; of another layout it is an error unless ``overwrite``.
    The copy runs on the runtime (``runtime``: ``backend`` ``serial`` here, ``ray`` for a cluster,
    workers, ``overwrite``, ``progress``, ``state_dir``, ...) and resumes: an interrupted ingest copies
    only the slabs it had not finished.
    """
    check_keys(runtime, RuntimeOptions, "ingest")
    src_s, dst_s = os.fspath(src), os.fspath(dst)
    if format not in INGEST_FORMATS:
        raise ConfigError(f"format (--format): unknown output format {format!r}", f"use one of {', '.join(INGEST_FORMATS)}")
    chunks_t = _triple(chunks, "chunks (--chunks)", int, "64,256,256")
    vs = _triple(voxel_size, "voxel_size (--voxel-size)", float, "40,4,4 (nm)")
    assert chunks_t is not None
    try:
        wanted = None if dtype is None else np.dtype(dtype)
    except TypeError as err:
        raise ConfigError(f"dtype (--dtype): unknown dtype {dtype!r}", "use a numpy dtype name such as uint8, uint32 or uint64") from err
    if wanted is not None and wanted.kind not in "biuf":
        raise ConfigError(f"dtype (--dtype): cannot store dtype {wanted}", "use an integer or float dtype such as uint8, uint64 or float32")

    source = open_source(src_s, lut=lut, rgb_to_label=rgb_to_label)
    try:
        out_dtype = wanted if wanted is not None else np.dtype(np.uint8) if binarize else source.numpy_dtype
        chunk_shape = tuple(min(c, s) for c, s in zip(chunks_t, source.shape, strict=True))
        volume = create_volume(
            dst_s, source.shape, out_dtype, chunk_shape, format=format, voxel_size=vs, attrs={"ingested_from": src_s}, overwrite=runtime.get("overwrite", False),
            inputs=(src_s.split(".h5:")[0] if ".h5:" in src_s else src_s,),
        )
        if vs is not None and volume.voxel_size != vs:
            raise StorageError(
                f"{volume.url} already exists with voxel size {volume.voxel_size}, not {vs}", "pass --overwrite to replace it, or give its voxel size"
            )
        grid = ingest_grid(source.shape, volume.write_chunk_shape)
        op = IngestOp(source=source, output=volume.url, dtype=out_dtype.name, binarize=binarize)
        log.info("ingesting %s into %s: %s %s, %d blocks of %s", source.describe(), volume.url, source.shape, out_dtype, grid.num_blocks, grid.write_shape)
        with Session(runtime, share_workers=False) as session:
            summary = session.run(op, grid, "ingest", state_dir=session.state(volume.url, "ingest"))
        totals = summary.stats
    finally:
        source.close()
    log.info(
        "ingested %s: %s %s, %d nonzero voxels (%.1f%%)",
        volume.url, volume.shape, volume.dtype, totals.get("nonzero", 0), 100 * totals.get("nonzero", 0) / max(1.0, totals.get("voxels", 0)),
    )
    return volume
