"""``predict[r]`` and ``label[r]`` (``rounds.predict``, ``rounds.label``): the model of a round over the
whole volume (blockwise, resumable; :func:`engine.ops.predict.predict_volume`), as uint8 probabilities
``RUN/round-NN/predict/prob.zarr/probability``, and its connected components with the object table.
Round ``r`` predicts with ``rounds.model`` for ``r = 1`` and ``finetune[r-1].checkpoint`` after (the
wiring of :mod:`engine.pipeline.rounds`).
"""

from __future__ import annotations

from typing import Any

from engine.config import Config
from engine.params import PredictParams
from engine.pipeline.stage import StageContext
from engine.pipeline.stages._base import DeclaredStage, blockwise_options
from engine.pipeline.stages.label import LabelSection, LabelStage


class PredictSection(PredictParams, Config):
    """``rounds.predict:`` -- ``raw`` (e.g. ``synth.raw``) and the settings of ``connectile predict``
    (:class:`~engine.ops.predict.PredictParams`, the same defaults); ``checkpoint`` is wired (the round's model)."""

    raw: str
    checkpoint: str | None = None


class PredictStage(DeclaredStage, kind="predict", config=PredictSection, order=100,
                   inputs=("raw", "checkpoint"), outputs=("probability",)):
    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.ops.predict import predict_volume

        out = str(ctx.dir / "prob.zarr" / "probability")
        r = predict_volume(ctx.input(cfg.checkpoint), ctx.input(cfg.raw), out, **cfg.settings(), **blockwise_options(ctx))
        return {"probability": r.output}


class RoundLabelSection(LabelSection):
    """``rounds.label:`` -- as ``label``; ``input`` is wired (the round's probabilities)."""

    input: str | None = None  # type: ignore[assignment]


class RoundLabelStage(LabelStage, name="", kind="label", config=RoundLabelSection, order=110):
    """``label[r]``: connected components of the round's probabilities (as ``label``), with the object table."""
