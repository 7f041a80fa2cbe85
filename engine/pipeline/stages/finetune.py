"""``finetune1``, ``finetune2`` ...: the model of a round, trained on for a few steps with its review.

The training labels are the annotated boxes (``annotate.labels``: 1 / 0 inside, 255 unknown) plus the
reviewed objects of the round: an accepted object keeps its predicted mask as foreground (1), a
rejected one becomes background (0) (:mod:`engine.active.finetune`'s rule), and an accepted object's
outline is right too: a band of ``ring`` pixels around it in each section becomes background (without
it the known voxels near reviewed objects are all foreground and the model learns to drop the
boundaries between cells). The rest of each reviewed object's box stays unknown. Crops are drawn from the annotated boxes and the reviewed objects' boxes
(grown by ``margin``).

Training continues the model's own run: its newest checkpoint (weights, optimizer state, step) is
copied into ``RUN/finetune<r>/train/checkpoints/`` and training resumes from it with the same
settings (``steps`` more steps, ``lr`` if given), so ``finetune<r>.checkpoint`` is the model of round
``r + 1`` and its ``loss.png`` continues the learning curve.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from engine.config import Config
from engine.pipeline.stage import Stage, StageContext
from engine.pipeline.stages._rounds import per_round
from engine.pipeline.stages.train import FOREGROUND, UNKNOWN

Triple = tuple[int, int, int]


class FinetuneSection(Config):
    """``finetune<r>:`` -- ``checkpoint`` (the round's model), ``rois`` (``query<r>.rois``), ``answers``
    (``review<r>.answers``), ``labels``/``boxes`` (``annotate.labels``/``annotate.boxes``)."""

    checkpoint: str
    rois: str
    answers: str
    labels: str
    boxes: str
    steps: int = Field(default=50, ge=1)
    lr: float | None = Field(default=None, gt=0)
    margin: Triple = (0, 16, 16)
    ring: int = Field(default=2, ge=0, description="background band (pixels, in-plane) around an accepted object; 0: none")


def review_labels(
    base_labels: str, rois_dir: str, answers: dict[int, bool], out: str, margin: Triple, ring: int = 0
) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """Write the fine-tuning labels (see the module docstring) to ``out``; return the reviewed objects'
    boxes and counts."""
    from engine.active.rois import read_index, read_meta
    from engine.geometry import Box
    from engine.storage import create_volume, open_volume

    base = open_volume(base_labels)
    labels = base.read(base.box)
    boxes: list[dict[str, list[int]]] = []
    counts = {"accepted": 0, "rejected": 0, "voxels_fg": 0, "voxels_bg": 0}
    if answers:
        index = read_index(rois_dir)
        pred = open_volume(read_meta(rois_dir)["params"]["labels"])
        with np.load(Path(rois_dir) / "rois" / "objects.npz") as z:
            ids, bbox = z["id"], z["bbox"]
        row_of = {int(i): k for k, i in enumerate(ids.tolist())}
        for roi, ok in sorted(answers.items()):
            obj = int(index["object_id"][roi])
            b = bbox[row_of[obj]]
            box = Box(tuple(int(v) for v in b[:3]), tuple(int(v) for v in b[3:]))
            if ok and ring:
                box = box.grow((0, ring, ring)).intersect(base.box)
            sl = box.to_slices()
            obj_mask = pred.read(box) == np.asarray(obj, pred.dtype)
            free = labels[sl] == UNKNOWN  # annotated truth wins
            mine = obj_mask & free
            labels[sl][mine] = FOREGROUND if ok else 0
            if ok and ring:
                from scipy.ndimage import binary_dilation

                cross = np.zeros((1, 3, 3), bool)
                cross[0, 1, :] = cross[0, :, 1] = True
                band = binary_dilation(obj_mask, cross, iterations=ring) & ~obj_mask & free
                labels[sl][band] = 0
                counts["voxels_bg"] += int(band.sum())
            counts["accepted" if ok else "rejected"] += 1
            counts["voxels_fg" if ok else "voxels_bg"] += int(mine.sum())
            grown = box.grow(margin).intersect(base.box)
            boxes.append({"start": list(grown.start), "stop": list(grown.stop)})
    vol = create_volume(out, base.spatial_shape, "uint8", base.chunk_shape, voxel_size=base.voxel_size, fill_value=UNKNOWN, overwrite=True)
    vol.write(base.box, labels)
    return boxes, counts


def step_of(checkpoint: Path) -> int:
    """The training step of a checkpoint directory ``.../step-XXXXXX``."""
    from engine.errors import StorageError

    try:
        return int(checkpoint.name.removeprefix("step-"))
    except ValueError:
        raise StorageError(f"{checkpoint} is not a training checkpoint (step-XXXXXX)", "give train.checkpoint or finetune<r>.checkpoint") from None


class FinetuneStage(Stage):
    config = FinetuneSection
    inputs = ("checkpoint", "rois", "answers", "labels", "boxes")
    outputs = ("checkpoint", "history")
    round: ClassVar[int] = 0

    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.learn.config import TrainConfig
        from engine.models import read_checkpoint_config
        from engine.pipeline.stages.annotate import read_box_list
        from engine.pipeline.stages.train import run_training

        ck = Path(ctx.input(cfg.checkpoint))
        _, extras = read_checkpoint_config(ck)
        base = TrainConfig.model_validate(extras["train"])
        answers = {int(k): bool(v) for k, v in json.loads(Path(ctx.input(cfg.answers)).read_text())["answers"].items()}
        labels_url = str(ctx.dir / "labels.zarr" / "labels")
        obj_boxes, counts = review_labels(ctx.input(cfg.labels), ctx.input(cfg.rois), answers, labels_url, cfg.margin, cfg.ring)
        boxes = read_box_list(ctx.input(cfg.boxes)) + obj_boxes
        boxes_path = ctx.dir / "boxes.json"
        boxes_path.write_text(json.dumps({"boxes": boxes}, indent=1))
        (ctx.dir / "review_labels.json").write_text(json.dumps(counts, indent=1))
        start = step_of(ck)
        out = ctx.dir / "train"
        if ctx.overwrite and out.exists():
            shutil.rmtree(out)
        dump = base.model_dump(mode="json")
        dump["data"] = {**dump["data"], "labels": labels_url, "boxes": str(boxes_path)}
        dump["sampling"] = {**dump["sampling"], "min_known": min(float(dump["sampling"]["min_known"]), 0.05)}
        if cfg.lr is not None:
            dump["optimizer"] = {**dump["optimizer"], "lr": cfg.lr}
        dump.update(output=str(out), steps=start + cfg.steps, checkpoint_every=start + cfg.steps, progress=ctx.runtime.progress)
        if dump.get("validation"):
            dump["validation"] = {**dump["validation"], "every": max(1, min(int(dump["validation"]["every"]), cfg.steps))}
        tcfg = TrainConfig.model_validate(dump)
        copy = out / "checkpoints" / ck.name
        if not copy.exists():
            from engine.learn import latest_checkpoint

            if latest_checkpoint(out) is None:  # continue the model's own run from its checkpoint
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(ck, copy.with_name(copy.name + ".tmp"), dirs_exist_ok=True)
                copy.with_name(copy.name + ".tmp").rename(copy)
        return run_training(tcfg, resume=True)


FINETUNE = per_round(FinetuneStage, "finetune", 150)
