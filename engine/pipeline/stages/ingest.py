"""``ingest``: raw images (and optionally labels) from TIFF/PNG slices or HDF5 into zarr."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from engine.config import Config
from engine.params import IngestConversion, IngestLayout
from engine.pipeline.stage import StageContext
from engine.pipeline.stages._base import DeclaredStage

#: the labels' conversion defaults: ``connectile ingest``'s (declared once, in :class:`IngestConversion`)
_C = IngestConversion()


class IngestSection(IngestLayout, Config):
    """``ingest:`` -- ``raw`` (required) and ``labels`` sources written with the layout of ``connectile ingest``
    (:class:`~engine.params.IngestLayout`: voxel_size, chunks, format, the same defaults); ``labels_*``: the
    conversion of the labels (``connectile ingest``'s --binarize, --dtype, --lut, --rgb-to-label)."""

    raw: str
    labels: str | None = None
    labels_binarize: bool = Field(default=_C.binarize, description=IngestConversion.model_fields["binarize"].description)
    labels_dtype: str | None = Field(default=_C.dtype, description=IngestConversion.model_fields["dtype"].description)
    labels_lut: str | bool | None = Field(default=_C.lut, description=IngestConversion.model_fields["lut"].description)
    labels_rgb_to_label: bool = Field(default=_C.rgb_to_label, description=IngestConversion.model_fields["rgb_to_label"].description)

    def labels_conversion(self) -> dict[str, Any]:
        """The labels' :class:`IngestConversion` settings by name (``binarize``, ...)."""
        return {name: getattr(self, f"labels_{name}") for name in IngestConversion.model_fields}


class IngestStage(DeclaredStage, name="ingest", config=IngestSection, order=20,
                  inputs=("raw", "labels"), outputs=("raw", "labels")):
    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.ops.ingest import ingest

        rt = ctx.runtime
        common: dict[str, Any] = {
            **cfg.settings(), "overwrite": ctx.overwrite, "progress": rt.progress, "backend": rt.backend, "workers": rt.workers,
        }
        if cfg.labels is not None:
            _check_same_shape(ctx, cfg)
        group = ctx.dir / "ingest.zarr"
        out = {"raw": ingest(_source(ctx, cfg.raw), group / "raw", state_dir=ctx.state_dir("raw"), **common).url}
        if cfg.labels is not None:
            vol = ingest(_source(ctx, cfg.labels), group / "labels", state_dir=ctx.state_dir("labels"), **cfg.labels_conversion(), **common)
            out["labels"] = vol.url
        return out


def _check_same_shape(ctx: StageContext, cfg: Any) -> None:
    """Raw and labels of other shapes would be ingested, then refused by training: say so before either."""
    from engine.errors import ConfigError
    from engine.storage.sources import open_source

    raw = open_source(_source(ctx, cfg.raw)).shape
    labels = open_source(_source(ctx, cfg.labels), lut=cfg.labels_lut, rgb_to_label=cfg.labels_rgb_to_label).shape
    if raw != labels:
        raise ConfigError(
            f"ingest.raw {cfg.raw} is {raw} (z, y, x) but ingest.labels {cfg.labels} is {labels}",
            "give the labels of these raw images (as many slices, each of the same size)",
        )


def _source(ctx: StageContext, value: str) -> str:
    """Sources may be globs or ``FILE.h5:DATASET``: ingest itself names what is missing."""
    return value if any(ch in value for ch in "*?[") else ctx.input(value)
