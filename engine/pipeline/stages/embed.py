"""``embed``: self-supervised patch embeddings of the raw volume, for coverage selection.

Trains the encoder half of a small U-Net without labels (SimCLR / NT-Xent on two augmented views of
random crops, :func:`engine.learn.simclr.pretrain_simclr`), saves it (``RUN/embed/encoder``), then
embeds every patch of the patch grid with the blockwise op (:func:`engine.ops.embed.embed_volume`, on
the run's backend: the one implementation of patch embedding) into the embedding array that
``select`` reads (``RUN/embed/emb.zarr``).
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
from engine.params import EmbedParams
from engine.pipeline.stage import StageContext
from engine.pipeline.stages._base import DeclaredStage, blockwise_options

log = logging.getLogger(__name__)

Triple = tuple[int, int, int]


class EmbedSection(EmbedParams, Config):
    """``embed:`` -- ``input`` is the raw volume (e.g. ``synth.raw``); the embedding's settings are those of
    ``connectile embed`` (:class:`~engine.params.EmbedParams`, the same defaults: ``patch``/``stride`` the
    patch grid, by voxel size unless given); ``model`` the encoder (a small U-Net config);
    ``steps``/``batch_size``/``crop``/``lr``/``temperature``/``seed`` its SimCLR training."""

    input: str
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(dims=2, filters=[8, 16, 32]))
    steps: int = Field(default=60, ge=0)
    batch_size: int = Field(default=8, ge=2)
    crop: Triple = (1, 64, 64)
    lr: float = Field(default=1e-3, gt=0)
    temperature: float = Field(default=0.5, gt=0)
    seed: int = 0


#: the largest training region (bytes) the encoder's crops are drawn from in memory
CACHE_BYTES = 512 * 2**20


def train_encoder(raw_url: str, out: str, cfg: EmbedSection, *, progress: bool = False, z_stop: int | None = None) -> list[float]:
    """Train the encoder on crops of ``raw_url`` (below ``z_stop``: the rest is the run's test region) and
    save the U-Net it belongs to as a checkpoint in ``out`` (what :class:`~engine.ops.embed.EmbedOp`
    loads); returns the losses."""
    import torch

    from engine.errors import ConfigError
    from engine.learn.config import AugmentConfig, SimCLRConfig
    from engine.learn.simclr import pretrain_simclr
    from engine.models import build_model
    from engine.models.checkpoint import save_checkpoint
    from engine.select.patches import default_patch_and_stride
    from engine.storage import open_volume
    from engine.values import to_unit

    torch.set_num_threads(cfg.threads)
    vol = open_volume(raw_url)
    shape = vol.spatial_shape
    if z_stop is not None:
        if not 0 < z_stop <= shape[0]:
            raise ConfigError(f"test_from_z {z_stop} is outside the volume's {shape[0]} sections", "give a section inside the volume")
        shape = (z_stop, *shape[1:])
    patch = cfg.patch or default_patch_and_stride(vol.voxel_size)[0]
    if any(c > s for c, s in zip(cfg.crop, shape, strict=True)) or any(p > s for p, s in zip(patch, shape, strict=True)):
        raise ConfigError(f"embed.crop {cfg.crop} or embed.patch {patch} is larger than the volume {shape} (before test_from_z)", "use a smaller embed.crop / embed.patch")
    torch.manual_seed(cfg.seed)
    unet = build_model(cfg.model)
    losses: list[float] = []
    if cfg.steps:
        from engine.geometry import Box

        # a training region that fits in memory is read once (a crop read decodes whole chunks: 40 steps of a
        # batch of crops would decode the same chunks hundreds of times); a larger one is read crop by crop
        whole = Box((0, 0, 0), tuple(shape))
        cached = vol.read(whole) if len(vol.shape) == 3 and whole.size * vol.dtype.itemsize <= CACHE_BYTES else None

        def draw(rng: np.random.Generator) -> np.ndarray:
            start = [int(rng.integers(0, s - c + 1)) for s, c in zip(shape, cfg.crop, strict=True)]
            box = Box(tuple(start), tuple(a + c for a, c in zip(start, cfg.crop, strict=True)))
            crop = cached[box.to_slices()] if cached is not None else vol.read(box)
            return np.ascontiguousarray(to_unit(crop))
        aug = AugmentConfig(elastic=0.0, misalign=0.0, missing_section=0.0)
        sim = SimCLRConfig(steps=cfg.steps, batch_size=cfg.batch_size, temperature=cfg.temperature, dim=32, hidden=64, lr=cfg.lr)
        losses = pretrain_simclr(unet, draw, sim, aug, seed=cfg.seed, progress=progress)
    save_checkpoint(out, unet, cfg.model, {"encoder": "simclr", "steps": cfg.steps, "seed": cfg.seed, "losses": losses[-5:]})
    return losses


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


class EmbedStage(DeclaredStage, name="embed", config=EmbedSection, inputs=("input",), outputs=("embeddings",), order=100):
    def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
        from engine.models.checkpoint import WEIGHTS
        from engine.ops.embed import embed_volume
        from engine.storage import open_volume

        raw = ctx.input(cfg.input)
        encoder = ctx.dir / "encoder"
        losses: list[float] = []
        if ctx.overwrite or not (encoder / WEIGHTS).is_file():  # a resumed stage keeps its encoder (and its finished blocks)
            losses = train_encoder(raw, str(encoder), cfg, progress=ctx.runtime.progress, z_stop=ctx.test_from_z)
            if losses:
                _plot_loss(losses, str(ctx.dir / "embed_loss.png"))
        shape = open_volume(raw).spatial_shape
        limit = (ctx.test_from_z, shape[1], shape[2]) if ctx.test_from_z is not None else None
        out = ctx.dir / "emb.zarr"
        res = embed_volume(raw, str(out), str(encoder), **cfg.settings(), limit=limit, **blockwise_options(ctx))
        info = {"blocks": res.total_blocks, "seconds": res.wall_seconds, "last_loss": losses[-1] if losses else None, "steps": cfg.steps}
        (ctx.dir / "embed.json").write_text(json.dumps(info, indent=1, default=str))
        return {"embeddings": str(out)}
