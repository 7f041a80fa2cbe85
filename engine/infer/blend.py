"""Blended sliding-window inference of one box, with accumulators the size of that box.

For a write box, :class:`SlidingWindow` evaluates the global windows (:class:`WindowGrid`) that overlap
it, in batches, and returns ``sum(w * f) / sum(w)`` over those windows for the write box only. Each
window's weighted output is cropped to the write box before it is added, so the float accumulators
hold ``K x write`` voxels, never the volume. Because a voxel gets exactly the windows it gets in a
whole-volume pass, added in the same (global) order, a blockwise result equals the whole-volume one;
and because the windows, weights and order are MONAI's, it equals ``sliding_window_inference``.

>>> import numpy as np, torch
>>> sw = SlidingWindow(lambda x: 2 * x, roi=(4, 8, 8), overlap=0.5, batch_size=3)
>>> vol = np.random.default_rng(0).random((1, 7, 13, 19), dtype=np.float32)
>>> bool(np.allclose(sw(vol), 2 * vol, atol=1e-6))
True
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypedDict

import numpy as np
import torch
from typing_extensions import Unpack

from engine.errors import ConfigError
from engine.geometry import Box
from engine.infer.importance import BlendMode, importance_map
from engine.infer.merge import pad_source
from engine.infer.tta import TtaMode, TtaReduce, augmented, transforms
from engine.infer.windows import WindowGrid
from engine.options import check_keys

log = logging.getLogger(__name__)

Predictor = Callable[[torch.Tensor], torch.Tensor]


def read_padded(read: Callable[[Box], np.ndarray], box: Box, volume: Box, replicate: Sequence[bool] | None = None) -> np.ndarray:
    """``read(box.intersect(volume))`` placed in an array of ``box`` (leading channel axes kept): zero
    outside the volume, the edge planes repeated along the ``replicate`` axes (:func:`pad_source`)."""
    inside = box.intersect(volume)
    return pad_source(read(inside), inside, box, replicate)


class BlendSettings(TypedDict, total=False):
    """How :class:`SlidingWindow` blends and batches its windows (every key optional): ``mode``, the
    blend weight (``gaussian``, the default, as MONAI with ``sigma_scale``, 0.125; ``bump``;
    ``constant``) with at least ``weight_floor`` (1e-3, :func:`importance_map`); ``batch_size``
    windows per predictor call (4); test-time augmentation ``tta`` (``none``) reduced by
    ``tta_reduce`` (``mean``)."""

    mode: BlendMode
    sigma_scale: float
    weight_floor: float
    batch_size: int
    tta: TtaMode
    tta_reduce: TtaReduce


class SlidingWindow:
    """Blended sliding-window inference with ``predictor`` (a callable or ``torch.nn.Module`` mapping
    float32 (B, C, Z, Y, X) to (B, K, Z, Y, X) of the same spatial size).

    ``settings`` (:class:`BlendSettings`): the blend weight, the batch size and the test-time
    augmentation; ``device`` is where windows, outputs and accumulators live.

    ``halo`` (z, y, x): voxels the predictor reads around each window on each side (a 2.5D model's
    context sections, :mod:`engine.infer.model_input`): it gets ``window + 2 halo`` and returns the
    window. Outside the volume the source is zero, except along the axes with a halo, where the
    volume's edge planes repeat (as training's ``fold_sections`` repeats the edge sections).
    """

    def __init__(
        self,
        predictor: Predictor,
        roi: Sequence[int],
        overlap: float | Sequence[float] = 0.5,
        *,
        device: str | torch.device = "cpu",
        halo: Sequence[int] = (0, 0, 0),
        **settings: Unpack[BlendSettings],
    ) -> None:
        batch_size = settings.get("batch_size", 4)
        check_keys(settings, BlendSettings, "SlidingWindow")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.predictor = predictor
        self.roi = tuple(int(r) for r in roi)
        self.overlap = (float(overlap),) * len(self.roi) if isinstance(overlap, (int, float)) else tuple(float(o) for o in overlap)
        self.mode: BlendMode = settings.get("mode", "gaussian")
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.weights = importance_map(self.roi, self.mode, settings.get("sigma_scale", 0.125), device=self.device, floor=settings.get("weight_floor", 1e-3))
        self.tfs = transforms(settings.get("tta", "none"), self.roi)
        self.tta_reduce: TtaReduce = settings.get("tta_reduce", "mean")
        self.halo = tuple(int(h) for h in halo)
        self.replicate = tuple(h > 0 for h in self.halo)
        if len(self.halo) != len(self.roi) or any(h < 0 for h in self.halo) or self.halo[1] != self.halo[2]:
            raise ConfigError(f"the halo must be {len(self.roi)} sizes >= 0, the same in y and x, got {self.halo}")
        #: windows evaluated so far (for statistics and tests)
        self.windows_run = 0
        #: elements of the arrays the last :meth:`infer_block` held (source, accumulators, one batch)
        self.last_sizes: dict[str, int] = {}

    def windows(self, shape: Sequence[int]) -> WindowGrid:
        """The global windows over a volume of ``shape`` (z, y, x)."""
        return WindowGrid(tuple(shape), self.roi, self.overlap)

    def source_box(self, windows: Box) -> Box:
        """What must be read for windows whose union is ``windows``: that box grown by the halo."""
        return windows.grow(self.halo)

    def read_source(self, read: Callable[[Box], np.ndarray], windows: Box, volume: Box) -> tuple[np.ndarray, Box]:
        """The source of windows whose union is ``windows`` (the volume is ``volume``): ``(array, its box)``."""
        box = self.source_box(windows)
        return read_padded(read, box, volume, self.replicate), box

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        y = augmented(self.predictor, x, self.tfs, self.tta_reduce)
        if y.ndim != 5 or tuple(y.shape[2:]) != self.roi or y.shape[0] != x.shape[0]:
            raise ConfigError(
                f"the model maps windows {tuple(x.shape)} to {tuple(y.shape)}; (B, K, *window) of the same window size is needed",
                "use a model whose output has the input's spatial size",
            )
        return y

    def infer_block(self, source: np.ndarray | torch.Tensor, source_box: Box, write: Box, grid: WindowGrid) -> torch.Tensor:
        """Blend the windows of ``grid`` that overlap ``write``; ``source`` (C, Z, Y, X), float, covers
        ``source_box`` which must hold :meth:`WindowGrid.read_box` of ``write``. Returns (K, *write.shape)
        float32 on :attr:`device`."""
        need = self.source_box(grid.read_box(write))
        if not source_box.contains(need):
            raise ValueError(f"the source {source_box} does not hold the windows of {write} ({need})")
        acc, wsum = self.accumulate(source, source_box, grid.window_boxes(write), write)
        with torch.inference_mode():
            acc /= wsum
        return acc

    def accumulate(
        self, source: np.ndarray | torch.Tensor, source_box: Box, boxes: Sequence[Box], target: Box
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The unnormalised sums of the windows ``boxes`` (in this order) over ``target``: ``sum(w * f)``
        (K, *target.shape) and ``sum(w)`` (1, *target.shape), float32 on :attr:`device`. ``source`` (C, Z,
        Y, X), float, covers ``source_box``, which must hold every window and its halo; each window's output is cropped
        to ``target`` before it is added, so the accumulators are the size of ``target``."""
        if not boxes:
            raise ValueError(f"no windows to accumulate over {target}")
        src = torch.as_tensor(source)
        if src.ndim == 3:
            src = src[None]
        src = src.to(self.device, torch.float32, non_blocking=True)
        acc: torch.Tensor | None = None
        wsum = torch.zeros((1, *target.shape), dtype=torch.float32, device=self.device)
        w = self.weights[None]
        with torch.inference_mode():
            for first in range(0, len(boxes), self.batch_size):
                batch = boxes[first : first + self.batch_size]
                x = torch.stack([src[(slice(None), *b.grow(self.halo).to_slices(source_box))] for b in batch])
                y = self._predict(x)
                if acc is None:
                    acc = torch.zeros((y.shape[1], *target.shape), dtype=torch.float32, device=self.device)
                for k, b in enumerate(batch):
                    part = b.intersect(target)
                    if part.empty:
                        continue
                    inside = (slice(None), *part.to_slices(b))
                    dst = (slice(None), *part.to_slices(target))
                    acc[dst] += y[k][inside] * w[inside]
                    wsum[dst] += w[inside]
        assert acc is not None
        self.windows_run += len(boxes)
        batch_elems = min(self.batch_size, len(boxes)) * self.weights.numel() * (src.shape[0] + acc.shape[0])
        self.last_sizes = {"source": src.numel(), "accumulator": acc.numel() + wsum.numel(), "batch": batch_elems}
        return acc, wsum

    def __call__(self, volume: np.ndarray | torch.Tensor) -> np.ndarray:
        """Whole-volume inference in this process: ``volume`` (C, Z, Y, X) or (Z, Y, X), float, already
        scaled; returns (K, Z, Y, X) float32. The reference that blockwise runs are tested against."""
        vol: Any = volume[None] if volume.ndim == 3 else volume
        shape = tuple(int(s) for s in vol.shape[1:])
        grid = self.windows(shape)
        whole = Box.from_shape(shape)
        src, read = self.read_source(lambda b: np.asarray(vol[(slice(None), *b.to_slices())]), grid.read_box(whole), whole)
        return self.infer_block(src, read, whole, grid).cpu().numpy()


def model_window(
    model: torch.nn.Module,
    roi: Sequence[int],
    overlap: float | Sequence[float] = 0.5,
    *,
    device: str | torch.device = "cpu",
    predictor: dict[str, Any] | None = None,
    **settings: Unpack[BlendSettings],
) -> SlidingWindow:
    """A :class:`SlidingWindow` over a Connectile model (``model.config``, a ``ModelConfig``): its output
    activation, and the halo and edge handling of a 2.5D model's context sections.

    ``predictor`` holds :class:`TorchPredictor` options (amp, channels_last, fold_norms, compile);
    ``settings`` the :class:`SlidingWindow` ones (mode, sigma_scale, batch_size, tta, tta_reduce).
    """
    from engine.infer.model_input import halo, section_context
    from engine.infer.options import ACTIVATIONS
    from engine.infer.predictor import TorchPredictor

    cfg: Any = model.config
    activation: Any = getattr(model, "output_activation", "sigmoid")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"the model's output activation {activation!r} is not supported", f"use one of {', '.join(ACTIVATIONS)}")
    dev = torch.device(device)
    net = TorchPredictor(model, activation=activation, device=dev, context_slices=section_context(cfg), **(predictor or {}))
    return SlidingWindow(net, roi, overlap, device=dev, halo=halo(cfg), **settings)
