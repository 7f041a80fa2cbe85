"""``annotate``: labels for the selected boxes, from an annotator (the oracle: ground truth).

The label volume (``RUN/annotate/labels.zarr/labels``, uint8) is ``1`` for foreground and ``0`` for
background inside the selected boxes and ``255`` (unknown) everywhere else; ``RUN/annotate/boxes.json``
lists the boxes (the training crops are drawn there). With ``source: oracle`` the ground-truth volume
``truth`` (any non-zero value is foreground) is copied inside the boxes; with ``source: file`` the
labels come from ``labels`` -- a volume that people labelled inside the same boxes (e.g. imported with
``connectile ingest``) -- and are read the same way. Either way the training sees one format.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np

from engine.config import Config
from engine.errors import ConfigError
from engine.pipeline.stage import Stage, StageContext

UNKNOWN = 255


class AnnotateSection(Config):
    """``annotate:`` -- ``boxes``: ``selection.boxes`` (or a JSON file of boxes); ``truth``: the volume
    the labels are read from (ground truth for the oracle, a person's labels for ``source: file``)."""

    boxes: str
    truth: str
    source: Literal["oracle", "file"] = "oracle"
    chunks: tuple[int, int, int] = (16, 128, 128)


def read_box_list(path: str) -> list[dict[str, list[int]]]:
    """The boxes of a selection.json (or a plain list of boxes) as ``{"start", "stop"}`` dicts."""
    from engine.learn.sampler import read_boxes

    return [{"start": list(b.start), "stop": list(b.stop)} for b in read_boxes(path)]


def write_box_labels(truth_url: str, boxes: list[dict[str, list[int]]], out: str, chunks: tuple[int, int, int]) -> dict[str, Any]:
    """Foreground (1) / background (0) of ``truth_url`` inside ``boxes``, unknown (255) elsewhere."""
    from engine.geometry import Box
    from engine.storage import create_volume, open_volume

    truth = open_volume(truth_url)
    if len(truth.shape) != 3:
        raise ConfigError(f"annotate.truth {truth.url} has shape {truth.shape}; labels must be a (z, y, x) volume", "give a label volume, e.g. synth.mito")
    shape = truth.spatial_shape
    ck = tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))
    vol = create_volume(out, shape, "uint8", ck, voxel_size=truth.voxel_size, fill_value=UNKNOWN, overwrite=True)
    fg = 0
    known = 0
    for b in boxes:
        box = Box(tuple(b["start"]), tuple(b["stop"]))
        if box.intersect(truth.box) != box:
            raise ConfigError(f"annotate: box {box} is outside the volume {shape}", "select on the same volume as the labels")
        lab = (truth.read(box) != 0).astype(np.uint8)
        vol.write(box, lab)
        fg += int(lab.sum())
        known += int(lab.size)
    return {"boxes": len(boxes), "known_voxels": known, "foreground_voxels": fg, "known_fraction": known / float(np.prod(shape))}


class AnnotateStage(Stage):
    name = "annotate"
    config = AnnotateSection
    inputs = ("boxes", "truth")
    outputs = ("labels", "boxes")
    order = 120

    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        boxes = read_box_list(ctx.input(cfg.boxes))
        out = str(ctx.dir / "labels.zarr" / "labels")
        info = write_box_labels(ctx.input(cfg.truth), boxes, out, cfg.chunks)
        path = ctx.dir / "boxes.json"
        path.write_text(json.dumps({"boxes": boxes}, indent=1))
        (ctx.dir / "annotate.json").write_text(json.dumps({**info, "source": cfg.source}, indent=1))
        return {"labels": out, "boxes": str(path)}
