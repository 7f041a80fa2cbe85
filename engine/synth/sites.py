"""Neuron sites: the seed points of the power diagram, on two jittered grids in M-space.

M-space is the tissue with z divided by ``neuron_stretch`` (see :mod:`engine.synth.neurons`), in nm.
*Axons* sit one per cell of a cubic grid of ``neuron_spacing`` (jittered by ``neuron_jitter``, with a
small random power weight for varied calibres); *dendrites* one per cell of a coarse grid of
``dendrite_spacing``, present with ``dendrite_probability``, with weight ``radius**2``. A site's
position, weight and presence are hashes of its grid cell, so the sites near any box are found by
visiting the grid cells near it, and every block sees the same sites.

Neuron ids (uint64, never 0): ``2 * pack(cell) + 1`` for axons, ``2 * pack(cell) + 2`` for dendrites,
where ``pack`` puts each cell index (biased by 2**15) in 16 bits; ids stay below 2**50. Sorting by id
gives the global tie-break order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.synth.fields import uniform
from engine.synth.params import SynthParams

S_AXON, S_DENDRITE = 10, 20
_BIAS = 2**15


@dataclass(frozen=True)
class Sites:
    """Neuron sites (any leading shape, usually (n,)); positions ``(..., 3)`` and weights in M-space nm."""

    pos: np.ndarray  # (..., 3) float64
    weight: np.ndarray  # (...) float64
    ids: np.ndarray  # (...) uint64; 0 marks an absent site
    dendrite: np.ndarray  # (...) bool

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def take(self, index: Any) -> Sites:
        """The sites at ``index`` (any numpy index of the leading axes)."""
        return Sites(self.pos[index], self.weight[index], self.ids[index], self.dendrite[index])

    @staticmethod
    def concat(parts: list[Sites], axis: int = 0) -> Sites:
        """Sites of several tables, joined along ``axis``."""
        return Sites(
            np.concatenate([p.pos for p in parts], axis=axis),
            np.concatenate([p.weight for p in parts], axis=axis),
            np.concatenate([p.ids for p in parts], axis=axis),
            np.concatenate([p.dendrite for p in parts], axis=axis),
        )

    def sorted(self) -> Sites:
        """Present sites only, sorted by id."""
        keep = np.flatnonzero(self.ids != 0)
        return self.take(keep[np.argsort(self.ids[keep], kind="stable")])


def pack_cell(cell: np.ndarray) -> np.ndarray:
    """Pack cell indices ``(..., 3)`` (each within +-2**15) into one uint64 per cell."""
    c = np.asarray(cell, dtype=np.int64) + _BIAS
    if c.size and (c.min() < 0 or c.max() >= 2 * _BIAS):
        raise ValueError("the volume is too large for 16-bit neuron cell indices")
    return ((c[..., 0] << 32) | (c[..., 1] << 16) | c[..., 2]).astype(np.uint64)


def axon_sites(p: SynthParams, cells: np.ndarray) -> Sites:
    """The axon sites of axon-grid cells ``(..., 3)``."""
    g, j = p.neuron_spacing, p.neuron_jitter
    cz, cy, cx = cells[..., 0], cells[..., 1], cells[..., 2]
    u = [uniform(p.seed, S_AXON + k, cz, cy, cx) for k in range(4)]
    pos = (cells + 0.5 + j * (np.stack(u[:3], -1) - 0.5)) * g
    weight = (g * p.neuron_size_variation * u[3]) ** 2
    ids = pack_cell(cells) * np.uint64(2) + np.uint64(1)
    return Sites(pos, weight, ids, np.zeros(ids.shape, bool))


def dendrite_sites(p: SynthParams, cells: np.ndarray) -> Sites:
    """The dendrite sites of coarse cells ``(..., 3)``; absent ones have id 0 and weight -inf."""
    big = p.dendrite_spacing
    cz, cy, cx = cells[..., 0], cells[..., 1], cells[..., 2]
    u = [uniform(p.seed, S_DENDRITE + k, cz, cy, cx) for k in range(5)]
    r = p.dendrite_radius[0] + u[3] * (p.dendrite_radius[1] - p.dendrite_radius[0])
    pos = (cells + 0.5 + 0.5 * (np.stack(u[:3], -1) - 0.5)) * big
    present = u[4] < p.dendrite_probability
    ids = np.where(present, pack_cell(cells) * np.uint64(2) + np.uint64(2), np.uint64(0))
    return Sites(pos, np.where(present, r**2, -np.inf), ids, np.ones(ids.shape, bool))


def reach(p: SynthParams) -> tuple[float, float]:
    """How far (M-space nm) an axon / a dendrite site can be from a point where it is one of the two
    least-power sites. Anywhere, the own-cell axon site and the face neighbour toward the point have
    power at most ``rho2**2``, so a site qualifies only if ``|M - s|**2 - w <= rho2**2``."""
    g, j = p.neuron_spacing, p.neuron_jitter
    rho2_sq = (g * (1.0 + j / 2.0)) ** 2 + 2.0 * (g * (1.0 + j) / 2.0) ** 2
    w_axon = (g * p.neuron_size_variation) ** 2
    return math.sqrt(rho2_sq + w_axon), math.sqrt(rho2_sq + p.dendrite_radius[1] ** 2)


def _cell_range(lo: np.ndarray, hi: np.ndarray, size: float) -> np.ndarray:
    a = np.floor(lo / size).astype(np.int64)
    b = np.floor(hi / size).astype(np.int64)
    axes = [np.arange(x, y + 1) for x, y in zip(a, b, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def sites_near(p: SynthParams, lo: np.ndarray, hi: np.ndarray) -> Sites:
    """Every site that can be one of the two least-power sites somewhere in the M-space box
    ``lo..hi``, sorted by id."""
    r_axon, r_dend = reach(p)
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    ax = axon_sites(p, _cell_range(lo - r_axon, hi + r_axon, p.neuron_spacing))
    de = dendrite_sites(p, _cell_range(lo - r_dend, hi + r_dend, p.dendrite_spacing))
    return Sites.concat([ax, de]).sorted()


def sites_in(p: SynthParams, lo: np.ndarray, hi: np.ndarray) -> Sites:
    """The sites whose position lies in the M-space box ``lo..hi``, sorted by id."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    ax = axon_sites(p, _cell_range(lo, hi, p.neuron_spacing))
    de = dendrite_sites(p, _cell_range(lo, hi, p.dendrite_spacing))
    both = Sites.concat([ax, de]).sorted()
    inside = np.all((both.pos >= lo) & (both.pos <= hi), axis=-1)
    return both.take(np.flatnonzero(inside))


def neighbourhood(p: SynthParams, centres: np.ndarray, radius: float) -> Sites:
    """For each M-space point of ``centres`` (m, 3): every site that can be one of the two
    least-power sites within ``radius`` of it, as ``(m, K)`` arrays (absent sites have id 0).

    The same point always gets the same sites, whatever block asks: decisions made from them
    (does a mitochondrion fit in its cell? where does a synapse go?) are the same everywhere.
    """
    r_axon, r_dend = reach(p)
    centres = np.asarray(centres, np.float64).reshape(-1, 3)
    parts = []
    for size, r, make in ((p.neuron_spacing, r_axon, axon_sites), (p.dendrite_spacing, r_dend, dendrite_sites)):
        k = math.ceil((r + radius) / size)
        span = np.arange(-k, k + 1)
        offsets = np.stack(np.meshgrid(span, span, span, indexing="ij"), -1).reshape(-1, 3)
        cells = np.floor(centres / size).astype(np.int64)[:, None, :] + offsets[None, :, :]
        parts.append(make(p, cells))
    return Sites.concat(parts, axis=1)
