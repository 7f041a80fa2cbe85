"""Loss terms. The training step sums ``term.weight * term(ctx)`` over a list of :class:`LossTerm`, so
semi-supervised terms (spatial mixing, Siamese consistency, contrastive) are added as further terms
without touching the loop.

>>> import torch
>>> logits = torch.tensor([[[[[4.0, -4.0]]]]]); target = torch.tensor([[[[[1.0, 0.0]]]]])
>>> ctx = StepContext(model=torch.nn.Identity(), batch={"target": target, "weight": torch.ones_like(target)}, logits=logits, step=0)
>>> round(float(SupervisedLoss()(ctx)), 4)
0.0301
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class StepContext:
    """What a loss term sees in one step: the model, the batch (``raw``, ``target``, ``weight`` and
    whatever else the sampler adds, e.g. unlabelled crops), the logits of ``batch["raw"]`` and the step."""

    model: nn.Module
    batch: dict[str, torch.Tensor]
    logits: torch.Tensor
    step: int
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class LossTerm(Protocol):
    """A named, weighted loss: ``weight * term(ctx)`` is added to the step's loss."""

    name: str
    weight: float

    def __call__(self, ctx: StepContext) -> torch.Tensor: ...


def masked_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
    """BCE with logits averaged over voxels of non-zero ``weight`` (0 if there are none)."""
    pw = None if pos_weight is None else torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=pw)
    return (per * weight).sum() / weight.sum().clamp_min(1.0)


def masked_dice(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss ``1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps)`` per channel over known voxels,
    averaged over channels (the batch is pooled, so crops without foreground do not blow it up)."""
    p = torch.sigmoid(logits) * weight
    t = target * weight
    dims = [0, *range(2, logits.dim())]
    inter = (p * t).sum(dims)
    denom = p.sum(dims) + t.sum(dims)
    return (1 - (2 * inter + eps) / (denom + eps)).mean()


class SupervisedLoss:
    """``bce`` x masked BCE + ``dice`` x masked soft Dice on ``ctx.logits`` against the batch's target."""

    name = "supervised"

    def __init__(self, bce: float = 1.0, dice: float = 1.0, pos_weight: float | None = None, weight: float = 1.0) -> None:
        self.bce, self.dice, self.pos_weight, self.weight = bce, dice, pos_weight, weight

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        target, w = ctx.batch["target"], ctx.batch["weight"]
        loss = ctx.logits.new_zeros(())
        if self.bce:
            loss = loss + self.bce * masked_bce(ctx.logits, target, w, self.pos_weight)
        if self.dice:
            loss = loss + self.dice * masked_dice(ctx.logits, target, w)
        return loss
