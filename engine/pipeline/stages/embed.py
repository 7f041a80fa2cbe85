"""``embed``: self-supervised patch embeddings of the raw volume, for coverage selection.

Trains the encoder half of a small U-Net without labels (SimCLR / NT-Xent on two augmented views of
random crops, :func:`engine.learn.simclr.pretrain_simclr`), then embeds every patch of a
:class:`~engine.select.patches.PatchGrid` with it (:class:`~engine.models.PatchEncoder`: encoder +
global average pooling) into the embedding array that ``select`` reads (``RUN/embed/emb.zarr``).
Also writes ``RUN/embed/embed_loss.png`` (the contrastive loss per step).

The encoder is trained from a fixed seed in one process, so the same section gives the same
embeddings; an interrupted stage starts the (short) training again.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from pydantic import Field

from engine.config import Config
from engine.models.config import ModelConfig
from engine.pipeline.stage import Stage, StageContext

log = logging.getLogger(__name__)

Triple = tuple[int, int, int]


class EmbedSection(Config):
    """``embed:`` -- ``input`` is the raw volume (e.g. ``synth.raw``); ``patch``/``stride`` the patch grid;
    ``model`` the encoder (a small U-Net config); ``steps``/``batch_size``/``crop`` its SimCLR training."""

    input: str
    patch: Triple = (8, 64, 64)
    stride: Triple = (8, 16, 16)
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(dims=2, filters=[8, 16, 32]))
    steps: int = Field(default=60, ge=0)
    batch_size: int = Field(default=8, ge=2)
    crop: Triple = (1, 64, 64)
    lr: float = Field(default=1e-3, gt=0)
    temperature: float = Field(default=0.5, gt=0)
    seed: int = 0
    threads: int = Field(default=1, ge=1)
    batch: int = Field(default=32, ge=1, description="patches per forward pass when embedding")


def _to_unit(data: np.ndarray) -> np.ndarray:
    if data.dtype == np.uint8:
        return data.astype(np.float32) / 255.0
    if data.dtype == np.uint16:
        return data.astype(np.float32) / 65535.0
    return data.astype(np.float32)


def embed_volume(raw_url: str, out: str, cfg: EmbedSection, *, progress: bool = False, loss_png: str | None = None, z_stop: int | None = None) -> dict[str, Any]:
    """Train the encoder on ``raw_url`` and write the patch embeddings to ``out``; returns a summary.
    ``z_stop``: only sections below it (the rest is the run's test region): the patch grid covers
    ``z < z_stop`` (same coordinates as the volume's), so nothing beyond can be selected."""
    import torch
    from tqdm import tqdm

    from engine.errors import ConfigError
    from engine.learn.config import AugmentConfig, SimCLRConfig
    from engine.learn.simclr import pretrain_simclr
    from engine.models import PatchEncoder, build_model
    from engine.select.embeddings import create_embeddings
    from engine.select.patches import PatchGrid
    from engine.storage import open_volume

    torch.set_num_threads(cfg.threads)
    vol = open_volume(raw_url)
    shape = vol.spatial_shape
    region = vol.box
    if z_stop is not None:
        if not 0 < z_stop <= shape[0]:
            raise ConfigError(f"test_from_z {z_stop} is outside the volume's {shape[0]} sections", "give a section inside the volume")
        shape = (z_stop, *shape[1:])
        from engine.geometry import Box

        region = Box((0, 0, 0), shape)
    if any(c > s for c, s in zip(cfg.crop, shape, strict=True)) or any(p > s for p, s in zip(cfg.patch, shape, strict=True)):
        raise ConfigError(f"embed.crop {cfg.crop} or embed.patch {cfg.patch} is larger than the volume {shape} (before test_from_z)", "use a smaller embed.crop / embed.patch")
    grid = PatchGrid(shape, cfg.patch, cfg.stride)
    data = _to_unit(vol.read(region))  # the demo's volumes are small; real ones: a future blockwise op
    torch.manual_seed(cfg.seed)
    unet = build_model(cfg.model)
    losses: list[float] = []
    if cfg.steps:
        def draw(rng: np.random.Generator) -> np.ndarray:
            start = [int(rng.integers(0, s - c + 1)) for s, c in zip(shape, cfg.crop, strict=True)]
            sl = tuple(slice(a, a + c) for a, c in zip(start, cfg.crop, strict=True))
            return np.ascontiguousarray(data[sl])

        aug = AugmentConfig(elastic=0.0, misalign=0.0, missing_section=0.0)
        sim = SimCLRConfig(steps=cfg.steps, batch_size=cfg.batch_size, temperature=cfg.temperature, dim=32, hidden=64, lr=cfg.lr)
        losses = pretrain_simclr(unet, draw, sim, aug, seed=cfg.seed, progress=progress)
    enc = PatchEncoder(cfg.model)
    enc.encoder.load_state_dict(unet.encoder.state_dict())
    enc.eval()
    arr = create_embeddings(out, grid, enc.out_dim, volume=raw_url, voxel_size=vol.voxel_size,
                            extra={"encoder": "simclr", "steps": cfg.steps, "seed": cfg.seed})
    ids = np.arange(grid.size)
    starts = grid.patch_starts(ids)
    feats = np.zeros((grid.size, enc.out_dim), np.float32)
    with torch.no_grad():
        for i in tqdm(range(0, grid.size, cfg.batch), desc="embed", unit="batch", disable=not progress):
            chunk = starts[i : i + cfg.batch]
            x = np.stack([data[z : z + cfg.patch[0], y : y + cfg.patch[1], xx : xx + cfg.patch[2]] for z, y, xx in chunk])
            feats[i : i + len(chunk)] = enc(torch.from_numpy(x[:, None])).numpy()
    arr[:] = feats.reshape(*grid.shape, enc.out_dim)
    if loss_png and losses:
        _plot_loss(losses, loss_png)
    return {"patches": grid.size, "grid": list(grid.shape), "dim": enc.out_dim, "last_loss": losses[-1] if losses else None}


def _plot_loss(losses: list[float], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(np.arange(1, len(losses) + 1), losses, color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel("NT-Xent loss")
    ax.set_title("embed: self-supervised encoder training")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


class EmbedStage(Stage):
    name = "embed"
    config = EmbedSection
    inputs = ("input",)
    outputs = ("embeddings",)
    order = 100

    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        out = ctx.dir / "emb.zarr"
        info = embed_volume(ctx.input(cfg.input), str(out), cfg, progress=ctx.runtime.progress, loss_png=str(ctx.dir / "embed_loss.png"), z_stop=ctx.test_from_z)
        (ctx.dir / "embed.json").write_text(json.dumps(info, indent=1))
        return {"embeddings": str(out)}
