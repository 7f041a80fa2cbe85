"""Networks: the residual SE U-Net (2D, 2.5D, anisotropic 3D) with mask, polarity and affinity heads,
its patch encoder, and weights-only checkpoints.

>>> build_model(ModelConfig(filters=[4, 8, 8], head="polarity")).config.out_channels
3
"""

from engine.models.checkpoint import load_checkpoint, read_checkpoint_config, save_checkpoint
from engine.models.config import ModelConfig, head_channels
from engine.models.encoder import PatchEncoder
from engine.models.unet import UNet, build_model

__all__ = [
    "ModelConfig",
    "PatchEncoder",
    "UNet",
    "build_model",
    "head_channels",
    "load_checkpoint",
    "read_checkpoint_config",
    "save_checkpoint",
]
