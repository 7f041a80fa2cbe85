"""The fine-tuning rounds' gate (``rounds.finetune``, :mod:`engine.pipeline.stages.finetune`): the previous and the
new model scored on the held-out annotated voxels (IoU, per tile for paired bootstrap resamples), how many
held-out objects that judgement rests on, and the verdict."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

#: in-plane side (voxels) of the held-out tiles that the gate resamples; a tile is one section deep
GATE_TILE = 64
#: in-plane raw (voxels) read around each held-out box for its windows' context, not scored
GATE_MARGIN = 32


Counts = tuple[np.ndarray, np.ndarray]


class Heldout(NamedTuple):
    """What the gate scores on: per checkpoint, the intersection and union counts per tile; the number of
    held-out voxels; and the number of held-out objects (26-connected components of the held-out foreground,
    counted in each box on its own; None for targets of several channels, such as affinities)."""

    counts: list[Counts]
    voxels: int
    objects: int | None


def count_objects(truth: np.ndarray, known: np.ndarray) -> int | None:
    """The 26-connected components of the known foreground of a ``(K, Z, Y, X)`` truth with one channel;
    None with several (affinities: their foreground is not objects).

    >>> t = np.zeros((1, 1, 6, 6), bool); t[0, 0, :2, :2] = t[0, 0, 4:, 4:] = True
    >>> count_objects(t, np.ones_like(t)), count_objects(t, t & (np.arange(6) < 3)), count_objects(np.repeat(t, 3, 0), np.ones((3, 1, 6, 6), bool))
    (2, 1, None)
    """
    import cc3d

    if truth.shape[0] != 1:
        return None
    return int(cc3d.connected_components((truth[0] & known[0]).astype(np.uint8), connectivity=26, return_N=True)[1])


def gate_regions(boxes: list[dict[str, list[int]]], volume: Any, crop_z: int) -> list[tuple[Any, Any]]:
    """``(held-out box, the region read for it)`` per box: the box with half a training crop of sections
    and :data:`GATE_MARGIN` voxels in-plane around it, inside the volume.

    >>> from engine.geometry import Box
    >>> [(b.start, r.start, r.stop) for b, r in gate_regions([{"start": [5, 0, 100], "stop": [6, 64, 164]}], Box((0, 0, 0), (50, 300, 300)), 3)]
    [((5, 0, 100), (4, 0, 68), (7, 96, 196))]
    """
    from engine.geometry import Box

    margin = (crop_z // 2, GATE_MARGIN, GATE_MARGIN)
    out = []
    for b in boxes:
        box = Box(tuple(b["start"]), tuple(b["stop"])).intersect(volume)
        out.append((box, box.grow(margin).intersect(volume)))
    return out


def heldout_counts(checkpoints: list[str], raw: str, heldout: str, boxes: list[dict[str, Any]], tcfg: Any) -> Heldout | None:
    """Each checkpoint's prediction on the held-out labelled voxels: the intersection and union voxel
    counts per tile (:data:`GATE_TILE`, tiles without a held-out voxel left out), the number of
    held-out voxels and of held-out objects (:class:`Heldout`); None without any voxel. Each held-out box is predicted on its own, with a margin of raw
    around it (half a training crop deep, :data:`GATE_MARGIN` in-plane, inside the volume) that gives
    its windows their context and is not scored; held-out boxes spread over a large volume cost what
    they hold, not what their bounding box holds. A box with ``labels`` (a volume URL) is scored against
    those labels instead of ``heldout``'s."""
    from engine.learn.config import ValidationConfig
    from engine.learn.validate import Validator
    from engine.models import load_checkpoint
    from engine.storage import open_volume

    if not boxes:
        return None
    parts: list[tuple[Any, tuple[Any, ...]]] = []
    for b, (box, grown) in zip(boxes, gate_regions(boxes, open_volume(heldout).box, int(tcfg.crop[0])), strict=True):
        labels = b.get("labels", heldout)  # a painted box held out of a round brings its own label volume
        v = Validator(ValidationConfig.model_validate({"raw": raw, "labels": labels, "roi": {"start": list(grown.start), "stop": list(grown.stop)},
                                                       "every": 1}), tcfg)
        inner = (Ellipsis, *box.to_slices(relative_to=grown))
        parts.append((v, inner))  # the margin (and another box's labels inside it) is context, not scored
    known = int(sum((v.weight[inner] > 0).sum() for v, inner in parts))
    if known == 0:
        return None
    per_box = [count_objects(v.target[inner] > 0.5, v.weight[inner] > 0) for v, inner in parts]
    objects = None if None in per_box else sum(n for n in per_box if n is not None)
    out: list[Counts] = []
    for c in checkpoints:
        model = load_checkpoint(c)[0]
        counts = [tile_counts(*(m[inner] for m in v.masks(model))) for v, inner in parts]  # tiles from each box's corner
        out.append((np.concatenate([i for i, _ in counts]), np.concatenate([u for _, u in counts])))
    return Heldout(out, known, objects)


def tile_counts(pred: np.ndarray, truth: np.ndarray, known: np.ndarray, tile: int = GATE_TILE) -> Counts:
    """Intersection and union counts of the ``known`` voxels per tile of one section by ``tile`` x
    ``tile`` (every channel of a tile together); tiles without a known voxel are left out.

    >>> p = np.zeros((1, 2, 4, 4), bool); p[0, 0, :2, :2] = True
    >>> t = np.zeros_like(p); t[0, 0, :1, :2] = True; t[0, 1, 0, 0] = True
    >>> tile_counts(p, t, np.ones_like(p), tile=4)
    (array([2, 0]), array([4, 1]))
    """
    pos = np.nonzero(known)
    dims = (known.shape[-3], -(-known.shape[-2] // tile), -(-known.shape[-1] // tile))
    ids = np.ravel_multi_index((pos[-3], pos[-2] // tile, pos[-1] // tile), dims)
    _, inverse = np.unique(ids, return_inverse=True)
    p, t = pred[pos], truth[pos]
    return np.bincount(inverse, weights=p & t).astype(np.int64), np.bincount(inverse, weights=p | t).astype(np.int64)


def counts_iou(counts: Counts) -> float:
    """IoU of all tiles together (1.0 where nothing is foreground, as :func:`engine.metrics.jaccard`)."""
    union = int(counts[1].sum())
    return 1.0 if union == 0 else int(counts[0].sum()) / union


def share_worse(old: Counts, new: Counts, draws: int = 2000, seed: int = 0) -> float:
    """Share of paired bootstrap resamples of the tiles (the same tiles for both models) in which the
    new model's IoU is below the old one's; deterministic for a given ``seed``.

    >>> old = (np.full(50, 80), np.full(50, 100)); new = (np.full(50, 60), np.full(50, 100))
    >>> share_worse(old, new), share_worse(new, old)
    (1.0, 0.0)
    """
    rng = np.random.default_rng(seed)
    n, worse = len(old[0]), 0
    for start in range(0, draws, 250):
        idx = rng.integers(0, n, size=(min(250, draws - start), n))
        iou = [np.where(u[idx].sum(1) > 0, i[idx].sum(1) / np.maximum(u[idx].sum(1), 1), 1.0) for i, u in (old, new)]
        worse += int(np.count_nonzero(iou[1] < iou[0]))
    return worse / draws


def heldout_score(checkpoint: str, raw: str, heldout: str, boxes: list[dict[str, list[int]]], tcfg: Any) -> tuple[float | None, int]:
    """IoU of a checkpoint's prediction on the held-out labelled voxels (each box with its margin), and
    how many voxels that is; ``(None, 0)`` without held-out voxels."""
    got = heldout_counts([checkpoint], raw, heldout, boxes, tcfg)
    return (None, 0) if got is None else (counts_iou(got.counts[0]), got.voxels)


def verdict(cfg: Any, old_c: Counts, new_c: Counts, n: int, doc: dict[str, Any], objects: int | None = None) -> str:
    """Which model the gate keeps (``doc["kept"]``: ``"previous"``, ``"candidate"`` or ``"average"`` of the two, never with
    ``restart``; ``doc["share_worse"]``) and why, in words. ``cfg`` is a ``rounds.finetune`` section; ``objects`` the number of
    held-out objects (None: not counted)."""
    old, new = counts_iou(old_c), counts_iou(new_c)
    scores = f"the new model scores {new:.4f} {'<' if new < old else '>='} {old:.4f} on {n} held-out voxels"
    doc.update(kept="candidate", share_worse=None, gate_confidence=cfg.gate_confidence)
    if cfg.keep_better and objects is not None and objects < cfg.gate_min_objects:
        few = f"{scores}, but they hold {objects} object(s), fewer than gate_min_objects {cfg.gate_min_objects}: too few to judge"
        if cfg.restart:  # a model trained afresh shares nothing with the previous one's weights: no average of the two
            return f"{few}; the new model was trained afresh (restart), so it cannot be averaged: it is used"
        doc["kept"] = "average"
        return f"{few}, used {cfg.gate_hedge:g} x the new model + {1 - cfg.gate_hedge:g} x the previous one (gate_hedge)"
    if not old_c[0].any() and not new_c[0].any():  # IoU 0 on both sides: no foreground there, or neither finds it
        return (f"neither model overlaps any foreground in the {n} held-out voxels (they may hold none): "
                "IoU cannot tell them apart, used the new model")
    if new >= old:
        return f"{scores}: used it"
    if cfg.gate_confidence is not None:
        doc["share_worse"] = worse = share_worse(old_c, new_c)
        tested = f" (lower in {worse:.0%} of {len(old_c[0])} tiles' resamples, gate_confidence {cfg.gate_confidence})"
        if worse < cfg.gate_confidence and old - new <= cfg.gate_tolerance:
            return f"{scores}{tested}: too close to tell apart, used it"
        if worse < cfg.gate_confidence:
            tested += f", a drop of {old - new:.4f} > gate_tolerance {cfg.gate_tolerance}"
        scores += tested
    if not cfg.keep_better:
        return f"{scores}: used it anyway (keep_better: false)"
    doc["kept"] = "previous"
    return f"{scores}: kept the previous model"
