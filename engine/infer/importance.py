"""Importance maps: how much each voxel of a window counts when overlapping windows are blended.

``gaussian`` is MONAI's ``compute_importance_map(mode="gaussian", sigma_scale=0.125)`` computed with the
same float32 operations (so blending matches ``sliding_window_inference`` bit for bit where the model
outputs do); ``bump`` is the smooth bump of PyTorch Connectomics / chunkflow (zero at the window faces,
floored at 1e-3 like MONAI's maps); ``constant`` weighs every voxel the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.errors import ConfigError
from engine.infer.options import BLEND_MODES, BlendMode


def _outer(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The outer product of 1D vectors, in MONAI's order of operations."""
    out = vectors[0]
    for i, x in enumerate(vectors[1:], start=1):
        out = out.unsqueeze(-1) * x[(None,) * i]
    return out


def importance_map(
    roi: Sequence[int], mode: BlendMode = "gaussian", sigma_scale: float | Sequence[float] = 0.125, device: str | torch.device = "cpu",
    floor: float = 1e-3,
) -> torch.Tensor:
    """The weight map of a window of shape ``roi`` (float32, all values > 0). Weights below ``floor``
    are raised to it (MONAI: 1e-3; training's validation has used 1e-4).

    >>> w = importance_map((4, 8, 8))
    >>> tuple(w.shape), bool(w.min() > 0), float(w.max()) < 1.0
    ((4, 8, 8), True, True)
    """
    if mode not in BLEND_MODES:
        raise ConfigError(f"unknown blend mode {mode!r}", f"use one of {', '.join(BLEND_MODES)}")
    dev = torch.device(device)
    roi = tuple(int(r) for r in roi)
    if mode == "constant":
        w = torch.ones(roi, dtype=torch.float, device=dev)
    elif mode == "gaussian":
        scales = [float(sigma_scale)] * len(roi) if isinstance(sigma_scale, (int, float)) else [float(s) for s in sigma_scale]
        if len(scales) != len(roi) or any(s <= 0 for s in scales):
            raise ConfigError(f"sigma_scale must be > 0, one value or one per axis, got {sigma_scale!r}")
        vectors = []
        for r, s in zip(roi, scales, strict=True):
            sigma = r * s
            x = torch.arange(start=-(r - 1) / 2.0, end=(r - 1) / 2.0 + 1, dtype=torch.float, device=dev)
            vectors.append(torch.exp(x**2 / (-2 * sigma**2)))
        w = _outer(vectors)
    else:
        vectors = []
        for r in roi:
            t = torch.linspace(0.0, 1.0, r + 2, dtype=torch.float64, device=dev)[1:-1]
            d = (2.0 * t - 1.0) ** 2  # 0 at the centre, < 1 inside
            vectors.append(torch.exp(1.0 - 1.0 / (1.0 - d)).to(torch.float))
        w = _outer(vectors)
    # MONAI: non-positive (and tiny) weights are raised to max(min, 1e-3)
    lowest = max(float(torch.min(w).item()), float(floor))
    return torch.clamp_(w.to(torch.float), min=lowest)
