"""``segment``: neurons from (3, z, y, x) affinities (watershed fragments, agglomeration, relabel)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from engine.config import Config
from engine.ops.label import DEFAULT_BLOCK, DEFAULT_CHUNKS
from engine.pipeline.stage import Stage, StageContext

Triple = tuple[int, int, int]


class SegmentSection(Config):
    """``segment:`` -- as ``connectile segment``; ``input`` names the affinities."""

    input: str
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    scoring: Literal["mean", "quantile"] = "mean"
    quantile: float = Field(default=0.5, ge=0.0, le=1.0)
    per_section: bool = False
    seed_threshold: float = 0.5
    block: Triple = DEFAULT_BLOCK
    chunks: Triple = DEFAULT_CHUNKS


class SegmentStage(Stage):
    name = "segment"
    config = SegmentSection
    inputs = ("input",)
    outputs = ("segmentation",)
    order = 70

    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.ops.segment import segment_volume

        r = segment_volume(
            ctx.input(cfg.input), ctx.dir / "segment.zarr" / "segmentation", threshold=cfg.threshold, scoring=cfg.scoring, quantile=cfg.quantile,
            per_section=cfg.per_section, seed_threshold=cfg.seed_threshold, block=cfg.block, chunks=cfg.chunks, overwrite=ctx.overwrite,
            state_dir=ctx.state_dir(), max_retries=ctx.runtime.max_retries, **ctx.runtime.kwargs(),
        )
        return {"segmentation": r.output}
