"""The two feature streams: a mask VAE (E_s) trained on the aligned ROI masks and an image VAE (E_u)
trained on image patches sampled uniformly over the whole volume; the feature of a ROI is the VAE mean
of its aligned mask (E_s) and of its aligned image crop (E_u).

:func:`compute_features` does both for a run directory and writes::

    RUN/features/mask.npy, image.npy      (N, latent) float32, row i is roi_id i
    RUN/features/mask_vae.pt, image_vae.pt
    RUN/features/features.json            the config and what it was computed from (for resume)
    RUN/features/train-<stream>-<key>/    the training core's run of each VAE (history, TensorBoard;
                                          checkpoints until the features are done: a stopped run resumes)

After a reviewed round, :mod:`engine.active.triplet` fine-tunes E_u and writes a new ``image.npy`` and
``image_vae.pt`` into that round's folder; :func:`load_features` picks the latest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from engine.active.rois import existing_rounds, read_crops, read_index, read_meta, round_dir
from engine.config import Config
from engine.errors import ConfigError, StorageError
from engine.learn.budget import BudgetSpent, TimeBudget
from engine.storage.safety import remove, write_json_atomic, write_npy_atomic

if TYPE_CHECKING:
    import torch

    from engine.models.vae import VAE

log = logging.getLogger(__name__)

PAPER_HIDDEN = (32, 64, 128, 256, 256, 512)


class VaeConfig(Config):
    """One VAE and how it is trained."""

    latent_dim: int = Field(default=20, ge=1)
    hidden_dims: tuple[int, ...] = PAPER_HIDDEN
    input_size: int = Field(default=128, ge=8, description="crops are resized (area averaging) to this size first")
    epochs: int = Field(default=30, ge=0)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    kld_weight: float = Field(default=1e-4, ge=0)
    seed: int = 0
    budget: TimeBudget | None = Field(default=None, description="stop training (with a checkpoint where it keeps one) once this much time is used")


class FeatureConfig(Config):
    """Both streams. Defaults follow the paper: latent 20 for masks, 1000 for images."""

    mask: VaeConfig = Field(default_factory=lambda: VaeConfig(latent_dim=20))
    image: VaeConfig = Field(default_factory=lambda: VaeConfig(latent_dim=1000))
    image_patches: int = Field(default=10000, ge=1, description="patches sampled uniformly over the volume to train E_u")
    device: Literal["auto", "cpu", "cuda"] = "auto"


def pick_device(device: str = "auto") -> torch.device:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but no GPU is visible", "use device: auto or cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def to_tensor(crops: np.ndarray, size: int) -> torch.Tensor:
    """uint8 crops (n, S, S) -> float tensor (n, 1, size, size) in [0, 1] (value / 255; area averaging
    to shrink). Masks are passed as 0/255 (see :func:`mask_crops`)."""
    import torch
    from torch.nn import functional as F

    x = torch.from_numpy(np.ascontiguousarray(crops)).float().unsqueeze(1)
    if crops.dtype == np.uint8:
        x = x / 255.0
    if x.shape[-1] != size or x.shape[-2] != size:
        mode = "area" if x.shape[-1] > size else "bilinear"
        x = F.interpolate(x, size=(size, size), mode=mode) if mode == "area" else F.interpolate(x, size=(size, size), mode=mode, align_corners=False)
    return x


def train_vae(crops: np.ndarray, cfg: VaeConfig, device: str = "auto", progress: bool = False) -> VAE:
    """Train a VAE on ``crops`` ((n, S, S) uint8, read as value / 255) and return it (eval mode).

    In memory only; ``cfg.budget`` stops it early (see :func:`fit_vae` for checkpoints and resume)."""
    return fit_vae(crops, cfg, device, progress)[0]


def fit_vae(crops: np.ndarray, cfg: VaeConfig, device: str = "auto", progress: bool = False, output: Path | None = None) -> tuple[VAE, Any]:
    """:func:`train_vae` on the training core (:mod:`engine.learn.core`), with checkpoints (each epoch)
    and resume in ``output`` where given; returns the model and the core's :class:`~engine.learn.core.LoopResult`."""
    from engine.active.training import VaeMethod
    from engine.learn.budget import start
    from engine.learn.core import LoopOptions, fit

    if crops.ndim != 3 or crops.shape[0] == 0:
        raise ConfigError(f"a VAE needs a stack of 2D crops, got shape {crops.shape}")
    method = VaeMethod(to_tensor(crops, cfg.input_size), cfg, pick_device(device))
    opts = LoopOptions(steps=cfg.epochs * method.per_epoch, output=output, checkpoint_every=method.per_epoch, keep=1, progress=progress, clock=start(cfg.budget))
    result = fit(method, opts)
    losses = result.losses()[-method.per_epoch :]
    last = float(np.mean(losses)) if losses else float("nan")
    log.info("VAE latent %d trained on %d crops for %d epochs, last loss %.4f", cfg.latent_dim, crops.shape[0], result.step // method.per_epoch, last)
    method.model.eval()
    return method.model, result


def encode(model: VAE, crops: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The VAE means of ``crops`` ((n, S, S) uint8), (n, latent) float32."""
    import torch

    dev = next(model.parameters()).device
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, crops.shape[0], batch_size):
            x = to_tensor(crops[i : i + batch_size], model.size).to(dev)
            out.append(model.features(x).cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, model.latent_dim), np.float32)


def save_vae(model: VAE, path: str | os.PathLike[str]) -> None:
    import torch

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    torch.save({"config": model.config(), "state": {k: v.cpu() for k, v in model.state_dict().items()}}, tmp)
    os.replace(tmp, p)


def load_vae(path: str | os.PathLike[str], device: str = "auto") -> VAE:
    import torch

    from engine.models.vae import VAE

    if not Path(path).exists():
        raise StorageError(f"no VAE checkpoint at {path}", "compute the features first (connectile query computes them)")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    cfg = blob["config"]
    model = VAE(size=cfg["size"], latent_dim=cfg["latent_dim"], hidden_dims=cfg["hidden_dims"], in_channels=cfg["in_channels"])
    model.load_state_dict(blob["state"])
    return model.to(pick_device(device)).eval()


def sample_patches(image_url: str, n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` patches of ``size x size`` pixels at positions drawn uniformly over the volume (z, then a
    window that fits in y and x; volumes smaller than ``size`` are padded with 0). uint8."""
    from engine.active.rois import to_uint8
    from engine.geometry import Box
    from engine.storage import open_volume

    vol = open_volume(image_url)
    zs, ys, xs = vol.spatial_shape
    rng = np.random.default_rng(seed)
    z = rng.integers(0, zs, n)
    y = rng.integers(0, max(1, ys - size + 1), n)
    x = rng.integers(0, max(1, xs - size + 1), n)
    out = np.zeros((n, size, size), np.uint8)
    batch = 256
    for i in range(0, n, batch):
        boxes = [Box((int(z[j]), int(y[j]), int(x[j])), (int(z[j]) + 1, min(ys, int(y[j]) + size), min(xs, int(x[j]) + size))) for j in range(i, min(n, i + batch))]
        futures = [vol.read_async(b) for b in boxes]
        for j, (b, f) in enumerate(zip(boxes, futures, strict=True)):
            data = to_uint8(np.asarray(f.result()))[0]
            out[i + j, : b.shape[1], : b.shape[2]] = data
    return out


def mask_crops(run_dir: str | os.PathLike[str], roi_ids: np.ndarray | None = None) -> np.ndarray:
    """The aligned masks as 0/255 uint8 (the VAE input scale)."""
    return (read_crops(run_dir, "mask", roi_ids) > 0).astype(np.uint8) * np.uint8(255)


def features_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / "features"


def compute_features(run_dir: str | os.PathLike[str], cfg: FeatureConfig | None = None, *, overwrite: bool = False, progress: bool = True) -> dict[str, np.ndarray]:
    """Train E_s on the ROI masks and E_u on patches of the whole image volume, encode every ROI,
    and save both (see the module docstring). Returns ``{"mask": ..., "image": ...}``. A second call
    with the same config and ROIs loads the saved features."""
    cfg = cfg or FeatureConfig()
    out = features_dir(run_dir)
    meta = read_meta(run_dir)
    index = read_index(run_dir)
    params = {"config": cfg.model_dump(mode="json", exclude={"mask": {"budget"}, "image": {"budget"}}), "rois": meta["params"]}  # a budget changes no result
    done = out / "features.json"
    if done.exists() and not overwrite:
        saved = json.loads(done.read_text())
        if saved.get("params") == json.loads(json.dumps(params)):
            return {"mask": np.load(out / "mask.npy"), "image": np.load(out / "image.npy")}
        log.info("features of %s were made with other parameters: computing them again", run_dir)
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    done.unlink(missing_ok=True)  # the arrays below are replaced: no marker of other ones may stay beside them
    masks = mask_crops(run_dir)
    images = read_crops(run_dir, "image")
    if masks.shape[0] != index["roi_id"].size:
        raise StorageError(f"{run_dir} holds {masks.shape[0]} crops but {index['roi_id'].size} index rows", "extract the ROIs again with --overwrite")
    key = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]
    training = {k: out / f"train-{k}-{key}" for k in ("mask", "image")}  # checkpoints of these parameters only
    e_s = _train_stream(masks, cfg.mask, cfg.device, progress, training["mask"])
    f_mask = encode(e_s, masks)
    patches = sample_patches(meta["params"]["image"], cfg.image_patches, masks.shape[-1], seed=cfg.image.seed)
    e_u = _train_stream(patches, cfg.image, cfg.device, progress, training["image"])
    f_image = encode(e_u, images)
    save_vae(e_s, out / "mask_vae.pt")
    save_vae(e_u, out / "image_vae.pt")
    write_npy_atomic(out / "mask.npy", f_mask)
    write_npy_atomic(out / "image.npy", f_image)
    write_json_atomic(done, {"params": params, "seconds": time.perf_counter() - t0})
    for folder in training.values():
        remove(folder / "checkpoints", "run-files")  # history and TensorBoard stay
    log.info("features of %d ROIs: mask %s, image %s in %.1f s", f_mask.shape[0], f_mask.shape[1], f_image.shape[1], time.perf_counter() - t0)
    return {"mask": f_mask, "image": f_image}


def _train_stream(crops: np.ndarray, cfg: VaeConfig, device: str, progress: bool, output: Path) -> VAE:
    """One VAE of :func:`compute_features`, resumable in ``output``; a time budget that stops it raises."""
    model, result = fit_vae(crops, cfg, device, progress, output)
    if result.stopped:
        raise BudgetSpent(f"VAE training (latent {cfg.latent_dim}) stopped at its time budget after {result.step} steps; checkpoint in {output}",
                          "run again to continue from it, or raise the budget's seconds")
    return model


def latest_image_stream(run_dir: str | os.PathLike[str], before_round: int | None = None) -> tuple[Path, int]:
    """The folder holding the newest image features (a round folder after triplet tuning, else
    ``RUN/features``) for rounds before ``before_round``, and that round's number (0: none)."""
    for k in reversed(existing_rounds(run_dir)):
        if before_round is not None and k >= before_round:
            continue
        d = round_dir(run_dir, k)
        if (d / "image.npy").exists() and (d / "image_vae.pt").exists():
            return d, k
    return features_dir(run_dir), 0


def load_features(run_dir: str | os.PathLike[str], before_round: int | None = None) -> dict[str, Any]:
    """``mask`` and ``image`` features (the newest image stream, see :func:`latest_image_stream`)."""
    fd = features_dir(run_dir)
    if not (fd / "mask.npy").exists():
        raise StorageError(f"no features in {fd}", "compute them first (connectile query does it when they are missing)")
    d, k = latest_image_stream(run_dir, before_round)
    return {"mask": np.load(fd / "mask.npy"), "image": np.load(d / "image.npy"), "image_round": k}
