"""What the stages of :mod:`engine.pipeline.stages` share: a stage declared in its ``class`` statement
(:class:`DeclaredStage`) and the options of a blockwise run taken from the stage's context
(:func:`blockwise_options`). The module's name starts with ``_``: :func:`~engine.pipeline.stage.discover`
does not import it as a stage module (it registers no stage).
"""

from __future__ import annotations

from typing import Any

from engine.config import Config
from engine.pipeline.stage import Stage, StageContext


class DeclaredStage(Stage):
    """A :class:`~engine.pipeline.stage.Stage` whose declaration is the class statement's keywords::

        class SegmentStage(DeclaredStage, name="segment", config=SegmentSection, inputs=("input",),
                           outputs=("segmentation",), order=70):
            def run(self, ctx, cfg): ...

    Each keyword sets the :class:`Stage` class attribute of that name (``kind`` for a round stage,
    ``last`` for a stage that runs after all others); one left out keeps the base class's value. The
    stage then registers as any :class:`Stage` does (the same checks, the same registry).
    """

    def __init_subclass__(
        cls,
        *,
        name: str | None = None,
        kind: str | None = None,
        config: type[Config] | None = None,
        inputs: tuple[str, ...] | None = None,
        outputs: tuple[str, ...] | None = None,
        order: int | None = None,
        last: bool | None = None,
        **kwargs: Any,
    ) -> None:
        declared = {"name": name, "kind": kind, "config": config, "inputs": inputs, "outputs": outputs, "order": order, "last": last}
        for attr, value in declared.items():
            if value is not None:
                setattr(cls, attr, value)
        super().__init_subclass__(**kwargs)


def blockwise_options(ctx: StageContext) -> dict[str, Any]:
    """The keyword arguments a blockwise volume function (``label_volume``, ``segment_volume``,
    ``predict_volume``, ``run_blockwise`` ...) takes from the stage's context: start over or resume
    (``overwrite``), where the done-markers live (``state_dir``), ``max_retries`` and the runtime's
    backend, workers, address and progress."""
    rt = ctx.runtime
    return {"overwrite": ctx.overwrite, "state_dir": ctx.state_dir(), "max_retries": rt.max_retries, **rt.kwargs()}
