"""Test-time augmentation: run the model on flipped and transposed copies of each window, undo the
transform on each output, and reduce (mean, min or max).

Transforms are the flips of z, y and x and the transpose of y and x (only where the window is square in
y, x). They suit heads whose channels do not depend on orientation (per-voxel class probabilities such
as membrane, mitochondria, synapse masks). Affinity channels do: a flip turns the affinity to the
voxel before into the affinity to the voxel after (a shift, not a channel permutation), so TTA is
refused for affinity heads by :class:`~engine.ops.predict.PredictOp`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from engine.errors import ConfigError
from engine.infer.options import TTA_MODES, TTA_REDUCTIONS, TtaMode, TtaReduce


@dataclass(frozen=True)
class Transform:
    """Flip the spatial axes in ``flips`` (0 = z, 1 = y, 2 = x), then transpose y and x if ``transpose``."""

    flips: tuple[int, ...] = ()
    transpose: bool = False

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Transform a batch (B, C, Z, Y, X)."""
        if self.flips:
            x = torch.flip(x, dims=[2 + a for a in self.flips])
        if self.transpose:
            x = x.transpose(3, 4)
        return x

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`apply` on a model output (B, K, Z, Y, X)."""
        if self.transpose:
            y = y.transpose(3, 4)
        if self.flips:
            y = torch.flip(y, dims=[2 + a for a in self.flips])
        return y


def transforms(mode: TtaMode, roi: Sequence[int]) -> list[Transform]:
    """The transforms of ``mode``; the identity first.

    >>> len(transforms("none", (8, 16, 16))), len(transforms("flips", (8, 16, 16))), len(transforms("flips-transpose", (8, 16, 16)))
    (1, 8, 16)
    """
    if mode not in TTA_MODES:
        raise ConfigError(f"unknown test-time augmentation {mode!r}", f"use one of {', '.join(TTA_MODES)}")
    flips = [tuple(a for a, on in zip((0, 1, 2), bits, strict=True) if on) for bits in itertools.product((False, True), repeat=3)]
    if mode == "none":
        return [Transform()]
    if mode == "flips":
        return [Transform(f) for f in flips]
    if roi[1] != roi[2]:
        raise ConfigError(f"transposes need a window square in y and x, got {tuple(roi)}", "use --tta flips or a square window")
    return [Transform(f, t) for t in (False, True) for f in flips]


def augmented(predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tfs: Sequence[Transform], reduce: TtaReduce = "mean") -> torch.Tensor:
    """``predict`` under every transform of ``tfs``, each inverted, reduced over the transforms."""
    if reduce not in TTA_REDUCTIONS:
        raise ConfigError(f"unknown TTA reduction {reduce!r}", f"use one of {', '.join(TTA_REDUCTIONS)}")
    out: torch.Tensor | None = None
    for tf in tfs:
        y = tf.invert(predict(tf.apply(x).contiguous())).to(torch.float32)
        if out is None:
            out = y.clone() if len(tfs) > 1 else y
        elif reduce == "mean":
            out += y
        elif reduce == "min":
            torch.minimum(out, y, out=out)
        else:
            torch.maximum(out, y, out=out)
    assert out is not None
    if reduce == "mean" and len(tfs) > 1:
        out /= len(tfs)
    return out
