"""``label``: connected components of a probability, binary or label volume (blockwise, exact)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from engine.config import Config
from engine.ops.label import DEFAULT_BLOCK, DEFAULT_CHUNKS
from engine.pipeline.stage import Stage, StageContext

Triple = tuple[int, int, int]


class LabelSection(Config):
    """``label:`` -- as ``connectile label``; ``input`` is e.g. ``synth.mito`` or a volume URL."""

    input: str
    threshold: float | None = None
    connectivity: Literal[6, 18, 26] = 26
    min_size: int = Field(default=0, ge=0)
    table: bool = True
    block: Triple = DEFAULT_BLOCK
    chunks: Triple = DEFAULT_CHUNKS
    device: Literal["cpu", "gpu", "auto"] = "cpu"


class LabelStage(Stage):
    name = "label"
    config = LabelSection
    inputs = ("input",)
    outputs = ("labels", "table")
    order = 60

    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.ops.label import label_volume

        table = ctx.dir / "objects.parquet" if cfg.table else None
        result = label_volume(
            ctx.input(cfg.input), ctx.dir / "labels.zarr" / "labels", threshold=cfg.threshold, connectivity=cfg.connectivity,
            min_size=cfg.min_size, table=table, block=cfg.block, chunks=cfg.chunks, device=cfg.device, overwrite=ctx.overwrite,
            state_dir=ctx.state_dir(), max_retries=ctx.runtime.max_retries, **ctx.runtime.kwargs(),
        )
        out = {"labels": result.output}
        if result.table:
            out["table"] = result.table
        return out
