"""Blended sliding-window inference: global windows (MONAI's layout), importance maps (Gaussian,
bump), in-block batched blending with block-sized accumulators, test-time augmentation.

Names are imported on first use, so that the torch-free parts (:mod:`engine.infer.windows`,
:mod:`engine.infer.options`) load without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from engine.infer.options import (
    ACTIVATIONS,
    AMPS,
    BLEND_MODES,
    TTA_MODES,
    TTA_REDUCTIONS,
    Activation,
    Amp,
    BlendMode,
    TtaMode,
    TtaReduce,
)
from engine.infer.windows import WindowGrid, aligned_write_shape, axis_starts, scan_interval

if TYPE_CHECKING:
    from engine.infer.blend import Predictor, SlidingWindow, read_padded
    from engine.infer.importance import importance_map
    from engine.infer.predictor import TorchPredictor, pick_device
    from engine.infer.tta import Transform, augmented, transforms

_LAZY = {
    "Predictor": "blend",
    "SlidingWindow": "blend",
    "read_padded": "blend",
    "importance_map": "importance",
    "TorchPredictor": "predictor",
    "pick_device": "predictor",
    "Transform": "tta",
    "augmented": "tta",
    "transforms": "tta",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine.infer' has no attribute {name!r}")
    return getattr(importlib.import_module(f"engine.infer.{module}"), name)


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
