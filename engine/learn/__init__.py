"""Training: config, crops from labelled volumes, EM augmentation, targets, losses, the training core
(:mod:`engine.learn.core`: one loop with checkpoints, resume, progress, TensorBoard, time budgets and
data-parallel training that every method plugs into), the segmentation trainer, data-parallel training on
Ray Train, semi-supervised training (spatial mixing, Siamese/EMA consistency), supervised local contrastive
pretraining, SimCLR and SimSiam.

Names are imported on first use, so that the torch-free parts (:mod:`engine.learn.budget`, used by the
configs of :mod:`engine.active`) load without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from engine.learn.augment import augment  # eager: the function must shadow its submodule's name

if TYPE_CHECKING:
    from engine.learn.budget import BudgetSpent, TimeBudget
    from engine.learn.checkpoints import latest_checkpoint, list_checkpoints
    from engine.learn.config import ContrastiveConfig, SemiConfig, TrainConfig
    from engine.learn.contrastive import local_contrastive_loss, pretrain
    from engine.learn.distributed import train
    from engine.learn.losses import LossTerm, StepContext, SupervisedLoss, masked_bce, masked_dice
    from engine.learn.sampler import CropSampler, read_boxes
    from engine.learn.semi import SemiBatch, build_trainer
    from engine.learn.targets import affinity_target, make_target, mask_target, polarity_target
    from engine.learn.trainer import Trainer
    from engine.learn.validate import Validator, predict_volume

__all__ = [
    "BudgetSpent",
    "ContrastiveConfig",
    "CropSampler",
    "LossTerm",
    "SemiBatch",
    "SemiConfig",
    "StepContext",
    "SupervisedLoss",
    "TimeBudget",
    "TrainConfig",
    "Trainer",
    "Validator",
    "affinity_target",
    "augment",
    "build_trainer",
    "latest_checkpoint",
    "list_checkpoints",
    "local_contrastive_loss",
    "make_target",
    "mask_target",
    "masked_bce",
    "masked_dice",
    "polarity_target",
    "predict_volume",
    "pretrain",
    "read_boxes",
    "train",
]

_MODULES: dict[str, tuple[str, ...]] = {  # submodule: the names it gives the package
    "budget": ("BudgetSpent", "TimeBudget"),
    "checkpoints": ("latest_checkpoint", "list_checkpoints"),
    "config": ("ContrastiveConfig", "SemiConfig", "TrainConfig"),
    "contrastive": ("local_contrastive_loss", "pretrain"),
    "distributed": ("train",),
    "losses": ("LossTerm", "StepContext", "SupervisedLoss", "masked_bce", "masked_dice"),
    "sampler": ("CropSampler", "read_boxes"),
    "semi": ("SemiBatch", "build_trainer"),
    "targets": ("affinity_target", "make_target", "mask_target", "polarity_target"),
    "trainer": ("Trainer",),
    "validate": ("Validator", "predict_volume"),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    """A public name, imported from its submodule on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'engine.learn' has no attribute {name!r}")
    return getattr(importlib.import_module(f"engine.learn.{_LAZY[name]}"), name)
