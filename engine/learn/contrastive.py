"""Supervised local contrastive pretraining (stage 2 of Hu et al. 2021), for 3D EM voxels.

Per-voxel embeddings come from the U-Net's decoder (its last features, before the segmentation head)
through a 1x1 convolution to ``dim`` channels, L2-normalised (:class:`EmbeddingNet`). Two intensity-only
views of each labelled crop are embedded; for an anchor ``i`` the positives ``P(i)`` are all other
voxels (of both views) with the same label::

    L_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i . z_p / t) / sum_{a != i} exp(z_i . z_a / t) )

averaged over anchors. Anchors are the known voxels with a non-zero label that have a positive
(background anchors only where asked); unknown voxels (label -1) take no part at all.

Memory: voxels are subsampled every ``stride`` (z, y, x) and the loss is taken inside non-overlapping
3D tiles of ``block`` input voxels (the contrast set of an anchor is its tile, in both views); tiles
without anchors are skipped; the loss is the mean over (sample, tile) pairs of the mean over the tile's
anchors. One tile covering the crop is the full loss.

:func:`pretrain` runs the optional SimCLR stage (:mod:`engine.learn.simclr`) then this one, both on the
training core (:mod:`engine.learn.core`: checkpoints and resume in ``OUT/pretrain/<stage>/``, time budget),
and writes the U-Net weights to ``OUT/pretrain/``; :func:`load_pretrained` puts them into the model that is then
fine-tuned for segmentation (``connectile train`` does both when the config has ``contrastive``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import ConfigError
from engine.learn.augment import flips
from engine.learn.budget import BudgetSpent, Clock, start
from engine.learn.config import AugmentConfig, SemiConfig, TrainConfig
from engine.learn.core import LoopOptions, Method, fit, rank, wrap_ddp
from engine.models.unet import UNet, fold_sections, unfold_sections
from engine.storage.safety import write_json_atomic

log = logging.getLogger(__name__)

PRETRAIN_DIR = "pretrain"


def decoder_features(model: UNet, x: torch.Tensor) -> torch.Tensor:
    """The decoder's last features ``(B, filters[0], Z, Y, X)`` of a 5D input (what the head sees),
    at the input's size."""
    cfg = model.config
    if cfg.dims == 2:
        feats = unfold_sections(model.decoder(model.encoder(fold_sections(x, cfg.context_slices))), x.shape[0])
    else:
        feats = model.decoder(model.encoder(x))
    if feats.shape[2:] != x.shape[2:]:  # a strided input convolution
        feats = F.interpolate(feats, size=x.shape[2:], mode="trilinear", align_corners=False)
    return feats


class EmbeddingNet(nn.Module):
    """The U-Net (shared, not copied) with a 1x1 convolution to ``dim`` channels on its decoder features,
    L2-normalised per voxel: ``(B, C, Z, Y, X) -> (B, dim, Z, Y, X)``."""

    def __init__(self, unet: UNet, dim: int = 128) -> None:
        super().__init__()
        self.unet = unet
        self.embed = nn.Conv3d(unet.config.filters[0], dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed(decoder_features(self.unet, x)), dim=1)


def _tile_ids(shape: Sequence[int], stride: Sequence[int], block: Sequence[int] | None) -> tuple[tuple[slice, ...], np.ndarray]:
    """The subsampling slices and, per subsampled voxel, the flat id of its tile (in input voxels)."""
    sl = tuple(slice(None, None, int(s)) for s in stride)
    coords = [np.arange(0, n, s) for n, s in zip(shape, stride, strict=True)]
    if block is None:
        return sl, np.zeros([len(c) for c in coords], np.int64).ravel()
    ids = [c // int(b) for c, b in zip(coords, block, strict=True)]
    counts = [int(i.max()) + 1 for i in ids]
    grid = np.ravel_multi_index(np.meshgrid(*ids, indexing="ij"), counts)
    return sl, grid.ravel()


def _tile_loss(z: torch.Tensor, lab: torch.Tensor, temperature: float, background_anchors: bool) -> tuple[torch.Tensor, int]:
    """Sum over anchors of ``L_i`` and the number of anchors, for embeddings ``(N, D)`` and labels ``(N,)``."""
    known = lab >= 0
    z, lab = z[known], lab[known]
    n = lab.shape[0]
    if n < 2:
        return z.new_zeros(()), 0
    sim = z @ z.t() / temperature
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    log_prob = sim - torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    pos = (lab[:, None] == lab[None, :]) & ~eye
    npos = pos.sum(dim=1)
    anchors = npos > 0
    if not background_anchors:
        anchors &= lab != 0
    count = int(anchors.sum())
    if count == 0:
        return z.new_zeros(()), 0
    per = -(log_prob.masked_fill(~pos, 0.0)).sum(dim=1) / npos.clamp_min(1)
    return per[anchors].sum(), count


def local_contrastive_loss(
    views: Sequence[torch.Tensor],
    labels: torch.Tensor,
    temperature: float = 0.1,
    stride: Sequence[int] = (1, 1, 1),
    block: Sequence[int] | None = None,
    background_anchors: bool = False,
) -> torch.Tensor:
    """The supervised local contrastive loss (module docstring) of ``views`` (each ``(B, D, Z, Y, X)``,
    normalised) with integer ``labels`` ``(B, Z, Y, X)`` (-1 = unknown). 0 (with a graph) without anchors."""
    b = labels.shape[0]
    sl, tiles = _tile_ids(labels.shape[1:], stride, block)
    tiles_t = torch.from_numpy(tiles).to(labels.device)
    total = views[0].new_zeros(())
    used = 0
    for i in range(b):
        lab = labels[i][sl].reshape(-1)
        embs = [v[i][(slice(None), *sl)].reshape(v.shape[1], -1).t() for v in views]
        for t in torch.unique(tiles_t).tolist():
            sel = tiles_t == t
            if not bool((lab[sel] > (-1 if background_anchors else 0)).any()):
                continue
            z = torch.cat([e[sel] for e in embs])
            s, count = _tile_loss(z, lab[sel].repeat(len(views)), temperature, background_anchors)
            if count:
                total = total + s / count
                used += 1
    if used == 0:
        return total + 0.0 * sum(v.sum() for v in views)
    return total / used


def contrast_labels(labels: np.ndarray, known: np.ndarray, cfg: TrainConfig) -> np.ndarray:
    """Integer labels to contrast (-1 where unknown): the label ids (``instances``, always for affinity
    heads), or the classes of the target: 0/1 for masks, 0/1/2 (none, pre, post) for polarity."""
    t = cfg.target
    assert cfg.contrastive is not None
    if t.ignore_ids:
        known = known & ~np.isin(labels, t.ignore_ids)
    if cfg.contrastive.labels == "instances" or t.kind == "affinity":
        out = labels.astype(np.int64)
    elif t.kind == "mask":
        out = (np.isin(labels, t.label_ids) if t.label_ids else labels != 0).astype(np.int64)
    else:
        out = np.isin(labels, t.pre_ids).astype(np.int64) + 2 * (np.isin(labels, t.post_ids) & ~np.isin(labels, t.pre_ids))
    out[~known] = -1
    return out


def contrastive_batch(sampler: object, cfg: TrainConfig, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two intensity-only views ``(N, 1, Z, Y, X)`` of ``size`` labelled crops (random flips/rotations
    first) and their contrast labels ``(N, Z, Y, X)``."""
    from engine.learn.semi import perturb

    perturbation = cfg.semi or SemiConfig()
    geo = AugmentConfig(flip=cfg.augment.flip, transpose=cfg.augment.transpose, rot90=cfg.augment.rot90)
    v1, v2, labs = [], [], []
    for _ in range(size):
        image, labels, known = sampler.draw(rng)  # type: ignore[attr-defined]
        image, labels, known = flips(image, labels, known, rng, geo)
        labs.append(contrast_labels(np.ascontiguousarray(labels), np.ascontiguousarray(known), cfg))
        v1.append(perturb(image, perturbation, rng)[None])
        v2.append(perturb(image, perturbation, rng)[None])
    return torch.from_numpy(np.stack(v1)), torch.from_numpy(np.stack(v2)), torch.from_numpy(np.stack(labs))


def pretrain_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.output) / PRETRAIN_DIR


class ContrastiveMethod(Method):
    """Local contrastive training on the training core: step ``s`` draws its crops from
    ``default_rng([seed, s, 0xC0])`` (worker ``r > 0`` of a process group from ``[seed, s, 0xC0, r]``)."""

    name = "contrastive"

    def __init__(self, unet: UNet, sampler: object, cfg: TrainConfig, device: torch.device) -> None:
        c = cfg.contrastive
        assert c is not None
        self.sampler, self.cfg, self.c, self.device = sampler, cfg, c, device
        self.size = c.batch_size or cfg.batch_size
        self.model = EmbeddingNet(unet, c.dim).to(device)
        self.net = wrap_ddp(self.model, device, unused=True)  # the segmentation head takes no part
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=c.lr or cfg.optimizer.lr)
        self.rank = rank()
        self.model.train()

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.cfg.seed, step, 0xC0, *([self.rank] if self.rank else [])])
        return contrastive_batch(self.sampler, self.cfg, rng, self.size)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        x1, x2, lab = batch
        emb = self.net(torch.cat([x1, x2]).to(self.device))
        c = self.c
        return local_contrastive_loss([emb[: self.size], emb[self.size :]], lab.to(self.device), c.temperature, c.stride, c.block, c.background_anchors), {}

    def modules(self) -> dict[str, nn.Module]:
        return {"contrastive": self.model}

    def describe(self) -> dict[str, Any]:
        return {"contrastive": self.c.model_dump(mode="json", exclude={"steps"}), "model": self.cfg.model.model_dump(mode="json"), "seed": self.cfg.seed}


def pretrain(cfg: TrainConfig, *, device: torch.device | None = None, clock: Clock | None = None) -> Path:
    """Contrastive pretraining of the U-Net of ``cfg`` (SimCLR first if ``contrastive.simclr``); writes
    ``OUT/pretrain/`` (weights, config, ``loss.json``, ``loss.png``) and returns it. Done already: nothing.

    Each stage runs on the training core with its checkpoints in ``OUT/pretrain/<stage>/`` (a second
    call resumes); a stage stopped by the time budget (``clock``, else ``cfg.budget``) raises
    :class:`~engine.learn.budget.BudgetSpent` after its checkpoint."""
    from engine.learn.sampler import CropSampler
    from engine.models import build_model, save_checkpoint

    c = cfg.contrastive
    if c is None:
        raise ConfigError("contrastive pretraining needs a 'contrastive' section in the training config")
    out = pretrain_dir(cfg)
    if pretrain_done(cfg):
        log.info("contrastive pretraining already done in %s", out)
        return out
    device = device or torch.device("cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu")
    torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    unet = build_model(cfg.model).to(device)
    sampler = CropSampler(cfg)
    clock = clock or start(cfg.budget)
    loop = LoopOptions(steps=c.steps, checkpoint_every=cfg.checkpoint_every, keep=cfg.keep_checkpoints, progress=cfg.progress, clock=clock, is_main=rank() == 0)
    record: dict[str, list[float]] = {}
    if c.simclr is not None:
        record["simclr"] = _simclr_stage(cfg, unet, sampler, device, replace(loop, output=out / "simclr"))
        _check_finished("SimCLR", len(record["simclr"]), c.simclr.steps, out)
    result = fit(ContrastiveMethod(unet, sampler, cfg, device), replace(loop, output=out / "contrastive"))
    record["contrastive"] = result.losses()
    _check_finished("contrastive", result.step, c.steps, out)
    if rank() == 0:
        save_checkpoint(out, unet, cfg.model, {"stage": "contrastive pretraining", "steps": c.steps})
        write_json_atomic(out / "loss.json", record, indent=None)
        _plot(record, out / "loss.png")
    log.info("contrastive pretraining: %d steps, last loss %.4f; weights in %s", c.steps, record["contrastive"][-1], out)
    return out


def _simclr_stage(cfg: TrainConfig, unet: UNet, sampler: object, device: torch.device, loop: LoopOptions) -> list[float]:
    """SimCLR on labelled and unlabelled crops (half each where there are unlabelled volumes)."""
    from engine.learn.semi import UnlabelledSource
    from engine.learn.simclr import pretrain_simclr

    assert cfg.contrastive is not None and cfg.contrastive.simclr is not None
    unlabelled = UnlabelledSource(cfg)

    def draw(rng: np.random.Generator) -> np.ndarray:
        if len(unlabelled) and rng.random() < 0.5:
            return unlabelled.draw(rng)
        image: np.ndarray = sampler.draw(rng)[0]  # type: ignore[attr-defined]
        return image

    return pretrain_simclr(unet, draw, cfg.contrastive.simclr, cfg.augment, seed=cfg.seed, device=device, progress=cfg.progress, loop=loop)


def pretrain_done(cfg: TrainConfig) -> bool:
    """Whether the contrastive pretraining of ``cfg`` has written its weights."""
    out = pretrain_dir(cfg)
    return (out / "model.safetensors").is_file() and (out / "loss.json").is_file()


def _pretrain_worker(payload: dict[str, Any], rank: int, device: torch.device) -> dict[str, float]:
    """One worker of :func:`pretrain` on Ray Train (:func:`engine.learn.distributed.run_workers`)."""
    cfg = TrainConfig.model_validate(payload["cfg"])
    try:
        pretrain(cfg if rank == 0 else cfg.model_copy(update={"progress": False}), device=device)
    except BudgetSpent as err:
        log.warning("%s", err)
        return {"stopped": 1.0}
    return {}


def _check_finished(stage: str, done: int, steps: int, out: Path) -> None:
    if done < steps:
        raise BudgetSpent(f"{stage} pretraining stopped at its time budget after {done} of {steps} steps (checkpoint in {out})",
                          "run the training again to continue from there, or raise budget.seconds")


def _plot(record: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(record), figsize=(5 * len(record), 3.5), squeeze=False)
    for ax, (name, values) in zip(axes[0], record.items(), strict=True):
        ax.plot(np.arange(1, len(values) + 1), values)
        ax.set_title(f"{name} loss")
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def load_pretrained(model: nn.Module, cfg: TrainConfig) -> None:
    """Load the weights of ``OUT/pretrain/`` into ``model`` (the bare U-Net)."""
    from safetensors.torch import load_file

    from engine.models.checkpoint import check_state

    path = pretrain_dir(cfg) / "model.safetensors"
    if not path.is_file():
        raise ConfigError(f"no contrastive pretraining weights at {path}", "run connectile train with the contrastive section (it pretrains first)")
    state = load_file(str(path), device=str(next(model.parameters()).device))
    check_state(model, state, str(path))
    model.load_state_dict(state, strict=True)
    log.info("starting from the contrastive pretraining weights %s", path)
