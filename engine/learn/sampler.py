"""Random training crops from labelled volumes (through :mod:`engine.storage`), optionally only inside
labelled boxes, with foreground rebalancing and rejection of empty crops.

Each batch is a pure function of ``(seed, step, rank)``: its generator is
``numpy.random.default_rng([seed, step, rank])``. So a resumed run draws exactly the crops an
uninterrupted one would, and data-parallel workers draw different crops.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import ConfigError, StorageError
from engine.geometry import Box
from engine.learn.augment import augment
from engine.learn.config import BoxSpec, TrainConfig
from engine.learn.targets import has_foreground, make_target
from engine.storage import Volume, open_volume
from engine.values import to_unit

log = logging.getLogger(__name__)


def read_boxes(path: str | Path) -> list[Box]:
    """The labelled boxes of a JSON file: a list of ``{"start": [z, y, x], "stop": [z, y, x]}`` (an
    optional ``"weight"`` per box: see :func:`read_box_weights`)."""
    return [b for b, _ in _read_weighted_boxes(path)]


def read_box_weights(path: str | Path) -> list[float] | None:
    """The boxes' ``"weight"`` (the share of crops drawn there, before normalising), or None when no box
    has one (crops are then drawn in proportion to each box's size)."""
    pairs = _read_weighted_boxes(path)
    if all(w is None for _, w in pairs):
        return None
    return [1.0 if w is None else w for _, w in pairs]


def _read_weighted_boxes(path: str | Path) -> list[tuple[Box, float | None]]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"labelled boxes file {str(p)!r} does not exist", "check data.boxes")
    try:
        items = json.loads(p.read_text())
    except ValueError as err:
        raise ConfigError(f"labelled boxes file {str(p)!r} is not valid JSON ({err})") from err
    if isinstance(items, dict) and "boxes" in items:
        items = items["boxes"]
    if not isinstance(items, list) or not items:
        raise ConfigError(f"labelled boxes file {str(p)!r} must hold a non-empty list of {{'start': [z, y, x], 'stop': [z, y, x]}}")
    boxes: list[tuple[Box, float | None]] = []
    for i, item in enumerate(items):
        weight = None
        if isinstance(item, dict) and "weight" in item:
            item = dict(item)
            weight = item.pop("weight")
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight >= 0:
                raise ConfigError(f"labelled box {i} in {str(p)!r} has weight {weight!r}", "give a number >= 0")
            weight = float(weight)
        try:
            spec = BoxSpec.model_validate(item)
        except ValueError as err:
            raise ConfigError(f"labelled box {i} in {str(p)!r} is invalid: {str(err).splitlines()[-1].strip()}", "give start and stop as [z, y, x]") from err
        boxes.append((Box(tuple(spec.start), tuple(spec.stop)), weight))
    return boxes


@dataclass
class Region:
    """A labelled box and the extent crops for it are read from (the box grown to the crop size)."""

    box: Box
    extent: Box
    raw: np.ndarray | None = None
    labels: np.ndarray | None = None

    @property
    def positions(self) -> int:
        return int(np.prod([max(1, n) for n in self.box.shape]))


def _extent(box: Box, crop: tuple[int, ...], whole: Box) -> Box:
    """``box`` grown (centred) to at least ``crop`` per axis, shifted to stay inside ``whole``."""
    start, stop = list(box.start), list(box.stop)
    for a in range(3):
        missing = crop[a] - (stop[a] - start[a])
        if missing > 0:
            start[a] -= missing // 2
            stop[a] = start[a] + crop[a]
            if start[a] < whole.start[a]:
                stop[a] += whole.start[a] - start[a]
                start[a] = whole.start[a]
            if stop[a] > whole.stop[a]:
                start[a] -= stop[a] - whole.stop[a]
                stop[a] = whole.stop[a]
    return Box(tuple(start), tuple(stop))


class CropSampler:
    """Draws augmented training batches ``{"raw", "target", "weight"}`` (torch float32, 5D) from a config."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.crop: tuple[int, int, int] = (int(cfg.crop[0]), int(cfg.crop[1]), int(cfg.crop[2]))
        self.raw: Volume = open_volume(cfg.data.raw)
        self.labels: Volume = open_volume(cfg.data.labels)
        if self.raw.spatial_shape != self.labels.spatial_shape or len(self.raw.shape) != 3 or len(self.labels.shape) != 3:
            raise StorageError(
                f"raw {cfg.data.raw} {self.raw.shape} and labels {cfg.data.labels} {self.labels.shape} must be single-channel volumes of one shape",
                "check data.raw and data.labels",
            )
        unset = (1.0, 1.0, 1.0)  # what a volume written without a voxel size records: it matches any
        if unset not in (tuple(self.raw.voxel_size), tuple(self.labels.voxel_size)) and not np.allclose(self.raw.voxel_size, self.labels.voxel_size):
            raise StorageError(
                f"raw {cfg.data.raw} has voxels of {tuple(self.raw.voxel_size)} nm but labels {cfg.data.labels} of {tuple(self.labels.voxel_size)} nm",
                "give data.raw and data.labels of the same voxel size (resample one, or fix the voxel size attribute)",
            )
        whole = self.raw.box
        if cfg.data.roi is not None:
            roi = Box(tuple(cfg.data.roi.start), tuple(cfg.data.roi.stop))
            if not whole.contains(roi):
                raise ConfigError(f"data.roi {roi} is outside the volume {whole}", "keep it inside the volume")
            whole = roi
        if any(c > n for c, n in zip(self.crop, whole.shape, strict=True)):
            raise ConfigError(f"crop {list(self.crop)} is larger than the data {list(whole.shape)}", "use a smaller crop")
        boxes = read_boxes(cfg.data.boxes) if cfg.data.boxes else [whole]
        self.regions: list[Region] = []
        for b in boxes:
            if not whole.contains(b):
                raise ConfigError(f"labelled box {b} is outside the data {whole}", "fix the boxes file or data.roi")
            self.regions.append(Region(b, _extent(b, self.crop, whole)))
        if cfg.data.cache:
            for r in self.regions:
                r.raw = self.raw.read(r.extent)
                r.labels = self.labels.read(r.extent)
            if not any(r.labels is not None and r.labels.any() for r in self.regions):
                where = f"the boxes of {cfg.data.boxes}" if cfg.data.boxes else "the data" if cfg.data.roi is None else "data.roi"
                raise ConfigError(f"data.labels {cfg.data.labels} is all zero in {where}: no foreground to learn", "give labels with some objects (check data.labels and data.boxes)")
        weights = np.array([r.positions for r in self.regions], np.float64)
        given = read_box_weights(cfg.data.boxes) if cfg.data.boxes else None
        if given is not None:  # the share of crops of each box, as given
            weights = np.asarray(given, np.float64)
            if not weights.sum() > 0:
                raise ConfigError(f"every box of {cfg.data.boxes} has weight 0", "give at least one box a positive weight")
        self.region_p = weights / weights.sum()
        self.offsets = cfg.model.affinity_offsets
        log.info("sampling crops %s from %d labelled region(s) of %s", list(self.crop), len(self.regions), cfg.data.labels)

    # -- one crop -------------------------------------------------------------------------------------
    def _read(self, r: Region, crop_box: Box) -> tuple[np.ndarray, np.ndarray]:
        if r.raw is not None and r.labels is not None:
            sl = crop_box.to_slices(relative_to=r.extent)
            return r.raw[sl], r.labels[sl]
        return self.raw.read(crop_box), self.labels.read(crop_box)

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One raw crop: ``(image float32 in [0, 1], labels, known)`` before augmentation."""
        r = self.regions[int(rng.choice(len(self.regions), p=self.region_p))]
        start = []
        for a in range(3):
            lo, hi = r.box.start[a], r.box.stop[a] - self.crop[a]
            if hi >= lo:  # the crop fits in the labelled box: stay inside it
                start.append(int(rng.integers(lo, hi + 1)))
            else:  # the box is thinner than the crop: the crop covers it, reaching into the extent
                lo2, hi2 = max(r.extent.start[a], r.box.stop[a] - self.crop[a]), min(r.box.start[a], r.extent.stop[a] - self.crop[a])
                start.append(int(rng.integers(lo2, hi2 + 1)))
        crop_box = Box(tuple(start), tuple(s + c for s, c in zip(start, self.crop, strict=True)))
        raw, labels = self._read(r, crop_box)
        known = np.zeros(self.crop, bool)
        known[r.box.intersect(crop_box).to_slices(relative_to=crop_box)] = True
        return to_unit(raw, self.cfg.data.raw_scale), labels, known

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One augmented crop and its target: ``(image (1, Z, Y, X), target (K, Z, Y, X), weight (K, Z, Y, X))``.

        Crops with too few labelled voxels are drawn again; crops without foreground are drawn again with
        probability ``sampling.reject_empty`` (up to ``sampling.max_tries`` draws in all).
        """
        s = self.cfg.sampling
        for _ in range(s.max_tries):
            image, labels, known = self.draw(rng)
            # reject before augmenting (cheap): augmentation barely changes how much is known or whether
            # there is foreground, and a rejected crop should not cost its augmentation
            if known.mean() < s.min_known:
                continue
            raw_target, raw_weight = make_target(labels, known, self.cfg.target, self.offsets)
            if not has_foreground(raw_target, raw_weight, self.cfg.target.kind) and rng.random() < s.reject_empty:
                continue
            break
        image, labels, known = augment(image, labels, known, self.cfg.augment, rng)
        target, weight = make_target(labels, known, self.cfg.target, self.offsets)
        k = self.cfg.model.context_slices
        if k:  # 2.5D: the end sections of a crop lack their neighbours; leave them out of the loss
            weight[:, :k] = 0
            weight[:, -k:] = 0
        return image[None], target, weight

    def batch(self, seed: int, step: int, rank: int = 0, size: int | None = None) -> dict[str, torch.Tensor]:
        """The batch of ``step`` for worker ``rank`` (see the module docstring)."""
        rng = np.random.default_rng([seed, step, rank])
        items = [self.sample(rng) for _ in range(size or self.cfg.batch_size)]
        return {name: torch.from_numpy(np.stack([it[i] for it in items])) for i, name in enumerate(("raw", "target", "weight"))}

    def foreground_fraction(self, seed: int = 12345, crops: int = 16) -> float:
        """The share of positive target voxels among known ones, over the cached regions or ``crops`` crops."""
        pos = tot = 0.0
        if all(r.labels is not None for r in self.regions):
            for r in self.regions:
                assert r.labels is not None
                lab = r.labels[r.box.to_slices(relative_to=r.extent)]
                known = np.ones(lab.shape, bool)
                target, weight = make_target(lab, known, self.cfg.target, self.offsets)
                pos += float((target * weight).sum())
                tot += float(weight.sum())
        else:
            rng = np.random.default_rng(seed)
            for _ in range(crops):
                _, labels, known = self.draw(rng)
                target, weight = make_target(labels, known, self.cfg.target, self.offsets)
                pos += float((target * weight).sum())
                tot += float(weight.sum())
        return pos / tot if tot else 0.0

    def pos_weight(self) -> float | None:
        """The BCE weight of positive voxels that ``sampling.pos_weight`` asks for."""
        pw: Any = self.cfg.sampling.pos_weight
        if pw == "none":
            return None
        if pw != "auto":
            return float(pw)
        f = self.foreground_fraction()
        if f <= 0:
            return 1.0
        return float(min(self.cfg.sampling.max_pos_weight, max(1.0, (1 - f) / f)))
