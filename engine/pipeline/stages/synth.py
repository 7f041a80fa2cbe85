"""``synth``: a synthetic EM volume with ground truth (raw, neurons, mito, synapses)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from engine.config import Config
from engine.geometry import Triple
from engine.params import SynthLayout
from engine.pipeline.stage import StageContext
from engine.pipeline.stages._base import DeclaredStage
from engine.synth import SynthParams


class SynthSection(SynthLayout, Config):
    """``synth:`` -- the volume's shape, its storage as ``connectile synth`` (:class:`~engine.params.SynthLayout`,
    the same defaults: chunks, block, format) and the generator parameters (``params``)."""

    shape: Triple = (32, 128, 128)
    params: SynthParams = Field(default_factory=SynthParams)


class SynthStage(DeclaredStage, name="synth", config=SynthSection, outputs=("raw", "neurons", "mito", "synapses"), order=10):
    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.synth import synthesize

        group = ctx.dir / "synth.zarr"
        vols = synthesize(
            group, cfg.shape, params=cfg.params, **cfg.settings(),
            overwrite=ctx.overwrite, state_dir=ctx.state_dir(), **ctx.runtime.kwargs(),
        )
        return {name: vols[name].url for name in self.outputs}
