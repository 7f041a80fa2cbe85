"""``train``: the base model, trained on the annotated boxes (semi-supervised when ``semi`` is set: the
rest of the volume is the unlabelled data of :mod:`engine.learn.semi`), from random weights or, with ``init``,
from a model trained elsewhere (a path: a checkpoint folder, or another run's training output folder).

Builds a :class:`~engine.learn.TrainConfig` from the section (targets: label 1 foreground, 255 unknown,
as ``annotate`` writes them), trains in ``RUN/train/`` with checkpoints, ``history.jsonl`` and
``loss.png`` (training loss and validation IoU against ``truth``), and resumes from the newest
checkpoint when the stage was interrupted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from engine.config import Config
from engine.learn.config import AugmentConfig, BoxSpec, OptimizerConfig, SamplingConfig, SemiConfig, TrainConfig
from engine.models.config import ModelConfig
from engine.pipeline.stage import StageContext
from engine.pipeline.stages._base import DeclaredStage

#: label values of the annotated volumes (see ``annotate``)
FOREGROUND, UNKNOWN = 1, 255


def _default_model() -> ModelConfig:
    return ModelConfig(dims=2, filters=[8, 16, 32], input_kernel_xy=3)


class TrainSection(Config):
    """``train:`` -- inputs ``raw``, ``labels``, ``boxes`` (from ``annotate``), ``truth`` (ground truth for
    the validation curve; optional) and ``init`` (the starting weights; optional); the rest are
    :class:`~engine.learn.TrainConfig` settings."""

    raw: str
    labels: str
    boxes: str | None = None
    truth: str | None = None
    init: str | None = None
    model: ModelConfig = Field(default_factory=_default_model)
    crop: list[int] = [1, 128, 128]
    batch_size: int = Field(default=4, ge=1)
    steps: int = Field(default=200, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=lambda: OptimizerConfig(lr=3e-3))
    augment: AugmentConfig = Field(default_factory=lambda: AugmentConfig(elastic=0.0, misalign=0.0))
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    semi: SemiConfig | None = None
    validate_every: int = Field(default=50, ge=1)
    validation_roi: BoxSpec | None = None
    log_every: int = Field(default=10, ge=1)
    seed: int = 0
    threads: int = Field(default=1, ge=1)


def build_train_config(
    cfg: TrainSection, raw: str, labels: str, boxes: str | None, truth: str | None, output: str, progress: bool, z_stop: int | None = None,
    init: str | None = None,
) -> TrainConfig:
    """The :class:`TrainConfig` of a ``train`` section with resolved inputs. ``z_stop``: the run's test region
    starts there; the unlabelled data of semi-supervised training stays below it, and the learning curve
    (display only, never used to choose anything) is scored in it unless ``validation_roi`` says otherwise."""
    data: dict[str, Any] = {"raw": raw, "labels": labels, "boxes": boxes}
    shape = None
    if z_stop is not None:
        from engine.storage import open_volume

        shape = open_volume(raw).spatial_shape
    if cfg.semi is not None and (cfg.semi.unlabelled or cfg.semi.inter):
        data["unlabelled"] = [{"raw": raw} if shape is None else {"raw": raw, "roi": {"start": [0, 0, 0], "stop": [z_stop, *shape[1:]]}}]
    validation = None
    if truth is not None:
        roi = cfg.validation_roi.model_dump() if cfg.validation_roi else None
        if roi is None and shape is not None:
            roi = {"start": [z_stop, 0, 0], "stop": list(shape)}
        validation = {"raw": raw, "labels": truth, "every": cfg.validate_every, "roi": roi}
    return TrainConfig.model_validate({
        "model": cfg.model.model_dump(), "data": data, "target": {"kind": cfg.model.head, "label_ids": [FOREGROUND], "ignore_ids": [UNKNOWN]},
        "crop": cfg.crop, "batch_size": cfg.batch_size, "sampling": cfg.sampling.model_dump(), "augment": cfg.augment.model_dump(),
        "optimizer": cfg.optimizer.model_dump(), "steps": cfg.steps, "checkpoint_every": cfg.steps, "log_every": cfg.log_every,
        "output": output, "seed": cfg.seed, "device": "auto", "num_threads": cfg.threads, "validation": validation, "progress": progress,
        "semi": cfg.semi.model_dump() if cfg.semi is not None else None, "keep_checkpoints": 1, "init": init,
    })


def run_training(tcfg: TrainConfig, *, resume: bool) -> dict[str, str]:
    """Train (resuming when asked) and return the stage outputs: the newest checkpoint and the history."""
    from engine.errors import StorageError
    from engine.learn import latest_checkpoint
    from engine.learn.distributed import train

    summary = train(tcfg, resume=resume)
    ck = latest_checkpoint(tcfg.output)
    if ck is None:
        raise StorageError(f"training in {tcfg.output} wrote no checkpoint", "run the stage again")
    out = Path(tcfg.output)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return {"checkpoint": str(ck), "history": str(out / "history.jsonl")}


class TrainStage(DeclaredStage, name="train", config=TrainSection, order=130,
                 inputs=("raw", "labels", "boxes", "truth", "init"), outputs=("checkpoint", "history")):
    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        boxes = ctx.input(cfg.boxes) if cfg.boxes else None
        truth = ctx.input(cfg.truth) if cfg.truth else None
        init = ctx.input(cfg.init) if cfg.init else None
        tcfg = build_train_config(cfg, ctx.input(cfg.raw), ctx.input(cfg.labels), boxes, truth, str(ctx.dir), ctx.runtime.progress, ctx.test_from_z, init)
        return run_training(tcfg, resume=not ctx.overwrite)
