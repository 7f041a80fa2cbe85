"""Blockwise patch embedding: every patch of the patch grid through the encoder, on actors.

The blocks are blocks of the *patch grid* (not of voxels): block ``b`` covers grid positions
``b.write`` (a box of patch indices, whole chunks of the embedding array), reads the voxels those
patches span in one read (from the first patch's start to the last patch's stop), cuts the patches
out (views, no copy), runs them through the encoder in batches and writes ``(gz, gy, gx, D)``
vectors into its own chunks of the embedding zarr. Blocks are independent, resumable and
idempotent; the output equals embedding every patch on its own (tested).

    connectile embed data.zarr/raw runs/emb.zarr --encoder runs/simsiam/encoder
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, PrivateAttr
from typing_extensions import Unpack

from engine.errors import ConfigError
from engine.geometry import Block, BlockGrid, Box
from engine.options import check_keys
from engine.params import EMBED_BLOCK, EmbedParams
from engine.runtime import BlockOp, RunSummary
from engine.runtime.options import RuntimeOptions
from engine.runtime.session import Session
from engine.select.embeddings import create_embeddings, open_embeddings
from engine.select.patches import PatchGrid, default_patch_and_stride

log = logging.getLogger(__name__)

#: Patches per block along (z, y, x) of the patch grid (and the zarr chunks of the output).
DEFAULT_BLOCK = EMBED_BLOCK
#: the defaults of the embedding's settings (declared once, in :class:`~engine.params.EmbedParams`)
_D = EmbedParams()


def patch_voxels(grid: PatchGrid, write: Box) -> Box:
    """The voxels spanned by the patches of grid box ``write``."""
    start = tuple(o + a * s for o, a, s in zip(grid.origin, write.start, grid.stride, strict=True))
    stop = tuple(o + (b - 1) * s + p for o, b, s, p in zip(grid.origin, write.stop, grid.stride, grid.patch, strict=True))
    return Box(start, stop)


class EmbedOp(BlockOp):
    """Embed the patches of one block of the patch grid with the encoder of ``encoder`` (a checkpoint)."""

    kind: ClassVar[str] = "embed"
    wants_gpu: ClassVar[bool] = True
    input: str
    output: str
    encoder: str
    patch: tuple[int, int, int]
    stride: tuple[int, int, int]
    origin: tuple[int, int, int] = (0, 0, 0)
    limit: tuple[int, int, int] | None = Field(default=None, description="embed only patches inside the first `limit` voxels (e.g. below a test region)")
    batch: int = _D.batch
    dtype: str = _D.dtype
    threads: int = _D.threads
    overwrite: bool = Field(default=False, exclude=True)

    _model: Any = PrivateAttr(default=None)
    _vol: Any = PrivateAttr(default=None)
    _out: Any = PrivateAttr(default=None)
    _device: Any = PrivateAttr(default=None)

    def patch_grid(self, volume_shape: tuple[int, ...]) -> PatchGrid:
        shape = tuple(volume_shape[-3:])
        if self.limit is not None:
            shape = tuple(min(s, m) for s, m in zip(shape, self.limit, strict=True))
        return PatchGrid(shape, self.patch, self.stride, self.origin)

    def prepare(self, grid: BlockGrid) -> None:
        from engine.learn.simsiam import load_encoder
        from engine.storage import open_volume

        vol = open_volume(self.input)
        pg = self.patch_grid(vol.spatial_shape)
        if tuple(grid.total.shape) != pg.shape:
            raise ConfigError(f"the block grid covers {grid.total.shape} patches but the patch grid has {pg.shape}")
        enc, _, _ = load_encoder(self.encoder)
        exists = os.path.exists(self.output)
        if exists and not self.overwrite:
            arr = open_embeddings(self.output)
            if tuple(arr.shape) != (*pg.shape, enc.out_dim) or tuple(arr.chunks[:3]) != tuple(grid.write_shape):
                raise ConfigError(
                    f"{self.output} exists with shape {arr.shape} and chunks {arr.chunks}, not {(*pg.shape, enc.out_dim)} and {(*grid.write_shape, enc.out_dim)}",
                    "pass --overwrite, or choose another output",
                )
            return
        if exists:  # --overwrite: replace one embedding array, nothing else (see engine.storage.safety)
            from engine.storage.safety import check_removable

            check_removable(self.output, "volume", inputs=(self.input, self.encoder))
        create_embeddings(
            self.output, pg, enc.out_dim, volume=vol.url, voxel_size=vol.voxel_size, dtype=self.dtype, chunks=grid.write_shape,
            extra={"encoder": str(Path(self.encoder).resolve())},
        )

    def setup(self, grid: BlockGrid | None = None) -> None:
        import torch

        from engine.learn.simsiam import load_encoder
        from engine.storage import open_volume

        torch.set_num_threads(max(1, self.threads))
        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._model, _, _ = load_encoder(self.encoder, self._device)
        self._vol = open_volume(self.input)
        self._out = open_embeddings(self.output, mode="r+")

    def process(self, block: Block) -> dict[str, float] | None:
        import torch

        from engine.values import to_unit

        pg = self.patch_grid(self._vol.spatial_shape)
        vox = patch_voxels(pg, block.write)
        data = to_unit(self._vol.read(vox))
        idx = np.stack(np.meshgrid(*(np.arange(n) for n in block.write.shape), indexing="ij"), axis=-1).reshape(-1, 3)
        starts = idx * np.asarray(pg.stride)
        out = np.empty((len(idx), self._model.out_dim), np.float32)
        pz, py, px = pg.patch
        with torch.inference_mode():
            for s in range(0, len(idx), self.batch):
                batch = np.stack([data[z : z + pz, y : y + py, x : x + px] for z, y, x in starts[s : s + self.batch]])[:, None]
                out[s : s + self.batch] = self._model(torch.from_numpy(batch).to(self._device)).float().cpu().numpy()
        sl = tuple(slice(a, b) for a, b in zip(block.write.start, block.write.stop, strict=True))
        self._out[sl] = out.reshape(*block.write.shape, -1).astype(self.dtype)
        return {"patches": float(len(idx))}

    def teardown(self) -> None:
        self._model = None


class EmbedRun(RuntimeOptions, total=False):
    """How an embedding runs (the embeddings are the same whatever these say): the runtime options
    (backend ``ray`` by default; the state folder defaults to ``OUTPUT.state``) and the
    :class:`~engine.params.EmbedParams` that do not change the embeddings: ``block`` (patches per
    block), ``batch`` (patches per encoder call) and ``threads`` (torch threads per worker)."""

    block: tuple[int, int, int]
    batch: int
    threads: int


def embed_volume(
    volume: str,
    output: str,
    encoder: str,
    *,
    patch: tuple[int, int, int] | None = _D.patch,
    stride: tuple[int, int, int] | None = _D.stride,
    dtype: str = _D.dtype,
    limit: tuple[int, int, int] | None = None,
    **run: Unpack[EmbedRun],
) -> RunSummary:
    """Embed every patch of ``volume`` (inside its first ``limit`` voxels) into the embedding zarr ``output`` (resumable)."""
    check_keys(run, EmbedRun, "embed_volume")
    from engine.storage import open_volume

    vol = open_volume(volume)
    dp, ds = default_patch_and_stride(vol.voxel_size)
    p = tuple(patch or dp)
    st = tuple(stride or ds)
    op = EmbedOp(input=volume, output=output, encoder=encoder, patch=(p[0], p[1], p[2]), stride=(st[0], st[1], st[2]), batch=run.get("batch", _D.batch),
                 dtype=dtype, overwrite=run.get("overwrite", False), threads=run.get("threads", _D.threads), limit=limit)
    pg = op.patch_grid(vol.spatial_shape)
    write = tuple(min(b, g) for b, g in zip(run.get("block", _D.block), pg.shape, strict=True))
    grid = BlockGrid(Box.from_shape(pg.shape), write)
    log.info("embedding %d patches (%s grid) of %s in %d blocks", pg.size, pg.shape, volume, grid.num_blocks)
    with Session(run, backend="ray", share_workers=False) as session:
        return session.run(op, grid, "embed", state_dir=run.get("state_dir") or Path(str(output) + ".state"))
