"""SimSiam self-supervised training of the patch encoder (``connectile embed-train``).

SimSiam (Chen and He, 2021) as the selective-labeling paper uses it: no momentum target, no negatives.

- encoder ``f``: :class:`engine.models.encoder.PatchEncoder` (the residual SE U-Net's encoder half +
  global average pooling, 80-d with the default filters 28-36-48-64-80);
- projector ``g``: 3-layer MLP ``D -> 512 -> 512 -> 128`` (BN + ReLU after the first two, BN after the last);
- predictor ``h``: ``128 -> 512 -> 128`` (BN + ReLU in between);
- loss ``L = 1/2 [D(p1, z2) + D(p2, z1)]`` with ``D(p, z) = 2 - 2 cos(p, stopgrad(z))``, ``z = g(f(x))``,
  ``p = h(z)``: symmetric, stop-gradient on the target branch.

Views: two crops of the same patch (18x160x160 by default), each with one EM perturbation drawn
uniformly from intensity, noise, blur, cutout, misalignment/slip, elastic warp and flip/transpose
(the functions of :mod:`engine.learn.augment`). Patches are sampled uniformly from the whole volume.

Outputs in the run folder: ``encoder/`` (a checkpoint of the PatchEncoder, loadable by
:func:`load_encoder`), ``loss.json`` and ``loss.png`` (the loss curve), ``config.yaml``, and the training
core's ``checkpoints/``, ``history.jsonl`` and ``tensorboard/`` (:mod:`engine.learn.core`: resume, time
budget, data-parallel under Ray Train).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.config import Config
from engine.errors import ConfigError, StorageError
from engine.geometry import Box
from engine.learn.budget import TimeBudget, start
from engine.learn.config import RayConfig
from engine.learn.core import LoopOptions, LoopResult, Method, fit, rank, wrap_ddp
from engine.models.config import ModelConfig
from engine.models.encoder import PatchEncoder
from engine.params import PERTURBATIONS, SimSiamParams
from engine.storage.safety import write_atomic, write_json_atomic

log = logging.getLogger(__name__)

class SimSiamConfig(SimSiamParams, Config):
    """``connectile embed-train``'s configuration: the settings (:class:`~engine.params.SimSiamParams`, the
    command's flags), the run's volume and folder, and the nested models (encoder, time budget, Ray Train)."""

    volume: str
    out: str
    model: ModelConfig = ModelConfig(norm="batch")
    budget: TimeBudget | None = None
    ray: RayConfig = RayConfig()


class SimSiam(nn.Module):
    """Encoder, projector and predictor; ``forward(x1, x2)`` returns the symmetric loss."""

    def __init__(self, encoder: PatchEncoder, hidden: int = 512, out: int = 128, pred_hidden: int = 512) -> None:
        super().__init__()
        d = int(encoder.out_dim)
        self.encoder = encoder
        self.projector = nn.Sequential(
            nn.Linear(d, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, out, bias=False), nn.BatchNorm1d(out, affine=False),
        )
        self.predictor = nn.Sequential(nn.Linear(out, pred_hidden, bias=False), nn.BatchNorm1d(pred_hidden), nn.ReLU(inplace=True), nn.Linear(pred_hidden, out))

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        z1 = self.projector(self.encoder(x1))
        z2 = self.projector(self.encoder(x2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return 0.5 * (simsiam_distance(p1, z2) + simsiam_distance(p2, z1))


def simsiam_distance(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``2 - 2 cos(p, z)`` averaged over the batch, with the gradient stopped at ``z``.

    >>> a = torch.tensor([[1.0, 0.0]]); float(simsiam_distance(a, a)), float(simsiam_distance(a, -a))
    (0.0, 4.0)
    """
    return (2.0 - 2.0 * nn.functional.cosine_similarity(p, z.detach(), dim=-1)).mean()


def cutout(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random in-plane box (up to half of each side, through all sections) set to the crop's mean."""
    out = image.copy()
    _, h, w = image.shape
    bh, bw = int(rng.integers(1, h // 2 + 1)), int(rng.integers(1, w // 2 + 1))
    y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
    out[:, y : y + bh, x : x + bw] = float(image.mean())
    return out


def perturb(image: np.ndarray, rng: np.random.Generator, names: Sequence[str] = PERTURBATIONS) -> np.ndarray:
    """One EM perturbation drawn uniformly from ``names``; float32 ``(Z, Y, X)`` in [0, 1] in and out."""
    from engine.learn.augment import blur, elastic, flips, intensity, misalign, noise
    from engine.learn.config import AugmentConfig

    name = names[int(rng.integers(len(names)))]
    dummy = np.zeros(image.shape, np.uint8)
    known = np.ones(image.shape, bool)
    if name == "intensity":
        out = intensity(image, rng)
    elif name == "noise":
        out = noise(image, rng, 0.1)
    elif name == "blur":
        out = blur(image, rng, 2.0)
    elif name == "cutout":
        out = cutout(image, rng)
    elif name == "misalign":
        out = misalign(image, dummy, known, rng, max(1, image.shape[1] // 16))[0]
    elif name == "elastic":
        out = elastic(image, dummy, known, rng, 6.0, max(2.0, image.shape[1] / 16))[0]
    elif name == "flip":
        cfg = AugmentConfig(flip=True, transpose=True, rot90=False)
        out = flips(image, dummy, known, rng, cfg)[0]
    else:
        raise ConfigError(f"unknown perturbation {name!r}", f"use some of {', '.join(PERTURBATIONS)}")
    return np.ascontiguousarray(out, dtype=np.float32)


def sample_patches(volume: Any, patch: tuple[int, ...], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` patches at uniform random positions of ``volume`` as float32 in [0, 1], ``(n, Z, Y, X)``."""
    from engine.values import to_unit

    shape = volume.spatial_shape
    room = [s - p for s, p in zip(shape, patch, strict=True)]
    if any(r < 0 for r in room):
        raise ConfigError(f"patch {patch} is larger than the volume {shape}", "use a smaller --patch")
    out = np.empty((n, *patch), np.float32)
    for i in range(n):
        start = tuple(int(rng.integers(0, r + 1)) for r in room)
        out[i] = to_unit(volume.read(Box.from_shape(patch, start)))
    return out


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class SimSiamMethod(Method):
    """SimSiam on the training core: two perturbed views of ``batch`` patches per step, drawn from one
    numpy generator seeded with ``seed`` (its state goes into the checkpoints)."""

    name = "simsiam"

    def __init__(self, cfg: SimSiamConfig, volume: Any, patch: tuple[int, int, int], device: torch.device | None = None, rank: int = 0) -> None:
        torch.manual_seed(cfg.seed)  # the initial weights: the same on every worker
        torch.set_num_threads(max(1, cfg.threads))
        self.cfg, self.volume, self.patch = cfg, volume, patch
        self.rng = np.random.default_rng(cfg.seed if rank == 0 else [cfg.seed, rank])  # other patches on each worker
        self.device = device or _device(cfg.device)
        self.model = SimSiam(PatchEncoder(cfg.model), cfg.projector_hidden, cfg.projector_out, cfg.predictor_hidden).to(self.device)
        self.net = wrap_ddp(self.model, self.device)
        lr = cfg.lr * cfg.batch / 256 if cfg.optimizer == "sgd" else cfg.lr
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "adam":
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        else:
            raise ConfigError(f"optimizer must be sgd or adam, got {cfg.optimizer!r}")
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.steps)
        self._lr = lr
        self.model.train()

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        crops = sample_patches(self.volume, self.patch, self.cfg.batch, self.rng)
        v1 = np.stack([perturb(c, self.rng, self.cfg.perturbations) for c in crops])[:, None]
        v2 = np.stack([perturb(c, self.rng, self.cfg.perturbations) for c in crops])[:, None]
        return torch.from_numpy(v1), torch.from_numpy(v2)

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.net(batch[0].to(self.device), batch[1].to(self.device)), {}

    def before_step(self, step: int) -> None:
        self._lr = float(self.optimizer.param_groups[0]["lr"])  # the learning rate of this step, logged

    def after_step(self, step: int) -> None:
        self.sched.step()

    def learning_rate(self, step: int) -> float:
        return self._lr

    def modules(self) -> dict[str, nn.Module]:
        return {"simsiam": self.model}

    def describe(self) -> dict[str, Any]:
        return self.cfg.model_dump(mode="json", exclude={"out", "steps", "checkpoint_every", "budget", "threads", "device", "ray"})

    def state(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "sched": self.sched.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.sched.load_state_dict(state["sched"])

    def on_checkpoint(self, step: int, records: list[dict[str, Any]]) -> None:
        from engine.models.checkpoint import save_checkpoint

        out = Path(self.cfg.out)
        save_checkpoint(out / "encoder", self.model.encoder, self.cfg.model, {"kind": "patch_encoder", "step": step, "patch": list(self.patch)})
        _write_curve(out, [float(r["loss"]) for r in records if "loss" in r])


def train_simsiam(cfg: SimSiamConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train the patch encoder; write ``encoder/``, ``loss.json``, ``loss.png``; return a summary.

    Checkpoints go to ``OUT/checkpoints`` (every ``checkpoint_every`` steps); a second call continues
    from the newest one (``cfg.budget`` stops a run early, with a checkpoint: ``stopped: "budget"``).
    ``ray.num_workers > 0`` trains data-parallel on Ray Train (each worker draws its own patches)."""
    cfg, vol, patch = _prepare(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", cfg.to_yaml())
    t0 = time.perf_counter()
    if cfg.ray.num_workers:
        from engine.learn.distributed import run_workers
        from engine.learn.history import read_history

        run_workers("engine.learn.simsiam:_simsiam_worker", {"cfg": cfg.model_dump(mode="json"), "progress": progress}, cfg.ray, out / "ray")
        losses = [float(r["loss"]) for r in read_history(out / "history.jsonl") if "loss" in r]
        steps, stopped = len(losses), (None if len(losses) >= cfg.steps else "budget")
    else:
        result = _fit(cfg, vol, patch, progress)
        losses, steps, stopped = result.losses(), result.step, result.stopped
    seconds = time.perf_counter() - t0
    first, last = (losses[0], losses[-1]) if losses else (float("nan"), float("nan"))
    log.info("SimSiam: %d steps in %.1f s, loss %.3f -> %.3f", steps, seconds, first, last)
    return {"steps": steps, "seconds": seconds, "first_loss": first, "last_loss": last, "encoder": str(out / "encoder"), "stopped": stopped}


def _prepare(cfg: SimSiamConfig) -> tuple[SimSiamConfig, Any, tuple[int, int, int]]:
    """The checked config (patch and encoder resolved for the volume's voxel size), the volume, the patch."""
    from engine.storage import open_volume

    bad = [p for p in cfg.perturbations if p not in PERTURBATIONS]
    if bad or not cfg.perturbations:
        raise ConfigError(f"unknown perturbations {bad}", f"use some of {', '.join(PERTURBATIONS)}")
    vol = open_volume(cfg.volume)
    if len(vol.shape) != 3:
        raise StorageError(f"volume {cfg.volume} has shape {vol.shape}; SimSiam needs a single-channel (z, y, x) volume")
    from engine.select.patches import default_patch_and_stride

    default_patch, _ = default_patch_and_stride(vol.voxel_size)
    isotropic = default_patch[0] == default_patch[1]
    if cfg.patch is None:
        cfg = cfg.model_copy(update={"patch": default_patch})
    if isotropic and "anisotropic_stages" not in cfg.model.model_fields_set:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"anisotropic_stages": 0})})
        log.info("isotropic voxels %s: encoder with 3x3x3 convolutions and 2x2x2 pooling", vol.voxel_size)
    patch = cfg.patch or default_patch
    p3 = (int(patch[0]), int(patch[1]), int(patch[2]))
    probe = sample_patches(vol, p3, 16, np.random.default_rng(0))
    if all(float(p.min()) == float(p.max()) for p in probe):
        raise ConfigError(
            f"volume {cfg.volume} looks empty: 16 patches at random places each hold one constant value ({float(probe[0].flat[0]):g})",
            "give the raw EM volume (check the path); an encoder learns nothing from a constant image",
        )
    return cfg, vol, p3


def _fit(cfg: SimSiamConfig, vol: Any, patch: tuple[int, int, int], progress: bool, device: torch.device | None = None) -> LoopResult:
    """SimSiam on the training core in this process (one worker of a process group under Ray Train)."""
    method = SimSiamMethod(cfg, vol, patch, device, rank())
    opts = LoopOptions(steps=cfg.steps, output=Path(cfg.out), checkpoint_every=cfg.checkpoint_every, keep=1, progress=progress and rank() == 0,
                       clock=start(cfg.budget), is_main=rank() == 0)
    return fit(method, opts)


def _simsiam_worker(payload: dict[str, Any], rank: int, device: torch.device) -> dict[str, float]:
    """One worker of :func:`train_simsiam` on Ray Train."""
    cfg, vol, patch = _prepare(SimSiamConfig.model_validate(payload["cfg"]))
    result = _fit(cfg, vol, patch, bool(payload["progress"]), device)
    return {"step": result.step, **result.last}


def _write_curve(out: Path, losses: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    write_json_atomic(out / "loss.json", {"loss": losses}, indent=None)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.8)
    if len(losses) >= 20:
        w = max(5, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
        ax.plot(np.arange(w, len(losses) + 1), smooth, lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("SimSiam loss (2 - 2 cos)")
    ax.set_ylim(-2.05, 0.05) if min(losses) < 0 else None
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=100)
    plt.close(fig)


def load_encoder(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[PatchEncoder, ModelConfig, dict[str, Any]]:
    """A :class:`PatchEncoder` from a checkpoint of one (embed-train) or of a whole U-Net (its encoder)."""
    from safetensors.torch import load_file

    from engine.models.checkpoint import WEIGHTS, check_state, read_checkpoint_config

    cfg, extra = read_checkpoint_config(directory)
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise StorageError(f"checkpoint {directory} has no {WEIGHTS}", "use another checkpoint")
    try:
        state = load_file(str(path), device=str(device))
    except Exception as err:  # safetensors raises its own error type for corrupt files
        raise StorageError(f"checkpoint weights {path} are corrupt ({err})", "use another checkpoint") from err
    state = {k: v for k, v in state.items() if k.startswith("encoder.")}
    enc = PatchEncoder(cfg)
    check_state(enc, state, str(path))
    enc.load_state_dict(state, strict=True)
    return enc.to(device).eval(), cfg, extra
