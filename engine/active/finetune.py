"""What the base model learns from a review: training targets from reviewed ROIs.

An accepted ROI says "this object is right": its voxels are foreground. A rejected ROI says "this is
not an object": its voxels become background. Only the object's own voxels are known; the rest of its
box is left unknown (``known`` is False there), because a neighbouring object may or may not be right.

>>> import numpy as np
>>> labels = np.zeros((1, 4, 6), np.uint64); labels[0, 1:3, 1:3] = 5; labels[0, 1:3, 4:6] = 9
>>> t = targets_from_answers(labels, {5: True, 9: False})
>>> t.target[0].astype(int).tolist(), int(t.known.sum())
([[0, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]], 8)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Targets:
    target: np.ndarray  # bool: foreground where known
    known: np.ndarray  # bool: where the review says something


def targets_from_answers(labels: np.ndarray, answers_by_object: Mapping[int, bool]) -> Targets:
    """Targets over a label array from answers keyed by object id (accepted: 1, rejected: 0)."""
    ids = np.fromiter(answers_by_object, np.uint64) if answers_by_object else np.zeros(0, np.uint64)
    acc = np.fromiter((bool(answers_by_object[int(i)]) for i in ids), bool, ids.size)
    lab = labels.astype(np.uint64, copy=False)
    known = np.isin(lab, ids)
    target = np.isin(lab, ids[acc]) if acc.any() else np.zeros(lab.shape, bool)
    return Targets(target, known)


def review_targets(run_dir: str | os.PathLike[str], answers: Mapping[int, bool]) -> Targets:
    """Targets over the whole label volume of a run from answers keyed by ``roi_id`` (small volumes;
    for large ones use :func:`targets_from_answers` per block)."""
    from engine.active.rois import read_index, read_meta
    from engine.storage import open_volume

    index = read_index(run_dir)
    by_object = {int(index["object_id"][r]): bool(ok) for r, ok in answers.items()}
    vol = open_volume(read_meta(run_dir)["params"]["labels"])
    return targets_from_answers(vol.read(vol.box), by_object)


#: values of the fine-tuning label volume (uint8): the annotated and reviewed labels, labels propagated
#: through the query's clusters (weighted below reviewed ones in the loss), the previous model's own
#: segmentation where nothing else is known (the anchor), unknown
FOREGROUND, BACKGROUND, PROPAGATED_FG, PROPAGATED_BG, ANCHOR_FG, ANCHOR_BG, UNKNOWN = 1, 0, 2, 3, 4, 5, 255


@dataclass
class RoundAnswers:
    """The answers of one round: its active-learning folder (ROIs, clusters) and ``{roi_id: accepted}``."""

    rois_dir: str
    round: int
    answers: dict[int, bool]


def propagated_answers(ra: RoundAnswers) -> dict[int, bool]:
    """The unreviewed ROIs of ``ra``'s clusters that hold a reviewed ROI, with their cluster's majority answer
    (:func:`engine.active.propagation.propagate`); empty without clusters."""
    from engine.active.propagation import propagate
    from engine.active.rois import round_dir

    path = round_dir(ra.rois_dir, ra.round) / "clusters.npy"
    if not ra.answers or not path.exists():
        return {}
    clusters = np.load(path)
    voted = {int(clusters[r]) for r in ra.answers if 0 <= r < clusters.size and clusters[r] >= 0}
    labels = propagate(clusters, ra.answers)
    return {i: bool(labels[i]) for i in range(clusters.size) if int(clusters[i]) in voted and i not in ra.answers}


def _objects(ra: RoundAnswers, answers: Mapping[int, bool]) -> list[tuple[int, tuple[int, ...], bool]]:
    """``(object id, bbox, accepted)`` of the answered ROIs of a round."""
    from engine.active.rois import read_index

    if not answers:
        return []
    index = read_index(ra.rois_dir)
    with np.load(os.path.join(ra.rois_dir, "rois", "objects.npz")) as z:
        ids, bbox = z["id"], z["bbox"]
    row_of = {int(i): k for k, i in enumerate(ids.tolist())}
    out = []
    for roi, ok in sorted(answers.items()):
        obj = int(index["object_id"][roi])
        out.append((obj, tuple(int(v) for v in bbox[row_of[obj]]), bool(ok)))
    return out


def paint_answers(
    labels: np.ndarray, rounds: list[RoundAnswers], *, ring: int = 2, erode: int = 0, propagate_answers: bool = True,
    protect: np.ndarray | None = None, anchor: np.ndarray | None = None,
) -> tuple[list[tuple[tuple[int, ...], bool, bool]], dict[str, int]]:
    """Paint every round's answers into ``labels`` (uint8, the annotated labels; changed in place).

    An accepted object's predicted voxels become foreground and a band of ``ring`` in-plane pixels
    around it background; with ``erode``, the object's own outer ``erode`` in-plane pixels stay
    unknown instead (an answer says the object is right, not where its edge is: a True under the IoU
    > 0.5 rule allows an edge a few pixels off). A rejected object's voxels become background. Answers propagated through the
    clusters paint :data:`PROPAGATED_FG` / :data:`PROPAGATED_BG`. Only unknown voxels are painted
    (annotated truth wins), reviewed answers before propagated ones, newer rounds before older ones (a
    person's latest answer on an object wins); ``protect`` (held-out voxels) stays unknown. With ``anchor``
    (a boolean foreground of ``labels``' shape: the previous model's segmentation), every voxel still unknown
    and outside the painted objects and their bands (an eroded edge stays unknown) becomes
    :data:`ANCHOR_FG` / :data:`ANCHOR_BG`: the model is held to its own prediction wherever no label and no
    answer says otherwise. Returns the painted objects' ``(bbox, reviewed, accepted)`` and counts.
    """
    from scipy.ndimage import binary_dilation, binary_erosion

    from engine.active.rois import read_meta
    from engine.geometry import Box
    from engine.storage import open_volume

    free = labels == UNKNOWN
    if protect is not None:
        free &= ~protect
    counts = {"accepted": 0, "rejected": 0, "propagated_accepted": 0, "propagated_rejected": 0, "voxels_fg": 0, "voxels_bg": 0, "voxels_propagated": 0,
              "voxels_anchor": 0}
    jobs: list[tuple[int, RoundAnswers, int, tuple[int, ...], bool]] = []  # (priority, round, object, bbox, ok)
    for ra in sorted(rounds, key=lambda x: -x.round):
        jobs += [(0, ra, obj, b, ok) for obj, b, ok in _objects(ra, ra.answers)]
        if propagate_answers:
            jobs += [(2, ra, obj, b, ok) for obj, b, ok in _objects(ra, propagated_answers(ra))]
    jobs.sort(key=lambda j: j[0])  # stable: newer rounds first within reviewed, then within propagated
    cross = np.zeros((1, 3, 3), bool)
    cross[0, 1, :] = cross[0, :, 1] = True
    painted: list[tuple[tuple[int, ...], bool, bool]] = []
    volumes: dict[str, Any] = {}
    for prio, ra, obj, b, ok in jobs:
        url = read_meta(ra.rois_dir)["params"]["labels"]
        pred = volumes.setdefault(url, open_volume(url))
        reviewed = prio == 0
        g = ring if ok and ring else 0
        start = [b[0], max(0, b[1] - g), max(0, b[2] - g)]
        stop = [b[3], min(labels.shape[1], b[4] + g), min(labels.shape[2], b[5] + g)]
        box = Box(tuple(start), tuple(stop))
        sl = box.to_slices()
        obj_mask = pred.read(box) == np.asarray(obj, pred.dtype)
        inside = binary_erosion(obj_mask, cross, iterations=erode) if ok and erode else obj_mask
        mine = inside & free[sl]
        if anchor is not None:  # the eroded edge is claimed too: it stays unknown, not anchored
            free[sl][obj_mask & ~inside] = False
        fg, bg = (FOREGROUND, BACKGROUND) if reviewed else (PROPAGATED_FG, PROPAGATED_BG)
        labels[sl][mine] = fg if ok else bg
        free[sl][mine] = False
        n_bg = 0
        if ok and g:
            band = binary_dilation(obj_mask, cross, iterations=g) & ~obj_mask & free[sl]
            labels[sl][band] = bg
            free[sl][band] = False
            n_bg = int(band.sum())
        key = ("accepted" if ok else "rejected") if reviewed else ("propagated_accepted" if ok else "propagated_rejected")
        counts[key] += 1
        if reviewed:
            counts["voxels_fg" if ok else "voxels_bg"] += int(mine.sum())
            counts["voxels_bg"] += n_bg
        else:
            counts["voxels_propagated"] += int(mine.sum()) + n_bg
        painted.append((tuple(box.start) + tuple(box.stop), reviewed, ok))
    if anchor is not None:
        labels[free & anchor] = ANCHOR_FG
        labels[free & ~anchor] = ANCHOR_BG
        counts["voxels_anchor"] = int(free.sum())
    return painted, counts


def held_out_box(i: int, every: int) -> bool:
    """Whether a round's ``i``-th painted box is held out with ``box_heldout: every`` (the last of each run of ``every``).

    >>> [held_out_box(i, 4) for i in range(8)], held_out_box(0, 0), held_out_box(0, 1)
    ([False, False, False, True, False, False, False, True], False, True)
    """
    return every > 0 and i % every == every - 1


def copy_painted_boxes(labels: np.ndarray, answers: list[str], protect: np.ndarray,
                       every: int = 0) -> tuple[list[dict[str, list[int]]], list[dict[str, Any]]]:
    """Copy the densely painted boxes of every round's answers (``answers.json`` files; ``boxes`` in them) into
    ``labels`` (in place), except where ``protect`` (held-out voxels, the test region); the boxes held out
    (:func:`held_out_box`) are not copied but marked in ``protect``. The boxes trained on, and the held-out ones
    with their label volume (``labels``)."""
    from engine.geometry import Box
    from engine.storage import open_volume

    out: list[dict[str, list[int]]] = []
    held: list[dict[str, Any]] = []
    for path in answers:
        doc = json.loads(Path(path).read_text()).get("boxes")
        if not doc:
            continue
        vol = open_volume(doc["labels"])
        for i, b in enumerate(doc["boxes"]):
            box = Box(tuple(b["start"]), tuple(b["stop"]))
            sl = box.to_slices()
            if held_out_box(i, every):
                protect[sl] = True
                labels[sl] = UNKNOWN
                held.append({**box.to_dict(), "labels": doc["labels"]})
                continue
            keep = ~protect[sl]
            labels[sl][keep] = vol.read(box)[keep]
            out.append(box.to_dict())
    return out, held
