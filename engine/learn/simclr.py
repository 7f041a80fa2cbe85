"""Global self-supervised contrastive pretraining (SimCLR; stage 1 of Hu et al. 2021) of the U-Net's encoder.

Two augmented views of each crop (geometric + photometric EM augmentations), the encoder's deepest
features averaged over space, an MLP projector, and the NT-Xent loss: for the ``2N`` projections ``z``
(L2-normalised), the positive of view ``i`` is the other view of the same crop and the negatives are the
other ``2N - 2`` projections::

    l_i = -log( exp(z_i . z_j / t) / sum_{k != i} exp(z_i . z_k / t) ),   loss = mean_i l_i

>>> z1 = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1)
>>> bool(nt_xent(z1, z1, 0.5) < nt_xent(z1, z1.roll(1, 0), 0.5))
True
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.learn.augment import augment
from engine.learn.config import AugmentConfig, SimCLRConfig
from engine.learn.core import LoopOptions, Method, fit, rank, wrap_ddp
from engine.models.unet import UNet, fold_sections

log = logging.getLogger(__name__)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """The NT-Xent loss of two batches of projections ``(N, D)`` (normalised here)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, positives)


class SimCLRNet(nn.Module):
    """The U-Net's encoder (shared, not copied) + global average pooling + an MLP projector."""

    def __init__(self, unet: UNet, hidden: int = 512, dim: int = 128) -> None:
        super().__init__()
        self.unet = unet
        width = unet.config.filters[-1]
        self.projector = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.unet.config
        if cfg.dims == 2 and x.dim() == 5:
            b = x.shape[0]
            deep = self.unet.encoder(fold_sections(x, cfg.context_slices))[-1]
            pooled = deep.flatten(2).mean(dim=2).reshape(b, -1, deep.shape[1]).mean(dim=1)
        else:
            pooled = self.unet.encoder(x)[-1].flatten(2).mean(dim=2)
        return self.projector(pooled)


def two_views(image: np.ndarray, augment_cfg: AugmentConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two independently augmented views ``(1, Z, Y, X)`` of one crop ``(Z, Y, X)``."""
    dummy = np.zeros(image.shape, np.uint8)
    known = np.ones(image.shape, bool)
    a = augment(image, dummy, known, augment_cfg, rng)[0]
    b = augment(image, dummy, known, augment_cfg, rng)[0]
    return a[None], b[None]


class SimCLRMethod(Method):
    """SimCLR on the training core: step ``s`` draws its crops from ``default_rng([seed, s, 0x5c1])`` (worker
    ``r > 0`` of a process group from ``[seed, s, 0x5c1, r]``)."""

    name = "simclr"

    def __init__(self, unet: UNet, draw: Callable[[np.random.Generator], np.ndarray], cfg: SimCLRConfig, augment_cfg: AugmentConfig, seed: int, device: torch.device) -> None:
        self.draw, self.cfg, self.augment_cfg, self.seed, self.device = draw, cfg, augment_cfg, seed, device
        self.model = SimCLRNet(unet, cfg.hidden, cfg.dim).to(device)
        self.net = wrap_ddp(self.model, device, unused=True)  # the decoder takes no part
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.rank = rank()
        self.model.train()

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step, 0x5C1, *([self.rank] if self.rank else [])])
        views = [two_views(self.draw(rng), self.augment_cfg, rng) for _ in range(self.cfg.batch_size)]
        return torch.from_numpy(np.stack([v[0] for v in views])), torch.from_numpy(np.stack([v[1] for v in views]))

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return nt_xent(self.net(batch[0].to(self.device)), self.net(batch[1].to(self.device)), self.cfg.temperature), {}

    def modules(self) -> dict[str, nn.Module]:
        return {"simclr": self.model}

    def describe(self) -> dict[str, Any]:
        return {"simclr": self.cfg.model_dump(mode="json", exclude={"steps"}), "augment": self.augment_cfg.model_dump(mode="json"), "seed": self.seed}


def pretrain_simclr(
    unet: UNet,
    draw: Callable[[np.random.Generator], np.ndarray],
    cfg: SimCLRConfig,
    augment_cfg: AugmentConfig,
    *,
    seed: int = 0,
    device: torch.device | None = None,
    progress: bool = True,
    loop: LoopOptions | None = None,
) -> list[float]:
    """Train ``unet.encoder`` in place with NT-Xent for ``cfg.steps`` steps on crops from ``draw(rng)``;
    returns the loss of every step. Step ``s`` draws its crops from ``default_rng([seed, s, 0x5c1])``.

    ``loop`` (its ``steps`` and ``progress`` are set here) gives the training core an output folder
    for checkpoints and resume, and a time budget; without it the run keeps nothing on disk."""
    method = SimCLRMethod(unet, draw, cfg, augment_cfg, seed, device or torch.device("cpu"))
    opts = replace(loop or LoopOptions(steps=cfg.steps), steps=cfg.steps, progress=progress, log_every=1)
    result = fit(method, opts)
    losses = result.losses()
    log.info("SimCLR: %d steps, last loss %.4f", result.step, losses[-1] if losses else float("nan"))
    return losses
