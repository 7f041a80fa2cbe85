"""Training: config, crops from labelled volumes, EM augmentation, targets, losses, the loop with
checkpoints and resume, data-parallel training on Ray Train, semi-supervised training (spatial mixing,
Siamese/EMA consistency) and supervised local contrastive pretraining."""

from engine.learn.augment import augment
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
    "ContrastiveConfig",
    "CropSampler",
    "LossTerm",
    "SemiBatch",
    "SemiConfig",
    "StepContext",
    "SupervisedLoss",
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
