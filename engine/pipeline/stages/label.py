"""``label``: connected components of a probability, binary or label volume (blockwise, exact)."""

from __future__ import annotations

from typing import Any, Literal

from engine.config import Config
from engine.params import LabelParams
from engine.pipeline.stage import StageContext
from engine.pipeline.stages._base import DeclaredStage, blockwise_options


class LabelSection(LabelParams, Config):
    """``label:`` -- ``input`` (e.g. ``synth.mito`` or a volume URL) and the settings of ``connectile label``
    (:class:`~engine.ops.label.LabelParams`, the same defaults); ``table``: write the object table."""

    input: str
    table: bool = True
    device: Literal["cpu", "gpu", "auto"] = "cpu"


class LabelStage(DeclaredStage, name="label", config=LabelSection, inputs=("input",), outputs=("labels", "table"), order=60):
    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.ops.label import label_volume

        table = ctx.dir / "objects.parquet" if cfg.table else None
        result = label_volume(
            ctx.input(cfg.input), ctx.dir / "labels.zarr" / "labels", table=table, device=cfg.device, **cfg.settings(), **blockwise_options(ctx),
        )
        out = {"labels": result.output}
        if result.table:
            out["table"] = result.table
        return out
