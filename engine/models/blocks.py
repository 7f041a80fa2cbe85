"""Building blocks of the U-Net, for 2D and 3D alike: convolution + norm + activation, squeeze-and-
excitation, and the residual block of the papers' base model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from engine.models.config import ModelConfig


def conv_nd(dims: int, cin: int, cout: int, kernel: Sequence[int], bias: bool = True) -> nn.Module:
    """A 'same' padded convolution of the given (per-axis, odd) kernel."""
    pad = tuple(k // 2 for k in kernel)
    if dims == 3:
        return nn.Conv3d(cin, cout, tuple(kernel), padding=pad, bias=bias)  # type: ignore[arg-type]
    return nn.Conv2d(cin, cout, tuple(kernel), padding=pad, bias=bias)  # type: ignore[arg-type]


def norm_nd(dims: int, kind: str, channels: int) -> nn.Module:
    """Normalisation layer: batch, instance (affine), group (up to 8 groups) or none."""
    if kind == "batch":
        return nn.BatchNorm3d(channels) if dims == 3 else nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True) if dims == 3 else nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


def activation(kind: str) -> nn.Module:
    """The nonlinearity named in the config."""
    if kind == "elu":
        return nn.ELU(inplace=True)
    if kind == "leaky_relu":
        return nn.LeakyReLU(0.01, inplace=True)
    return nn.ReLU(inplace=True)


def kernel(dims: int, anisotropic: bool, size: int = 3) -> tuple[int, ...]:
    """(1,k,k) for an anisotropic 3D level, (k,k,k) for an isotropic one, (k,k) in 2D."""
    if dims == 2:
        return (size, size)
    return (1, size, size) if anisotropic else (size, size, size)


class SqueezeExcitation(nn.Module):
    """Channel attention (Hu et al. 2018): global average pool, bottleneck MLP, sigmoid gate.

    >>> se = SqueezeExcitation(8, reduction=4)
    >>> se(torch.ones(2, 8, 3, 4, 4)).shape
    torch.Size([2, 8, 3, 4, 4])
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeeze = x.flatten(2).mean(dim=2)
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(squeeze))))
        return x * gate.view(*gate.shape, *([1] * (x.dim() - 2)))


class ResidualBlock(nn.Module):
    """conv-norm-act-conv-norm, squeeze-excitation, plus the (projected) input, then the activation.

    With ``residual: false`` and ``se: false`` in the config it is a plain double convolution.
    """

    def __init__(self, cfg: ModelConfig, cin: int, cout: int, anisotropic: bool) -> None:
        super().__init__()
        k = kernel(cfg.dims, anisotropic)
        self.conv1 = conv_nd(cfg.dims, cin, cout, k, bias=cfg.norm == "none")
        self.norm1 = norm_nd(cfg.dims, cfg.norm, cout)
        self.act1 = activation(cfg.activation)
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.conv2 = conv_nd(cfg.dims, cout, cout, k, bias=cfg.norm == "none")
        self.norm2 = norm_nd(cfg.dims, cfg.norm, cout)
        self.se = SqueezeExcitation(cout, cfg.se_reduction) if cfg.se else nn.Identity()
        self.residual = cfg.residual
        one = (1,) * cfg.dims
        self.project = conv_nd(cfg.dims, cin, cout, one, bias=False) if (cfg.residual and cin != cout) else nn.Identity()
        self.act2 = activation(cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(self.act1(self.norm1(self.conv1(x))))
        y = self.se(self.norm2(self.conv2(y)))
        if self.residual:
            y = y + self.project(x)
        return self.act2(y)
