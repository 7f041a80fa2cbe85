"""Blended sliding-window inference: global windows (MONAI's layout), importance maps (Gaussian,
bump), in-block batched blending with block-sized accumulators, test-time augmentation."""

from engine.infer.blend import Predictor, SlidingWindow, read_padded
from engine.infer.importance import BLEND_MODES, BlendMode, importance_map
from engine.infer.predictor import ACTIVATIONS, AMPS, Activation, Amp, TorchPredictor, pick_device
from engine.infer.tta import TTA_MODES, TTA_REDUCTIONS, Transform, TtaMode, TtaReduce, augmented, transforms
from engine.infer.windows import WindowGrid, aligned_write_shape, axis_starts, scan_interval

__all__ = [
    "ACTIVATIONS",
    "AMPS",
    "BLEND_MODES",
    "TTA_MODES",
    "TTA_REDUCTIONS",
    "Activation",
    "Amp",
    "BlendMode",
    "Predictor",
    "SlidingWindow",
    "TorchPredictor",
    "Transform",
    "TtaMode",
    "TtaReduce",
    "WindowGrid",
    "aligned_write_shape",
    "augmented",
    "axis_starts",
    "importance_map",
    "pick_device",
    "read_padded",
    "scan_interval",
    "transforms",
]
