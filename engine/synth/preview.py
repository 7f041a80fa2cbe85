"""A PNG preview of a synthetic volume: raw and labels in an xy section and an xz section.

>>> # save_preview("out.zarr", "preview.png")   # after `connectile synth out.zarr ...`
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from engine.errors import StorageError
from engine.geometry import Box
from engine.storage import open_volume

log = logging.getLogger(__name__)

_WINDOW = (128, 512, 512)


def _colours(labels: np.ndarray, seed: int = 7) -> np.ndarray:
    """A random RGB colour per label id (0 stays black), shape ``labels.shape + (3,)``."""
    from engine.synth.fields import uniform

    ids, inverse = np.unique(labels, return_inverse=True)
    rgb = np.stack([uniform(seed, k, ids.astype(np.int64)) for k in range(3)], -1) * 0.8 + 0.2
    rgb[ids == 0] = 0.0
    return np.asarray(rgb[inverse.reshape(labels.shape)])


def _overlay(raw: np.ndarray, neurons: np.ndarray, mito: np.ndarray, synapses: np.ndarray) -> np.ndarray:
    grey = np.repeat((raw.astype(np.float64) / 255.0)[..., None], 3, -1)
    out = 0.6 * grey + 0.4 * _colours(neurons)
    edge = np.zeros(neurons.shape, bool)
    edge[:-1] |= neurons[:-1] != neurons[1:]
    edge[:, :-1] |= neurons[:, :-1] != neurons[:, 1:]
    out[edge] = 0.15
    out[mito != 0] = 0.35 * grey[mito != 0] + 0.65 * np.array([0.1, 0.9, 0.9])
    out[synapses == 1] = np.array([1.0, 0.2, 0.1])
    out[synapses == 2] = np.array([0.2, 0.3, 1.0])
    return np.clip(out, 0.0, 1.0)


def save_preview(volume_group: str | os.PathLike[str], png_path: str | os.PathLike[str], z: int | None = None, y: int | None = None) -> None:
    """Save a PNG of ``raw`` with ``neurons``/``mito``/``synapses`` overlays from the group written by
    :func:`engine.synth.synthesize`: an xy section (by default the one with the most synapse voxels
    near the middle of the volume) and an xz section, drawn at their physical aspect ratio. At most
    a 128 x 512 x 512 window around the middle is read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    group = str(volume_group).rstrip("/")
    vols: dict[str, Any] = {}
    for name in ("raw", "neurons", "mito", "synapses"):
        vols[name] = open_volume(f"{group}/{name}")
    shape = vols["raw"].spatial_shape
    start = [max(0, (s - w) // 2) for s, w in zip(shape, _WINDOW, strict=True)]
    window = Box.from_shape([min(s, w) for s, w in zip(shape, _WINDOW, strict=True)], start)
    data = {name: v.read(window) for name, v in vols.items()}
    if z is None:
        counts = (data["synapses"] != 0).sum(axis=(1, 2))
        z = int(np.argmax(counts)) if counts.any() else window.shape[0] // 2
    else:
        z -= window.start[0]
    if y is None:
        y = window.shape[1] // 2
    else:
        y -= window.start[1]
    if not (0 <= z < window.shape[0] and 0 <= y < window.shape[1]):
        raise StorageError(f"section z={z}, row y={y} is outside the previewed window {window}", "pick z and y inside the volume's middle")
    vz, vy, vx = vols["raw"].voxel_size
    fig, axes = plt.subplots(2, 2, figsize=(12, 6 + 6 * window.shape[0] * vz / (window.shape[2] * vx)), height_ratios=[window.shape[1] * vy, window.shape[0] * vz])
    xy = {k: v[z] for k, v in data.items()}
    xz = {k: v[:, y] for k, v in data.items()}
    aspect = vz / vx
    axes[0, 0].imshow(xy["raw"], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    axes[0, 1].imshow(_overlay(xy["raw"], xy["neurons"], xy["mito"], xy["synapses"]), interpolation="nearest")
    axes[1, 0].imshow(xz["raw"], cmap="gray", vmin=0, vmax=255, aspect=aspect, interpolation="nearest")
    axes[1, 1].imshow(_overlay(xz["raw"], xz["neurons"], xz["mito"], xz["synapses"]), aspect=aspect, interpolation="nearest")
    zg, yg = z + window.start[0], y + window.start[1]
    axes[0, 0].set_title(f"raw, xy section z={zg} ({vy:g} nm pixels)")
    axes[0, 1].set_title("neurons (colours), mitochondria (cyan), synapses pre (red) / post (blue)")
    axes[1, 0].set_title(f"raw, xz section y={yg} ({vz:g} nm sections)")
    axes[1, 1].set_title("labels, xz section")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].axhline(y, color="yellow", lw=0.6, alpha=0.6)
    fig.tight_layout()
    fig.savefig(os.fspath(png_path), dpi=90)
    plt.close(fig)
    log.info("saved preview of %s (z=%s, y=%s) to %s", group, zg, yg, png_path)
