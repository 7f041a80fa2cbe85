"""``segment``: neurons from (3, z, y, x) affinities (watershed fragments, agglomeration, relabel)."""

from __future__ import annotations

from typing import Any

from engine.config import Config
from engine.params import SegmentParams
from engine.pipeline.stage import StageContext
from engine.pipeline.stages._base import DeclaredStage, blockwise_options


class SegmentSection(SegmentParams, Config):
    """``segment:`` -- ``input`` names the affinities; the settings of ``connectile segment``
    (:class:`~engine.ops.segment.SegmentParams`, the same defaults)."""

    input: str


class SegmentStage(DeclaredStage, name="segment", config=SegmentSection, order=70,
                   inputs=("input",), outputs=("segmentation",)):
    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.ops.segment import segment_volume

        r = segment_volume(ctx.input(cfg.input), ctx.dir / "segment.zarr" / "segmentation", **cfg.settings(), **blockwise_options(ctx))
        return {"segmentation": r.output}
