"""``annotate``: labels for the selected boxes, from an annotator (the oracle: ground truth).

The label volume (``RUN/annotate/labels.zarr/labels``, uint8) is ``1`` for foreground and ``0`` for
background inside the selected boxes and ``255`` (unknown) everywhere else; ``RUN/annotate/boxes.json``
lists the boxes (the training crops are drawn there). With ``source: oracle`` the ground-truth volume
``truth`` (any non-zero value is foreground) is copied inside the boxes; with ``source: file`` the
labels come from ``truth`` -- a volume that people labelled inside the same boxes (e.g. imported with
``connectile ingest``) -- and are read the same way. Either way the training sees one format. ``RUN/annotate/truth.zarr/target`` is the same
foreground over the whole volume: the validation target of the learning curves (never trained on).

``heldout`` (a share, e.g. 0.25) keeps that share of each box out of training: the far end of the box
along its longer in-plane axis. Its labels go to ``RUN/annotate/heldout.zarr/labels`` (same values; 255
everywhere else) and the training labels leave it unknown; the fine-tuning rounds choose between the
previous and the new model on it (:mod:`engine.pipeline.stages.finetune`). ``boxes.json`` lists the
training part of each box under ``boxes`` and the held-out parts under ``heldout``.

``heldout_boxes`` (a count) holds whole boxes out instead, spread over the box list (the selection's pick
order): the centre pick of each of that many equal runs of picks. A quarter of a box lies beside the
three quarters the model trains on, in the same section, so it scores a round much as the training boxes
would; a whole pick lies where no training box is, as the rest of the volume does (benchmarks/RESULTS.md:
the held-out quarters of Lucchi++ rose with rounds that lowered the test sections). Both may be given:
the share is then cut from the boxes that are not held out whole.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
from pydantic import Field

from engine.config import Config
from engine.errors import ConfigError
from engine.pipeline.stage import StageContext
from engine.pipeline.stages._base import DeclaredStage

UNKNOWN = 255


class AnnotateSection(Config):
    """``annotate:`` -- ``boxes``: ``selection.boxes`` (or a JSON file of boxes); ``truth``: the volume
    the labels are read from (ground truth for the oracle, a person's labels for ``source: file``)."""

    boxes: str
    truth: str
    source: Literal["oracle", "file"] = "oracle"
    target: Literal["mask", "interior"] = "mask"
    boundary: int = Field(default=1, ge=1, description="interior: in-plane width of the background on each side of a boundary")
    chunks: tuple[int, int, int] = (16, 128, 128)
    heldout: float = Field(default=0.0, ge=0.0, lt=1.0, description="share of each box held out of training, to choose between models")
    heldout_boxes: int = Field(default=0, ge=0, description="whole boxes held out of training, to choose between models (spread over the pick order)")


def whole_heldout(n: int, count: int) -> list[int]:
    """Which of ``n`` boxes (in pick order) are held out whole: the centre of each of ``count`` equal runs.

    >>> whole_heldout(8, 2), whole_heldout(10, 3), whole_heldout(5, 0)
    ([2, 6], [1, 5, 8], [])
    """
    if count >= n and count > 0:
        raise ConfigError(f"annotate.heldout_boxes is {count}, but there are only {n} boxes: nothing would be left to train on",
                          "select more boxes (selection.params.budget) or hold out fewer")
    return [((2 * j + 1) * n) // (2 * count) for j in range(count)]


def split_box(b: dict[str, list[int]], share: float) -> tuple[dict[str, list[int]], dict[str, list[int]] | None]:
    """``(training part, held-out part)`` of a box: the last ``share`` of its longer in-plane axis held out
    (None when ``share`` is 0 or the box is too thin to split).

    >>> split_box({"start": [0, 0, 0], "stop": [4, 100, 40]}, 0.25)
    ({'start': [0, 0, 0], 'stop': [4, 75, 40]}, {'start': [0, 75, 0], 'stop': [4, 100, 40]})
    """
    start, stop = list(b["start"]), list(b["stop"])
    axis = 1 if stop[1] - start[1] >= stop[2] - start[2] else 2
    n = stop[axis] - start[axis]
    cut = round(n * share)
    if share <= 0 or cut < 1 or cut >= n:
        return {"start": start, "stop": stop}, None
    mid = stop[axis] - cut
    train_stop, held_start = list(stop), list(start)
    train_stop[axis] = held_start[axis] = mid
    return {"start": start, "stop": train_stop}, {"start": held_start, "stop": stop}


def read_box_list(path: str) -> list[dict[str, list[int]]]:
    """The boxes of a selection.json (or a plain list of boxes) as ``{"start", "stop"}`` dicts."""
    from engine.learn.sampler import read_boxes

    return [{"start": list(b.start), "stop": list(b.stop)} for b in read_boxes(path)]


Target = Literal["mask", "interior"]


def interior(ids: np.ndarray, width: int = 1) -> np.ndarray:
    """Voxels of non-zero ids farther than ``width - 1`` in-plane steps (4-connected) from a voxel
    with another id: with ``width`` 1, the voxels whose 4 in-plane neighbours carry their id.

    >>> a = np.zeros((1, 3, 6), np.uint32); a[0, :, :3] = 1; a[0, :, 3:] = 2
    >>> interior(a)[0, 0].astype(int).tolist(), interior(a, 2)[0, 0].astype(int).tolist()
    ([1, 1, 0, 0, 1, 1], [1, 0, 0, 0, 0, 1])
    """
    out = ids != 0
    out[:, 1:] &= ids[:, 1:] == ids[:, :-1]
    out[:, :-1] &= ids[:, :-1] == ids[:, 1:]
    out[:, :, 1:] &= ids[:, :, 1:] == ids[:, :, :-1]
    out[:, :, :-1] &= ids[:, :, :-1] == ids[:, :, 1:]
    if width > 1:
        from scipy.ndimage import binary_erosion

        cross = np.zeros((1, 3, 3), bool)
        cross[0, 1, :] = cross[0, :, 1] = True
        out = binary_erosion(out, cross, iterations=width - 1, border_value=1)
    return np.asarray(out)


def read_foreground(truth: Any, box: Any, target: Target, width: int = 1) -> np.ndarray:
    """The foreground (bool) of the ground-truth volume ``truth`` in ``box`` (in-plane context read for ``interior``)."""
    if target == "mask":
        return np.asarray(truth.read(box) != 0)
    grown = box.grow((0, width, width)).intersect(truth.box)
    return interior(truth.read(grown), width)[box.to_slices(relative_to=grown)]


def write_box_labels(
    truth_url: str, boxes: list[dict[str, list[int]]], out: str, chunks: tuple[int, int, int], target: Target = "mask", width: int = 1
) -> dict[str, Any]:
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
        lab = read_foreground(truth, box, target, width).astype(np.uint8)
        vol.write(box, lab)
        fg += int(lab.sum())
        known += int(lab.size)
    return {"boxes": len(boxes), "known_voxels": known, "foreground_voxels": fg, "known_fraction": known / float(np.prod(shape))}


def write_target(truth_url: str, out: str, chunks: tuple[int, int, int], target: Target, width: int = 1) -> None:
    """The ground truth's foreground (1/0) over the whole volume, slab by slab: the validation target
    of the learning curves (evaluation only; training never reads it)."""
    from engine.geometry import Box
    from engine.storage import create_volume, open_volume

    truth = open_volume(truth_url)
    shape = truth.spatial_shape
    ck = tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))
    vol = create_volume(out, shape, "uint8", ck, voxel_size=truth.voxel_size, overwrite=True)
    for z in range(0, shape[0], ck[0]):
        box = Box((z, 0, 0), (min(z + ck[0], shape[0]), *shape[1:]))
        vol.write(box, read_foreground(truth, box, target, width).astype(np.uint8))


class AnnotateStage(DeclaredStage, name="annotate", config=AnnotateSection, order=120,
                    inputs=("boxes", "truth"), outputs=("labels", "boxes", "validation", "heldout")):
    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        listed = read_box_list(ctx.input(cfg.boxes))
        whole = set(whole_heldout(len(listed), cfg.heldout_boxes))
        parts = [split_box(b, cfg.heldout) for i, b in enumerate(listed) if i not in whole]
        boxes = [t for t, _ in parts]
        held = [listed[i] for i in sorted(whole)] + [h for _, h in parts if h is not None]
        out = str(ctx.dir / "labels.zarr" / "labels")
        info = write_box_labels(ctx.input(cfg.truth), boxes, out, cfg.chunks, cfg.target, cfg.boundary)
        heldout = str(ctx.dir / "heldout.zarr" / "labels")
        hinfo = write_box_labels(ctx.input(cfg.truth), held, heldout, cfg.chunks, cfg.target, cfg.boundary)
        path = ctx.dir / "boxes.json"
        path.write_text(json.dumps({"boxes": boxes, "heldout": held}, indent=1))
        (ctx.dir / "annotate.json").write_text(json.dumps({**info, "heldout_voxels": hinfo["known_voxels"], "heldout_boxes": len(held),
                                                           "source": cfg.source, "target": cfg.target}, indent=1))
        validation = str(ctx.dir / "truth.zarr" / "target")
        write_target(ctx.input(cfg.truth), validation, cfg.chunks, cfg.target, cfg.boundary)
        return {"labels": out, "boxes": str(path), "validation": validation, "heldout": heldout}
