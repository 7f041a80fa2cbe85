"""``query[r]`` (``rounds.query``): active query suggestion on the objects of a round's prediction.

The stage folder ``RUN/round-NN/query/`` is an active-learning run directory (the contract of
:mod:`engine.active`: ``rois/rois.zarr``, ``rois/index.parquet``, ``features/``,
``rounds/round-NN/queries.parquet``, numbered as the pipeline's round), so ``connectile review
RUN/round-NN/query`` opens its queries for a person as round NN. Steps: aligned ROI crops of every object (:func:`engine.ops.rois.extract_rois`), the two VAE
feature streams and the queries (:func:`engine.active.rounds.run_query`). A prediction with no object
gives no queries (``summary.json`` says so) and the round's review and fine-tuning have nothing to add.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from pydantic import Field

from engine.active.rounds import QueryConfig
from engine.config import Config
from engine.geometry import Triple, dict_voxels
from engine.params import RoisParams
from engine.pipeline.stage import StageContext
from engine.pipeline.stages._base import DeclaredStage

log = logging.getLogger(__name__)


class QuerySection(RoisParams, Config):
    """``rounds.query:`` -- ``query``: the settings of ``connectile query`` (a
    :class:`~engine.active.rounds.QueryConfig`: :class:`~engine.params.QueryParams` and the VAE settings,
    the same defaults: the paper's); the ROI crops' settings are those of ``connectile rois`` (:class:`~engine.params.RoisParams`,
    the same defaults: size, min_voxels, pre_value, block); ``labels``/``table``/``probability`` (the round's
    objects and prediction) and ``image`` (``rounds.predict.raw``) are wired; ``pre``: a volume marking
    pre-synaptic voxels (synapses), as ``connectile rois --pre``."""

    labels: str | None = None
    table: str | None = None
    image: str | None = None
    probability: str | None = None
    pre: str | None = None
    earlier: list[str] | None = Field(default=None, description="wired: the earlier rounds' answers; their objects are not asked again")
    earlier_rois: list[str] | None = Field(default=None, description="wired: the earlier rounds' query folders (their objects)")
    overlap: float = Field(default=0.5, gt=0.0, le=1.0, description="IoU above which an object counts as one reviewed in an earlier round")
    query: QueryConfig = Field(default_factory=QueryConfig)
    boxes: int = Field(default=0, ge=0, description="boxes to label densely where the prediction is least sure (0: objects only)")
    box: Triple = Field(default=(1, 128, 128), description="a box's size (z, y, x voxels)")
    box_stride: int | None = Field(default=None, ge=1, description="in-plane step between candidate boxes (default: half the box's smaller side)")
    box_gap: int = Field(default=2, ge=0, description="no two boxes within this many sections of each other at an overlapping place")
    box_choice: Literal["least_sure", "random"] = Field(default="least_sure", description=(
        "where the boxes go: where the prediction is least sure, or at random under the same rules (a control)"))
    annotated: str | None = Field(default=None, description=(
        "wired when the round asks for boxes (annotate.boxes): the annotated and held-out boxes, where no box is asked"))


def object_count(table: str) -> int:
    from engine.ops.objects import read_object_table

    return int(read_object_table(table)["id"].size)


def answered_before(run_dir: Any, earlier: list[tuple[str, str]], overlap: float) -> set[int]:
    """The ROIs of ``run_dir`` whose object matches (IoU > ``overlap``) an object reviewed in an earlier round
    (``earlier``: that round's query folder and ``answers.json``), so that a person is not asked about it
    again (a round that kept its model predicts the same objects)."""
    from pathlib import Path

    import numpy as np

    from engine.active.rois import read_index, read_meta
    from engine.geometry import Box
    from engine.storage import open_volume

    if not earlier:
        return set()
    index = read_index(run_dir)
    roi_of = {int(o): int(r) for r, o in zip(index["roi_id"].tolist(), index["object_id"].tolist(), strict=True)}
    size_of = {int(o): int(v) for o, v in zip(index["object_id"].tolist(), index["voxels"].tolist(), strict=True)}
    mine = open_volume(read_meta(run_dir)["params"]["labels"])
    out: set[int] = set()
    for folder, path in earlier:
        answers = json.loads(Path(path).read_text())["answers"]
        if not answers:
            continue
        old_index = read_index(folder)
        old = open_volume(read_meta(folder)["params"]["labels"])
        with np.load(Path(folder) / "rois" / "objects.npz") as z:
            bbox = {int(i): b for i, b in zip(z["id"].tolist(), z["bbox"], strict=True)}
        for roi in answers:
            obj = int(old_index["object_id"][int(roi)])
            b = bbox[obj]
            box = Box(tuple(int(v) for v in b[:3]), tuple(int(v) for v in b[3:]))
            a = old.read(box) == np.asarray(obj, old.dtype)
            ids, counts = np.unique(mine.read(box)[a], return_counts=True)
            for i, c in zip(ids.tolist(), counts.tolist(), strict=True):
                if i in roi_of and c / (int(a.sum()) + size_of[i] - c) > overlap:
                    out.add(roi_of[i])
    return out


def in_test_region(run_dir: Any, z_from: int) -> set[int]:
    """The ROIs of ``run_dir`` whose object reaches sections ``z >= z_from`` (the run's test region)."""
    from pathlib import Path

    import numpy as np

    from engine.active.rois import read_index

    index = read_index(run_dir)
    with np.load(Path(run_dir) / "rois" / "objects.npz") as z:
        z1 = {int(i): int(b[3]) for i, b in zip(z["id"].tolist(), z["bbox"], strict=True)}
    return {int(r) for r, o in zip(index["roi_id"].tolist(), index["object_id"].tolist(), strict=True) if z1[int(o)] > z_from}


def ask_boxes(ctx: StageContext, cfg: Any) -> dict[str, Any]:
    """The round's dense boxes (``cfg.boxes`` of them, :func:`engine.active.uncertain.least_sure`), written to
    ``RUN/round-NN/query/boxes.json`` with the raw volume they are painted on; a summary."""
    from pathlib import Path

    from engine.active.uncertain import least_sure
    from engine.storage import open_volume
    from engine.storage.safety import write_json_atomic

    taken: list[dict[str, list[int]]] = []
    if cfg.annotated:
        doc = json.loads(Path(ctx.input(cfg.annotated)).read_text())
        for key in ("boxes", "heldout"):
            taken += [{"start": list(b["start"]), "stop": list(b["stop"])} for b in doc.get(key, [])]
    for folder in ctx.inputs(cfg.earlier_rois or []):
        earlier = Path(folder) / "boxes.json"
        if earlier.exists():
            taken += json.loads(earlier.read_text())["boxes"]
    if cfg.probability is None:
        from engine.errors import ConfigError

        raise ConfigError(f"{ctx.stage}: boxes need the round's probability", "leave rounds.query.probability unset (it is wired)")
    prob = open_volume(ctx.input(cfg.probability))
    stride = cfg.box_stride or max(1, min(cfg.box[1:]) // 2)
    train_seed = int(getattr(getattr(ctx.pipeline, "train", None), "seed", 0) or 0)
    seed = [ctx.round or 1, train_seed] if cfg.box_choice == "random" else None
    picked = least_sure(prob, taken, cfg.boxes, cfg.box, stride, cfg.box_gap, z_stop=ctx.test_from_z, random_seed=seed)
    if len(picked) < cfg.boxes:
        log.warning("%s: %d of the %d boxes asked for fit in the volume beside the labelled ones", ctx.stage, len(picked), cfg.boxes)
    write_json_atomic(ctx.dir / "boxes.json", {"round": ctx.round or 1, "image": ctx.input(cfg.image) if cfg.image else None, "box": list(cfg.box),
                                               "choice": cfg.box_choice, "boxes": picked})
    return {"boxes": len(picked), "box_voxels": sum(dict_voxels(picked))}


class QueryStage(DeclaredStage, kind="query", config=QuerySection, order=130,
                 inputs=("labels", "table", "image", "probability", "pre", "earlier", "earlier_rois", "annotated"), outputs=("rois", "summary")):
    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.active.rounds import run_query
        from engine.ops.rois import extract_rois

        run_dir = ctx.dir
        if ctx.overwrite:  # a new prediction: ROIs, features and rounds of the old one go; a person's answers are moved aside first
            from engine.active.answers import set_aside_answers

            kept = set_aside_answers(run_dir / "rounds")
            if kept is not None:
                log.warning("%s: starting over; a person's answers were moved to %s", ctx.stage, kept)
            from engine.storage.safety import remove

            for name in ("rois", "features", "rounds", "boxes.json"):
                remove(run_dir / name, "run-files", inputs=[ctx.input(v) for v in (cfg.labels, cfg.table, cfg.image)])
        table = ctx.input(cfg.table)
        n = object_count(table)
        rnd = ctx.round or 1
        summary: dict[str, Any] = {"round": rnd, "objects": n, "rois": 0, "queries": 0}
        if n > 0:
            rt = ctx.runtime
            res = extract_rois(
                run_dir, ctx.input(cfg.labels), ctx.input(cfg.image), table, prob=ctx.input(cfg.probability) if cfg.probability else None,
                pre=ctx.input(cfg.pre) if cfg.pre else None, **cfg.settings(), max_retries=rt.max_retries, overwrite=ctx.overwrite, **rt.kwargs(),
            )
            summary["rois"] = res.rois
            if res.rois > 0:
                q = cfg.query
                budget_cap = max(1, res.rois)
                if q.n_clusters > budget_cap:  # fewer objects than clusters: one cluster per object at most
                    q = q.model_copy(update={"n_clusters": budget_cap, "n_sub": 1})
                earlier = list(zip(ctx.inputs(cfg.earlier_rois or []), ctx.inputs(cfg.earlier or []), strict=True))
                exclude = answered_before(run_dir, earlier, cfg.overlap)
                summary["answered_before"] = len(exclude)
                if ctx.test_from_z is not None:  # objects reaching into the test region are never asked
                    test = in_test_region(run_dir, ctx.test_from_z)
                    summary["in_test_region"] = len(test)
                    exclude |= test
                if len(exclude) >= res.rois:  # every object was answered in an earlier round: nothing to ask this round
                    log.info("%s: every object of the prediction was reviewed in an earlier round; no queries", ctx.stage)
                else:
                    result = run_query(run_dir, q, round_number=rnd, progress=rt.progress, exclude=exclude)
                    summary.update(queries=result.queries, method=result.method, candidates=result.candidates, queries_file=result.path)
        if cfg.boxes > 0:
            summary.update(ask_boxes(ctx, cfg))
        path = run_dir / "summary.json"
        path.write_text(json.dumps(summary, indent=1))
        return {"rois": str(run_dir), "summary": str(path)}

