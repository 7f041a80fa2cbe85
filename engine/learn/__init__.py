"""Training: config, crops from labelled volumes, EM augmentation, targets, losses, the loop with
checkpoints and resume, and data-parallel training on Ray Train."""

from engine.learn.augment import augment
from engine.learn.checkpoints import latest_checkpoint, list_checkpoints
from engine.learn.config import TrainConfig
from engine.learn.distributed import train
from engine.learn.losses import LossTerm, StepContext, SupervisedLoss, masked_bce, masked_dice
from engine.learn.sampler import CropSampler, read_boxes
from engine.learn.targets import affinity_target, make_target, mask_target, polarity_target
from engine.learn.trainer import Trainer
from engine.learn.validate import Validator, predict_volume

__all__ = [
    "CropSampler",
    "LossTerm",
    "StepContext",
    "SupervisedLoss",
    "TrainConfig",
    "Trainer",
    "Validator",
    "affinity_target",
    "augment",
    "latest_checkpoint",
    "list_checkpoints",
    "make_target",
    "mask_target",
    "masked_bce",
    "masked_dice",
    "polarity_target",
    "predict_volume",
    "read_boxes",
    "train",
]
