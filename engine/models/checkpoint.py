"""Checkpoints as weights only: ``model.safetensors`` plus ``config.json`` (the model config and extras).

No pickled code is ever loaded: the weights are safetensors and the config is JSON, so a checkpoint
from elsewhere cannot run anything on load.

>>> import tempfile
>>> from engine.models.config import ModelConfig
>>> from engine.models.unet import build_model
>>> d = tempfile.mkdtemp()
>>> save_checkpoint(d, build_model(ModelConfig(filters=[4, 8])), ModelConfig(filters=[4, 8]), {"step": 3})
>>> model, cfg, extra = load_checkpoint(d)
>>> cfg.filters, extra["step"]
([4, 8], 3)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.config import parse_config
from engine.errors import ConfigError, StorageError
from engine.models.config import ModelConfig
from engine.models.unet import build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(directory: str | os.PathLike[str], model: nn.Module, model_config: ModelConfig, extra: dict[str, Any] | None = None) -> None:
    """Write ``model.safetensors`` and ``config.json`` (``{"model": ..., **extra}``) into ``directory``.

    Each file is written to a temporary name and renamed, so a reader never sees half a file; the
    weights go first, the config last (a checkpoint is complete once its config exists).
    """
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    module = getattr(model, "module", model)  # unwrap DistributedDataParallel
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    meta = {"model": model_config.model_dump(mode="json"), **(extra or {})}
    _atomic_write(d / WEIGHTS, lambda tmp: save_file(state, tmp))
    _atomic_write(d / CONFIG, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=1, default=str)))


def read_checkpoint_config(directory: str | os.PathLike[str]) -> tuple[ModelConfig, dict[str, Any]]:
    """The model config and the extras of a checkpoint, without loading the weights."""
    d = Path(directory)
    path = d / CONFIG
    if not path.is_file():
        raise StorageError(f"no checkpoint at {str(d)!r} ({CONFIG} is missing)", "point to a directory written by save_checkpoint")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise StorageError(f"checkpoint config {str(path)!r} is corrupt ({err})", "use another checkpoint") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise StorageError(f"checkpoint config {str(path)!r} has no 'model' section", "use a checkpoint written by save_checkpoint")
    try:
        cfg = parse_config(ModelConfig, meta.pop("model"), source=str(path))
    except ConfigError as err:
        raise ConfigError(f"{str(d)!r} is not a Connectile model checkpoint (its model config does not parse: {err.problem})", FIX_OTHER) from err
    return cfg, meta


#: the fix for a checkpoint that is not the model asked for
FIX_OTHER = "give a checkpoint written by connectile train (OUT/checkpoints/step-XXXXXX, or the run's train.checkpoint)"


def config_diff(saved: ModelConfig, wanted: ModelConfig) -> list[str]:
    """The model settings that differ, as ``key: saved vs wanted`` (empty when the configs are equal).

    >>> config_diff(ModelConfig(filters=[4, 8]), ModelConfig(filters=[4, 8, 16]))
    ['filters: [4, 8] vs [4, 8, 16]']
    """
    a, b = saved.model_dump(mode="json"), wanted.model_dump(mode="json")
    return [f"{k}: {a[k]} vs {b[k]}" for k in a if a[k] != b.get(k)]


def load_checkpoint(directory: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[nn.Module, ModelConfig, dict[str, Any]]:
    """Rebuild the model of a checkpoint, load its weights (strictly) and return ``(model, config, extra)``.

    The model is in eval mode on ``device``. A missing or corrupt checkpoint is a
    :class:`~engine.errors.StorageError`; weights that do not fit the config a :class:`~engine.errors.ConfigError`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    cfg, extra = read_checkpoint_config(d)
    if extra.get("kind") == "patch_encoder":
        raise ConfigError(f"checkpoint {str(d)!r} is a patch encoder (connectile embed-train), not a segmentation model", FIX_OTHER)
    path = d / WEIGHTS
    if not path.is_file():
        raise StorageError(f"checkpoint {str(d)!r} has no {WEIGHTS}", "use another checkpoint")
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise StorageError(f"checkpoint weights {str(path)!r} are corrupt ({err})", "use another checkpoint") from err
    model = build_model(cfg)
    check_state(model, state, str(path), fix=f"its {CONFIG} and {WEIGHTS} come from different models: {FIX_OTHER}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), cfg, extra


def check_state(model: nn.Module, state: dict[str, torch.Tensor], source: str, fix: str = "use the config.json written with these weights") -> None:
    """Raise a one-line :class:`ConfigError` (ending with ``fix``) if ``state`` does not fit ``model`` key by key and shape by shape."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
        raise ConfigError(f"weights in {source} do not match the model config: {', '.join(parts)}", fix)


def average_checkpoints(previous: str | os.PathLike[str], tuned: str | os.PathLike[str], share: float,
                        directory: str | os.PathLike[str]) -> str:
    """Write ``share * tuned + (1 - share) * previous`` (every floating-point weight and buffer; integer
    buffers such as batch-norm counters are the tuned model's) as a checkpoint in ``directory``, with
    ``tuned``'s config and other files (its optimizer state, so training can resume from it), and return
    its path. Weight averaging of a fine-tuned model with the model it started from (WiSE-FT, Wortsman
    et al. 2022) keeps most of what the fine-tuning gained and loses less where it went wrong.

    Written under a temporary name and renamed: a crash leaves no half checkpoint."""
    import shutil

    from safetensors.torch import load_file, save_file

    if not 0.0 < share <= 1.0:
        raise ConfigError(f"average share {share} is outside (0, 1]", "give a share of the fine-tuned weights above 0 and at most 1")
    old_cfg, _ = read_checkpoint_config(previous)
    new_cfg, _ = read_checkpoint_config(tuned)
    if diff := config_diff(old_cfg, new_cfg):
        raise ConfigError(f"cannot average {os.fspath(previous)!r} with {os.fspath(tuned)!r}: other models ({'; '.join(diff)})", FIX_OTHER)
    old, new = load_file(str(Path(previous) / WEIGHTS)), load_file(str(Path(tuned) / WEIGHTS))
    if old.keys() != new.keys():
        raise ConfigError(f"cannot average {os.fspath(previous)!r} with {os.fspath(tuned)!r}: their weights differ in names", FIX_OTHER)
    out = Path(directory)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(tuned, tmp)
    state = {k: (v * share + old[k] * (1.0 - share)).to(v.dtype) if v.is_floating_point() else v for k, v in new.items()}
    save_file(state, str(tmp / WEIGHTS))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return str(out)


def checkpoint_digest(directory: str | os.PathLike[str]) -> str:
    """A short hash of a checkpoint's files, so that resuming onto output of other weights is refused."""
    h = hashlib.sha256()
    d = Path(directory)
    for name in ("config.json", "model.safetensors"):
        p = d / name
        if p.is_file():
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]
