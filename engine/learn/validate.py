"""Validation during training: predict a held-out labelled volume and score it (IoU, VOC, Dice from
:mod:`engine.metrics`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.geometry import Box
from engine.learn.config import TrainConfig, ValidationConfig
from engine.learn.sampler import to_unit
from engine.learn.targets import make_target
from engine.metrics import dice, jaccard, voc
from engine.storage import open_volume

log = logging.getLogger(__name__)


def _pad_to(x: torch.Tensor, divisor: Sequence[int]) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad the trailing spatial axes up to multiples of ``divisor`` (reflect where possible)."""
    shape = x.shape[-len(divisor) :]
    pads: list[int] = []
    for n, d in reversed(list(zip(shape, divisor, strict=True))):
        pads += [0, (-n) % d]
    if not any(pads):
        return x, tuple(shape)
    mode = "reflect" if all(p < n for p, n in zip(pads[1::2], reversed(shape), strict=True)) else "replicate"
    return F.pad(x, pads, mode=mode), tuple(shape)


def _starts(size: int, win: int, overlap: float) -> list[int]:
    """Window starts along one axis: stride ``win * (1 - overlap)``, the last window flush with the end."""
    stride = max(1, int(win * (1 - overlap)))
    starts = list(range(0, max(1, size - win + 1), stride))
    if starts[-1] + win < size:
        starts.append(size - win)
    return starts


def _sliding_window(model: nn.Module, x: torch.Tensor, win: tuple[int, ...], overlap: float) -> np.ndarray:
    """Sigmoid probabilities of a ``(Z, Y, X)`` tensor, windows blended with a Gaussian weight (sigma = win / 8)."""
    axes = [torch.exp(-0.5 * ((torch.arange(n, dtype=torch.float32) - (n - 1) / 2) / max(n / 8, 1e-3)) ** 2) for n in win]
    weight = (axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]).clamp_min(1e-4).to(x.device)
    acc: torch.Tensor | None = None
    norm = torch.zeros(x.shape, device=x.device)
    for z in _starts(x.shape[0], win[0], overlap):
        for y in _starts(x.shape[1], win[1], overlap):
            for xx in _starts(x.shape[2], win[2], overlap):
                sl = (slice(z, z + win[0]), slice(y, y + win[1]), slice(xx, xx + win[2]))
                prob = torch.sigmoid(model(x[sl][None, None]))[0]
                if acc is None:
                    acc = torch.zeros((prob.shape[0], *x.shape), device=x.device)
                acc[(slice(None), *sl)] += prob * weight
                norm[sl] += weight
    assert acc is not None
    return (acc / norm).cpu().numpy()


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
    """Probabilities ``(K, Z, Y, X)`` of a float32 volume in [0, 1].

    A 2D (or 2.5D) model runs on whole sections, a few at a time (its neighbours taken from the volume);
    a 3D model with sliding windows of ``window`` blended by a Gaussian weight (as MONAI's ``sliding_window_inference``
    with ``mode="gaussian"``, without the dependency).
    """
    module: Any = getattr(model, "module", model)
    cfg = module.config
    was_training = module.training
    module.eval()
    try:
        x = torch.from_numpy(np.ascontiguousarray(raw, np.float32))[None, None].to(device)
        if cfg.dims == 2:
            k = cfg.context_slices
            z = x.shape[2]
            outs = []
            for z0 in range(0, z, sections_per_pass):
                z1 = min(z, z0 + sections_per_pass)
                lo, hi = max(0, z0 - k), min(z, z1 + k)
                part, (h, w) = _pad_to(x[:, :, lo:hi], module.divisor[1:])
                y = module(part)[:, :, z0 - lo : z0 - lo + (z1 - z0), :h, :w]
                outs.append(torch.sigmoid(y).cpu())
            return torch.cat(outs, dim=2)[0].numpy()
        win = tuple(min(int(a), int(b)) for a, b in zip(window, x.shape[2:], strict=True))
        return _sliding_window(module, x[0, 0], win, overlap)
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

    def __call__(self, model: nn.Module, device: torch.device | str = "cpu") -> dict[str, float]:
        prob = predict_volume(model, self.raw, window=self.window, overlap=self.vcfg.overlap, device=device)
        pred = prob > self.vcfg.threshold
        gt = self.target > 0.5
        known = self.weight > 0
        return {"iou": jaccard(pred, gt, known), "voc": voc(pred, gt, known), "dice": dice(pred, gt, known)}
