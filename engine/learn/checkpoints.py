"""Training checkpoints: ``OUT/checkpoints/step-XXXXXX/`` holds the weights and config (via
:func:`engine.models.save_checkpoint`, the resolved TrainConfig in its extras) and ``optimizer.pt``
(optimizer state, step, elapsed time: tensors and plain Python values only, so ``torch.load(...,
weights_only=True)`` reads it). A checkpoint is written into a temporary directory and renamed, so a
directory named ``step-*`` is always complete, and an older checkpoint is deleted only once the new
one is in place.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import ConfigError, StorageError
from engine.models import ModelConfig, save_checkpoint
from engine.models.checkpoint import check_state
from engine.storage.safety import remove

log = logging.getLogger(__name__)

OPTIMIZER = "optimizer.pt"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
_OLD_DIR = re.compile(r"^\.old-(step-\d{6,})-\d+$")


def checkpoint_dir(output: str | os.PathLike[str], step: int) -> Path:
    """``OUT/checkpoints/step-XXXXXX``."""
    return Path(output) / "checkpoints" / f"step-{step:06d}"


def list_checkpoints(output: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, by step (ascending)."""
    root = Path(output) / "checkpoints"
    if not root.is_dir():
        return []
    _restore_set_aside(root)
    found = []
    for d in root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and (d / "config.json").is_file() and (d / OPTIMIZER).is_file():
            found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(output: str | os.PathLike[str]) -> Path | None:
    """The checkpoint of the highest step, or None."""
    found = list_checkpoints(output)
    return found[-1][1] if found else None


def starting_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint that ``init`` names: a checkpoint folder (it holds ``model.safetensors``) or a training output
    (its newest checkpoint); anything else is refused in one line."""
    p = Path(path)
    if (p / "model.safetensors").is_file():
        return p
    found = latest_checkpoint(p)
    if found is None:
        raise ConfigError(f"init {str(p)!r} is neither a checkpoint (no model.safetensors) nor a training output with one",
                          "point init to a checkpoint folder (OUT/checkpoints/step-N) or to a finished training's output folder")
    return found


def write_training_checkpoint(
    output: str | os.PathLike[str],
    step: int,
    model: nn.Module,
    model_config: ModelConfig,
    optimizer: torch.optim.Optimizer,
    extra: dict[str, Any],
    keep: int = 3,
) -> Path:
    """Write the checkpoint of a segmentation model at ``step`` atomically (see :func:`write_checkpoint`)."""

    def write(tmp: Path) -> None:
        save_checkpoint(tmp, model, model_config, {"step": step, **extra})
        torch.save({"optimizer": optimizer.state_dict(), "step": step, "elapsed": float(extra.get("elapsed", 0.0))}, tmp / OPTIMIZER)

    return write_checkpoint(output, step, write, keep)


def write_checkpoint(output: str | os.PathLike[str], step: int, write: Callable[[Path], None], keep: int = 3) -> Path:
    """Write the checkpoint of ``step`` atomically (``write(folder)`` fills a temporary folder; it must
    write ``config.json`` and ``optimizer.pt``) and keep only the newest ``keep`` ones.

    The new checkpoint is complete in a temporary folder before anything else moves. A checkpoint of
    the same step already there is set aside (``.old-step-…``), the new one renamed into place, and
    only then the old one deleted: at every instant a complete checkpoint of ``step`` exists on disk
    (:func:`list_checkpoints` restores a set-aside one left by a crash between the two renames)."""
    final = checkpoint_dir(output, step)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        remove(tmp, "checkpoint")
    tmp.mkdir(parents=True)
    write(tmp)
    _fsync_tree(tmp)
    old = final.parent / f".old-{final.name}-{os.getpid()}"
    if final.exists():
        if old.exists():
            remove(old, "checkpoint")
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        remove(old, "checkpoint")
    for _, stale in list_checkpoints(output)[:-keep]:
        remove(stale, "checkpoint")
    log.info("checkpoint %s", final)
    return final


def _fsync_tree(folder: Path) -> None:
    """Flush a checkpoint's files before it is renamed into place (a rename must not publish data
    still in the page cache)."""
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def _restore_set_aside(root: Path) -> None:
    """Put back a checkpoint that a crash left set aside (``.old-step-N-PID`` without ``step-N``)."""
    for d in root.iterdir():
        m = _OLD_DIR.match(d.name)
        if m and not (root / m.group(1)).exists() and (d / "config.json").is_file() and (d / OPTIMIZER).is_file():
            log.warning("restoring checkpoint %s set aside by an interrupted save", d)
            os.replace(d, root / m.group(1))


def read_training_state(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, model_config: ModelConfig | None = None
) -> dict[str, Any]:
    """Load weights and optimizer state of a training checkpoint into ``model`` and ``optimizer``
    (see :func:`load_weights`); returns ``{"step", "elapsed"}``."""
    load_weights(directory, model, device, model_config)
    opt = read_optimizer_file(directory, device)
    optimizer.load_state_dict(opt["optimizer"])
    return {"step": int(opt["step"]), "elapsed": float(opt.get("elapsed", 0.0))}


def read_optimizer_file(directory: Path, device: torch.device) -> dict[str, Any]:
    """The contents of a checkpoint's ``optimizer.pt`` (optimizer state, step, elapsed time, ...)."""
    try:
        opt: dict[str, Any] = torch.load(directory / OPTIMIZER, map_location=device, weights_only=True)
    except _UNREADABLE as err:
        raise _unreadable(directory, err) from err
    return opt


def load_weights(directory: Path, model: nn.Module, device: torch.device, model_config: ModelConfig | None = None, *, init: bool = False) -> None:
    """Load the weights of a segmentation checkpoint into ``model`` (or the module DDP wraps).

    With ``model_config`` (the model the run asks for), a checkpoint of another model is refused with
    one line that names the settings that differ and the way out (restore them, or start over; with
    ``init``, the checkpoint is a run's starting weights: give the model it was trained with).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if model_config is not None:
        from engine.models.checkpoint import config_diff, read_checkpoint_config

        saved, _ = read_checkpoint_config(directory)
        diff = config_diff(saved, model_config)
        if diff:
            verb, fix = (("start from", "give the run the model settings the checkpoint was trained with, or leave out init") if init else
                         ("resume from", "restore the model settings it was trained with, or start over (connectile train --no-resume, or another output folder)"))
            raise ConfigError(f"cannot {verb} {directory}: it holds another model (checkpoint vs config: {', '.join(diff)})", fix)
    try:
        state = load_file(str(directory / "model.safetensors"), device=str(device))
    except (SafetensorError, *_UNREADABLE) as err:  # any unreadable file is one message
        raise _unreadable(directory, err) from err
    module = getattr(model, "module", model)
    check_state(module, state, str(directory), fix=RESTART)
    module.load_state_dict(state, strict=True)


RESTART = "start over (connectile train --no-resume, or another output folder)"
_UNREADABLE = (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError)


def _unreadable(directory: Path, err: BaseException) -> StorageError:
    first = str(err).splitlines()[0] if str(err) else ""
    return StorageError(f"checkpoint {directory} cannot be read ({type(err).__name__}: {first})", "delete it to resume from the one before, or use --no-resume")
