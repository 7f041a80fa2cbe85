"""``finetune[r]`` (``rounds.finetune``): the round's model, trained on for a few steps with every answer
so far, and kept only if it is better on held-out annotated voxels.

Labels (:func:`engine.active.finetune.paint_answers`): the annotated boxes (``annotate.labels``: 1 / 0
inside, 255 unknown), plus the reviewed objects of rounds ``1 .. r`` (all of them, not only this
round's): an accepted object's predicted mask is foreground with a ``ring`` of background around it
(with ``erode``, its own outer ``erode`` pixels stay unknown instead: a True under the oracle's IoU > 0.5
rule, or a person's glance, says the object is right, not where its edge is), a rejected object is
background. With ``propagate``, an answer also reaches the unreviewed members of
the reviewed object's cluster (the two-stream paper's label propagation); those voxels are marked as
propagated and count ``propagated_weight`` in the loss. With ``anchor`` (a loss weight, e.g. 0.5), every
other voxel that nothing labels takes the previous model's own segmentation (the label stage's objects
the round's queries came from) as its label, at that weight: without it, a crop drawn around an answered
object knows little but that object, and 200 steps on such crops moved the whole foreground of Lucchi++
one way or the other (false positives doubled in one round, false negatives in another; benchmarks/RESULTS.md,
seventh session). With it, the answers change what they are about and the rest is held where it was
(learning without forgetting, Li and Hoiem 2016, with the previous model's hard labels). The held-out annotated voxels
(``annotate.heldout``) are never painted nor trained on.

Boxes painted densely in rounds ``1 .. r`` (``rounds.query.boxes``; the review stage's labels) are copied into
the labels as the annotated boxes are (never over held-out voxels or the test region), and a share
``box_share`` of the crops is drawn from them (by size) when there are any; the other crops are split as follows.
With ``box_heldout: k``, the last of every k boxes a round painted is held out instead: never trained on, it
scores the rounds beside the annotated held-out voxels. The annotated quarters of the synthetic demo held no
mitochondrion in 2 of 5 seeds, so the gate could not tell its rounds apart there; with ``box_heldout: 4`` it
could, and it still used every round, one of which lowered the test sections by 0.085: boxes where the
previous model was unsure reward any change there (benchmarks/RESULTS.md, twelfth session). No demo sets it.

Crops: a share ``replay`` of them from the annotated boxes (the labels the model was trained on, so
that fine-tuning does not forget them), the rest from the reviewed and propagated objects' boxes
(grown by ``margin``; propagated ones at ``propagated_weight``; with ``balance``, rejected objects carry as
much crop weight as accepted ones).

The weight of foreground voxels in the loss (``pos_weight: auto``, the default) is recomputed on the
fine-tuning labels, which the answers tilt towards the foreground: on Lucchi++ the labelled voxels went
from 5% to 54-61% foreground and the weight from 3 to 1, which offsets crops drawn around accepted
objects. ``base`` keeps the base training's weight; on Lucchi++ that pushed the rounds towards the
foreground (seed 0: more false objects), benchmarks/RESULTS.md.

Training continues the model's own run: its checkpoint (weights, optimizer state, step) is copied into
``RUN/round-NN/finetune/train/checkpoints/`` and training resumes from it with the same settings except
``steps`` more steps at ``lr``, a constant rate (the base's schedule would continue past its end: a
cosine base ends at ``lr * min_lr_ratio``, so rounds fine-tuned at a twentieth of ``lr`` until
2026-12-06; with ``lr: null`` the base's schedule and rate continue). Then the gate: the previous and the new model are scored (IoU) on
the held-out voxels; with ``keep_better`` the new model is the output only if it scores at least as
well, else the previous checkpoint is (``decision.json`` records both scores and the choice, and the
metrics table and report say so). A few held-out voxels cannot tell two close models apart (a strict
gate then reverts good rounds as often as bad ones): with ``gate_confidence`` (e.g. 0.9) a lower score
reverts the round only when it is lower in that share of paired bootstrap resamples of the held-out
tiles (one section by ``GATE_TILE`` x ``GATE_TILE`` voxels each), so the gate reverts the rounds that are
clearly worse and says "too close to tell" of the others. It forgives small drops only: one of more than
``gate_tolerance`` IoU (0.05) reverts the round whatever the resamples say. Where one tile holds all the
held-out foreground, a third of the resamples leave it out and tie, so the share cannot reach 0.9 however
much worse the new model is: a tolerant gate used a round that lost the only held-out mitochondrion
(Lucchi++, 0.45 -> 0.02, and its test IoU halved; benchmarks/RESULTS.md, tenth session). The opposite happens
too: on four 128 x 128 boxes (0.5% of Lucchi++) the tolerance reverted two box rounds whose models were better on
the test sections (0.325 -> 0.392 and 0.570; thirteenth session). One or two held-out objects cannot judge a round
either way: both mistakes were made on one and two. So the gate judges only where the held-out truth holds at least
``gate_min_objects`` objects (3; 26-connected components of its foreground, per box). With fewer, the round's model
is ``gate_hedge`` (0.5) x the new weights + the rest x the previous ones, the weight average below, which kept most of
the gain of the good rounds scored offline and about half the loss of the bad ones; ``decision.json`` says
``kept: average``, and the hedged checkpoint is ``train/hedged/step-XXXXXX``.

With ``average`` below 1, the round's model is not the fine-tuned one but ``average * fine-tuned + (1 - average)
* previous``, weight by weight (WiSE-FT, Wortsman et al. 2022; the fine-tuned checkpoint stays in
``train/checkpoints``, the averaged one is ``train/averaged/step-XXXXXX``, and the gate judges that). Fine-tuning
moves the whole decision boundary; halfway back keeps most of a good round's gain and about halves a bad
round's loss. Test IoU over the previous model, fine-tuned against averaged at 0.5 (benchmarks/RESULTS.md,
eleventh session): 24 Lucchi++ candidates at 0.5-2% labelled, -0.035 +- 0.056 against -0.010 +- 0.032; six
of the Lucchi++ demo's recipe, -0.015 +- 0.043 against +0.008 +- 0.016 (the average above both models in
four); six of the synthetic demo, -0.024 +- 0.054 against -0.009 +- 0.025. No demo sets it yet (a whole demo run with it is next).

With ``restart``, the round's model is not fine-tuned but trained afresh, from random weights, on the same labels and
crops for ``steps`` steps with the base training's optimiser and schedule (``lr`` is not used): what a lab does when it
retrains on everything labelled so far. On Lucchi++, training once on all the boxes beat fine-tuning rounds on the same
boxes at 0.5% and 1% of the voxels (benchmarks/RESULTS.md, fourteenth session: (f) against (g)); but as the last of two
rounds (``benchmarks/quality_loop.py`` method h) it lowered the test IoU in 5 of 6 runs: it trains on the fine-tuning's
labels and crop mix (answers, recomputed foreground weight), not on plain boxes (fifteenth session). A model trained afresh
shares nothing with the previous one, so its weights cannot be averaged with them: ``average`` must be 1, and where the
gate cannot judge (``gate_min_objects``) it uses the new model.

The defaults are fine-tuning settings, not training ones: a constant learning rate (1e-3), few steps
(40), and half of the crops replayed from the annotated boxes; the demos set 1e-4, a tenth of their
base's peak rate (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from engine.config import Config
from engine.geometry import Triple, dict_voxels
from engine.pipeline.stage import StageContext
from engine.pipeline.stages._base import DeclaredStage

log = logging.getLogger(__name__)



class FinetuneSection(Config):
    """``rounds.finetune:`` -- ``labels``/``boxes``/``heldout`` (default: the annotate stage's), the
    fine-tuning settings; ``checkpoint`` (the round's model), ``rois`` and ``answers`` (every round so far)
    are wired."""

    checkpoint: str | None = None
    rois: list[str] | None = None
    answers: list[str] | None = None
    labels: str = "annotate.labels"
    boxes: str = "annotate.boxes"
    heldout: str | None = Field(default="annotate.heldout", description="held-out labels (1/0, 255 unknown) that score old vs new model")
    steps: int = Field(default=40, ge=1)
    lr: float | None = Field(default=1e-3, gt=0, description="learning rate of the fine-tuning, constant (None: the base training's schedule continues)")
    replay: float = Field(default=0.5, ge=0.0, le=1.0, description="share of crops drawn from the annotated boxes")
    box_heldout: int = Field(default=0, ge=0, description=(
        "every this-many-th box painted in a round (the last of each run of that many) is held out of training and judges "
        "the rounds with the annotated held-out voxels (0: none)"))
    box_share: float = Field(default=0.5, ge=0.0, le=1.0, description=(
        "share of crops drawn from the boxes painted in the rounds (rounds.query.boxes), when there are any; "
        "replay and the answered objects share the rest"))
    margin: Triple = (0, 16, 16)
    ring: int = Field(default=2, ge=0, description="background band (pixels, in-plane) around an accepted object; 0: none")
    erode: int = Field(default=0, ge=0, description="an accepted object's outer band (pixels, in-plane) left unknown: a True says nothing of its edge")
    pos_weight: Literal["auto", "base"] = Field(default="auto", description=(
        "BCE weight of foreground voxels: recomputed on the fine-tuning labels, which the answers tilt towards the foreground "
        "(auto), or the base training's (base; lowered Lucchi++ in 1 of 3 seeds, benchmarks/RESULTS.md)"))
    balance: bool = Field(default=False, description="the answered objects' crops: as much weight on rejected objects as on accepted ones")
    propagate: bool = Field(default=True, description="answers reach the unreviewed members of the reviewed object's cluster")
    propagated_weight: float = Field(default=0.5, ge=0.0, le=1.0, description="loss weight of propagated labels (reviewed: 1)")
    anchor: float = Field(default=0.0, ge=0.0, le=1.0, description=(
        "loss weight of the previous model's own segmentation, taken as labels wherever no annotation or answer says anything "
        "(0: those voxels stay unknown): the answers change what they are about and the rest is held where it was"))
    average: float = Field(default=1.0, gt=0.0, le=1.0, description=(
        "share of the fine-tuned weights in the round's model: average * fine-tuned + (1 - average) * previous "
        "(weight averaging, WiSE-FT; 1: the fine-tuned model as is)"))
    restart: bool = Field(default=False, description=(
        "train the round's model afresh (random weights, the base training's optimiser and schedule, ``steps`` steps) on every "
        "label so far instead of fine-tuning the previous one; average must then be 1"))
    keep_better: bool = Field(default=True, description="keep the previous model when the new one scores lower on the held-out voxels")
    gate_confidence: float | None = Field(default=None, gt=0.5, lt=1.0, description=(
        "revert only a round that scores lower in at least this share of paired bootstrap resamples of the held-out tiles "
        "(None: every round that scores lower)"))
    gate_tolerance: float = Field(default=0.05, ge=0.0, le=1.0, description=(
        "with gate_confidence: a drop of more than this IoU on the held-out voxels reverts the round whatever the resamples say "
        "(where one tile holds all the held-out foreground the resamples cannot reach 0.9)"))
    gate_min_objects: int = Field(default=3, ge=0, description=(
        "the gate judges a round only where the held-out truth holds at least this many objects (26-connected components of "
        "its foreground, per box); with fewer it cannot, and the round's model is the gate_hedge average (0: always judge)"))
    gate_hedge: float = Field(default=0.5, gt=0.0, le=1.0, description=(
        "share of the new model's weights in the round's model where the gate cannot judge (gate_min_objects): "
        "gate_hedge * new + (1 - gate_hedge) * previous (1: the new model as is)"))

    @model_validator(mode="after")
    def _restart_is_not_averaged(self) -> FinetuneSection:
        if self.restart and self.average < 1.0:
            raise ValueError(f"restart trains the round's model afresh, so it cannot be averaged with the previous weights (average {self.average:g}); "
                             "set average: 1 or restart: false")
        return self


def step_of(checkpoint: Path) -> int:
    """The training step of a checkpoint directory ``.../step-XXXXXX``."""
    from engine.errors import StorageError

    try:
        return int(checkpoint.name.removeprefix("step-"))
    except ValueError:
        raise StorageError(f"{checkpoint} is not a training checkpoint (step-XXXXXX)", "give train.checkpoint or finetune[r].checkpoint") from None


def read_answers(path: str) -> dict[int, bool]:
    """``{roi_id: accepted}`` of a review stage's ``answers.json``."""
    return {int(k): bool(v) for k, v in json.loads(Path(path).read_text())["answers"].items()}


def write_labels(ctx: StageContext, cfg: Any) -> tuple[str, list[dict[str, Any]], dict[str, int], list[dict[str, list[int]]], list[dict[str, Any]]]:
    """The fine-tuning labels (module docstring) in ``RUN/round-NN/finetune/labels.zarr``; the boxes of the
    painted objects (grown by ``margin``, with their crop weight), the counts, the densely painted boxes trained
    on and those held out (with their label volume)."""
    from engine.active.finetune import UNKNOWN, RoundAnswers, paint_answers
    from engine.storage import create_volume, open_volume

    base = open_volume(ctx.input(cfg.labels))
    labels = base.read(base.box)
    protect = np.zeros(labels.shape, bool)
    if cfg.heldout:
        held = open_volume(ctx.input(cfg.heldout))
        protect = held.read(held.box) != UNKNOWN
        labels[protect] = UNKNOWN
    if ctx.test_from_z is not None:  # the test region: never trained on (propagated answers could reach it)
        protect[ctx.test_from_z:] = True
        labels[ctx.test_from_z:] = UNKNOWN
    from engine.active.finetune import copy_painted_boxes

    dense, held_boxes = copy_painted_boxes(labels, [ctx.input(a) for a in cfg.answers or []], protect, cfg.box_heldout)
    rounds = [RoundAnswers(ctx.input(rd), k, read_answers(ctx.input(a)))
              for k, (rd, a) in enumerate(zip(cfg.rois or [], cfg.answers or [], strict=True), start=1)]
    anchor = previous_segmentation(ctx.input(cfg.rois[-1]), labels.shape) if cfg.anchor > 0 and cfg.rois else None
    painted, counts = paint_answers(labels, rounds, ring=cfg.ring, erode=cfg.erode, propagate_answers=cfg.propagate, protect=protect, anchor=anchor)
    counts.update(boxes=len(dense) + len(held_boxes), boxes_heldout=len(held_boxes),
                  voxels_boxes=sum(dict_voxels(dense + held_boxes)))
    out = str(ctx.dir / "labels.zarr" / "labels")
    vol = create_volume(out, base.spatial_shape, "uint8", base.chunk_shape, voxel_size=base.voxel_size, fill_value=UNKNOWN, overwrite=True)
    vol.write(base.box, labels)
    from engine.geometry import Box

    boxes = []
    for b, reviewed, _ in painted:
        grown = Box(tuple(b[:3]), tuple(b[3:])).grow(cfg.margin).intersect(base.box)
        boxes.append({"start": list(grown.start), "stop": list(grown.stop), "weight": 1.0 if reviewed else cfg.propagated_weight})
    if cfg.balance:
        balance_weights(boxes, [ok for *_, ok in painted])
    return out, boxes, counts, dense, held_boxes


def previous_segmentation(rois_dir: str, shape: tuple[int, ...], slab: int = 16) -> np.ndarray:
    """Foreground (any object) of the segmentation a round's queries were drawn from (the previous model's,
    after the label stage's ``min_size``), read ``slab`` sections at a time into a boolean array."""
    from engine.active.rois import read_meta
    from engine.geometry import Box
    from engine.storage import open_volume

    seg = open_volume(read_meta(rois_dir)["params"]["labels"])
    out = np.zeros(shape, bool)
    for z in range(0, shape[0], slab):
        box = Box((z, 0, 0), (min(shape[0], z + slab), *shape[1:]))
        out[box.to_slices()] = seg.read(box) != 0
    return out


def balance_weights(boxes: list[dict[str, Any]], accepted: list[bool]) -> None:
    """Scale the crop weights of ``boxes`` (in place) so that accepted and rejected objects carry the same
    total weight, their sum unchanged; nothing changes when one side is absent.

    >>> b = [{"weight": 1.0}, {"weight": 1.0}, {"weight": 1.0}, {"weight": 0.5}]
    >>> balance_weights(b, [True, True, True, False]); [round(x["weight"], 3) for x in b]
    [0.583, 0.583, 0.583, 1.75]
    """
    w = np.array([float(b["weight"]) for b in boxes])
    ok = np.array(accepted, bool)
    sides = (float(w[ok].sum()), float(w[~ok].sum()))
    if min(sides) <= 0:
        return
    for b, a in zip(boxes, ok.tolist(), strict=True):
        b["weight"] = float(b["weight"]) * sum(sides) / 2 / sides[0 if a else 1]


def _by_size(boxes: list[dict[str, Any]], share: float) -> list[dict[str, Any]]:
    sizes = np.array(dict_voxels(boxes), float)
    return [{**b, "weight": float(share * s / sizes.sum())} for b, s in zip(boxes, sizes, strict=True)]


def crop_boxes(annotated: list[dict[str, list[int]]], objects: list[dict[str, Any]], replay: float,
               dense: list[dict[str, list[int]]] | None = None, box_share: float = 0.5) -> list[dict[str, Any]]:
    """Annotated boxes with ``replay`` of the crop weight (in proportion to their size), the objects' boxes
    with the rest (by their own weights); all annotated when there is no object. With ``dense`` boxes (painted
    in the rounds), they get ``box_share`` of the weight first (by size) and the others the rest.

    >>> b = crop_boxes([{"start": [0, 0, 0], "stop": [1, 4, 4]}], [{"start": [0, 0, 0], "stop": [1, 2, 2], "weight": 1.0}], 0.25)
    >>> [x["weight"] for x in b]
    [0.25, 0.75]
    >>> b = crop_boxes([{"start": [0, 0, 0], "stop": [1, 4, 4]}], [], 0.25, [{"start": [2, 0, 0], "stop": [3, 2, 2]}], 0.4)
    >>> [x["weight"] for x in b]
    [0.6, 0.4]
    """
    if not objects and not dense:
        return [dict(b) for b in annotated]
    rest = 1.0 - box_share if dense else 1.0
    if not objects:
        out = _by_size(annotated, rest)
    else:
        ow = np.array([float(o["weight"]) for o in objects])
        out = _by_size(annotated, rest * replay)
        out += [{**o, "weight": float(rest * (1 - replay) * w / ow.sum()) if ow.sum() > 0 else 0.0} for o, w in zip(objects, ow, strict=True)]
    return out + (_by_size(dense, box_share) if dense else [])


def base_pos_weight(base: Any, cfg: Any) -> float | str | None:
    """The positive weight the fine-tuning keeps with ``pos_weight: base``: the base training's, a number or
    ``"none"``, where ``auto`` is computed on the base's own labels as its training did; None with
    ``pos_weight: auto`` (recomputed on the fine-tuning labels)."""
    if cfg.pos_weight == "auto":
        return None
    if base.sampling.pos_weight != "auto":
        return base.sampling.pos_weight  # type: ignore[no-any-return]
    from engine.learn.sampler import CropSampler

    pw = CropSampler(base).pos_weight()
    log.info("fine-tuning keeps the base training's positive weight %s", pw)
    return "none" if pw is None else pw


class FinetuneStage(DeclaredStage, kind="finetune", config=FinetuneSection, order=150,
                    inputs=("checkpoint", "rois", "answers", "labels", "boxes", "heldout"), outputs=("checkpoint", "history", "decision")):
    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.learn.config import TrainConfig
        from engine.models import read_checkpoint_config
        from engine.pipeline.stages.annotate import read_box_list
        from engine.pipeline.stages.train import run_training

        ck = Path(ctx.input(cfg.checkpoint))
        _, extras = read_checkpoint_config(ck)
        base = TrainConfig.model_validate(extras["train"])
        labels_url, obj_boxes, counts, dense, held_boxes = write_labels(ctx, cfg)
        boxes = crop_boxes(read_box_list(ctx.input(cfg.boxes)), obj_boxes, cfg.replay, dense, cfg.box_share)
        boxes_path = ctx.dir / "boxes.json"
        boxes_path.write_text(json.dumps({"boxes": boxes}, indent=1))
        (ctx.dir / "review_labels.json").write_text(json.dumps(counts, indent=1))
        start = step_of(ck)
        out = ctx.dir / "train"
        if ctx.overwrite and out.exists():
            from engine.storage.safety import remove

            remove(out, "run-files", inputs=[str(ck)])
        tcfg = self._train_config(base, cfg, labels_url, boxes_path, out, cfg.steps if cfg.restart else start + cfg.steps, ctx.runtime.progress,
                                  base_pos_weight(base, cfg))
        copy = out / "checkpoints" / ck.name
        if not copy.exists() and not cfg.restart:
            from engine.learn import latest_checkpoint

            if latest_checkpoint(out) is None:  # continue the model's own run from its checkpoint
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(ck, copy.with_name(copy.name + ".tmp"), dirs_exist_ok=True)
                copy.with_name(copy.name + ".tmp").rename(copy)
        result = run_training(tcfg, resume=True)
        candidate = result["checkpoint"]
        if cfg.average < 1.0:  # the round's model: the fine-tuned weights averaged with the previous model's
            from engine.models.checkpoint import average_checkpoints

            candidate = average_checkpoints(ck, candidate, cfg.average, out / "averaged" / Path(candidate).name)
        decision = self._gate(ctx, cfg, str(ck), candidate, base, tcfg, held_boxes)
        decision.update(tuned=result["checkpoint"], average=cfg.average)
        path = ctx.dir / "decision.json"
        path.write_text(json.dumps({**decision, "labels": counts}, indent=1))
        return {"checkpoint": decision["checkpoint"], "history": result["history"], "decision": str(path)}

    @staticmethod
    def _train_config(base: Any, cfg: Any, labels_url: str, boxes_path: Path, out: Path, steps: int, progress: bool,
                      pos_weight: float | str | None = None) -> Any:
        from engine.active.finetune import ANCHOR_BG, ANCHOR_FG, FOREGROUND, PROPAGATED_BG, PROPAGATED_FG, UNKNOWN
        from engine.learn.config import TrainConfig

        dump = base.model_dump(mode="json")
        dump["data"] = {**dump["data"], "labels": labels_url, "boxes": str(boxes_path)}
        weights = dict.fromkeys((PROPAGATED_FG, PROPAGATED_BG), cfg.propagated_weight) | dict.fromkeys((ANCHOR_FG, ANCHOR_BG), cfg.anchor)
        dump["target"] = {**dump["target"], "label_ids": [FOREGROUND, PROPAGATED_FG, ANCHOR_FG], "ignore_ids": [UNKNOWN], "weights": weights}
        dump["sampling"] = {**dump["sampling"], "min_known": min(float(dump["sampling"]["min_known"]), 0.05)}
        if pos_weight is not None:
            dump["sampling"]["pos_weight"] = pos_weight
        if cfg.lr is not None and not cfg.restart:  # ``steps`` more at ``lr``: not the base's schedule, whose cosine ends at lr * min_lr_ratio
            dump["optimizer"] = {**dump["optimizer"], "lr": cfg.lr, "schedule": "constant"}
        dump.update(output=str(out), steps=steps, checkpoint_every=steps, progress=progress)
        if dump.get("validation"):
            dump["validation"] = {**dump["validation"], "every": max(1, min(int(dump["validation"]["every"]), cfg.steps))}
        return TrainConfig.model_validate(dump)

    @staticmethod
    def _gate(ctx: StageContext, cfg: Any, previous: str, candidate: str, base: Any, tcfg: Any,
              painted: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Score both models on the held-out voxels (the annotated ones and the ``painted`` boxes held out) and pick
        (module docstring)."""
        from engine.active.gate import counts_iou, heldout_counts, verdict

        doc: dict[str, Any] = {"round": ctx.round, "previous": previous, "candidate": candidate, "metric": "iou", "keep_better": cfg.keep_better}
        held_boxes: list[dict[str, Any]] = []
        heldout = ctx.input(cfg.heldout) if cfg.heldout else None
        if heldout:
            held_boxes = json.loads(Path(ctx.input(cfg.boxes)).read_text()).get("heldout", [])
        held_boxes += painted or []
        if heldout is None and held_boxes:
            heldout = held_boxes[0]["labels"]  # the painted boxes' own volume gives the gate its shape
        got = heldout_counts([previous, candidate], base.data.raw, heldout, held_boxes, tcfg) if heldout and held_boxes else None
        if got is None:
            doc.update(previous_score=None, candidate_score=None, heldout_voxels=0, kept="candidate", checkpoint=candidate,
                       reason="no held-out voxels to compare on (annotate.heldout is 0): the new model is used")
            log.warning("%s: %s", ctx.stage, doc["reason"])
            return doc
        old_c, new_c = got.counts
        doc["reason"] = verdict(cfg, old_c, new_c, got.voxels, doc, got.objects)
        doc.update(previous_score=counts_iou(old_c), candidate_score=counts_iou(new_c), heldout_voxels=got.voxels, heldout_tiles=len(old_c[0]),
                   heldout_objects=got.objects, checkpoint={"previous": previous, "candidate": candidate}.get(doc["kept"]))
        if doc["kept"] == "average":  # too few held-out objects to judge: halfway (gate_hedge) between the two models
            from engine.models.checkpoint import average_checkpoints

            doc["checkpoint"] = average_checkpoints(previous, candidate, cfg.gate_hedge, ctx.dir / "train" / "hedged" / Path(candidate).name)
        log.info("%s: %s", ctx.stage, doc["reason"])
        return doc
