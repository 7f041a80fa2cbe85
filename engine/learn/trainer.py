"""Segmentation training: :class:`Trainer` owns the model, optimizer, sampler and loss terms and plugs into
the training core (:mod:`engine.learn.core`); :meth:`Trainer.step` does one optimisation step on one batch;
:meth:`Trainer.fit` runs the core's loop (logging, validation, checkpoints, resume, time budget).

Semi-supervised training adds loss terms (see :mod:`engine.learn.losses`) and, where it needs more data
per step, a ``batch_fn`` that adds entries (unlabelled crops...) to the batch; the loop stays as it is.

Exactness: the batch of a step and the torch seed of a step are functions of ``(seed, step, rank)``, and
the learning rate a function of the step, so a run interrupted and resumed from a checkpoint ends with
the same weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.learn import core
from engine.learn.budget import Clock, start
from engine.learn.checkpoints import load_weights, starting_checkpoint
from engine.learn.config import TrainConfig
from engine.learn.history import plot_history
from engine.learn.losses import LossTerm, StepContext, SupervisedLoss
from engine.learn.sampler import CropSampler
from engine.models import build_model
from engine.models.unet import fold_sections, unfold_sections

log = logging.getLogger(__name__)

BatchFn = Callable[[int, int], dict[str, torch.Tensor]]


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one step on one worker."""
    return int(np.random.SeedSequence([seed, step, rank, 0x7017]).generate_state(1)[0])


def make_optimizer(cfg: TrainConfig, params: Any) -> torch.optim.Optimizer:
    o = cfg.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of ``step`` (constant, or cosine from ``lr`` to ``lr * min_lr_ratio``)."""
    o = cfg.optimizer
    if o.schedule == "constant":
        return o.lr
    lo = o.lr * o.min_lr_ratio
    return lo + (o.lr - lo) * 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps))


def pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


class Trainer(core.Method):
    """One worker's training state. Under an initialised process group (Ray Train sets one up, also for
    one worker) the model is wrapped in DistributedDataParallel; ``self.model`` is always the bare model."""

    name = "train"

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
        terms: list[LossTerm] | None = None,
        sampler: CropSampler | None = None,
        batch_fn: BatchFn | None = None,
    ) -> None:
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.device = device or pick_device(cfg)
        torch.set_num_threads(cfg.num_threads)
        torch.manual_seed(cfg.seed)  # the initial weights: the same on every worker
        self.model: nn.Module = build_model(cfg.model).to(self.device)
        if cfg.init is not None:  # a model trained elsewhere starts the run (a resumed run then loads its own newest checkpoint)
            load_weights(starting_checkpoint(cfg.init), self.model, self.device, cfg.model, init=True)
        self.net: nn.Module = core.wrap_ddp(self.model, self.device)
        self.optimizer = make_optimizer(cfg, self.model.parameters())
        self.sampler = sampler if sampler is not None else CropSampler(cfg)
        self.batch_fn: BatchFn = batch_fn or (lambda step, rank: self.sampler.batch(cfg.seed, step, rank))
        if terms is None:
            terms = [SupervisedLoss(cfg.loss.bce, cfg.loss.dice, self.sampler.pos_weight())]
        self.terms = terms
        self.step_count = 0
        self.elapsed = 0.0
        self.output = Path(cfg.output)
        self.is_main = rank == 0
        self._validator: Any = None

    # -- the plug-in of the training core -------------------------------------------------------------
    def batch(self, step: int) -> dict[str, torch.Tensor]:
        return self.batch_fn(step, self.rank)

    def before_step(self, step: int) -> None:
        torch.manual_seed(step_seed(self.cfg.seed, step, self.rank))
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg, step)
        self.net.train()

    def loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        logits, batch = self.forward(batch)
        ctx = StepContext(model=self.net, batch=batch, logits=logits, step=step)
        parts = {t.name: t(ctx) for t in self.terms}
        total = sum((t.weight * parts[t.name] for t in self.terms), logits.new_zeros(()))
        return total, parts

    def learning_rate(self, step: int) -> float:
        return learning_rate(self.cfg, step)

    def evaluate(self, step: int) -> dict[str, float]:
        v = self.cfg.validation
        if v is None or not (step % v.every == 0 or step == self.cfg.steps):
            return {}
        return self.validate()

    def write(self, folder: Path) -> None:
        from engine.models import save_checkpoint

        extra = {"step": self.step_count, "train": self.cfg.model_dump(mode="json"), "elapsed": self.elapsed}
        save_checkpoint(folder, self.model, self.cfg.model, extra)

    def read(self, folder: Path) -> None:
        load_weights(folder, self.model, self.device, self.cfg.model)

    def on_checkpoint(self, step: int, records: list[dict[str, Any]]) -> None:
        vcfg = self.cfg.validation
        plot_history(records, self.output / "loss.png", metric=vcfg.metric if vcfg else "iou", title=self.output.name)

    # -- one step -------------------------------------------------------------------------------------
    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One optimisation step on ``batch``; returns the loss and each term (floats)."""
        out = core.run_step(self, batch, self.step_count)
        self.step_count += 1
        return out

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The logits of ``batch["raw"]`` (and the batch they line up with).

        A 2.5D model is run only on the sections that have all their neighbours inside the crop (the
        others carry no loss): ``target`` and ``weight`` are cut to those sections too.
        """
        raw = batch["raw"]
        k = self.cfg.model.context_slices
        if self.cfg.model.dims != 2 or k == 0 or raw.dim() != 5:
            return self.net(raw), batch
        b, z = raw.shape[0], raw.shape[2]
        keep = torch.tensor([i * z + j for i in range(b) for j in range(k, z - k)], device=raw.device)
        logits = unfold_sections(self.net(fold_sections(raw, k)[keep]), b)
        cut: dict[str, torch.Tensor] = {name: batch[name][:, :, k : z - k] for name in ("target", "weight") if name in batch}
        return logits, {**batch, **cut}

    # -- resume and checkpoints -------------------------------------------------------------------------
    def resume(self) -> bool:
        """Load the newest checkpoint of the output directory, if any; True if one was loaded."""
        return core.resume(self, self.output)

    def save(self) -> Path:
        return core.save(self, self.output, self.cfg.keep_checkpoints)

    def validate(self) -> dict[str, float]:
        """Score the model on the validation volume (empty without one)."""
        if self.cfg.validation is None:
            return {}
        if self._validator is None:
            from engine.learn.validate import Validator

            self._validator = Validator(self.cfg.validation, self.cfg)
        return dict(self._validator(self.model, self.device))

    # -- the loop -----------------------------------------------------------------------------------------
    def fit(self, resume: bool = True, clock: Clock | None = None) -> dict[str, Any]:
        """Train to ``cfg.steps``, resuming from the newest checkpoint if asked; returns a summary
        (``stopped: "budget"`` where the time budget, ``cfg.budget`` or ``clock``, ended it early)."""
        cfg = self.cfg
        if self.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "train.yaml").write_text(cfg.to_yaml())
        opts = core.LoopOptions(steps=cfg.steps, output=self.output, resume=resume, checkpoint_every=cfg.checkpoint_every, keep=cfg.keep_checkpoints,
                                log_every=cfg.log_every, progress=cfg.progress, clock=clock or start(cfg.budget), is_main=self.is_main)
        result = core.fit(self, opts)
        return {"step": result.step, "elapsed": result.elapsed, "last": result.last, "output": str(self.output), "stopped": result.stopped}
