"""Loss terms of semi-supervised training by spatial mixing in a Siamese network (Zhang, Zhai et al. 2024).

The batch entries come from :class:`engine.learn.semi.SemiBatch`; every term is a
:class:`~engine.learn.losses.LossTerm`, so the training step stays the one of :class:`~engine.learn.Trainer`.

- :class:`LabelledMixLoss` (``labelled_mix``): BCE (+ optional soft Dice) of the prediction on two labelled
  crops mixed by a box mask against their targets mixed by the same mask.
- :class:`UnlabelledMixLoss` (``unlabelled``): MSE between the prediction on the perturbed mix of two
  unlabelled crops and the teacher's (stop-gradient) prediction on the clean mix.
- :class:`InterMixLoss` (``inter``): a labelled crop mixed with an unlabelled one; BCE to the labelled
  targets where the mask is 1, MSE to the teacher's prediction on the clean unlabelled crop elsewhere.

The teacher (:class:`Teacher`) is the network itself under ``torch.no_grad`` (``siamese``: shared weights)
or an exponential moving average of it (``ema``). Either way no gradient flows into the target branch.

Reduction: every term is a mean over samples of per-sample (weighted) voxel means, multiplied by the
sample's on/off draw. So the loss of a batch is the mean of the losses of equal-sized shards of it, and
data-parallel training (DDP averages gradients) gives the gradient of the whole batch.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn.functional as F
from torch import nn

from engine.learn.losses import StepContext

log = logging.getLogger(__name__)


def per_sample_mean(values: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, ...)`` -> ``(B,)``: the mean of each sample's values (weighted by ``weight``; 0 where it sums to 0)."""
    flat = values.flatten(1)
    if weight is None:
        return flat.mean(dim=1)
    w = weight.expand_as(values).flatten(1)
    return (flat * w).sum(dim=1) / w.sum(dim=1).clamp_min(1e-12) * (w.sum(dim=1) > 0)


def per_sample_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, pos_weight: float | None = None) -> torch.Tensor:
    """BCE with logits, averaged per sample over voxels of non-zero ``weight`` -> ``(B,)``."""
    pw = None if pos_weight is None else torch.tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=pw)
    return per_sample_mean(per, weight)


def per_sample_dice(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per sample and channel over known voxels, averaged over channels -> ``(B,)``."""
    p = torch.sigmoid(logits) * weight
    t = target * weight
    dims = list(range(2, logits.dim()))
    inter = (p * t).sum(dims)
    denom = p.sum(dims) + t.sum(dims)
    return (1 - (2 * inter + eps) / (denom + eps)).mean(dim=1)


def ramp(step: int, warmup_steps: int, rampup_steps: int) -> float:
    """The factor of the semi-supervised terms at ``step``: 0 during warm-up, then a linear ramp to 1.

    >>> [ramp(s, 2, 2) for s in range(5)]
    [0.0, 0.0, 0.5, 1.0, 1.0]
    """
    if step < warmup_steps:
        return 0.0
    if rampup_steps <= 0:
        return 1.0
    return min(1.0, (step - warmup_steps + 1) / rampup_steps)


class Teacher:
    """The target branch: ``siamese`` (the student itself under no-grad) or ``ema`` (a moving average).

    The EMA copy starts as a copy of the student the first time it is used (at the end of the warm-up)
    and is updated once per step, before that step's predictions, with the weights the optimizer left:
    ``ema = decay * ema + (1 - decay) * student``. Buffers (normalisation statistics) are copied. The EMA
    state goes into the training checkpoints (``teacher.pt``, see :class:`engine.learn.semi.SemiTrainer`),
    so a resumed run continues it exactly.
    """

    def __init__(self, kind: str = "siamese", decay: float = 0.999) -> None:
        if kind not in ("siamese", "ema"):
            raise ValueError(f"teacher must be 'siamese' or 'ema', got {kind!r}")
        self.kind, self.decay = kind, decay
        self.ema: nn.Module | None = None
        self._step = -1

    def state_dict(self) -> dict[str, object]:
        """The EMA weights and the step they were brought to (empty for a Siamese or unstarted teacher)."""
        if self.ema is None:
            return {}
        return {"step": self._step, "ema": {k: v.detach().cpu() for k, v in self.ema.state_dict().items()}}

    def load_state_dict(self, state: dict[str, object], model: nn.Module) -> None:
        """Restore what :meth:`state_dict` gave (``model``: the student, the EMA copy's template)."""
        if not state or self.kind != "ema":
            return
        ema = copy.deepcopy(self.bare(model))
        weights = state["ema"]
        assert isinstance(weights, dict)
        ema.load_state_dict(weights)
        for p in ema.parameters():
            p.requires_grad_(False)
        self.ema = ema
        self._step = int(state["step"])  # type: ignore[call-overload]

    @staticmethod
    def bare(model: nn.Module) -> nn.Module:
        return getattr(model, "module", model)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Bring the EMA copy to ``step`` (once per step; nothing for a Siamese teacher)."""
        if self.kind != "ema" or step == self._step:
            return
        student = self.bare(model)
        if self.ema is None:
            self.ema = copy.deepcopy(student)
            for p in self.ema.parameters():
                p.requires_grad_(False)
        else:
            for pe, ps in zip(self.ema.parameters(), student.parameters(), strict=True):
                pe.mul_(self.decay).add_(ps.detach(), alpha=1 - self.decay)
            for be, bs in zip(self.ema.buffers(), student.buffers(), strict=True):
                be.copy_(bs)
        self._step = step

    @torch.no_grad()
    def predict(self, ctx: StepContext, x: torch.Tensor) -> torch.Tensor:
        """Sigmoid probabilities of ``x``, with no graph (a stop-gradient target)."""
        self.update(ctx.model, ctx.step)
        net = ctx.model if self.kind == "siamese" or self.ema is None else self.ema
        if self.ema is not None:
            self.ema.train(self.bare(ctx.model).training)
        return torch.sigmoid(net(x)).detach()


class SampleSupervisedLoss:
    """The supervised loss of a semi-supervised run: ``bce`` x BCE + ``dice`` x soft Dice on ``ctx.logits``,
    each a per-sample mean over known voxels, averaged over samples (so shards of a batch average to it;
    :class:`~engine.learn.losses.SupervisedLoss` pools known voxels and Dice over the batch instead)."""

    name = "supervised"

    def __init__(self, bce: float = 1.0, dice: float = 1.0, pos_weight: float | None = None, weight: float = 1.0) -> None:
        self.bce, self.dice, self.pos_weight, self.weight = bce, dice, pos_weight, weight

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        target, w = ctx.batch["target"], ctx.batch["weight"]
        per = ctx.logits.new_zeros(ctx.logits.shape[0])
        if self.bce:
            per = per + self.bce * per_sample_bce(ctx.logits, target, w, self.pos_weight)
        if self.dice:
            per = per + self.dice * per_sample_dice(ctx.logits, target, w)
        return per.mean()


class _SemiTerm:
    """Shared by the three terms: name, weight, warm-up/ramp schedule, teacher."""

    name = "semi"

    def __init__(self, weight: float, teacher: Teacher, warmup_steps: int = 0, rampup_steps: int = 0) -> None:
        self.weight, self.teacher = weight, teacher
        self.warmup_steps, self.rampup_steps = warmup_steps, rampup_steps

    def _off(self, ctx: StepContext, key: str) -> float:
        """The schedule factor, or 0 where the batch lacks this term's entries."""
        return ramp(ctx.step, self.warmup_steps, self.rampup_steps) if key in ctx.batch else 0.0


class LabelledMixLoss(_SemiTerm):
    """Supervised loss on two labelled crops mixed alike in image and target (entries ``lmix_*``)."""

    name = "labelled_mix"

    def __init__(self, weight: float, teacher: Teacher, warmup_steps: int = 0, rampup_steps: int = 0, bce: float = 1.0, dice: float = 0.0, pos_weight: float | None = None) -> None:
        super().__init__(weight, teacher, warmup_steps, rampup_steps)
        self.bce, self.dice, self.pos_weight = bce, dice, pos_weight

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        f = self._off(ctx, "lmix_raw")
        if f == 0.0:
            return ctx.logits.new_zeros(())
        b = ctx.batch
        logits = ctx.model(b["lmix_raw"])
        per = logits.new_zeros(logits.shape[0])
        if self.bce:
            per = per + self.bce * per_sample_bce(logits, b["lmix_target"], b["lmix_weight"], self.pos_weight)
        if self.dice:
            per = per + self.dice * per_sample_dice(logits, b["lmix_target"], b["lmix_weight"])
        return f * (per * b["lmix_on"]).mean()


class UnlabelledMixLoss(_SemiTerm):
    """MSE between the prediction on the perturbed unlabelled mix and the teacher's on the clean mix
    (entries ``umix_*``; with ``umix_a``/``umix_b`` present, the target is the teacher's predictions on the
    two clean crops mixed by ``umix_mask``)."""

    name = "unlabelled"

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        f = self._off(ctx, "umix_pert")
        if f == 0.0:
            return ctx.logits.new_zeros(())
        b = ctx.batch
        if "umix_a" in b:
            m = b["umix_mask"]
            target = m * self.teacher.predict(ctx, b["umix_a"]) + (1 - m) * self.teacher.predict(ctx, b["umix_b"])
        else:
            target = self.teacher.predict(ctx, b["umix_clean"])
        pred = torch.sigmoid(ctx.model(b["umix_pert"]))
        per = per_sample_mean((pred - target) ** 2)
        return f * (per * b["umix_on"]).mean()


class InterMixLoss(_SemiTerm):
    """Labelled crop mixed with an unlabelled one (entries ``imix_*``): BCE to the labelled targets inside
    the mask, MSE to the teacher's prediction on the clean unlabelled crop outside it."""

    name = "inter"

    def __init__(self, weight: float, teacher: Teacher, warmup_steps: int = 0, rampup_steps: int = 0, pos_weight: float | None = None) -> None:
        super().__init__(weight, teacher, warmup_steps, rampup_steps)
        self.pos_weight = pos_weight

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        f = self._off(ctx, "imix_raw")
        if f == 0.0:
            return ctx.logits.new_zeros(())
        b = ctx.batch
        m = b["imix_mask"]
        target_u = self.teacher.predict(ctx, b["imix_u"])
        logits = ctx.model(b["imix_raw"])
        sup = per_sample_bce(logits, b["imix_target"], b["imix_weight"] * m, self.pos_weight)
        cons = per_sample_mean((torch.sigmoid(logits) - target_u) ** 2, (1 - m).expand_as(logits))
        return f * ((sup + cons) * b["imix_on"]).mean()
