"""A 2D convolutional variational auto-encoder (the two streams of Lin et al., ECCV 2020).

Encoder: one stride-2 3x3 convolution + batch norm + leaky ReLU per entry of ``hidden_dims``, then two
fully connected layers to the mean and the log-variance of the latent vector. Decoder: a fully
connected layer back to the smallest feature map, transposed convolutions (stride 2) up to the input
size, and a last 3x3 convolution + sigmoid (inputs are scaled to [0, 1]). Loss: L1 reconstruction
(mean over pixels) + ``kld_weight`` x KL divergence to N(0, I) (mean over the batch). The feature of
an input is the mean vector (:meth:`VAE.features`).

The paper's settings: 128 x 128 inputs, hidden dims 32-64-128-256-256-512, KL weight 1e-4, a small
latent for masks (about 20) and a large one for images (1000).

>>> import torch
>>> m = VAE(size=32, latent_dim=4, hidden_dims=(8, 16))
>>> x = torch.rand(2, 1, 32, 32)
>>> recon, mu, logvar = m(x)
>>> tuple(recon.shape), tuple(mu.shape), m.features(x).shape[1]
((2, 1, 32, 32), (2, 4), 4)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

PAPER_HIDDEN_DIMS: tuple[int, ...] = (32, 64, 128, 256, 256, 512)


class VAE(nn.Module):
    """See the module docstring. ``size`` must be divisible by ``2 ** len(hidden_dims)``."""

    def __init__(self, size: int = 128, latent_dim: int = 20, hidden_dims: Sequence[int] = PAPER_HIDDEN_DIMS, in_channels: int = 1) -> None:
        super().__init__()
        levels = len(hidden_dims)
        if levels < 1:
            raise ValueError("hidden_dims needs at least one entry")
        if size % (2**levels) or size < 2**levels:
            raise ValueError(f"size {size} is not divisible by 2**{levels} (one halving per hidden dim)")
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
        self.size, self.latent_dim, self.hidden_dims, self.in_channels = size, latent_dim, tuple(int(h) for h in hidden_dims), in_channels
        self.bottom = size // 2**levels
        enc: list[nn.Module] = []
        c = in_channels
        for h in self.hidden_dims:
            enc += [nn.Conv2d(c, h, 3, stride=2, padding=1), nn.BatchNorm2d(h), nn.LeakyReLU()]
            c = h
        self.encoder = nn.Sequential(*enc)
        flat = self.hidden_dims[-1] * self.bottom * self.bottom
        self.fc_mu = nn.Linear(flat, latent_dim)
        self.fc_logvar = nn.Linear(flat, latent_dim)
        self.fc_dec = nn.Linear(latent_dim, flat)
        dec: list[nn.Module] = []
        rev = self.hidden_dims[::-1]
        for a, b in zip(rev, [*rev[1:], rev[-1]], strict=True):
            dec += [nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=1), nn.BatchNorm2d(b), nn.LeakyReLU()]
        self.decoder = nn.Sequential(*dec)
        self.head = nn.Conv2d(rev[-1], in_channels, 3, padding=1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x).flatten(1)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc_dec(z).view(-1, self.hidden_dims[-1], self.bottom, self.bottom)
        return torch.sigmoid(self.head(self.decoder(h)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        if self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            z = mu
        return self.decode(z), mu, logvar

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The mean vector (the feature used for clustering)."""
        return self.encode(x)[0]

    def config(self) -> dict[str, object]:
        return {"size": self.size, "latent_dim": self.latent_dim, "hidden_dims": list(self.hidden_dims), "in_channels": self.in_channels}


def vae_loss(recon: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, kld_weight: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, L1 reconstruction, KL): L1 is the mean over pixels; KL is summed over the latent and
    averaged over the batch."""
    rec = F.l1_loss(recon, x)
    kld = torch.mean(-0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=1))
    return rec + kld_weight * kld, rec, kld
