"""``ceiling``: the quality ceiling of a run -- a model trained the same way as the base model (the
``train`` settings it is given: the same model, steps, sampling, augmentation) but on the ground truth of
the whole volume outside the test region (every section below ``test_from_z``; the whole volume when the
run has no test region), predicted over the volume and scored as the rounds are (voxel IoU and Dice of
``probability > threshold`` against ``truth``'s foreground, over the test region).

It answers whether labels can still help: the rounds' scores sit between the base model's and this one.
Writes ``RUN/ceiling/`` (labels, training, prediction) and ``metrics.json``
(``iou``, ``dice``, ``labelled_voxels``, ``scored_from_z``); the ``metrics`` stage shows it beside the
rounds and in the quality-against-effort plot.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from engine.config import Config
from engine.params import PredictParams
from engine.pipeline.stage import StageContext
from engine.pipeline.stages._base import DeclaredStage, blockwise_options


class CeilingSection(Config):
    """``ceiling:`` -- ``raw`` and ``truth`` (as ``annotate.truth``: instance or binary ground truth);
    ``target``/``boundary`` as ``annotate``; ``train``: the ``train`` section's settings (without its
    inputs); ``predict``: the settings of ``connectile predict``; ``threshold`` as ``rounds.score``."""

    raw: str
    truth: str
    target: Literal["mask", "interior"] = "mask"
    boundary: int = Field(default=1, ge=1)
    train: dict[str, Any] = Field(default_factory=dict)
    predict: PredictParams = Field(default_factory=PredictParams)
    threshold: float = 0.5


def region_iou(prob_url: str, truth_url: str, target: str, boundary: int, threshold: float, z_from: int) -> dict[str, Any]:
    """Voxel IoU and Dice of ``probability > threshold`` against the truth's foreground over sections
    ``z >= z_from``: the score stage's :func:`~engine.pipeline.stages.score.region_iou`, by URL."""
    from engine.pipeline.stages.score import region_iou as score_region
    from engine.storage import open_volume

    return {**score_region(open_volume(prob_url), open_volume(truth_url), target, boundary, threshold, z_from), "scored_from_z": z_from}


class CeilingStage(DeclaredStage, name="ceiling", config=CeilingSection, order=135, inputs=("raw", "truth"), outputs=("metrics", "checkpoint")):
    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.ops.predict import predict_volume
        from engine.pipeline.stages.annotate import write_box_labels
        from engine.pipeline.stages.train import TrainSection, build_train_config, run_training
        from engine.storage import open_volume

        raw, truth = ctx.input(cfg.raw), ctx.input(cfg.truth)
        shape = open_volume(truth).spatial_shape
        z_from = ctx.test_from_z or 0
        stop = z_from if z_from else shape[0]
        boxes = [{"start": [0, 0, 0], "stop": [stop, *shape[1:]]}]
        (ctx.dir / "boxes.json").write_text(json.dumps({"boxes": boxes}, indent=1))
        labels = str(ctx.dir / "labels.zarr" / "labels")
        info = write_box_labels(truth, boxes, labels, (16, 256, 256), cfg.target, cfg.boundary)
        section = TrainSection.model_validate({**cfg.train, "raw": raw, "labels": labels})
        tcfg = build_train_config(section, raw, labels, str(ctx.dir / "boxes.json"), None, str(ctx.dir / "train"), ctx.runtime.progress, ctx.test_from_z,
                                  section.init)  # trained the same way: from the base's starting weights too (a path here)
        checkpoint = run_training(tcfg, resume=not ctx.overwrite)["checkpoint"]
        prob = str(ctx.dir / "prob.zarr" / "probability")
        predict_volume(checkpoint, raw, prob, **cfg.predict.settings(), **blockwise_options(ctx))
        metrics = region_iou(prob, truth, cfg.target, cfg.boundary, cfg.threshold, z_from)
        metrics["labelled_voxels"] = int(info["known_voxels"])
        path = ctx.dir / "metrics.json"
        path.write_text(json.dumps(metrics, indent=1))
        return {"metrics": str(path), "checkpoint": checkpoint}
