"""``selection``: the sub-volumes to label, by greedy coverage of kNN balls of the patch embeddings
(:mod:`engine.select`), with the baselines on the same candidates. Writes ``RUN/selection/selection.json``
(the boxes, in voxels), ``coverage.png`` and ``picks.png`` (the selection drawn over the volume)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from engine.config import Config
from engine.pipeline.stage import StageContext
from engine.pipeline.stages._base import DeclaredStage
from engine.select.run import SelectConfig


class SelectSection(Config):
    """``selection:`` -- ``input``: the embeddings (``embed.embeddings``); ``params``: the settings of
    ``connectile select`` (:class:`~engine.params.SelectParams`, the same defaults: budget, k, window in
    patches, methods -- the first is the one used)."""

    input: str
    params: SelectConfig = Field(default_factory=SelectConfig)


class SelectStage(DeclaredStage, name="selection", config=SelectSection, inputs=("input",), outputs=("boxes",), order=110):
    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.select.embeddings import load_embeddings
        from engine.select.run import select, write_outputs

        grid, emb, attrs = load_embeddings(ctx.input(cfg.input))
        params = cfg.params
        if params.backend == "ray" and ctx.runtime.backend == "ray":
            from engine.runtime import connect

            connect(ctx.runtime.address, dashboard=False)
        elif params.backend == "ray":
            params = params.model_copy(update={"backend": "local"})
        selections, info = select(grid, emb, params, progress=ctx.runtime.progress)
        path = write_outputs(ctx.dir, grid, emb, selections, info, params, attrs)
        return {"boxes": str(path)}
