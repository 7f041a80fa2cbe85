"""The patch encoder (the U-Net's encoder half + global average pooling), for embeddings and pretraining."""

from engine.models.unet import PatchEncoder

__all__ = ["PatchEncoder"]
