"""``segment``: neurons from (3, z, y, x) affinities (watershed fragments, agglomeration, relabel)."""

from __future__ import annotations

from typing import Any

from engine.config import Config
from engine.params import SegmentParams
from engine.pipeline.stage import Stage, StageContext


class SegmentSection(SegmentParams, Config):
    """``segment:`` -- ``input`` names the affinities; the settings of ``connectile segment``
    (:class:`~engine.ops.segment.SegmentParams`, the same defaults)."""

    input: str


class SegmentStage(Stage):
    name = "segment"
    config = SegmentSection
    inputs = ("input",)
    outputs = ("segmentation",)
    order = 70

    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.ops.segment import segment_volume

        r = segment_volume(
            ctx.input(cfg.input), ctx.dir / "segment.zarr" / "segmentation", overwrite=ctx.overwrite, state_dir=ctx.state_dir(),
            max_retries=ctx.runtime.max_retries, **cfg.settings(), **ctx.runtime.kwargs(),
        )
        return {"segmentation": r.output}
