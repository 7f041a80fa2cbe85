"""The training methods of active learning on the training core (:mod:`engine.learn.core`); imported on
use by :mod:`engine.active.features` and :mod:`engine.active.triplet` (this module imports torch).

- :class:`VaeMethod`: Adam on the L1 + KL loss of :func:`engine.models.vae.vae_loss`, epochs over one
  random permutation each (a torch generator seeded with ``seed``; the last partial batch is dropped,
  batch norm needs whole batches);
- :class:`TripletMethod`: Adam on eq. (2) (:func:`engine.active.triplet.triplet_loss`) over the encoder
  and mean layer of a VAE kept in eval mode, triplets drawn from one numpy generator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from engine.learn.core import Method
from engine.models.vae import VAE

if TYPE_CHECKING:
    from engine.active.features import VaeConfig
    from engine.active.triplet import TripletConfig


class VaeMethod(Method):
    """One step is one batch; ``per_epoch`` steps make an epoch. ``x``: the inputs ``(n, 1, S, S)``."""

    name = "vae"

    def __init__(self, x: torch.Tensor, cfg: VaeConfig, device: torch.device) -> None:
        torch.manual_seed(cfg.seed)
        self.cfg, self.device, self.x = cfg, device, x
        self.model = VAE(size=cfg.input_size, latent_dim=cfg.latent_dim, hidden_dims=cfg.hidden_dims).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.bs = min(cfg.batch_size, x.shape[0])
        self.per_epoch = (x.shape[0] - self.bs) // self.bs + 1
        self.perm = torch.zeros(0, dtype=torch.int64)
        self.model.train()

    def batch(self, step: int) -> torch.Tensor:
        i = step % self.per_epoch
        if i == 0:
            self.perm = torch.randperm(self.x.shape[0], generator=self.gen)
        return self.x[self.perm[i * self.bs : (i + 1) * self.bs]].to(self.device)

    def loss(self, batch: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        from engine.models import vae

        recon, mu, logvar = self.model(batch)
        loss, rec, kld = vae.vae_loss(recon, batch, mu, logvar, self.cfg.kld_weight)
        return loss, {"rec": rec, "kld": kld}

    def modules(self) -> dict[str, nn.Module]:
        return {"vae": self.model}

    def describe(self) -> dict[str, Any]:
        return {"vae": self.cfg.model_dump(mode="json", exclude={"epochs", "budget"}), "inputs": list(self.x.shape)}

    def state(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "perm": self.perm}

    def load_state(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"].cpu())
        self.perm = state["perm"].cpu()


class TripletMethod(Method):
    """Triplet tuning of ``model``'s encoder on ``x`` (inputs ``(n, 1, S, S)`` on the model's device)
    with boolean answers ``labels``."""

    name = "triplet"

    def __init__(self, model: VAE, x: torch.Tensor, labels: np.ndarray, cfg: TripletConfig) -> None:
        self.model, self.x, self.labels, self.cfg = model, x, labels, cfg
        self.device = next(model.parameters()).device
        self.optimizer = torch.optim.Adam([*model.encoder.parameters(), *model.fc_mu.parameters()], lr=cfg.lr)
        self.rng = np.random.default_rng(cfg.seed)
        model.eval()

    def batch(self, step: int) -> torch.Tensor:
        from engine.active.triplet import sample_triplets

        xi, pi, ni = sample_triplets(self.labels, self.cfg.batch_size, self.rng)
        return torch.from_numpy(np.concatenate([xi, pi, ni]))

    def loss(self, batch: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        from engine.active.triplet import triplet_loss

        f = self.model.features(self.x[batch.to(self.device)])
        fx, fp, fn = f.split(len(batch) // 3)
        return triplet_loss(torch.linalg.vector_norm(fx - fp, dim=1), torch.linalg.vector_norm(fx - fn, dim=1)), {}

    def modules(self) -> dict[str, nn.Module]:
        return {"vae": self.model}

    def describe(self) -> dict[str, Any]:
        return {"triplet": self.cfg.model_dump(mode="json", exclude={"steps", "budget"}), "answers": [int(v) for v in self.labels]}

    def state(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
