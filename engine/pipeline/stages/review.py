"""``review[r]`` (``rounds.review``): the answers to a round's queries.

``source: oracle`` answers at once from ground truth (:func:`engine.active.oracle.answer_round`: an
object is correct when it covers more than half of a ground-truth object); ``source: person`` waits
for a person: until the round's answers are marked finished, the stage fails with a message telling
to run ``connectile review RUN/round-NN/query`` and then to run the pipeline again (the stage then reads the
answers and the run goes on). Writes ``RUN/round-NN/review/answers.json`` (roi id -> accepted) and the share
of queried objects that were right (the round's ROI accuracy on the queries).

Boxes the query asked to label densely (``rounds.query.boxes``) are painted into
``RUN/round-NN/review/boxes.zarr/labels`` (1 foreground, 0 background inside the boxes, 255 elsewhere, as
``annotate``'s labels): by the oracle from ``truth`` (``target``/``boundary``: the ``annotate`` stage's unless
set), or by a person: the boxes are exported as crops (``RUN/round-NN/review/crops/``, zarr and TIFF,
:func:`engine.select.export.export_crops`), the stage waits until every crop has its labels (0 background,
any other id foreground) and then imports them. When the query asks for other boxes, the crops of the earlier
ones are moved aside (``crops.aside-<UTC time>``), never deleted. ``answers.json`` lists the boxes and their
labels under ``boxes``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from pydantic import Field

from engine.config import Config
from engine.errors import ConnectileError
from engine.pipeline.stage import StageContext
from engine.pipeline.stages._base import DeclaredStage

log = logging.getLogger(__name__)


class ReviewPending(ConnectileError):
    """A round waits for a person's review."""

    exit_code = 3


def paint_instruction(crops: str, then: str) -> str:
    """What a person does with a round's exported crops, then ``then``."""
    return f"write each crop's labels in {crops} (crop_NNN.zarr/labels or crop_NNN_labels.tif: 0 background, any other id foreground), then {then}"


class BoxesPending(ReviewPending):
    """A round's dense boxes wait to be painted by a person (as exported crops in ``crops``)."""

    def __init__(self, problem: str, fix: str, crops: str) -> None:
        super().__init__(problem, fix)
        self.crops = crops


class ReviewSection(Config):
    """``rounds.review:`` -- ``source``: oracle or person; ``truth``: the ground truth of the oracle (an
    instance volume, or a binary one with ``truth_binary``); ``rois`` (the round's queries) is wired."""

    rois: str | None = None
    source: Literal["oracle", "person"] = "oracle"
    truth: str | None = None
    truth_binary: bool = False
    criterion: Literal["cover", "iou"] = "cover"
    threshold: float = 0.5
    target: Literal["mask", "interior"] | None = Field(default=None, description="the painted boxes' foreground (default: annotate.target's)")
    boundary: int | None = Field(default=None, ge=1, description="interior: the boundary width (default: annotate.boundary's)")


def _set_aside_store(path: Any) -> None:
    """Remove an answer store before the oracle answers again; one that holds a person's answers is
    renamed beside it (``answers.person-<UTC time>.sqlite``), never deleted."""
    import time

    from engine.active.answers import _holds_person_answers

    if _holds_person_answers(path):
        dest = path.with_name(f"answers.person-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.sqlite")
        path.rename(dest)
    else:
        path.unlink(missing_ok=True)


def paint_boxes(ctx: StageContext, cfg: Any, query_dir: str) -> dict[str, Any] | None:
    """The labels of the boxes the round's query asked for (module docstring); None when it asked for none."""
    from pathlib import Path

    from engine.errors import ConfigError, StorageError
    from engine.pipeline.stages.annotate import write_box_labels

    asked = Path(query_dir) / "boxes.json"
    if not asked.exists():
        return None
    doc = json.loads(asked.read_text())
    boxes = doc["boxes"]
    if not boxes:
        return None
    out = str(ctx.dir / "boxes.zarr" / "labels")
    if cfg.source == "oracle":
        if cfg.truth is None:
            raise ConfigError(f"{ctx.stage}: source 'oracle' needs truth (the ground-truth volume)", "set rounds.review.truth, or source: person")
        truth = ctx.input(cfg.truth)
    else:
        from engine.select.export import export_crops, import_labels

        crops = ctx.dir / "crops"
        if (crops / "manifest.json").exists():  # crops of other boxes (the query ran again): set aside, never deleted
            exported = [c["box"] for c in json.loads((crops / "manifest.json").read_text())["crops"]]
            if exported != [{"start": list(b["start"]), "stop": list(b["stop"])} for b in boxes]:
                import time

                aside = crops.with_name(f"crops.aside-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
                crops.rename(aside)
                log.warning("%s: the round asks for other boxes now; the crops of the earlier ones were moved to %s", ctx.stage, aside)
                if (ctx.dir / "person.zarr").exists():
                    from engine.storage.safety import remove

                    remove(ctx.dir / "person.zarr", "run-files")
        if not (crops / "manifest.json").exists():
            if doc.get("image") is None:
                raise ConfigError(f"{ctx.stage}: the boxes of {asked} name no raw volume to export", "run the round's query again")
            export_crops(doc["image"], asked, crops)
        truth = str(ctx.dir / "person.zarr" / "labels")
        if ctx.overwrite or not (ctx.dir / "person.zarr").exists():
            if ctx.overwrite and (ctx.dir / "person.zarr").exists():
                from engine.storage.safety import remove

                remove(ctx.dir / "person.zarr", "run-files")
            try:
                import_labels(crops, truth)
            except StorageError as err:
                raise BoxesPending(
                    f"{ctx.stage}: the {len(boxes)} boxes of round {ctx.round or 1} wait to be painted ({err.problem})",
                    paint_instruction(str(crops), "run the pipeline again"), str(crops),
                ) from None
    annotate = getattr(ctx.pipeline, "annotate", None)
    target = cfg.target or getattr(annotate, "target", "mask")
    boundary = cfg.boundary or getattr(annotate, "boundary", 1)
    info = write_box_labels(truth, boxes, out, (16, 128, 128), target, boundary)
    return {"labels": out, "boxes": boxes, "known_voxels": info["known_voxels"], "foreground_voxels": info["foreground_voxels"]}


class ReviewStage(DeclaredStage, kind="review", config=ReviewSection, order=140,
                  inputs=("rois", "truth"), outputs=("answers",)):
    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.active.answers import AnswerStore, answers_path, round_finished
        from engine.active.oracle import answer_round
        from engine.active.rois import round_dir
        from engine.errors import ConfigError

        active = ctx.input(cfg.rois)
        rnd = ctx.round or 1
        rdir = round_dir(active, rnd)
        answers: dict[int, bool] = {}
        if (rdir / "queries.parquet").exists():
            if cfg.source == "oracle":
                if cfg.truth is None:
                    raise ConfigError(f"{ctx.stage}: source 'oracle' needs truth (the ground-truth volume)", "set rounds.review.truth, or source: person")
                if round_finished(rdir) and not ctx.overwrite:
                    with AnswerStore(answers_path(rdir)) as store:
                        answers = store.answers()
                else:
                    if ctx.overwrite and answers_path(rdir).exists():
                        _set_aside_store(answers_path(rdir))
                    answers = answer_round(active, rnd, ctx.input(cfg.truth), criterion=cfg.criterion, threshold=cfg.threshold, gt_binary=cfg.truth_binary)
            else:
                if not round_finished(rdir):
                    raise ReviewPending(
                        f"{ctx.stage}: the queries of {active} (round {rnd}) wait for a person's review",
                        f"run `connectile review {active}`, finish the round, then run the pipeline again",
                    )
                with AnswerStore(answers_path(rdir)) as store:
                    answers = store.answers()
        accepted = sum(answers.values())
        boxes = paint_boxes(ctx, cfg, active)
        doc = {"source": cfg.source, "answers": {str(k): bool(v) for k, v in sorted(answers.items())}, "reviewed": len(answers),
               "accepted": accepted, "query_accuracy": accepted / len(answers) if answers else None, **({"boxes": boxes} if boxes else {})}
        path = ctx.dir / "answers.json"
        path.write_text(json.dumps(doc, indent=1))
        return {"answers": str(path)}

