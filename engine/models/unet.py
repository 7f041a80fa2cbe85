"""The residual squeeze-and-excitation U-Net (2D, 2.5D and anisotropic 3D) and its encoder.

Contract of every model :func:`build_model` returns: input float32 ``(B, C, Z, Y, X)`` with intensities
in [0, 1]; output logits ``(B, K, Z, Y, X)`` of the same spatial size (always; sizes divisible by
``model.divisor`` avoid the rounding at pooling). ``model.output_activation`` is ``"sigmoid"``. A 2D model
also takes ``(B, C, Y, X)``; given a volume it folds z into the batch (with ``context_slices`` neighbours on
each side stacked as channels, repeated at the volume's ends), so volumetric inference runs it unchanged.

>>> from engine.models.config import ModelConfig
>>> net = UNet(ModelConfig(filters=[4, 8, 8], anisotropic_stages=1))
>>> net.divisor
(2, 4, 4)
>>> net(torch.zeros(1, 1, 4, 16, 16)).shape
torch.Size([1, 1, 4, 16, 16])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.blocks import ResidualBlock, activation, conv_nd, kernel, norm_nd
from engine.models.config import ModelConfig


def fold_sections(x: torch.Tensor, context: int) -> torch.Tensor:
    """``(B, C, Z, Y, X)`` -> ``(B*Z, C*(2*context+1), Y, X)``: each section with its neighbours as channels.

    Channels are ordered channel-major (``c * S + s`` for section ``s`` of ``S`` from ``z - context``);
    sections beyond the ends repeat the first/last one.
    """
    b, c, z, y, xx = x.shape
    if context == 0:
        return x.permute(0, 2, 1, 3, 4).reshape(b * z, c, y, xx)
    idx = torch.arange(z, device=x.device)[:, None] + torch.arange(-context, context + 1, device=x.device)[None, :]
    idx = idx.clamp(0, z - 1)  # (Z, S)
    stacked = x[:, :, idx]  # (B, C, Z, S, Y, X)
    s = 2 * context + 1
    return stacked.permute(0, 2, 1, 3, 4, 5).reshape(b * z, c * s, y, xx)


def unfold_sections(y: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B*Z, K, Y, X)`` -> ``(B, K, Z, Y, X)``."""
    bz, k, h, w = y.shape
    return y.reshape(batch, bz // batch, k, h, w).permute(0, 2, 1, 3, 4)


class Encoder(nn.Module):
    """Input convolution and one residual block per level, max pooling between levels.

    ``forward`` returns the features of every level, finest first.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dims = cfg.dims
        aniso = [cfg.dims == 3 and i < cfg.anisotropic_stages for i in range(cfg.levels)]
        f0 = cfg.filters[0]
        stem = conv_nd(cfg.dims, cfg.network_in_channels, f0, kernel(cfg.dims, aniso[0], cfg.input_kernel_xy), bias=cfg.norm == "none")
        if cfg.input_stride > 1:
            stem.stride = ((1,) if cfg.dims == 3 else ()) + (cfg.input_stride, cfg.input_stride)  # type: ignore[assignment]
        self.stem = nn.Sequential(
            stem,
            norm_nd(cfg.dims, cfg.norm, f0),
            activation(cfg.activation),
        )
        cins = [f0, *cfg.filters[:-1]]
        self.blocks = nn.ModuleList(ResidualBlock(cfg, cin, cout, a) for cin, cout, a in zip(cins, cfg.filters, aniso, strict=True))
        pool_cls = nn.MaxPool3d if cfg.dims == 3 else nn.MaxPool2d
        pools = cfg.pooling() if cfg.dims == 3 else [(2, 2)] * (cfg.levels - 1)
        self.pools = nn.ModuleList(pool_cls(p, ceil_mode=True) for p in pools)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = self.pools[i - 1](x)
            x = block(x)
            feats.append(x)
        return feats


class Decoder(nn.Module):
    """1x1 projection, upsample (linear interpolation to the skip's size), add the skip, residual block.

    Projecting before upsampling is the same function as upsampling first (linear interpolation mixes
    voxels with weights that sum to one, the 1x1 projection mixes channels: the two commute, bias
    included) but runs the projection on the coarse grid and interpolates the narrower channel count
    (2-3% of a window's forward time on a 2-core CPU). Parameter names are unchanged, so checkpoints
    trained either way load either way.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dims = cfg.dims
        one = (1,) * cfg.dims
        levels = range(cfg.levels - 1)
        self.project = nn.ModuleList(conv_nd(cfg.dims, cfg.filters[i + 1], cfg.filters[i], one) for i in levels)
        self.blocks = nn.ModuleList(
            ResidualBlock(cfg, cfg.filters[i], cfg.filters[i], cfg.dims == 3 and i < cfg.anisotropic_stages) for i in levels
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        mode = "trilinear" if self.dims == 3 else "bilinear"
        for i in reversed(range(len(feats) - 1)):
            skip = feats[i]
            x = F.interpolate(self.project[i](x), size=skip.shape[2:], mode=mode, align_corners=False)
            x = self.blocks[i](x + skip)
        return x


class UNet(nn.Module):
    """Residual SE U-Net with a 1x1 head of ``cfg.out_channels`` logits (see the module docstring)."""

    output_activation = "sigmoid"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        assert cfg.out_channels is not None
        self.head = conv_nd(cfg.dims, cfg.filters[0], cfg.out_channels, (1,) * cfg.dims)
        self.divisor: tuple[int, int, int] = cfg.divisor()
        self.z_context = cfg.context_slices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.dims == 2 and x.dim() == 5:
            batch = x.shape[0]
            return unfold_sections(self._forward(fold_sections(x, cfg.context_slices)), batch)
        want = cfg.dims + 2
        if x.dim() != want:
            raise ValueError(f"expected a {want}D input (B, C, {'Z, ' if cfg.dims == 3 else ''}Y, X), got shape {tuple(x.shape)}")
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.config.network_in_channels:
            raise ValueError(f"expected {self.config.network_in_channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        out = self.head(self.decoder(self.encoder(x)))
        if out.shape[2:] != x.shape[2:]:  # a strided input convolution: back to the input's size
            out = F.interpolate(out, size=x.shape[2:], mode="trilinear" if x.dim() == 5 else "bilinear", align_corners=False)
        return out


class PatchEncoder(nn.Module):
    """The encoder half of the U-Net plus global average pooling: ``(B, C, Z, Y, X) -> (B, out_dim)``.

    Its ``encoder`` has the same parameter names as ``UNet.encoder``, so pretrained weights move over
    with ``unet.encoder.load_state_dict(patch_encoder.encoder.state_dict())``. A 2D encoder averages the
    per-section vectors over z.

    >>> enc = PatchEncoder(ModelConfig(filters=[4, 8], anisotropic_stages=1))
    >>> enc(torch.zeros(3, 1, 2, 16, 16)).shape, enc.out_dim
    (torch.Size([3, 8]), 8)
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.out_dim = cfg.filters[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.dims == 2 and x.dim() == 5:
            batch = x.shape[0]
            deep = self.encoder(fold_sections(x, cfg.context_slices))[-1]
            return deep.flatten(2).mean(dim=2).reshape(batch, -1, self.out_dim).mean(dim=1)
        return self.encoder(x)[-1].flatten(2).mean(dim=2)


def build_model(cfg: ModelConfig) -> UNet:
    """The U-Net that ``cfg`` describes (weights freshly initialised by torch's defaults)."""
    return UNet(cfg)
