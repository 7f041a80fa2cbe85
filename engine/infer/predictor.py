"""Wrap a ``torch.nn.Module`` for inference: device, output activation, mixed precision, channels-last.

On a GPU, ``amp="bf16"`` (or ``"fp16"``) runs the forward pass under ``torch.autocast`` and
``channels_last`` stores activations as NDHWC, which cuDNN's 3D convolutions prefer; on CPU both are
off by default (the float32 path is the exact one) and can be switched on to measure them.
"""

from __future__ import annotations

import logging

import torch

from engine.errors import ConfigError
from engine.infer.options import ACTIVATIONS, AMPS, Activation, Amp

log = logging.getLogger(__name__)


def pick_device(device: str = "auto") -> torch.device:
    """``auto``: the first CUDA device if one is visible, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for but no CUDA device is visible", "use --device cpu or auto")
    return torch.device(device)


class TorchPredictor:
    """Call ``model`` on a batch of windows and return float32 probabilities (after ``activation``).

    >>> p = TorchPredictor(torch.nn.Identity(), activation="none")
    >>> p(torch.ones(1, 1, 2, 2, 2)).sum().item()
    8.0
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        activation: Activation = "sigmoid",
        device: str | torch.device = "cpu",
        amp: Amp = "none",
        channels_last: bool = False,
        compile: bool = False,  # noqa: A002 - mirrors torch.compile
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ConfigError(f"unknown output activation {activation!r}", f"use one of {', '.join(ACTIVATIONS)}")
        if amp not in AMPS:
            raise ConfigError(f"unknown mixed precision {amp!r}", f"use one of {', '.join(AMPS)}")
        self.device = torch.device(device)
        self.activation: Activation = activation
        self.amp: Amp = amp
        self.channels_last = channels_last
        model = model.to(self.device).eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        self.model: torch.nn.Module = torch.compile(model) if compile else model  # type: ignore[assignment]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode():
            if self.amp != "none":
                dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
                with torch.autocast(self.device.type, dtype=dtype):
                    y = self.model(x)
            else:
                y = self.model(x)
            y = y.float()
            if self.activation == "sigmoid":
                y = torch.sigmoid(y)
            elif self.activation == "softmax":
                y = torch.softmax(y, dim=1)
        return y.contiguous()
