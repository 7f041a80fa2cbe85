"""Validation during training: predict a held-out labelled volume and score it (IoU, VOC, Dice from
:mod:`engine.metrics`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.geometry import Box
from engine.infer.blend import model_window
from engine.learn.config import TrainConfig, ValidationConfig
from engine.learn.targets import make_target
from engine.metrics import dice, jaccard, voc
from engine.storage import open_volume
from engine.values import to_unit

log = logging.getLogger(__name__)

#: The least blending weight of validation's windows (``connectile predict``: MONAI's 1e-3).
VALIDATION_WEIGHT_FLOOR = 1e-4


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    raw: np.ndarray,
    *,
    window: Sequence[int],
    overlap: float = 0.25,
    device: torch.device | str = "cpu",
    sections_per_pass: int = 4,
) -> np.ndarray:
    """Probabilities ``(K, Z, Y, X)`` of a float32 volume in [0, 1], by :mod:`engine.infer` (the sliding
    window of ``connectile predict``, in this process).

    A 2D (or 2.5D) model runs on whole sections (one window per section, ``sections_per_pass`` per
    forward pass; a 2.5D model's neighbours taken from the volume, the edge section repeated beyond
    it); a 3D model on windows of ``window`` (capped at the volume) with ``overlap``, blended by
    MONAI's Gaussian weights (floored at :data:`VALIDATION_WEIGHT_FLOOR`).
    """
    module: Any = getattr(model, "module", model)
    cfg = module.config
    shape = tuple(int(s) for s in raw.shape)
    was_training = module.training
    try:
        if cfg.dims == 2:
            div = module.divisor
            roi = (1, *(-(-n // d) * d for n, d in zip(shape[1:], div[1:], strict=True)))
            sw = model_window(module, roi, 0.0, device=device, batch_size=sections_per_pass)
        else:
            roi = tuple(min(int(a), b) for a, b in zip(window, shape, strict=True))
            # the least Gaussian weight validation has always used (MONAI's 1e-3 changes its scores slightly)
            sw = model_window(module, roi, overlap, device=device, batch_size=1, weight_floor=VALIDATION_WEIGHT_FLOOR)
        return sw(np.ascontiguousarray(raw, np.float32))
    finally:
        module.train(was_training)


class Validator:
    """Holds a validation volume in memory and scores a model on it."""

    def __init__(self, vcfg: ValidationConfig, cfg: TrainConfig) -> None:
        self.vcfg = vcfg
        self.cfg = cfg
        raw = open_volume(vcfg.raw)
        labels = open_volume(vcfg.labels)
        box = Box(tuple(vcfg.roi.start), tuple(vcfg.roi.stop)) if vcfg.roi is not None else raw.box
        self.raw = to_unit(raw.read(box), cfg.data.raw_scale)
        lab = labels.read(box)
        self.target, self.weight = make_target(lab, np.ones(lab.shape, bool), cfg.target, cfg.model.affinity_offsets)
        self.window = vcfg.window or cfg.crop

    def masks(self, model: nn.Module, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(prediction, truth, known)`` boolean arrays ``(K, Z, Y, X)`` of ``model`` on the volume."""
        prob = predict_volume(model, self.raw, window=self.window, overlap=self.vcfg.overlap, device=device)
        return prob > self.vcfg.threshold, self.target > 0.5, self.weight > 0

    def __call__(self, model: nn.Module, device: torch.device | str = "cpu") -> dict[str, float]:
        pred, gt, known = self.masks(model, device)
        return {"iou": jaccard(pred, gt, known), "voc": voc(pred, gt, known), "dice": dice(pred, gt, known)}
