"""What a model needs around a window (torch-free): the context sections of a 2.5D model and the
default window of a checkpoint.

A 2.5D model (``dims: 2, context_slices: k``) predicts a section from it and its ``k`` neighbours on
each side, stacked as channels. A window of ``Z`` sections is therefore read with a halo of ``k``
sections before and after it; beyond the volume's first and last section the edge section is
repeated, as :func:`engine.models.unet.fold_sections` does in training and validation.

>>> from engine.models.config import ModelConfig
>>> cfg = ModelConfig(dims=2, context_slices=1, filters=[4, 8, 8])
>>> halo(cfg), replicate_axes(cfg)
((1, 0, 0), (True, False, False))
>>> checkpoint_window(cfg, {"train": {"crop": [3, 100, 100]}})
(1, 100, 100)
>>> checkpoint_window(ModelConfig(filters=[4, 8, 8], anisotropic_stages=1), {"train": {"crop": [18, 160, 160]}})
(18, 160, 160)
>>> checkpoint_window(ModelConfig(filters=[4, 8, 8], anisotropic_stages=0), {"train": {"crop": [18, 150, 160]}})
(16, 148, 160)
>>> checkpoint_window(ModelConfig(filters=[4, 8, 8], anisotropic_stages=1), {"step": 3})  # no training crop recorded
(16, 128, 128)
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.models.config import ModelConfig

log = logging.getLogger(__name__)

#: The window (z, y, x) of a checkpoint that does not record its training crop.
DEFAULT_WINDOW: tuple[int, int, int] = (16, 128, 128)


def section_context(cfg: ModelConfig) -> int:
    """Neighbouring sections on each side a model reads with each section (0 unless 2.5D)."""
    return int(cfg.context_slices) if cfg.dims == 2 else 0


def halo(cfg: ModelConfig) -> tuple[int, int, int]:
    """Voxels read around each window on each side, per axis (z, y, x)."""
    return (section_context(cfg), 0, 0)


def replicate_axes(cfg: ModelConfig) -> tuple[bool, bool, bool]:
    """Axes along which the halo repeats the volume's edge planes beyond the volume (zero elsewhere):
    those with a halo."""
    z, y, x = halo(cfg)
    return (z > 0, y > 0, x > 0)


def checkpoint_window(cfg: ModelConfig, meta: dict[str, Any]) -> tuple[int, int, int]:
    """The window a checkpoint predicts with by default: its training crop (``meta["train"]["crop"]``,
    written by ``connectile train``) less the context sections of a 2.5D model (the sections that got a
    loss), rounded down to multiples of the model's downsampling; :data:`DEFAULT_WINDOW` (rounded alike)
    for a checkpoint without a training crop."""
    train = meta.get("train")
    crop = train.get("crop") if isinstance(train, dict) else None
    if isinstance(crop, (list, tuple)) and len(crop) == 3:
        k = section_context(cfg)
        want = (max(1, int(crop[0]) - 2 * k), int(crop[1]), int(crop[2]))
    else:
        want = DEFAULT_WINDOW
        log.info("the checkpoint records no training crop: window %s", want)
    div = cfg.divisor()
    window = (want[0], *(max(d, w // d * d) for w, d in zip(want[1:], div[1:], strict=True)))
    if cfg.dims == 3:  # a 2D model takes any number of sections
        window = (max(div[0], want[0] // div[0] * div[0]), window[1], window[2])
    return (int(window[0]), int(window[1]), int(window[2]))
