"""``ingest``: raw images (and optionally labels) from TIFF/PNG slices or HDF5 into zarr."""

from __future__ import annotations

from typing import Any, Literal

from engine.config import Config
from engine.pipeline.stage import Stage, StageContext

Triple = tuple[int, int, int]


class IngestSection(Config):
    """``ingest:`` -- ``raw`` (required) and ``labels`` sources, as for ``connectile ingest``."""

    raw: str
    labels: str | None = None
    voxel_size: tuple[float, float, float] | None = None
    chunks: Triple = (64, 256, 256)
    format: Literal["zarr", "zarr3", "n5"] = "zarr"
    labels_binarize: bool = False
    labels_dtype: str | None = None
    labels_lut: str | bool | None = None


class IngestStage(Stage):
    name = "ingest"
    config = IngestSection
    inputs = ("raw", "labels")
    outputs = ("raw", "labels")
    order = 20

    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.ops.ingest import ingest

        rt = ctx.runtime
        common: dict[str, Any] = {
            "voxel_size": cfg.voxel_size, "chunks": cfg.chunks, "format": cfg.format, "overwrite": ctx.overwrite,
            "progress": rt.progress, "backend": rt.backend, "workers": rt.workers,
        }
        if cfg.labels is not None:
            _check_same_shape(ctx, cfg)
        group = ctx.dir / "ingest.zarr"
        out = {"raw": ingest(_source(ctx, cfg.raw), group / "raw", state_dir=ctx.state_dir("raw"), **common).url}
        if cfg.labels is not None:
            vol = ingest(
                _source(ctx, cfg.labels), group / "labels", binarize=cfg.labels_binarize, dtype=cfg.labels_dtype, lut=cfg.labels_lut,
                state_dir=ctx.state_dir("labels"), **common,
            )
            out["labels"] = vol.url
        return out


def _check_same_shape(ctx: StageContext, cfg: Any) -> None:
    """Raw and labels of other shapes would be ingested, then refused by training: say so before either."""
    from engine.errors import ConfigError
    from engine.storage.sources import open_source

    raw = open_source(_source(ctx, cfg.raw)).shape
    labels = open_source(_source(ctx, cfg.labels), lut=cfg.labels_lut).shape
    if raw != labels:
        raise ConfigError(
            f"ingest.raw {cfg.raw} is {raw} (z, y, x) but ingest.labels {cfg.labels} is {labels}",
            "give the labels of these raw images (as many slices, each of the same size)",
        )


def _source(ctx: StageContext, value: str) -> str:
    """Sources may be globs or ``FILE.h5:DATASET``: ingest itself names what is missing."""
    return value if any(ch in value for ch in "*?[") else ctx.input(value)
