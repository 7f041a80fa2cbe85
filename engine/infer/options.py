"""The named options of inference (torch-free, so configs and the CLI can name them cheaply)."""

from __future__ import annotations

from typing import Literal, get_args

BlendMode = Literal["gaussian", "bump", "constant"]
BLEND_MODES: tuple[str, ...] = get_args(BlendMode)
TtaMode = Literal["none", "flips", "flips-transpose"]
TTA_MODES: tuple[str, ...] = get_args(TtaMode)
TtaReduce = Literal["mean", "min", "max"]
TTA_REDUCTIONS: tuple[str, ...] = get_args(TtaReduce)
Activation = Literal["sigmoid", "softmax", "none"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
Amp = Literal["none", "bf16", "fp16"]
AMPS: tuple[str, ...] = get_args(Amp)
