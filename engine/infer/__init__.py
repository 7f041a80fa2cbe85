"""Blended sliding-window inference: global windows (MONAI's layout), importance maps (Gaussian,
bump), in-block batched blending with block-sized accumulators, test-time augmentation, what a model
needs around its windows (a 2.5D model's context sections, the checkpoint's window), and the merger
(input scaling and padding, the partial sums blocks exchange, normalisation, output conversion).

Names are imported on first use, so that the torch-free parts (:mod:`engine.infer.windows`,
:mod:`engine.infer.options`) load without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from engine.infer.merge import add_pieces, normalise, pack_pieces, pad_source, piece_key, scale_input, to_output
from engine.infer.model_input import DEFAULT_WINDOW, checkpoint_window, halo, replicate_axes, section_context
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
    from engine.infer.blend import Predictor, SlidingWindow, model_window, read_padded
    from engine.infer.importance import importance_map
    from engine.infer.predictor import TorchPredictor, pick_device, stack_sections
    from engine.infer.tta import Transform, augmented, transforms

_LAZY = {
    "Predictor": "blend",
    "SlidingWindow": "blend",
    "model_window": "blend",
    "stack_sections": "predictor",
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
    "DEFAULT_WINDOW",
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
    "add_pieces",
    "aligned_write_shape",
    "augmented",
    "axis_starts",
    "checkpoint_window",
    "halo",
    "importance_map",
    "model_window",
    "normalise",
    "pack_pieces",
    "pad_source",
    "pick_device",
    "piece_key",
    "read_padded",
    "replicate_axes",
    "scale_input",
    "scan_interval",
    "section_context",
    "stack_sections",
    "to_output",
    "transforms",
]
