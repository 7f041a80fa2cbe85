"""The merger of blended sliding windows: input normalisation, the source of a window box (padding at
the volume's faces), the partial sums a block hands to its neighbours (the scratch format), and the
conversion of the blended probabilities to what is written.

Partial sums: for each box a block hands over, ``sum(w * p)`` (K channels) then ``sum(w)`` (1 channel),
float32, C order, the boxes one after another; the file of source block ``s`` for target block ``t``
is :func:`piece_key` ``(t, s)``.

>>> import torch
>>> acc, wsum = torch.full((2, 1, 2, 2), 3.0), torch.full((1, 1, 2, 2), 2.0)
>>> box = Box((0, 0, 0), (1, 2, 2))
>>> out = np.zeros((3, 1, 2, 2), np.float32)
>>> add_pieces(out, pack_pieces(acc, wsum, [box], box), [box], box, 2)
>>> normalise(out[:2], out[2:]).ravel()[:2].tolist()
[1.5, 1.5]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.errors import StorageError
from engine.geometry import Box
from engine.values import unit_max


def scale_input(raw: np.ndarray, box: Box | None = None) -> Any:
    """``raw`` as a float32 torch tensor in [0, 1] (uint8 / 255, uint16 / 65535, floats unchanged);
    NaN or infinite values are refused."""
    import torch

    div = unit_max(raw.dtype)  # integers as value / the largest of their type, as engine.values.to_unit
    x = torch.from_numpy(np.ascontiguousarray(raw)).to(torch.float32)
    if div is not None:
        x /= div
    if not torch.isfinite(x).all():
        where = f" in {box}" if box is not None else ""
        raise StorageError(f"the input holds NaN or infinite values{where}", "clean the input volume")
    return x


def pad_source(data: np.ndarray, inside: Box, box: Box, replicate: Sequence[bool] | None = None) -> np.ndarray:
    """``data`` (leading channel axes, then ``inside``, the part of ``box`` inside the volume) placed in
    an array of ``box``: zero outside the volume (MONAI's padding), except along the ``replicate`` axes,
    where the volume's first and last planes are repeated (the context sections of a 2.5D model, as
    :func:`engine.models.unet.fold_sections` repeats them in training and validation).

    >>> pad_source(np.array([[[1]], [[2]]]), Box((0, 0, 0), (2, 1, 1)), Box((-1, 0, -1), (3, 1, 1)), (True, False, False))[..., 1].ravel().tolist()
    [1, 1, 2, 2]
    """
    if inside == box:
        return data
    lead = data.shape[: data.ndim - 3]
    out = np.zeros(lead + box.shape, dtype=data.dtype)
    if not inside.empty:
        where: tuple[Any, ...] = (Ellipsis, *inside.to_slices(box))
        out[where] = data
    for axis, rep in enumerate(replicate or ()):
        lo, hi = inside.start[axis], inside.stop[axis]
        if rep and hi > lo and (box.start[axis] < lo or box.stop[axis] > hi):
            idx = np.clip(np.arange(box.start[axis], box.stop[axis]), lo, hi - 1) - box.start[axis]
            out = np.take(out, idx, axis=len(lead) + axis)
    return out


def normalise(acc: Any, wsum: Any) -> Any:
    """The blended probabilities ``sum(w * p) / sum(w)`` (numpy arrays or torch tensors)."""
    return acc / wsum


def to_output(prob: np.ndarray, dtype: str, channels: int) -> np.ndarray:
    """(K, z, y, x) float32 probabilities as written: uint8 ``round(255 p)`` or floats; (z, y, x) for K = 1."""
    if dtype == "uint8":
        out = np.round(np.clip(prob, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)
    else:
        out = prob.astype(np.float16 if dtype == "float16" else np.float32, copy=False)
    return out[0] if channels == 1 else out


def piece_key(target: int, source: int) -> str:
    """The scratch file of the partial sums block ``source`` hands to block ``target``."""
    return f"pieces/{target}/{source}"


def pack_pieces(acc: Any, wsum: Any, boxes: Sequence[Box], frame: Box) -> bytes:
    """The partial sums over ``boxes`` of accumulators ``acc`` (K, *frame) and ``wsum`` (1, *frame)
    (torch tensors), in the scratch format."""
    import torch

    parts = [torch.cat([acc[(slice(None), *b.to_slices(frame))], wsum[(slice(None), *b.to_slices(frame))]]).cpu().numpy().ravel() for b in boxes]
    return np.concatenate(parts).astype(np.float32, copy=False).tobytes()


def add_pieces(acc: np.ndarray, blob: bytes, boxes: Sequence[Box], frame: Box, channels: int, name: str = "partial sums") -> None:
    """Add the partial sums of ``blob`` (scratch format, over ``boxes``) into ``acc`` (K + 1, *frame)."""
    k = channels
    data = np.frombuffer(blob, dtype=np.float32)
    expected = sum((k + 1) * b.size for b in boxes)
    if data.size != expected:
        raise StorageError(f"{name} holds {data.size} values, not the {expected} expected", "run predict again with --overwrite")
    at = 0
    for b in boxes:
        n = (k + 1) * b.size
        acc[(slice(None), *b.to_slices(frame))] += data[at : at + n].reshape((k + 1, *b.shape))
        at += n
