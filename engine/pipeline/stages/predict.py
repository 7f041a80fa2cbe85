"""``predict1``, ``predict2`` ...: the model of a round over the whole volume (blockwise, resumable;
:func:`engine.ops.predict.predict_volume`), as uint8 probabilities ``RUN/predict<r>/prob.zarr/probability``.
Each round's stages read the model of the round before (``train.checkpoint``, then ``finetune<r-1>.checkpoint``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from engine.config import Config
from engine.pipeline.stage import Stage, StageContext
from engine.pipeline.stages._rounds import per_round
from engine.pipeline.stages.label import LabelSection, LabelStage

Triple = tuple[int, int, int]


class PredictSection(Config):
    """``predict<r>:`` -- ``raw`` (e.g. ``synth.raw``), ``checkpoint`` (``train.checkpoint`` or
    ``finetune<r-1>.checkpoint``), the sliding window and blocks."""

    raw: str
    checkpoint: str
    window: Triple = (1, 128, 128)
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    block: Triple = (32, 256, 256)
    chunks: Triple = (16, 128, 128)
    tta: Literal["none", "flips", "flips-transpose"] = "none"
    batch_size: int = Field(default=8, ge=1)
    threads: int = Field(default=1, ge=1, description="torch threads per worker (1: best on a loaded 2-core machine)")


class PredictStage(Stage):
    config = PredictSection
    inputs = ("raw", "checkpoint")
    outputs = ("probability",)
    round: ClassVar[int] = 0

    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.ops.predict import predict_volume
        from engine.storage import open_volume

        rt = ctx.runtime
        shape = open_volume(ctx.input(cfg.raw)).spatial_shape
        chunks = tuple(min(c, s) for c, s in zip(cfg.chunks, shape, strict=True))
        r = predict_volume(
            ctx.input(cfg.checkpoint), ctx.input(cfg.raw), str(ctx.dir / "prob.zarr" / "probability"), block=cfg.block, window=cfg.window,
            chunks=chunks, overlap=cfg.overlap, tta=cfg.tta, batch_size=cfg.batch_size, threads=cfg.threads, overwrite=ctx.overwrite,
            state_dir=ctx.state_dir(), max_retries=rt.max_retries, **rt.kwargs(),
        )
        return {"probability": r.output}


class RoundLabelStage(LabelStage):
    """``label<r>``: connected components of the round's probabilities (as ``label``), with the object table."""

    name = ""
    config = LabelSection
    round: ClassVar[int] = 0


PREDICT = per_round(PredictStage, "predict", 100)
LABEL = per_round(RoundLabelStage, "label", 110)
