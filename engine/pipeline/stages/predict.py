"""``predict[r]`` and ``label[r]`` (``rounds.predict``, ``rounds.label``): the model of a round over the
whole volume (blockwise, resumable; :func:`engine.ops.predict.predict_volume`), as uint8 probabilities
``RUN/round-NN/predict/prob.zarr/probability``, and its connected components with the object table.
Round ``r`` predicts with ``rounds.model`` for ``r = 1`` and ``finetune[r-1].checkpoint`` after (the
wiring of :mod:`engine.pipeline.rounds`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from engine.config import Config
from engine.pipeline.stage import Stage, StageContext
from engine.pipeline.stages.label import LabelSection, LabelStage

Triple = tuple[int, int, int]


class PredictSection(Config):
    """``rounds.predict:`` -- ``raw`` (e.g. ``synth.raw``), the sliding window and blocks; ``checkpoint`` is
    wired (the round's model)."""

    raw: str
    checkpoint: str | None = None
    window: Triple | None = Field(default=None, description="sliding window; default: the checkpoint's training crop (see engine.infer)")
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    block: Triple = (32, 256, 256)
    chunks: Triple = (16, 128, 128)
    tta: Literal["none", "flips", "flips-transpose"] = "none"
    batch_size: int = Field(default=8, ge=1)
    threads: int = Field(default=1, ge=1, description="torch threads per worker (1: best on a loaded 2-core machine)")


class PredictStage(Stage):
    kind = "predict"
    config = PredictSection
    inputs = ("raw", "checkpoint")
    outputs = ("probability",)
    order = 100

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


class RoundLabelSection(LabelSection):
    """``rounds.label:`` -- as ``label``; ``input`` is wired (the round's probabilities)."""

    input: str | None = None  # type: ignore[assignment]


class RoundLabelStage(LabelStage):
    """``label[r]``: connected components of the round's probabilities (as ``label``), with the object table."""

    name = ""
    kind = "label"
    config = RoundLabelSection
    order = 110
