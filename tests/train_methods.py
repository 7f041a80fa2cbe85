"""Tiny runs of every training method through its public entry point, shared by tests/test_train_core.py.

Each ``run_<method>(root, **kw)`` trains a few steps on small synthetic data and returns
``{"losses": [...], "weights": {name: [sum, sum |x|, x0, x1, x2]}}``. ``python tests/train_methods.py OUT.json``
records the numbers of the code at hand: ``tests/data/train_core_reference.json`` holds those of the six
hand-written loops before they moved onto :mod:`engine.learn.core` (same seeds -> same numbers).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_train import _cfg

METHODS = ("segmentation", "semi", "simsiam", "simclr", "contrastive", "vae", "triplet")
REFERENCE = Path(__file__).resolve().parent / "data" / "train_core_reference.json"


def summary(state: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Per float tensor: sum, sum of magnitudes and its first three values."""
    out = {}
    for k, v in state.items():
        if not torch.is_floating_point(v):
            continue
        f = v.detach().double().flatten()
        out[k] = [float(f.sum()), float(f.abs().sum()), *[float(x) for x in f[:3]]]
    return out


def _history_losses(folder: Path) -> list[float]:
    from engine.learn.history import read_history

    return [float(r["loss"]) for r in read_history(folder / "history.jsonl") if "loss" in r]


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint ({} where a run stopped before its first checkpoint)."""
    from safetensors.torch import load_file

    return load_file(str(path)) if path.is_file() else {}


def _newest(out: Path) -> Path:
    from engine.learn.checkpoints import latest_checkpoint

    found = latest_checkpoint(out)
    return found if found is not None else out / "none"


def seg_cfg(root: Path, **over: Any) -> Any:
    return _cfg(root, steps=4, checkpoint_every=2, **over)


def semi_cfg(root: Path, **over: Any) -> Any:
    from engine.config import parse_config
    from engine.learn import TrainConfig

    base = seg_cfg(root).model_dump(mode="json")
    base["data"]["unlabelled"] = [{"raw": base["data"]["raw"], "roi": {"start": [4, 0, 0], "stop": [12, 48, 48]}}]
    base["semi"] = {"box": [12, 20], "teacher": "ema", "ema_decay": 0.5, "warmup_steps": 1}
    base.update(over)
    return parse_config(TrainConfig, base)


def contrastive_cfg(root: Path, **over: Any) -> Any:
    from engine.config import parse_config
    from engine.learn import TrainConfig

    base = seg_cfg(root).model_dump(mode="json")
    base["data"]["unlabelled"] = [{"raw": base["data"]["raw"]}]
    base["contrastive"] = {"steps": 3, "stride": [1, 2, 2], "block": [2, 16, 16], "simclr": {"steps": 2, "batch_size": 2, "hidden": 16, "dim": 8}}
    base.update(over)
    return parse_config(TrainConfig, base)


def run_segmentation(root: Path, **over: Any) -> dict[str, Any]:
    from engine.learn import train

    cfg = seg_cfg(root, **over)
    train(cfg)
    out = Path(cfg.output)
    return {"losses": _history_losses(out), "weights": summary(_safetensors(_newest(out) / "model.safetensors"))}


def run_semi(root: Path, **over: Any) -> dict[str, Any]:
    from engine.learn import train

    cfg = semi_cfg(root, **over)
    train(cfg)
    out = Path(cfg.output)
    return {"losses": _history_losses(out), "weights": summary(_safetensors(_newest(out) / "model.safetensors"))}


def embed_volume(root: Path) -> str:
    from scipy import ndimage as ndi

    from engine.storage import create_volume

    rng = np.random.default_rng(0)
    vol = ndi.gaussian_filter(rng.normal(size=(8, 48, 48)), (1, 2, 2))
    vol = np.clip((vol - vol.min()) / (vol.max() - vol.min()) * 255, 0, 255).astype(np.uint8)
    url = str(root / "embed.zarr" / "raw")
    v = create_volume(url, vol.shape, "uint8", (8, 32, 32), voxel_size=(40, 4, 4))
    v.write(v.box, vol)
    return url


def simsiam_cfg(root: Path, **over: Any) -> Any:
    from engine.learn.simsiam import SimSiamConfig
    from engine.models.config import ModelConfig

    kw: dict[str, Any] = {"volume": embed_volume(root), "out": str(root / "simsiam"), "patch": (4, 16, 16), "steps": 4, "batch": 4,
                          "model": ModelConfig(filters=[4, 8], anisotropic_stages=1, norm="batch"), "checkpoint_every": 2,
                          "projector_hidden": 16, "predictor_hidden": 8, "projector_out": 8, "threads": 1, "device": "cpu"}
    return SimSiamConfig(**{**kw, **over})


def run_simsiam(root: Path, **over: Any) -> dict[str, Any]:
    from engine.learn.simsiam import train_simsiam

    cfg = simsiam_cfg(root, **over)
    train_simsiam(cfg, progress=False)
    out = Path(cfg.out)
    losses = json.loads((out / "loss.json").read_text())["loss"] if (out / "loss.json").is_file() else []
    return {"losses": losses, "weights": summary(_safetensors(out / "encoder" / "model.safetensors"))}


def simclr_parts(seed: int = 0) -> tuple[Any, Any, Any, Any]:
    from engine.learn.config import AugmentConfig, SimCLRConfig
    from engine.models import ModelConfig, build_model

    torch.manual_seed(seed)
    unet = build_model(ModelConfig(filters=[4, 8], anisotropic_stages=1))

    def draw(rng: np.random.Generator) -> np.ndarray:
        return rng.random((4, 32, 32), dtype=np.float32)

    return unet, draw, SimCLRConfig(steps=4, batch_size=2, hidden=16, dim=8), AugmentConfig(elastic=0.0)


def run_simclr(root: Path, **kw: Any) -> dict[str, Any]:
    """``kw``: the training core's LoopOptions (output, checkpoint_every, clock...), if any."""
    from engine.learn.simclr import pretrain_simclr

    unet, draw, cfg, aug = simclr_parts()
    extra: dict[str, Any] = {}
    if kw:
        from engine.learn.core import LoopOptions

        extra["loop"] = LoopOptions(steps=cfg.steps, **kw)
    losses = pretrain_simclr(unet, draw, cfg, aug, seed=3, progress=False, **extra)
    return {"losses": losses, "weights": summary(unet.state_dict())}


def run_contrastive(root: Path, **over: Any) -> dict[str, Any]:
    from engine.learn.contrastive import pretrain

    cfg = contrastive_cfg(root, **over)
    out = pretrain(cfg)
    record = json.loads((out / "loss.json").read_text())
    return {"losses": record["simclr"] + record["contrastive"], "weights": summary(_safetensors(out / "model.safetensors"))}


def vae_parts() -> tuple[np.ndarray, Any]:
    from engine.active.features import VaeConfig

    crops = np.random.default_rng(1).integers(0, 256, (40, 24, 24), dtype=np.uint8)
    return crops, VaeConfig(latent_dim=4, hidden_dims=(8, 16), input_size=16, epochs=2, batch_size=8, seed=2)


def run_vae(root: Path, output: Path | None = None, **over: Any) -> dict[str, Any]:
    """The VAE's losses are taken from vae_loss itself (train_vae returns only the model); with
    ``output``, :func:`~engine.active.features.fit_vae` (checkpoints, resume) and the core's records."""
    import engine.models.vae as vae_module
    from engine.active.features import fit_vae, train_vae

    crops, cfg = vae_parts()
    cfg = cfg.model_copy(update=over)
    if output is not None:
        model, result = fit_vae(crops, cfg, "cpu", False, output)
        return {"losses": result.losses(), "weights": summary(model.state_dict()), "stopped": result.stopped}
    losses: list[float] = []
    orig = vae_module.vae_loss

    def recording(*a: Any, **k: Any) -> Any:
        out = orig(*a, **k)
        losses.append(float(out[0].detach()))
        return out

    vae_module.vae_loss = recording  # type: ignore[assignment]
    try:
        model = train_vae(crops, cfg, device="cpu")
    finally:
        vae_module.vae_loss = orig  # type: ignore[assignment]
    return {"losses": losses, "weights": summary(model.state_dict())}


def triplet_parts() -> tuple[Any, np.ndarray, np.ndarray, Any]:
    from engine.active.triplet import TripletConfig
    from engine.models.vae import VAE

    torch.manual_seed(5)
    model = VAE(size=16, latent_dim=4, hidden_dims=(8, 16))
    crops = np.random.default_rng(4).integers(0, 256, (20, 16, 16), dtype=np.uint8)
    accepted = np.arange(20) % 3 == 0
    return model, crops, accepted, TripletConfig(steps=5, batch_size=6, lr=1e-3, seed=7)


def run_triplet(root: Path, output: Path | None = None, **over: Any) -> dict[str, Any]:
    from engine.active.triplet import triplet_finetune

    model, crops, accepted, cfg = triplet_parts()
    losses = triplet_finetune(model, crops, accepted, cfg.model_copy(update=over), **({"output": output} if output else {}))
    return {"losses": losses, "weights": summary(model.state_dict())}


def run(method: str, root: Path, **kw: Any) -> dict[str, Any]:
    """``kw`` go to ``run_<method>`` (config overrides; ``output`` for VAE and triplet)."""
    torch.set_num_threads(1)
    root.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = globals()[f"run_{method}"](root, **kw)
    return result


if __name__ == "__main__":
    import tempfile

    record = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in METHODS:
            record[m] = run(m, Path(tmp) / m)
            print(m, record[m]["losses"], flush=True)
    Path(sys.argv[1]).write_text(json.dumps(record, indent=1))
